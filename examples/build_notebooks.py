"""Writes examples/*.ipynb from the cell sources below (stored without outputs).

    python examples/build_notebooks.py

Edit the cells here, not the .ipynb files, and re-run; tests/test_notebooks.py
executes the notebooks with small settings (DGC_TF_NOTEBOOK_SMALL=1).
"""

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

INSTALL = '''# Where dgc_tf comes from: a git URL of your copy of the repository, or a local path.
DGC_TF_SOURCE = "git+https://github.com/YOUR_ORG/dgc_tf.git"

import importlib.util, os, subprocess, sys
SMALL = os.environ.get("DGC_TF_NOTEBOOK_SMALL") == "1"  # CI runs the notebooks small
if importlib.util.find_spec("dgc_tf") is None:
    import shutil
    import tensorflow as tf
    # Never replace the runtime's TensorFlow: tf-keras of the same minor version, and
    # dgc_tf's own requirement is a range that includes it. The op is compiled against
    # this TensorFlow (--no-build-isolation), with the CUDA kernel where there is a GPU.
    tf_minor = ".".join(tf.__version__.split(".")[:2])
    env = dict(os.environ, DGC_TF_CUDA="1" if shutil.which("nvidia-smi") else "0")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"tf-keras=={tf_minor}.*",
                    "--no-build-isolation", DGC_TF_SOURCE], check=True, env=env)
import dgc_tf
print("dgc_tf", dgc_tf.__version__, "| compiled op:", dgc_tf.ops.using_custom_op())'''

QUICKSTART = [
    new_markdown_cell(
        "# dgc_tf quickstart: Deep Gradient Compression with Keras 3\n\n"
        "Trains a small convnet on Fashion-MNIST twice under `tf.distribute.MirroredStrategy` "
        "(the Colab GPU, or two logical CPUs): with dense `SGD` and with `dgc_tf.DGCSGD`, which "
        "sends only the 0.1% largest entries of each replica's accumulated gradient. Then plots "
        "loss, accuracy and the compression ratio per step."),
    new_code_cell(INSTALL),
    new_code_cell('''import tensorflow as tf
if not tf.config.list_physical_devices("GPU"):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
devices = [d.name for d in tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")]
strategy = tf.distribute.MirroredStrategy(
    devices, cross_device_ops=dgc_tf.distribute.SparseAllGather(devices))
print("replicas:", strategy.num_replicas_in_sync)'''),
    new_code_cell('''import keras
from dgc_tf.data import fashion_mnist_arrays

(x_train, y_train), (x_test, y_test) = fashion_mnist_arrays(
    train_size=2000 if SMALL else 20000, test_size=1000 if SMALL else None)
EPOCHS, BATCH = (1, 64) if SMALL else (3, 64)
steps_per_epoch = len(x_train) // BATCH

def convnet():
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])

class PerStep(keras.callbacks.Callback):
    """Keeps every batch's logs, for the plots."""
    def on_train_begin(self, logs=None):
        self.steps = []
    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(dict(logs))

def train(optimizer):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = convnet()
        model.compile(optimizer=optimizer, metrics=["accuracy"], jit_compile=False,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    per_step = PerStep()
    callbacks = [per_step]
    if isinstance(optimizer, dgc_tf.keras3.DGCSGD):
        callbacks.insert(0, dgc_tf.callbacks.KerasCompressionStats())
    model.fit(x_train, y_train, batch_size=BATCH, epochs=EPOCHS, callbacks=callbacks, verbose=2)
    return model, per_step.steps'''),
    new_code_cell('''with strategy.scope():
    dense_model, dense_steps = train(keras.optimizers.SGD(0.05, momentum=0.9))
    dgc_model, dgc_steps = train(dgc_tf.keras3.DGCSGD(
        0.05, momentum=0.9, compress_ratio=0.001, warmup_steps=steps_per_epoch // 2))
for name, model in [("SGD", dense_model), ("DGCSGD", dgc_model)]:
    print(f"{name:7s} test accuracy {model.evaluate(x_test, y_test, verbose=0)[1]:.4f}")
print("DGC compression so far:", dgc_model.optimizer.compression_stats())'''),
    new_code_cell('''import matplotlib
import matplotlib.pyplot as plt
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for name, steps in [("SGD", dense_steps), ("DGCSGD", dgc_steps)]:
    axes[0].plot([s["loss"] for s in steps], label=name)
    axes[1].plot([s["accuracy"] for s in steps], label=name)
# Per step: what a dense exchange hands over each step (the same every step) over what
# DGC handed over in that step (dgc_compression_ratio in the logs is since the start).
stats = dgc_model.optimizer.compression_stats()
dense_per_step = stats["dense_bytes"] / len(dgc_steps)
axes[2].plot([dense_per_step / s["dgc_bytes_sent"] for s in dgc_steps], color="C1", label="this step")
axes[2].plot([s["dgc_compression_ratio"] for s in dgc_steps], color="C2", label="since the start")
axes[2].set_yscale("log"); axes[2].legend()
for ax, title in zip(axes, ["training loss", "training accuracy", "DGC compression ratio (dense bytes / sent)"]):
    ax.set_title(title); ax.set_xlabel("step")
axes[0].legend(); axes[1].legend()
plt.show()'''),
]

