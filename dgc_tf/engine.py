"""One DGC step across replicas, shared by the Keras 3 and tf_keras optimizers.

The step has two halves, split where tf.distribute splits them:

* `compress_and_exchange` runs in replica context, on each replica's own
  gradients: it skips non-finite steps, clips locally, applies momentum
  correction into the replica's residual, selects the top-k entries, and
  hands every compressed gradient (as a `CompressedGradient`), the dense
  gradients and a non-finite flag to ONE `all_reduce`. What was applied is
  zeroed in the residual (momentum masking too). Where the exchange applies
  the replica's own selection (any strategy but dgc_tf's leader route), one
  fused compress step does all of that in place before the exchange; on the
  leader route (`SparseAllGather`) the exchange applies a leader's indices,
  so selection leaves the state unmasked and the entries the exchange says it
  applied are zeroed after it.
* `apply_updates` runs in cross-replica context (inside `merge_call`) and
  applies the exchanged update identically to every replica's copy of the
  weights: a sparse scatter for compressed variables, Keras SGD for the rest.

The Keras classes own the variables; everything here mutates them only
through `assign*` / `scatter_nd_sub`.
"""

import dataclasses
from typing import List, NamedTuple, Optional

import tensorflow as tf

from dgc_tf import compression
from dgc_tf.distribute.payload import CompressedGradient, handed_bytes
from dgc_tf.distribute.worker_exchange import compress_per_worker, exchange_of
from dgc_tf.ops.compress_step import compress_step
from dgc_tf.ops.topk import index_dtype_for


@dataclasses.dataclass
class VariableSlots:
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


class SlotTable:
    """`VariableSlots` by variable index.

    A plain object, not a list, so that Keras's attribute tracking does not
    wrap it: the variables inside are tracked where they were created.
    """

    def __init__(self):
        self._slots = []

    def append(self, slots):
        self._slots.append(slots)

    def at(self, index):
        return self._slots[index]


class Exchanged(NamedTuple):
    """What every replica holds after the exchange (identical on all of them)."""

    updates: List  # per variable: flat tf.IndexedSlices (compressed) or dense sum
    ok: tf.Tensor  # bool scalar: every replica's gradients were finite
    bytes_sent: tf.Tensor  # float64 bytes this replica handed to collectives
    dense_bytes: float  # bytes a dense all-reduce of the same gradients would hand over


def densify(grad, variable):
    """An IndexedSlices gradient as a dense tensor (for a variable exchanged densely)."""
    if isinstance(grad, tf.IndexedSlices):
        rows = tf.math.unsorted_segment_sum(grad.values, grad.indices, variable.shape[0])
        return tf.reshape(rows, variable.shape)
    return tf.convert_to_tensor(grad)


def prepare_gradient(grad, variable, compressed):
    """A gradient in the variable's dtype, placed on this replica's device.

    A compressed variable's `IndexedSlices` (an embedding's) stays sparse: the
    compress step adds it into the residual row by row. tf.distribute batches
    an all_reduce only when every value sits on a replica's device, and
    gradients fed from outside (or a cond's outputs) may carry none: identity
    places them here, or each variable would get a collective of its own.
    """
    if compressed and isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(tf.identity(tf.cast(grad.values, variable.dtype)),
                                tf.identity(grad.indices), grad.dense_shape)
    return tf.identity(tf.cast(densify(grad, variable), variable.dtype))


def _cross_device_ops():
    """The exchange the step hands its gradients to (None for the default strategy)."""
    return exchange_of(tf.distribute.get_strategy())


def check_not_xla():
    """The selection op has no XLA kernel: fail at trace time, saying what to do."""
    from tensorflow.python.ops import control_flow_util

    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        raise ValueError(
            "DGCSGD cannot run inside an XLA-compiled function: its top-k selection op "
            "(DGC>SampledTopK) has no XLA kernel. Compile the model with "
            "`model.compile(..., jit_compile=False)` (Keras 3 turns XLA on by itself on a "
            "single GPU) and do not wrap the training step in `tf.function(jit_compile=True)`.")


def replica_context():
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        raise RuntimeError(
            "DGCSGD.apply_gradients must run in a replica context: inside "
            "`strategy.run(...)`, in `model.fit`, or outside any strategy scope. "
            "It was called in cross-replica context.")
    return ctx


def all_replicas_finite(ctx, grads):
    """Whether every replica's gradients are all finite, agreed by one scalar all-reduce.

    Args:
      ctx: the replica context.
      grads: this replica's gradients (dense or `tf.IndexedSlices`).
    Returns:
      `(ok, flag)`: `ok` a bool scalar, identical on every replica; `flag` the
      `[1]` float32 this replica handed over (1.0: its gradients were not finite).
    """
    finite = tf.reduce_all([
        tf.reduce_all(tf.math.is_finite(g.values if isinstance(g, tf.IndexedSlices) else g))
        for g in grads])
    flag = tf.reshape(tf.cast(tf.logical_not(finite), tf.float32), [1])
    return tf.equal(ctx.all_reduce(tf.distribute.ReduceOp.SUM, flag)[0], 0), flag


