"""Start N local TensorFlow workers for a multi-worker script.

Usage::

    python -m dgc_tf.launch --workers 2 train.py --epochs 3
    python -m dgc_tf.launch --workers 2 -- train.py --workers-flag-of-the-script

Everything after the script name (or after ``--``) is passed to the script
untouched. Each worker runs ``sys.executable train.py ARGS`` with, in its
environment:

* ``TF_CONFIG``, e.g. for worker 1 of 2::

      {"cluster": {"worker": ["127.0.0.1:41231", "127.0.0.1:41232"]},
       "task": {"type": "worker", "index": 1}}

  on free 127.0.0.1 ports (or ``--port-base P``: ports P, P+1, ...), which is
  what `tf.distribute.MultiWorkerMirroredStrategy` and
  `dgc_tf.distribute.MultiWorkerMirroredStrategy` read;
* ``DGC_TF_WORKER_INDEX`` (0 .. N-1) and ``DGC_TF_NUM_WORKERS`` (N);
* ``PYTHONUNBUFFERED=1``, so output arrives line by line.

Output: worker 0 (the chief) is streamed, each line prefixed with
``[worker 0] ``; every other worker's output (stdout and stderr merged) goes to
``worker-i.log`` in a log directory (``--log-dir``, else a new temporary one),
whose paths the launcher prints first, so that progress bars do not interleave
into unreadable lines. ``--stream-all`` streams every worker, prefixed with
``[worker i] ``. When a worker whose output went to a file fails, its last
lines are printed. The launcher's own messages start with ``[launch] ``.

Exit status: 0 when every worker exits 0. When a worker fails, the launcher
sends SIGTERM to the others, SIGKILL after ``--grace`` seconds (default 10),
reports which worker failed with which exit code, and exits with that code
(128 + signal number for a worker killed by a signal). Ctrl-C (SIGINT) or
SIGTERM to the launcher sends SIGINT to every worker (a Python worker sees
`KeyboardInterrupt`), waits up to the grace period, kills what is left and
exits 130; a second Ctrl-C kills at once. Every worker runs in its own
session and process group; on exit the launcher signals those groups (and
nothing else) and reaps its children, so no worker outlives it.

Network isolation: TensorFlow's gRPC server listens on every interface
(``0.0.0.0:port``), whatever address TF_CONFIG names, and a TensorFlow worker
runs whatever graph it is sent, without authentication. So by default the
launcher runs all workers in a private network namespace of their own, which
has only a loopback interface: nothing outside that namespace can reach them
(they cannot reach the network either, so fetch data before launching). It
uses ``unshare --user --map-root-user --net`` (Linux, no root needed where
unprivileged user namespaces are allowed). Where that is not possible, or with
``--share-network``, it prints a warning that the workers are reachable from
other machines.

Options::

    --workers N       number of workers (>= 1), default 2
    --host HOST       address in TF_CONFIG, default 127.0.0.1
    --port-base P     use ports P .. P+N-1 instead of free ones
    --grace SECONDS   time between SIGTERM/SIGINT and SIGKILL, default 10
    --stream-all      stream every worker's output, not only the chief's
    --log-dir DIR     where the other workers' ``worker-i.log`` files go
    --share-network   run the workers in this network namespace (reachable
                      from other machines: see above)

Two machines by hand: run the same script on each machine, with the same
cluster list and a different task index, and with the ports open between
them::

    # on host-a (10.0.0.1)
    export TF_CONFIG='{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]},
                       "task": {"type": "worker", "index": 0}}'
    python train.py

    # on host-b (10.0.0.2)
    export TF_CONFIG='{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]},
                       "task": {"type": "worker", "index": 1}}'
    python train.py

Worker 0 is the chief (it writes checkpoints and summaries by convention).

From Python (e.g. a notebook)::

    from dgc_tf.launch import launch
    code = launch("train.py", args=["--epochs", "3"], workers=2,
                  env={"TF_USE_LEGACY_KERAS": "1"})
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

__all__ = ["launch", "main", "free_ports", "tf_config"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_GRACE = 10.0
INTERRUPTED_EXIT_CODE = 130
FAILURE_TAIL_LINES = 30  # lines of a failed worker's log file shown on the stream
_POLL_S = 0.05
# The workers' private network namespace: a new user namespace (so no root is
# needed) and a new network namespace, in which the inner launcher runs.
NAMESPACE_COMMAND = ("unshare", "--user", "--map-root-user", "--net", "--")
_IN_NAMESPACE_FLAG = "--in-private-network"  # internal: set on the inner launcher
_IN_NAMESPACE = object()  # share_network value of the inner launcher: already private
EXPOSED_WARNING = (
    "[launch] WARNING: the workers' TensorFlow servers listen on all interfaces (0.0.0.0:port), "
    "not only on {host}, and run any graph sent to them without authentication; {why} Anyone "
    "who can reach this machine can reach them while they run. Use a firewall, or a machine "
    "whose ports are closed to others.")


def free_ports(n, host=DEFAULT_HOST):
    """`n` distinct ports that are free on `host` right now.

    Binds n sockets to port 0 at once (so the ports differ), reads the
    ports and closes the sockets straight away. Another process may still
    take a port before a worker binds it; that race is inherent and short.
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                              socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(addresses, index):
    """The `TF_CONFIG` dict for worker `index` of the cluster `addresses`."""
    return {"cluster": {"worker": list(addresses)},
            "task": {"type": "worker", "index": int(index)}}


