"""Computed time to accuracy per link: steps to a target (a measured training run) x step time
per link (a measured network benchmark run). Nothing is trained or timed here.

A full-schedule run of examples/fashion_mnist_resnet.py (`--json`) gives each
optimizer's test accuracy after every epoch; benchmarks/network_bench.py
(`--json`) gives the median step time of the same model and per-worker batch
for each method and link. For every target accuracy this prints, per link and
method, the steps of the first epoch whose test accuracy reached the target
times that link's step time. The result is COMPUTED, not measured: it leaves
out evaluation and input time, and accuracy is only known at epoch ends, so
steps-to-target is rounded up to a whole epoch.

Which accuracy run stands for which benchmark mode: dense -> dense, dgc ->
dgc; `--assume` maps modes that had no accuracy run onto one that had
(default dense16=dense: float16 all-reduce assumed to need dense's steps, an
assumption that is printed and stored with the result).

    python benchmarks/time_to_accuracy.py \\
        --accuracy benchmarks/results/fashion_mnist_convnet_2workers_10ep_60k.json \\
        --steps benchmarks/results/network_convnet_resnet8_2workers.json --model convnet \\
        --targets 0.90,0.909,dense-final --json out.json
"""

import argparse
import json
import sys


def steps_to_target(history, steps_per_epoch, target):
    """Steps at the end of the first epoch whose test accuracy is >= target (None: never)."""
    for row in history:
        if row["test_accuracy"] >= target:
            return row["epoch"] * steps_per_epoch
    return None


def step_times(bench, model, workers):
    """{mode: {rate: median step seconds}} of the benchmark's successful cases."""
    out = {}
    for case in bench["cases"]:
        if (case["model"], case["workers"], case.get("status")) == (model, workers, "ok"):
            out.setdefault(case["mode"], {})[case["rate"]] = case["median_step_s"]
    return out


def compute(accuracy_run, bench, model, targets, assume):
    """Rows of (target, link, mode, steps, seconds) and the notes that qualify them."""
    runs = {r["optimizer"]: r for r in accuracy_run["results"]}
    workers = accuracy_run.get("workers") or accuracy_run.get("replicas")
    times = step_times(bench, model, workers)
    rows = []
    for label, target in targets:
        for mode, by_rate in times.items():
            source = assume.get(mode, mode)
            if source not in runs:
                continue
            run = runs[source]
            steps = steps_to_target(run["history"], run["steps_per_epoch"], target)
            for rate, seconds in by_rate.items():
                rows.append({"target": label, "target_accuracy": target, "rate": rate,
                             "mode": mode, "accuracy_from": source, "steps": steps,
                             "step_s": seconds,
                             "computed_seconds": None if steps is None else steps * seconds})
    return rows


def parse_targets(text, accuracy_run):
    out = []
    for item in text.split(","):
        item = item.strip()
        if item.endswith("-final"):
            name = item[:-len("-final")]
            run = next(r for r in accuracy_run["results"] if r["optimizer"] == name)
            out.append((f"{name}'s final {run['test_accuracy']:.2%}", run["test_accuracy"]))
        else:
            value = float(item)
            if not 0 < value < 1:
                raise ValueError(f"--targets: accuracy {item} must be a fraction in (0, 1)")
            out.append((f"{value:.2%}", value))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accuracy", required=True, help="examples/fashion_mnist_resnet.py --json")
    p.add_argument("--steps", required=True, help="benchmarks/network_bench.py --json")
    p.add_argument("--model", required=True, help="the benchmark's model name")
    p.add_argument("--targets", default="dense-final",
                   help="fractions and/or OPTIMIZER-final, comma separated")
    p.add_argument("--assume", default="dense16=dense",
                   help="MODE=OPTIMIZER: modes without an accuracy run take that run's steps")
    p.add_argument("--json", dest="json_path")
    args = p.parse_args(argv)
    with open(args.accuracy) as f:
        accuracy_run = json.load(f)
    with open(args.steps) as f:
        bench = json.load(f)
    assume = dict(pair.split("=") for pair in args.assume.split(",") if pair)
    rows = compute(accuracy_run, bench, args.model, parse_targets(args.targets, accuracy_run),
                   assume)
    if not rows:
        sys.exit(f"no step times of model {args.model!r} at {accuracy_run.get('workers')} "
                 "workers in the benchmark JSON")
    print("COMPUTED (steps to target from the accuracy run, rounded up to an epoch end, x the "
          "benchmark's median step time per link; evaluation and input time left out)")
    print(f"{'target':<22} {'link':>9} {'mode':>7} {'steps':>6} {'step':>9} {'computed':>10}")
    for r in rows:
        steps = "never" if r["steps"] is None else str(r["steps"])
        total = ("-" if r["computed_seconds"] is None
                 else f"{r['computed_seconds'] / 60:.1f} min")
        print(f"{r['target']:<22} {r['rate']:>9} {r['mode']:>7} {steps:>6} "
              f"{r['step_s'] * 1e3:>7.1f}ms {total:>10}")
    for mode, source in assume.items():
        print(f"assumed: {mode} needs {source}'s steps (no accuracy run of {mode})")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"computed": True, "command": " ".join(["python"] + sys.argv),
                       "accuracy_run": args.accuracy, "step_times": args.steps,
                       "assumed": assume, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
