"""A long-run worker: `fit` a tiny model for many steps, sampling threads and memory.

argv: <out_dir> <steps> [--flavour keras3|tf_keras] [--optimizer dgc|sgd|vgc]
      [--timeout SECONDS] [--samples N] [--strategy dgc|tf]

Runs under `dgc_tf.distribute.MultiWorkerMirroredStrategy`, or TensorFlow's
own with `--strategy tf` as a baseline (TF_CONFIG from the environment). `--timeout` passes `CommunicationOptions(timeout_seconds=...)`,
which is how a user would ask for a collective timeout; without it the
strategy's defaults apply. Every `steps / samples` steps the worker reads its
own thread count and resident memory from /proc/self/status; worker i writes
`<out>/soak.<i>.json` with those samples and the elapsed time.
"""

import argparse
import json
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("steps", type=int)
parser.add_argument("--flavour", choices=("keras3", "tf_keras"), default="tf_keras")
parser.add_argument("--optimizer", choices=("dgc", "sgd", "vgc"), default="dgc")
parser.add_argument("--timeout", type=float, default=None)
parser.add_argument("--strategy", choices=("dgc", "tf"), default="dgc",
                    help="dgc_tf's MultiWorkerMirroredStrategy, or TensorFlow's (a baseline)")
parser.add_argument("--samples", type=int, default=20)
args = parser.parse_args()

os.environ["TF_USE_LEGACY_KERAS"] = "1" if args.flavour == "tf_keras" else "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dgc_tf  # noqa: E402
import dgc_tf.distribute  # noqa: E402

options = None
if args.timeout is not None:
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=args.timeout)
# The strategy comes first: collectives are configured at program start-up.
strategy_class = (dgc_tf.distribute.MultiWorkerMirroredStrategy if args.strategy == "dgc"
                  else tf.distribute.MultiWorkerMirroredStrategy)
strategy = strategy_class(communication_options=options)
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]

if args.flavour == "tf_keras":
    import tf_keras as keras
else:
    import keras


def proc_status():
    """This process's thread count and resident memory (MiB), from the kernel."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return int(fields["Threads"][0]), int(fields["VmRSS"][0]) / 1024.0


class Sampler(keras.callbacks.Callback):
    def __init__(self, every):
        super().__init__()
        self.every, self.samples, self.start = max(1, every), [], time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if batch % self.every == 0 or batch == args.steps - 1:
            threads, rss = proc_status()
            self.samples.append({"step": batch + 1, "seconds": time.monotonic() - self.start,
                                 "threads": threads, "rss_mib": rss})


rng = np.random.default_rng(0)
x = rng.standard_normal((4096, 32)).astype("float32")
y = (x[:, :4].sum(axis=1) > 0).astype("int32")
data_options = tf.data.Options()
data_options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
dataset = (tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(16)
           .with_options(data_options))

keras.utils.set_random_seed(0)
with strategy.scope():
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(2)])
    if args.optimizer == "dgc":
        optimizer = dgc_tf.DGCSGD(learning_rate=0.05, momentum=0.9, compress_ratio=0.01,
                                  min_compress_size=1)
    elif args.optimizer == "vgc":
        optimizer = dgc_tf.VGCSGD(learning_rate=0.05, momentum=0.9)
    else:
        optimizer = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
if args.optimizer == "vgc":
    # VGC's fit step: micro-batch gradients for its variance estimate.
    dgc_tf.vgc.use_micro_batch_step(model, 2)

sampler = Sampler(args.steps // args.samples)
model.fit(dataset, epochs=1, steps_per_epoch=args.steps, verbose=0, callbacks=[sampler])
with open(os.path.join(args.out, f"soak.{index}.json"), "w") as f:
    json.dump({"flavour": args.flavour, "optimizer": args.optimizer, "timeout": args.timeout,
               "strategy": args.strategy,
               "steps": args.steps, "samples": sampler.samples}, f)
print(f"worker {index} finished {args.steps} steps", flush=True)
sys.exit(0)
