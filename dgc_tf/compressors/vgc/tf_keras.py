"""`VGCSGD` and the micro-batch training step for tf_keras (Keras 2, `TF_USE_LEGACY_KERAS=1`)."""

import tensorflow as tf
import tf_keras

from dgc_tf.compressors.base.step import densify
from dgc_tf.compressors.base.tf_keras import CompressorOptimizer
from dgc_tf.compressors.vgc.config import VGCConfig, check_num_groups
from dgc_tf.compressors.vgc.estimator import micro_batch_moments
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

    As tf_keras's own `train_step`, except that the local batch is split into
    `num_groups` strided micro-batches, one forward/backward each; their mean
    gradients give the minibatch gradient exactly and the estimate of
    `mean_b(g^2)` (see `micro_batch_moments`).
    """
    if not isinstance(model.optimizer, VGCSGD):
        # A LossScaleOptimizer (mixed precision) would drop the squared-gradient
        # estimates, and would need them unscaled by the square of the loss scale.
        raise ValueError(
            f"VGC's micro-batch step feeds a VGCSGD, but the model's optimizer is "
            f"{type(model.optimizer).__name__}. VGCSGD does not support mixed precision "
            f"(LossScaleOptimizer) yet: compile with the float32 dtype policy.")
    x, y, sample_weight = tf_keras.utils.unpack_x_y_sample_weight(data)
    trainable = model.trainable_variables
    group_grads, sizes, logs = [], [], None
    for j in range(num_groups):
        px, py, psw = tf.nest.map_structure(
            lambda t: None if t is None else t[j::num_groups], (x, y, sample_weight))
        n = tf.shape(tf.nest.flatten(px)[0])[0]
        with tf.GradientTape() as tape:
            y_pred = model(px, training=True)
            # Scaled for the replicas, and the loss metric updated, as in `train_step`.
            loss = model.compute_loss(px, py, y_pred, psw)
        model._validate_target_and_loss(py, loss)
        grads = tape.gradient(loss, trainable)
        group_grads.append([None if g is None else densify(g, v)
                            for g, v in zip(grads, trainable)])
        sizes.append(n)
        logs = model.compute_metrics(px, py, y_pred, psw)
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


@tf_keras.saving.register_keras_serializable(package="dgc_tf")
class VGCModel(tf_keras.Model):
    """A `tf_keras.Model` (functional or subclassed) whose `fit` feeds `VGCSGD`.

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
