"""Real worker processes with TF_CONFIG on localhost, under dgc_tf's MultiWorkerMirroredStrategy."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.multiworker
WORKERS = os.path.join(os.path.dirname(__file__), "workers")


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(script, args, n=2, timeout=300):
    ports = free_ports(n)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    try:
        for i in range(n):
            env = dict(os.environ, TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": i}}))
            procs.append(subprocess.Popen(
                [sys.executable, script, *args], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, start_new_session=True))
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
        return [p.returncode for p in procs], outputs
    finally:
        for p in procs:  # only the processes this test started
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_two_workers_fit_with_dgc(tmp_path):
    codes, outputs = run_workers(os.path.join(WORKERS, "fit_mwms.py"), [str(tmp_path)])
    assert codes == [0, 0], "\n".join(outputs)
    w0, w1 = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    for key in w0.files:
        if key.startswith("dgc/") and key[4:].isdigit():
            np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)  # identical replicas
    for i in range(4):
        # Full density without masking is momentum SGD on the summed gradient.
        np.testing.assert_allclose(w0[f"dgc_full/{i}"], w0[f"sgd/{i}"], rtol=1e-5, atol=1e-5)
        assert not np.allclose(w0[f"dgc/{i}"], w0[f"sgd/{i}"])  # 1% density does differ
    assert int(w0["dgc/skipped"]) == 0
    assert float(w0["dgc/compression_ratio"]) > 10


def test_keras3_custom_training_loop_on_two_workers(tmp_path):
    codes, outputs = run_workers(os.path.join(WORKERS, "keras3_loop.py"), [str(tmp_path)])
    assert codes == [0, 0], "\n".join(outputs)
    w0, w1 = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    for key in w0.files:
        np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)
    assert float(w0["ratio"]) > 10


def test_keras3_fit_on_two_workers_through_dgc_strategy(tmp_path):
    codes, outputs = run_workers(os.path.join(WORKERS, "keras3_fit.py"), [str(tmp_path)])
    assert codes == [0, 0], "\n".join(outputs)
    w0, w1 = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    for key in w0.files:
        np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)
    for i in range(4):
        np.testing.assert_allclose(w0[f"dgc_full/{i}"], w0[f"sgd/{i}"], rtol=1e-5, atol=1e-5)


def test_dead_worker_fails_the_other_then_backup_resumes(tmp_path):
    """Worker 1 dies in epoch 1: worker 0 must fail, not hang; a relaunch resumes
    from the epoch-0 backup with the DGC state restored and finishes.

    The strategy sets no collective timeout (it would leak threads on long
    runs): the coordination service's missed heartbeats report the death."""
    import time

    backup, out = tmp_path / "backup", tmp_path / "out"
    out.mkdir()
    script = os.path.join(WORKERS, "faults.py")
    start = time.monotonic()
    codes, outputs = run_workers(script, [str(backup), str(out), "1"], timeout=180)
    elapsed = time.monotonic() - start
    assert codes[1] == -signal.SIGKILL, outputs[1]
    assert codes[0] != 0, outputs[0]  # an error, within the timeout above
    assert "stopped sending heartbeats" in outputs[0], outputs[0][-3000:]
    assert elapsed < 150
    saved_total = float((out / "residual_total.0.txt").read_text())
    assert not (out / "residual_total.2.txt").exists()

    codes, outputs = run_workers(script, [str(backup), str(out), "-1"], timeout=180)
    assert codes == [0, 0], "\n".join(outputs)
    iterations, restored_total = (out / "restored.txt").read_text().split()
    steps_per_epoch = 512 // 64
    assert int(iterations) == steps_per_epoch  # resumed after epoch 0
    # ON_READ residuals: the checkpoint keeps their sum over workers.
    assert float(restored_total) == pytest.approx(saved_total, rel=1e-5)
    assert int((out / "iterations.txt").read_text()) == 3 * steps_per_epoch


def test_two_workers_fit_with_error_feedback_adam(tmp_path):
    """TopKErrorFeedback(Adam) in Keras 3 `fit` on two real processes: replicas stay
    identical, full density is Adam, 1% density differs and keeps a residual per worker."""
    codes, outputs = run_workers(os.path.join(WORKERS, "keras3_fit.py"),
                                 [str(tmp_path), "error_feedback"])
    assert codes == [0, 0], "\n".join(outputs)
    w0, w1 = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    for i in range(4):
        for name in ("adam", "ef_full", "ef"):
            np.testing.assert_array_equal(w0[f"{name}/{i}"], w1[f"{name}/{i}"],
                                          err_msg=f"{name}/{i}")
        np.testing.assert_allclose(w0[f"ef_full/{i}"], w0[f"adam/{i}"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(w0["ef/0"], w0["adam/0"])
    assert float(w0["ef_ratio"]) > 10
    # Adam's bias correction counted every step (none was skipped).
    assert int(w0["ef_inner_iterations"]) == int(w0["ef_iterations"]) > 0
    # Each worker keeps its own residual: they differ (their shards differ) and are not empty.
    assert np.abs(w0["ef_own_residual"]).sum() > 0
    assert not np.allclose(w0["ef_own_residual"], w1["ef_own_residual"])
