"""VGC's configuration, its pure steps, its estimator and its replica step.

Everything here is independent of the Keras flavour; `dgc_tf.vgc.keras3`
holds the variables and calls `compress_and_exchange` then (inside
`merge_call`) `engine.apply_updates`, as `dgc_tf.keras3.DGCSGD` does.
See the package docstring for the algorithm and the design decisions.
"""

import dataclasses
from typing import List, NamedTuple

import tensorflow as tf

from dgc_tf import engine
from dgc_tf.config import CompressorConfig, check_number
from dgc_tf.distribute.payload import CompressedGradient, handed_bytes
from dgc_tf.ops.compress_step import zero_at

# Per compressed variable the size table carries its count as two float32
# words (count = hi * 4096 + lo), exact to 2**36 entries although the
# collective sums floats.
_COUNT_BASE = 4096


@dataclasses.dataclass(frozen=True)
class VGCConfig(CompressorConfig):
    """What VGC does, independent of the Keras flavour that runs it.

    Attributes (besides `dgc_tf.config.CompressorConfig`'s `momentum`,
    `nesterov`, `min_compress_size` and `local_clipnorm`; for VGC the
    momentum is that of the SGD applied to the summed sparse update, and local
    clipping also scales the squared-gradient estimates by `c^2`):
      alpha: send an element when `r^2 > alpha * s / B`; >= 0 (0 sends every
        nonzero element: plain momentum SGD).
      zeta: decay of `s` on the elements not sent, in [0, 1].
    """

    alpha: float = 1.0
    zeta: float = 0.999

    def __post_init__(self):
        super().__post_init__()
        if not check_number("alpha", self.alpha) >= 0.0:
            raise ValueError(f"`alpha` must be >= 0, got {self.alpha}.")
        if not 0.0 <= check_number("zeta", self.zeta) <= 1.0:
            raise ValueError(f"`zeta` must be in [0, 1], got {self.zeta}.")


# -- the pure steps ------------------------------------------------------------


def accumulate(r, s, grad, grad_sq):
    """`r += mean_b(g)`, `s += mean_b(g^2)`."""
    return r + grad, s + grad_sq


def unambiguous(r, s, alpha, batch_size):
    """The mask of elements to send: `r^2 > alpha * s / B` (strict)."""
    batch_size = tf.cast(batch_size, r.dtype)
    return tf.square(r) > tf.cast(alpha, r.dtype) * s / batch_size


def select(r, mask):
    """`(values, flat int32/int64 indices)` of `r` where `mask` holds."""
    flat_mask = tf.reshape(mask, [-1])
    index_dtype = tf.int32 if r.shape.num_elements() < 2**31 else tf.int64
    indices = tf.cast(tf.reshape(tf.where(flat_mask), [-1]), index_dtype)
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


# -- the estimator ---------------------------------------------------------------


def micro_batch_moments(group_grads, group_sizes):
    """`(mean_b(g), estimate of mean_b(g^2))` from m >= 2 micro-batch mean gradients.

    Args:
      group_grads: m lists of dense gradients, `group_grads[j][i]` the mean
        gradient of variable i over micro-batch j.
      group_sizes: m example counts `n_j` (tensors or ints), summing to B.
    Returns:
      `(means, sq_means, batch_size)`: per variable the exact minibatch mean
      `gbar = sum_j n_j gbar_j / B`, the estimate
      `sum_j n_j (gbar_j - gbar)^2 / (m - 1) + gbar^2` of the mean squared
      per-example gradient, and B.
    """
    m = len(group_grads)
    if m < 2:
        raise ValueError(f"`num_groups` must be >= 2 to estimate a variance, got {m}.")
    sizes = [tf.cast(n, tf.float32) for n in group_sizes]
    batch = tf.add_n(sizes)
    means, sq_means = [], []
    for i in range(len(group_grads[0])):
        grads = [g[i] for g in group_grads]
        if any(g is None for g in grads):
            means.append(None)
            sq_means.append(None)
            continue
        dtype = grads[0].dtype
        w = [tf.cast(n, dtype) for n in sizes]
        total = tf.cast(batch, dtype)
        mean = tf.add_n([n * g for n, g in zip(w, grads)]) / total
        between = tf.add_n([n * tf.square(g - mean) for n, g in zip(w, grads)])
        means.append(mean)
        sq_means.append(between / tf.cast(m - 1, dtype) + tf.square(mean))
    return means, sq_means, batch


