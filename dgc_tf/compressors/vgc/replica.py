"""VGC's replica step on the frame, phase by phase.

`compress_and_exchange` runs in replica context and makes three calls of the
replica context's `all_reduce` (through the strategy's CrossDeviceOps,
`SparseAllGather` included):

0. `_agree_and_clip`: the non-finite flags (one scalar, the frame's skip
   protocol): a skipped step leaves r and s alone, so the state is updated in
   place; then local clipping;
1. `_select_unambiguous` updates r and s and selects, per compressed variable;
   `_share_counts` all-reduces a size table `[N, 2 * C]` (each replica fills
   its own row with its counts per compressed variable; the sum tells every
   replica everybody's counts), when there are compressed variables;
2. `_padded_contributions`: one `CompressedGradient` per compressed variable,
   padded to the per-step maximum count over replicas (so every replica hands
   the same layout), plus the dense gradients, through the frame's `exchange`.

With momentum, `densify_momentum_updates` turns the summed sparse update into
a dense one, to which the frame's `apply_updates` applies Keras SGD.
"""

from typing import List, NamedTuple

import tensorflow as tf

from dgc_tf.compressors.base import step as frame
from dgc_tf.compressors.vgc import compression
from dgc_tf.distribute.payload import CompressedGradient
from dgc_tf.ops.scatter import zero_at
from dgc_tf.ops.topk import index_dtype_for

# Per compressed variable the size table carries its count as two float32
# words (count = hi * 4096 + lo), exact to 2**36 entries although the
# collective sums floats.
_COUNT_BASE = 4096

_NO_XLA = ("VGCSGD cannot run inside an XLA-compiled function: it sends a data-dependent "
           "number of entries per step (`tf.where`), which XLA cannot compile")


class VGCSlots(NamedTuple):
    """State of one variable: replica-local `r`, `s` (None if dense), mirrored momentum."""

    compressed: bool
    r: object
    s: object
    momentum: object

    @property
    def sgd_momentum(self):
        """The frame's SGD applies momentum to every variable's summed update."""
        return self.momentum


class VGCExchanged(NamedTuple):
    """`frame.Exchanged` plus the elements sent by all replicas this step."""

    updates: List
    ok: tf.Tensor
    bytes_sent: tf.Tensor
    dense_bytes: float
    sent_elements: tf.Tensor  # float64, summed over replicas
    compressed_elements: float  # elements of compressed variables, times replicas


class Selection(NamedTuple):
    """One replica's selection for one compressed variable."""

    values: tf.Tensor
    indices: tf.Tensor  # flat
    size: int  # the variable's element count


def compress_and_exchange(config, grads, grad_sq_means, batch_size, variables, slots):
    """The replica-local half of a VGC step (see the module docstring).

    Args:
      config: a `VGCConfig`.
      grads: this replica's minibatch mean gradients (dense or IndexedSlices).
      grad_sq_means: the matching estimates of `mean_b(g^2)` (None where the
        variable is not compressed).
      batch_size: this replica's batch size B.
      variables, slots: the matching variables and `VGCSlots`.
    Returns:
      `VGCExchanged`.
    """
    frame.check_not_xla(_NO_XLA)
    ctx = frame.replica_context("VGCSGD")
    grads = [frame.prepare_gradient(g, v) for g, v in zip(grads, variables)]
    sq = [None if q is None else frame.prepare_gradient(q, v)
          for q, v in zip(grad_sq_means, variables)]
    ok, flag, grads, sq = _agree_and_clip(config, ctx, grads, sq)
    selections = _select_unambiguous(config, ok, grads, sq, tf.convert_to_tensor(batch_size),
                                     variables, slots)
    table, all_counts = _share_counts(ctx, [s for s in selections if s is not None])
    handed = _padded_contributions(grads, selections, all_counts)
    updates, bytes_sent, dense_bytes = frame.exchange(ctx, handed, variables, [flag, table])
    sent = tf.reduce_sum(tf.cast(all_counts, tf.float64))
    compressed_elements = float(ctx.num_replicas_in_sync * sum(
        v.shape.num_elements() for v, s in zip(variables, slots) if s.compressed))
    return VGCExchanged(updates, ok, bytes_sent, dense_bytes, sent, compressed_elements)


def _agree_and_clip(config, ctx, grads, sq):
    """Phase 0: agree on finiteness (grads and estimates), then clip locally.

    Local clipping scales the gradients by `c = min(1, threshold / norm)` and
    the squared-gradient estimates by `c^2`. Returns `(ok, flag, grads, sq)`.
    """
    ok, flag = frame.all_replicas_finite(ctx, grads + [q for q in sq if q is not None])
    if config.local_clipnorm is not None:
        threshold = frame.local_clip_threshold(config.local_clipnorm, ctx.num_replicas_in_sync)
        norm = tf.linalg.global_norm(grads)
        scale = tf.where(norm > threshold, threshold / norm, tf.ones_like(norm))
        grads = [g * tf.cast(scale, g.dtype) for g in grads]
        sq = [None if q is None else q * tf.cast(tf.square(scale), q.dtype) for q in sq]
    return ok, flag, grads, sq


