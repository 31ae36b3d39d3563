"""Tests of the local multi-worker launcher, with real worker processes.

The worker scripts are small Python files written into tmp_path; they do not
import TensorFlow. Every process a test starts (the launcher run as a
subprocess, and the workers, which write their pids into files) is killed by
its own pid in teardown if it is still alive, even when the test fails.
"""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dgc_tf import launch as launch_mod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _alive(pid):
    """True if `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, IndexError):
        return os.path.exists(f"/proc/{pid}") or not os.path.isdir("/proc")


def _wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# Common worker preamble: records its pid (written atomically, so a reader
# never sees a partial number) in PIDDIR/worker<i>.pid.
_PREAMBLE = '''
import json, os, sys, time
INDEX = int(os.environ["DGC_TF_WORKER_INDEX"])
PIDDIR = sys.argv[1]
def _write(name, text):
    tmp = os.path.join(PIDDIR, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(PIDDIR, name))
_write(f"worker{INDEX}.pid", str(os.getpid()))
'''


class Procs:
    """Tracks processes started by a test and kills the survivors afterwards."""

    def __init__(self, piddir):
        self.piddir = piddir
        self.popens = []

    def spawn(self, argv, **kw):
        p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, **kw)
        self.popens.append(p)
        return p

    def worker_pids(self):
        pids = {}
        for name in os.listdir(self.piddir):
            if name.startswith("worker") and name.endswith(".pid"):
                with open(os.path.join(self.piddir, name)) as f:
                    pids[int(name[len("worker"):-len(".pid")])] = int(f.read())
        return pids

    def cleanup(self):
        for p in self.popens:
            if p.poll() is None:
                p.kill()
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # Workers are children of the launcher; if it was killed they may be
        # orphans. Kill them by the pids they wrote themselves.
        for pid in self.worker_pids().values():
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def procs(tmp_path):
    piddir = tmp_path / "pids"
    piddir.mkdir()
    tracker = Procs(str(piddir))
    try:
        yield tracker
    finally:
        tracker.cleanup()


def _script(tmp_path, body, name="worker.py"):
    path = tmp_path / name
    path.write_text(_PREAMBLE + textwrap.dedent(body))
    return str(path)


def _cli(*args):
    return [sys.executable, "-m", "dgc_tf.launch", *args]


def test_tf_config_env_and_prefixed_output(tmp_path, procs):
    script = _script(tmp_path, '''
        print("CONFIG " + json.dumps({
            "tf_config": json.loads(os.environ["TF_CONFIG"]),
            "index": os.environ["DGC_TF_WORKER_INDEX"],
            "num": os.environ["DGC_TF_NUM_WORKERS"],
            "unbuffered": os.environ.get("PYTHONUNBUFFERED"),
            "extra": os.environ.get("EXTRA_VAR"),
            "argv": sys.argv[2:],
        }))
        print("to stderr", file=sys.stderr)
        sys.stdout.write("no newline at the end")
    ''')
    out = io.StringIO()
    code = launch_mod.launch(script, args=[procs.piddir, "--workers", "7", "--"], workers=3,
                             env={"EXTRA_VAR": "x"}, grace=5.0, output=out, stream_all=True)
    assert code == 0, out.getvalue()
    lines = out.getvalue().splitlines()
    configs = {}
    for line in lines:
        assert line.startswith(("[worker 0] ", "[worker 1] ", "[worker 2] ")), line
        i = int(line[len("[worker "):line.index("]")])
        payload = line[line.index("] ") + 2:]
        if payload.startswith("CONFIG "):
            configs[i] = json.loads(payload[len("CONFIG "):])
    for i in range(3):
        assert f"[worker {i}] to stderr" in lines
        assert f"[worker {i}] no newline at the end" in lines
    assert sorted(configs) == [0, 1, 2]
    cluster = configs[0]["tf_config"]["cluster"]["worker"]
    assert len(cluster) == 3
    hosts = [a.rsplit(":", 1)[0] for a in cluster]
    ports = [int(a.rsplit(":", 1)[1]) for a in cluster]
    assert hosts == ["127.0.0.1"] * 3
    assert len(set(ports)) == 3 and all(0 < p < 65536 for p in ports)
    for i, c in configs.items():
        assert c["tf_config"] == {"cluster": {"worker": cluster},
                                  "task": {"type": "worker", "index": i}}
        assert c["index"] == str(i) and c["num"] == "3"
        assert c["unbuffered"] == "1" and c["extra"] == "x"
        assert c["argv"] == ["--workers", "7", "--"]


def test_by_default_the_chief_streams_and_the_others_write_files(tmp_path, procs):
    """Readable by default: only worker 0's lines on the stream; the others' output
    is in files whose paths are printed before the workers start."""
    script = _script(tmp_path, '''
        for step in range(3):
            print(f"worker {INDEX} step {step}", flush=True)
    ''')
    p = procs.spawn(_cli("--workers", "3", "--log-dir", str(tmp_path / "logs"),
                         script, procs.piddir))
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0, out
    lines = out.splitlines()
    assert [l for l in lines if l.startswith("[worker")] == [
        f"[worker 0] worker 0 step {s}" for s in range(3)]
    for i in (1, 2):
        path = str(tmp_path / "logs" / f"worker-{i}.log")
        assert f"[launch] worker {i} output: {path}" in lines
        with open(path) as f:
            assert f.read().splitlines() == [f"worker {i} step {s}" for s in range(3)]


def test_cli_all_succeed_port_base_and_script_args(tmp_path, procs):
    script = _script(tmp_path, '''
        print("TF_CONFIG " + os.environ["TF_CONFIG"])
        print("ARGV " + json.dumps(sys.argv[2:]))
    ''')
    p = procs.spawn(_cli("--workers", "2", "--port-base", "45100", "--stream-all", "--",
                         script, procs.piddir, "--workers", "5", "--", "-x"))
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0, out
    for i in range(2):
        cfg = json.loads(out.split(f"[worker {i}] TF_CONFIG ", 1)[1].splitlines()[0])
        assert cfg == {"cluster": {"worker": ["127.0.0.1:45100", "127.0.0.1:45101"]},
                       "task": {"type": "worker", "index": i}}
        assert f'[worker {i}] ARGV ["--workers", "5", "--", "-x"]' in out
    assert not any(_alive(pid) for pid in procs.worker_pids().values())


def test_failure_stops_the_others(tmp_path, procs):
    script = _script(tmp_path, '''
        if INDEX == 1:
            # Fail only once the sleeper is known to be running.
            deadline = time.time() + 20
            while not os.path.exists(os.path.join(PIDDIR, "worker0.pid")):
                if time.time() > deadline:
                    sys.exit(99)
                time.sleep(0.01)
            print("failing now", flush=True)
            sys.exit(3)
        print("sleeping", flush=True)
        time.sleep(60)
    ''')
    start = time.monotonic()
    p = procs.spawn(_cli("--workers", "2", "--grace", "5", script, procs.piddir))
    out, _ = p.communicate(timeout=30)
    elapsed = time.monotonic() - start
    assert p.returncode == 3, out
    assert elapsed < 10, (elapsed, out)  # SIGTERM stops the sleeper, no waiting for the grace
    assert "[worker 1] failing now" in out
    assert "[launch] worker 1 failed with exit code 3" in out
    pids = procs.worker_pids()
    assert sorted(pids) == [0, 1]
    assert not _alive(pids[0]), "the sleeping worker survived the launcher"


def test_failure_kills_a_worker_that_ignores_sigterm(tmp_path, procs):
    script = _script(tmp_path, '''
        import signal
        if INDEX == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            _write("ready0", "")
            time.sleep(60)
        while not os.path.exists(os.path.join(PIDDIR, "ready0")):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)
    ''')
    out = io.StringIO()
    start = time.monotonic()
    code = launch_mod.launch(script, args=[procs.piddir], workers=2, grace=0.5, output=out)
    assert time.monotonic() - start < 10
    assert code == 128 + signal.SIGKILL, out.getvalue()
    text = out.getvalue()
    assert "[launch] worker 1 failed with signal 9" in text
    assert "[launch] worker 0 still running; killing it" in text
    assert not _alive(procs.worker_pids()[0])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_is_forwarded(tmp_path, procs, sig):
    script = _script(tmp_path, '''
        try:
            _write(f"ready{INDEX}", "")
            time.sleep(60)
        except KeyboardInterrupt:
            _write(f"interrupted{INDEX}", "")
            print("got KeyboardInterrupt", flush=True)
            sys.exit(1)
    ''')
    p = procs.spawn(_cli("--workers", "2", "--grace", "10", "--stream-all", script, procs.piddir))
    ready = [os.path.join(procs.piddir, f"ready{i}") for i in range(2)]
    assert _wait_for(lambda: all(map(os.path.exists, ready)), 30), "workers did not start"
    start = time.monotonic()
    p.send_signal(sig)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 130, out
    assert time.monotonic() - start < 8, out  # the workers stopped; no waiting for the grace
    for i in range(2):
        assert os.path.exists(os.path.join(procs.piddir, f"interrupted{i}")), out
        assert f"[worker {i}] got KeyboardInterrupt" in out
    assert not any(_alive(pid) for pid in procs.worker_pids().values())


def test_interrupt_kills_workers_that_ignore_it_after_grace(tmp_path, procs):
    script = _script(tmp_path, '''
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _write(f"ready{INDEX}", "")
        time.sleep(60)
    ''')
    p = procs.spawn(_cli("--workers", "2", "--grace", "0.5", script, procs.piddir))
    ready = [os.path.join(procs.piddir, f"ready{i}") for i in range(2)]
    assert _wait_for(lambda: all(map(os.path.exists, ready)), 30), "workers did not start"
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 130, out
    assert "still running; killing it" in out
    assert not any(_alive(pid) for pid in procs.worker_pids().values())


def test_workers_zero_is_an_error_naming_the_option(capsys):
    with pytest.raises(SystemExit) as e:
        launch_mod.main(["--workers", "0", "script.py"])
    assert e.value.code == 2
    assert "--workers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="workers"):
        launch_mod.launch("script.py", workers=0)


def test_missing_script_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        launch_mod.main(["--workers", "2"])
    assert e.value.code == 2
    assert "script" in capsys.readouterr().err


def test_free_ports_are_distinct():
    ports = launch_mod.free_ports(4)
    assert len(set(ports)) == 4


def _host_addresses():
    """127.0.0.1 and this machine's other IPv4 addresses (from `ip`, when present)."""
    addresses = ["127.0.0.1"]
    try:
        text = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                              timeout=10).stdout
    except OSError:
        return addresses
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[2] == "inet":
            address = parts[3].split("/")[0]
            if address not in addresses:
                addresses.append(address)
    return addresses


