"""A worker of tests/test_multiworker.py: tf_keras `fit` under dgc_tf's MultiWorkerMirroredStrategy.

Trains four copies of one small model on a slice of Fashion-MNIST: DGCSGD at
1% density, DGCSGD at full density without masking, dense SGD and VGCSGD (its
micro-batch step); writes all final weights, the losses and the compressors'
statistics to `<out>/worker<i>.npz`.
"""

import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

import dgc_tf  # noqa: E402
import dgc_tf.distribute  # noqa: E402
from dgc_tf.datasets.fashion_mnist import fashion_mnist_arrays  # noqa: E402

out = sys.argv[1]
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
strategy = dgc_tf.distribute.MultiWorkerMirroredStrategy()
(x, y), _ = fashion_mnist_arrays(train_size=512)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64).with_options(options)

results = {}
for name, make_optimizer in [
    ("dgc", lambda: dgc_tf.DGCSGD(learning_rate=0.05, compress_ratio=0.01)),
    ("dgc_full", lambda: dgc_tf.DGCSGD(learning_rate=0.05, compress_ratio=1.0,
                                       momentum_masking=False)),
    ("sgd", lambda: tf_keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)),
    ("vgc", lambda: dgc_tf.VGCSGD(learning_rate=0.05, min_compress_size=256)),
]:
    tf_keras.utils.set_random_seed(0)
    with strategy.scope():
        model = tf_keras.Sequential([
            tf_keras.layers.Flatten(input_shape=(28, 28, 1)),
            tf_keras.layers.Dense(32, activation="relu"), tf_keras.layers.Dense(10)])
        model.compile(make_optimizer(),
                      tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if name == "vgc":
        dgc_tf.vgc.use_micro_batch_step(model, num_groups=2)
    callbacks = [dgc_tf.callbacks.CompressionStats()] if name != "sgd" else []
    history = model.fit(dataset, epochs=2, verbose=2 if index == 0 else 0, callbacks=callbacks)
    for i, w in enumerate(model.get_weights()):
        results[f"{name}/{i}"] = w
    if name == "dgc":
        results["dgc/compression_ratio"] = np.array(history.history["dgc_compression_ratio"][-1])
        results["dgc/bytes_sent"] = np.array(history.history["dgc_bytes_sent"][-1])
        results["dgc/skipped"] = np.array(model.optimizer.skipped_steps.numpy())
    if name == "vgc":
        results["vgc/loss"] = np.array(history.history["loss"])
        results["vgc/density"] = np.array(history.history["dgc_density"][-1])
        results["vgc/skipped"] = np.array(model.optimizer.skipped_steps.numpy())
np.savez(os.path.join(out, f"worker{index}.npz"), **results)
print(f"worker {index} done", flush=True)
