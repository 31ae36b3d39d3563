"""Tests of the compiled `DGC>SampledTopK` op and of its pure-TF fallback.

Both paths are checked against a NumPy reference (sort by |x| descending,
flat index ascending). Tests of the compiled op are skipped when the library
is not built, unless `DGC_TF_REQUIRE_OP=1` (set by `make test`), which turns
a missing library into a failure.
"""
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from dgc_tf.ops import _custom_op, topk
from tests import harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = [tf.float32, tf.float16, tf.bfloat16]


@pytest.fixture(scope="module")
def compiled_op():
    op = _custom_op.load()
    if op is None:
        reason = (f"the compiled op is not available ({_custom_op.library_path()} missing, "
                  f"not loadable, or {_custom_op.FORCE_FALLBACK_ENV}=1); "
                  "build it with `pip install --no-build-isolation -e .`")
        harness.skip_without_op(reason)
    return op


@pytest.fixture(scope="module")
def raw_module(compiled_op):
    return tf.load_op_library(_custom_op.library_path())


def _fallback(x, k, sample_ratio=0.01, seed=None):
    return topk.sampled_topk_tf(x, k, sample_ratio=sample_ratio)


@pytest.fixture(params=["op", "tf"])
def impl(request):
    if request.param == "op":
        return request.getfixturevalue("compiled_op")
    return _fallback


def reference(x, k):
    flat = tf.cast(tf.reshape(x, [-1]), tf.float32).numpy()
    order = np.lexsort((np.arange(flat.size), -np.abs(flat)))[:k]
    return flat[order], order


def check(impl, x, k, **kwargs):
    x = tf.convert_to_tensor(x)
    values, indices = impl(x, k, **kwargs)
    ref_values, ref_indices = reference(x, int(k))
    assert values.dtype == x.dtype
    assert indices.dtype == topk.index_dtype_for(x.shape.num_elements())
    np.testing.assert_array_equal(indices.numpy(), ref_indices)
    # Compare bit-exactly (as float32; -0.0 vs 0.0 via signbit too).
    got = tf.cast(values, tf.float32).numpy()
    np.testing.assert_array_equal(got, ref_values)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(ref_values))


