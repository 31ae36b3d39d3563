"""The neutral frame every compressor inherits.

A compressor here is a data-parallel optimizer whose replicas keep some
replica-local state, send a compressed part of their gradient through one
exchange, and apply the exchanged sum identically everywhere. The frame owns
everything that is not the method's math:

* state: `SlotTable` (per-variable slots, the method's own type), replica-local
  buffers (`ON_READ`, `SUM`: a checkpoint keeps the total pending gradient)
  and mirrored buffers, made by the Keras adapters;
* counters: `StepCounters` (skipped steps, bytes sent, dense-equivalent
  bytes) and `compression_stats()`, which `dgc_tf.callbacks` reads;
* guards: `check_not_xla`, `replica_context`, float-only variables;
* the skip protocol (`step`'s docstring): replicas agree on finiteness
  first (`all_replicas_finite`) or within the exchange (`local_finite`,
  `exchange_agreeing`); a replica with non-finite gradients touches no
  state, a skipped step still takes part in the exchange, and
  `apply_updates` applies nothing on it (`iterations` advances,
  `skipped_steps` counts it);
* the exchange hand-off: `exchange` hands the replica's contributions to ONE
  `all_reduce` (the strategy's `CrossDeviceOps`, `SparseAllGather` included)
  and counts the bytes by the exchange's own rules;
* apply: `apply_updates` in cross-replica context: an update that is a
  `tf.IndexedSlices` is a scatter `w -= lr * G`, a dense one gets Keras SGD's
  momentum; decoupled weight decay first, skipped with the step;
* the Keras adapters: `keras3.CompressorOptimizer` (replaces Keras 3's
  `_backend_update_step`) and `tf_keras.CompressorOptimizer` (replaces
  `apply_gradients`, with `aggregate_gradients` for `LossScaleOptimizer`).

The contract: what a compressor subclass provides
-------------------------------------------------

A method lives in its own package (`dgc_tf.compressors.<method>`) with:

1. A config: a frozen dataclass extending `CompressorConfig` (validated in
   `__post_init__`, `as_dict()` for `get_config`). The adapter's `__init__`
   builds it first, so bad input fails before Keras sees anything, and passes
   it to `CompressorOptimizer.__init__(config, learning_rate, name, **kwargs)`;
   it is `optimizer.compressor_config` afterwards.
2. Its math as small pure functions on tensors (no variables read or
   written), the specification its replica step is tested against.
3. Its state: `_make_slots(variable)` returns the method's slots for one
   variable, an object with `compressed` (bool) and `sgd_momentum` (the
   mirrored buffer `apply_updates` uses for a dense update, or None), made with
   `_add_replica_local(variable, name)` / `_add_mirrored(variable, name)`
   (tf_keras: `SLOT_LISTS` names the tracked list each slot name goes in).
   Own counters, if any: `_build_method_counters()` with `_counter(name, dtype)`.
4. Its replica step: `_compress_and_exchange(grads, variables, slots)`, in
   replica context, on this replica's own (unsummed) gradients, returning an
   `Exchanged` (or a NamedTuple with those fields first). It follows the skip
   protocol above and hands the exchange, per variable, a `CompressedGradient`
   (flat values and indices, the same count on every replica) or the dense
   gradient, through `exchange(ctx, handed, variables, also_handed)`.
5. How its update is applied: by what it leaves in `Exchanged.updates`: a
   `tf.IndexedSlices` (a scatter, no momentum) or a dense tensor (Keras SGD
   with the slot's `sgd_momentum`); or it overrides `_apply_updates(distribution,
   variables, slots, exchanged, learning_rate)` (cross-replica) to apply them
   its own way (`error_feedback`: the wrapped optimizer's `update_step`);
   an override must apply nothing where `exchanged.ok` is False.
   Anything else it does after the apply (its own counters) goes in
   `_record_step(distribution, exchanged)`.
6. Its stats: `current_density()` (what "density" means for the method) and
   optionally `_method_stats()` (extra keys for `compression_stats()`).

Keras 3 and tf_keras classes are then a constructor, `_make_slots` and
`_compress_and_exchange` each (see `dgc_tf.compressors.dgc.keras3`).
"""

from dgc_tf.compressors.base.config import CompressorConfig, check_number
from dgc_tf.compressors.base.step import (Exchanged, SlotTable, StepCounters,
                                          all_replicas_finite, apply_updates, check_not_xla,
                                          current_exchange, densify, exchange,
                                          exchange_agreeing, local_clip_threshold,
                                          local_finite, prepare_gradient, replica_context)

__all__ = ["CompressorConfig", "check_number", "Exchanged", "SlotTable", "StepCounters",
           "all_replicas_finite", "apply_updates", "check_not_xla", "current_exchange",
           "densify", "exchange", "exchange_agreeing", "local_clip_threshold", "local_finite",
           "prepare_gradient", "replica_context"]
