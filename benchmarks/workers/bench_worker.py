"""One worker process of benchmarks/network_bench.py (started by it; not run by hand).

It builds one model, one optimizer and (except in ``floor`` mode) a
`MultiWorkerMirroredStrategy` from ``TF_CONFIG``, then obeys one-line commands
on stdin and answers on stdout with lines that start with ``@@``:

    (start)        -> @@READY {"params": ..., ...}
    WARM k         -> runs k steps          -> @@WARMED {"last_step_s": ...}
    TIME s         -> runs s timed steps    -> @@RESULT {"step_times": [...], "tx_bytes": ...}
    EXIT           -> exits 0

The driver changes the link shaping between commands, so one process group
serves every bandwidth of a case. All workers get the same commands, hence run
the same number of steps (collectives must match).

Modes:
  dgc    dgc_tf.distribute.MultiWorkerMirroredStrategy + dgc_tf.keras3.DGCSGD
  dense  the same strategy (or TensorFlow's, --dense-strategy tf) + keras.optimizers.SGD
  floor  no strategy, no communication: the same per-worker batch, forward,
         backward and a plain local keras.optimizers.SGD step

Bytes on the wire: ``tx_bytes`` of this worker's interface, read from
/sys/class/net/DEV/statistics/tx_bytes right before the first and right after
the last timed step. The worker runs under ``ip netns exec NS``, which mounts a
sysfs of that namespace, so this is the namespace's own interface counter.
The input data are synthetic (random features / random token ids of the
right shapes): only timing and traffic are measured.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=("mlp", "lstm"), required=True)
    p.add_argument("--mode", choices=("dgc", "dense", "floor"), required=True)
    p.add_argument("--batch", type=int, required=True, help="per-worker batch")
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--dev", default=None, help="network interface to count bytes on")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: TF default)")
    p.add_argument("--compress-ratio", type=float, default=0.001)
    p.add_argument("--dense-strategy", choices=("dgc", "tf"), default="dgc")
    p.add_argument("--heartbeat-timeout-ms", type=int, default=0,
                   help="coordination-service heartbeat timeout (0: TensorFlow's default)")
    p.add_argument("--seq-len", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def say(tag, payload):
    sys.stdout.write(f"@@{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


def read_tx(dev):
    if not dev:
        return None
    with open(f"/sys/class/net/{dev}/statistics/tx_bytes") as f:
        return int(f.read())


def main(argv=None):
    args = parse_args(argv)

    import tensorflow as tf

    if args.threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)

    if args.mode == "floor":
        strategy = tf.distribute.get_strategy()
    else:
        if args.heartbeat_timeout_ms > 0:
            from tensorflow.core.protobuf import coordination_config_pb2
            from tensorflow.python.distribute import multi_worker_util
            from tensorflow.python.eager import context
            cluster = json.loads(os.environ["TF_CONFIG"])["cluster"]
            spec = tf.train.ClusterSpec(cluster)
            context.context().configure_coordination_service(
                service_type="standalone",
                service_leader=multi_worker_util.coordination_leader(spec),
                heartbeat_timeout_in_ms=args.heartbeat_timeout_ms,
                coordinated_jobs=[coordination_config_pb2.CoordinatedJob(
                    name="worker", num_tasks=len(cluster["worker"]))])
        if args.mode == "dense" and args.dense_strategy == "tf":
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            import dgc_tf.distribute
            strategy = dgc_tf.distribute.MultiWorkerMirroredStrategy()

    import keras

    keras.utils.set_random_seed(args.seed)
    b, seq = args.batch, args.seq_len
    with strategy.scope():
        if args.model == "mlp":
            # 1024-4096-4096-1024-10: 25.2M parameters, little compute per parameter.
            model = keras.Sequential([
                keras.Input((1024,)),
                keras.layers.Dense(4096, activation="relu"),
                keras.layers.Dense(4096, activation="relu"),
                keras.layers.Dense(1024, activation="relu"),
                keras.layers.Dense(10)])
        else:
            # PTB "small" LM (Zaremba et al.): vocab 10000, embedding 200, 2x200 LSTM.
            model = keras.Sequential([
                keras.Input((seq,), dtype="int32"),
                keras.layers.Embedding(10000, 200),
                keras.layers.LSTM(200, return_sequences=True),
                keras.layers.LSTM(200, return_sequences=True),
                keras.layers.Dense(10000)])
        if args.mode == "dgc":
            import dgc_tf.keras3
            optimizer = dgc_tf.keras3.DGCSGD(learning_rate=0.01, momentum=0.9,
                                             compress_ratio=args.compress_ratio,
                                             warmup_steps=0)
        else:
            optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
        optimizer.build(model.trainable_variables)

    if args.model == "mlp":
        x = tf.random.stateless_normal((b, 1024), seed=(args.seed, 1))
        y = tf.random.stateless_uniform((b,), seed=(args.seed, 2), maxval=10, dtype=tf.int32)
        scale = float(b * args.workers)
    else:
        x = tf.random.stateless_uniform((b, seq), seed=(args.seed, 1), maxval=10000,
                                        dtype=tf.int32)
        y = tf.random.stateless_uniform((b, seq), seed=(args.seed, 2), maxval=10000,
                                        dtype=tf.int32)
        scale = float(b * seq * args.workers)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    variables = model.trainable_variables

    @tf.function
    def train_step(features, labels):
        def step(features, labels):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(loss_fn(labels, model(features, training=True))) / scale
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return loss
        return strategy.run(step, args=(features, labels))

    def one_step():
        t0 = time.perf_counter()
        out = train_step(x, y)
        float(strategy.experimental_local_results(out)[0])
        return time.perf_counter() - t0

    say("READY", {"params": int(sum(v.shape.num_elements() for v in variables)),
                  "model": args.model, "mode": args.mode, "pid": os.getpid()})
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "EXIT":
            break
        if cmd[0] == "WARM":
            last = None
            for _ in range(int(cmd[1])):
                last = one_step()
            say("WARMED", {"last_step_s": last})
        elif cmd[0] == "TIME":
            tx0 = read_tx(args.dev)
            times = [one_step() for _ in range(int(cmd[1]))]
            tx1 = read_tx(args.dev)
            result = {"step_times": times,
                      "tx_bytes": None if tx0 is None else tx1 - tx0}
            if args.mode == "dgc":
                stats = optimizer.compression_stats()
                result["dgc_last_bytes_sent"] = float(stats["last_bytes_sent"])
                result["dgc_compression_ratio"] = float(stats["compression_ratio"])
            say("RESULT", result)
        else:
            raise ValueError(f"unknown command {line!r}")
    sys.stdout.flush()
    # Skip interpreter teardown: TF's collective runtime can hang at exit after
    # peers are gone; the work is done and reported.
    os._exit(0)


if __name__ == "__main__":
    main()
