"""`TopKErrorFeedback` for tf_keras (Keras 2, `TF_USE_LEGACY_KERAS=1`)."""

import tensorflow as tf
import tf_keras

from dgc_tf.compressors.base.tf_keras import CompressorOptimizer
from dgc_tf.compressors.dgc.replica import DGCSlots
from dgc_tf.compressors.error_feedback.optimizer import (TOPK_ERROR_FEEDBACK_DOC,
                                                         ErrorFeedbackMixin, validated)


@tf_keras.saving.register_keras_serializable(package="dgc_tf")
class TopKErrorFeedback(ErrorFeedbackMixin, CompressorOptimizer):
    __doc__ = TOPK_ERROR_FEEDBACK_DOC

    SLOT_LISTS = {"ef_residual": "ef_residuals"}

    def __init__(
        self,
        inner_optimizer,
        compress_ratio=0.001,
        sample_ratio=0.01,
        warmup_steps=0,
        local_clipnorm=None,
        min_compress_size=1024,
        name="TopKErrorFeedback",
        **kwargs,
    ):
        # Validate before Keras sees anything, so bad input fails early and clearly.
        config, inner = validated(
            inner_optimizer, tf_keras.optimizers, kwargs, compress_ratio=compress_ratio,
            sample_ratio=sample_ratio, warmup_steps=warmup_steps, local_clipnorm=local_clipnorm,
            min_compress_size=min_compress_size)
        # The wrapper's own learning rate is unused: `learning_rate` is the inner one's.
        super().__init__(config, 0.0, name)
        self.inner_optimizer = inner

    def build(self, var_list):
        if not getattr(self, "_built", False):
            with tf.init_scope():
                self.inner_optimizer.build(var_list)
        super().build(var_list)

    def _make_slots(self, var):
        if self.compressor_config.is_compressed(var.shape.as_list()):
            return DGCSlots(True, None, self._add_replica_local(var, "ef_residual"))
        return DGCSlots(False, None, None)

    def _clip_gradients(self, grads):
        # The inner optimizer's clipping, on each replica's gradients before the exchange.
        return self.inner_optimizer._clip_gradients(grads)

    def _compute_current_learning_rate(self):
        # A schedule is evaluated by the inner optimizer, at its own iterations.
        self.inner_optimizer._compute_current_learning_rate()

    def _inner_update(self, grad, variable, learning_rate):
        # tf_keras's update_step reads the inner optimizer's own learning rate.
        self.inner_optimizer.update_step(grad, variable)

    def _inner_iterations(self):
        return self.inner_optimizer.iterations

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        # Not the base optimizer's config: its arguments belong to the inner optimizer.
        config = {"name": self.name,
                  "inner_optimizer": tf_keras.optimizers.serialize(self.inner_optimizer)}
        config.update(self.compressor_config.as_dict())
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = tf_keras.optimizers.deserialize(config.pop("inner_optimizer"),
                                                custom_objects=custom_objects)
        return cls(inner, **config)
