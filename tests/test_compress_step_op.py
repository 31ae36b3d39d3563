"""The fused compress step (`dgc_tf.ops.compress_step`): compiled kernel against fallback.

The fallback applies `dgc_tf.compression`'s pure steps to the variables; the
kernel must give the same bits (values, indices, residual, momentum) for
dense and row-sparse gradients, update the variables in place without
disturbing a value read before, and reject bad input with a clear error.
Tests of the compiled kernel skip when the library is not built, unless
`DGC_TF_REQUIRE_OP=1`.
"""

import shutil

import numpy as np
import pytest
import tensorflow as tf

from dgc_tf import compression
from dgc_tf.ops import _custom_op
from dgc_tf.ops.compress_step import compress_step, compress_step_tf
from tests import harness

SHAPE = (300, 70)


@pytest.fixture
def compiled():
    if _custom_op.load_compress_step() is None:
        harness.skip_without_op()


def _gradient(rng, sparse, dtype=np.float32):
    if sparse:  # repeated rows (3) and both ends of the table
        rows = np.array([3, 7, 3, SHAPE[0] - 1, 0], np.int64)
        values = rng.normal(size=(len(rows), SHAPE[1])).astype(dtype)
        return tf.IndexedSlices(tf.constant(values), tf.constant(rows), tf.constant(SHAPE))
    return tf.constant(rng.normal(size=SHAPE).astype(dtype))


