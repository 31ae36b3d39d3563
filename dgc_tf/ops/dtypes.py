"""The dtypes the compiled ops take, in one place for the ops, their wrappers and
their fallbacks: which value dtypes have kernels, and the int32/int64 rule for
counts and flat indices."""

import tensorflow as tf

# The value dtypes the kernels are registered for (the ops' `T` attribute);
# any other floating dtype (float64) takes the pure-TensorFlow path.
KERNEL_DTYPES = (tf.float32, tf.float16, tf.bfloat16)


def int_dtype_for(value):
    """The ops' integer dtype for a nonnegative count `value`: int32 where it fits
    (below 2^31), int64 beyond and when it is unknown (None)."""
    return tf.int32 if value is not None and value < 2**31 else tf.int64


def index_dtype_for(size):
    """int32 flat indices where they fit, int64 beyond 2^31 - 1 elements.

    Decided by the size itself (not its largest index, size - 1), as the
    compiled ops' callers always have: a tensor of exactly 2^31 elements gets
    int64 indices.
    """
    return int_dtype_for(size)


def k_tensor(k):
    """`k` (Python int or integer tensor/variable) as the int32/int64 scalar the ops take."""
    if tf.is_tensor(k) or isinstance(k, tf.Variable):
        k = tf.convert_to_tensor(k)  # reads a variable
        return k if k.dtype in (tf.int32, tf.int64) else tf.cast(k, tf.int64)
    return tf.constant(int(k), dtype=int_dtype_for(int(k)))
