"""The exchange's routes (leaders' indices, own top-k gathered, dense) and the fp16 dense baseline.

Against the NumPy reference (tests/dgc_reference.py, `exchange="leader"` for the
leader's semantics), the conservation of pending gradient, identical replicas,
the byte counts and the route choice; 2 replicas in this process, 4 in a
subprocess (where "auto" takes the leader route).
"""

import functools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import dgc_tf.keras3
from dgc_tf.distribute import MultiWorkerMirroredStrategy, SparseAllGather, exchange_of
from dgc_tf.distribute import configure_logical_cpus
from dgc_tf.distribute import sparse_all_gather as exchange_lib
from dgc_tf.compression import WARMUP_DENSITIES, num_selected
from dgc_tf.ops import _custom_op
from tests import harness
from tests.dgc_reference import DGCReference
from tests.test_distribute import collective_ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = [f"/cpu:{i}" for i in range(harness.NUM_REPLICAS)]
SHAPES = [(40, 50), (8, 200), (50,), (10, 10)]


@functools.lru_cache(maxsize=None)
def strategy(exchange, wire_dtype=None):
    return tf.distribute.MirroredStrategy(DEVICES, cross_device_ops=SparseAllGather(
        DEVICES, wire_dtype=wire_dtype, exchange=exchange))


def per_replica_grads(rng, shapes, replicas=harness.NUM_REPLICAS):
    return [[rng.normal(size=s).astype(np.float32) / replicas for s in shapes]
            for _ in range(replicas)]


# -- the route choice ------------------------------------------------------------------------

def route(exchange, size, density, workers, value_bytes=4):
    return exchange_lib.choose_route(exchange, size, num_selected(size, density), workers,
                                     value_bytes, value_bytes)


def test_auto_takes_the_leader_route_from_three_workers_and_allgather_with_two():
    assert route("auto", 4_194_304, 0.001, 2) == "allgather"
    for workers in (3, 4, 8, 64):
        assert route("auto", 4_194_304, 0.001, workers) == "leader"
    assert route("allgather", 4_194_304, 0.001, 8) == "allgather"
    # A user's density over 1/2: a dense all-reduce moves fewer bytes than any sparse route.
    assert route("leader", 4_194_304, 0.6, 8) == "dense"


@pytest.mark.parametrize("exchange", exchange_lib.EXCHANGES)
@pytest.mark.parametrize("value_bytes", [4, 2])
def test_no_route_moves_more_than_dense_at_any_warmup_density_or_worker_count(exchange,
                                                                               value_bytes):
    for size in (1024, 100_000, 4_194_304):
        for workers in (2, 3, 4, 8, 16, 64, 256):
            for density in WARMUP_DENSITIES + (0.001,):
                k = num_selected(size, density)
                chosen = exchange_lib.choose_route(exchange, size, k, workers, value_bytes,
                                                   value_bytes)
                moved = exchange_lib.route_bytes(chosen, size, k, workers, value_bytes,
                                                 value_bytes)
                dense = exchange_lib.route_bytes("dense", size, k, workers, value_bytes,
                                                 value_bytes)
                assert moved <= dense, (exchange, size, workers, density, chosen)
    # Today's all-gather at 25% density and 8 workers would move 3.5x dense: it goes dense.
    assert route("allgather", 4_194_304, 0.25, 8) == "dense"
    assert route("auto", 4_194_304, 0.25, 8) == "leader"


def test_leader_bytes_stay_flat_as_workers_grow():
    size, k = 6_300_000, 6300
    leader = [exchange_lib.route_bytes("leader", size, k, n, 4, 4) for n in (2, 8, 64)]
    gather = [exchange_lib.route_bytes("allgather", size, k, n, 4, 4) for n in (2, 8, 64)]
    # kN/(N-1) slots at 14(N-1)/N bytes each (6 of indices, 8 of values): 14k at every N
    # (12k at N=2, where each replica offers all k of its entries).
    assert leader == [12 * k, 14 * k, 14 * k]
    assert gather[-1] == 8 * k * 63
    dense = exchange_lib.route_bytes("dense", size, k, 8, 4, 4)
    assert dense / leader[1] > 450  # the model's wire ratio at 8 workers, 99.9% sparsity


