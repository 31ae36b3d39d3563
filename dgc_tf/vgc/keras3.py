"""`VGCSGD` and the micro-batch training step for Keras 3 (TensorFlow backend)."""

import keras
import tensorflow as tf

from dgc_tf import engine
from dgc_tf import keras3 as dgc_keras3
from dgc_tf.optimizer_mixin import DGCOptimizerMixin
from dgc_tf.vgc import core
from dgc_tf.vgc.core import VGCConfig

_tf_variable = dgc_keras3._tf_variable


@keras.saving.register_keras_serializable(package="dgc_tf")
class VGCSGD(DGCOptimizerMixin, keras.optimizers.Optimizer):
    """SGD with variance-based gradient compression (Tsuzuku, Imachi, Akiba 2018).

    Per replica and compressed variable (rank >= 2, at least
    `min_compress_size` elements), with `g` the replica's minibatch gradient
    (after optional local clipping, as DGCSGD's `local_clipnorm`),
    `q` its estimate of the mean squared per-example gradient and `B` its
    local batch size:

        r += g;  s += q
        send r where r^2 > alpha * s / B;  there r = 0, s = 0;  elsewhere s *= zeta
        G = sum over replicas of what they sent
        Keras SGD (momentum, nesterov) on G;  ordinary Keras SGD on the
        summed gradient of the other variables

    `apply_gradients(grads_and_vars, grad_sq_means=..., batch_size=...)`
    takes `q` (a list aligned with the gradients; entries for uncompressed
    variables may be None) and `B`. In `model.fit` use
    `dgc_tf.vgc.VGCModel` or `dgc_tf.vgc.use_micro_batch_step(model)`; in a
    custom loop `dgc_tf.vgc.micro_batch_gradients` returns all three.
    A step with NaN/Inf on any replica is skipped everywhere.
    """

    def __init__(self, learning_rate=0.01, alpha=1.0, zeta=0.999, momentum=0.9,
                 nesterov=False, min_compress_size=1024, local_clipnorm=None, name=None,
                 **kwargs):
        vgc_config = VGCConfig(alpha=alpha, zeta=zeta, momentum=momentum, nesterov=nesterov,
                               min_compress_size=min_compress_size, local_clipnorm=local_clipnorm)
        if kwargs.get("gradient_accumulation_steps"):
            raise ValueError(
                "`gradient_accumulation_steps` is not supported by VGCSGD: VGC already "
                "accumulates unsent gradient in its residual.")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.dgc_config = vgc_config  # the name DGCOptimizerMixin reads
        self._vgc_pending = None

    @property
    def vgc_config(self):
        return self.dgc_config

    # Built outside any tf.function, as DGCSGD is.
    build = dgc_keras3.DGCSGD.build

    def _build_slots(self, variables):
        super().build(variables)
        config = self.dgc_config
        self._vgc_slots = engine.SlotTable()
        for var in variables:
            self._require_float(var, dgc_keras3._variable_label(var))
            momentum = (_tf_variable(self.add_variable_from_reference(var, "momentum"))
                        if config.momentum else None)
            if config.is_compressed(var.shape):
                r = _tf_variable(self._add_replica_local(var, "vgc_r"))
                s = _tf_variable(self._add_replica_local(var, "vgc_s"))
                self._vgc_slots.append(core.VGCSlots(True, r, s, momentum))
            else:
                self._vgc_slots.append(core.VGCSlots(False, None, None, momentum))
        self._dgc_counters = engine.StepCounters(
            **{name: self._counter(name, dtype)
               for name, dtype in engine.StepCounters.DTYPES.items()})
        self._vgc_sent = self._counter("sent_elements", "float64")
        self._vgc_compressible = self._counter("compressible_elements", "float64")

    # Mirrored counters and per-replica ON_READ/SUM buffers, exactly as DGCSGD makes them.
    _counter = dgc_keras3.DGCSGD._counter
    _add_replica_local = dgc_keras3.DGCSGD._add_replica_local

    def current_density(self):
        """Fraction of compressed elements sent so far, over all replicas and steps."""
        sent = float(self._vgc_sent.numpy())
        total = float(self._vgc_compressible.numpy())
        return sent / total if total else 0.0

    def compression_stats(self):
        stats = super().compression_stats()
        stats["sent_elements"] = float(self._vgc_sent.numpy())
        stats["density"] = self.current_density()
        return stats

    # -- the step ---------------------------------------------------------------

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
        if grad_sq_means is None or batch_size is None:
            raise ValueError(
                "VGCSGD.apply_gradients needs `grad_sq_means` and `batch_size` (the estimate "
                "of the mean squared per-example gradient and the local batch size). In "
                "`model.fit` build the model as `dgc_tf.vgc.VGCModel` or call "
                "`dgc_tf.vgc.use_micro_batch_step(model)`; in a custom loop use "
                "`dgc_tf.vgc.micro_batch_gradients`.")
        grad_sq_means = list(grad_sq_means)
        if len(grad_sq_means) != len(grads_and_vars):
            raise ValueError(
                f"`grad_sq_means` has {len(grad_sq_means)} entries for "
                f"{len(grads_and_vars)} gradients.")
        self._vgc_pending = ({id(v): q for (_, v), q in zip(grads_and_vars, grad_sq_means)},
                             batch_size)
        try:
            return super().apply_gradients(grads_and_vars)
        finally:
            self._vgc_pending = None

    def _apply_weight_decay(self, variables):
        pass  # inside the update, so that a skipped step skips it too

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if self._vgc_pending is None:
            raise ValueError("VGCSGD is applied through apply_gradients(..., grad_sq_means=..., "
                             "batch_size=...).")
        sq_by_id, batch_size = self._vgc_pending
        slots = [self._vgc_slots.at(self._get_variable_index(v)) for v in trainable_variables]
        sq = [sq_by_id.get(id(v)) for v in trainable_variables]
        variables = [_tf_variable(v) for v in trainable_variables]
        exchanged = core.compress_and_exchange(
            self.dgc_config, grads, sq, batch_size, variables, slots)
        exchanged = core.densify_momentum_updates(exchanged, variables, slots)
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._apply_exchanged, self._distribution_strategy, variables, slots,
            exchanged, learning_rate)

    def _apply_exchanged(self, distribution, variables, slots, exchanged, learning_rate):
        engine.apply_updates(distribution, self.dgc_config, variables, core.engine_slots(slots),
                             exchanged, learning_rate, self._weight_decay_for)
        self._dgc_counters.record(distribution, exchanged)
        core.record_sent(distribution, self._vgc_sent, self._vgc_compressible, exchanged)

    def get_config(self):
        config = super().get_config()
        config.update(self.dgc_config.as_dict())
        return config


