"""Local cost of one optimizer step: DGCSGD next to keras.optimizers.SGD.

What DGC adds on each worker before anything is sent: momentum correction,
the top-k selection and masking, on one variable of each size, single
replica, no exchange. Both optimizers are timed interleaved in one run, so
the ratio holds even on a busy machine.

    python benchmarks/optimizer_step_bench.py [--sizes 1M,25M] [--repeats 15] [--json out.json]
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,25M")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--compress-ratio", type=float, default=0.001)
    parser.add_argument("--json")
    args = parser.parse_args()
    import keras

    import dgc_tf.keras3
    from dgc_tf.ops import using_custom_op

    rows = []
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        steps = {
            "sgd": make_step(keras.optimizers.SGD(0.1, momentum=0.9), size),
            "dgc": make_step(dgc_tf.keras3.DGCSGD(0.1, compress_ratio=args.compress_ratio), size),
        }
        times = {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():  # interleaved: both see the same load
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        row = {"size": size, **{f"{n}_ms": float(np.median(t) * 1e3) for n, t in times.items()}}
        row["dgc_over_sgd"] = row["dgc_ms"] / row["sgd_ms"]
        rows.append(row)

    print(f"selection: {'compiled op' if using_custom_op() else 'pure-TF fallback'}, "
          f"density {args.compress_ratio}, median of {args.repeats}")
    print(f"| {'size':>6} | {'SGD ms':>8} | {'DGCSGD ms':>9} | {'DGC/SGD':>7} |")
    print(f"|{'-' * 8}|{'-' * 10}|{'-' * 11}|{'-' * 9}|")
    for r in rows:
        print(f"| {r['size'] / 1e6:>5.0f}M | {r['sgd_ms']:>8.1f} | {r['dgc_ms']:>9.1f} | "
              f"{r['dgc_over_sgd']:>6.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "custom_op": using_custom_op(), "rows": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