def test_exchange_argument_is_validated_before_connecting():
    with pytest.raises(ValueError, match="`exchange` must be one of 'auto', 'leader', "
                                         "'allgather', got 'ring'"):
        SparseAllGather(DEVICES, exchange="ring")
    # No TF_CONFIG cluster is reachable here: the error must come first.
    with pytest.raises(ValueError, match="`exchange`"):
        MultiWorkerMirroredStrategy(exchange="alltoall")


# -- the leader route against the reference, conservation, identical replicas -----------------

LEADER_CASES = {
    "momentum": dict(momentum=0.9, compress_ratio=0.01),
    "nesterov": dict(momentum=0.9, nesterov=True, compress_ratio=0.01),
    "no_masking": dict(momentum=0.9, compress_ratio=0.01, momentum_masking=False),
    "warmup": dict(momentum=0.9, compress_ratio=0.001, warmup_steps=4),
}


def leader_run_and_reference(kwargs, rng):
    """DGCSGD on the leader route over the test's replicas, its reference, the start weights."""
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    run = harness.Run("keras3", dgc_tf.keras3.DGCSGD, kwargs, weights,
                      strategy=strategy("leader"))
    reference = DGCReference(SHAPES, harness.NUM_REPLICAS, dtype=np.float32, exchange="leader",
                             **kwargs)
    return run, reference, [w.copy() for w in weights]


