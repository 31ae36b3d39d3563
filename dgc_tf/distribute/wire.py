"""Packing tensors of mixed dtypes into one buffer of 32-bit words.

DGC sends, per compressed variable, k values and k flat indices. Packing all
of them (and a one-word "my gradients were finite" flag) into a single
float32 buffer lets one all-gather carry a whole step. Bits are moved with
`tf.bitcast`, never converted: an int32 index or a float16 value arrives
exactly as it was sent. The words travel as float32 only because every
collective implementation supports that dtype; no arithmetic touches them.
"""

import tensorflow as tf

WORD_DTYPE = tf.float32
WORD_BYTES = 4


def word_count(n, dtype):
    """Words that `n` elements of `dtype` occupy (16-bit dtypes are padded to pairs)."""
    dtype = tf.as_dtype(dtype)
    if dtype.size == 4:
        return n
    if dtype.size == 8:
        return 2 * n
    if dtype.size == 2:
        return (n + 1) // 2
    raise ValueError(f"Cannot put dtype {dtype.name} on the wire.")


def to_words(tensor):
    """A 1-D tensor of 16-, 32- or 64-bit elements as a 1-D float32 word tensor."""
    tensor = tf.reshape(tensor, [-1])
    size = tensor.dtype.size
    if size == 4:
        return tf.bitcast(tensor, WORD_DTYPE) if tensor.dtype != WORD_DTYPE else tensor
    if size == 8:
        return tf.reshape(tf.bitcast(tensor, WORD_DTYPE), [-1])
    if size == 2:
        padded = tf.pad(tensor, [[0, tf.size(tensor) % 2]])
        return tf.bitcast(tf.reshape(padded, [-1, 2]), WORD_DTYPE)
    raise ValueError(f"Cannot put dtype {tensor.dtype.name} on the wire.")


def from_words(words, dtype, n):
    """Inverse of `to_words` along the last axis: `[..., w]` words -> `[..., n]` of `dtype`."""
    dtype = tf.as_dtype(dtype)
    batch_shape = tf.shape(words)[:-1]
    if dtype.size == 4:
        return tf.bitcast(words, dtype) if dtype != WORD_DTYPE else words
    if dtype.size == 8:
        pairs = tf.reshape(words, tf.concat([batch_shape, [-1, 2]], 0))
        return tf.bitcast(pairs, dtype)
    if dtype.size == 2:
        halves = tf.bitcast(words, dtype)  # [..., w, 2]
        halves = tf.reshape(halves, tf.concat([batch_shape, [-1]], 0))
        return halves[..., :n]
    raise ValueError(f"Cannot take dtype {dtype.name} off the wire.")


def pack(tensors):
    """Concatenates the words of `tensors`; returns `(buffer, word counts)`."""
    words = [to_words(t) for t in tensors]
    return tf.concat(words, axis=0), [tf.size(w) for w in words]


def unpack(buffers, specs, word_counts):
    """Splits `[..., L]` gathered buffers back into tensors.

    Args:
      buffers: `[num_workers, L]` words, one packed buffer per worker.
      specs: `(dtype, n)` per packed tensor, `n` its element count.
      word_counts: the word count of each packed tensor (as `pack` returned).
    Returns:
      One `[num_workers, n]` tensor per spec.
    """
    pieces = tf.split(buffers, tf.stack(word_counts), axis=-1, num=len(specs))
    return [from_words(p, dtype, n) for p, (dtype, n) in zip(pieces, specs)]