def _run(fn, u0, v0, grad, k, **kwargs):
    u = None if u0 is None else tf.Variable(u0)
    v = tf.Variable(v0)
    values, indices = tf.function(lambda: fn(v, u, grad, k, **kwargs))()
    return (values.numpy(), indices.numpy(), v.numpy(), None if u is None else u.numpy())


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("masking", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_kernel_gives_the_fallbacks_bits(compiled, momentum, nesterov, masking, sparse):
    rng = np.random.default_rng(int(10 * momentum) + 2 * nesterov + 4 * masking + 8 * sparse)
    u0 = rng.normal(size=SHAPE).astype(np.float32) if momentum else None
    v0 = rng.normal(size=SHAPE).astype(np.float32)
    grad = _gradient(rng, sparse)
    kwargs = dict(momentum_factor=momentum, nesterov=nesterov, momentum_masking=masking)
    got = _run(compress_step, u0, v0, grad, 60, **kwargs)
    want = _run(compress_step_tf, u0, v0, grad, 60, **kwargs)
    for name, a, b in zip(["values", "indices", "residual", "momentum"], got, want):
        if b is not None:
            np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_the_pure_steps(compiled, nesterov):
    """Against `compression`'s tensor functions, the specification of the step."""
    rng = np.random.default_rng(5)
    u0, v0 = (rng.normal(size=SHAPE).astype(np.float32) for _ in range(2))
    grad = _gradient(rng, sparse=False)
    values, indices, v, u = _run(compress_step, u0, v0, grad, 40, momentum_factor=0.9,
                                 nesterov=nesterov)
    u_want, v_want = compression.momentum_correction(u0, v0, grad, 0.9, nesterov)
    values_want, indices_want = compression.select(v_want, 40)
    u_want, v_want = compression.mask_sent(u_want, v_want, indices_want)
    np.testing.assert_array_equal(values, values_want.numpy())
    np.testing.assert_array_equal(indices, indices_want.numpy())
    np.testing.assert_array_equal(v, v_want.numpy())
    np.testing.assert_array_equal(u, u_want.numpy())


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("fn", [compress_step, compress_step_tf], ids=["kernel", "fallback"])
def test_without_mask_selected_the_caller_masks(compiled, fn, momentum, nesterov, sparse):
    """`mask_selected=False` (an exchange that applies other entries than these, a
    leader's): the step accumulates and selects as the pure steps do and zeroes
    nothing; masking afterwards gives the bits of masking in the step."""
    rng = np.random.default_rng(20 + int(10 * momentum) + 2 * nesterov + 4 * sparse)
    u0 = rng.normal(size=SHAPE).astype(np.float32) if momentum else None
    v0 = rng.normal(size=SHAPE).astype(np.float32)
    grad = _gradient(rng, sparse)
    kwargs = dict(momentum_factor=momentum, nesterov=nesterov)
    values, indices, v, u = _run(fn, u0, v0, grad, 45, mask_selected=False, **kwargs)
    u_want, v_want = compression.momentum_correction(
        np.zeros_like(v0) if u0 is None else u0, v0, tf.convert_to_tensor(grad), momentum,
        nesterov)
    values_want, indices_want = compression.select(v_want, 45)
    np.testing.assert_array_equal(values, values_want.numpy())
    np.testing.assert_array_equal(indices, indices_want.numpy())
    np.testing.assert_array_equal(v, v_want.numpy())
    if u0 is not None:
        np.testing.assert_array_equal(u, u_want.numpy())
    masked = _run(fn, u0, v0, grad, 45, **kwargs)
    u_later, v_later = compression.mask_sent(np.zeros_like(v) if u is None else u, v,
                                             tf.constant(indices))
    np.testing.assert_array_equal(v_later.numpy(), masked[2])
    if u0 is not None:
        np.testing.assert_array_equal(u_later.numpy(), masked[3])


def test_sparse_gradient_equals_its_dense_form(compiled):
    rng = np.random.default_rng(6)
    u0, v0 = (rng.normal(size=SHAPE).astype(np.float32) for _ in range(2))
    sparse = _gradient(rng, sparse=True)
    dense = tf.convert_to_tensor(sparse)
    for fn in (compress_step, compress_step_tf):
        got = _run(fn, u0, v0, sparse, 30, momentum_factor=0.9, nesterov=True)
        want = _run(fn, u0, v0, dense, 30, momentum_factor=0.9, nesterov=True)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
def test_half_precision_kernels_match_the_fallback(compiled, dtype):
    rng = np.random.default_rng(7)
    tf_dtype = tf.as_dtype(dtype)
    u0 = tf.cast(rng.normal(size=SHAPE), tf_dtype).numpy()
    v0 = tf.cast(rng.normal(size=SHAPE), tf_dtype).numpy()
    grad = tf.cast(rng.normal(size=SHAPE), tf_dtype)
    got = _run(compress_step, u0, v0, grad, 50, momentum_factor=0.9)
    want = _run(compress_step_tf, u0, v0, grad, 50, momentum_factor=0.9)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_float64_falls_back(compiled):
    """No kernel for float64: the same call runs the fallback."""
    rng = np.random.default_rng(8)
    v0 = rng.normal(size=(40, 30))
    v = tf.Variable(v0)
    values, indices = compress_step(v, None, tf.constant(np.ones((40, 30))), 5,
                                    momentum_factor=0.0)
    assert values.dtype == tf.float64
    flat = (v0 + 1).ravel()
    want = np.argsort(-np.abs(flat), kind="stable")[:5]
    np.testing.assert_array_equal(indices.numpy(), want)
    assert np.all(v.numpy().ravel()[want] == 0)


def test_updates_in_place_and_leaves_an_earlier_read_alone(compiled):
    v = tf.Variable(np.arange(12, dtype=np.float32).reshape(3, 4))
    u = tf.Variable(np.zeros((3, 4), np.float32))
    before = v.read_value()  # shares the buffer until the op writes
    handle = v.handle
    values, indices = compress_step(v, u, tf.ones((3, 4)), 2, momentum_factor=0.5)
    np.testing.assert_array_equal(before.numpy(), np.arange(12).reshape(3, 4))
    assert v.handle is handle
    np.testing.assert_array_equal(indices.numpy(), [11, 10])
    np.testing.assert_array_equal(values.numpy(), [12, 11])
    want = np.arange(12, dtype=np.float32) + 1
    want[[10, 11]] = 0
    np.testing.assert_array_equal(v.numpy().ravel(), want)
    np.testing.assert_array_equal(u.numpy().ravel(), np.where(want == 0, 0, 1))


def test_bad_input_is_rejected(compiled):
    v = tf.Variable(tf.zeros((4, 5)))
    u = tf.Variable(tf.zeros((4, 5)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="`k` must be in"):
        compress_step(v, u, tf.zeros((4, 5)), 21, momentum_factor=0.9)
    with pytest.raises(tf.errors.InvalidArgumentError, match="`grad` has shape"):
        compress_step(v, u, tf.zeros((5, 4)), 2, momentum_factor=0.9)
    rows = tf.IndexedSlices(tf.zeros((1, 5)), tf.constant([4]), tf.constant([4, 5]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"grad_rows\[0\]` = 4"):
        compress_step(v, u, rows, 2, momentum_factor=0.9)
    with pytest.raises(ValueError, match="momentum_factor"):
        compress_step(v, u, tf.zeros((4, 5)), 2, momentum_factor=1.0)
    with pytest.raises(ValueError, match="exactly when"):
        compress_step(v, None, tf.zeros((4, 5)), 2, momentum_factor=0.9)


@pytest.mark.parametrize("path", ["compiled", "fallback"])
def test_embedding_gradient_stays_sparse_through_dgcsgd(path, monkeypatch):
    """DGCSGD with an embedding's IndexedSlices gradient: the numbers of its dense form."""
    import keras

    import dgc_tf.keras3

    if path == "fallback":
        monkeypatch.setattr(_custom_op, "load", lambda: None)
    elif _custom_op.load_compress_step() is None:
        pytest.skip("the compiled op library is not built")
    from dgc_tf.compressors.dgc import replica

    seen = []  # what reaches the compress step: the IndexedSlices, not a dense table

    def spy(residual, momentum, grad, *args, **kwargs):
        seen.append(type(grad).__name__)
        return compress_step(residual, momentum, grad, *args, **kwargs)

    monkeypatch.setattr(replica, "compress_step", spy)
    rng = np.random.default_rng(9)
    table = rng.normal(size=(500, 8)).astype(np.float32)
    grads = [tf.IndexedSlices(tf.constant(rng.normal(size=(6, 8)).astype(np.float32)),
                              tf.constant(rng.integers(0, 500, size=6)), tf.constant([500, 8]))
             for _ in range(3)]
    results = []
    for dense in (False, True):
        if dense:
            seen.append("dense run")
        var = keras.Variable(table)
        opt = dgc_tf.keras3.DGCSGD(0.1, momentum=0.9, compress_ratio=0.01, warmup_steps=0,
                                   min_compress_size=100)
        opt.build([var])

        @tf.function
        def step(grad):
            opt.apply_gradients([(tf.convert_to_tensor(grad) if dense else grad, var)])

        for grad in grads:
            step(grad)
        results.append((var.numpy(), opt._compressor_slots.at(0).residual.numpy()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    sparse_traces, dense_traces = seen[:seen.index("dense run")], seen[seen.index("dense run"):]
    assert sparse_traces and set(sparse_traces) == {"IndexedSlices"}, seen
    assert "IndexedSlices" not in dense_traces, seen


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_cuda_sources_compile_with_nvcc():
    """The fused step's TF CUDA kernel compiles, and its standalone test links (no TF flags)."""
    harness.assert_cuda_sources_compile(
        "compress_step/compress_step_kernels.cu.cc",
        "compress_step/compress_step_standalone_test.cu", timeout=900)
