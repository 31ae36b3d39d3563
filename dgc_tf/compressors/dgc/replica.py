"""DGC's replica step: what one replica does with its gradients, on its own state.

`compress_and_exchange` runs in replica context: it clips locally, applies
momentum correction into the replica's residual, selects the top-k entries
and hands every compressed gradient (as a `CompressedGradient`) and the dense
gradients to the frame's one exchange. One fused compress step
(`dgc_tf.ops.compress_step`) does the accumulation and selection in place;
it leaves the selection in the state, and what the exchange applied is
zeroed after it (momentum masking too): the replica's own selection on most
routes, the leaders' indices on `SparseAllGather`'s leader route.

Non-finite gradients follow the frame's skip protocol in its second form
(`dgc_tf.compressors.base.step`): a replica whose own gradients are not
finite leaves its state alone and hands zeros, its flag rides in the
exchange, and nothing is applied or zeroed anywhere unless every flag was
clear, so a finite replica's gradient of a skipped step stays pending.

The cross-replica half is the frame's `apply_updates`: a scatter for the
compressed variables, Keras SGD for the rest.
"""

import dataclasses
from typing import Optional

import tensorflow as tf

from dgc_tf.compressors.base import step as frame
from dgc_tf.compressors.dgc import compression
from dgc_tf.distribute import worker_exchange
from dgc_tf.distribute.payload import CompressedGradient
from dgc_tf.ops import scatter
from dgc_tf.ops.compress_step import compress_step
from dgc_tf.ops.topk import index_dtype_for

_NO_XLA = ("DGCSGD cannot run inside an XLA-compiled function: its top-k selection op "
           "(DGC>SampledTopK) has no XLA kernel")


@dataclasses.dataclass
class DGCSlots:
    """The optimizer state of one trainable variable.

    For a compressed variable `momentum` (u) and `residual` (v) are
    replica-local (`ON_READ`) variables; `momentum` is None when the momentum
    factor is 0 (then u == g and need not be stored). For a dense variable
    `momentum` is Keras SGD's mirrored momentum (None when momentum is 0) and
    `residual` is None.
    """

    compressed: bool
    momentum: Optional[tf.Variable]
    residual: Optional[tf.Variable]

    @property
    def sgd_momentum(self):
        """The mirrored buffer the frame's dense SGD uses (compressed: none, u is local)."""
        return None if self.compressed else self.momentum


def compress_and_exchange(config, grads, variables, slots, step):
    """The replica-local half of a DGC step. See the module docstring.

    Args:
      config: a `DGCConfig`.
      grads: this replica's gradients (dense or IndexedSlices), scaled so that
        their sum over replicas is the global-batch gradient.
      variables: the matching variables.
      slots: the matching `DGCSlots`.
      step: the optimizer's iteration count before this step (warm-up).
    Returns:
      `frame.Exchanged`.
    """
    frame.check_not_xla(_NO_XLA)
    ctx = frame.replica_context("DGCSGD")
    grads = [frame.prepare_gradient(g, v, keep_sparse=slot.compressed)
             for g, v, slot in zip(grads, variables, slots)]
    # A worker with several replicas sums their gradients first and compresses once.
    ctx, grads = worker_exchange.compress_per_worker(ctx, grads)
    finite, flag = frame.local_finite(grads)
    grads = compression.local_clip(grads, config.local_clipnorm, ctx.num_replicas_in_sync)

    # What this replica hands to one all_reduce: a CompressedGradient per
    # compressed variable and the dense gradients. With non-finite gradients
    # it still takes part (collectives need everyone) with k zeros, and its
    # state stays as it was.
    stage = compression.count_stage(step, config.warmup_steps)
    handed = []
    for grad, var, slot in zip(grads, variables, slots):
        if not slot.compressed:
            handed.append(grad)
            continue
        size = var.shape.num_elements()
        k = compression.selected_count(size, step, config.compress_ratio, config.warmup_steps)
        values, indices, residual = tf.cond(
            finite,
            lambda grad=grad, slot=slot, k=k: (
                *_compress_step(config, slot, grad, k), tf.reshape(slot.residual, [-1])),
            lambda grad=grad, slot=slot, k=k: (
                tf.zeros([k], grad.dtype), tf.zeros([k], index_dtype_for(size)),
                tf.reshape(slot.residual.read_value(), [-1])))
        values, indices = tf.identity(values), tf.identity(indices)  # placed: see prepare_gradient
        # The exchange may apply other entries than these (the leaders'): it
        # gets the residual to read them from, and says below what it applied.
        handed.append(CompressedGradient(
            values, indices, tf.constant([size], indices.dtype), residual=residual,
            stage_counts=compression.stage_counts(size, config.compress_ratio,
                                                  config.warmup_steps),
            stage=stage, variable_name=var.name))

    updates, ok, bytes_sent, dense_bytes = frame.exchange_agreeing(ctx, handed, variables, flag)
    for sent, update, slot in zip(handed, updates, slots):
        if isinstance(sent, CompressedGradient):
            # Zero what was applied, and only that: the rest stays pending.
            applied = getattr(update, "applied", sent.indices)
            tf.cond(ok, lambda slot=slot, applied=applied: _mask_applied(config, slot, applied),
                    lambda: tf.constant(False))
    return frame.Exchanged(updates, ok, bytes_sent, dense_bytes)


def _compress_step(config, slot, grad, k):
    """Momentum correction and selection, in place; the selection stays in the state.

    Returns the selected `(values, flat indices)`; the state variables are
    updated by one fused step (`dgc_tf.ops.compress_step`; a dense or
    `IndexedSlices` gradient, which is added row by row, never densified).
    What the exchange applied is zeroed after it (`_mask_applied`), once the
    replicas agree that the step applies.
    """
    return compress_step(
        slot.residual, slot.momentum, grad, k, momentum_factor=config.momentum,
        nesterov=config.nesterov, momentum_masking=config.momentum_masking,
        mask_selected=False, sample_ratio=config.sample_ratio)


def _mask_applied(config, slot, applied):
    """Zeroes the applied entries of the residual (and, with masking, the momentum) in place.

    `compression.mask_sent` on the variables' values, without copying them
    (`dgc_tf.ops.scatter.zero_at`).
    """
    scatter.zero_at(slot.residual, applied)
    if slot.momentum is not None and config.momentum_masking:
        scatter.zero_at(slot.momentum, applied)
    return tf.constant(True)