WORKER_SCRIPT = '''"""Written by multi_worker.ipynb: one worker of a 2-worker tf_keras fit with DGC."""
import os, sys, json
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf, tf_keras, dgc_tf, dgc_tf.distribute
from dgc_tf.data import fashion_mnist_arrays

small = os.environ.get("DGC_TF_NOTEBOOK_SMALL") == "1"
log_dir = sys.argv[1]
chief = json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0
strategy = dgc_tf.distribute.MultiWorkerMirroredStrategy()
(x, y), _ = fashion_mnist_arrays(train_size=1024 if small else 20000)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).batch(64).with_options(options)
with strategy.scope():
    model = tf_keras.Sequential([tf_keras.layers.Flatten(input_shape=(28, 28, 1)),
                                 tf_keras.layers.Dense(256, activation="relu"), tf_keras.layers.Dense(10)])
    model.compile(dgc_tf.DGCSGD(0.05, compress_ratio=0.001, warmup_steps=20),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
callbacks = [dgc_tf.callbacks.CompressionStats(log_dir if chief else None)]
if chief:
    callbacks.append(tf_keras.callbacks.TensorBoard(log_dir))
model.fit(data, epochs=1 if small else 3, verbose=2 if chief else 0, callbacks=callbacks)
print("compression:", model.optimizer.compression_stats())
'''

MULTI_WORKER = [
    new_markdown_cell(
        "# dgc_tf on two workers\n\n"
        "Starts 2 local worker processes with `dgc_tf.launch` (each gets `TF_CONFIG` on a free "
        "localhost port), trains with tf_keras `fit` under `dgc_tf.distribute."
        "MultiWorkerMirroredStrategy`, shows each worker's log, the compression statistics, and "
        "the per-step DGC scalars that TensorBoard shows."),
    new_code_cell(INSTALL),
    new_code_cell('''import io, os, tempfile
work = tempfile.mkdtemp(prefix="dgc_tf_notebook_")
script, log_dir = os.path.join(work, "worker.py"), os.path.join(work, "logs")
with open(script, "w") as f:
    f.write(WORKER_SCRIPT)
print(script)'''.replace("WORKER_SCRIPT", repr(WORKER_SCRIPT))),
    new_code_cell('''from dgc_tf.launch import launch
output = io.StringIO()
code = launch(script, args=[log_dir], workers=2, output=output,
              env={"DGC_TF_NOTEBOOK_SMALL": os.environ.get("DGC_TF_NOTEBOOK_SMALL", "0"),
                   "TF_CPP_MIN_LOG_LEVEL": "2"})
lines = output.getvalue().splitlines()
print("\\n".join(l for l in lines if "[worker" in l and ("step" in l or "compression" in l or "Epoch" in l)))
assert code == 0, output.getvalue()[-3000:]'''),
    new_code_cell('''# The per-step scalars CompressionStats wrote next to TensorBoard's own.
import glob
import matplotlib.pyplot as plt
import tensorflow as tf
from tensorflow.core.util import event_pb2
series = {}
for path in glob.glob(os.path.join(log_dir, "train", "events*")):
    for record in tf.data.TFRecordDataset(path):
        event = event_pb2.Event.FromString(record.numpy())
        for value in event.summary.value:
            if value.tag.startswith("batch_dgc"):
                series.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor).item()))
fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.5))
for ax, (tag, points) in zip(axes, sorted(series.items())):
    ax.plot(*zip(*sorted(points))); ax.set_title(tag); ax.set_xlabel("step")
plt.show()'''),
    new_code_cell('''# In Colab or Jupyter, the same in TensorBoard (skipped in CI):
if not SMALL:
    get_ipython().run_line_magic("load_ext", "tensorboard")
    get_ipython().run_line_magic("tensorboard", f"--logdir {log_dir}")'''),
]


def write(name, cells):
    notebook = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "accelerator": "GPU", "colab": {"provenance": []}})
    nbformat.write(notebook, os.path.join(HERE, name))


if __name__ == "__main__":
    write("quickstart.ipynb", QUICKSTART)
    write("multi_worker.ipynb", MULTI_WORKER)
