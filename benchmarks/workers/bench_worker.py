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
  dgc        dgc_tf.distribute.MultiWorkerMirroredStrategy + dgc_tf.keras3.DGCSGD
             (the strategy's default exchange, "auto")
  dgc_gather the same with exchange="allgather" (every replica's own top-k gathered)
  dgc16      dgc with wire_dtype=float16: the sparse values (and the small variables
             exchanged densely) travel in half precision, indices unchanged
  dense16    dgc_tf's strategy with wire_dtype=float16 + keras.optimizers.SGD: dense
             gradients all-reduced in half precision (Horovod's fp16 compression)
  vgc        the same strategy + dgc_tf.vgc.VGCSGD (alpha, zeta), gradients and the
             squared-gradient estimate from --vgc-groups strided micro-batches
             (dgc_tf.vgc.micro_batch_gradients: one forward/backward each)
  dense      the same strategy (or TensorFlow's, --dense-strategy tf) + keras.optimizers.SGD
  floor      no strategy, no communication: the same per-worker batch, forward,
             backward and a plain local keras.optimizers.SGD step
  floor_vgc  no strategy, no communication: VGC's per-worker work (the micro-batch
             passes and VGCSGD's selection on one local replica)

Every step trains on a fresh synthetic batch (stateless random numbers seeded by
the step and the worker's index), so VGC's data-dependent counts are not those
of one batch seen over and over.

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


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "examples")
IMAGE_SHAPES = {"resnet8": (32, 32, 1), "convnet": (28, 28, 1)}
DGC_MODES = ("dgc", "dgc_gather", "dgc16")


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=("mlp", "mlp8m", "lstm", "resnet8", "convnet"),
                   required=True)
    p.add_argument("--mode", choices=("dgc", "dgc_gather", "dgc16", "vgc", "dense", "dense16",
                                      "floor", "floor_vgc"),
                   required=True)
    p.add_argument("--batch", type=int, required=True, help="per-worker batch")
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--dev", default=None, help="network interface to count bytes on")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: TF default)")
    p.add_argument("--compress-ratio", type=float, default=0.001)
    p.add_argument("--alpha", type=float, default=1.0, help="VGC's alpha")
    p.add_argument("--zeta", type=float, default=0.999, help="VGC's zeta")
    p.add_argument("--vgc-groups", type=int, default=4, help="VGC's micro-batches per step")
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


def vgc_window_stats(optimizer, variables, before, after, steps, replicas):
    """VGC's counts over the timed steps only (the optimizer's counters are cumulative).

    density: elements sent / elements of the compressed variables, over all
    replicas and the timed steps (VGC's count varies per step and replica);
    payload bytes: what this worker handed to the collectives per step (the
    size table and the padding included), and the dense equivalent.
    """
    compressible = replicas * sum(v.shape.num_elements() for v in variables
                                  if optimizer.vgc_config.is_compressed(v.shape))
    sent = after["sent_elements"] - before["sent_elements"]
    handed = (after["bytes_sent"] - before["bytes_sent"]) / steps
    dense = (after["dense_bytes"] - before["dense_bytes"]) / steps
    return {"vgc_density": sent / (compressible * steps) if compressible else None,
            "vgc_payload_bytes_per_step_per_worker": handed,
            "vgc_dense_bytes_per_step_per_worker": dense,
            "vgc_compression_ratio": dense / handed if handed else None,
            "vgc_density_cumulative": after["density"],
            "vgc_skipped_steps": after["skipped_steps"] - before["skipped_steps"]}


def main(argv=None):
    args = parse_args(argv)

    import tensorflow as tf

    if args.threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)

    local = args.mode.startswith("floor")
    if local:
        strategy = tf.distribute.get_strategy()
    else:
        if args.heartbeat_timeout_ms > 0:
            try:
                from tensorflow.core.protobuf import coordination_config_pb2
            except ImportError:  # TensorFlow >= 2.20 keeps it with XLA's TSL
                from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
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
            strategy = dgc_tf.distribute.MultiWorkerMirroredStrategy(
                exchange="allgather" if args.mode == "dgc_gather" else "auto",
                wire_dtype=tf.float16 if args.mode in ("dense16", "dgc16") else None)

    import keras

    keras.utils.set_random_seed(args.seed)
    b, seq = args.batch, args.seq_len
    with strategy.scope():
        if args.model in ("mlp", "mlp8m"):
            # mlp: 1024-4096-4096-1024-10, 25.2M parameters, little compute per
            # parameter; mlp8m: 1024-2048-2048-1024-10, 8.4M (8 workers fit on 2 cores).
            width = 4096 if args.model == "mlp" else 2048
            model = keras.Sequential([
                keras.Input((1024,)),
                keras.layers.Dense(width, activation="relu"),
                keras.layers.Dense(width, activation="relu"),
                keras.layers.Dense(1024, activation="relu"),
                keras.layers.Dense(10)])
        elif args.model in IMAGE_SHAPES:
            # The Fashion-MNIST examples' own builders: ResNet-8 on 32x32 (78k
            # parameters, batch norm) and the demo's convnet on 28x28 (225k).
            sys.path.insert(0, EXAMPLES)
            from fashion_mnist_demo import convnet
            from fashion_mnist_resnet import resnet
            model = resnet(keras, blocks=1) if args.model == "resnet8" else convnet(keras)
        else:
            # PTB "small" LM (Zaremba et al.): vocab 10000, embedding 200, 2x200 LSTM.
            model = keras.Sequential([
                keras.Input((seq,), dtype="int32"),
                keras.layers.Embedding(10000, 200),
                keras.layers.LSTM(200, return_sequences=True),
                keras.layers.LSTM(200, return_sequences=True),
                keras.layers.Dense(10000)])
        if args.mode in DGC_MODES:
            import dgc_tf.keras3
            optimizer = dgc_tf.keras3.DGCSGD(learning_rate=0.01, momentum=0.9,
                                             compress_ratio=args.compress_ratio,
                                             warmup_steps=0)
        elif args.mode in ("vgc", "floor_vgc"):
            import dgc_tf.vgc
            optimizer = dgc_tf.vgc.VGCSGD(learning_rate=0.01, momentum=0.9, alpha=args.alpha,
                                          zeta=args.zeta)
        else:
            optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
        optimizer.build(model.trainable_variables)

    index = 0 if local else json.loads(os.environ["TF_CONFIG"])["task"]["index"]

    def batch(step):
        """A fresh synthetic batch per step and worker."""
        seed = tf.stack([tf.constant(args.seed * 1000 + index, tf.int64), step])
        if args.model != "lstm":
            x = tf.random.stateless_normal((b, *IMAGE_SHAPES.get(args.model, (1024,))),
                                           seed=seed)
            y = tf.random.stateless_uniform((b,), seed=seed + 1, maxval=10, dtype=tf.int32)
        else:
            x = tf.random.stateless_uniform((b, seq), seed=seed, maxval=10000, dtype=tf.int32)
            y = tf.random.stateless_uniform((b, seq), seed=seed + 1, maxval=10000,
                                            dtype=tf.int32)
        return x, y

    # Every loss is the mean over this worker's examples (and tokens) over the worker
    # count, i.e. its share of the global mean.
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    variables = model.trainable_variables
    vgc = args.mode in ("vgc", "floor_vgc")

    def mean_loss(part):
        features, labels = part
        return tf.reduce_mean(loss_fn(labels, model(features, training=True))) / args.workers

    @tf.function
    def train_step(step_number):
        def step(step_number):
            features, labels = batch(step_number)
            if vgc:
                grads, sq, size = dgc_tf.vgc.micro_batch_gradients(
                    mean_loss, variables, (features, labels), args.vgc_groups)
                optimizer.apply_gradients(zip(grads, variables), grad_sq_means=sq,
                                          batch_size=size)
                # Any output: the function returns after all its stateful ops ran.
                return tf.reduce_sum(grads[-1])
            with tf.GradientTape() as tape:
                loss = mean_loss((features, labels))
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return loss
        return strategy.run(step, args=(step_number,))

    counter = [0]

    def one_step():
        t0 = time.perf_counter()
        out = train_step(tf.constant(counter[0], tf.int64))
        counter[0] += 1
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
            stats0 = optimizer.compression_stats() if vgc else None
            tx0 = read_tx(args.dev)
            times = [one_step() for _ in range(int(cmd[1]))]
            tx1 = read_tx(args.dev)
            result = {"step_times": times,
                      "tx_bytes": None if tx0 is None else tx1 - tx0}
            if args.mode in DGC_MODES:
                stats = optimizer.compression_stats()
                result["dgc_last_bytes_sent"] = float(stats["last_bytes_sent"])
                result["dgc_compression_ratio"] = float(stats["compression_ratio"])
            if vgc:
                result.update(vgc_window_stats(optimizer, variables, stats0,
                                               optimizer.compression_stats(), len(times),
                                               strategy.num_replicas_in_sync))
            say("RESULT", result)
        else:
            raise ValueError(f"unknown command {line!r}")
    sys.stdout.flush()
    # Skip interpreter teardown: TF's collective runtime can hang at exit after
    # peers are gone; the work is done and reported.
    os._exit(0)


if __name__ == "__main__":
    main()
