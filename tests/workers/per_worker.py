"""A worker of tests/test_multiworker.py: DGC with several replicas per worker.

`python per_worker.py OUT REPLICAS_PER_WORKER EXCHANGE PER_WORKER`: splits the
CPU into REPLICAS_PER_WORKER logical devices, builds dgc_tf's
MultiWorkerMirroredStrategy on them (PER_WORKER: "auto", "on" or "off"), and
applies chosen per-replica gradients (the same on every worker, from a fixed
seed) with two DGCSGD optimizers: momentum 0.9 (against the NumPy reference)
and momentum 0 (conservation). Writes weights, every local replica's residual
the exchange's byte counts and what was applied to `OUT/worker<i>.npz`.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import dgc_tf.distribute  # noqa: E402

out, local, exchange, per_worker = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
dgc_tf.distribute.configure_logical_cpus(local)
strategy = dgc_tf.distribute.MultiWorkerMirroredStrategy(
    exchange=exchange, replicas_per_worker=local,
    per_worker={"auto": None, "on": True, "off": False}[per_worker])

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import dgc_tf.keras3  # noqa: E402

SHAPES = [(64, 300), (96, 128), (300,)]
STEPS = 4
CASES = {"momentum": dict(learning_rate=0.1, momentum=0.9, compress_ratio=0.01),
         "plain": dict(learning_rate=0.5, momentum=0.0, compress_ratio=0.02)}
replicas = strategy.num_replicas_in_sync
rng = np.random.default_rng(5)
weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
# grads[step][replica][variable], the same on every worker.
grads = [[[rng.normal(size=s).astype(np.float32) / replicas for s in SHAPES]
          for _ in range(replicas)] for _ in range(STEPS)]



def make_step(optimizer, variables):
    @tf.function
    def step(g):
        strategy.run(lambda g: optimizer.apply_gradients(zip(g, variables)), args=(g,))

    return step


saved = {}
for case, kwargs in CASES.items():
    with strategy.scope():
        variables = [keras.Variable(w, name=f"w{j}") for j, w in enumerate(weights)]
        optimizer = dgc_tf.keras3.DGCSGD(**kwargs)
        optimizer.build(variables)

    step = make_step(optimizer, variables)
    for t in range(STEPS):
        step(strategy.experimental_distribute_values_from_function(
            lambda ctx, t=t: [tf.constant(g) for g in grads[t][ctx.replica_id_in_sync_group]]))
    for j, v in enumerate(variables):
        saved[f"{case}/w{j}"] = np.asarray(v.numpy())
        slots = optimizer._compressor_slots.at(j)
        if slots.compressed:
            for r, local_value in enumerate(slots.residual.values):
                saved[f"{case}/residual{j}/{r}"] = np.asarray(local_value.numpy())
    stats = optimizer.compression_stats()
    for key in ("last_bytes_sent", "bytes_sent", "dense_bytes"):
        saved[f"{case}/{key}"] = np.array(stats[key])
# What was applied, for the test's reference.
saved["cases"] = np.array(json.dumps(CASES))
for j, w in enumerate(weights):
    saved[f"initial/w{j}"] = w
for t, step_grads in enumerate(grads):
    for r, replica_grads in enumerate(step_grads):
        for j, g in enumerate(replica_grads):
            saved[f"grad/{t}/{r}/{j}"] = g
saved["routes"] = np.array(json.dumps(strategy.exchange_routes))
saved["replicas"] = np.array(replicas)
np.savez(os.path.join(out, f"worker{index}.npz"), **saved)
print("done", json.dumps(strategy.exchange_routes), flush=True)
