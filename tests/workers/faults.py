"""A worker for the fault tests: tf_keras `fit` with BackupAndRestore, optionally dying.

argv: <backup_dir> <out_dir> <die_at_epoch or -1>. Worker 1 kills itself
(SIGKILL, no clean-up) at the start of batch 2 of epoch `die_at_epoch`.
Writes, per epoch end, the total residual (sum over workers) to
`<out>/residual_total.<epoch>.txt` (worker 0), and after `on_train_begin` (after
BackupAndRestore restored) to `<out>/restored.txt`; at the end the optimizer's
iteration count to `<out>/iterations.txt`.
"""

import json
import os
import signal
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

import dgc_tf  # noqa: E402
import dgc_tf.distribute  # noqa: E402
from dgc_tf.data import fashion_mnist_arrays  # noqa: E402

backup_dir, out, die_at_epoch = sys.argv[1], sys.argv[2], int(sys.argv[3])
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
# The strategy's defaults: a dead peer must be reported without a collective timeout.
strategy = dgc_tf.distribute.MultiWorkerMirroredStrategy()
(x, y), _ = fashion_mnist_arrays(train_size=512)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64).with_options(options)

tf_keras.utils.set_random_seed(0)
with strategy.scope():
    model = tf_keras.Sequential([tf_keras.layers.Flatten(input_shape=(28, 28, 1)),
                                 tf_keras.layers.Dense(32, activation="relu"),
                                 tf_keras.layers.Dense(10)])
    model.compile(dgc_tf.DGCSGD(learning_rate=0.05, compress_ratio=0.01),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def residual_total():
    slot = model.optimizer._compressor_slots.at(0)
    return float(np.abs(slot.residual.numpy()).sum())  # cross-replica read: sum over workers


class Probe(tf_keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        total = residual_total() if model.optimizer.iterations.numpy() else 0.0
        if index == 0:
            with open(os.path.join(out, "restored.txt"), "w") as f:
                f.write(f"{int(model.optimizer.iterations.numpy())} {total!r}\n")

    def on_train_batch_begin(self, batch, logs=None):
        if index == 1 and self.epoch == die_at_epoch and batch == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        total = residual_total()
        if index == 0:
            with open(os.path.join(out, f"residual_total.{epoch}.txt"), "w") as f:
                f.write(repr(total))


model.fit(dataset, epochs=3, verbose=0, callbacks=[
    tf_keras.callbacks.BackupAndRestore(backup_dir), Probe()])
if index == 0:
    with open(os.path.join(out, "iterations.txt"), "w") as f:
        f.write(str(int(model.optimizer.iterations.numpy())))
print(f"worker {index} finished", flush=True)
