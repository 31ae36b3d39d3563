"""A worker: Keras 3 `model.fit` under dgc_tf's MultiWorkerMirroredStrategy.

Keras 3's own `fit` fails under TensorFlow's multi-worker strategy
(keras-team/keras#20585); dgc_tf's strategy reduces what Keras hands it.
Trains DGCSGD at full density without masking and keras SGD on the same data;
writes both final weights to `<out>/worker<i>.npz`. With a second argument
`error_feedback`: keras Adam, and the same Adam inside TopKErrorFeedback at
full density and at 1%, with the 1% run's stats and this worker's own residual.
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
import dgc_tf.keras3  # noqa: E402
from dgc_tf.data import fashion_mnist_arrays  # noqa: E402

out = sys.argv[1]
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
strategy = dgc_tf.distribute.MultiWorkerMirroredStrategy()
(x, y), _ = fashion_mnist_arrays(train_size=256)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64).with_options(options)

RUNS = {
    "dgc": [
        ("dgc_full", lambda: dgc_tf.keras3.DGCSGD(0.05, compress_ratio=1.0,
                                                   momentum_masking=False)),
        ("sgd", lambda: keras.optimizers.SGD(0.05, momentum=0.9)),
    ],
    "error_feedback": [
        ("adam", lambda: keras.optimizers.Adam(0.003)),
        ("ef_full", lambda: dgc_tf.TopKErrorFeedback(keras.optimizers.Adam(0.003),
                                                     compress_ratio=1.0)),
        ("ef", lambda: dgc_tf.TopKErrorFeedback(keras.optimizers.Adam(0.003),
                                                compress_ratio=0.01)),
    ],
}

results = {}
for name, make_optimizer in RUNS[sys.argv[2] if len(sys.argv) > 2 else "dgc"]:
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
        results["ef_iterations"] = np.int64(optimizer.iterations.numpy())
        results["ef_inner_iterations"] = np.int64(optimizer.inner_optimizer.iterations.numpy())
        residual = optimizer._compressor_slots.at(0).residual  # the 784x48 kernel's
        results["ef_own_residual"] = np.asarray(residual.values[0].numpy())
np.savez(os.path.join(out, f"worker{index}.npz"), **results)