@pytest.mark.parametrize("case", sorted(LEADER_CASES))
def test_leader_route_matches_reference_step_by_step(case):
    rng = np.random.default_rng(sum(map(ord, case)))
    run, reference, expected = leader_run_and_reference(
        dict(LEADER_CASES[case], learning_rate=0.1), rng)
    for step in range(6):
        grads = per_replica_grads(rng, SHAPES)
        run.apply(grads)
        expected = reference.step(expected, grads)
        for j, (got, want) in enumerate(zip(run.weights(), expected)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{case}: weights {j}, step {step}")
        for j in (0, 1):
            slot = run.optimizer._compressor_slots.at(j)
            for replica, got in enumerate(harness.local_values(slot.residual)):
                np.testing.assert_allclose(got, reference.v[replica][j], rtol=1e-5, atol=1e-5,
                                           err_msg=f"{case}: residual {j}/{replica}, {step}")
            for replica, got in enumerate(harness.local_values(slot.momentum)):
                np.testing.assert_allclose(got, reference.u[replica][j], rtol=1e-5, atol=1e-5,
                                           err_msg=f"{case}: momentum {j}/{replica}, {step}")
    routes = exchange_of(run.strategy).routes
    assert sorted(routes) == ["w0:0", "w1:0"] and set(routes.values()) == {"leader"}, routes


def test_leader_steps_leave_weights_and_state_out_of_copy_on_read_mode():
    """The scatters into variables (the weight update, the masking after the exchange) are
    in place without TensorFlow's copy-on-read mode, in which every later read of a
    variable (each forward pass) copies it whole (`DGC>ScatterFlat`)."""
    if _custom_op.load_scatter_flat() is None:
        harness.skip_without_op()
    rng = np.random.default_rng(4)
    # Few entries (k = 2), so that TensorFlow's kernels would scatter rather than
    # take the dense form: this test fails with them.
    run, _, _ = leader_run_and_reference(dict(learning_rate=0.1, compress_ratio=0.001), rng)
    for _ in range(2):
        run.apply(per_replica_grads(rng, SHAPES))
    slots = [run.optimizer._compressor_slots.at(j) for j in (0, 1)]
    components = {
        "weights": [c for v in run.variables[:2] for c in getattr(v, "value", v).values],
        "residuals": [c for slot in slots for c in slot.residual.values],
        "momenta": [c for slot in slots for c in slot.momentum.values]}
    for what, variables in components.items():
        assert variables and all(harness.shares_buffer_with_readers(c) for c in variables), what


def test_leader_slots_are_taken_rank_by_rank_without_repeats():
    assert exchange_lib.first_occurrence(tf.constant([5, 3, 5, 7, 3])).numpy().tolist() == [
        True, True, False, True, False]
    # Shares of ceil(k / (N-1)): N=4 replicas lead about 4k/3 slots.
    assert [exchange_lib.leader_share(k, 4) for k in (1, 3, 4, 9)] == [1, 1, 2, 3]
    assert [exchange_lib.leader_share(9, n) for n in (1, 2, 10)] == [9, 9, 1]
    assert [exchange_lib.leader_candidates(k, 4) for k in (1, 3, 4, 9, 40)] == [1, 2, 3, 5, 21]
    assert exchange_lib.leader_candidates(tf.constant(40), 4).numpy() == 21
    # Rank by rank (5, 5, 3, 7, 9, 3), each index once; too few distinct: the first repeats.
    for dtype in (tf.int32, tf.int64):
        union = exchange_lib.leader_union(tf.constant([[5, 3, 9], [5, 7, 3]], dtype), 4)
        assert union.dtype == dtype and union.numpy().tolist() == [5, 3, 7, 9]
        union = exchange_lib.leader_union(tf.constant([[1, 2], [1, 2]], dtype), 4)
        assert union.numpy().tolist() == [1, 2, 1, 1]


def test_a_leader_step_launches_one_all_gather_and_one_all_reduce():
    """The leaders' indices ride in the all-gather; their values in the dense all-reduce,
    with the step's one-word finite flag: no collective of its own."""
    rng = np.random.default_rng(2)
    run, _, _ = leader_run_and_reference(dict(learning_rate=0.1, compress_ratio=0.01), rng)
    ops = collective_ops(run, per_replica_grads(rng, SHAPES), DEVICES[0])
    kinds = sorted((op.type, op.inputs[0].shape.as_list() == [1]) for op in ops)
    assert kinds == [("CollectiveGatherV2", False), ("CollectiveReduceV2", False)], kinds
    assert set(exchange_of(run.strategy).routes.values()) == {"leader"}


def test_an_index_several_leaders_chose_is_applied_once():
    """Identical gradients on both replicas: both lead the same indices, which the
    update must sum once (each replica's value there), not once per leader."""
    rng = np.random.default_rng(5)
    run, reference, expected = leader_run_and_reference(
        dict(learning_rate=0.1, momentum=0.9, compress_ratio=0.01), rng)
    for _ in range(3):
        same = [rng.normal(size=s).astype(np.float32) / 2 for s in SHAPES]
        grads = [same] * harness.NUM_REPLICAS
        run.apply(grads)
        expected = reference.step(expected, grads)
        for got, want in zip(run.weights(), expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("exchange", ["leader", "allgather"])
def test_nothing_is_lost_and_replicas_stay_identical(exchange):
    """momentum 0: pending over replicas + applied == every gradient, per element."""
    lr = 0.5
    rng = np.random.default_rng(7)
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    run = harness.Run("keras3", dgc_tf.keras3.DGCSGD,
                      dict(learning_rate=lr, momentum=0.0, compress_ratio=0.02), weights,
                      strategy=strategy(exchange))
    total = [np.zeros(s, np.float64) for s in SHAPES]
    for _ in range(5):
        grads = per_replica_grads(rng, SHAPES)
        run.apply(grads)
        for replica_grads in grads:
            for j, g in enumerate(replica_grads):
                total[j] += g
        for variable in run.variables:  # mirrored weights: bit for bit the same everywhere
            copies = harness.local_values(variable.value)
            assert all(np.array_equal(copies[0], c) for c in copies[1:])
    for j in (0, 1):
        applied = (weights[j].astype(np.float64) - run.weights()[j]) / lr
        pending = sum(harness.local_values(run.optimizer._compressor_slots.at(j).residual))
        np.testing.assert_allclose(pending + applied, total[j], rtol=1e-4, atol=1e-4)
        if exchange == "leader":
            # Each replica kept entries of its own that no leader picked.
            assert all(np.count_nonzero(v) > 0.5 * v.size
                       for v in harness.local_values(run.optimizer._compressor_slots.at(j).residual))


FOUR_REPLICAS = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    from tests import harness  # configures 2 logical CPUs when imported: 4 here, after it
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 4)
    import dgc_tf.distribute, dgc_tf.keras3
    from dgc_tf.distribute import SparseAllGather
    from dgc_tf.distribute import sparse_all_gather as lib
    from tests.dgc_reference import DGCReference
    devices = [f"/cpu:{i}" for i in range(4)]
    shapes = [(256, 256), (64, 300), (300,)]
    kwargs = dict(learning_rate=0.1, momentum=0.9, compress_ratio=0.01)
    rng = np.random.default_rng(11)
    weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
    strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=SparseAllGather(devices))
    run = harness.Run("keras3", dgc_tf.keras3.DGCSGD, kwargs, weights, strategy=strategy)
    reference = DGCReference(shapes, 4, dtype=np.float32, exchange="leader", **kwargs)
    expected = [w.copy() for w in weights]
    for step in range(4):
        grads = [[rng.normal(size=s).astype(np.float32) / 4 for s in shapes] for _ in range(4)]
        run.apply(grads)
        expected = reference.step(expected, grads)
        for got, want in zip(run.weights(), expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        for j in (0, 1):
            residuals = harness.local_values(run.optimizer._compressor_slots.at(j).residual)
            for replica in range(4):
                np.testing.assert_allclose(residuals[replica], reference.v[replica][j],
                                           rtol=1e-5, atol=1e-5)
    ops = dgc_tf.distribute.exchange_of(strategy)
    assert sorted(ops.routes.values()) == ["leader", "leader"], ops.routes
    k = [656, 192]
    expected_bytes = sum(lib.route_bytes("leader", 0, n, 4, 4, 4) for n in k)
    expected_bytes += lib.ring_all_reduce_bytes(4 * (300 + 1), 4)  # the bias and the flag
    stats = run.optimizer.compression_stats()
    assert abs(stats["last_bytes_sent"] - expected_bytes) < 1e-6, (stats, expected_bytes)
    print("OK", stats["compression_ratio"])
""")


def test_four_replicas_auto_takes_the_leader_route_and_matches_reference():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", FOUR_REPLICAS], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].startswith("OK")


WARMUP_ROUTES = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    from tests import harness  # configures 2 logical CPUs when imported: 4 here, after it
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 4)
    import dgc_tf.distribute, dgc_tf.keras3
    from dgc_tf.compression import stage_counts
    from dgc_tf.distribute import SparseAllGather
    from dgc_tf.distribute import sparse_all_gather as lib
    from tests.dgc_reference import DGCReference
    devices = [f"/cpu:{i}" for i in range(4)]
    shapes = [(256, 256), (64, 300), (300,)]
    warmup = 8
    kwargs = dict(learning_rate=0.1, momentum=0.9, compress_ratio=0.01, warmup_steps=warmup)
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
    strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=SparseAllGather(devices))
    run = harness.Run("keras3", dgc_tf.keras3.DGCSGD, kwargs, weights, strategy=strategy)
    reference = DGCReference(shapes, 4, dtype=np.float32, **kwargs)
    ops = dgc_tf.distribute.exchange_of(strategy)
    expected = [w.copy() for w in weights]
    counts = [stage_counts(256 * 256, 0.01, warmup), stage_counts(64 * 300, 0.01, warmup)]
    for step in range(warmup + 3):
        grads = [[rng.normal(size=s).astype(np.float32) / 4 for s in shapes] for _ in range(4)]
        run.apply(grads)
        # The warm-up's update is every replica's own top-k (the all-gather's), then a leader's.
        reference.exchange = "allgather" if step < warmup else "leader"
        expected = reference.step(expected, grads)
        for got, want in zip(run.weights(), expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(step))
        for j in (0, 1):
            residuals = harness.local_values(run.optimizer._compressor_slots.at(j).residual)
            for replica in range(4):
                np.testing.assert_allclose(residuals[replica], reference.v[replica][j],
                                           rtol=1e-5, atol=1e-5, err_msg=str(step))
        # The bytes counted are the route this step really took.
        stage = min(step * 4 // warmup, 4)
        expected_bytes = sum(lib.route_bytes(ops.stage_routes[name][stage], 0, c[stage], 4, 4, 4)
                             for name, c in zip(["w0:0", "w1:0"], counts))
        expected_bytes += lib.ring_all_reduce_bytes(4 * (300 + 1), 4)  # the bias and the flag
        got = run.optimizer.compression_stats()["last_bytes_sent"]
        assert abs(got - expected_bytes) < 1e-6, (step, got, expected_bytes)
    assert ops.routes == {"w0:0": "leader", "w1:0": "leader"}, ops.routes
    want = ("allgather",) * 4 + ("leader",)
    assert all(r == want for r in ops.stage_routes.values()), ops.stage_routes
    print("OK")
""")


