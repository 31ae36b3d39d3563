"""A worker: Keras 3 `model.fit` with TopKErrorFeedback(Adam) under dgc_tf's
MultiWorkerMirroredStrategy (2 real processes).

Trains keras Adam dense, the same Adam inside TopKErrorFeedback at full
density (which must equal it) and at 1% density, on the same data; writes the
final weights, the compression ratio and this worker's own residual to
`<out>/worker<i>.npz`.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dgc_tf  # noqa: E402
import dgc_tf.distribute  # noqa: E402
from dgc_tf.datasets.fashion_mnist import fashion_mnist_arrays  # noqa: E402

out = sys.argv[1]
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
strategy = dgc_tf.distribute.MultiWorkerMirroredStrategy()
(x, y), _ = fashion_mnist_arrays(train_size=256)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64).with_options(options)

results = {}
for name, make_optimizer in [
    ("adam", lambda: keras.optimizers.Adam(0.003)),
    ("ef_full", lambda: dgc_tf.TopKErrorFeedback(keras.optimizers.Adam(0.003),
                                                 compress_ratio=1.0)),
    ("ef", lambda: dgc_tf.TopKErrorFeedback(keras.optimizers.Adam(0.003), compress_ratio=0.01)),
]:
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(48, activation="relu"),
                                  keras.layers.Dense(10)])
        model.compile(make_optimizer(), jit_compile=False,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(dataset, epochs=2, verbose=2 if index == 0 else 0)
    for i, w in enumerate(model.get_weights()):
        results[f"{name}/{i}"] = np.asarray(w)
    if name == "ef":
        optimizer = model.optimizer
        results["ef_ratio"] = np.float64(optimizer.compression_stats()["compression_ratio"])
        results["ef_inner_iterations"] = np.int64(optimizer.inner_optimizer.iterations.numpy())
        results["ef_iterations"] = np.int64(optimizer.iterations.numpy())
        residual = optimizer._compressor_slots.at(0).residual  # the 784x48 kernel's
        results["ef_own_residual"] = np.asarray(residual.values[0].numpy())
np.savez(os.path.join(out, f"worker{index}.npz"), **results)
