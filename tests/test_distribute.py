"""SparseAllGather under a 2-replica MirroredStrategy: one all-gather, exact bytes."""

import functools

import numpy as np
import pytest
import tensorflow as tf

import dgc_tf.keras3
from dgc_tf.distribute import SparseAllGather
from tests import harness

DEVICES = [f"/cpu:{i}" for i in range(harness.NUM_REPLICAS)]


@functools.lru_cache(maxsize=None)
def sparse_strategy(wire_dtype=None):
    return tf.distribute.MirroredStrategy(
        DEVICES, cross_device_ops=SparseAllGather(DEVICES, wire_dtype=wire_dtype))


def run_on(strategy, kwargs, weights):
    return harness.Run("keras3", dgc_tf.keras3.DGCSGD, kwargs, weights, strategy=strategy)


SHAPES = [(64, 48), (48, 40), (40,)]
KWARGS = dict(learning_rate=0.1, compress_ratio=0.01)


def random_steps(seed, steps=3):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = [[[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(2)]
             for _ in range(steps)]
    return weights, grads


def collective_ops(run, grads, device):
    per_replica = run.strategy.experimental_distribute_values_from_function(
        lambda ctx: [tf.constant(g) for g in grads[ctx.replica_id_in_sync_group]])
    graph = run._step.get_concrete_function(per_replica).graph
    device = tf.DeviceSpec.from_string(device)
    return [op for op in graph.get_operations()
            if op.type.startswith("Collective")
            and tf.DeviceSpec.from_string(op.device).device_index == device.device_index]


def test_sparse_all_gather_matches_the_plain_strategy():
    weights, grads = random_steps(0)
    sparse = run_on(sparse_strategy(), KWARGS, weights)
    plain = run_on(harness.mirrored_strategy(), KWARGS, weights)
    for step in grads:
        sparse.apply(step)
        plain.apply(step)
    for a, b in zip(sparse.weights(), plain.weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_one_all_gather_carries_every_compressed_variable():
    weights, grads = random_steps(1, steps=1)
    sparse = run_on(sparse_strategy(), KWARGS, weights)
    ops = collective_ops(sparse, grads[0], DEVICES[0])
    kinds = sorted(op.type for op in ops)
    # One gather for every compressed variable; one reduce for the dense pack, which
    # carries the finite flag too.
    assert kinds == ["CollectiveGatherV2", "CollectiveReduceV2"], kinds
    plain = run_on(harness.mirrored_strategy(), KWARGS, weights)
    plain_gathers = [op for op in collective_ops(plain, grads[0], DEVICES[0])
                     if op.type == "CollectiveGatherV2"]
    # TensorFlow's own path: at least one collective group per compressed variable.
    assert len(plain_gathers) >= 2


@pytest.mark.parametrize("wire_dtype", [None, tf.float16])
def test_reported_bytes_equal_what_the_collectives_were_given(wire_dtype):
    weights, grads = random_steps(2, steps=1)
    run = run_on(sparse_strategy(wire_dtype), KWARGS, weights)
    given = 0
    for op in collective_ops(run, grads[0], DEVICES[0]):
        tensor = op.inputs[0]
        assert tensor.shape.is_fully_defined(), op
        given += tensor.shape.num_elements() * tensor.dtype.size
    run.apply(grads[0])
    stats = run.optimizer.compression_stats()
    assert stats["last_bytes_sent"] == given
    k = [31, 20]  # ceil(0.01 * 3072), ceil(0.01 * 1920)
    value_words = sum(k) if wire_dtype is None else sum((n + 1) // 2 for n in k)
    # The bias gradient (40) and the finite flag (1) travel in the wire dtype too.
    dense_bytes = (40 + 1) * (4 if wire_dtype is None else 2)
    assert given == 4 * (value_words + sum(k)) + dense_bytes


def test_float16_wire_is_close_to_float32():
    weights, grads = random_steps(3)
    half = run_on(sparse_strategy(tf.float16), KWARGS, weights)
    full = run_on(sparse_strategy(), KWARGS, weights)
    for step in grads:
        half.apply(step)
        full.apply(step)
    for a, b in zip(half.weights(), full.weights()):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3)


def test_wire_dtype_is_validated():
    with pytest.raises(ValueError, match="`wire_dtype`"):
        SparseAllGather(DEVICES, wire_dtype=tf.int8)


@pytest.mark.parametrize("use_merge_call", [True, False])
def test_dgc_multi_worker_strategy_locally_with_and_without_merge_call(use_merge_call):
    """dgc_tf's MWMS on two local devices; without merge_call (as under XLA on GPUs)
    the optimizer reaches SparseAllGather through `_replica_ctx_all_reduce`."""
    strategy = dgc_multi_worker_strategy()
    assert isinstance(strategy.extended._cross_device_ops, SparseAllGather)
    weights, grads = random_steps(4)
    reference = run_on(sparse_strategy(), KWARGS, weights)
    run = run_on(strategy, KWARGS, weights)
    if not use_merge_call:
        # Simulates the XLA-on-all-GPU condition under which TensorFlow skips merge_call.
        run.strategy.extended._use_merge_call = lambda: False
    try:
        for step in grads:
            run.apply(step)
            reference.apply(step)
    finally:
        run.strategy.extended.__dict__.pop("_use_merge_call", None)
    for a, b in zip(run.weights(), reference.weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@functools.lru_cache(maxsize=None)
def dgc_multi_worker_strategy():
    from dgc_tf.distribute import MultiWorkerMirroredStrategy
    return MultiWorkerMirroredStrategy._from_local_devices(DEVICES)


def test_compression_above_400x_at_999_sparsity_when_compressed_variables_dominate():
    shapes = [(784, 1024), (1024, 10), (10,)]  # an MLP whose big kernel has no bias
    rng = np.random.default_rng(5)
    weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
    run = run_on(sparse_strategy(), dict(learning_rate=0.1, compress_ratio=0.001), weights)
    for _ in range(2):
        run.apply([[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(2)])
    stats = run.optimizer.compression_stats()
    # k = 803 and 11: (2 * 814 words of values and indices + 10 dense + 1 flag) * 4 bytes.
    assert stats["last_bytes_sent"] == 4 * (2 * 814 + 10 + 1)
    assert stats["compression_ratio"] > 400
