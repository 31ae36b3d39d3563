"""DGC and VGC vs dense SGD on an emulated slow network (issues 5 and 7; needs root).

Each worker runs in its own network namespace (``dgcbench-<pid>-w<i>``): two
workers are joined by one veth pair, more through a bridge in a hub namespace
(``dgcbench-<pid>-hub``). Addresses are private (10.213.0.0/24) and exist only
inside those namespaces; the host's interfaces are never touched. Every link
is shaped in both directions with ``tc qdisc ... root tbf rate R``, like a
full-duplex port of R: for 2 workers on both veth ends, for more on each
worker's end and on its bridge port.

For every model and worker count it runs, once per bandwidth (the link is
re-shaped between rates while the same worker processes wait):
  dgc    dgc_tf.distribute.MultiWorkerMirroredStrategy + DGCSGD, compress_ratio
         0.001 and no warm-up (the timed steps run at 99.9% sparsity)
  vgc    the same strategy + dgc_tf.vgc.VGCSGD (alpha 1, zeta 0.999 by default),
         its gradient and squared-gradient estimate from --vgc-groups strided
         micro-batches (one forward/backward each); the count it sends varies
         per step, so its wire bytes are as measured and its density is the
         fraction of compressed elements sent over the timed steps
  dense  the same strategy (TensorFlow's for dense gradients) + keras SGD
  dgc_gather   as dgc with exchange="allgather" (every worker's own top-k gathered:
         the traffic grows with the workers; the default exchange's stays flat)
  dense16      dense with wire_dtype=float16: gradients all-reduced in half
         precision (Horovod's fp16 compression), the 16-bit dense baseline
  dgc16        dgc with wire_dtype=float16: the selected values (and the small
         variables exchanged densely) in half precision, indices as before
(`--modes` picks among them; default dgc,vgc,dense) and, once per model and worker
count unless --no-floor, the floor:
the same per-worker batch, forward, backward and a plain local SGD step with
no communication at all, in as many concurrent processes as there are workers
(so they share the CPU as the workers do). With vgc also VGC's floor: its
micro-batch passes and VGCSGD's selection on one local replica, no
communication. Every step trains on a fresh synthetic batch.

Reported per case: the median step time of the timed steps (warm-up steps
excluded), the bytes on the wire per step (the sum over workers of each
worker interface's tx_bytes counter across the timed window, divided by the
steps), the speed-up of DGC over dense and DGC's step time over the floor.
A run that dies (e.g. missed heartbeats at 100 Mbit/s) is reported with its
error line. Inputs are synthetic (random features / token ids of the right
shape); only time and traffic are measured.

    sudo python benchmarks/network_bench.py                       # MLP, 2 workers
    sudo python benchmarks/network_bench.py --models mlp,lstm --workers 2,4 \\
        --rates unshaped,1gbit,100mbit --json /tmp/net.json --plot /tmp/net.png
    sudo python benchmarks/network_bench.py --models mlp8m --workers 8,4,2 \\
        --modes dense,dense16,dgc_gather,dgc --no-floor --ratio-plot /tmp/ratio.png

Models: mlp (25.2M parameters), mlp8m (8.4M: 8 workers fit on 2 cores), lstm
(the PTB small LSTM, 4.65M), resnet8 and convnet (examples/fashion_mnist_resnet.py's
ResNet-8, 78k, and the demo's convnet, 225k, built by the examples' own functions;
synthetic Fashion-MNIST-shaped images).

Namespaces and worker processes are removed on exit, on Ctrl-C and on SIGTERM
(only those carrying this run's tag).
"""

import argparse
import collections
import datetime
import json
import math
import os
import platform
import queue
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "workers", "bench_worker.py")
SUBNET = "10.213.0"
DEV = "dgc0"
PORT = 23456
MODES = ("dgc", "dgc_gather", "dgc16", "vgc", "dense", "dense16")
FLOOR_MODE = {"dgc": "floor", "dgc_gather": "floor", "dgc16": "floor", "dense": "floor",
              "dense16": "floor", "vgc": "floor_vgc"}
DEFAULT_BATCH = {"mlp": 32, "mlp8m": 32, "lstm": 20, "resnet8": 32, "convnet": 32}
# Extra columns of the summary: mode -> (step-time key, wire key, label).
EXTRA_MODES = {"dgc_gather": ("gather_s", "gather_wire", "DGC allgather"),
               "dense16": ("dense16_s", "dense16_wire", "dense fp16"),
               "dgc16": ("dgc16_s", "dgc16_wire", "DGC fp16")}


