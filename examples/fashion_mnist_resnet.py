"""A small ResNet on Fashion-MNIST padded to 32x32: dense momentum SGD next to DGC and VGC.

The CIFAR ResNet of He et al. 2016 (section 4.2) at depth 6n+2: a 3x3 conv with
16 filters, three stages of n basic blocks (two 3x3 convs, batch norm, ReLU)
with 16, 32, 64 filters, stride 2 at the start of stages 2 and 3 (1x1
projection shortcut there), global average pooling, a 10-way dense layer.
`--blocks 1` is ResNet-8 (78k weights), 2 ResNet-14, 3 ResNet-20. The 28x28
images are zero-padded to 32x32; no augmentation.

All runs use the same model, seed, data order and schedule: momentum 0.9,
learning rate `--learning-rate` (default 0.1 for the global batch of 128),
divided by 10 at 50% and 75% of the run, decoupled weight decay
`--weight-decay` (Keras semantics, the same for every optimizer):

* dense: `keras.optimizers.SGD(lr, momentum=0.9)`;
* DGC: `dgc_tf.keras3.DGCSGD(lr, momentum=0.9, compress_ratio=0.001,
  warmup_steps=<--warmup-epochs>)`: momentum correction, momentum factor
  masking, 99.9% sparsity after the warm-up. Kernels with fewer than 1,024
  weights (the first conv), biases and batch-norm parameters are exchanged
  densely, as `min_compress_size` says.
* VGC: `dgc_tf.vgc.VGCSGD(lr, momentum=0.9, alpha=--alpha, zeta=--zeta)`
  (variance-based compression, Tsuzuku et al. 2018; no warm-up, the count
  sent varies per step) with `dgc_tf.vgc.use_micro_batch_step(model,
  --vgc-groups)`: each replica's batch is split into `--vgc-groups` strided
  micro-batches, one forward/backward each, for the estimate of the mean
  squared per-example gradient. **BatchNorm caveat:** in the VGC run the
  batch-norm layers normalise with micro-batch statistics (like ghost batch
  norm: 64 / 4 = 16 images per micro-batch at the defaults on 2 replicas) and
  update their moving statistics once per micro-batch, so VGC's model does
  not train exactly the function the dense and DGC runs train.

`--optimizer both` runs dense and DGC, `all` dense, DGC and VGC. `adam` is
`keras.optimizers.Adam(lr)` dense, `adam-ef` the same Adam inside
`dgc_tf.TopKErrorFeedback(compress_ratio, warmup_steps=<--warmup-epochs>)`
(error-feedback top-k, no momentum correction), `adam-both` runs the two; give
them an Adam learning rate (`--learning-rate 0.001`). `sgd-ef` is the dense run's
SGD inside `TopKErrorFeedback`: DGC without momentum correction.

Two real local workers:

    python -m dgc_tf.launch --workers 2 -- examples/fashion_mnist_resnet.py --epochs 30

Single process (MirroredStrategy over the GPUs or 2 logical CPUs):

    python examples/fashion_mnist_resnet.py --epochs 1 --train-size 2000

`--max-steps-per-epoch` caps the batches per epoch (tests, short runs).
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from dgc_tf.distribute import is_chief, strategy_from_environment  # noqa: E402
from fashion_mnist_demo import convnet  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-steps-per-epoch", type=int, default=None)
    parser.add_argument("--optimizer", choices=["dense", "dgc", "vgc", "both", "all",
                                                    "adam", "adam-ef", "adam-both", "sgd-ef"],
                        default="both", help="both: dense and dgc; all: dense, dgc and vgc")
    parser.add_argument("--json", help="write the results here (chief only)")
    parser.add_argument("--train-size", type=int, default=None, help="first N training images")
    parser.add_argument("--test-size", type=int, default=None, help="first N test images")
    parser.add_argument("--blocks", type=int, default=1, help="basic blocks per stage (n)")
    parser.add_argument("--model", choices=["resnet", "convnet"], default="resnet",
                        help="convnet: the demo's small convnet (28x28 inputs, no batch norm)")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch size")
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--compress-ratio", type=float, default=0.001)
    parser.add_argument("--warmup-epochs", type=float, default=1.0,
                        help="DGC: epochs of the sparsity warm-up")
    parser.add_argument("--lr-warmup-epochs", type=float, default=0.0,
                        help="every optimizer: linear learning-rate warm-up from lr/10")
    parser.add_argument("--local-clipnorm", type=float, default=None,
                        help="DGC: local gradient clipping (DGCSGD's local_clipnorm)")
    parser.add_argument("--alpha", type=float, default=1.0,
                        help="VGC: send where r^2 > alpha * s / B")
    parser.add_argument("--zeta", type=float, default=0.999, help="VGC: decay of s")
    parser.add_argument("--vgc-groups", type=int, default=4,
                        help="VGC: micro-batches per replica batch for the variance estimate")
    parser.add_argument("--replicas", type=int, default=2,
                        help="replicas of the single-process MirroredStrategy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exchange", choices=["auto", "leader", "allgather"], default="auto",
                        help="DGC's sparse exchange between replicas (the `exchange` of "
                             "dgc_tf.distribute.SparseAllGather)")
    return parser.parse_args(argv)


def resnet(keras, blocks, num_classes=10):
    """CIFAR-style ResNet-(6*blocks+2), 16-32-64 filters, on [32, 32, 1] inputs."""
    layers = keras.layers
    init = "he_normal"

    def conv_bn(x, filters, stride=1, kernel=3):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                          kernel_initializer=init)(x)
        return layers.BatchNormalization()(x)

    inputs = keras.Input((32, 32, 1))
    x = layers.ReLU()(conv_bn(inputs, 16))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            y = layers.ReLU()(conv_bn(x, filters, stride))
            y = conv_bn(y, filters)
            if stride != 1 or shortcut.shape[-1] != filters:
                shortcut = conv_bn(shortcut, filters, stride, kernel=1)
            x = layers.ReLU()(layers.Add()([shortcut, y]))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, kernel_initializer=init)(x)
    return keras.Model(inputs, outputs, name=f"resnet{6 * blocks + 2}")


def pad32(x):
    return np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))


def train(name, strategy, data, args):
    import keras

    import dgc_tf.keras3
    import dgc_tf.vgc

    (x_train, y_train), (x_test, y_test) = data
    full_epoch = -(-len(x_train) // args.batch_size)
    steps_per_epoch = min(args.max_steps_per_epoch or full_epoch, full_epoch)
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = int(args.warmup_epochs * steps_per_epoch)
    lr_warmup_steps = int(args.lr_warmup_epochs * steps_per_epoch)

    keras.utils.set_random_seed(args.seed)
    with strategy.scope():
        model = resnet(keras, args.blocks) if args.model == "resnet" else convnet(keras)
        # A float, set before every batch by `StepDecay`: DGCSGD with a LearningRateSchedule
        # fails under a strategy (the schedule's per-replica value reaches
        # the frame's apply_updates in cross-replica context).
        lr = args.learning_rate
        if name in ("dense", "sgd-ef"):
            optimizer = keras.optimizers.SGD(lr, momentum=args.momentum,
                                             weight_decay=args.weight_decay or None)
        elif name in ("adam", "adam-ef"):
            optimizer = keras.optimizers.Adam(lr, weight_decay=args.weight_decay or None)
        elif name == "vgc":
            optimizer = dgc_tf.vgc.VGCSGD(
                learning_rate=lr, momentum=args.momentum, alpha=args.alpha, zeta=args.zeta,
                weight_decay=args.weight_decay or None)
        else:
            optimizer = dgc_tf.keras3.DGCSGD(
                learning_rate=lr, momentum=args.momentum, compress_ratio=args.compress_ratio,
                warmup_steps=warmup_steps, weight_decay=args.weight_decay or None,
                local_clipnorm=args.local_clipnorm)
        if name.endswith("-ef"):
            optimizer = dgc_tf.TopKErrorFeedback(
                optimizer, compress_ratio=args.compress_ratio, warmup_steps=warmup_steps,
                local_clipnorm=args.local_clipnorm)
        model.compile(optimizer=optimizer, jit_compile=False, metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if name == "vgc":
        # Micro-batch forward/backward passes (BatchNorm sees micro-batch statistics).
        dgc_tf.vgc.use_micro_batch_step(model, args.vgc_groups)

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # The same seed on every worker: each then takes its own shard of one order.
    train_data = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(
        len(x_train), seed=args.seed, reshuffle_each_iteration=True).batch(args.batch_size)
    if args.max_steps_per_epoch:
        train_data = train_data.repeat()
    test_data = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(512)
    history = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            row = {"epoch": epoch + 1, "seconds": time.perf_counter() - start,
                   "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
                   "train_loss": float(logs.get("loss", float("nan"))),
                   "train_accuracy": float(logs.get("accuracy", float("nan"))),
                   "test_accuracy": float(logs.get("val_accuracy", float("nan")))}
            if hasattr(optimizer, "compression_stats"):
                stats = optimizer.compression_stats()
                row["compression_ratio_so_far"] = stats["compression_ratio"]
                if "density" in stats:
                    row["density_so_far"] = stats["density"]
            history.append(row)

    class StepDecay(keras.callbacks.Callback):
        """lr / 10 from 50% of the steps on, lr / 100 from 75% on; before that, a linear
        warm-up from lr / 10 over the first `--lr-warmup-epochs` (none by default)."""

        def __init__(self):
            super().__init__()
            self.current = args.learning_rate

        def on_train_batch_begin(self, batch, logs=None):
            step = int(optimizer.iterations.numpy())
            value = args.learning_rate * (0.1 ** ((step >= int(0.5 * total_steps))
                                                  + (step >= int(0.75 * total_steps))))
            if step < lr_warmup_steps:  # linear from lr / 10 to lr
                value *= 0.1 + 0.9 * step / lr_warmup_steps
            if value != self.current:
                optimizer.learning_rate = value
                self.current = value

    class StepTimer(keras.callbacks.Callback):
        """Time between successive batch starts within an epoch (StepDecay reads
        `optimizer.iterations` at every batch start, which waits for the previous step)."""

        def __init__(self):
            super().__init__()
            self.last, self.intervals = None, []

        def on_epoch_begin(self, epoch, logs=None):
            self.last = None

        def on_train_batch_begin(self, batch, logs=None):
            now = time.perf_counter()
            if self.last is not None:
                self.intervals.append(now - self.last)
            self.last = now

    timer = StepTimer()
    start = time.perf_counter()
    model.fit(train_data.with_options(options), epochs=args.epochs,
              steps_per_epoch=steps_per_epoch if args.max_steps_per_epoch else None,
              validation_data=test_data.with_options(options), shuffle=False,
              callbacks=[StepDecay(), timer, Record()], verbose=2 if is_chief() else 0)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(test_data.with_options(options), verbose=0)
    steps = int(optimizer.iterations.numpy())
    result = {"optimizer": name, "test_accuracy": float(accuracy), "train_seconds": seconds,
              "median_step_seconds": (float(np.median(timer.intervals)) if timer.intervals
                                      else None),
              "steps": steps, "steps_per_epoch": steps_per_epoch,
              "parameters": int(model.count_params()), "history": history}
    if name in ("dgc", "vgc", "adam-ef", "sgd-ef"):
        stats = optimizer.compression_stats()
        result.update(
            compression_ratio=stats["compression_ratio"],
            compression_ratio_last_step=stats["dense_bytes"] / steps / stats["last_bytes_sent"],
            bytes_sent_per_step=stats["bytes_sent"] / steps,
            dense_bytes_per_step=stats["dense_bytes"] / steps)
        if name in ("dgc", "adam-ef", "sgd-ef"):
            result.update(warmup_steps=warmup_steps)
            if hasattr(strategy, "exchange_routes"):  # the route each variable took last
                result.update(exchange=args.exchange, exchange_routes=strategy.exchange_routes)
        else:
            # Fraction of the compressed variables' elements sent, over replicas and steps.
            result.update(density=stats["density"], sent_elements=stats["sent_elements"],
                          alpha=args.alpha, zeta=args.zeta, vgc_groups=args.vgc_groups,
                          skipped_steps=stats["skipped_steps"],
                          note="VGC: BatchNorm normalises with micro-batch statistics "
                               f"({args.vgc_groups} micro-batches per replica batch)")
    return result


def main(argv=None):
    args = parse_args(argv)

    import dgc_tf
    from dgc_tf.datasets.fashion_mnist import fashion_mnist_arrays

    strategy = strategy_from_environment(args.replicas, exchange=args.exchange)
    (x, y), (x_test, y_test) = fashion_mnist_arrays(args.train_size, args.test_size)
    if args.model == "resnet":
        x, x_test = pad32(x), pad32(x_test)
    data = (x, y), (x_test, y_test)
    log = print if is_chief() else (lambda *a, **k: None)
    model_name = f"ResNet-{6 * args.blocks + 2}" if args.model == "resnet" else "convnet"
    log(f"Fashion-MNIST {model_name}: {strategy.num_replicas_in_sync} replicas, "
        f"{len(x)} training / {len(x_test)} test images ({x.shape[1]}x{x.shape[2]}), "
        f"{args.epochs} epochs, batch "
        f"{args.batch_size}, selection op: "
        f"{'compiled' if dgc_tf.ops.using_custom_op() else 'pure-TF fallback'}", flush=True)

    names = {"both": ["dense", "dgc"], "all": ["dense", "dgc", "vgc"],
             "adam-both": ["adam", "adam-ef"]}.get(
        args.optimizer, [args.optimizer])
    results = [train(name, strategy, data, args) for name in names]
    if not is_chief():
        return results
    print()
    print(f"{'optimizer':<10} {'test acc':>9} {'train s':>9} {'ms/step':>8} {'bytes/step':>11} "
          f"{'compression':>12} {'density':>8}")
    for r in results:
        ratio = r.get("compression_ratio")
        sent = r.get("bytes_sent_per_step")
        density = r.get("density")
        print(f"{r['optimizer']:<10} {r['test_accuracy']:>9.4f} {r['train_seconds']:>9.1f} "
              f"{1000 * (r['median_step_seconds'] or float('nan')):>8.0f} "
              f"{sent if sent is not None else float('nan'):>11.0f} "
              + (f"{ratio:>11.1f}x" if ratio else f"{'1.0x':>12}")
              + (f" {density:>8.4f}" if density is not None else f" {'-':>8}"))
    if "vgc" in names:
        print(f"(VGC: batch norm uses micro-batch statistics, {args.vgc_groups} micro-batches "
              "per replica batch)")
    print("(train s: model.fit including the per-epoch evaluation; ms/step: median time "
          "between batch starts)")
    print("RESULT_JSON " + json.dumps(
        {r["optimizer"]: {k: r.get(k) for k in ("test_accuracy", "compression_ratio", "density")}
         for r in results}))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "replicas": strategy.num_replicas_in_sync,
                       "workers": int(os.environ.get("DGC_TF_NUM_WORKERS", "1")),
                       "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