def _select_unambiguous(config, ok, grads, sq, batch_size, variables, slots):
    """Phase 1a: per compressed variable, update r and s in place and select
    (nothing on a skipped step). Returns a `Selection` per compressed variable,
    None per dense one."""
    selections = []
    for grad, grad_sq, var, slot in zip(grads, sq, variables, slots):
        if not slot.compressed:
            selections.append(None)
            continue
        if grad_sq is None:
            raise ValueError(
                f"VGCSGD needs `grad_sq_means` for compressed variable `{var.name}`.")
        size = var.shape.num_elements()
        values, indices = tf.cond(
            ok,
            lambda grad=grad, grad_sq=grad_sq, slot=slot: _accumulate_select_reset(
                config, slot, grad, grad_sq, batch_size),
            lambda grad=grad, size=size: (tf.zeros([0], grad.dtype),
                                          tf.zeros([0], index_dtype_for(size))))
        selections.append(Selection(values, indices, size))
    return selections


def _share_counts(ctx, selections):
    """Phase 1b: everybody's counts, through one all-reduce of a size table.

    Returns `(table, all_counts)`: the `[N, 2C]` float32 table this replica
    handed over (for the byte count) and the `[N, C]` int64 counts.
    """
    num_replicas = ctx.num_replicas_in_sync
    counts = [tf.size(s.indices, out_type=tf.int32) for s in selections]
    row = [tf.cast(x, tf.float32) for c in counts for x in (c // _COUNT_BASE, c % _COUNT_BASE)]
    table = tf.zeros([num_replicas, 0], tf.float32)
    if row:
        replica = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
        table = tf.scatter_nd([[replica]], tf.stack(row)[None, :], [num_replicas, len(row)])
        table = ctx.all_reduce(tf.distribute.ReduceOp.SUM, table)
    all_counts = (tf.cast(table[:, 0::2], tf.int64) * _COUNT_BASE
                  + tf.cast(table[:, 1::2], tf.int64))  # [N, C]
    return table, all_counts


def _padded_contributions(grads, selections, all_counts):
    """Phase 2's payload: each selection padded to the largest count over
    replicas (at least 1), as a `CompressedGradient`; dense gradients as they are."""
    max_counts = tf.cast(tf.maximum(tf.reduce_max(all_counts, axis=0), 1), tf.int32)
    handed, c = [], 0
    for grad, selection in zip(grads, selections):
        if selection is None:
            handed.append(grad)
            continue
        values, indices = compression.pad_to(selection.values, selection.indices, max_counts[c])
        handed.append(CompressedGradient(values, indices,
                                         tf.constant([selection.size], indices.dtype)))
        c += 1
    return handed


def _accumulate_select_reset(config, slot, grad, grad_sq, batch_size):
    """`accumulate`, `unambiguous`, `select` and `reset_sent` on the replica's state, in place.

    Returns the selected `(values, flat indices)` of r before the reset.
    """
    slot.r.assign_add(grad)
    slot.s.assign_add(grad_sq)
    r, s = slot.r.read_value(), slot.s.read_value()
    mask = compression.unambiguous(r, s, config.alpha, batch_size)
    values, indices = compression.select(r, mask)
    with tf.control_dependencies([values, indices]):
        zero_at(slot.r, indices)
        slot.s.assign(compression.decay_unsent(s, mask, config.zeta))
    return tf.identity(values), tf.identity(indices)


def densify_momentum_updates(exchanged, variables, slots):
    """In replica context: with momentum, a compressed update becomes dense.

    Without momentum a compressed update stays sparse (a scatter); with it the
    summed update is densified (identically on every replica) and the frame
    applies Keras SGD momentum, as for the dense variables.
    """
    updates = []
    for update, var, slot in zip(exchanged.updates, variables, slots):
        if slot.compressed and slot.momentum is not None:
            update = tf.reshape(tf.math.unsorted_segment_sum(
                update.values, update.indices, var.shape.num_elements()), var.shape)
        updates.append(update)
    return exchanged._replace(updates=updates)


def record_sent(distribution, sent_total, compressed_total, exchanged):
    """Adds this step's sent / compressible element counts to mirrored counters."""
    def count(total, sent, compressible):
        return tf.group(total.assign_add(sent),
                        compressed_total.assign_add(tf.cast(compressible, tf.float64)))

    distribution.extended.update(
        sent_total, count, args=(exchanged.sent_elements, exchanged.compressed_elements),
        group=False)