# --------------------------------------------------------------------------- network

def _ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _tc(*args, check=True):
    return subprocess.run(["tc", *args], check=check, capture_output=True, text=True)


def netns_available():
    if os.geteuid() != 0:
        return False
    try:
        return _ip("netns", "list", check=False).returncode == 0
    except FileNotFoundError:
        return False


def make_tag(pid=None, prefix="dgcbench"):
    return f"{prefix}-{os.getpid() if pid is None else pid}"


def worker_ns(tag, i):
    return f"{tag}-w{i}"


def hub_ns(tag):
    return f"{tag}-hub"


def list_namespaces(tag):
    """Namespaces of this tag (``TAG-...``) that exist now."""
    out = _ip("netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(tag + "-")]


class Topology:
    """Namespaces, links and shaping of one run with N workers."""

    def __init__(self, tag, workers):
        self.tag = tag
        self.workers = workers
        self.namespaces = [worker_ns(tag, i) for i in range(workers)]
        self.hub = hub_ns(tag) if workers > 2 else None
        self.addresses = [f"{SUBNET}.{i + 1}" for i in range(workers)]
        # every (namespace, device) whose egress is shaped
        self.links = [(ns, DEV) for ns in self.namespaces]
        if self.hub:
            self.links += [(self.hub, f"p{i}") for i in range(workers)]
        self.rate = None

    def create(self):
        if workers_invalid(self.workers):
            raise ValueError("need at least 2 workers")
        try:
            for ns in self.namespaces + ([self.hub] if self.hub else []):
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            if self.hub is None:
                a, b = self.namespaces
                # both ends are created directly inside the namespaces
                _ip("-n", a, "link", "add", DEV, "type", "veth", "peer", "name", DEV, "netns", b)
            else:
                _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
                _ip("-n", self.hub, "link", "set", "br0", "up")
                for i, ns in enumerate(self.namespaces):
                    _ip("-n", ns, "link", "add", DEV, "type", "veth", "peer", "name", f"p{i}",
                        "netns", self.hub)
                    _ip("-n", self.hub, "link", "set", f"p{i}", "master", "br0")
                    _ip("-n", self.hub, "link", "set", f"p{i}", "up")
            for ns, addr in zip(self.namespaces, self.addresses):
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", DEV)
                _ip("-n", ns, "link", "set", DEV, "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def shape(self, rate, burst="1mbit", latency="200ms"):
        """Token-bucket shaping of every link end at `rate` (None / "unshaped": none)."""
        for ns, dev in self.links:
            _tc("-n", ns, "qdisc", "del", "dev", dev, "root", check=False)
            if rate and rate != "unshaped":
                _tc("-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                    "burst", burst, "latency", latency)
        self.rate = rate

    def tx_bytes(self, i):
        """The tx_bytes counter of worker i's interface, read inside its namespace."""
        out = _ip("netns", "exec", self.namespaces[i], "cat",
                  f"/sys/class/net/{DEV}/statistics/tx_bytes").stdout
        return int(out)

    def destroy(self):
        """Delete this run's namespaces (and with them its links); returns what is left."""
        return destroy_namespaces(self.tag)


def workers_invalid(n):
    return n < 2


def destroy_namespaces(tag):
    """Delete every namespace of `tag` (and nothing else); returns what is left."""
    for ns in list_namespaces(tag):
        _ip("netns", "del", ns, check=False)
    return list_namespaces(tag)


# --------------------------------------------------------------------------- rates

_RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
               "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}


def rate_bits(rate):
    """Bits per second of a tc rate string; math.inf for "unshaped"."""
    if rate in (None, "unshaped"):
        return math.inf
    m = re.fullmatch(r"([0-9.]+)\s*([a-z]+)", rate.strip().lower())
    if not m or m.group(2) not in _RATE_UNITS:
        raise ValueError(f"bad rate {rate!r} (e.g. 1gbit, 100mbit, unshaped)")
    return float(m.group(1)) * _RATE_UNITS[m.group(2)]


def rate_label(rate):
    bits = rate_bits(rate)
    if math.isinf(bits):
        return "unshaped"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g} {unit}"
    return f"{bits:g} bit/s"


# --------------------------------------------------------------------------- processes

class WorkerGroup:
    """N worker processes of one (model, mode) speaking bench_worker's protocol."""

    def __init__(self, commands, envs, log_lines=200):
        self.procs, self.queues, self.logs = [], [], []
        for cmd, env in zip(commands, envs):
            q = queue.Queue()
            log = collections.deque(maxlen=log_lines)
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    start_new_session=True)
            threading.Thread(target=self._pump, args=(proc, q, log), daemon=True).start()
            self.procs.append(proc)
            self.queues.append(q)
            self.logs.append(log)
        _LIVE_GROUPS.add(self)

    @staticmethod
    def _pump(proc, q, log):
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("@@"):
                tag, _, payload = line[2:].partition(" ")
                q.put((tag, json.loads(payload) if payload else None))
            else:
                log.append(line)
        q.put(("EOF", None))

    def send(self, text):
        for p in self.procs:
            try:
                p.stdin.write(text + "\n")
                p.stdin.flush()
            except (BrokenPipeError, OSError):
                pass

    def expect(self, tag, timeout):
        """One `tag` message from every worker, or raise WorkerFailure."""
        deadline = time.monotonic() + timeout
        replies = []
        for i, q in enumerate(self.queues):
            try:
                got, payload = q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise WorkerFailure(f"timeout after {timeout:.0f}s waiting for {tag} "
                                    f"from worker {i}", self.error_line()) from None
            if got != tag:
                time.sleep(1.0)  # let the others print their errors too
                raise WorkerFailure(f"worker {i} exited ({self._code(i)})", self.error_line())
            replies.append(payload)
        return replies

    def _code(self, i):
        try:
            return f"code {self.procs[i].wait(timeout=5)}"
        except subprocess.TimeoutExpired:
            return "still running"

    def error_line(self):
        """The most telling error line of any worker's output."""
        pattern = re.compile(r"(Error|error|Exception|Unavailable|heartbeat|Aborted|Deadline)")
        best = None
        for i, log in enumerate(self.logs):
            for line in log:
                if pattern.search(line) and not line.lstrip().startswith("File "):
                    best = f"[worker {i}] {line.strip()}"
            if best:
                break
        if best is None:
            for i, log in enumerate(self.logs):
                if log:
                    best = f"[worker {i}] {log[-1].strip()}"
        return (best or "")[:400]

    def stop(self, grace=5.0):
        self.send("EXIT")
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self):
        for p in self.procs:  # only processes this group started, by their group id
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        _LIVE_GROUPS.discard(self)


