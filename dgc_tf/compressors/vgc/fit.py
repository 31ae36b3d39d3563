"""What VGC's `model.fit` integration shares across the Keras flavours.

Each flavour's `micro_batch_train_step` runs the micro-batches through its own
Keras internals (losses, metrics); everything around it is here: the
optimizer check, the step's last phase (`apply_micro_batches`), swapping the
step into a model (`use_step`) and `MicroBatchModel`, the mixin of both
flavours' `VGCModel`.
"""

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


def apply_micro_batches(optimizer, variables, group_grads, sizes):
    """The step's last phase: the moments of the micro-batch gradients, applied.

    Args:
      optimizer: the model's `VGCSGD`.
      variables: the trainable variables.
      group_grads: per micro-batch, its dense mean gradients (None where a
        variable got no gradient).
      sizes: the micro-batches' example counts.
    """
    grads, sq, batch = micro_batch_moments(group_grads, sizes)
    pairs = [(g, v, q) for g, v, q in zip(grads, variables, sq) if g is not None]
    optimizer.apply_gradients([(g, v) for g, v, _ in pairs],
                              grad_sq_means=[q for _, _, q in pairs], batch_size=batch)


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
