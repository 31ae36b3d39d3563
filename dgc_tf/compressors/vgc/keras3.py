"""`VGCSGD` and the micro-batch training step for Keras 3 (TensorFlow backend)."""

import keras
import tensorflow as tf

from dgc_tf.compressors.base.keras3 import CompressorOptimizer, tf_variable
from dgc_tf.compressors.base.step import densify
from dgc_tf.compressors.vgc.config import VGCConfig, check_num_groups
from dgc_tf.compressors.vgc.estimator import micro_batch_moments
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

    As Keras's own `train_step`, except that the local batch is split into
    `num_groups` strided micro-batches, one forward/backward each; their mean
    gradients give the minibatch gradient exactly and the estimate of
    `mean_b(g^2)` (see `micro_batch_moments`).
    """
    from keras.src import tree
    from keras.src.losses import loss as loss_module
    from keras.src.trainers.data_adapters import data_adapter_utils

    if not isinstance(model.optimizer, VGCSGD):
        # A LossScaleOptimizer (mixed precision) would drop the squared-gradient
        # estimates, and would need them unscaled by the square of the loss scale.
        raise ValueError(
            f"VGC's micro-batch step feeds a VGCSGD, but the model's optimizer is "
            f"{type(model.optimizer).__name__}. VGCSGD does not support mixed precision "
            f"(LossScaleOptimizer) yet: compile with the float32 dtype policy.")
    x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
    trainable = model.trainable_weights
    group_grads, sizes, logs = [], [], None
    for j in range(num_groups):
        part = tree.map_structure(lambda t: None if t is None else t[j::num_groups],
                                  (x, y, sample_weight))
        px, py, psw = part
        n = tf.shape(next(i for i in tree.flatten(px) if i is not None))[0]
        with tf.GradientTape() as tape:
            y_pred = model(px, training=True) if model._call_has_training_arg else model(px)
            loss = model._compute_loss(x=px, y=py, y_pred=y_pred, sample_weight=psw,
                                       training=True)
            model._loss_tracker.update_state(
                loss_module.unscale_loss_for_distribution(loss), sample_weight=n)
            loss = model.optimizer.scale_loss(loss)
        grads = tape.gradient(loss, trainable)
        group_grads.append([None if g is None else densify(g, tf_variable(v))
                            for g, v in zip(grads, trainable)])
        sizes.append(n)
        logs = model.compute_metrics(px, py, y_pred, sample_weight=psw)
    grads, sq, batch = micro_batch_moments(group_grads, sizes)
    pairs = [(g, v, q) for g, v, q in zip(grads, trainable, sq) if g is not None]
    model.optimizer.apply_gradients([(g, v) for g, v, _ in pairs],
                                    grad_sq_means=[q for _, _, q in pairs], batch_size=batch)
    return logs


def use_micro_batch_step(model, num_groups=4):
    """Makes `model.fit` train `model` with VGC's micro-batch estimator (returns it)."""
    check_num_groups(num_groups)
    model.train_step = lambda data: micro_batch_train_step(model, data, num_groups)
    if getattr(model, "train_function", None) is not None:
        model.train_function = None  # rebuilt around the new step by the next fit
    return model


@keras.saving.register_keras_serializable(package="dgc_tf")
class VGCModel(keras.Model):
    """A `keras.Model` (functional or subclassed) whose `fit` feeds `VGCSGD`.

    `VGCModel(inputs, outputs, num_groups=4)`; see `micro_batch_train_step`.
    """

    def __init__(self, *args, num_groups=4, **kwargs):
        check_num_groups(num_groups)
        super().__init__(*args, **kwargs)
        self.num_groups = num_groups

    def train_step(self, data):
        return micro_batch_train_step(self, data, self.num_groups)

    def get_config(self):
        config = super().get_config()
        config["num_groups"] = self.num_groups
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        num_groups = config.pop("num_groups", 4)
        model = super().from_config(config, custom_objects=custom_objects)
        model.num_groups = check_num_groups(num_groups)
        return model