class WorkerFailure(RuntimeError):
    def __init__(self, what, error_line):
        super().__init__(f"{what}: {error_line}")
        self.what, self.error_line = what, error_line


_LIVE_GROUPS = set()


def start_group(topo, model, mode, opts):
    n = topo.workers
    cluster = {"worker": [f"{addr}:{PORT}" for addr in topo.addresses]}
    commands, envs = [], []
    for i in range(n):
        args = [sys.executable, WORKER, "--model", model, "--mode", mode,
                "--batch", str(opts.batch[model]), "--workers", str(n),
                "--threads", str(opts.threads_for(n)),
                "--compress-ratio", str(opts.compress_ratio),
                "--alpha", str(opts.alpha), "--zeta", str(opts.zeta),
                "--vgc-groups", str(opts.vgc_groups),
                "--dense-strategy", opts.dense_strategy,
                "--heartbeat-timeout-ms", str(opts.heartbeat_timeout_ms)]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        env.pop("TF_USE_LEGACY_KERAS", None)
        if mode.startswith("floor"):
            commands.append(args)
        else:
            env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                           "task": {"type": "worker", "index": i}})
            commands.append(["ip", "netns", "exec", topo.namespaces[i], *args, "--dev", DEV])
        envs.append(env)
    return WorkerGroup(commands, envs)


# --------------------------------------------------------------------------- measuring

def measure(group, opts, first):
    """Warm up, then time; returns (step_times of worker 0, per-worker tx_bytes, extra)."""
    warmup = opts.warmup if first else opts.rewarm
    if first:
        group.expect("READY", opts.start_timeout)
    group.send(f"WARM {warmup}")
    warm = group.expect("WARMED", opts.start_timeout if first else opts.step_timeout * warmup)
    last = max(w["last_step_s"] or 0.0 for w in warm) or 1.0
    steps = max(opts.min_steps, min(opts.steps, int(opts.max_phase_seconds / last)))
    group.send(f"TIME {steps}")
    results = group.expect("RESULT", steps * max(opts.step_timeout, 3 * last) + 30)
    return results


