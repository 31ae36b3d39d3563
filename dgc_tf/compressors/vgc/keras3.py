"""`VGCSGD` and the micro-batch training step for Keras 3 (TensorFlow backend)."""

import keras
import tensorflow as tf

from dgc_tf.compressors.base.keras3 import CompressorOptimizer, tf_variable
from dgc_tf.compressors.vgc import fit
from dgc_tf.compressors.vgc.config import VGCConfig
from dgc_tf.compressors.vgc.optimizer import VGCSGD_DOC, VGCMixin


@keras.saving.register_keras_serializable(package="dgc_tf")
class VGCSGD(VGCMixin, CompressorOptimizer):
    __doc__ = VGCSGD_DOC

    def __init__(self, learning_rate=0.01, alpha=1.0, zeta=0.999, momentum=0.9,
                 nesterov=False, min_compress_size=1024, local_clipnorm=None, name=None,
                 **kwargs):
        config = VGCConfig(alpha=alpha, zeta=zeta, momentum=momentum, nesterov=nesterov,
                           min_compress_size=min_compress_size, local_clipnorm=local_clipnorm)
        super().__init__(config, learning_rate, name=name, **kwargs)
        self._vgc_pending = None

    def apply_gradients(self, grads_and_vars, grad_sq_means=None, batch_size=None):
        """Applies a VGC step.

        Args:
          grads_and_vars: `(gradient, variable)` pairs: this replica's minibatch
            mean gradients (scaled as Keras scales them for replicas).
          grad_sq_means: estimates of the mean squared per-example gradient,
            aligned with `grads_and_vars`, in the same scale as the gradients;
            required for compressed variables (None elsewhere is fine).
          batch_size: this replica's batch size B (int or scalar tensor).
        """
        grads_and_vars = list(grads_and_vars)
        self._step_inputs(grads_and_vars, grad_sq_means, batch_size,
                          key=lambda v: id(tf_variable(v)))
        try:
            return super().apply_gradients(grads_and_vars)
        finally:
            self._vgc_pending = None


# -- model.fit -------------------------------------------------------------------


def micro_batch_train_step(model, data, num_groups):
    """Keras 3 (TF backend) `train_step` with VGC's micro-batch estimator.

    See `fit.micro_batch_step`; this is one micro-batch the way Keras 3's own
    `train_step` computes a batch.
    """
    from keras.src.losses import loss as loss_module
    from keras.src.trainers.data_adapters import data_adapter_utils

    fit.check_optimizer(model, VGCSGD)

    def group_step(x, y, sample_weight, n, variables):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True) if model._call_has_training_arg else model(x)
            loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                       training=True)
            model._loss_tracker.update_state(
                loss_module.unscale_loss_for_distribution(loss), sample_weight=n)
            loss = model.optimizer.scale_loss(loss)
        grads = tape.gradient(loss, variables)
        return grads, model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
    return fit.micro_batch_step(model, x, y, sample_weight, num_groups, group_step)


def use_micro_batch_step(model, num_groups=4):
    """Makes `model.fit` train `model` with VGC's micro-batch estimator (returns it)."""
    return fit.use_step(model, num_groups, micro_batch_train_step)


@keras.saving.register_keras_serializable(package="dgc_tf")
class VGCModel(fit.MicroBatchModel, keras.Model):
    """A `keras.Model` (functional or subclassed) whose `fit` feeds `VGCSGD`.

    `VGCModel(inputs, outputs, num_groups=4)`; see `micro_batch_train_step`.
    """

    micro_batch_step = staticmethod(micro_batch_train_step)
