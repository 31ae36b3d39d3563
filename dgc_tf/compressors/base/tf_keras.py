"""The frame's tf_keras adapter (Keras 2, `TF_USE_LEGACY_KERAS=1`).

tf_keras's `model.fit` works under `MultiWorkerMirroredStrategy` where Keras
3's currently does not (keras-team/keras#20585), so multi-worker `fit` runs
through these classes.
"""

import tensorflow as tf
import tf_keras

from dgc_tf.compressors.base import step as frame
from dgc_tf.compressors.base.optimizer import CompressorMixin


def _plus(grad, scalar):
    """`grad + scalar`, for a dense gradient or the values of a `tf.IndexedSlices`."""
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values + scalar, grad.indices, grad.dense_shape)
    return grad + scalar


class CompressorOptimizer(CompressorMixin, tf_keras.optimizers.Optimizer):
    """A tf_keras optimizer whose step is a compressor's (see `dgc_tf.compressors.base`).

    Subclasses call `__init__` with their validated config and provide
    `_make_slots`, `_compress_and_exchange` and `current_density`. Checkpoints
    follow attributes: a slot variable named `name` is kept in the tracked
    list `SLOT_LISTS[name]`, the counters in the list `COUNTER_LIST`.
    """

    SLOT_LISTS = {}  # slot name -> the attribute (a list) that tracks those slots
    COUNTER_LIST = "compressor_counters"

    def __init__(self, config, learning_rate, name, **kwargs):
        super().__init__(name=name, **kwargs)
        self.compressor_config = config
        # Refs of the gradients `aggregate_gradients` handed out (still per replica).
        self._unaggregated = self._no_dependency(set())
        self._learning_rate = self._build_learning_rate(learning_rate)

    def build(self, var_list):
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self._compressor_slots = frame.SlotTable()
        for list_name in dict.fromkeys(self.SLOT_LISTS.values()):
            setattr(self, list_name, [])
        for var in var_list:
            self._require_float(var, var.name)
            self._compressor_slots.append(self._make_slots(var))
        self._make_counters(self._counter)
        setattr(self, self.COUNTER_LIST,
                [getattr(self._counters, name) for name in frame.StepCounters.DTYPES])
        self._build_method_counters()
        self._built = True

    def _make_slots(self, variable):
        """The method's slots for one variable (made with `_add_replica_local` /
        `_add_mirrored`)."""
        raise NotImplementedError

    def _build_method_counters(self):
        """A method's own counters, made with `_counter` (none by default)."""

    def _track_slot(self, name, variable):
        getattr(self, self.SLOT_LISTS[name]).append(variable)
        return variable

    def _counter(self, name, dtype):
        """A mirrored scalar that only the first replica's updates count."""
        variable = tf.Variable(tf.zeros([], dtype), name=name, trainable=False,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._variables.append(variable)
        return variable

    def _add_replica_local(self, model_variable, name):
        """A per-replica buffer (`ON_READ`, `SUM`): a checkpoint stores the sum over
        replicas, so the total pending gradient survives save/restore."""
        strategy = tf.distribute.get_strategy()
        with strategy.extended.colocate_vars_with(model_variable):
            variable = tf.Variable(
                tf.zeros(model_variable.shape, model_variable.dtype),
                name=f"{name}/{model_variable._shared_name}", trainable=False,
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.SUM)
        self._variables.append(variable)
        return self._track_slot(name, variable)

    def _add_mirrored(self, reference, name):
        """A mirrored buffer shaped like `reference` (Keras SGD's momentum)."""
        return self._track_slot(name, self.add_variable_from_reference(reference, name))

    # -- the step ---------------------------------------------------------------

    def aggregate_gradients(self, grads_and_vars):
        """The compressor's exchange is the aggregation: here replicas only agree on finiteness.

        tf_keras's `LossScaleOptimizer` calls this before deciding, from the
        gradients it returns, whether to apply the step, then calls
        `apply_gradients(..., skip_gradients_aggregation=True)`. A dense
        all-reduce here would send the whole gradient that compression exists
        not to send. Instead one scalar all-reduce (the frame's skip protocol)
        tells every replica whether any replica's gradients are non-finite; if
        so every replica's gradients become NaN, so that all of them take the
        same branch (a replica that applies while another skips would wait
        forever in the exchange).

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
        ctx = frame.replica_context(type(self).__name__)
        ok, _ = frame.all_replicas_finite(ctx, grads)
        # NaN in one gradient (the smallest: cheapest) makes the whole list non-finite.
        i = min(range(len(grads)), key=lambda j: variables[j].shape.num_elements() or 0)
        grads[i] = _plus(grads[i], tf.where(ok, tf.constant(0, grads[i].dtype),
                                            tf.constant(float("nan"), grads[i].dtype)))
        if ctx.num_replicas_in_sync > 1:  # one replica: anything is accepted, nothing kept
            self._unaggregated.update(g.ref() for g in grads)
        return list(zip(grads, variables))

    def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False,
                        **kwargs):
        """Compresses, exchanges and applies; see the class docstring.

        The compressor's exchange is itself the gradient aggregation: the
        gradients are always each replica's own, and the exchange sums them.
        `skip_gradients_aggregation=True` (or `experimental_aggregate_gradients=False`),
        which tf_keras's `LossScaleOptimizer` passes, is accepted for gradients
        returned by `aggregate_gradients` (unsummed) and with a single replica
        (where summing changes nothing); gradients a caller summed over several
        replicas itself are refused, as the exchange would count them once per
        replica.
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
            slots = self._slots_of(self._index_dict[self._var_key(v)] for v in variables)
            exchanged = self._compress_and_exchange(grads, variables, slots)
            iteration = tf.__internal__.distribute.interim.maybe_merge_call(
                self._apply_exchanged, self._distribution_strategy, variables, slots, exchanged,
                self.learning_rate)
            for variable in variables:
                if variable.constraint is not None:
                    variable.assign(variable.constraint(variable))
            return iteration

    def _compress_and_exchange(self, grads, variables, slots):
        """Replica context: the method's replica step, returning an `Exchanged`."""
        raise NotImplementedError

    def _check_unaggregated(self, grads):
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync == 1:
            return
        refs = [g.ref() for g in grads]
        if all(ref in self._unaggregated for ref in refs):
            self._unaggregated.difference_update(refs)  # handed out once, used once
            return
        raise ValueError(
            f"{type(self).__name__} exchanges gradients itself: with several replicas, call "
            "apply_gradients with each replica's own gradients and "
            "skip_gradients_aggregation=False (or with the gradients `aggregate_gradients` "
            "returned); gradients already summed over replicas would be counted once per "
            "replica.")

    def _apply_exchanged(self, distribution, variables, slots, exchanged, learning_rate):
        super()._apply_exchanged(distribution, variables, slots, exchanged, learning_rate)
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
        config.update(self.compressor_config.as_dict())
        return config
