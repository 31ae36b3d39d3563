"""The in-place scatter `DGC>ScatterFlat` behind `dgc_tf.ops.scatter.subtract_at` / `zero_at`.

It must give TensorFlow's scatter kernels' bits (repeated indices subtracted
one by one), leave the variable in dense mode (its readers share its buffer,
where TensorFlow's scatter kernels switch it to copy-on-read for good), not
disturb a value read before, and reject bad input with a clear error. Tests
of the compiled kernel skip when the library is not built, unless
`DGC_TF_REQUIRE_OP=1`.
"""


import numpy as np
import pytest
import tensorflow as tf

from dgc_tf.ops import _custom_op, scatter
from tests import harness

SHAPE = (40, 30)
SIZE = SHAPE[0] * SHAPE[1]


@pytest.fixture
def op():
    op = _custom_op.load_scatter_flat()
    if op is None:
        harness.skip_without_op()
    return op


def _entries(count, dtype, index_dtype, seed=0):
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, SIZE, size=count).astype(index_dtype)
    indices[: count // 3] = indices[count // 3: 2 * (count // 3)]  # repeats
    indices[-1] = SIZE - 1
    return indices, rng.standard_normal(count).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, tf.bfloat16.as_numpy_dtype])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("subtract", [True, False])
def test_gives_tensorflows_scatter_bits(op, dtype, index_dtype, subtract):
    start = np.random.default_rng(1).standard_normal(SHAPE).astype(dtype)
    indices, updates = _entries(20, dtype, index_dtype)
    ours, theirs = tf.Variable(start), tf.Variable(start)
    op(ours.handle, indices, updates, subtract=subtract)
    scatter_nd = (tf.raw_ops.ResourceScatterNdSub if subtract
                  else tf.raw_ops.ResourceScatterNdUpdate)
    scatter_nd(ref=theirs.handle, indices=scatter.flat_to_coords(tf.constant(indices), SHAPE),
               updates=updates)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_keeps_the_variable_in_dense_mode_where_tensorflows_scatter_does_not(op):
    """The reason for the op: after TensorFlow's scatter every dense read copies."""
    indices, values = _entries(5, np.float32, np.int32)
    ours, theirs = tf.Variable(tf.ones(SHAPE)), tf.Variable(tf.ones(SHAPE))
    scatter.subtract_at(ours, tf.constant(indices), tf.constant(values))
    scatter.zero_at(ours, tf.constant(indices))
    theirs.scatter_nd_sub(scatter.flat_to_coords(tf.constant(indices), SHAPE), values)
    assert harness.shares_buffer_with_readers(ours)
    assert not harness.shares_buffer_with_readers(theirs)


def test_a_value_read_before_is_not_disturbed(op):
    variable = tf.Variable(tf.ones(SHAPE))
    before = variable.read_value()
    op(variable.handle, tf.constant([0, 7]), tf.constant([0.0, 0.0]), subtract=False)
    np.testing.assert_array_equal(before.numpy(), np.ones(SHAPE, np.float32))
    assert variable.numpy().reshape(-1)[7] == 0.0


def test_inside_a_function_and_with_no_entries(op):
    variable = tf.Variable(tf.ones(SHAPE))
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64),
                                  tf.TensorSpec([None], tf.float32)])
    def step(indices, updates):
        op(variable.handle, indices, updates, subtract=True)
    step(np.zeros([0], np.int64), np.zeros([0], np.float32))  # VGC may send nothing
    step(np.array([3, 3], np.int64), np.array([0.5, 0.25], np.float32))
    want = np.ones(SIZE, np.float32)
    want[3] = 0.25
    np.testing.assert_array_equal(variable.numpy().reshape(-1), want)


@pytest.mark.parametrize("bad, message", [
    (dict(indices=[0, SIZE]), rf"`indices\[1\]` = {SIZE} is not in \[0, {SIZE}\)"),
    (dict(indices=[1, -1]), r"`indices\[1\]` = -1 is not in"),
    (dict(updates=[1.0, 2.0, 3.0]), "must be vectors of one length"),
])
def test_bad_input_is_rejected_and_the_variable_untouched(op, bad, message):
    variable = tf.Variable(tf.ones(SHAPE))
    args = dict(indices=[0, 1], updates=[1.0, 2.0]) | bad
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=message):
        op(variable.handle, tf.constant(args["indices"]), tf.constant(args["updates"]),
           subtract=True)
    np.testing.assert_array_equal(variable.numpy(), np.ones(SHAPE, np.float32))


def test_dtype_mismatch_names_both(op):
    variable = tf.Variable(tf.ones(SHAPE, tf.float16))
    with pytest.raises(tf.errors.InvalidArgumentError, match="dtype half.*float"):
        op(variable.handle, tf.constant([0]), tf.constant([1.0]), subtract=True)
