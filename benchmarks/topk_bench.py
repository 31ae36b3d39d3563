"""Benchmark of the exact top-k by magnitude used by DGC (issue 3).

For each size and density (k = ceil(density * size)) it times, in one run:
  op        the compiled DGC>SampledTopK kernel (dgc_tf.ops._custom_op)
  fallback  the pure-TensorFlow sampled_topk_tf
  top_k     tf.math.top_k(tf.abs(x), k)  (what a naive DGC does)
  floor     tf.reduce_max(tf.abs(x))     (a one-pass lower bound)
each inside a tf.function, as the median of --repeats calls after warm-up
(calls interleaved across the methods, so background load hits all alike),
and prints a table with the ratios top_k / op (speed-up) and op / floor.

    python benchmarks/topk_bench.py                       # 1M, 25M, 100M
    python benchmarks/topk_bench.py --sizes 1M,25M --json /tmp/topk.json
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dgc_tf.ops import _custom_op, topk  # noqa: E402

METHODS = ("op", "fallback", "top_k", "floor")


def parse_size(text):
    text = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def size_label(n):
    return f"{n // 10**6}M" if n % 10**6 == 0 else (f"{n // 10**3}K" if n % 10**3 == 0 else str(n))


def make_functions(k, sample_ratio):
    op = _custom_op.load()
    fns = {
        "fallback": tf.function(lambda x: topk.sampled_topk_tf(x, k, sample_ratio=sample_ratio)[1],
                                jit_compile=False),
        "top_k": tf.function(lambda x: tf.math.top_k(tf.abs(x), k=k).indices, jit_compile=False),
        "floor": tf.function(lambda x: tf.reduce_max(tf.abs(x)), jit_compile=False),
    }
    if op is not None:
        fns["op"] = tf.function(lambda x: op(x, k, sample_ratio=sample_ratio)[1], jit_compile=False)
    return fns


def time_round_robin(fns, x, repeats, warmup):
    """Median seconds per call of each function, calls interleaved.

    Interleaving (op, fallback, top_k, floor, op, ...) exposes every method to
    the same background load, so the ratios stay meaningful on a shared machine.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn(x)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            out = fn(x)
            _ = out.shape  # CPU execution is synchronous; the result is ready
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), t) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,25M,100M", help="comma-separated sizes, e.g. 1M,25M,100M")
    parser.add_argument("--densities", default="0.001,0.01", help="comma-separated densities k/size")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per method (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sample-ratio", type=float, default=0.01)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    densities = [float(d) for d in args.densities.split(",") if d.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    dtype = tf.as_dtype(args.dtype)
    op_available = _custom_op.load() is not None
    if not op_available:
        print("note: the compiled op is not available; its column is n/a", file=sys.stderr)

    rows = []
    for n in sizes:
        x = tf.cast(tf.random.stateless_normal([n], seed=[1, 2]), dtype)
        for density in densities:
            k = max(1, math.ceil(density * n))
            fns = make_functions(k, args.sample_ratio)
            row = {"size": n, "density": density, "k": k}
            results = {}
            timed = time_round_robin({m: fns[m] for m in methods if m in fns}, x, args.repeats, args.warmup)
            for name in methods:
                if name not in fns:
                    row[name] = None
                    continue
                row[name], row[f"{name}_all"] = timed[name]
                if name != "floor":
                    results[name] = fns[name](x).numpy()
            if "op" in results and "top_k" in results:
                row["op_matches_top_k"] = bool(np.array_equal(np.sort(results["op"]), np.sort(results["top_k"])))
            if "op" in results and "fallback" in results:
                row["op_matches_fallback"] = bool(np.array_equal(results["op"], results["fallback"]))
            if row.get("op") and row.get("top_k"):
                row["speedup_vs_top_k"] = row["top_k"] / row["op"]
            if row.get("op") and row.get("floor"):
                row["op_over_floor"] = row["op"] / row["floor"]
            if row.get("fallback") and row.get("top_k"):
                row["fallback_speedup_vs_top_k"] = row["top_k"] / row["fallback"]
            rows.append(row)
            print_row(row, header=len(rows) == 1)
        del x

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "tensorflow": tf.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "dtype": args.dtype,
        "repeats": args.repeats,
        "sample_ratio": args.sample_ratio,
        "op_available": op_available,
        "timing": "median seconds per call of a tf.function, after warm-up, methods interleaved",
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return rows


def fmt_ms(seconds):
    return "n/a" if seconds is None else f"{seconds * 1e3:.2f}"


def print_row(row, header=False):
    if header:
        print(f"| {'size':>5} | {'density':>7} | {'k':>8} | {'op ms':>8} | {'fallback ms':>11} | "
              f"{'top_k ms':>9} | {'floor ms':>8} | {'top_k/op':>8} | {'op/floor':>8} | match |")
        print("|" + "|".join("-" * w for w in (7, 9, 10, 10, 13, 11, 10, 10, 10, 7)) + "|")
    speed = row.get("speedup_vs_top_k")
    ratio = row.get("op_over_floor")
    match = row.get("op_matches_top_k")
    print(f"| {size_label(row['size']):>5} | {row['density'] * 100:>6.1f}% | {row['k']:>8} | "
          f"{fmt_ms(row.get('op')):>8} | {fmt_ms(row.get('fallback')):>11} | {fmt_ms(row.get('top_k')):>9} | "
          f"{fmt_ms(row.get('floor')):>8} | {('%.1fx' % speed) if speed else 'n/a':>8} | "
          f"{('%.2fx' % ratio) if ratio else 'n/a':>8} | {('yes' if match else 'NO') if match is not None else 'n/a':>5} |",
          flush=True)


if __name__ == "__main__":
    main()
