"""DGC's steps as small pure functions on tensors with explicit state.

Each function takes tensors and returns tensors; none reads or writes a
variable. The Keras optimizers (`dgc_tf.compressors.dgc.keras3`, `.tf_keras`)
hold the state and call these in order, once per compressed variable and step:

    g        = local_clip(grads, clipnorm, num_replicas)[j]
    u, v     = momentum_correction(u, v, g, momentum, nesterov)
    k        = selected_count(size, step, compress_ratio, warmup_steps)
    val, idx = select(v, k, sample_ratio)
    u, v     = mask_sent(u, v, idx, momentum_masking)

The replica step (`dgc_tf.compressors.dgc.replica`) runs the last four lines
as one in-place step on the variables,
`dgc_tf.ops.compress_step` (a compiled kernel, with these numbers), so these
functions are the specification that step is tested against.

Reference: Lin, Han, Mao, Wang, Dally, "Deep Gradient Compression", ICLR 2018,
Algorithms 3 (momentum correction) and 4 (Nesterov); `docs/algorithm.md`.
"""

import fractions
import math

import tensorflow as tf

from dgc_tf.compressors.base.step import local_clip_threshold
from dgc_tf.ops import sampled_topk, scatter
from dgc_tf.ops.scatter import flat_to_coords
from dgc_tf.ops.topk import index_dtype_for

__all__ = ["WARMUP_DENSITIES", "stage_densities", "density_stage", "density_at", "num_selected",
           "stage_counts", "count_stage", "selected_count", "local_clip", "momentum_correction",
           "select", "mask_sent", "flat_to_coords"]

# The paper's exponential warm-up: sparsity 75%, 93.75%, 98.4375%, 99.6%.
WARMUP_DENSITIES = (0.25, 0.0625, 0.015625, 0.00390625)


def stage_densities(compress_ratio):
    """Density of each warm-up stage, then (last) the density after warm-up."""
    return [max(d, compress_ratio) for d in WARMUP_DENSITIES] + [compress_ratio]


def density_stage(step, warmup_steps):
    """Index into `stage_densities` for optimizer step `step` (0-based), an int32 tensor.

    Warm-up runs in `len(WARMUP_DENSITIES)` equal stages over `warmup_steps`.
    """
    done = len(WARMUP_DENSITIES)
    if not warmup_steps:
        return tf.constant(done, tf.int32)
    step = tf.cast(step, tf.int64)
    stage = tf.minimum((step * done) // warmup_steps, done - 1)
    return tf.cast(tf.where(step < warmup_steps, stage, done), tf.int32)


def count_stage(step, warmup_steps):
    """Index into `stage_counts` for optimizer step `step`, an int32 tensor (0 without warm-up)."""
    if not warmup_steps:
        return tf.constant(0, tf.int32)
    return density_stage(step, warmup_steps)


def density_at(step, compress_ratio, warmup_steps):
    """Fraction of each compressed variable sent at step `step`, a float64 tensor."""
    densities = tf.constant(stage_densities(compress_ratio), tf.float64)
    return tf.gather(densities, density_stage(step, warmup_steps))


def num_selected(size, density):
    """`max(1, ceil(density * size))`, exactly, as a Python int (at most `size`).

    Exact rational arithmetic on the density as written: in floats,
    0.001 * 3000 is 3.0000000000000004 and would round up to 4.
    """
    k = math.ceil(fractions.Fraction(repr(float(density))) * size)
    return min(max(1, k), size)


def stage_counts(size, compress_ratio, warmup_steps):
    """k of each density stage the schedule reaches, as Python ints (the last: after warm-up).

    Without warm-up, only the final density's count.
    """
    densities = stage_densities(compress_ratio) if warmup_steps else [compress_ratio]
    return [num_selected(size, d) for d in densities]


def selected_count(size, step, compress_ratio, warmup_steps):
    """k for a variable of `size` elements at step `step`.

    A Python int when there is no warm-up, so that shapes stay static (the
    exchange's buffer layout is then known when the step is traced); otherwise
    an int32/int64 tensor.
    """
    counts = stage_counts(size, compress_ratio, warmup_steps)
    if not warmup_steps:
        return counts[0]
    return tf.gather(tf.constant(counts, index_dtype_for(size)),
                     density_stage(step, warmup_steps))


def local_clip(grads, clipnorm, num_replicas):
    """Clips one worker's whole gradient list to global norm `clipnorm / sqrt(N)`.

    The paper clips before accumulation (`local_clip_threshold`). `grads`
    holds tensors or `tf.IndexedSlices` (no None); an IndexedSlices stays sparse.
    """
    if clipnorm is None:
        return list(grads)
    clipped, _ = tf.clip_by_global_norm(list(grads), local_clip_threshold(clipnorm, num_replicas))
    return clipped


def momentum_correction(momentum_buf, residual, grad, momentum, nesterov=False):
    """Accumulates velocity instead of gradient, so momentum survives sparsification.

    Returns the new `(u, v)`:
      momentum SGD: `u = m*u + g`,   `v = v + u`
      Nesterov:     `u = m*(u + g)`, `v = v + u + g`
    """
    if nesterov:
        momentum_buf = momentum * (momentum_buf + grad)
        return momentum_buf, residual + momentum_buf + grad
    momentum_buf = momentum * momentum_buf + grad
    return momentum_buf, residual + momentum_buf


def select(residual, k, sample_ratio=0.01, seed=None):
    """The k entries of `residual` largest in magnitude: `(values, flat indices)`."""
    return sampled_topk(residual, k, sample_ratio=sample_ratio, seed=seed)


def mask_sent(momentum_buf, residual, indices, momentum_masking=True):
    """Zeroes what was sent: the residual always, the momentum with masking.

    Momentum factor masking stops the stale momentum of an entry that was just
    applied from pushing the same direction again (the paper's Section 3.2).
    """
    residual = scatter.zeroed_at(residual, indices)
    if momentum_masking:
        momentum_buf = scatter.zeroed_at(momentum_buf, indices)
    return momentum_buf, residual
