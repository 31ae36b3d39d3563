"""What a compressor's Keras 3 and tf_keras classes share beyond the step functions."""

import tensorflow as tf

from dgc_tf.compressors.base import step as frame


class CompressorMixin:
    """The flavour-independent part of a compressor optimizer.

    Expects `self.compressor_config` (a `CompressorConfig`) and, once built,
    `self._compressor_slots` (a `SlotTable` of the method's slots) and
    `self._counters` (a `StepCounters`). A subclass provides the methods
    listed in `dgc_tf.compressors.base`'s contract.
    """

    # Plain attributes to Keras code that reads `optimizer.momentum` (e.g. summaries).
    momentum = property(lambda self: self.compressor_config.momentum)
    nesterov = property(lambda self: self.compressor_config.nesterov)

    @property
    def skipped_steps(self):
        """Steps skipped because some replica's gradients were not finite."""
        return self._counters.skipped_steps

    def compression_stats(self):
        """Bytes sent, dense-equivalent bytes, their ratio, skipped steps and the
        `current_density()`, per replica (plus what the method adds in
        `_method_stats`): all that `CompressionStats` logs."""
        stats = self._counters.as_dict()
        stats.update(self._method_stats())
        stats["density"] = self.current_density()
        return stats

    def current_density(self):
        """The fraction of compressed elements the method sends (its own definition)."""
        raise NotImplementedError

    def _method_stats(self):
        """Stats a method adds to `compression_stats` (none by default)."""
        return {}

    # -- what the Keras adapters call ------------------------------------------

    def _make_counters(self, make_counter):
        """The frame's `StepCounters`, each made by `make_counter(name, dtype)`."""
        dtypes = frame.StepCounters.DTYPES
        self._counters = frame.StepCounters(
            **{name: make_counter(name, dtype) for name, dtype in dtypes.items()})

    def _slots_of(self, variable_indices):
        return [self._compressor_slots.at(i) for i in variable_indices]

    def _apply_exchanged(self, distribution, variables, slots, exchanged, learning_rate):
        """Cross-replica: applies the exchanged update and counts the step."""
        self._apply_updates(distribution, variables, slots, exchanged, learning_rate)
        self._counters.record(distribution, exchanged)
        self._record_step(distribution, exchanged)

    def _apply_updates(self, distribution, variables, slots, exchanged, learning_rate):
        """Cross-replica: the weight updates, by default the frame's (a scatter for a
        `tf.IndexedSlices`, Keras SGD for a dense sum). A method whose update
        another optimizer applies overrides this (`TopKErrorFeedback`)."""
        config = self.compressor_config
        frame.apply_updates(distribution, variables, [s.sgd_momentum for s in slots], exchanged,
                            learning_rate, self._weight_decay_for, config.momentum,
                            config.nesterov)

    def _record_step(self, distribution, exchanged):
        """Cross-replica: a method's own counters (none by default)."""
        # A statement, not only a docstring: AutoGraph converts this method in a
        # custom loop's step and fails on an empty body, with a warning that asks
        # users to report it to the TensorFlow team.
        del distribution, exchanged

    def _require_float(self, variable, label):
        """Compressors accumulate fractions: integer variables are refused at build."""
        if not variable.dtype or not tf.as_dtype(variable.dtype).is_floating:
            raise ValueError(
                f"{type(self).__name__} can only train floating-point variables; `{label}` has "
                f"dtype {tf.as_dtype(variable.dtype).name if variable.dtype else None}.")

    def _weight_decay_for(self, variable):
        if self.weight_decay is not None and self._use_weight_decay(variable):
            return self.weight_decay
        return None

    def update_step(self, *args, **kwargs):
        raise NotImplementedError(
            f"{type(self).__name__} updates all variables together (the exchange spans them); "
            "use apply_gradients.")