def median(values):
    return statistics.median(values) if values else None


def summarize_results(results):
    """Per-case numbers from the workers' RESULT messages."""
    steps = len(results[0]["step_times"])
    # a synchronous step ends when the slowest worker finishes it
    per_step = [max(r["step_times"][k] for r in results) for k in range(steps)]
    out = {"steps": steps, "median_step_s": median(per_step),
           "step_times_s": per_step}
    tx = [r["tx_bytes"] for r in results]
    if all(t is not None for t in tx):
        out["wire_bytes_per_step"] = sum(tx) / steps
        out["wire_bytes_per_step_per_worker"] = [t / steps for t in tx]
    if "dgc_last_bytes_sent" in results[0]:
        out["dgc_payload_bytes_per_worker"] = results[0]["dgc_last_bytes_sent"]
        out["dgc_compression_ratio"] = results[0]["dgc_compression_ratio"]
    if "vgc_density" in results[0]:
        # The density and skipped steps are global (summed over replicas); bytes per worker.
        for key in ("vgc_density", "vgc_density_cumulative", "vgc_skipped_steps"):
            out[key] = results[0][key]
        handed = [r["vgc_payload_bytes_per_step_per_worker"] for r in results]
        out["vgc_payload_bytes_per_step_per_worker"] = handed
        out["vgc_dense_bytes_per_step_per_worker"] = results[0][
            "vgc_dense_bytes_per_step_per_worker"]
        out["vgc_compression_ratio"] = (out["vgc_dense_bytes_per_step_per_worker"] * len(handed)
                                        / sum(handed) if sum(handed) else None)
    return out


def new_report(opts):
    return {"meta": meta(opts, make_tag(prefix=opts.ns_prefix)), "cases": [], "floors": [],
            "summary": []}


def run_benchmark(opts, report=None, log=print):
    """Runs every case, adding to `report` as it goes (so an interrupted run keeps its part)."""
    tag = make_tag(prefix=opts.ns_prefix)
    report = new_report(opts) if report is None else report
    for model in opts.models:
        for n in opts.workers:
            topo = Topology(tag, n)
            try:
                topo.create()
                log(f"== {model}, {n} workers: namespaces {', '.join(topo.namespaces)}"
                    + (f" + {topo.hub}" if topo.hub else ""))
                floor_modes = ([] if opts.no_floor
                               else sorted({FLOOR_MODE[m] for m in opts.modes}))
                before = {f: run_floor(topo, model, opts, log, f) for f in floor_modes}
                for mode in opts.modes:
                    report["cases"].extend(run_mode(topo, model, mode, opts, log))
                after = {f: run_floor(topo, model, opts, log, f) for f in floor_modes}
                for f in floor_modes:
                    report["floors"].append(combine_floors(before[f], after[f]))
            finally:
                left = topo.destroy()
                if left:
                    log(f"warning: namespaces left behind: {left}")
    report["summary"] = summarize(report)
    return report


def run_floor(topo, model, opts, log, kind="floor"):
    group = start_group(topo, model, kind, opts)
    entry = {"model": model, "workers": topo.workers, "kind": kind,
             "loadavg": os.getloadavg()[0]}
    try:
        results = measure(group, opts, first=True)
        entry.update(status="ok", **summarize_results(results))
        log(f"   {kind} ({topo.workers} local processes, no communication): "
            f"{entry['median_step_s'] * 1e3:.1f} ms/step (load {entry['loadavg']:.1f})")
    except WorkerFailure as e:
        entry.update(status="failed", error=str(e))
        log(f"   {kind} FAILED: {e}")
    finally:
        group.stop()
    return entry


def combine_floors(before, after):
    """The floor is measured before and after a group's runs (the host is shared and its
    load drifts); the reported floor is the mean of the two medians."""
    entry = {"model": before["model"], "workers": before["workers"],
             "kind": before.get("kind", "floor"), "before": before, "after": after}
    ok = [f["median_step_s"] for f in (before, after) if f.get("status") == "ok"]
    if ok:
        entry.update(status="ok", median_step_s=sum(ok) / len(ok))
    else:
        entry.update(status="failed", error=before.get("error") or after.get("error"))
    return entry


