"""`VGCSGD` and the micro-batch training step for tf_keras (Keras 2, `TF_USE_LEGACY_KERAS=1`)."""

import tensorflow as tf
import tf_keras

from dgc_tf.compressors.base.tf_keras import CompressorOptimizer
from dgc_tf.compressors.vgc import fit
from dgc_tf.compressors.vgc.config import VGCConfig
from dgc_tf.compressors.vgc.optimizer import VGCSGD_DOC, VGCMixin


@tf_keras.saving.register_keras_serializable(package="dgc_tf")
class VGCSGD(VGCMixin, CompressorOptimizer):
    __doc__ = VGCSGD_DOC

    SLOT_LISTS = {"momentum": "momentums", "vgc_r": "vgc_r", "vgc_s": "vgc_s"}
    COUNTER_LIST = "vgc_counters"

    def __init__(self, learning_rate=0.01, alpha=1.0, zeta=0.999, momentum=0.9,
                 nesterov=False, min_compress_size=1024, local_clipnorm=None, name="VGCSGD",
                 **kwargs):
        config = VGCConfig(alpha=alpha, zeta=zeta, momentum=momentum, nesterov=nesterov,
                           min_compress_size=min_compress_size, local_clipnorm=local_clipnorm)
        super().__init__(config, learning_rate, name, **kwargs)
        self._vgc_pending = None

    def apply_gradients(self, grads_and_vars, grad_sq_means=None, batch_size=None, name=None,
                        skip_gradients_aggregation=False, **kwargs):
        """Applies a VGC step (arguments as the Keras 3 `VGCSGD.apply_gradients`).

        `skip_gradients_aggregation` is as for the frame's tf_keras optimizers:
        the exchange is the aggregation.
        """
        grads_and_vars = list(grads_and_vars)
        self._step_inputs(grads_and_vars, grad_sq_means, batch_size, key=id)
        try:
            return super().apply_gradients(
                grads_and_vars, name=name,
                skip_gradients_aggregation=skip_gradients_aggregation, **kwargs)
        finally:
            self._vgc_pending = None


# -- model.fit -------------------------------------------------------------------


def micro_batch_train_step(model, data, num_groups):
    """tf_keras `train_step` with VGC's micro-batch estimator.

    See `fit.micro_batch_step`; this is one micro-batch the way tf_keras's own
    `train_step` computes a batch.
    """
    fit.check_optimizer(model, VGCSGD)

    def group_step(x, y, sample_weight, n, variables):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            # Scaled for the replicas, and the loss metric updated, as in `train_step`.
            loss = model.compute_loss(x, y, y_pred, sample_weight)
        model._validate_target_and_loss(y, loss)
        grads = tape.gradient(loss, variables)
        return grads, model.compute_metrics(x, y, y_pred, sample_weight)

    x, y, sample_weight = tf_keras.utils.unpack_x_y_sample_weight(data)
    return fit.micro_batch_step(model, x, y, sample_weight, num_groups, group_step)


def use_micro_batch_step(model, num_groups=4):
    """Makes `model.fit` train `model` with VGC's micro-batch estimator (returns it)."""
    return fit.use_step(model, num_groups, micro_batch_train_step)


@tf_keras.saving.register_keras_serializable(package="dgc_tf")
class VGCModel(fit.MicroBatchModel, tf_keras.Model):
    """A `tf_keras.Model` (functional or subclassed) whose `fit` feeds `VGCSGD`.

    `VGCModel(inputs, outputs, num_groups=4)`; see `micro_batch_train_step`.
    """

    micro_batch_step = staticmethod(micro_batch_train_step)

    def __init__(self, inputs=None, outputs=None, name=None, trainable=True, *, num_groups=4,
                 **kwargs):
        # tf_keras saves a functional model's layer graph only when the
        # constructor's arguments are exactly `Functional`'s (`num_groups` is
        # keyword-only, outside them).
        if inputs is not None or outputs is not None:
            kwargs.update(inputs=inputs, outputs=outputs)
        super().__init__(name=name, trainable=trainable, num_groups=num_groups, **kwargs)