def micro_batch_gradients(loss_fn, variables, inputs, num_groups=4, tape_fn=None):
    """Minibatch gradients and the `mean_b(g^2)` estimate in `num_groups` backward passes.

    Args:
      loss_fn: `inputs_subset -> scalar`, the MEAN loss over the examples it
        gets (scaled as the caller scales its loss, e.g. for replicas).
      variables: the variables to differentiate.
      inputs: a nest of tensors whose leading axis is the local batch.
      num_groups: m >= 2 micro-batches (examples `j, j+m, j+2m, ...`).
    Returns:
      `(grads, grad_sq_means, batch_size)`, as `VGCSGD.apply_gradients` takes them.
    """
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 2:
        raise ValueError(f"`num_groups` must be an integer >= 2, got {num_groups!r}.")
    group_grads, sizes = [], []
    for j in range(num_groups):
        part = tf.nest.map_structure(lambda t: t[j::num_groups], inputs)
        with tf.GradientTape() as tape:
            loss = loss_fn(part)
        grads = tape.gradient(loss, variables)
        group_grads.append([None if g is None else engine.densify(g, v)
                            for g, v in zip(grads, variables)])
        sizes.append(tf.shape(tf.nest.flatten(part)[0])[0])
    return micro_batch_moments(group_grads, sizes)


# -- the replica step --------------------------------------------------------------


class VGCSlots(NamedTuple):
    """State of one variable: replica-local `r`, `s` (None if dense), mirrored momentum."""

    compressed: bool
    r: object
    s: object
    momentum: object


class VGCExchanged(NamedTuple):
    """`engine.Exchanged` plus the elements sent by all replicas this step."""

    updates: List
    ok: tf.Tensor
    bytes_sent: tf.Tensor
    dense_bytes: float
    sent_elements: tf.Tensor  # float64, summed over replicas
    compressed_elements: float  # elements of compressed variables, times replicas


