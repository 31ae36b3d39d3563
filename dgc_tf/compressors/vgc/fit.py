"""What VGC's `model.fit` integration shares across the Keras flavours.

Each flavour's `micro_batch_train_step` computes one micro-batch's loss,
gradients and metrics through its own Keras internals; everything around that
is here: the step itself (`micro_batch_step`), swapping it into a model
(`use_step`) and `MicroBatchModel`, the mixin of both flavours' `VGCModel`.
"""

import tensorflow as tf

from dgc_tf.compressors.base.step import densify
from dgc_tf.compressors.vgc.config import check_num_groups
from dgc_tf.compressors.vgc.estimator import micro_batch_moments


def check_optimizer(model, vgc_class):
    """The micro-batch step feeds `vgc_class`; anything else is refused, saying why."""
    if not isinstance(model.optimizer, vgc_class):
        # A LossScaleOptimizer (mixed precision) would drop the squared-gradient
        # estimates, and would need them unscaled by the square of the loss scale.
        raise ValueError(
            f"VGC's micro-batch step feeds a VGCSGD, but the model's optimizer is "
            f"{type(model.optimizer).__name__}. VGCSGD does not support mixed precision "
            f"(LossScaleOptimizer) yet: compile with the float32 dtype policy.")


def micro_batch_step(model, x, y, sample_weight, num_groups, group_step):
    """One `train_step` with VGC's micro-batch estimator, for either Keras flavour.

    As Keras's own `train_step`, except that the local batch is split into
    `num_groups` strided micro-batches (examples `j, j+m, ...`), one
    forward/backward each; their mean gradients give the minibatch gradient
    exactly and the estimate of `mean_b(g^2)` (`micro_batch_moments`), which
    the model's `VGCSGD` gets with them.

    Args:
      model: the model; its optimizer is checked by the caller (`check_optimizer`).
      x, y, sample_weight: the local batch, unpacked.
      num_groups: m >= 2.
      group_step: `(x, y, sample_weight, n, variables) -> (grads, logs)` for
        one micro-batch of `n` examples: the flavour's loss (scaled for the
        replicas, the loss metric updated), gradients and metrics.
    Returns:
      The metrics' logs after the last micro-batch.
    """
    variables = model.trainable_variables
    group_grads, sizes, logs = [], [], None
    for j in range(num_groups):
        px, py, psw = tf.nest.map_structure(
            lambda t: None if t is None else t[j::num_groups], (x, y, sample_weight))
        n = tf.shape(next(t for t in tf.nest.flatten(px) if t is not None))[0]
        grads, logs = group_step(px, py, psw, n, variables)
        group_grads.append([None if g is None else densify(g, v)
                            for g, v in zip(grads, variables)])
        sizes.append(n)
    grads, sq, batch = micro_batch_moments(group_grads, sizes)
    pairs = [(g, v, q) for g, v, q in zip(grads, variables, sq) if g is not None]
    model.optimizer.apply_gradients([(g, v) for g, v, _ in pairs],
                                    grad_sq_means=[q for _, _, q in pairs], batch_size=batch)
    return logs


def use_step(model, num_groups, micro_batch_train_step):
    """Makes `model.fit` run `micro_batch_train_step(model, data, num_groups)` (returns `model`)."""
    check_num_groups(num_groups)
    model.train_step = lambda data: micro_batch_train_step(model, data, num_groups)
    if getattr(model, "train_function", None) is not None:
        model.train_function = None  # rebuilt around the new step by the next fit
    return model


class MicroBatchModel:
    """Mixin of `VGCModel`: a model (functional or subclassed) whose `fit` feeds `VGCSGD`.

    The flavour's class sets `micro_batch_step` to its `micro_batch_train_step`.
    `num_groups` is part of the model's config, so it survives save and load.
    """

    micro_batch_step = None

    def __init__(self, *args, num_groups=4, **kwargs):
        check_num_groups(num_groups)
        super().__init__(*args, **kwargs)
        self.num_groups = num_groups

    def train_step(self, data):
        return type(self).micro_batch_step(self, data, self.num_groups)

    def get_config(self):
        config = super().get_config()
        config["num_groups"] = self.num_groups
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        num_groups = check_num_groups(config.pop("num_groups", 4))
        model = super().from_config(config, custom_objects=custom_objects)
        model.num_groups = num_groups
        return model
