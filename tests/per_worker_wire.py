"""Bytes between workers per step, with 1 and 2 replicas per worker (not a test: run it).

    sudo PYTHONPATH=$PWD python tests/per_worker_wire.py [--steps 20] [--json out.json]

Runs 2 workers of tests/workers/per_worker_wire.py (a 2.1M-parameter layer,
DGCSGD at 99.9%, or a dense all-reduce) in a network namespace of their own, so that its
loopback counters see nothing but their traffic (gRPC headers and the
coordination service's heartbeats included), and prints, per configuration,
those bytes per worker per step beside the exchange's own count. Needs root
(`ip netns`); the namespace is deleted afterwards.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.test_multiworker import free_ports  # noqa: E402

WORKER = os.path.join(ROOT, "tests", "workers", "per_worker_wire.py")
CONFIGS = [(1, "auto", "dgc"), (2, "auto", "dgc"), (2, "off", "dgc"), (1, "auto", "dense"),
           (2, "auto", "dense")]


def run(namespace, local, per_worker, kind, steps, timeout=600):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    try:
        for i in range(2):
            env = dict(os.environ, TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": i}}))
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", namespace, sys.executable, WORKER, str(local), per_worker,
                 kind, str(steps)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True))
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for line in outputs[0].splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(outputs[0][-3000:] + outputs[1][-3000:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    namespace = f"dgc12-wire-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        results = [run(namespace, *config, args.steps) for config in CONFIGS]
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
    print(f"{'optimizer':9} {'replicas/worker':>15} {'per_worker':>10} "
          f"{'loopback B/worker/step':>22} {'exchange B/replica/step':>23} {'step s':>7}")
    for r in results:
        exchange = r["exchange_bytes_per_replica_per_step"]
        print(f"{r['optimizer']:9} {r['replicas_per_worker']:>15} {r['per_worker']:>10} "
              f"{r['loopback_bytes_per_worker_per_step']:>22,.0f} "
              f"{'-' if exchange is None else format(exchange, ',.0f'):>23} {r['step_s']:>7.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
