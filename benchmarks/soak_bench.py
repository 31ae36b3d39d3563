"""Long-run soak: threads and resident memory of 2 workers over 20,000+ steps.

Each configuration starts 2 local workers with `dgc_tf.launch` under
`dgc_tf.distribute.MultiWorkerMirroredStrategy`; each `fit`s a tiny MLP for
`--steps` steps and samples its own thread count and RSS (from
/proc/self/status) `--samples` times (`benchmarks/workers/soak_worker.py`).
The table shows both workers' samples side by side; the JSON keeps them all.

    python benchmarks/soak_bench.py [--steps 20000] [--configs tf_keras:dgc,keras3:sgd:tf]
        [--timeout SECONDS] [--json benchmarks/results/soak.json]

`--timeout` sets a collective timeout through `CommunicationOptions`, to show
what that costs (TensorFlow keeps one sleeping thread per collective launch for
that long); leave it out for dgc_tf's defaults. This is a measurement, not a
test: nothing here asserts.
"""

import argparse
import io
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from dgc_tf.launch import launch  # noqa: E402

WORKER = os.path.join(HERE, "workers", "soak_worker.py")


def run(flavour, optimizer, strategy, steps, samples, timeout):
    """Run one configuration; returns (exit code, per-worker sample lists, seconds, log)."""
    with tempfile.TemporaryDirectory(prefix="dgc-soak-") as out:
        args = [out, str(steps), "--flavour", flavour, "--optimizer", optimizer,
                "--strategy", strategy, "--samples", str(samples)]
        if timeout is not None:
            args += ["--timeout", str(timeout)]
        log = io.StringIO()
        start = time.monotonic()
        code = launch(WORKER, args, workers=2, output=log)
        seconds = time.monotonic() - start
        workers = []
        for i in range(2):
            path = os.path.join(out, f"soak.{i}.json")
            workers.append(json.load(open(path))["samples"] if os.path.exists(path) else [])
    return code, workers, seconds, log.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--configs", default="tf_keras:dgc,keras3:dgc",
                        help="comma-separated flavour:optimizer[:strategy] (optimizer: dgc, "
                             "sgd, vgc; strategy: dgc (default) or tf, TensorFlow's own)")
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--json", default=None)
    opts = parser.parse_args()

    results = []
    for config in opts.configs.split(","):
        flavour, optimizer, strategy = (config.split(":") + ["dgc"])[:3]
        code, workers, seconds, log = run(flavour, optimizer, strategy, opts.steps,
                                          opts.samples, opts.timeout)
        print(f"\n{flavour} {optimizer} under {strategy}'s strategy, {opts.steps} steps, "
              f"collective timeout "
              f"{opts.timeout or 'none'}: exit {code}, {seconds:.0f} s")
        print(f"{'step':>7} {'threads w0':>10} {'threads w1':>10} {'RSS w0 MiB':>10} "
              f"{'RSS w1 MiB':>10}")
        for a, b in zip(*workers):
            print(f"{a['step']:>7} {a['threads']:>10} {b['threads']:>10} "
                  f"{a['rss_mib']:>10.0f} {b['rss_mib']:>10.0f}")
        if code != 0:
            print("\n".join(log.splitlines()[-15:]))
        results.append({"flavour": flavour, "optimizer": optimizer, "strategy": strategy,
                        "steps": opts.steps,
                        "timeout": opts.timeout, "exit_code": code, "seconds": seconds,
                        "workers": workers})
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