def run_mode(topo, model, mode, opts, log):
    cases, group, first = [], None, True
    try:
        for rate in opts.rates:
            topo.shape(rate, opts.tbf_burst, opts.tbf_latency)
            if group is None:
                group, first = start_group(topo, model, mode, opts), True
            case = {"model": model, "workers": topo.workers, "mode": mode, "rate": rate,
                    "rate_bits": rate_bits(rate), "loadavg": os.getloadavg()[0]}
            try:
                case.update(status="ok", **summarize_results(measure(group, opts, first)))
                wire = case.get("wire_bytes_per_step")
                density = (f", density {case['vgc_density']:.4f}"
                           if case.get("vgc_density") is not None else "")
                log(f"   {mode:5s} {rate_label(rate):>10s}: {case['median_step_s'] * 1e3:9.1f} ms/step"
                    f"  {fmt_bytes(wire)}/step on the wire  ({case['steps']} steps, "
                    f"load {case['loadavg']:.1f}{density})")
            except WorkerFailure as e:
                case.update(status="failed", error=e.error_line or e.what, failure=e.what)
                log(f"   {mode:5s} {rate_label(rate):>10s}: FAILED ({e.what}) {e.error_line}")
                group.kill()
                group = None
            first = False
            cases.append(case)
    finally:
        if group is not None:
            group.stop()
        topo.shape(None)
    return cases


def _ratio(a, b):
    return a / b if a and b else None


def summarize(report):
    """One row per (model, workers, rate): dense, DGC and VGC side by side."""
    floors = {(f["model"], f["workers"], f.get("kind", "floor")): f for f in report["floors"]}
    by_key = {(c["model"], c["workers"], c["rate"], c["mode"]): c for c in report["cases"]}
    keys = list(dict.fromkeys((c["model"], c["workers"], c["rate"]) for c in report["cases"]))
    rows = []
    for key in keys:
        dense, dgc, vgc = (by_key.get(key + (mode,), {}) for mode in ("dense", "dgc", "vgc"))
        floor = floors.get(key[:2] + ("floor",), {})
        vgc_floor = floors.get(key[:2] + ("floor_vgc",), {})
        row = {"model": key[0], "workers": key[1], "rate": key[2],
               "dgc_s": dgc.get("median_step_s"), "dgc_status": dgc.get("status"),
               "vgc_s": vgc.get("median_step_s"), "vgc_status": vgc.get("status"),
               "dense_s": dense.get("median_step_s"), "dense_status": dense.get("status"),
               "dgc_wire": dgc.get("wire_bytes_per_step"),
               "vgc_wire": vgc.get("wire_bytes_per_step"),
               "dense_wire": dense.get("wire_bytes_per_step"),
               "vgc_density": vgc.get("vgc_density"),
               "vgc_compression_ratio": vgc.get("vgc_compression_ratio"),
               "floor_s": floor.get("median_step_s"),
               "vgc_floor_s": vgc_floor.get("median_step_s")}
        row["speedup"] = _ratio(row["dense_s"], row["dgc_s"])
        row["vgc_speedup"] = _ratio(row["dense_s"], row["vgc_s"])
        row["dgc_over_floor"] = _ratio(row["dgc_s"], row["floor_s"])
        row["vgc_over_floor"] = _ratio(row["vgc_s"], row["vgc_floor_s"])
        row["wire_ratio"] = _ratio(row["dense_wire"], row["dgc_wire"])
        row["vgc_wire_ratio"] = _ratio(row["dense_wire"], row["vgc_wire"])
        for mode, (time_key, wire_key, _) in EXTRA_MODES.items():
            case = by_key.get(key + (mode,), {})
            row[time_key] = case.get("median_step_s")
            row[wire_key] = case.get("wire_bytes_per_step")
        row["gather_wire_ratio"] = _ratio(row["dense_wire"], row["gather_wire"])
        row["speedup_over_dense16"] = _ratio(row["dense16_s"], row["dgc_s"])
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- output

def fmt_bytes(n):
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_time(s):
    return "-" if s is None else f"{s * 1e3:.1f} ms"


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


HEADER = ("model", "workers", "link", "dense step", "DGC step", "VGC step", "speedup",
          "VGC speedup", "floor", "DGC/floor", "VGC floor", "VGC/floor", "dense wire/step",
          "DGC wire/step", "VGC wire/step", "wire ratio", "VGC wire ratio", "VGC density",
          "allgather step", "dense fp16 step", "allgather wire/step", "dense fp16 wire/step",
          "allgather wire ratio", "DGC speedup over fp16", "DGC fp16 step",
          "DGC fp16 wire/step")