def _address(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _exit_status(proc):
    """The return code of worker `proc` if it has exited, else None.

    Where the platform allows, this does not reap: leaving the zombie in place
    keeps its pid, and so its process-group id, from being reused until we
    have signalled the group and reaped it.
    """
    if proc.returncode is not None:
        return proc.returncode
    if not hasattr(os, "waitid"):
        return proc.poll()
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return proc.poll()
    if info is None or info.si_pid == 0:
        return None
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return -info.si_status  # killed / dumped: negative signal, like Popen


def _signal_group(proc, sig):
    """Send `sig` to the process group led by worker `proc`, if still ours."""
    if proc.returncode is not None:
        return  # reaped: its pid (and group id) may belong to someone else now
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _describe(returncode):
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "signal"
        return f"signal {-returncode} ({name}), exit code {_code_for(returncode)}"
    return f"exit code {returncode}"


def _code_for(returncode):
    """Launcher exit code for a failed worker's return code."""
    if returncode < 0:
        return 128 + (-returncode)
    return returncode if 0 < returncode < 256 else 1


class _Output:
    """Serialises prefixed lines from the reader threads onto one stream."""

    def __init__(self, stream, owns_stream=False):
        self._stream = stream
        self._lock = threading.Lock()
        self.owns_stream = owns_stream

    def close(self):
        with self._lock:
            self._stream.close()

    def write_line(self, text):
        with self._lock:
            try:
                self._stream.write(text if text.endswith("\n") else text + "\n")
                self._stream.flush()
            except (ValueError, OSError):
                pass  # stream closed (e.g. a notebook cell gone): drop output


def _pump(proc, prefix, out):
    try:
        for raw in iter(proc.stdout.readline, b""):
            out.write_line(prefix + raw.decode("utf-8", errors="replace"))
    finally:
        proc.stdout.close()
        if out.owns_stream:
            out.close()


class _SignalFlag:
    """Installs SIGINT/SIGTERM handlers (main thread only) that count signals."""

    def __init__(self):
        self.count = 0
        self.event = threading.Event()
        self._saved = {}

    def _handle(self, signum, frame):
        self.count += 1
        self.event.set()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._saved[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):
                    pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._saved.items():
            signal.signal(sig, old)
        self._saved.clear()
        return False


def _is_loopback(host):
    return host in ("localhost", "::1") or host.startswith("127.")


def _namespace_problem():
    """None if `NAMESPACE_COMMAND` works here, else why not (one sentence)."""
    if not sys.platform.startswith("linux"):
        return "private network namespaces need Linux."
    try:
        probe = subprocess.run([*NAMESPACE_COMMAND, "true"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`unshare` could not run ({e})."
    if probe.returncode != 0:
        why = probe.stdout.decode(errors="replace").strip().splitlines()
        return f"`unshare` failed ({why[-1] if why else probe.returncode})."
    return None


def _bring_up_loopback():
    """Sets `lo` up in a new network namespace (it starts down), with ioctls
    rather than `ip`, which minimal images lack."""
    import fcntl
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, siocgifflags, request))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def _launch_in_namespace(script, args, workers, env, grace, out, host, port_base, stream_all,
                         log_dir):
    """Runs an inner launcher (this module) in a private network namespace and
    relays its output and exit code; SIGINT/SIGTERM are passed on as SIGINT."""
    cmd = [*NAMESPACE_COMMAND, sys.executable, "-m", "dgc_tf.launch", _IN_NAMESPACE_FLAG,
           "--workers", str(workers), "--grace", repr(float(grace)), "--host", host]
    if port_base is not None:
        cmd += ["--port-base", str(port_base)]
    if stream_all:
        cmd.append("--stream-all")
    if log_dir is not None:
        cmd += ["--log-dir", os.path.abspath(log_dir)]
    cmd += ["--", os.fspath(script), *map(str, args)]
    child_env = _environment(env)
    # The inner launcher must import this dgc_tf, wherever it was imported from.
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, child_env.get("PYTHONPATH")) if p)
    with _SignalFlag() as flag:
        proc = subprocess.Popen(cmd, env=child_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        reader = threading.Thread(target=_pump, args=(proc, "", out), daemon=True,
                                  name="dgc_tf.launch-namespace")
        reader.start()
        forwarded = 0
        try:
            while proc.poll() is None:
                if flag.count > forwarded:
                    forwarded = flag.count
                    # The inner launcher stops its workers (a second signal kills them).
                    _signal_group(proc, signal.SIGINT if forwarded == 1 else signal.SIGTERM)
                flag.event.clear()
                flag.event.wait(_POLL_S)
        except KeyboardInterrupt:
            _signal_group(proc, signal.SIGINT)
            proc.wait()
        reader.join(timeout=5.0)
    return _code_for(proc.returncode) if proc.returncode else 0


def _environment(env):
    """`os.environ` with `env` on top (a value of None removes a variable)."""
    result = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = str(value)
    return result


def _log_path(log_dir, index):
    return os.path.join(log_dir, f"worker-{index}.log")


def _show_tail(path, index, out, lines=FAILURE_TAIL_LINES):
    """Copies the last `lines` lines of a worker's log file onto the stream."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            tail = f.read().splitlines()[-lines:]
    except OSError:
        return
    out.write_line(f"[launch] last {len(tail)} lines of {path}:")
    for line in tail:
        out.write_line(f"[worker {index}] {line}")


def launch(script, args=(), workers=2, env=None, grace=DEFAULT_GRACE, output=None,
           host=DEFAULT_HOST, port_base=None, stream_all=False, log_dir=None,
           share_network=False):
    """Run `script` in `workers` local worker processes; return the exit code.

    Args:
      script: path of the Python script each worker runs with `sys.executable`.
      args: its command-line arguments.
      workers: number of workers (>= 1).
      env: extra environment variables for the workers, on top of
        `os.environ` (a value of None removes a variable).
      grace: seconds between SIGTERM/SIGINT and SIGKILL when stopping workers.
      output: text stream for the prefixed worker output and the launcher's
        messages; `sys.stdout` (looked up at call time) by default.
      host: address the workers' TF_CONFIG uses.
      port_base: if given, worker i gets port `port_base + i`; otherwise free
        ports are picked.
      stream_all: stream every worker's output onto `output`; by default only
        worker 0's is, and worker i's goes to `log_dir/worker-i.log`.
      log_dir: directory for those files (created if needed); a new temporary
        directory by default. Its paths are printed before the workers start.
      share_network: run the workers in this process's network namespace,
        where their servers are reachable from other machines (a warning says
        so); by default they get a private one with only loopback (see the
        module docstring), when the platform allows.

    Returns:
      0 if every worker exited 0; the first failed worker's exit code (128 +
      signal for a signal) after stopping the others; 130 after SIGINT/SIGTERM
      to the launcher (or KeyboardInterrupt), which is forwarded as SIGINT.
    """
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    grace = float(grace)
    if grace < 0:
        raise ValueError(f"grace must be >= 0, got {grace}")
    if output is None:
        output = sys.stdout
    out = _Output(output)
    if not share_network and _is_loopback(host):
        problem = _namespace_problem()
        if problem is None:
            return _launch_in_namespace(script, args, workers, env, grace, out, host, port_base,
                                        stream_all, log_dir)
        out.write_line(EXPOSED_WARNING.format(
            host=host, why=f"no private network namespace: {problem}"))
    elif share_network is not _IN_NAMESPACE:
        out.write_line(EXPOSED_WARNING.format(
            host=host, why="--share-network was given." if share_network
            else f"{host} is not a loopback address."))

    if port_base is None:
        ports = free_ports(workers, host)
    else:
        port_base = int(port_base)
        if port_base < 1 or port_base + workers - 1 > 65535:
            raise ValueError(f"ports {port_base}..{port_base + workers - 1} are out of range")
        ports = [port_base + i for i in range(workers)]
    addresses = [_address(host, p) for p in ports]
    log_paths = {}
    if not stream_all and workers > 1:
        if log_dir is None:
            log_dir = tempfile.mkdtemp(prefix="dgc_tf_launch_")
        os.makedirs(log_dir, exist_ok=True)
        log_paths = {i: _log_path(log_dir, i) for i in range(1, workers)}
        for i, path in log_paths.items():
            out.write_line(f"[launch] worker {i} output: {path}")

    base_env = _environment(env)
    base_env["PYTHONUNBUFFERED"] = "1"
    base_env["DGC_TF_NUM_WORKERS"] = str(workers)

    cmd = [sys.executable, os.fspath(script), *map(str, args)]
    procs, readers = [], []
    failed = None           # (index, returncode) of the first failure
    interrupted = False

    with _SignalFlag() as flag:
        try:
            for i in range(workers):
                worker_env = dict(base_env)
                worker_env["TF_CONFIG"] = json.dumps(tf_config(addresses, i))
                worker_env["DGC_TF_WORKER_INDEX"] = str(i)
                proc = subprocess.Popen(
                    cmd, env=worker_env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    start_new_session=True)
                procs.append(proc)
                if i in log_paths:
                    sink = _Output(open(log_paths[i], "w", encoding="utf-8"), owns_stream=True)
                    prefix = ""
                else:
                    sink, prefix = out, f"[worker {i}] "
                t = threading.Thread(target=_pump, args=(proc, prefix, sink),
                                     name=f"dgc_tf.launch-worker-{i}", daemon=True)
                t.start()
                readers.append(t)

            # Wait for all to succeed, one to fail, or a signal.
            while not flag.count:
                codes = [_exit_status(p) for p in procs]
                bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
                if bad:
                    failed = bad[0]
                    break
                if all(c == 0 for c in codes):
                    break
                flag.event.wait(_POLL_S)
            interrupted = flag.count > 0
        except KeyboardInterrupt:
            interrupted = True
        finally:
            # Stop whatever still runs, then reap everything. Runs on errors too.
            try:
                if failed is not None and not interrupted:
                    i, rc = failed
                    out.write_line(f"[launch] worker {i} failed with {_describe(rc)}; "
                                   f"stopping the other workers")
                    _stop(procs, signal.SIGTERM, grace, flag, out=out)
                    interrupted = flag.count > 0
                elif interrupted:
                    out.write_line("[launch] interrupted; sending SIGINT to the workers")
                    _stop(procs, signal.SIGINT, grace, flag, already=min(flag.count, 1), out=out)
                else:
                    _stop(procs, None, 0.0, flag)
            except KeyboardInterrupt:
                interrupted = True
                _stop(procs, None, 0.0, flag)
            for t in readers:
                t.join(timeout=5.0)
            if failed is not None and failed[0] in log_paths:
                _show_tail(log_paths[failed[0]], failed[0], out)

    if interrupted:
        return INTERRUPTED_EXIT_CODE
    if failed is not None:
        return _code_for(failed[1])
    return 0


def _stop(procs, sig, grace, flag, already=0, out=None):
    """Signal the still-running workers' groups with `sig`, wait up to `grace`
    seconds (cut short by a further SIGINT/SIGTERM to the launcher), then
    SIGKILL every worker group that is still ours and reap all workers."""
    try:
        if sig is not None:
            for p in procs:
                if _exit_status(p) is None:
                    _signal_group(p, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and flag.count <= already:
                if all(_exit_status(p) is not None for p in procs):
                    break
                flag.event.clear()
                flag.event.wait(min(_POLL_S, max(0.0, deadline - time.monotonic())))
    finally:
        # Workers that exited are unreaped zombies, so their group ids are still
        # theirs: killing the groups also takes down anything they left behind.
        for i, p in enumerate(procs):
            if sig is not None and out is not None and _exit_status(p) is None:
                out.write_line(f"[launch] worker {i} still running; killing it")
            _signal_group(p, signal.SIGKILL)
        for p in procs:
            p.wait()


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _port(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}")
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 1..65535, got {value}")
    return value


_VALUE_OPTIONS = ("--workers", "--host", "--grace", "--port-base", "--log-dir")


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m dgc_tf.launch", allow_abbrev=False,
        description="Start N local workers of a multi-worker TensorFlow script, "
                    "each with its TF_CONFIG, and prefix their output.",
        epilog="Everything after the script (or after --) goes to the script.")
    p.add_argument("--workers", type=_positive_int, default=2, metavar="N",
                   help="number of worker processes (>= 1, default 2)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address used in TF_CONFIG (default {DEFAULT_HOST})")
    p.add_argument("--port-base", type=_port, default=None, metavar="PORT",
                   help="use consecutive ports PORT.. instead of free ones")
    p.add_argument("--grace", type=_non_negative_float, default=DEFAULT_GRACE,
                   metavar="SECONDS",
                   help=f"seconds before SIGKILL when stopping workers (default {DEFAULT_GRACE:g})")
    p.add_argument("--stream-all", action="store_true",
                   help="stream every worker's output (default: worker 0's; the others "
                        "write worker-i.log files whose paths are printed)")
    p.add_argument("--log-dir", default=None, metavar="DIR",
                   help="directory for the worker-i.log files (default: a new temporary one)")
    p.add_argument("--share-network", action="store_true",
                   help="run the workers in this network namespace, reachable from other "
                        "machines (default: a private namespace with only loopback)")
    p.add_argument(_IN_NAMESPACE_FLAG, action="store_true", help=argparse.SUPPRESS)
    p.add_argument("script", nargs="?", help="Python script each worker runs")
    p.add_argument("args", nargs="*", help="arguments for the script")
    return p


def _split_argv(argv):
    """Split argv into launcher options and [script, *script_args].

    argparse drops a `--` that follows the script, so the split is done here:
    the command starts after a `--`, or at the first word that is neither an
    option nor an option's value.
    """
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return argv[:i], argv[i + 1:]
        if a.startswith("-") and a != "-":
            i += 2 if a in _VALUE_OPTIONS else 1
            continue
        return argv[:i], argv[i:]
    return argv, []


def main(argv=None):
    """Command-line entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    options, command = _split_argv(argv)
    ns = parser.parse_args(options)
    if not command:
        parser.error("the script to run is required")
    port_base = ns.port_base
    if port_base is not None and port_base + ns.workers - 1 > 65535:
        parser.error(f"argument --port-base: ports {port_base}..{port_base + ns.workers - 1} "
                     f"exceed 65535")
    share_network = ns.share_network
    if ns.in_private_network:
        _bring_up_loopback()
        share_network = _IN_NAMESPACE
    return launch(command[0], command[1:], workers=ns.workers, grace=ns.grace,
                  host=ns.host, port_base=port_base, stream_all=ns.stream_all,
                  log_dir=ns.log_dir, share_network=share_network)


if __name__ == "__main__":
    sys.exit(main())
