"""benchmarks/network_bench.py: namespaces, links and cleanup (root only), and the report format.

No TensorFlow training here: the namespace test moves a few bytes over TCP.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "network_bench", os.path.join(ROOT, "benchmarks", "network_bench.py"))
nb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nb)

ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("listening", flush=True)
s.settimeout(10); c, _ = s.accept(); c.settimeout(10)
data = b""
while not data.endswith(b"\\n"):
    chunk = c.recv(4096)
    if not chunk: break
    data += chunk
c.sendall(data.upper()); c.close()
"""

ECHO_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b"hello dgc\\n"); print(c.recv(4096).decode().strip())
"""


def _echo(topo, server, client):
    srv = subprocess.Popen(["ip", "netns", "exec", topo.namespaces[server], sys.executable, "-c",
                            ECHO_SERVER, topo.addresses[server], "23999"],
                           stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert srv.stdout.readline().strip() == "listening"
        out = subprocess.run(["ip", "netns", "exec", topo.namespaces[client], sys.executable,
                              "-c", ECHO_CLIENT, topo.addresses[server], "23999"],
                             capture_output=True, text=True, timeout=15)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait()


@pytest.mark.skipif(not nb.netns_available(), reason="needs root and `ip netns`")
@pytest.mark.parametrize("workers", [2, 3])
def test_namespaces_connect_shape_and_clean_up(workers):
    tag = nb.make_tag(f"test{os.getpid()}")
    topo = nb.Topology(tag, workers)
    try:
        topo.create()
        assert sorted(nb.list_namespaces(tag)) == sorted(
            topo.namespaces + ([topo.hub] if topo.hub else []))
        assert (topo.hub is not None) == (workers > 2)
        before = topo.tx_bytes(0)
        assert _echo(topo, server=workers - 1, client=0) == "HELLO DGC"
        assert topo.tx_bytes(0) > before  # the counter sees the traffic
        topo.shape("100mbit")
        for ns, dev in topo.links:
            qdisc = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", dev],
                                   capture_output=True, text=True).stdout
            assert "tbf" in qdisc and "100Mbit" in qdisc, qdisc
        assert _echo(topo, server=0, client=1) == "HELLO DGC"  # still connected when shaped
        topo.shape("unshaped")
        qdisc = subprocess.run(["tc", "-n", topo.namespaces[0], "qdisc", "show", "dev", nb.DEV],
                               capture_output=True, text=True).stdout
        assert "tbf" not in qdisc
        # nothing of the test lives in the host's own namespace
        host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert nb.DEV not in host_links
    finally:
        left = topo.destroy()
    assert left == [] and nb.list_namespaces(tag) == []


def test_destroy_only_touches_its_own_tag(monkeypatch):
    calls = []
    monkeypatch.setattr(nb, "list_namespaces", lambda tag: [f"{tag}-w0", f"{tag}-hub"]
                        if not calls else [])
    monkeypatch.setattr(nb, "_ip", lambda *a, check=True: calls.append(a))
    assert nb.destroy_namespaces("dgcbench-7") == []
    assert calls == [("netns", "del", "dgcbench-7-w0"), ("netns", "del", "dgcbench-7-hub")]


def test_rates():
    assert nb.rate_bits("100mbit") == 1e8
    assert nb.rate_bits("1gbit") == 1e9
    assert math.isinf(nb.rate_bits("unshaped"))
    assert nb.rate_label("100mbit") == "100 Mbit/s" and nb.rate_label("unshaped") == "unshaped"
    with pytest.raises(ValueError):
        nb.rate_bits("fast")


def _report():
    def case(mode, rate, step, wire, status="ok", **kw):
        return dict(model="mlp", workers=2, mode=mode, rate=rate, rate_bits=nb.rate_bits(rate),
                    status=status, median_step_s=step, wire_bytes_per_step=wire, **kw)
    report = {
        "meta": {"command": "x"},
        "floors": [{"model": "mlp", "workers": 2, "status": "ok", "median_step_s": 0.2}],
        "cases": [
            case("dgc", "1gbit", 0.25, 480_000.0),
            case("dgc", "100mbit", 0.3, 490_000.0),
            case("dense", "1gbit", 1.0, 202_000_000.0),
            dict(model="mlp", workers=2, mode="dense", rate="100mbit", rate_bits=1e8,
                 status="failed", failure="worker 1 exited (code 1)",
                 error="[worker 1] UnavailableError: missed heartbeats"),
        ]}
    report["summary"] = nb.summarize(report)
    return report


def test_summary_table_and_json():
    report = _report()
    rows = {r["rate"]: r for r in report["summary"]}
    assert rows["1gbit"]["speedup"] == pytest.approx(4.0)
    assert rows["1gbit"]["dgc_over_floor"] == pytest.approx(1.25)
    assert rows["1gbit"]["wire_ratio"] == pytest.approx(202e6 / 480e3)
    assert rows["100mbit"]["speedup"] is None and rows["100mbit"]["dense_status"] == "failed"

    table = nb.format_table(report)
    lines = table.splitlines()
    assert lines[0].split(" | ")[0].strip() == "model" and "DGC/floor" in lines[0]
    assert len({len(line) for line in lines[:4]}) == 1  # aligned columns
    assert "1 Gbit/s" in lines[2] and "4.00x" in lines[2] and "1.25x" in lines[2]
    assert "202.00 MB" in lines[2] and "480.00 kB" in lines[2]
    assert "FAILED[1]" in lines[3]
    assert lines[4].startswith("[1] dense mlp 2w 100 Mbit/s") and "missed heartbeats" in lines[4]

    back = json.loads(nb.to_json(report))
    assert back["summary"][0]["speedup"] == pytest.approx(4.0)
    assert back["cases"][3]["status"] == "failed"


def test_summarize_results_takes_the_slowest_worker_per_step():
    results = [{"step_times": [1.0, 3.0, 2.0], "tx_bytes": 300},
               {"step_times": [2.0, 1.0, 2.5], "tx_bytes": 600}]
    out = nb.summarize_results(results)
    assert out["median_step_s"] == 2.5  # max per step: 2, 3, 2.5
    assert out["wire_bytes_per_step"] == 300 and out["wire_bytes_per_step_per_worker"] == [100, 200]


def _report_with_vgc():
    report = _report()
    report["floors"].append({"model": "mlp", "workers": 2, "kind": "floor_vgc", "status": "ok",
                             "median_step_s": 0.4})
    report["cases"] += [
        dict(model="mlp", workers=2, mode="vgc", rate="1gbit", rate_bits=1e9, status="ok",
             median_step_s=0.5, wire_bytes_per_step=20_200_000.0, vgc_density=0.0421,
             vgc_compression_ratio=11.9),
        dict(model="mlp", workers=2, mode="vgc", rate="100mbit", rate_bits=1e8,
             status="failed", failure="timeout", error="[worker 0] DeadlineExceeded"),
    ]
    report["summary"] = nb.summarize(report)
    return report


def test_summary_table_with_vgc_column():
    report = _report_with_vgc()
    rows = {r["rate"]: r for r in report["summary"]}
    assert len(report["summary"]) == 2  # one row per rate, dense / DGC / VGC side by side
    one = rows["1gbit"]
    assert one["speedup"] == pytest.approx(4.0)  # DGC's numbers are unchanged
    assert one["vgc_speedup"] == pytest.approx(2.0)
    assert one["vgc_over_floor"] == pytest.approx(0.5 / 0.4)  # against VGC's own floor
    assert one["vgc_wire_ratio"] == pytest.approx(10.0)
    assert one["vgc_density"] == pytest.approx(0.0421)
    assert rows["100mbit"]["vgc_status"] == "failed" and rows["100mbit"]["vgc_s"] is None

    lines = nb.format_table(report).splitlines()
    header = [h.strip() for h in lines[0].split(" | ")]
    assert header[3:6] == ["dense step", "DGC step", "VGC step"]
    assert "VGC density" in header and "VGC/floor" in header
    assert len({len(line) for line in lines[:4]}) == 1
    cells = [c.strip() for c in lines[2].split(" | ")]
    assert cells[header.index("VGC step")] == "500.0 ms"
    assert cells[header.index("VGC speedup")] == "2.00x"
    assert cells[header.index("VGC floor")] == "400.0 ms"
    assert cells[header.index("VGC wire/step")] == "20.20 MB"
    assert cells[header.index("VGC wire ratio")] == "10.00x"
    assert cells[header.index("VGC density")] == "0.0421"
    failed = [c.strip() for c in lines[3].split(" | ")]
    assert failed[header.index("dense step")] == "FAILED[1]"
    assert failed[header.index("VGC step")] == "FAILED[2]"
    assert lines[5].startswith("[2] vgc mlp 2w 100 Mbit/s") and "DeadlineExceeded" in lines[5]
    back = json.loads(nb.to_json(report))
    assert back["summary"][0]["vgc_density"] == pytest.approx(0.0421)


def test_summarize_results_of_vgc_workers():
    common = {"vgc_density": 0.05, "vgc_density_cumulative": 0.06, "vgc_skipped_steps": 0,
              "vgc_dense_bytes_per_step_per_worker": 1000.0}
    results = [dict(step_times=[1.0], tx_bytes=100, vgc_payload_bytes_per_step_per_worker=100.0,
                    **common),
               dict(step_times=[1.0], tx_bytes=120, vgc_payload_bytes_per_step_per_worker=150.0,
                    **common)]
    out = nb.summarize_results(results)
    assert out["vgc_density"] == 0.05
    assert out["vgc_payload_bytes_per_step_per_worker"] == [100.0, 150.0]
    assert out["vgc_compression_ratio"] == pytest.approx(2000.0 / 250.0)


def test_modes_option():
    assert nb.parse_args([]).modes == ["dgc", "vgc", "dense"]
    assert nb.parse_args(["--modes", "vgc"]).modes == ["vgc"]
    with pytest.raises(SystemExit):
        nb.parse_args(["--modes", "vgc,topk"])


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    nb.plot(_report(), tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    nb.plot(_report_with_vgc(), tmp_path / "q.png")
    assert (tmp_path / "q.png").stat().st_size > 1000


def _scaling_report():
    """dense, dense fp16, the all-gather and the default exchange at 2 and 8 workers."""
    wires = {2: {"dense": 67e6, "dense16": 34e6, "dgc_gather": 140e3, "dgc": 140e3},
             8: {"dense": 469e6, "dense16": 236e6, "dgc_gather": 4.17e6, "dgc": 1.41e6}}
    cases = [dict(model="mlp8m", workers=n, mode=mode, rate="100mbit", rate_bits=1e8,
                  status="ok", median_step_s=wire / 12e6 + 0.5, wire_bytes_per_step=wire)
             for n, by_mode in wires.items() for mode, wire in by_mode.items()]
    report = {"meta": {"command": "x"}, "floors": [], "cases": cases}
    report["summary"] = nb.summarize(report)
    return report


def test_summary_of_the_exchanges_and_the_fp16_baseline(tmp_path):
    report = _scaling_report()
    row = next(r for r in report["summary"] if r["workers"] == 8)
    assert row["wire_ratio"] == pytest.approx(469e6 / 1.41e6)
    assert row["gather_wire_ratio"] == pytest.approx(469e6 / 4.17e6)
    assert row["dense16_wire"] == 236e6
    assert row["speedup_over_dense16"] == pytest.approx((236e6 / 12e6 + 0.5) / (1.41e6 / 12e6 + 0.5))
    table = nb.format_table(report)
    assert "allgather wire ratio" in table.splitlines()[0] and "112.47x" in table
    pytest.importorskip("matplotlib")
    nb.plot_wire_ratio(report, tmp_path / "ratio.png")
    assert (tmp_path / "ratio.png").stat().st_size > 1000


def test_namespace_prefix_option():
    assert nb.make_tag(7, prefix="dgc12") == "dgc12-7"
    assert nb.parse_args(["--ns-prefix", "dgc12"]).ns_prefix == "dgc12"
    assert nb.parse_args(["--models", "mlp8m", "--modes", "dgc_gather,dense16"]).modes == [
        "dgc_gather", "dense16"]


def test_dgc16_column_and_image_models():
    report = _scaling_report()
    report["cases"].append(dict(model="mlp8m", workers=8, mode="dgc16", rate="100mbit",
                                rate_bits=1e8, status="ok", median_step_s=0.55,
                                wire_bytes_per_step=0.9e6))
    report["summary"] = nb.summarize(report)
    row = next(r for r in report["summary"] if r["workers"] == 8)
    assert row["dgc16_s"] == 0.55 and row["dgc16_wire"] == 0.9e6
    lines = nb.format_table(report).splitlines()
    header = [h.strip() for h in lines[0].split(" | ")]
    cells = [c.strip() for c in lines[3].split(" | ")]
    assert cells[header.index("DGC fp16 step")] == "550.0 ms"
    assert cells[header.index("DGC fp16 wire/step")] == "900.00 kB"
    opts = nb.parse_args(["--models", "resnet8,convnet", "--modes", "dgc16,dense16",
                          "--batch-image", "16"])
    assert opts.batch["resnet8"] == opts.batch["convnet"] == 16
    with pytest.raises(SystemExit):
        nb.parse_args(["--models", "resnet20"])


@pytest.mark.parametrize("model,mode,params", [("resnet8", "floor", 77_754),
                                               ("convnet", "dgc16", 225_034)])
def test_worker_builds_the_examples_models(model, mode, params, tmp_path):
    """One real bench worker: the examples' own builders, one step (dgc16 under dgc_tf's
    strategy with a one-worker TF_CONFIG on loopback)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    if mode != "floor":
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}"]},
                                       "task": {"type": "worker", "index": 0}})
    out = subprocess.run([sys.executable, nb.WORKER, "--model", model, "--mode", mode,
                          "--batch", "4", "--workers", "1"], input="WARM 1\nTIME 1\nEXIT\n",
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    replies = dict(line[2:].split(" ", 1) for line in out.stdout.splitlines()
                   if line.startswith("@@"))
    assert "RESULT" in replies, out.stdout[-2000:] + out.stderr[-2000:]
    assert json.loads(replies["READY"])["params"] == params
    assert len(json.loads(replies["RESULT"])["step_times"]) == 1


def test_time_to_accuracy_is_steps_to_target_times_step_time():
    spec = importlib.util.spec_from_file_location(
        "time_to_accuracy", os.path.join(ROOT, "benchmarks", "time_to_accuracy.py"))
    tta = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tta)
    history = [{"epoch": 1, "test_accuracy": 0.80}, {"epoch": 2, "test_accuracy": 0.91},
               {"epoch": 3, "test_accuracy": 0.90}]
    run = {"workers": 2, "results": [
        {"optimizer": "dense", "steps_per_epoch": 100, "test_accuracy": 0.90, "history": history},
        {"optimizer": "dgc", "steps_per_epoch": 100, "test_accuracy": 0.85,
         "history": [{"epoch": 1, "test_accuracy": 0.85}]}]}
    bench = {"cases": [dict(model="convnet", workers=2, mode=m, rate="1gbit", status="ok",
                            median_step_s=s) for m, s in (("dense", 0.2), ("dense16", 0.1),
                                                          ("dgc", 0.05))]}
    targets = tta.parse_targets("0.9,dgc-final", run)
    rows = {(r["target_accuracy"], r["mode"]): r
            for r in tta.compute(run, bench, "convnet", targets, {"dense16": "dense"})}
    assert rows[(0.9, "dense")]["steps"] == 200  # first epoch at or above the target
    assert rows[(0.9, "dense")]["computed_seconds"] == pytest.approx(40.0)
    assert rows[(0.9, "dense16")]["computed_seconds"] == pytest.approx(20.0)
    assert rows[(0.9, "dgc")]["steps"] is None  # never reached: no time
    assert rows[(0.85, "dgc")]["computed_seconds"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="fraction"):
        tta.parse_targets("91.1", run)
