"""DGC's replica step: what one replica does with its gradients, on its own state.

`compress_and_exchange` runs in replica context: it skips non-finite steps
(the frame's skip protocol), clips locally, applies momentum correction into
the replica's residual, selects the top-k entries and hands every compressed
gradient (as a `CompressedGradient`) and the dense gradients to the frame's
one `exchange`. What was applied is zeroed in the residual (momentum masking
too). One fused compress step (`dgc_tf.ops.compress_step`) does the
accumulation and selection in place. Where the exchange applies the
replica's own selection (any strategy but dgc_tf's leader route) it also
masks what was selected; on the leader route (`SparseAllGather`) the exchange
applies the leaders' indices, so in the stages that take it the step leaves
the state unmasked and the entries the exchange says it applied are zeroed
after it.

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
from dgc_tf.ops.static_cond import static_cond
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
    ok, flag = frame.all_replicas_finite(ctx, grads)
    grads = compression.local_clip(grads, config.local_clipnorm, ctx.num_replicas_in_sync)

    # What this replica hands to one all_reduce: a CompressedGradient per
    # compressed variable and the dense gradients. On a skipped step it still
    # takes part (collectives need everyone) with k zeros, which apply_updates
    # never applies.
    routes_for = getattr(frame.current_exchange(ctx), "routes_for", None)  # dgc_tf's exchange
    stage = compression.count_stage(step, config.warmup_steps)
    handed, masks_after = [], []
    for grad, var, slot in zip(grads, variables, slots):
        if not slot.compressed:
            handed.append(grad)
            masks_after.append(False)
            continue
        size = var.shape.num_elements()
        k = compression.selected_count(size, step, config.compress_ratio, config.warmup_steps)
        stage_counts = compression.stage_counts(size, config.compress_ratio, config.warmup_steps)
        # Routes that apply this replica's own selection let the fused step
        # mask it in place; the leader route applies the leaders' indices, so
        # in its stages the selection leaves the state unmasked and the
        # exchange says below what to zero.
        routes = (("allgather",) if routes_for is None
                  else routes_for(size, stage_counts, var.dtype, index_dtype_for(size)))
        leading = _leader_route_now(routes, stage)
        values, indices, residual = tf.cond(
            ok,
            lambda grad=grad, slot=slot, k=k, leading=leading: (
                *_select(config, slot, grad, k, leading), tf.reshape(slot.residual, [-1])),
            lambda grad=grad, slot=slot, k=k: (
                tf.zeros([k], grad.dtype), tf.zeros([k], index_dtype_for(size)),
                tf.reshape(slot.residual.read_value(), [-1])))
        values, indices = tf.identity(values), tf.identity(indices)  # placed: see prepare_gradient
        # The exchange may apply other entries than these (the leaders'): it
        # gets the residual to read them from, and says below what it applied.
        handed.append(CompressedGradient(
            values, indices, tf.constant([size], indices.dtype), residual=residual,
            stage_counts=stage_counts, stage=stage, variable_name=var.name))
        masks_after.append(leading)

    updates, bytes_sent, dense_bytes = frame.exchange(ctx, handed, variables, [flag])
    for sent, update, slot, leading in zip(handed, updates, slots, masks_after):
        if leading is not False:
            # Zero what was applied, and only that: the rest stays pending.
            applied = getattr(update, "applied", sent.indices)
            tf.cond(tf.logical_and(ok, leading),
                    lambda slot=slot, applied=applied: _mask_applied(config, slot, applied),
                    lambda: tf.constant(False))
    return frame.Exchanged(updates, ok, bytes_sent, dense_bytes)


def _leader_route_now(routes, stage):
    """Whether this step's route is the leader route: a Python bool where every stage
    agrees, else a bool tensor of the stage (routes may change after the warm-up)."""
    leading = [route == "leader" for route in routes]
    if len(set(leading)) == 1:
        return leading[0]
    return tf.gather(tf.constant(leading), stage)


def _select(config, slot, grad, k, leading):
    """The fused step, masking what it selected unless the leader route applies other entries."""
    return static_cond(leading,
                       lambda: _compress_step(config, slot, grad, k, mask_selected=False),
                       lambda: _compress_step(config, slot, grad, k, mask_selected=True))


def _compress_step(config, slot, grad, k, mask_selected=True):
    """Momentum correction, selection and (optionally) masking, in place.

    Returns the selected `(values, flat indices)`; the state variables are
    updated by one fused step (`dgc_tf.ops.compress_step`; a dense or
    `IndexedSlices` gradient, which is added row by row, never densified).
    With `mask_selected=False` (the leader route) what was selected stays in
    the state: the exchange says what it applied and `_mask_applied` zeroes
    that after it.
    """
    return compress_step(
        slot.residual, slot.momentum, grad, k, momentum_factor=config.momentum,
        nesterov=config.nesterov, momentum_masking=config.momentum_masking,
        mask_selected=mask_selected, sample_ratio=config.sample_ratio)


def _mask_applied(config, slot, applied):
    """Zeroes the applied entries of the residual (and, with masking, the momentum) in place.

    `compression.mask_sent` on the variables' values, without copying them
    (`dgc_tf.ops.scatter.zero_at`).
    """
    scatter.zero_at(slot.residual, applied)
    if slot.momentum is not None and config.momentum_masking:
        scatter.zero_at(slot.momentum, applied)
    return tf.constant(True)