def compress_and_exchange(config, grads, variables, slots, step):
    """The replica-local half of a DGC step. See the module docstring.

    Args:
      config: a `DGCConfig`.
      grads: this replica's gradients (dense or IndexedSlices), scaled so that
        their sum over replicas is the global-batch gradient.
      variables: the matching variables.
      slots: the matching `VariableSlots`.
      step: the optimizer's iteration count before this step (warm-up).
    Returns:
      `Exchanged`.
    """
    check_not_xla()
    ctx = replica_context()
    grads = [prepare_gradient(g, v, slot.compressed)
             for g, v, slot in zip(grads, variables, slots)]
    # A worker with several replicas sums their gradients first and compresses once.
    ctx, grads = compress_per_worker(ctx, grads)
    num_replicas = ctx.num_replicas_in_sync
    exchange = _cross_device_ops()

    # A replica with NaN/Inf must not touch anyone's state. Agreeing on that
    # first (one scalar all-reduce) lets every replica update its residual and
    # momentum in place, or not at all, instead of computing new state beside
    # the old and choosing between them: for large models those copies cost
    # far more than the extra scalar collective.
    ok, flag = all_replicas_finite(ctx, grads)
    grads = compression.local_clip(grads, config.local_clipnorm, num_replicas)

    # What this replica hands to one all_reduce: a CompressedGradient per
    # compressed variable and the dense gradients. On a skipped step it still
    # takes part (collectives need everyone) with k zeros, which apply_updates
    # never applies.
    route_for = getattr(exchange, "route_for", None)  # dgc_tf's exchange only
    handed, masks_after = [], []
    for grad, var, slot in zip(grads, variables, slots):
        if not slot.compressed:
            handed.append(grad)
            masks_after.append(False)
            continue
        size = var.shape.num_elements()
        k = compression.selected_count(size, step, config.compress_ratio, config.warmup_steps)
        max_count = max(compression.stage_counts(size, config.compress_ratio,
                                                  config.warmup_steps))
        # Routes that apply this replica's own selection let the fused step
        # mask it in place; a leader's route applies other entries, so its
        # selection leaves the state unmasked and the exchange says below
        # what to zero.
        own_selection = route_for is None or route_for(
            size, max_count, var.dtype, index_dtype_for(size)) != "leader"
        if own_selection:
            select = lambda grad=grad, slot=slot, k=k: (  # noqa: E731
                *_compress_step(config, slot, grad, k), tf.reshape(slot.residual, [-1]))
        else:
            select = lambda grad=grad, var=var, slot=slot, k=k: _accumulate_and_select(  # noqa: E731
                config, slot, densify(grad, var), k)
        values, indices, residual = tf.cond(
            ok, select,
            lambda grad=grad, slot=slot, k=k: (
                tf.zeros([k], grad.dtype), tf.zeros([k], index_dtype_for(size)),
                tf.reshape(slot.residual.read_value(), [-1])))
        values, indices = tf.identity(values), tf.identity(indices)  # placed: see below
        # The exchange may apply other entries than these (a leader's): it gets
        # the residual to read them from, and says below what it applied.
        handed.append(CompressedGradient(
            values, indices, tf.constant([size], indices.dtype), residual=residual,
            replica_rank=ctx.replica_id_in_sync_group, step=step,
            max_count=max_count, variable_name=var.name))
        masks_after.append(not own_selection)

    updates = ctx.all_reduce(tf.distribute.ReduceOp.SUM, handed)
    for sent, update, slot, mask in zip(handed, updates, slots, masks_after):
        if mask:
            # Zero what was applied, and only that: the rest stays pending.
            applied = getattr(update, "applied", sent.indices)
            tf.cond(ok, lambda slot=slot, applied=applied: _mask_applied(config, slot, applied),
                    lambda: tf.constant(False))

    if hasattr(exchange, "wire_bytes"):
        # What the exchange's collectives put on the wire per replica, and what
        # a dense all-reduce would: their ratio is the traffic saved.
        bytes_sent = exchange.wire_bytes(handed + [flag])
        dense_bytes = exchange.dense_wire_bytes(variables)
    else:
        bytes_sent = handed_bytes(handed + [flag], getattr(exchange, "wire_dtype", None))
        dense_bytes = float(sum(v.shape.num_elements() * v.dtype.size for v in variables))
    return Exchanged(updates, ok, bytes_sent, dense_bytes)


def _compress_step(config, slot, grad, k):
    """Momentum correction, selection and masking of what was selected, in place.

    For routes that apply this replica's own selection. Returns the selected
    `(values, flat indices)`; the state variables are updated by one fused
    step (`dgc_tf.ops.compress_step`; a dense or `IndexedSlices` gradient).
    """
    return compress_step(
        slot.residual, slot.momentum, grad, k, momentum_factor=config.momentum,
        nesterov=config.nesterov, momentum_masking=config.momentum_masking,
        sample_ratio=config.sample_ratio)


