"""The main job (`make demo`): a small convnet on Fashion-MNIST, DGC next to dense SGD.

Trains the same model twice, once with `dgc_tf.DGCSGD` at 99.9% sparsity after
a warm-up and once with `keras.optimizers.SGD`, and prints the test accuracy of
both and the compression DGC achieved: the bytes a dense exchange would hand
to the collectives divided by the bytes DGC handed over.

With `TF_CONFIG` set (2 real local workers, as `make demo` runs it):

    python -m dgc_tf.launch --workers 2 -- examples/fashion_mnist_demo.py

it trains under `dgc_tf.distribute.MultiWorkerMirroredStrategy`; without, under
a `MirroredStrategy` with `dgc_tf.distribute.SparseAllGather` over the GPUs or
two logical CPUs:

    python examples/fashion_mnist_demo.py [--epochs 2] [--train-size 20000]
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import dgc_tf  # noqa: E402
import dgc_tf.distribute  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--compress-ratio", type=float, default=0.001)
    parser.add_argument("--warmup-epochs", type=float, default=0.5)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    return parser.parse_args()


def convnet(keras):
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ])


def train(name, make_optimizer, strategy, data, args):
    import keras

    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = convnet(keras)
        optimizer = make_optimizer()
        model.compile(optimizer=optimizer, jit_compile=False, metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # The same seed on every worker: each then takes its own shard of one order.
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(
        len(x_train), seed=0).batch(args.batch_size)
    model.fit(train.with_options(options), epochs=args.epochs, shuffle=False,
              verbose=2 if dgc_tf.distribute.is_chief() else 0)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, y_test, batch_size=512, verbose=0)
    result = {"optimizer": name, "test_accuracy": float(accuracy), "train_seconds": seconds}
    if hasattr(optimizer, "compression_stats"):
        stats = optimizer.compression_stats()
        steps = int(optimizer.iterations.numpy())
        result.update(
            steps=steps,
            compression_ratio=stats["compression_ratio"],
            compression_ratio_after_warmup=stats["dense_bytes"] / steps / stats["last_bytes_sent"],
            bytes_sent_per_step=stats["bytes_sent"] / steps,
            dense_bytes_per_step=stats["dense_bytes"] / steps)
    else:  # a dense all-reduce hands over every gradient, every step
        dense = float(sum(v.size * v.dtype.itemsize for v in model.get_weights()))
        result.update(compression_ratio=1.0, bytes_sent_per_step=dense,
                      dense_bytes_per_step=dense)
    return result


def main():
    args = parse_args()
    import keras

    from dgc_tf.datasets.fashion_mnist import fashion_mnist_arrays

    strategy = dgc_tf.distribute.strategy_from_environment(args.replicas)
    data = fashion_mnist_arrays(train_size=args.train_size)
    steps_per_epoch = -(-len(data[0][0]) // args.batch_size)
    warmup_steps = int(args.warmup_epochs * steps_per_epoch)
    log = print if dgc_tf.distribute.is_chief() else (lambda *a, **k: None)
    log(f"dgc_tf demo: {strategy.num_replicas_in_sync} replicas, {len(data[0][0])} training "
          f"images, {args.epochs} epochs, batch {args.batch_size}, selection op: "
          f"{'compiled' if dgc_tf.ops.using_custom_op() else 'pure-TF fallback'}")

    results = [
        train("SGD (dense)", lambda: keras.optimizers.SGD(args.learning_rate, momentum=0.9),
              strategy, data, args),
        train(f"DGCSGD ({100 * (1 - args.compress_ratio):g}% sparsity)",
              lambda: dgc_tf.keras3.DGCSGD(
                  learning_rate=args.learning_rate, momentum=0.9,
                  compress_ratio=args.compress_ratio, warmup_steps=warmup_steps),
              strategy, data, args),
    ]

    if not dgc_tf.distribute.is_chief():
        return
    print()
    print(f"{'optimizer':<28} {'test acc':>9} {'train s':>8} {'bytes/step':>11} "
          f"{'compression':>12}")
    for r in results:
        print(f"{r['optimizer']:<28} {r['test_accuracy']:>9.4f} {r['train_seconds']:>8.1f} "
              f"{r['bytes_sent_per_step']:>11.0f} {r['compression_ratio']:>11.1f}x")
    dgc = results[1]
    print(f"\nDGC sent {dgc['bytes_sent_per_step']:.0f} bytes per step per replica on average "
          f"where a dense exchange sends {dgc['dense_bytes_per_step']:.0f}: "
          f"{dgc['compression_ratio']:.1f}x smaller overall (warm-up included), "
          f"{dgc['compression_ratio_after_warmup']:.1f}x after warm-up.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
