"""dgc_tf.ops.scatter: both forms (dense above size / DENSE_FROM entries, scatter below)
give NumPy's answer, with static counts and with a count known only when the step runs;
into variables, both ways: the compiled in-place scatter (one form at every count) and
TensorFlow's kernels (both forms)."""

import numpy as np
import pytest
import tensorflow as tf

from dgc_tf.ops import scatter
from tests import harness

SHAPE = (64, 48)  # 3072 elements: DENSE_FROM switches at 24 entries
SIZE = SHAPE[0] * SHAPE[1]


def _entries(count, repeats, seed=0):
    rng = np.random.default_rng(seed)
    indices = rng.choice(SIZE, size=count, replace=False).astype(np.int32)
    if repeats:
        indices[: count // 2] = indices[count // 2: 2 * (count // 2)]  # every index twice
    values = rng.standard_normal(count).astype(np.float32)
    return indices, values


def _expected_subtract(start, indices, values):
    flat = start.reshape(-1).astype(np.float64)
    np.subtract.at(flat, indices, values.astype(np.float64))
    return flat.reshape(start.shape)


# Counts on both sides of the switch (SIZE / DENSE_FROM = 24), and all of it.
COUNTS = [1, 10, 23, 24, 25, 400, SIZE]


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("repeats", [False, True])
@pytest.mark.parametrize("static", [True, False])
def test_subtract_at_matches_numpy(scatter_kernel, count, repeats, static):
    if repeats and count < 2:
        pytest.skip("needs two entries")
    indices, values = _entries(count, repeats)
    start = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    variable = tf.Variable(start)
    if static:
        step = tf.function(lambda i, v: scatter.subtract_at(variable, i, v))
        step(tf.constant(indices), tf.constant(values))
    else:  # the warm-up's case: a count only known at run time (tf.cond)
        step = tf.function(lambda i, v: scatter.subtract_at(variable, i, v),
                           input_signature=[tf.TensorSpec([None], tf.int32),
                                            tf.TensorSpec([None], tf.float32)])
        step(indices, values)
    np.testing.assert_allclose(variable.numpy(), _expected_subtract(start, indices, values),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("count", COUNTS)
def test_dense_at_sums_repeats(count):
    indices, values = _entries(count, repeats=True)
    expected = np.zeros(SIZE, np.float64)
    np.add.at(expected, indices, values.astype(np.float64))
    got = scatter.dense_at(tf.constant(values), tf.constant(indices), SIZE)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("static", [True, False])
def test_zeroed_at(count, static):
    indices, _ = _entries(count, repeats=False)
    start = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    expected = start.copy().reshape(-1)
    expected[indices] = 0.0
    if static:
        got = scatter.zeroed_at(tf.constant(start), tf.constant(indices))
    else:
        got = tf.function(scatter.zeroed_at, input_signature=[
            tf.TensorSpec(SHAPE, tf.float32), tf.TensorSpec([None], tf.int32)])(start, indices)
    assert got.shape == SHAPE
    np.testing.assert_array_equal(got.numpy(), expected.reshape(SHAPE))


@pytest.fixture(params=["compiled", "tensorflow"])
def scatter_kernel(request, monkeypatch):
    """Both ways into a variable: the compiled in-place op (when built) and TensorFlow's."""
    if request.param == "tensorflow":
        monkeypatch.setattr(scatter._custom_op, "load_scatter_flat", lambda: None)
    elif scatter._custom_op.load_scatter_flat() is None:
        harness.skip_without_op()
    return request.param


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_zero_at_zeroes_a_variable_in_place(scatter_kernel, count, static, index_dtype):
    """DGC's masking of variables: both forms, repeated indices (padded slots), int64."""
    indices, _ = _entries(count, repeats=True)
    indices = indices.astype(index_dtype)
    start = np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32)
    variable = tf.Variable(start)
    expected = start.copy().reshape(-1)
    expected[indices] = 0.0
    if static:
        scatter.zero_at(variable, tf.constant(indices))
    else:
        tf.function(lambda i: scatter.zero_at(variable, i),
                    input_signature=[tf.TensorSpec([None], index_dtype)])(indices)
    np.testing.assert_array_equal(variable.numpy(), expected.reshape(SHAPE))


def test_int64_indices_and_empty():
    variable = tf.Variable(tf.ones([5, 7]))
    scatter.subtract_at(variable, tf.constant([34, 0], tf.int64), tf.constant([1.0, 2.0]))
    want = np.ones([5, 7], np.float32)
    want[4, 6] -= 1.0
    want[0, 0] -= 2.0
    np.testing.assert_array_equal(variable.numpy(), want)
    scatter.subtract_at(variable, tf.zeros([0], tf.int32), tf.zeros([0]))  # VGC may send nothing
    np.testing.assert_array_equal(variable.numpy(), want)


@pytest.mark.parametrize("dense", [True, False])
def test_apply_sparse_follows_a_stage_dependent_dense_flag(dense):
    """A variable whose route changes with the warm-up stage gets `dense` as a tensor:
    a dense sum is subtracted as it is, entries are scattered."""
    from dgc_tf.compressors.base.step import apply_sparse
    from dgc_tf.distribute.payload import ReducedGradient

    start = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    variable = tf.Variable(start)
    if dense:
        values = np.random.default_rng(4).standard_normal(SIZE).astype(np.float32)
        indices = np.arange(SIZE, dtype=np.int32)
    else:
        indices, values = _entries(30, repeats=True)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32),
                                  tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.bool)])
    def apply(values, indices, is_dense):
        update = ReducedGradient(values, indices, tf.constant([SIZE]), applied=indices,
                                 route="dense then leader", dense=is_dense)
        apply_sparse(variable, update, tf.constant(0.5))

    apply(values, indices, dense)
    np.testing.assert_allclose(variable.numpy(), _expected_subtract(start, indices, 0.5 * values),
                               rtol=1e-6, atol=1e-6)
