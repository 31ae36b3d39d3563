"""`CompressedGradient`: how the optimizer hands a compressed gradient to the exchange."""

import tensorflow as tf


class CompressedGradient(tf.IndexedSlices):
    """One replica's sparse contribution for a compressed variable.

    `values[i]` belongs at flat index `indices[i]` of the variable, whose
    flattened size is `dense_shape[0]`. Every replica sends the same number of
    entries for a variable in a step, which `SparseAllGather` relies on to pack
    all of them into one fixed-layout all-gather. To any other `CrossDeviceOps`
    it is an ordinary `tf.IndexedSlices`, which `tf.distribute` sums correctly
    (by gathering), only with one or two collectives per variable.
    """


def handed_bytes(flat_values, wire_dtype=None):
    """Bytes a replica hands to collectives when it all-reduces `flat_values`.

    Compressed gradients count their values (in `wire_dtype` when given) and
    indices; anything else counts its dense size.
    """
    total = 0
    for value in flat_values:
        if isinstance(value, CompressedGradient):
            value_dtype = tf.as_dtype(wire_dtype) if wire_dtype is not None else value.values.dtype
            count = tf.size(value.indices, out_type=tf.int64)
            words = _words(count, value_dtype) + _words(count, value.indices.dtype)
            total += words * 4
        else:
            total += tf.size(value, out_type=tf.int64) * value.dtype.size
    return tf.cast(total, tf.float64)


def _words(count, dtype):
    # Matches dgc_tf.wire.word_count: 16-bit elements travel in pairs.
    if dtype.size == 2:
        return (count + 1) // 2
    return count * (dtype.size // 4)