def _accumulate_and_select(config, slot, grad, k):
    """Momentum correction into the replica's state, and selection.

    Returns the selected `(values, flat indices)` and the flat residual they
    were selected from; the state variables are updated in place
    (replica-local assignments). Masking waits for the exchange
    (`_mask_applied`), which says what was applied.
    """
    u = tf.zeros_like(grad) if slot.momentum is None else slot.momentum.read_value()
    u, v = compression.momentum_correction(
        u, slot.residual.read_value(), grad, config.momentum, config.nesterov)
    values, indices = compression.select(v, k, config.sample_ratio)
    if slot.momentum is not None:
        slot.momentum.assign(u)
    slot.residual.assign(v)
    return tf.identity(values), tf.identity(indices), tf.reshape(v, [-1])


def _mask_applied(config, slot, applied):
    """Zeroes the applied entries of the residual (and, with masking, the momentum)."""
    v = slot.residual.read_value()
    u = tf.zeros_like(v) if slot.momentum is None else slot.momentum.read_value()
    u, v = compression.mask_sent(u, v, applied, config.momentum_masking)
    if slot.momentum is not None and config.momentum_masking:
        slot.momentum.assign(u)
    slot.residual.assign(v)
    return tf.constant(True)


def apply_updates(distribution, config, variables, slots, exchanged, learning_rate,
                  weight_decay_for):
    """The cross-replica half: identical weight updates on every replica.

    Args:
      distribution: the strategy (as `merge_call` passes it).
      variables, slots: as for `compress_and_exchange`.
      exchanged: its result (per-replica values inside `merge_call`).
      learning_rate: the current learning rate (tensor or variable; per-replica
        values inside `merge_call` when a schedule computed it per replica).
      weight_decay_for: `variable -> float or None`, Keras's decoupled decay.
    """
    for var, slot, update in zip(variables, slots, exchanged.updates):
        decay = weight_decay_for(var)

        def apply_one(var, update, ok, learning_rate, slot=slot, decay=decay):
            def step():
                lr = tf.cast(learning_rate, var.dtype)
                if decay:
                    var.assign_sub(var * (lr * tf.cast(decay, var.dtype)))
                if slot.compressed:
                    apply_sparse(var, update, lr)
                else:
                    apply_momentum_sgd(var, slot.momentum, update, lr, config)
                return tf.constant(True)

            return tf.cond(ok, step, lambda: tf.constant(False))

        # The learning rate goes through `args` like the rest: a schedule's value
        # is per replica here, and update() hands each device its own.
        distribution.extended.update(
            var, apply_one, args=(update, exchanged.ok, learning_rate), group=False)


def apply_sparse(var, update, lr):
    """`w -= lr * G` as a scatter: touches only the received entries."""
    coords = compression.flat_to_coords(update.indices, var.shape.as_list())
    var.scatter_nd_sub(coords, update.values * lr)


def apply_momentum_sgd(var, momentum, grad, lr, config):
    """Exactly `keras.optimizers.SGD`'s update, for the uncompressed variables."""
    if momentum is None:
        var.assign_sub(grad * lr)
        return
    m = tf.cast(config.momentum, var.dtype)
    momentum.assign(-grad * lr + momentum * m)
    if config.nesterov:
        var.assign_add(-grad * lr + momentum * m)
    else:
        var.assign_add(momentum)


@dataclasses.dataclass
class StepCounters:
    """Mirrored running totals: skipped steps and bytes, for stats and callbacks.

    `bytes_sent` and `dense_bytes` are per replica, summed over applied and
    skipped steps alike (a skipped step still paid for its exchange).
    """

    skipped_steps: tf.Variable  # int64
    bytes_sent: tf.Variable  # float64
    dense_bytes: tf.Variable  # float64
    last_bytes_sent: tf.Variable  # float64

    DTYPES = {"skipped_steps": "int64", "bytes_sent": "float64", "dense_bytes": "float64",
              "last_bytes_sent": "float64"}

    def record(self, distribution, exchanged):
        def count(skipped, ok, step_bytes, dense_bytes):
            return tf.group(
                skipped.assign_add(tf.where(ok, tf.constant(0, tf.int64), 1)),
                self.bytes_sent.assign_add(step_bytes),
                self.dense_bytes.assign_add(tf.cast(dense_bytes, tf.float64)),
                self.last_bytes_sent.assign(step_bytes))

        distribution.extended.update(
            self.skipped_steps, count,
            args=(exchanged.ok, exchanged.bytes_sent, exchanged.dense_bytes), group=False)

    def compression_ratio(self):
        """Dense bytes / bytes sent, over all steps so far (0 before the first)."""
        sent = tf.convert_to_tensor(self.bytes_sent)
        return tf.math.divide_no_nan(tf.convert_to_tensor(self.dense_bytes), sent)

    def as_dict(self):
        return {
            "bytes_sent": float(self.bytes_sent.numpy()),
            "dense_bytes": float(self.dense_bytes.numpy()),
            "last_bytes_sent": float(self.last_bytes_sent.numpy()),
            "compression_ratio": float(self.compression_ratio().numpy()),
            "skipped_steps": int(self.skipped_steps.numpy()),
        }