def compress_and_exchange(config, grads, grad_sq_means, batch_size, variables, slots):
    """The replica-local half of a VGC step.

    Three calls of the replica context's `all_reduce` (through the strategy's
    CrossDeviceOps, `SparseAllGather` included):

    0. the non-finite flags (one scalar): a skipped step leaves r and s alone,
       so the state can be updated in place;
    1. a size table `[N, 2 * C]` (each replica fills its own row with its
       counts per compressed variable; the sum tells every replica
       everybody's counts), when there are compressed variables;
    2. one `CompressedGradient` per compressed variable, padded to the per-step
       maximum count over replicas (so every replica hands the same layout),
       plus the dense gradients.
    """
    engine.check_not_xla()
    ctx = engine.replica_context()
    num_replicas = ctx.num_replicas_in_sync
    grads = [tf.cast(engine.densify(g, v), v.dtype) for g, v in zip(grads, variables)]
    sq = [None if q is None else tf.cast(engine.densify(q, v), v.dtype)
          for q, v in zip(grad_sq_means, variables)]
    # As in engine.compress_and_exchange: agree on finiteness first (one scalar
    # all-reduce), so that every replica updates r and s in place or not at
    # all, instead of keeping old and new copies to choose between.
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in grads + sq
                            if t is not None])
    flag = tf.reshape(tf.cast(tf.logical_not(finite), tf.float32), [1])
    ok = tf.equal(ctx.all_reduce(tf.distribute.ReduceOp.SUM, flag)[0], 0)
    batch_size = tf.convert_to_tensor(batch_size)
    if config.local_clipnorm is not None:
        threshold = config.local_clipnorm / float(num_replicas) ** 0.5
        norm = tf.linalg.global_norm(grads)
        scale = tf.where(norm > threshold, threshold / norm, tf.ones_like(norm))
        grads = [g * tf.cast(scale, g.dtype) for g in grads]
        sq = [None if q is None else q * tf.cast(tf.square(scale), q.dtype) for q in sq]

    staged, counts = [], []
    for grad, grad_sq, var, slot in zip(grads, sq, variables, slots):
        if not slot.compressed:
            staged.append(None)
            continue
        if grad_sq is None:
            raise ValueError(
                f"VGCSGD needs `grad_sq_means` for compressed variable `{var.name}`.")
        index_dtype = tf.int32 if var.shape.num_elements() < 2**31 else tf.int64
        values, indices = tf.cond(
            ok,
            lambda grad=grad, grad_sq=grad_sq, slot=slot: _accumulate_select_reset(
                config, slot, grad, grad_sq, batch_size),
            lambda grad=grad: (tf.zeros([0], grad.dtype), tf.zeros([0], index_dtype)))
        staged.append((values, indices, var.shape.num_elements()))
        counts.append(tf.size(indices, out_type=tf.int32))

    # 1. Size exchange.
    row = [tf.cast(x, tf.float32) for c in counts for x in (c // _COUNT_BASE, c % _COUNT_BASE)]
    table = tf.zeros([num_replicas, 0], tf.float32)
    if row:
        replica = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
        table = tf.scatter_nd([[replica]], tf.stack(row)[None, :], [num_replicas, len(row)])
        table = ctx.all_reduce(tf.distribute.ReduceOp.SUM, table)
    all_counts = (tf.cast(table[:, 0::2], tf.int64) * _COUNT_BASE
                  + tf.cast(table[:, 1::2], tf.int64))  # [N, C]
    max_counts = tf.cast(tf.maximum(tf.reduce_max(all_counts, axis=0), 1), tf.int32)

    # 2. Padded sparse entries and dense gradients in one all_reduce.
    handed, c = [], 0
    for grad, stage in zip(grads, staged):
        if stage is None:
            handed.append(grad)
            continue
        values, indices, size = stage
        values, indices = pad_to(values, indices, max_counts[c])
        handed.append(CompressedGradient(values, indices, tf.constant([size], indices.dtype)))
        c += 1
    updates = ctx.all_reduce(tf.distribute.ReduceOp.SUM, handed)

    wire_dtype = getattr(engine._cross_device_ops(), "wire_dtype", None)
    bytes_sent = handed_bytes([flag, table] + handed, wire_dtype)
    dense_bytes = float(sum(v.shape.num_elements() * v.dtype.size for v in variables))
    sent = tf.reduce_sum(tf.cast(all_counts, tf.float64))
    compressed_elements = float(num_replicas * sum(
        v.shape.num_elements() for v, s in zip(variables, slots) if s.compressed))
    return VGCExchanged(updates, ok, bytes_sent, dense_bytes, sent, compressed_elements)


def _accumulate_select_reset(config, slot, grad, grad_sq, batch_size):
    """`accumulate`, `unambiguous`, `select` and `reset_sent` on the replica's state, in place.

    Returns the selected `(values, flat indices)` of r before the reset.
    """
    slot.r.assign_add(grad)
    slot.s.assign_add(grad_sq)
    r, s = slot.r.read_value(), slot.s.read_value()
    mask = unambiguous(r, s, config.alpha, batch_size)
    values, indices = select(r, mask)
    with tf.control_dependencies([values, indices]):
        zero_at(slot.r, indices)
        slot.s.assign(decay_unsent(s, mask, config.zeta))
    return tf.identity(values), tf.identity(indices)


def densify_momentum_updates(exchanged, variables, slots):
    """In replica context: with momentum, a compressed update becomes dense.

    Without momentum a compressed update stays sparse (a scatter); with it the
    summed update is densified (identically on every replica) and Keras SGD
    momentum applies, as for the dense variables (see `engine_slots`).
    """
    updates = []
    for update, var, slot in zip(exchanged.updates, variables, slots):
        if slot.compressed and slot.momentum is not None:
            update = tf.reshape(tf.math.unsorted_segment_sum(
                update.values, update.indices, var.shape.num_elements()), var.shape)
        updates.append(update)
    return exchanged._replace(updates=updates)


def engine_slots(slots):
    """`engine.VariableSlots` for `engine.apply_updates`: sparse only without momentum."""
    return [engine.VariableSlots(slot.compressed and slot.momentum is None, slot.momentum, None)
            for slot in slots]


def record_sent(distribution, sent_total, compressed_total, exchanged):
    """Adds this step's sent / compressible element counts to mirrored counters."""
    def count(total, sent, compressible):
        return tf.group(total.assign_add(sent),
                        compressed_total.assign_add(tf.cast(compressible, tf.float64)))

    distribution.extended.update(
        sent_total, count, args=(exchanged.sent_elements, exchanged.compressed_elements),
        group=False)
