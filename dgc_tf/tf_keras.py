"""`DGCSGD` for tf_keras (Keras 2, `TF_USE_LEGACY_KERAS=1`).

tf_keras's `model.fit` works under `MultiWorkerMirroredStrategy` where Keras
3's currently does not (keras-team/keras#20585), so multi-worker `fit` runs
through this class.
"""

import tensorflow as tf
import tf_keras

from dgc_tf import engine
from dgc_tf.config import DGCConfig
from dgc_tf.docs import DGCSGD_DOC
from dgc_tf.optimizer_mixin import DGCOptimizerMixin


def _plus(grad, scalar):
    """`grad + scalar`, for a dense gradient or the values of a `tf.IndexedSlices`."""
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values + scalar, grad.indices, grad.dense_shape)
    return grad + scalar


@tf_keras.saving.register_keras_serializable(package="dgc_tf")
class DGCSGD(DGCOptimizerMixin, tf_keras.optimizers.Optimizer):
    __doc__ = DGCSGD_DOC

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.9,
        nesterov=False,
        compress_ratio=0.001,
        sample_ratio=0.01,
        warmup_steps=0,
        momentum_masking=True,
        local_clipnorm=None,
        min_compress_size=1024,
        name="DGCSGD",
        **kwargs,
    ):
        # Validate before Keras sees anything, so bad input fails early and clearly.
        dgc_config = DGCConfig(
            momentum=momentum, nesterov=nesterov, compress_ratio=compress_ratio,
            sample_ratio=sample_ratio, warmup_steps=warmup_steps,
            momentum_masking=momentum_masking, local_clipnorm=local_clipnorm,
            min_compress_size=min_compress_size)
        super().__init__(name=name, **kwargs)
        self.dgc_config = dgc_config
        # Refs of the gradients `aggregate_gradients` handed out (still per replica).
        self._dgc_unaggregated = self._no_dependency(set())
        self._learning_rate = self._build_learning_rate(learning_rate)

    def build(self, var_list):
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        config = self.dgc_config
        self._dgc_slots = engine.SlotTable()
        # Tracked lists (checkpointing follows attributes); the slot table maps them.
        self.dgc_momentums, self.dgc_residuals, self.momentums = [], [], []
        for var in var_list:
            self._require_float(var, var.name)
            if config.is_compressed(var.shape.as_list()):
                momentum = self._add_replica_local(var, "dgc_u") if config.momentum else None
                residual = self._add_replica_local(var, "dgc_v")
                self.dgc_momentums += [momentum] if momentum is not None else []
                self.dgc_residuals.append(residual)
                self._dgc_slots.append(engine.VariableSlots(True, momentum, residual))
            else:
                momentum = (self.add_variable_from_reference(var, "m")
                            if config.momentum else None)
                self.momentums += [momentum] if momentum is not None else []
                self._dgc_slots.append(engine.VariableSlots(False, momentum, None))
        counters = {}
        for name, dtype in engine.StepCounters.DTYPES.items():
            counters[name] = tf.Variable(
                tf.zeros([], dtype), name=name, trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self._variables.append(counters[name])
        self.dgc_counters = list(counters.values())
        self._dgc_counters = engine.StepCounters(**counters)
        self._built = True

    def _add_replica_local(self, model_variable, name):
        """A per-replica buffer (`ON_READ`, `SUM`): see the class docstring."""
        strategy = tf.distribute.get_strategy()
        with strategy.extended.colocate_vars_with(model_variable):
            variable = tf.Variable(
                tf.zeros(model_variable.shape, model_variable.dtype),
                name=f"{name}/{model_variable._shared_name}", trainable=False,
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.SUM)
        self._variables.append(variable)
        return variable

    # -- the step ---------------------------------------------------------------

    def aggregate_gradients(self, grads_and_vars):
        """DGC's exchange is the aggregation: here replicas only agree on finiteness.

        tf_keras's `LossScaleOptimizer` calls this before deciding, from the
        gradients it returns, whether to apply the step, then calls
        `apply_gradients(..., skip_gradients_aggregation=True)`. A dense
        all-reduce here would send the whole gradient that DGC exists not to
        send. Instead one scalar all-reduce tells every replica whether any
        replica's gradients are non-finite; if so every replica's gradients
        become NaN, so that all of them take the same branch (a replica that
        applies while another skips would wait forever in the exchange).

        Args:
          grads_and_vars: this replica's `(gradient, variable)` pairs.

        Returns:
          The pairs, with each replica's own (unsummed) gradients; `apply_gradients`
          accepts them with `skip_gradients_aggregation=True`.
        """
        grads_and_vars = [(g, v) for g, v in grads_and_vars if g is not None]
        if not grads_and_vars:
            return grads_and_vars
        grads, variables = map(list, zip(*grads_and_vars))
        ctx = engine.replica_context()
        ok, _ = engine.all_replicas_finite(ctx, grads)
        # NaN in one gradient (the smallest: cheapest) makes the whole list non-finite.
        i = min(range(len(grads)), key=lambda j: variables[j].shape.num_elements() or 0)
        grads[i] = _plus(grads[i], tf.where(ok, tf.constant(0, grads[i].dtype),
                                            tf.constant(float("nan"), grads[i].dtype)))
        if ctx.num_replicas_in_sync > 1:  # one replica: anything is accepted, nothing kept
            self._dgc_unaggregated.update(g.ref() for g in grads)
        return list(zip(grads, variables))

    def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False,
                        **kwargs):
        """Compresses, exchanges and applies; see the class docstring.

        DGC is itself the gradient aggregation: the gradients are always each
        replica's own, and DGC's exchange sums them. `skip_gradients_aggregation=True`
        (or `experimental_aggregate_gradients=False`), which tf_keras's
        `LossScaleOptimizer` passes, is accepted for gradients returned by
        `aggregate_gradients` (unsummed) and with a single replica (where
        summing changes nothing); gradients a caller summed over several
        replicas itself are refused, as DGC would count them once per replica.
        """
        skip = skip_gradients_aggregation or not kwargs.pop(
            "experimental_aggregate_gradients", True)
        grads_and_vars = [(g, v) for g, v in grads_and_vars if g is not None]
        if skip:
            self._check_unaggregated([g for g, _ in grads_and_vars])
        self._compute_current_learning_rate()
        if not grads_and_vars:
            return self._iterations
        grads, variables = zip(*grads_and_vars)
        with tf.name_scope(name or self.name):
            with tf.init_scope():
                self.build(variables)
            grads = self._clip_gradients(grads)
            slots = [self._dgc_slots.at(self._index_dict[self._var_key(v)]) for v in variables]
            exchanged = engine.compress_and_exchange(
                self.dgc_config, grads, variables, slots, self._iterations)
            iteration = tf.__internal__.distribute.interim.maybe_merge_call(
                self._apply_exchanged, self._distribution_strategy, variables, slots, exchanged,
                self.learning_rate)
            for variable in variables:
                if variable.constraint is not None:
                    variable.assign(variable.constraint(variable))
            return iteration

    def _check_unaggregated(self, grads):
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync == 1:
            return
        refs = [g.ref() for g in grads]
        if all(ref in self._dgc_unaggregated for ref in refs):
            self._dgc_unaggregated.difference_update(refs)  # handed out once, used once
            return
        raise ValueError(
            "DGCSGD exchanges gradients itself: with several replicas, call apply_gradients "
            "with each replica's own gradients and skip_gradients_aggregation=False (or with "
            "the gradients `aggregate_gradients` returned); gradients already summed over "
            "replicas would be counted once per replica.")

    def _apply_exchanged(self, distribution, variables, slots, exchanged, learning_rate):
        engine.apply_updates(
            distribution, self.dgc_config, variables, slots, exchanged, learning_rate,
            self._weight_decay_for)
        self._dgc_counters.record(distribution, exchanged)
        if self.use_ema:
            # As tf_keras's own optimizers do after their update: `fit` ends by
            # writing these averages into the model (`finalize_variable_values`).
            self._update_model_variables_moving_average(variables)
            if self.ema_overwrite_frequency:
                tf.cond(
                    tf.equal((self.iterations + 1) % self.ema_overwrite_frequency, 0),
                    lambda: self._overwrite_model_variables_with_average_value(variables),
                    lambda: None)
        return self.iterations.assign_add(1)

    def get_config(self):
        config = super().get_config()
        config.update({"learning_rate": self._serialize_hyperparameter(self._learning_rate)})
        config.update(self.dgc_config.as_dict())
        return config
