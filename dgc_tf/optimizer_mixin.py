"""What the Keras 3 and tf_keras `DGCSGD` classes share beyond the engine."""

import tensorflow as tf

from dgc_tf import compression


class DGCOptimizerMixin:
    """Read-only views of a DGC optimizer's configuration and counters.

    Expects `self.dgc_config` (a `DGCConfig`) and, once built,
    `self._dgc_counters` (an `engine.StepCounters`).
    """

    # Plain attributes to Keras code that reads `optimizer.momentum` (e.g. summaries).
    momentum = property(lambda self: self.dgc_config.momentum)
    nesterov = property(lambda self: self.dgc_config.nesterov)

    @property
    def skipped_steps(self):
        """Steps skipped because some replica's gradients were not finite."""
        return self._dgc_counters.skipped_steps

    def compression_stats(self):
        """Bytes sent, dense-equivalent bytes, their ratio, skipped steps and the
        `current_density()`, per replica: all that `CompressionStats` logs."""
        stats = self._dgc_counters.as_dict()
        stats["density"] = self.current_density()
        return stats

    def current_density(self):
        """The density the next step will send (warm-up included), as a float."""
        config = self.dgc_config
        return float(compression.density_at(
            int(self.iterations.numpy()), config.compress_ratio, config.warmup_steps).numpy())

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
            "DGCSGD updates all variables together (the exchange spans them); "
            "use apply_gradients.")
