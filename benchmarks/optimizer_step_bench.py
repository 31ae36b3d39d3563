"""Local cost of DGC: DGCSGD next to keras.optimizers.SGD, single replica, no exchange.

Two modes, both timing the optimizers interleaved in one process (each
repeat runs SGD then DGCSGD), so the ratio holds even on a busy machine:

* `--mode optimizer` (default): one optimizer step on one variable of each
  size: what DGC adds on each worker before anything is sent (momentum
  correction, top-k selection, masking).
* `--mode train`: a whole training step (forward, backward, apply) of
    mlp:  1024-4096-4096-1024-10, 25.2M parameters, batch 32;
    lstm: word LM, embedding 10k x 650, 2 x LSTM 650, softmax 10k
          (19.8M parameters), batch 20 x 35 tokens; the embedding's
          gradient is a tf.IndexedSlices.

    python benchmarks/optimizer_step_bench.py [--sizes 1M,25M] [--repeats 15] [--json out.json]
    python benchmarks/optimizer_step_bench.py --mode train [--models mlp,lstm] [--repeats 10]
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def parse_size(text):
    text = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * scale)


def make_step(optimizer, size):
    import keras

    side = int(round(size ** 0.5))
    variable = keras.Variable(np.zeros((side, size // side), np.float32))
    optimizer.build([variable])
    grad = tf.random.stateless_normal(variable.shape, seed=(1, 2))

    @tf.function
    def step():
        optimizer.apply_gradients([(grad, variable)])

    step()  # trace and warm up
    return step


def make_train_step(optimizer, model_name):
    """A compiled whole training step of a fresh model (same seed for every optimizer)."""
    import keras

    keras.utils.set_random_seed(0)
    if model_name == "mlp":
        model = keras.Sequential([
            keras.Input((1024,)),
            keras.layers.Dense(4096, activation="relu"),
            keras.layers.Dense(4096, activation="relu"),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dense(10)])
        x = tf.random.stateless_normal([32, 1024], seed=(1, 2))
        y = tf.random.stateless_uniform([32], seed=(3, 4), maxval=10, dtype=tf.int32)
    elif model_name == "lstm":
        model = keras.Sequential([
            keras.Input((35,), dtype="int32"),
            keras.layers.Embedding(10000, 650),
            keras.layers.LSTM(650, return_sequences=True),
            keras.layers.LSTM(650, return_sequences=True),
            keras.layers.Dense(10000)])
        x = tf.random.stateless_uniform([20, 35], seed=(1, 2), maxval=10000, dtype=tf.int32)
        y = tf.random.stateless_uniform([20, 35], seed=(3, 4), maxval=10000, dtype=tf.int32)
    else:
        raise ValueError(f"--models: unknown model {model_name!r}; choose from mlp, lstm.")
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    step()  # trace and warm up
    step()
    params = sum(v.shape.num_elements() for v in model.trainable_variables)
    return step, params


def time_interleaved(steps, repeats):
    """Median seconds per call of each step, calling them in turn `repeats` times."""
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():  # interleaved: both see the same load
            start = time.perf_counter()
            result = step()
            if result is not None:
                result.numpy()  # wait for it
            times[name].append(time.perf_counter() - start)
    return {f"{name}_ms": float(np.median(t) * 1e3) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["optimizer", "train"], default="optimizer")
    parser.add_argument("--sizes", default="1M,25M", help="variable sizes (optimizer mode)")
    parser.add_argument("--models", default="mlp,lstm", help="models (train mode)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--compress-ratio", type=float, default=0.001)
    parser.add_argument("--json")
    args = parser.parse_args()
    import keras

    import dgc_tf.keras3
    from dgc_tf.ops import using_custom_op

    def optimizers():
        return {"sgd": keras.optimizers.SGD(0.01, momentum=0.9),
                "dgc": dgc_tf.keras3.DGCSGD(0.01, momentum=0.9,
                                            compress_ratio=args.compress_ratio, warmup_steps=0)}

    rows = []
    if args.mode == "optimizer":
        for size in [parse_size(s) for s in args.sizes.split(",")]:
            steps = {name: make_step(opt, size) for name, opt in optimizers().items()}
            rows.append({"size": size, **time_interleaved(steps, args.repeats)})
    else:
        for model_name in args.models.split(","):
            steps, params = {}, None
            for name, opt in optimizers().items():
                steps[name], params = make_train_step(opt, model_name)
            rows.append({"model": model_name, "params": params,
                         **time_interleaved(steps, args.repeats)})
    for row in rows:
        row["dgc_over_sgd"] = row["dgc_ms"] / row["sgd_ms"]

    what = "optimizer step" if args.mode == "optimizer" else "whole train step"
    print(f"{what}; compiled ops: {'yes' if using_custom_op() else 'no (pure-TF fallback)'}, "
          f"density {args.compress_ratio}, median of {args.repeats}, SGD and DGCSGD interleaved")
    label = "size" if args.mode == "optimizer" else "model"
    print(f"| {label:>13} | {'SGD ms':>8} | {'DGCSGD ms':>9} | {'DGC/SGD':>7} |")
    print(f"|{'-' * 15}|{'-' * 10}|{'-' * 11}|{'-' * 9}|")
    for r in rows:
        name = (f"{r['size'] / 1e6:.0f}M" if args.mode == "optimizer"
                else f"{r['model']} {r['params'] / 1e6:.1f}M")
        print(f"| {name:>13} | {r['sgd_ms']:>8.1f} | {r['dgc_ms']:>9.1f} | "
              f"{r['dgc_over_sgd']:>6.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "custom_op": using_custom_op(), "rows": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
