"""A worker of tests/per_worker_wire.py: bytes on the wire per step with several replicas per worker.

`python per_worker_wire.py REPLICAS_PER_WORKER PER_WORKER OPTIMIZER STEPS`
(PER_WORKER "auto" or "off"; OPTIMIZER "dgc", or "dense": the gradients
all-reduced as a dense optimizer's are, the exchange alone). Both workers run in one
network namespace; worker 0 reads its loopback counters around STEPS steps
(after 3 warm-up steps) and prints one JSON line.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import dgc_tf.distribute  # noqa: E402

local, per_worker, kind, steps = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
dgc_tf.distribute.configure_logical_cpus(local)
strategy = dgc_tf.distribute.MultiWorkerMirroredStrategy(
    replicas_per_worker=local, per_worker=None if per_worker == "auto" else False)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import dgc_tf.keras3  # noqa: E402

SHAPES = [(1024, 2048), (2048,)]
rng = np.random.default_rng(0)
with strategy.scope():
    variables = [keras.Variable(rng.normal(size=s).astype(np.float32) * 0.01, name=f"w{j}")
                 for j, s in enumerate(SHAPES)]
    optimizer = dgc_tf.keras3.DGCSGD(learning_rate=0.01, compress_ratio=0.001)
    optimizer.build(variables)
grads = strategy.experimental_distribute_values_from_function(
    lambda ctx: [tf.random.stateless_normal(s, [ctx.replica_id_in_sync_group, 1]) for s in SHAPES])


def dense_all_reduce(g):
    # identity places the values on the replica's device, as an optimizer's gradients are.
    summed = tf.distribute.get_replica_context().all_reduce("SUM", [tf.identity(x) for x in g])
    return tf.add_n([tf.reduce_sum(s) for s in summed])


@tf.function
def step(g):
    if kind == "dgc":
        strategy.run(lambda g: optimizer.apply_gradients(zip(g, variables)), args=(g,))
        return 0.0
    return strategy.experimental_local_results(strategy.run(dense_all_reduce, args=(g,)))


def counters():
    return {d: int(open(f"/sys/class/net/lo/statistics/{d}_bytes").read()) for d in ("tx", "rx")}


for _ in range(3):
    step(grads)
before, start = counters(), time.monotonic()
for _ in range(steps):
    step(grads)
after, elapsed = counters(), time.monotonic() - start
if index == 0:
    stats = optimizer.compression_stats() if kind == "dgc" else {}
    print("RESULT " + json.dumps({
        "replicas_per_worker": local, "per_worker": per_worker, "optimizer": kind,
        "parameters": int(sum(np.prod(s) for s in SHAPES)),
        # Loopback carries both workers' traffic: tx counts every byte once.
        "loopback_bytes_per_worker_per_step": (after["tx"] - before["tx"]) / steps / 2,
        "exchange_bytes_per_replica_per_step": stats.get("last_bytes_sent"),
        "step_s": elapsed / steps}), flush=True)
