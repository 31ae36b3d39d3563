"""The frame's Keras 3 adapter (the `keras` package, TensorFlow backend)."""

import keras
import tensorflow as tf
from keras.src import backend as keras_backend

from dgc_tf.compressors.base.optimizer import CompressorMixin
from dgc_tf.compressors.base.step import SlotTable


def tf_variable(variable):
    """The `tf.Variable` behind a Keras 3 variable (a raw `tf.Variable` as it is)."""
    return variable.value if isinstance(variable, keras_backend.Variable) else variable


def variable_label(variable):
    """What Keras 3 names a slot after: a Keras variable's `path`, a raw
    `tf.Variable`'s name (which has no `path`), as `add_variable_from_reference` does."""
    if hasattr(variable, "path"):
        return variable.path.replace("/", "_")
    return str(variable.name).replace("/", "_").replace(":", "_")


class CompressorOptimizer(CompressorMixin, keras.optimizers.Optimizer):
    """A Keras 3 optimizer whose step is a compressor's (see `dgc_tf.compressors.base`).

    Keras's own all-reduce and per-variable `update_step` are replaced by the
    method's replica step (`_compress_and_exchange`) and the frame's
    cross-replica apply. Subclasses call `__init__` with their validated
    config and provide `_make_slots`, `_compress_and_exchange` and
    `current_density`.
    """

    def __init__(self, config, learning_rate, name=None, **kwargs):
        if kwargs.get("gradient_accumulation_steps"):
            raise ValueError(
                f"`gradient_accumulation_steps` is not supported by {type(self).__name__}: it "
                "already accumulates unsent gradient in its residual.")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.compressor_config = config

    def build(self, variables):
        if self.built:
            return
        # Lifted out of any tf.function: a lazily built optimizer would otherwise
        # create its replica-local buffers inside the traced step.
        with tf.init_scope():
            super().build(variables)
            self._compressor_slots = SlotTable()
            for var in variables:
                self._require_float(var, variable_label(var))
                self._compressor_slots.append(self._make_slots(var))
            self._make_counters(self._counter)
            self._build_method_counters()

    def _make_slots(self, variable):
        """The method's slots for one variable (made with `_add_replica_local` /
        `add_variable_from_reference`)."""
        raise NotImplementedError

    def _build_method_counters(self):
        """A method's own counters, made with `_counter` (none by default)."""

    def _counter(self, name, dtype):
        """A mirrored scalar that only the first replica's updates count."""
        return tf_variable(self.add_variable(
            shape=(), initializer="zeros", dtype=dtype, aggregation="only_first_replica",
            name=name))

    def _add_replica_local(self, reference, name):
        """A per-replica buffer shaped like `reference` (each replica keeps its own).

        `ON_READ` with `SUM` aggregation: a checkpoint stores the sum over
        replicas, so the total pending gradient survives save/restore.
        """
        self._check_super_called()
        with self._distribution_strategy.extended.colocate_vars_with(tf_variable(reference)):
            with keras_backend.name_scope(self.name, caller=self):
                variable = keras_backend.Variable(
                    initializer="zeros", shape=reference.shape, dtype=reference.dtype,
                    trainable=False, aggregation="sum", synchronization="on_read",
                    name=f"{variable_label(reference)}_{name}")
        self._track_variable(variable)
        return tf_variable(variable)

    def _add_mirrored(self, reference, name):
        """A mirrored buffer shaped like `reference` (Keras SGD's momentum)."""
        return tf_variable(self.add_variable_from_reference(reference, name))

    # -- the step ---------------------------------------------------------------

    def _apply_weight_decay(self, variables):
        # Applied inside the compressed update instead, so that a skipped step skips it too.
        pass

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Replaces Keras's all-reduce + update: the method exchanges compressed gradients.
        slots = self._slots_of(self._get_variable_index(v) for v in trainable_variables)
        variables = [tf_variable(v) for v in trainable_variables]
        exchanged = self._compress_and_exchange(grads, variables, slots)
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._apply_exchanged, self._distribution_strategy, variables, slots,
            exchanged, learning_rate)

    def _compress_and_exchange(self, grads, variables, slots):
        """Replica context: the method's replica step, returning an `Exchanged`."""
        raise NotImplementedError

    def get_config(self):
        config = super().get_config()
        config.update(self.compressor_config.as_dict())
        return config