def fmt_density(d):
    return "-" if d is None else f"{d:.4f}"


def format_table(report):
    """speedup / wire ratio: dense over DGC; VGC speedup / VGC wire ratio: dense over VGC;
    VGC/floor against VGC's own floor (its micro-batch passes, no communication)."""
    rows, notes = [], []
    cases = {(c["model"], c["workers"], c["rate"], c["mode"]): c for c in report["cases"]}
    for r in report["summary"]:
        steps = {"dense": fmt_time(r["dense_s"]), "dgc": fmt_time(r["dgc_s"]),
                 "vgc": fmt_time(r.get("vgc_s")),
                 "dgc_gather": fmt_time(r.get("gather_s")),
                 "dense16": fmt_time(r.get("dense16_s")),
                 "dgc16": fmt_time(r.get("dgc16_s"))}
        for mode in ("dense", "dgc", "vgc", *EXTRA_MODES):
            c = cases.get((r["model"], r["workers"], r["rate"], mode), {})
            if c.get("status") == "failed":
                notes.append(f"[{len(notes) + 1}] {mode} {r['model']} {r['workers']}w "
                             f"{rate_label(r['rate'])}: {c.get('failure', '')}: {c['error']}")
                steps[mode] = f"FAILED[{len(notes)}]"
        rows.append((r["model"], str(r["workers"]), rate_label(r["rate"]), steps["dense"],
                     steps["dgc"], steps["vgc"], fmt_ratio(r["speedup"]),
                     fmt_ratio(r.get("vgc_speedup")), fmt_time(r["floor_s"]),
                     fmt_ratio(r["dgc_over_floor"]), fmt_time(r.get("vgc_floor_s")),
                     fmt_ratio(r.get("vgc_over_floor")), fmt_bytes(r["dense_wire"]),
                     fmt_bytes(r["dgc_wire"]), fmt_bytes(r.get("vgc_wire")),
                     fmt_ratio(r["wire_ratio"]), fmt_ratio(r.get("vgc_wire_ratio")),
                     fmt_density(r.get("vgc_density")), steps["dgc_gather"], steps["dense16"],
                     fmt_bytes(r.get("gather_wire")), fmt_bytes(r.get("dense16_wire")),
                     fmt_ratio(r.get("gather_wire_ratio")),
                     fmt_ratio(r.get("speedup_over_dense16")), steps["dgc16"],
                     fmt_bytes(r.get("dgc16_wire"))))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(HEADER)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(HEADER, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(v.rjust(w) if i >= 3 else v.ljust(w)
                         for i, (v, w) in enumerate(zip(row, widths))) for row in rows]
    return "\n".join(lines + notes)


def to_json(report):
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o
    return json.dumps(clean(report), indent=2)


def plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["workers"]) for r in report["summary"]})
    if not groups:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    floors = {(f["model"], f["workers"], f.get("kind", "floor")): f.get("median_step_s")
              for f in report["floors"]}
    for ax, (model, n) in zip(axes[0], groups):
        rates = sorted({c["rate"] for c in report["cases"]
                        if c["model"] == model and c["workers"] == n}, key=rate_bits)
        xs = range(len(rates))
        top = 0.0
        for mode, color, label in (("dense", "tab:red", "dense SGD"),
                                   ("dense16", "tab:orange", "dense SGD, float16 wire"),
                                   ("dgc_gather", "tab:purple", "DGC 99.9%, all-gather"),
                                   ("dgc", "tab:blue", "DGC 99.9%"),
                                   ("dgc16", "tab:cyan", "DGC 99.9%, float16 values"),
                                   ("vgc", "tab:green", "VGC")):
            ys, failed = [], []
            for x, rate in zip(xs, rates):
                c = next((c for c in report["cases"] if (c["model"], c["workers"], c["rate"],
                                                         c["mode"]) == (model, n, rate, mode)), {})
                if c.get("status") == "ok":
                    ys.append((x, c["median_step_s"]))
                    top = max(top, c["median_step_s"])
                elif c:  # run, and failed (an absent case was not run)
                    failed.append(x)
            if not ys and not failed:
                continue  # mode not run
            if ys:
                ax.plot(*zip(*ys), "o-", color=color, label=label)
            for x in failed:
                ax.annotate(f"{mode} failed", (x, 1), xycoords=("data", "axes fraction"),
                            xytext=(0, -12), textcoords="offset points", ha="center",
                            color=color, fontsize=8)
                ax.axvline(x, color=color, ls=":", lw=1)
        if floors.get((model, n, "floor")):
            ax.axhline(floors[(model, n, "floor")], color="gray", ls="--",
                       label="floor (no communication)")
        if floors.get((model, n, "floor_vgc")):
            ax.axhline(floors[(model, n, "floor_vgc")], color="tab:green", ls="--", alpha=0.6,
                       label="VGC floor (micro-batches, no communication)")
        ax.set_xticks(list(xs), [rate_label(r) for r in rates])
        ax.set_yscale("log")
        ax.set_xlabel("link bandwidth")
        ax.set_ylabel("median step time (s)")
        ax.set_title(f"{model}, {n} workers")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_wire_ratio(report, path):
    """Wire ratio (dense bytes / DGC bytes per step, interface counters) against workers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in report["summary"]):
        for key, style, label in (("wire_ratio", "o-", "DGC (exchange='auto')"),
                                  ("gather_wire_ratio", "s--", "DGC, all-gather of own top-k")):
            points = {}
            for r in report["summary"]:
                if r["model"] == model and r.get(key):
                    points.setdefault(r["workers"], r[key])  # bytes do not depend on the rate
            if points:
                xs = sorted(points)
                ax.plot(xs, [points[x] for x in xs], style, label=f"{model}: {label}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("workers")
    ax.set_ylabel("wire ratio (dense bytes / DGC bytes)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def meta(opts, tag):
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": platform.node(), "cpus": os.cpu_count(), "tag": tag,
            "command": " ".join(sys.argv),
            "models": opts.models, "workers": opts.workers, "rates": opts.rates,
            "modes": opts.modes,
            "batch_per_worker": opts.batch, "compress_ratio": opts.compress_ratio,
            "vgc": {"alpha": opts.alpha, "zeta": opts.zeta, "groups": opts.vgc_groups},
            "intra_op_threads": {n: opts.threads_for(n) for n in opts.workers},
            "dense_strategy": opts.dense_strategy, "tbf": {"burst": opts.tbf_burst,
                                                           "latency": opts.tbf_latency},
            "data": "synthetic (random features / random token ids of the right shape, a "
                    "fresh batch per step and worker); timing and traffic only",
            "vgc_density": "elements sent / elements of the compressed variables, over all "
                           "workers and the timed steps (varies per step and worker)",
            "wire_bytes": "sum over workers of tx_bytes of each worker's interface over "
                          "the timed steps, divided by the steps",
            "step_time": "per step the slowest worker's time; median over the timed steps",
            "floor": "same per-worker batch, forward, backward, local keras SGD, no strategy; "
                     "N concurrent processes; mean of the medians measured before and after "
                     "the group's communicating runs",
            "floor_vgc": "as floor, with VGC's per-worker work: the micro-batch passes and "
                         "VGCSGD on one local replica (no communication)",
            "loadavg_start": os.getloadavg()[0]}


# --------------------------------------------------------------------------- main

def _csv(text, cast=str):
    return [cast(v.strip()) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=_csv, default=["mlp"],
                   help="mlp (25M), mlp8m (8.4M), lstm, resnet8, convnet (default mlp)")
    p.add_argument("--workers", type=lambda t: _csv(t, int), default=[2],
                   help="worker counts, e.g. 2,4 (default 2)")
    p.add_argument("--rates", type=_csv, default=["unshaped", "1gbit", "100mbit"],
                   help="tc rates or 'unshaped' (default unshaped,1gbit,100mbit)")
    p.add_argument("--batch-mlp", type=int, default=DEFAULT_BATCH["mlp"])
    p.add_argument("--batch-lstm", type=int, default=DEFAULT_BATCH["lstm"])
    p.add_argument("--batch-image", type=int, default=DEFAULT_BATCH["convnet"],
                   help="per-worker batch of resnet8 and convnet")
    p.add_argument("--steps", type=int, default=20, help="timed steps at most")
    p.add_argument("--min-steps", type=int, default=3, help="timed steps at least")
    p.add_argument("--max-phase-seconds", type=float, default=40.0,
                   help="fewer timed steps (not below --min-steps) when they would take longer")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of a fresh process")
    p.add_argument("--rewarm", type=int, default=2, help="untimed steps after re-shaping")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads per process (0: cpus // workers)")
    p.add_argument("--modes", type=_csv, default=["dgc", "vgc", "dense"],
                   help="of dgc,dgc_gather,dgc16,vgc,dense,dense16 (default dgc,vgc,dense)")
    p.add_argument("--compress-ratio", type=float, default=0.001)
    p.add_argument("--alpha", type=float, default=1.0, help="VGC: send where r^2 > alpha s / B")
    p.add_argument("--zeta", type=float, default=0.999, help="VGC: decay of s")
    p.add_argument("--vgc-groups", type=int, default=4,
                   help="VGC: micro-batches per worker batch (variance estimate)")
    p.add_argument("--dense-strategy", choices=("dgc", "tf"), default="dgc",
                   help="dense runs under dgc_tf's strategy (default) or TensorFlow's")
    p.add_argument("--heartbeat-timeout-ms", type=int, default=0,
                   help="coordination-service heartbeat timeout (0: TensorFlow's default)")
    p.add_argument("--tbf-burst", default="1mbit")
    p.add_argument("--tbf-latency", default="200ms")
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument("--step-timeout", type=float, default=150.0)
    p.add_argument("--no-floor", action="store_true",
                   help="skip the no-communication floor runs")
    p.add_argument("--ns-prefix", default="dgcbench",
                   help="namespace names start with PREFIX-<pid>- (default dgcbench)")
    p.add_argument("--ratio-plot", dest="ratio_plot_path",
                   help="plot of the wire ratio (dense / DGC) against the worker count")
    p.add_argument("--json", dest="json_path")
    p.add_argument("--plot", dest="plot_path")
    opts = p.parse_args(argv)
    for m in opts.models:
        if m not in DEFAULT_BATCH:
            p.error(f"unknown model {m!r}")
    for m in opts.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r} (of {', '.join(MODES)})")
    if not opts.modes:
        p.error("no --modes")
    for n in opts.workers:
        if workers_invalid(n) or n > 200:
            p.error("worker counts must be between 2 and 200")
    for r in opts.rates:
        try:
            rate_bits(r)
        except ValueError as e:
            p.error(str(e))
    opts.batch = {"mlp": opts.batch_mlp, "mlp8m": opts.batch_mlp, "lstm": opts.batch_lstm,
                  "resnet8": opts.batch_image, "convnet": opts.batch_image}
    cpus = os.cpu_count() or 1
    opts.threads_for = lambda n: opts.threads or max(1, cpus // n)
    return opts


def _on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    opts = parse_args(argv)
    if not netns_available():
        sys.exit("network_bench needs root and `ip netns` (see docs/algorithm.md §8)")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    tag = make_tag(prefix=opts.ns_prefix)
    report = new_report(opts)
    interrupted = None
    try:
        run_benchmark(opts, report)
    except KeyboardInterrupt as e:
        interrupted = str(e) or "interrupted"
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the cleanup finish
        for group in list(_LIVE_GROUPS):
            group.kill()
        left = destroy_namespaces(tag)
        if left:
            print(f"warning: could not delete namespaces {left}", file=sys.stderr)
    if interrupted:
        report["meta"]["interrupted"] = interrupted
        report["summary"] = summarize(report)
        print(f"\nINTERRUPTED ({interrupted}); namespaces and workers removed; partial results:")
    print()
    print(format_table(report))
    print(f"\nHost load average (1 min) at start {report['meta']['loadavg_start']:.1f}, "
          f"at end {os.getloadavg()[0]:.1f}, on {os.cpu_count()} CPUs; per case in the JSON.")
    print("Data are synthetic (random inputs / token ids of the right shape, fresh per step); "
          "timing and traffic only. wire/step = sum of the workers' interface tx_bytes per step.")
    print("speedup, wire ratio: dense over DGC; VGC speedup, VGC wire ratio: dense over VGC; "
          "VGC/floor against VGC's floor (its micro-batch passes, no communication); "
          "VGC density: fraction of compressed elements sent over the timed steps.")
    if opts.json_path:
        with open(opts.json_path, "w") as f:
            f.write(to_json(report) + "\n")
    if opts.plot_path:
        plot(report, opts.plot_path)
    if opts.ratio_plot_path:
        plot_wire_ratio(report, opts.ratio_plot_path)
    if interrupted:
        sys.exit(130)
    return report


if __name__ == "__main__":
    main()
