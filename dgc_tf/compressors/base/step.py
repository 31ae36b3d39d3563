"""The halves of a compressed step that every method shares.

A compressor's step is split where tf.distribute splits it:

* in replica context, on each replica's own gradients, the method's replica
  step (e.g. `dgc_tf.compressors.dgc.replica.compress_and_exchange`) uses the
  guards here (`check_not_xla`, `replica_context`), follows the skip
  protocol (below), updates its replica-local state and hands what it sends
  to `exchange`, which all-reduces it in ONE call and counts the bytes;
* in cross-replica context (inside `merge_call`), `apply_updates` applies the
  exchanged sum identically to every replica's copy of the weights: a
  `tf.IndexedSlices` as a sparse scatter `w -= lr * G`, a dense sum with
  Keras SGD's momentum; `StepCounters.record` keeps the running totals.

The skip protocol: a step on which any replica's gradients hold NaN or Inf
applies nothing anywhere (`apply_updates` skips it, `skipped_steps` counts
it), and a replica with such gradients touches no state at all. Replicas
agree on it in one of two forms:

* first (`all_replicas_finite`): one scalar all-reduce before any state
  changes; then every replica updates its state in place or not at all.
  VGC and tf_keras's `aggregate_gradients` (which `LossScaleOptimizer`
  calls to decide before the step) agree first.
* within the exchange (`local_finite`, then `exchange_agreeing`): each
  replica updates its own state only if its own gradients are finite, and
  its flag rides in the exchange's all-reduce. A replica whose gradients were
  finite on a skipped step keeps them pending in its residual, like anything
  else it did not send, so the method must only zero what was applied after
  the exchange, once `ok` is known. DGC and TopKErrorFeedback agree this
  way: it saves the step a collective of its own, a scalar all-reduce whose
  ring passes through every worker twice (on 8 workers sharing 2 cores the
  leader route's step fell by 14%: README, "The 8-worker step").

The Keras classes own the variables; everything here mutates them only
through `assign*` / `dgc_tf.ops.scatter.subtract_at`.
"""

import dataclasses
from typing import List, NamedTuple

import tensorflow as tf

from dgc_tf.distribute import worker_exchange
from dgc_tf.distribute.payload import handed_bytes
from dgc_tf.ops import scatter
from dgc_tf.ops.static_cond import static_cond


class SlotTable:
    """Per-variable slots (a method's own slot type) by variable index.

    A plain object, not a list, so that Keras's attribute tracking does not
    wrap it: the variables inside are tracked where they were created.
    """

    def __init__(self):
        self._slots = []

    def append(self, slots):
        self._slots.append(slots)

    def at(self, index):
        return self._slots[index]

    def __iter__(self):
        return iter(self._slots)


class Exchanged(NamedTuple):
    """What every replica holds after the exchange (identical on all of them).

    A method may hand a NamedTuple with more fields (VGC's counts); the frame
    reads these four.
    """

    updates: List  # per variable: flat tf.IndexedSlices (a scatter) or a dense sum (SGD)
    ok: tf.Tensor  # bool scalar: every replica's gradients were finite
    bytes_sent: tf.Tensor  # float64 bytes this replica handed to collectives
    dense_bytes: float  # bytes a dense all-reduce of the same gradients would hand over


# -- replica context: guards, the skip protocol, the exchange hand-off ----------


def densify(grad, variable):
    """An IndexedSlices gradient as a dense tensor (for a variable exchanged densely)."""
    if isinstance(grad, tf.IndexedSlices):
        rows = tf.math.unsorted_segment_sum(grad.values, grad.indices, variable.shape[0])
        return tf.reshape(rows, variable.shape)
    return tf.convert_to_tensor(grad)


def prepare_gradient(grad, variable, keep_sparse=False):
    """A gradient in the variable's dtype, placed on this replica's device.

    With `keep_sparse`, an `IndexedSlices` (an embedding's) stays sparse: DGC's
    compress step adds it into the residual row by row. tf.distribute batches
    an all_reduce only when every value sits on a replica's device, and
    gradients fed from outside (or a cond's outputs) may carry none: identity
    places them here, or each variable would get a collective of its own.
    """
    if keep_sparse and isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(tf.identity(tf.cast(grad.values, variable.dtype)),
                                tf.identity(grad.indices), grad.dense_shape)
    return tf.identity(tf.cast(densify(grad, variable), variable.dtype))