# -- model.fit -------------------------------------------------------------------


def micro_batch_train_step(model, data, num_groups):
    """Keras 3 (TF backend) `train_step` with VGC's micro-batch estimator.

    As Keras's own `train_step`, except that the local batch is split into
    `num_groups` strided micro-batches, one forward/backward each; their mean
    gradients give the minibatch gradient exactly and the estimate of
    `mean_b(g^2)` (see `core.micro_batch_moments`).
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
        group_grads.append([None if g is None else engine.densify(g, _tf_variable(v))
                            for g, v in zip(grads, trainable)])
        sizes.append(n)
        logs = model.compute_metrics(px, py, y_pred, sample_weight=psw)
    grads, sq, batch = core.micro_batch_moments(group_grads, sizes)
    pairs = [(g, v, q) for g, v, q in zip(grads, trainable, sq) if g is not None]
    model.optimizer.apply_gradients([(g, v) for g, v, _ in pairs],
                                    grad_sq_means=[q for _, _, q in pairs], batch_size=batch)
    return logs


def use_micro_batch_step(model, num_groups=4):
    """Makes `model.fit` train `model` with VGC's micro-batch estimator (returns it)."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 2:
        raise ValueError(f"`num_groups` must be an integer >= 2, got {num_groups!r}.")
    model.train_step = lambda data: micro_batch_train_step(model, data, num_groups)
    if getattr(model, "train_function", None) is not None:
        model.train_function = None  # rebuilt around the new step by the next fit
    return model


class VGCModel(keras.Model):
    """A `keras.Model` (functional or subclassed) whose `fit` feeds `VGCSGD`.

    `VGCModel(inputs, outputs, num_groups=4)`; see `micro_batch_train_step`.
    """

    def __init__(self, *args, num_groups=4, **kwargs):
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 2:
            raise ValueError(f"`num_groups` must be an integer >= 2, got {num_groups!r}.")
        super().__init__(*args, **kwargs)
        self.num_groups = num_groups

    def train_step(self, data):
        return micro_batch_train_step(self, data, self.num_groups)