def make(pattern, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if pattern == "normal":
        x = rng.standard_normal(n)
    elif pattern == "equal":
        x = np.full(n, -1.5)
    elif pattern == "ties":
        x = rng.integers(-3, 4, n).astype(np.float64)
    elif pattern == "inf":
        x = rng.standard_normal(n)
        x[rng.integers(0, n, 3)] = np.inf
        x[0] = -np.inf
    elif pattern == "zeros":
        x = np.where(np.arange(n) % 2 == 0, 0.0, -0.0)
    else:
        raise ValueError(pattern)
    return tf.constant(x.astype(np.float32), dtype=dtype)


def ks_for(n):
    return sorted({1, 2 if n >= 2 else 1, max(1, n // 1000), max(1, n // 100), n // 2 or 1, n})


SIZES = [1, 2, 3, 1023, 1024, 1025, 4095, 4096, 4097, 65535, 65537]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("pattern", ["normal", "equal", "ties", "inf", "zeros"])
def test_matches_reference_float32(impl, n, pattern):
    x = make(pattern, n, tf.float32, seed=n)
    for k in ks_for(n):
        check(impl, x, k)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
@pytest.mark.parametrize("n", [1, 2, 1025, 65537])
@pytest.mark.parametrize("pattern", ["normal", "ties", "inf"])
def test_matches_reference_half_types(impl, dtype, n, pattern):
    x = make(pattern, n, dtype, seed=n + 1)
    for k in ks_for(n):
        check(impl, x, k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 3, 4), (2, 3, 4, 5)])
def test_ranks(impl, dtype, shape):
    rng = np.random.default_rng(len(shape))
    x = tf.constant(rng.standard_normal(shape).astype(np.float32), dtype=dtype)
    n = int(np.prod(shape))
    for k in sorted({1, n // 2 or 1, n}):
        check(impl, x, k)


def test_large_random(impl):
    x = make("normal", 1_000_003, tf.float32, seed=5)
    for k in (1, 1000, 10_000):
        check(impl, x, k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", ["normal", "ties", "zeros"])
def test_large_k_parallel_selection(compiled_op, dtype, pattern):
    # Enough candidates (> 64K) for the CPU kernel's parallel radix-sort-and-merge path.
    x = make(pattern, 2_000_003, dtype, seed=14)
    for k in (100_000, 700_000):
        check(compiled_op, x, k)


@pytest.mark.parametrize("k_dtype", [tf.int32, tf.int64])
def test_dynamic_k_in_tf_function(impl, k_dtype):
    x = make("normal", 20_000, tf.float32, seed=3)

    @tf.function(input_signature=[tf.TensorSpec([20_000], tf.float32), tf.TensorSpec([], k_dtype)])
    def select(x, k):
        values, indices = impl(x, k)
        return values, indices

    for k in (1, 20, 200, 5000, 20_000):
        values, indices = select(x, tf.constant(k, k_dtype))
        ref_values, ref_indices = reference(x, k)
        np.testing.assert_array_equal(indices.numpy(), ref_indices)
        np.testing.assert_array_equal(values.numpy(), ref_values)
    assert select.experimental_get_tracing_count() == 1


def test_k_variable_in_tf_function(impl):
    x = make("ties", 30_000, tf.float32, seed=12)
    k_var = tf.Variable(7)

    @tf.function
    def select(x):
        return impl(x, k_var)

    for k in (7, 300, 30_000):
        k_var.assign(k)
        values, indices = select(x)
        np.testing.assert_array_equal(indices.numpy(), reference(x, k)[1])


def test_numpy_and_narrow_int_k(compiled_op):
    x = make("normal", 1000, tf.float32, seed=13)
    for k in (np.int64(10), np.int32(10), tf.constant(10, tf.int16)):
        _, indices = compiled_op(x, k)
        np.testing.assert_array_equal(indices.numpy(), reference(x, 10)[1])


def test_unknown_static_size(compiled_op):
    # Only the compiled op handles a size unknown at trace time (int64
    # indices then, as index_dtype_for(None) says).
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([], tf.int32)])
    def select(x, k):
        return compiled_op(x, k)

    for shape in ((10, 30), (1, 1), (300, 7)):
        x = tf.reshape(make("normal", int(np.prod(shape)), tf.float32, seed=8), shape)
        for k in (1, int(np.prod(shape))):
            values, indices = select(x, tf.constant(k))
            assert indices.dtype == tf.int64
            np.testing.assert_array_equal(indices.numpy(), reference(x, k)[1])


def test_static_shape_with_constant_k(compiled_op):
    @tf.function
    def select(x):
        return compiled_op(x, 5)

    concrete = select.get_concrete_function(tf.TensorSpec([100, 3], tf.float32))
    assert [o.shape.as_list() for o in concrete.structured_outputs] == [[5], [5]]


def test_seed_does_not_change_result(compiled_op):
    x = make("normal", 300_000, tf.float32, seed=9)
    ref_values, ref_indices = reference(x, 300)
    for seed in (None, 0, 1, 12345):
        values, indices = compiled_op(x, 300, seed=seed)
        np.testing.assert_array_equal(indices.numpy(), ref_indices)
    for ratio in (0.001, 0.01, 0.5, 1.0):
        values, indices = compiled_op(x, 300, sample_ratio=ratio, seed=3)
        np.testing.assert_array_equal(indices.numpy(), ref_indices)


def test_threshold_retry_path(compiled_op):
    # Heavy mass at one magnitude just above the sample's threshold: the
    # first threshold gives too few or far too many candidates, the kernel
    # must lower it / compact exactly.
    rng = np.random.default_rng(11)
    x = rng.standard_normal(400_000).astype(np.float32) * 1e-3
    x[rng.choice(x.size, 1000, replace=False)] = 7.0  # far above: all top
    x[rng.choice(x.size, 50_000, replace=False)] = -2.0  # huge tie block
    x = tf.constant(x)
    for k in (999, 1000, 1001, 5000, 51_000, 60_000):
        check(compiled_op, x, k)


def test_int64_indices(raw_module):
    x = make("ties", 5000, tf.float32, seed=2)
    for tk in (tf.int32, tf.int64):
        values, indices = raw_module.dgc_sampled_top_k(x, tf.constant(50, tk), Tindices=tf.int64)
        assert indices.dtype == tf.int64
        ref_values, ref_indices = reference(x, 50)
        np.testing.assert_array_equal(indices.numpy(), ref_indices)
        np.testing.assert_array_equal(values.numpy(), ref_values)


@pytest.mark.parametrize("dtype", DTYPES)
def test_int64_indices_large_k(raw_module, dtype):
    # int64 indices take the (key, index) struct path of the CPU selection.
    x = make("ties", 300_000, dtype, seed=6)
    for k in (1, 6000, 100_000):
        values, indices = raw_module.dgc_sampled_top_k(x, k, Tindices=tf.int64, seed=3)
        ref_values, ref_indices = reference(x, k)
        np.testing.assert_array_equal(indices.numpy(), ref_indices)
        np.testing.assert_array_equal(tf.cast(values, tf.float32).numpy(), ref_values)


def test_dispatcher_uses_op(compiled_op):
    assert topk.using_custom_op()
    x = make("normal", 5000, tf.float32, seed=4)
    values, indices = topk.sampled_topk(x, 17, seed=1)
    np.testing.assert_array_equal(indices.numpy(), reference(x, 17)[1])


def test_no_gradient(compiled_op):
    x = tf.Variable(make("normal", 100, tf.float32))
    with tf.GradientTape() as tape:
        values, _ = compiled_op(x, 3)
        loss = tf.reduce_sum(values)
    assert tape.gradient(loss, x) is None


# --- errors -------------------------------------------------------------------

ERRORS = (ValueError, tf.errors.InvalidArgumentError)


@pytest.mark.parametrize("k", [0, -1, 11])
def test_bad_k_python_int(impl, k):
    x = tf.ones([10])
    with pytest.raises(ERRORS, match="`k`"):
        impl(x, k)


@pytest.mark.parametrize("k", [0, 11])
def test_bad_k_tensor(impl, k):
    x = tf.ones([10])
    with pytest.raises(tf.errors.InvalidArgumentError, match="`k`"):
        impl(x, tf.constant(k))


@pytest.mark.parametrize("k", [0, 11])
def test_bad_k_in_tf_function(impl, k):
    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def select(k):
        return impl(tf.ones([10]), k)

    # The compiled op names `k`. In graph mode the fallback's asserts are not
    # ordered before its top_k, which may fail first ("at least k columns").
    match = "`k`" if impl is not _fallback else "`k`|at least k"
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        select(tf.constant(k))


def test_empty(impl):
    with pytest.raises(ERRORS, match="empty"):
        impl(tf.zeros([0]), 1)
    with pytest.raises(ERRORS, match="empty"):
        impl(tf.zeros([3, 0, 2]), 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 5, 5000, 100_001])
def test_nan(impl, dtype, n):
    x = np.ones(n, np.float32)
    x[n // 2] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
        values, indices = impl(tf.constant(x, dtype=dtype), 1)
        values.numpy()


def test_op_rejects_bad_attrs(raw_module):
    with pytest.raises(ERRORS, match="sample_ratio"):
        raw_module.dgc_sampled_top_k(tf.ones([10]), 1, sample_ratio=0.0)
    with pytest.raises(ERRORS, match="scalar"):
        raw_module.dgc_sampled_top_k(tf.ones([10]), [1, 2])


# --- property test --------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_property_ties_and_k(data, compiled_op):
    n = data.draw(st.integers(1, 20_000), label="n")
    k = data.draw(st.integers(1, n), label="k")
    levels = data.draw(st.integers(1, 6), label="levels")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.integers(-levels, levels + 1, n).astype(np.float32))
    check(compiled_op, x, k, seed=data.draw(st.one_of(st.none(), st.integers(0, 100))))
    check(_fallback, x, k)


# --- loader -------------------------------------------------------------------

@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    monkeypatch.delenv(_custom_op.FORCE_FALLBACK_ENV, raising=False)
    # An empty per-user cache: a library another run built there must not be found.
    monkeypatch.setenv("DGC_TF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(_custom_op.REBUILD_ENV, "0")  # the rebuild has its own test
    _custom_op._reset_for_tests()
    yield monkeypatch
    monkeypatch.undo()
    _custom_op._reset_for_tests()


def test_missing_library_warns_once(fresh_loader, tmp_path):
    missing = str(tmp_path / "_dgc_ops.so")
    fresh_loader.setattr(_custom_op, "library_path", lambda: missing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _custom_op.load() is None
        assert _custom_op.load() is None
        assert not topk.using_custom_op()
        values, indices = topk.sampled_topk(tf.constant([1.0, -3.0, 2.0]), 2)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "fallback" in messages[0] and "python -m dgc_tf.ops.build" in messages[0]
    np.testing.assert_array_equal(indices.numpy(), [1, 2])


def test_broken_library_warns_once(fresh_loader, tmp_path):
    broken = tmp_path / "_dgc_ops.so"
    broken.write_bytes(b"not an ELF file")
    fresh_loader.setattr(_custom_op, "library_path", lambda: str(broken))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _custom_op.load() is None
        assert _custom_op.load() is None
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "could not load" in messages[0] and "python -m dgc_tf.ops.build" in messages[0]


def test_force_fallback_env_in_subprocess():
    code = (
        "import warnings; warnings.simplefilter('error', RuntimeWarning)\n"
        "from dgc_tf.ops import using_custom_op, sampled_topk\n"
        "import tensorflow as tf\n"
        "v, i = sampled_topk(tf.constant([1.0, -3.0, 2.0]), 2)\n"
        "print('USING', using_custom_op(), i.numpy().tolist())\n")
    env = dict(os.environ, DGC_TF_FORCE_FALLBACK="1", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "USING False [1, 2]" in out.stdout


# --- CUDA sources compile -------------------------------------------------------

@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_cuda_sources_compile_with_nvcc():
    """The TF CUDA kernel compiles to an object, and the standalone test links."""
    harness.assert_cuda_sources_compile(
        "sampled_topk/sampled_topk_kernels.cu.cc",
        "sampled_topk/sampled_topk_standalone_test.cu", timeout=600)


def test_no_xla_kernel(compiled_op):
    """Documented limitation: the op cannot be compiled by XLA."""
    @tf.function(jit_compile=True)
    def select(x):
        return compiled_op(x, 2)

    with pytest.raises(Exception, match="SampledTopK"):
        select(tf.range(10.0))
