"""Exact top-k by magnitude with DGC's sampled-threshold pre-filter.

`sampled_topk` is the one entry point. It runs the compiled `DGC>SampledTopK`
kernel when the library loads (see `dgc_tf.ops._custom_op`), and otherwise
`sampled_topk_tf`, the pure-TensorFlow version of the same algorithm. Both
return the same entries: the k largest `|x|` of the flattened `x`, ties
broken in favour of the lower flat index, as signed values of `x`, ordered by
descending magnitude.

Why a pre-filter: a full `top_k` over a 25M-element gradient sorts far more
than the 0.1% it keeps. A threshold taken from a small sample of `|x|` cuts the
tensor down to a candidate set of about k elements in one pass; the exact
top-k of the candidates is the exact top-k of `x` as long as there are at
least k of them (every top-k entry is >= the threshold). With fewer, the
threshold is lowered and the pass repeated.
"""

import math

import tensorflow as tf

from dgc_tf.ops import _custom_op
from dgc_tf.ops.dtypes import KERNEL_DTYPES, index_dtype_for  # noqa: F401 - index_dtype_for: public here too

# A sample smaller than this gives a threshold too noisy to be useful; below
# it the whole tensor is its own sample.
MIN_SAMPLE_SIZE = 4096
# Aim the threshold a little below the k-th largest so that one pass usually
# yields enough candidates (about 1-1.3 k).
CANDIDATE_MARGIN = 1.3


def _validate(x, k, sample_ratio):
    if not x.dtype.is_floating:
        raise ValueError(f"sampled_topk: `x` must be a floating tensor, got dtype {x.dtype.name}.")
    if not 0.0 < sample_ratio <= 1.0:
        raise ValueError(f"sampled_topk: `sample_ratio` must be in (0, 1], got {sample_ratio}.")
    size = x.shape.num_elements()
    if size == 0:
        raise ValueError("sampled_topk: `x` is empty; there is nothing to select.")
    if isinstance(k, int) and size is not None and not 1 <= k <= size:
        raise ValueError(f"sampled_topk: `k` must be in [1, {size}] (the size of `x`), got {k}.")


def sampled_topk(x, k, sample_ratio=0.01, seed=None):
    """Returns `(values, indices)`: the k entries of flattened `x` largest in `|x|`.

    Args:
      x: a floating tensor of any rank; NaN is rejected. float32, float16 and
        bfloat16 run the compiled kernel where it loads, other dtypes
        (float64) the fallback.
      k: number of entries to return, in `[1, size(x)]` (Python int or int
        scalar tensor).
      sample_ratio: fraction of `x` sampled to choose the threshold, in (0, 1].
      seed: optional int; the compiled op samples at random positions with it,
        the fallback samples with a fixed stride. The result does not depend
        on the sample, only the amount of work does.

    Returns:
      values: `[k]` tensor of `x.dtype`, the signed values, by descending `|x|`.
      indices: `[k]` int32 flat indices (int64 for 2^31 elements or more).
    """
    x = tf.convert_to_tensor(x)
    _validate(x, k, sample_ratio)
    op = _custom_op.load() if x.dtype in KERNEL_DTYPES else None
    if op is not None:
        return op(x, k, sample_ratio=sample_ratio, seed=seed)
    return sampled_topk_tf(x, k, sample_ratio=sample_ratio)


def using_custom_op():
    """True when `sampled_topk` runs the compiled kernel, False for the fallback."""
    return _custom_op.load() is not None


def sampled_topk_tf(x, k, sample_ratio=0.01):
    """Pure-TensorFlow `sampled_topk` (the fallback; same results)."""
    x = tf.convert_to_tensor(x)
    _validate(x, k, sample_ratio)
    flat = tf.reshape(x, [-1])
    size = flat.shape.num_elements()
    index_dtype = index_dtype_for(size)
    magnitude = tf.abs(flat)
    k = tf.cast(k, tf.int32)
    checks = [
        tf.debugging.assert_equal(
            tf.reduce_any(tf.math.is_nan(magnitude)), False,
            message="sampled_topk: `x` contains NaN; top-k by magnitude is undefined."),
        tf.debugging.assert_greater_equal(k, 1, message="sampled_topk: `k` must be >= 1."),
        tf.debugging.assert_less_equal(
            k, tf.cast(tf.size(flat), tf.int32), message="sampled_topk: `k` must be <= size(x)."),
    ]
    # In a graph the checks must run before any selection that k could break.
    with tf.control_dependencies(checks):
        magnitude = tf.identity(magnitude)

    if size is None:
        # Size unknown at trace time: no static sample plan; select directly.
        top = tf.math.top_k(magnitude, k=k, sorted=True)
        return tf.gather(flat, top.indices), tf.cast(top.indices, index_dtype)
    sample_size = min(size, max(MIN_SAMPLE_SIZE, math.ceil(sample_ratio * size)))
    if sample_size >= size:
        # The sample would be the tensor itself: select directly.
        top = tf.math.top_k(magnitude, k=k, sorted=True)
        indices = tf.cast(top.indices, index_dtype)
        return tf.gather(flat, top.indices), indices

    stride = size // sample_size
    sample = magnitude[: stride * sample_size : stride]
    # Rank (in the sample) of the first threshold to try: the sample quantile
    # matching density k / size, widened by the margin.
    first_rank = tf.cast(
        tf.math.ceil(tf.cast(k, tf.float64) * (sample_size / size) * CANDIDATE_MARGIN), tf.int32)
    first_rank = tf.clip_by_value(first_rank, 1, sample_size)
    sorted_sample = tf.sort(sample, direction="DESCENDING")

    def candidates_at(rank):
        threshold = tf.cond(
            rank >= sample_size,
            lambda: tf.constant(0, magnitude.dtype),  # everything is a candidate
            lambda: sorted_sample[rank - 1])
        return tf.reduce_sum(tf.cast(magnitude >= threshold, tf.int32)), threshold

    def too_few(rank, count, threshold):
        return count < k

    def lower(rank, count, threshold):
        rank = tf.minimum(rank * 2, sample_size)
        count, threshold = candidates_at(rank)
        return rank, count, threshold

    count, threshold = candidates_at(first_rank)
    _, _, threshold = tf.while_loop(too_few, lower, (first_rank, count, threshold))

    candidate_indices = tf.reshape(tf.where(magnitude >= threshold), [-1])
    candidate_magnitudes = tf.gather(magnitude, candidate_indices)
    # top_k puts the lower position first among equals, and candidates are in
    # ascending index order, so ties resolve to the lower flat index.
    top = tf.math.top_k(candidate_magnitudes, k=k, sorted=True)
    indices = tf.gather(candidate_indices, top.indices)
    return tf.gather(flat, indices), tf.cast(indices, index_dtype)