def test_four_replicas_auto_keeps_the_warmup_off_the_leader_route():
    """"auto" with 4 replicas and a warm-up: the all-gather in the warm-up stages (each
    stage's own exchange, one tf.switch_case), the leader after it; the reference agrees
    with the route of each step, and the bytes counted follow it."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", WARMUP_ROUTES], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "OK"


def test_auto_routes_per_warmup_stage():
    counts = [num_selected(4_194_304, d) for d in WARMUP_DENSITIES + (0.001,)]
    # 8 workers: the warm-up's densest stage goes dense (the all-gather would move 3.5x
    # dense), the others all-gather, the leader after the warm-up.
    assert exchange_lib.choose_routes("auto", 4_194_304, counts, 8, 4, 4) == (
        "dense", "allgather", "allgather", "allgather", "leader")
    assert exchange_lib.choose_routes("leader", 4_194_304, counts, 8, 4, 4) == ("leader",) * 5
    # "allgather" is no longer dense for the whole run because of its densest stage.
    assert exchange_lib.choose_routes("allgather", 4_194_304, counts, 8, 4, 4)[1:] == (
        "allgather",) * 4
    assert exchange_lib.choose_routes("auto", 4_194_304, counts[-1:], 8, 4, 4) == ("leader",)
    assert exchange_lib.route_name(("dense", "allgather", "allgather", "leader")) == (
        "dense then allgather then leader")


def test_dense_route_is_the_allgather_update_exactly():
    """Density 0.6 with 2 replicas: the own top-k travel densely, with the same update."""
    kwargs = dict(learning_rate=0.1, momentum=0.9, compress_ratio=0.6)
    rng = np.random.default_rng(3)
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    run = harness.Run("keras3", dgc_tf.keras3.DGCSGD, kwargs, weights,
                      strategy=strategy("allgather"))
    reference = DGCReference(SHAPES, harness.NUM_REPLICAS, dtype=np.float32, **kwargs)
    expected = [w.copy() for w in weights]
    grads = per_replica_grads(rng, SHAPES)
    kinds = {op.type for op in collective_ops(run, grads, DEVICES[0])}
    assert kinds == {"CollectiveReduceV2"}, kinds
    for _ in range(3):
        run.apply(grads)
        expected = reference.step(expected, grads)
        grads = per_replica_grads(rng, SHAPES)
    for got, want in zip(run.weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert set(exchange_of(run.strategy).routes.values()) == {"dense"}


# -- one compressed exchange per worker (2 workers x 2 replicas: tests/test_multiworker.py) -------

def test_per_worker_sums_the_local_replicas_then_compresses_once():
    """One worker, per_worker=True: DGC of the replicas' summed gradient, one residual
    held identically by both replicas, nothing over a network (a group of one)."""
    kwargs = dict(learning_rate=0.1, momentum=0.9, compress_ratio=0.01)
    rng = np.random.default_rng(21)
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    run = harness.Run("keras3", dgc_tf.keras3.DGCSGD, kwargs, weights,
                      strategy=tf.distribute.MirroredStrategy(
                          DEVICES, cross_device_ops=SparseAllGather(DEVICES, per_worker=True)))
    reference = DGCReference(SHAPES, 1, dtype=np.float32, **kwargs)
    expected = [w.copy() for w in weights]
    for step in range(4):
        grads = per_replica_grads(rng, SHAPES)
        run.apply(grads)
        expected = reference.step(expected, [[sum(g[j] for g in grads)
                                              for j in range(len(SHAPES))]])
        for got, want in zip(run.weights(), expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"step {step}")
        for j in (0, 1):
            copies = harness.local_values(run.optimizer._compressor_slots.at(j).residual)
            assert np.array_equal(copies[0], copies[1])
            np.testing.assert_allclose(copies[0], reference.v[0][j], rtol=1e-5, atol=1e-5)
    exchange = exchange_of(run.strategy)
    assert exchange is run.strategy.extended._cross_device_ops.compressed_exchange
    assert exchange.num_workers == 1 and sorted(exchange.routes) == ["w0:0", "w1:0"]
    assert run.optimizer.compression_stats()["last_bytes_sent"] == 0  # one worker: no network
    # Per replica (the default with one worker) the exchange is the strategy's own.
    assert exchange_of(strategy("auto")) is strategy("auto").extended._cross_device_ops


def test_per_worker_arguments_are_validated():
    with pytest.raises(ValueError, match="`per_worker` must be None, True or False, got 'yes'"):
        SparseAllGather(DEVICES, per_worker="yes")
    with pytest.raises(ValueError, match="`group_size` \\(3\\) must be a multiple"):
        SparseAllGather(DEVICES, group_size=3)
    with pytest.raises(ValueError, match="`replicas_per_worker` must be a positive integer, got 0"):
        MultiWorkerMirroredStrategy(replicas_per_worker=0)
    with pytest.raises(ValueError, match="`count` must be a positive integer, got 0"):
        configure_logical_cpus(0)
    # The runtime has started with 2 logical CPUs (tests/conftest.py): 2 is fine, 3 is not.
    assert configure_logical_cpus(harness.NUM_REPLICAS) == ["/device:CPU:0", "/device:CPU:1"]
    with pytest.raises(RuntimeError, match="already started with 2"):
        configure_logical_cpus(3)


# -- the 16-bit dense baseline -----------------------------------------------------------------

def test_float16_wire_all_reduces_plain_sgd_gradients_in_half_precision():
    import keras

    rng = np.random.default_rng(4)
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    half = harness.Run("keras3", keras.optimizers.SGD, dict(learning_rate=0.1, momentum=0.9),
                       weights, strategy=strategy("auto", tf.float16))
    full = harness.Run("keras3", keras.optimizers.SGD, dict(learning_rate=0.1, momentum=0.9),
                       weights, strategy=strategy("auto"))
    grads = per_replica_grads(rng, SHAPES)
    reduced = [op.inputs[0] for op in collective_ops(half, grads, DEVICES[0])]
    assert reduced and all(t.dtype == tf.float16 for t in reduced), reduced
    assert sum(t.shape.num_elements() for t in reduced) == sum(np.prod(s) for s in SHAPES)
    for _ in range(3):
        half.apply(grads)
        full.apply(grads)
    for a, b in zip(half.weights(), full.weights()):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=2e-3)
        assert not np.array_equal(a, b)  # it did travel in half precision