def _reachable(address, port):
    import socket
    with socket.socket() as s:
        s.settimeout(2.0)
        return s.connect_ex((address, port)) == 0


def _can_unshare():
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "--net", "true"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_unshare(),
                    reason="no private network namespace here: the launcher warns instead")
def test_a_launched_tensorflow_server_is_not_reachable_from_outside(tmp_path, procs):
    """TensorFlow's gRPC server binds 0.0.0.0; the launcher's private network
    namespace keeps it unreachable from this namespace, on every address."""
    script = _script(tmp_path, '''
        import tensorflow as tf
        cluster = json.loads(os.environ["TF_CONFIG"])["cluster"]
        server = tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name="worker",
                                      task_index=INDEX, protocol="grpc", start=True)
        port = int(cluster["worker"][INDEX].rsplit(":", 1)[1])
        _write(f"server{INDEX}", json.dumps({"port": port,
                                             "interfaces": sorted(n for _, n in __import__("socket").if_nameindex())}))
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(PIDDIR, "done")) and time.time() < deadline:
            time.sleep(0.05)
    ''')
    p = procs.spawn(_cli("--workers", "1", script, procs.piddir))
    info_path = os.path.join(procs.piddir, "server0")
    try:
        assert _wait_for(lambda: os.path.exists(info_path), 90), "the worker did not start"
        with open(info_path) as f:
            info = json.load(f)
        assert info["interfaces"] == ["lo"]  # nothing but loopback inside
        for address in _host_addresses():
            assert not _reachable(address, info["port"]), (address, info["port"])
    finally:
        open(os.path.join(procs.piddir, "done"), "w").close()
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    assert "[launch] WARNING" not in out


def test_share_network_warns_that_the_workers_are_reachable(tmp_path, procs):
    script = _script(tmp_path, 'print("hello")\n')
    out = io.StringIO()
    code = launch_mod.launch(script, args=[procs.piddir], workers=1, output=out,
                             share_network=True)
    assert code == 0, out.getvalue()
    assert "listen on all interfaces" in out.getvalue()
