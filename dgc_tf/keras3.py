"""`DGCSGD` for Keras 3 (the `keras` package, TensorFlow backend)."""

import keras
import tensorflow as tf
from keras.src import backend as keras_backend

from dgc_tf import engine
from dgc_tf.config import DGCConfig
from dgc_tf.docs import DGCSGD_DOC
from dgc_tf.optimizer_mixin import DGCOptimizerMixin


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras_backend.Variable) else variable


def _variable_label(variable):
    """What Keras 3 names a slot after: a Keras variable's `path`, a raw
    `tf.Variable`'s name (which has no `path`), as `add_variable_from_reference` does."""
    if hasattr(variable, "path"):
        return variable.path.replace("/", "_")
    return str(variable.name).replace("/", "_").replace(":", "_")


@keras.saving.register_keras_serializable(package="dgc_tf")
class DGCSGD(DGCOptimizerMixin, keras.optimizers.Optimizer):
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
        name=None,
        **kwargs,
    ):
        # Validate before Keras sees anything, so bad input fails early and clearly.
        dgc_config = DGCConfig(
            momentum=momentum, nesterov=nesterov, compress_ratio=compress_ratio,
            sample_ratio=sample_ratio, warmup_steps=warmup_steps,
            momentum_masking=momentum_masking, local_clipnorm=local_clipnorm,
            min_compress_size=min_compress_size)
        if kwargs.get("gradient_accumulation_steps"):
            raise ValueError(
                "`gradient_accumulation_steps` is not supported by DGCSGD: DGC already "
                "accumulates unsent gradient in its residual.")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.dgc_config = dgc_config

    def build(self, variables):
        if self.built:
            return
        # Lifted out of any tf.function: a lazily built optimizer would otherwise
        # create its replica-local buffers inside the traced step.
        with tf.init_scope():
            self._build_slots(variables)

    def _build_slots(self, variables):
        super().build(variables)
        config = self.dgc_config
        self._dgc_slots = engine.SlotTable()
        for var in variables:
            self._require_float(var, _variable_label(var))
            if config.is_compressed(var.shape):
                momentum = (_tf_variable(self._add_replica_local(var, "dgc_momentum"))
                            if config.momentum else None)
                residual = _tf_variable(self._add_replica_local(var, "dgc_residual"))
                self._dgc_slots.append(engine.VariableSlots(True, momentum, residual))
            else:
                momentum = (_tf_variable(self.add_variable_from_reference(var, "momentum"))
                            if config.momentum else None)
                self._dgc_slots.append(engine.VariableSlots(False, momentum, None))
        self._dgc_counters = engine.StepCounters(
            **{name: self._counter(name, dtype)
               for name, dtype in engine.StepCounters.DTYPES.items()})

    def _counter(self, name, dtype):
        """A mirrored scalar that only the first replica's updates count."""
        return _tf_variable(self.add_variable(
            shape=(), initializer="zeros", dtype=dtype, aggregation="only_first_replica",
            name=name))

    def _add_replica_local(self, reference, name):
        """A per-replica buffer shaped like `reference` (each replica keeps its own).

        `ON_READ` with `SUM` aggregation: a checkpoint stores the sum over
        replicas, so the total pending gradient survives save/restore.
        """
        self._check_super_called()
        with self._distribution_strategy.extended.colocate_vars_with(_tf_variable(reference)):
            with keras_backend.name_scope(self.name, caller=self):
                variable = keras_backend.Variable(
                    initializer="zeros", shape=reference.shape, dtype=reference.dtype,
                    trainable=False, aggregation="sum", synchronization="on_read",
                    name=f"{_variable_label(reference)}_{name}")
        self._track_variable(variable)
        return variable

    # -- the step ---------------------------------------------------------------

    def _apply_weight_decay(self, variables):
        # Applied inside the DGC update instead, so that a skipped step skips it too.
        pass

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Replaces Keras's all-reduce + update: DGC exchanges compressed gradients.
        slots = [self._dgc_slots.at(self._get_variable_index(v)) for v in trainable_variables]
        variables = [_tf_variable(v) for v in trainable_variables]
        exchanged = engine.compress_and_exchange(
            self.dgc_config, grads, variables, slots, self._iterations)
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._apply_exchanged, self._distribution_strategy, variables, slots,
            exchanged, learning_rate)

    def _apply_exchanged(self, distribution, variables, slots, exchanged, learning_rate):
        engine.apply_updates(
            distribution, self.dgc_config, variables, slots, exchanged, learning_rate,
            self._weight_decay_for)
        self._dgc_counters.record(distribution, exchanged)

    def get_config(self):
        config = super().get_config()
        config.update(self.dgc_config.as_dict())
        return config


