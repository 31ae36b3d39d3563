"""VGC's steps as small pure functions on tensors with explicit state.

Each function takes tensors and returns tensors; none reads or writes a
variable. Per compressed variable and step, on one replica:

    r, s     = accumulate(r, s, grad, grad_sq)
    mask     = unambiguous(r, s, alpha, batch_size)
    val, idx = select(r, mask)
    r, s     = reset_sent(r, s, mask, zeta)
    val, idx = pad_to(val, idx, max count over replicas)

The replica step (`dgc_tf.compressors.vgc.replica`) runs the first four on the
variables in place. See the package docstring for the algorithm.
"""

import tensorflow as tf

from dgc_tf.ops.topk import index_dtype_for


def accumulate(r, s, grad, grad_sq):
    """`r += mean_b(g)`, `s += mean_b(g^2)`."""
    return r + grad, s + grad_sq


def unambiguous(r, s, alpha, batch_size):
    """The mask of elements to send: `r^2 > alpha * s / B` (strict)."""
    batch_size = tf.cast(batch_size, r.dtype)
    return tf.square(r) > tf.cast(alpha, r.dtype) * s / batch_size


def select(r, mask):
    """`(values, flat int32/int64 indices)` of `r` where `mask` holds."""
    index_dtype = index_dtype_for(r.shape.num_elements())
    indices = tf.cast(tf.reshape(tf.where(tf.reshape(mask, [-1])), [-1]), index_dtype)
    return tf.gather(tf.reshape(r, [-1]), indices), indices


def reset_sent(r, s, mask, zeta):
    """Zero `r` and `s` where sent; decay `s` by `zeta` elsewhere."""
    return tf.where(mask, tf.zeros_like(r), r), decay_unsent(s, mask, zeta)


def decay_unsent(s, mask, zeta):
    """`s` zeroed where sent and decayed by `zeta` elsewhere."""
    return tf.where(mask, tf.zeros_like(s), s * tf.cast(zeta, s.dtype))


def pad_to(values, indices, count):
    """Pads a replica's entries with (0.0 at index 0) up to `count` (adds nothing)."""
    extra = count - tf.size(indices, out_type=tf.int32)
    return (tf.pad(values, [[0, extra]]),
            tf.pad(indices, [[0, extra]]))
