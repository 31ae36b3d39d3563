"""Real worker processes with TF_CONFIG on localhost, under dgc_tf's MultiWorkerMirroredStrategy."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.dgc_reference import DGCReference

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
        if key.split("/")[0] in ("dgc", "vgc") and key.split("/")[1].isdigit():
            np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)  # identical replicas
    for i in range(4):
        # Full density without masking is momentum SGD on the summed gradient.
        np.testing.assert_allclose(w0[f"dgc_full/{i}"], w0[f"sgd/{i}"], rtol=1e-5, atol=1e-5)
        assert not np.allclose(w0[f"dgc/{i}"], w0[f"sgd/{i}"])  # 1% density does differ
    assert int(w0["dgc/skipped"]) == 0
    assert float(w0["dgc/compression_ratio"]) > 10
    # VGC through tf_keras's fit (its micro-batch step) on two workers trains, compressed.
    assert w0["vgc/loss"][-1] < w0["vgc/loss"][0]
    assert 0 < float(w0["vgc/density"]) < 1 and int(w0["vgc/skipped"]) == 0


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


# -- several replicas per worker: one compressed exchange per worker ----------------------------

def per_worker_run(tmp_path, replicas_per_worker, exchange, per_worker="auto"):
    """Two workers of tests/workers/per_worker.py; returns their saved arrays."""
    out = tmp_path / f"{replicas_per_worker}x{exchange}{per_worker}"
    out.mkdir()
    codes, outputs = run_workers(os.path.join(WORKERS, "per_worker.py"),
                                 [str(out), str(replicas_per_worker), exchange, per_worker])
    assert codes == [0, 0], "\n".join(outputs)
    return [dict(np.load(out / f"worker{i}.npz")) for i in range(2)]


def applied(saved):
    """`(cases, initial weights, grads[step][replica][variable])` a per_worker.py run applied."""
    n = len([k for k in saved if k.startswith("initial/")])
    steps = 1 + max(int(k.split("/")[1]) for k in saved if k.startswith("grad/"))
    replicas = int(saved["replicas"])
    grads = [[[saved[f"grad/{t}/{r}/{j}"] for j in range(n)] for r in range(replicas)]
             for t in range(steps)]
    return json.loads(str(saved["cases"])), [saved[f"initial/w{j}"] for j in range(n)], grads


def check_per_worker_semantics(workers, exchange, replicas_per_worker):
    """Identical replicas, the NumPy reference on each worker's summed gradient, conservation."""
    w0, w1 = workers
    for key in w0:  # weights, byte counts, inputs; residuals are each worker's own
        if "residual" not in key:
            np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)
    cases, weights, grads = applied(w0)
    shapes = [w.shape for w in weights]
    compressed = [j for j in range(len(shapes)) if f"momentum/residual{j}/0" in w0]
    assert compressed == [0, 1]
    for worker in workers:
        for case in cases:
            for j in compressed:  # the worker's local replicas hold one residual, bit for bit
                copies = [worker[f"{case}/residual{j}/{r}"] for r in range(replicas_per_worker)]
                assert all(np.array_equal(copies[0], c) for c in copies[1:]), (case, j)
    # The reference with one replica per worker, each worker's gradient the sum of its replicas'.
    num_workers = 2
    per_worker_grads = [[[sum(step[w * replicas_per_worker + r][j]
                              for r in range(replicas_per_worker)) for j in range(len(shapes))]
                         for w in range(num_workers)] for step in grads]
    kwargs = cases["momentum"]
    reference = DGCReference(shapes, num_workers, dtype=np.float32, exchange=exchange, **kwargs)
    expected = [w.copy() for w in weights]
    for step_grads in per_worker_grads:
        expected = reference.step(expected, step_grads)
    for j, want in enumerate(expected):
        np.testing.assert_allclose(w0[f"momentum/w{j}"], want, rtol=1e-5, atol=1e-5)
    for w, worker in enumerate(workers):
        for j in compressed:
            np.testing.assert_allclose(worker[f"momentum/residual{j}/0"], reference.v[w][j],
                                       rtol=1e-5, atol=1e-5)
    # Momentum 0: what was applied plus what the workers still hold is every gradient.
    lr = cases["plain"]["learning_rate"]
    for j in compressed:
        total = sum(np.asarray(g[j], np.float64) for step in grads for g in step)
        applied_sum = (weights[j].astype(np.float64) - w0[f"plain/w{j}"]) / lr
        pending = sum(worker[f"plain/residual{j}/0"] for worker in workers)
        np.testing.assert_allclose(pending + applied_sum, total, rtol=1e-4, atol=1e-4)


def test_leader_route_once_per_worker_with_two_replicas_each(tmp_path):
    """2 workers x 2 logical CPUs, exchange="leader": the workers share the leader slots."""
    workers = per_worker_run(tmp_path, 2, "leader")
    check_per_worker_semantics(workers, "leader", 2)
    assert json.loads(str(workers[0]["routes"])) == {"w0:0": "leader", "w1:0": "leader"}


def test_two_replicas_per_worker_put_one_replicas_bytes_on_the_wire(tmp_path):
    """2 workers x 2 logical CPUs against 2 x 1 ("auto": the all-gather with 2 workers):
    each the reference's update for its workers' gradients, with the same exchange bytes."""
    one = per_worker_run(tmp_path, 1, "auto")
    two = per_worker_run(tmp_path, 2, "auto")
    check_per_worker_semantics(one, "allgather", 1)
    check_per_worker_semantics(two, "allgather", 2)
    for case in ("momentum", "plain"):
        for key in ("last_bytes_sent", "bytes_sent", "dense_bytes"):
            assert float(two[0][f"{case}/{key}"]) == float(one[0][f"{case}/{key}"]) > 0, key
    assert json.loads(str(two[0]["routes"])) == {"w0:0": "allgather", "w1:0": "allgather"}


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