def current_exchange(ctx):
    """The `CrossDeviceOps` a replica context's `all_reduce` goes through.

    The one place the frame looks at the exchange: `exchange` counts the
    bytes by its wire rules (`wire_bytes`, `dense_wire_bytes`).

    Args:
      ctx: the replica context (a worker's, after `compress_per_worker`).
    Returns:
      The exchange, or None (the default strategy).
    """
    return worker_exchange.exchange_for(ctx)


def check_not_xla(reason):
    """Fails at trace time inside XLA, saying what to do.

    Args:
      reason: why the method cannot be compiled, e.g. "DGCSGD ... has no XLA kernel".
    """
    from tensorflow.python.ops import control_flow_util

    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        raise ValueError(
            f"{reason}. Compile the model with `model.compile(..., jit_compile=False)` "
            "(Keras 3 turns XLA on by itself on a single GPU) and do not wrap the training "
            "step in `tf.function(jit_compile=True)`.")


def replica_context(optimizer_name):
    """The replica context, or a RuntimeError naming `optimizer_name` in cross-replica context."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        raise RuntimeError(
            f"{optimizer_name}.apply_gradients must run in a replica context: inside "
            "`strategy.run(...)`, in `model.fit`, or outside any strategy scope. "
            "It was called in cross-replica context.")
    return ctx


def local_finite(tensors):
    """Whether this replica's own tensors are all finite, and the flag it hands over.

    No collective: the first half of the skip protocol (module docstring).

    Args:
      tensors: this replica's gradients (dense or `tf.IndexedSlices`), and
        anything else the step reads (VGC's squared-gradient estimates).
    Returns:
      `(finite, flag)`: `finite` a bool scalar for this replica alone; `flag`
      the `[1]` float32 it hands over, 1.0 where its tensors were not finite.
    """
    finite = tf.reduce_all([
        tf.reduce_all(tf.math.is_finite(g.values if isinstance(g, tf.IndexedSlices) else g))
        for g in tensors])
    return finite, tf.reshape(tf.cast(tf.logical_not(finite), tf.float32), [1])


def agreed_finite(summed_flag):
    """`ok`, identical on every replica: the sum of all replicas' flags is zero."""
    return tf.equal(summed_flag[0], 0)


def all_replicas_finite(ctx, tensors):
    """Whether every replica's tensors are all finite, agreed by one scalar all-reduce.

    The skip protocol's first form, agreeing before any state changes: a
    replica with NaN/Inf must not touch anyone's state. Agreeing first lets
    every replica update its state in place (under `tf.cond(ok, ...)`), or not
    at all, instead of computing new state beside the old and choosing between
    them: for large models those copies cost far more than one scalar
    collective. A skipped step still takes part in the exchange (collectives
    need everyone), and `apply_updates` applies nothing.

    Args:
      ctx: the replica context.
      tensors: as for `local_finite`.
    Returns:
      `(ok, flag)`: `ok` a bool scalar, identical on every replica; `flag` the
      `[1]` float32 this replica handed over, for `exchange`'s byte count.
    """
    _, flag = local_finite(tensors)
    return agreed_finite(ctx.all_reduce(tf.distribute.ReduceOp.SUM, flag)), flag


def local_clip_threshold(clipnorm, num_replicas):
    """The paper's local clipping threshold `clipnorm / sqrt(N)`.

    Each worker clips its own gradient list before accumulation, with the
    threshold scaled by `N^(-1/2)` because the sum of N independent local
    gradients has about `sqrt(N)` times the norm of one.
    """
    return clipnorm / float(num_replicas) ** 0.5


def exchange(ctx, handed, variables, also_handed=()):
    """Hands this replica's contributions to ONE all_reduce and counts the bytes.

    Args:
      ctx: the replica context.
      handed: per variable, a `CompressedGradient` or a dense gradient.
      variables: the matching variables (for the dense-equivalent bytes).
      also_handed: the step's other collectives (the finiteness flag, VGC's
        size table), counted in the bytes.
    Returns:
      `(updates, bytes_sent, dense_bytes)`: the summed contributions, the
      float64 bytes this replica put on the wire this step, and what a dense
      all-reduce of the same gradients would put there.
    """
    updates = ctx.all_reduce(tf.distribute.ReduceOp.SUM, handed)
    cross_device_ops = current_exchange(ctx)
    flat = list(handed) + list(also_handed)
    if hasattr(cross_device_ops, "wire_bytes"):
        # What the exchange's collectives put on the wire per replica, and what
        # a dense all-reduce would: their ratio is the traffic saved.
        bytes_sent = cross_device_ops.wire_bytes(flat)
        dense_bytes = cross_device_ops.dense_wire_bytes(variables)
    else:
        bytes_sent = handed_bytes(flat, getattr(cross_device_ops, "wire_dtype", None))
        dense_bytes = float(sum(v.shape.num_elements() * v.dtype.size for v in variables))
    return updates, bytes_sent, dense_bytes


def exchange_agreeing(ctx, handed, variables, flag):
    """`exchange`, with the skip protocol's agreement in the same all_reduce.

    The protocol's second form (module docstring): `flag` (from
    `local_finite`) travels with the dense tensors of the exchange instead of
    in a collective of its own before it.

    Args:
      ctx: the replica context.
      handed: per variable, a `CompressedGradient` or a dense gradient.
      variables: the matching variables.
      flag: this replica's `[1]` float32 non-finite flag.
    Returns:
      `(updates, ok, bytes_sent, dense_bytes)`: as `exchange`'s, and `ok`,
      whether every replica's flag was 0 (identical on every replica).
    """
    updates, bytes_sent, dense_bytes = exchange(ctx, list(handed) + [flag], variables)
    return updates[:-1], agreed_finite(updates[-1]), bytes_sent, dense_bytes


# -- cross-replica context: apply and count ---------------------------------------


def apply_updates(distribution, variables, sgd_momenta, exchanged, learning_rate,
                  weight_decay_for, momentum, nesterov):
    """The cross-replica half: identical weight updates on every replica.

    Args:
      distribution: the strategy (as `merge_call` passes it).
      variables: the variables stepped.
      sgd_momenta: per variable the mirrored momentum buffer Keras SGD uses for
        a dense update, or None (no momentum, or a sparse update).
      exchanged: an `Exchanged` (per-replica values inside `merge_call`). An
        update that is a `tf.IndexedSlices` is applied as `w -= lr * G` on the
        entries it holds; a dense one with Keras SGD (`momentum`, `nesterov`).
      learning_rate: the current learning rate (tensor or variable; per-replica
        values inside `merge_call` when a schedule computed it per replica).
      weight_decay_for: `variable -> float or None`, Keras's decoupled decay.
      momentum, nesterov: the SGD applied to dense updates.
    """
    for var, sgd_momentum, update in zip(variables, sgd_momenta, exchanged.updates):
        decay = weight_decay_for(var)

        def apply_one(var, update, ok, learning_rate, sgd_momentum=sgd_momentum, decay=decay):
            def step():
                lr = tf.cast(learning_rate, var.dtype)
                if decay:
                    var.assign_sub(var * (lr * tf.cast(decay, var.dtype)))
                if isinstance(update, tf.IndexedSlices):
                    apply_sparse(var, update, lr)
                else:
                    apply_momentum_sgd(var, sgd_momentum, update, lr, momentum, nesterov)
                return tf.constant(True)

            return tf.cond(ok, step, lambda: tf.constant(False))

        # The learning rate goes through `args` like the rest: a schedule's value
        # is per replica here, and update() hands each device its own.
        distribution.extended.update(
            var, apply_one, args=(update, exchanged.ok, learning_rate), group=False)


def apply_sparse(var, update, lr):
    """`w -= lr * G` for a flat `tf.IndexedSlices` update.

    An update that travelled densely (a `ReducedGradient` whose `dense` says
    so) holds every index in order and is subtracted as the dense tensor it
    is; otherwise the received entries are scattered (`dgc_tf.ops.scatter`).
    """
    dense = getattr(update, "dense", False)

    def subtract_dense():
        var.assign_sub(tf.reshape(update.values * lr, var.shape))
        return tf.constant(True)

    def subtract_entries():
        scatter.subtract_at(var, update.indices, update.values * lr)
        return tf.constant(True)

    static_cond(dense, subtract_dense, subtract_entries)  # a tensor where the route changes


def apply_momentum_sgd(var, momentum, grad, lr, momentum_factor, nesterov):
    """Exactly `keras.optimizers.SGD`'s update, for the dense updates."""
    if momentum is None:
        var.assign_sub(grad * lr)
        return
    m = tf.cast(momentum_factor, var.dtype)
    momentum.assign(-grad * lr + momentum * m)
    if nesterov:
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
