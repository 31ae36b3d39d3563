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

    def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False,
                        **kwargs):
        """Compresses, exchanges and applies; see the class docstring.

        DGC is itself the gradient aggregation, so `skip_gradients_aggregation`
        (or `experimental_aggregate_gradients=False`) is rejected: the caller
        cannot have aggregated gradients that DGC has not compressed yet.
        """
        if skip_gradients_aggregation or not kwargs.pop("experimental_aggregate_gradients", True):
            raise ValueError(
                "DGCSGD exchanges gradients itself; call apply_gradients with each "
                "replica's own (unaggregated) gradients and skip_gradients_aggregation=False.")
        self._compute_current_learning_rate()
        grads_and_vars = [(g, v) for g, v in grads_and_vars if g is not None]
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

    def _apply_exchanged(self, distribution, variables, slots, exchanged, learning_rate):
        engine.apply_updates(
            distribution, self.dgc_config, variables, slots, exchanged, learning_rate,
            self._weight_decay_for)
        self._dgc_counters.record(distribution, exchanged)
        return self.iterations.assign_add(1)

    def get_config(self):
        config = super().get_config()
        config.update({"learning_rate": self._serialize_hyperparameter(self._learning_rate)})
        config.update(self.dgc_config.as_dict())
        return config
