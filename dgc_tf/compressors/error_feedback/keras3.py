"""`TopKErrorFeedback` for Keras 3 (the `keras` package, TensorFlow backend)."""

import keras
import tensorflow as tf
from keras.src.saving import serialization_lib

from dgc_tf.compressors.base.keras3 import CompressorOptimizer, tf_variable
from dgc_tf.compressors.dgc.replica import DGCSlots
from dgc_tf.compressors.error_feedback.optimizer import (TOPK_ERROR_FEEDBACK_DOC,
                                                         ErrorFeedbackMixin, validated)


@keras.saving.register_keras_serializable(package="dgc_tf")
class TopKErrorFeedback(ErrorFeedbackMixin, CompressorOptimizer):
    __doc__ = TOPK_ERROR_FEEDBACK_DOC

    def __init__(
        self,
        inner_optimizer,
        compress_ratio=0.001,
        sample_ratio=0.01,
        warmup_steps=0,
        local_clipnorm=None,
        min_compress_size=1024,
        name=None,
        **kwargs,
    ):
        # Validate before Keras sees anything, so bad input fails early and clearly.
        config, inner = validated(
            inner_optimizer, keras.optimizers, kwargs, compress_ratio=compress_ratio,
            sample_ratio=sample_ratio, warmup_steps=warmup_steps, local_clipnorm=local_clipnorm,
            min_compress_size=min_compress_size)
        # The wrapper's own learning rate is unused: `learning_rate` is the inner one's.
        super().__init__(config, 0.0, name=name)
        self.inner_optimizer = inner

    def build(self, variables):
        if self.built:
            return
        with tf.init_scope():
            self.inner_optimizer.build(variables)
        super().build(variables)

    @property
    def variables(self):
        # Saved and restored with the model (`model.save`), as LossScaleOptimizer's.
        return self._variables + self.inner_optimizer.variables

    def _make_slots(self, var):
        if self.compressor_config.is_compressed(var.shape):
            return DGCSlots(True, None, self._add_replica_local(var, "ef_residual"))
        return DGCSlots(False, None, None)

    def _clip_gradients(self, grads):
        # The inner optimizer's clipping, where Keras applies it: on each
        # replica's gradients, before they are exchanged (here: accumulated).
        return self.inner_optimizer._clip_gradients(grads)

    def _inner_update(self, grad, variable, learning_rate):
        self.inner_optimizer.update_step(grad, variable, learning_rate)

    def _inner_iterations(self):
        return tf_variable(self.inner_optimizer.iterations)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        # Not the base optimizer's config: its arguments belong to the inner optimizer.
        config = {"name": self.name,
                  "inner_optimizer": serialization_lib.serialize_keras_object(
                      self.inner_optimizer)}
        config.update(self.compressor_config.as_dict())
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = serialization_lib.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects)
        return cls(inner, **config)
