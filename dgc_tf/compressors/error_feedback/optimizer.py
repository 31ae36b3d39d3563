"""What the Keras 3 and tf_keras `TopKErrorFeedback` classes share: the
docstring, argument checks and `ErrorFeedbackMixin` (the cross-replica apply
through the wrapped optimizer)."""

import tensorflow as tf

from dgc_tf.compressors.base import step as frame
from dgc_tf.compressors.dgc import compression as dgc_compression
from dgc_tf.compressors.dgc import replica as dgc_replica
from dgc_tf.compressors.error_feedback import compression
from dgc_tf.compressors.error_feedback.config import ErrorFeedbackConfig

TOPK_ERROR_FEEDBACK_DOC = r"""Error-feedback top-k compression around any Keras optimizer.

Wraps `inner_optimizer` (Adam, AdamW, RMSprop, SGD, ...) the way
`keras.optimizers.LossScaleOptimizer` does: each replica adds its gradient to
a replica-local residual, sends only the `compress_ratio` fraction of the
residual largest in magnitude (DGC's selection and exchange), and zeroes what
it sent; every replica then hands the same summed sparse gradient to the
inner optimizer, which applies it with its own state, learning rate,
schedule, weight decay and clipping.

Per replica k, for a compressed variable (rank >= 2 and at least
`min_compress_size` elements), with `g` the replica's gradient:

    e_k = e_k + g                              # error feedback
    S_k = top-k of |e_k|, k = max(1, ceil(density * size))
    e_k[S_k] = 0
    G   = sum_k e_k[S_k]                       # dense zeros elsewhere
    inner_optimizer.update_step(G, w)          # the same on every replica

Other variables are summed densely and the inner optimizer applies them as
it would without compression. The gradient applied is the SUM over replicas,
exactly what a Keras optimizer applies under tf.distribute: Keras divides each
replica's loss by the number of replicas, so that sum is the global-batch
mean. With `compress_ratio=1.0` this optimizer equals `inner_optimizer`.

The inner optimizer's `clipnorm`, `clipvalue` and `global_clipnorm` act where
Keras puts them, on each replica's gradient before the exchange (here: before
it enters the residual); its `weight_decay` before its update. Its
`iterations` count applied steps (Adam's bias correction), as under
`LossScaleOptimizer`; this optimizer's `iterations` count all steps and
drive the warm-up. `learning_rate` reads and sets the inner optimizer's.

What it does not do (and DGC does): momentum correction. The inner
optimizer's moments see a sparse, bursty gradient: an entry is zero for many
steps, then arrives with all its accumulated mass at once, so Adam's second
moment grows with the burst and its first moment decays between them. See the
README's measurements.

If any replica's gradients contain NaN or Inf, the step is skipped on every
replica (weights, residuals and the inner optimizer's state untouched) and
`skipped_steps` is incremented. The selection op has no XLA kernel: compile
the model with `jit_compile=False`.

Args:
  inner_optimizer: the Keras optimizer that applies the exchanged gradient
    (an instance, or a name / config `keras.optimizers.get` accepts). Its
    `use_ema`, `gradient_accumulation_steps` and `loss_scale_factor` are not
    supported (refused).
  compress_ratio: fraction sent per step after warm-up, in (0, 1]. 0.001
    (99.9% sparsity) by default; 1.0 sends everything.
  sample_ratio: fraction of a variable sampled to choose the selection
    threshold, in (0, 1]. Affects speed only, never which entries are sent.
  warmup_steps: DGC's exponential sparsity warm-up, in optimizer steps (>= 0):
    densities 0.25, 0.0625, 0.015625, 0.00390625 in four equal stages.
  local_clipnorm: optional float > 0; DGC's local clipping of each replica's
    gradient list to `local_clipnorm / sqrt(num_replicas)`.
  min_compress_size: variables with fewer elements are exchanged densely.
  name: the optimizer's name.

Example:

    optimizer = dgc_tf.TopKErrorFeedback(keras.optimizers.Adam(1e-3),
                                         compress_ratio=0.001, warmup_steps=500)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  jit_compile=False)
"""

# Base-optimizer arguments that belong to the inner optimizer, with their
# defaults (a deserialized config may carry them at those values).
_INNER_ARGUMENTS = {"weight_decay": None, "clipnorm": None, "global_clipnorm": None,
                    "clipvalue": None, "use_ema": False, "ema_momentum": 0.99,
                    "ema_overwrite_frequency": None, "loss_scale_factor": None,
                    "gradient_accumulation_steps": None}


def validated(inner_optimizer, keras_optimizers, kwargs, **config_arguments):
    """The validated `(ErrorFeedbackConfig, inner optimizer)` for a constructor.

    Args:
      inner_optimizer: what the user passed (an optimizer, a name or a config).
      keras_optimizers: the flavour's `optimizers` module (`get`, `Optimizer`).
      kwargs: the constructor's other keyword arguments (consumed).
      **config_arguments: the constructor's compression arguments.
    Raises:
      ValueError: naming the argument and what it accepts, before Keras sees anything.
    """
    config = ErrorFeedbackConfig(**config_arguments, **ErrorFeedbackConfig.inner_owned(kwargs))
    check_arguments(kwargs)
    inner = check_inner(keras_optimizers.get(inner_optimizer), keras_optimizers.Optimizer)
    return config, inner


def check_arguments(kwargs):
    """Refuses base-optimizer arguments that belong to the inner optimizer, naming them."""
    for name, default in _INNER_ARGUMENTS.items():
        if name in kwargs and kwargs.pop(name) != default:
            raise ValueError(
                f"TopKErrorFeedback does not take `{name}`: set it on the inner_optimizer, "
                "which applies the exchanged gradient.")
    if kwargs:
        raise ValueError(f"TopKErrorFeedback got unexpected arguments: {sorted(kwargs)}.")


def check_inner(inner, optimizer_class):
    """`inner` if it is an optimizer this wrapper can drive, else a ValueError saying why."""
    if not isinstance(inner, optimizer_class) or isinstance(inner, frame_optimizers()):
        raise ValueError(
            "`inner_optimizer` must be a plain Keras optimizer (Adam, AdamW, SGD, ...), got "
            f"{type(inner).__name__}: compressors and loss-scale wrappers go outside, not inside.")
    for name in ("use_ema", "gradient_accumulation_steps", "loss_scale_factor"):
        if getattr(inner, name, None):
            raise ValueError(
                f"TopKErrorFeedback does not support the inner optimizer's `{name}` (got "
                f"{getattr(inner, name)!r}): the wrapper applies the exchanged gradient through "
                "its `update_step` only. Wrap TopKErrorFeedback in a LossScaleOptimizer for "
                "loss scaling.")
    return inner


def frame_optimizers():
    """Optimizer classes that cannot be an inner optimizer: compressors and loss-scale wrappers."""
    from dgc_tf.compressors.base.optimizer import CompressorMixin

    classes = [CompressorMixin]
    for module in ("keras", "tf_keras"):
        try:
            classes.append(__import__(module).mixed_precision.LossScaleOptimizer)
        except (ImportError, AttributeError):
            pass
    return tuple(classes)


class ErrorFeedbackMixin:
    """What TopKErrorFeedback adds to the frame in both Keras flavours.

    Expects `self.inner_optimizer` and the frame's state; the replica step is
    DGC's with the momentum factor at 0 (`ErrorFeedbackConfig`), the apply is
    the inner optimizer's `update_step` on the dense exchanged sum.
    """

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    def current_density(self):
        """The density the next step will send (warm-up included), as a float."""
        config = self.compressor_config
        return float(dgc_compression.density_at(
            int(self.iterations.numpy()), config.compress_ratio, config.warmup_steps).numpy())

    def _compress_and_exchange(self, grads, variables, slots):
        # The frame's guards first, so that their errors name this class.
        frame.check_not_xla(f"{type(self).__name__} cannot run inside an XLA-compiled "
                            "function: its top-k selection op has no XLA kernel")
        frame.replica_context(type(self).__name__)
        return dgc_replica.compress_and_exchange(
            self.compressor_config, grads, variables, slots, self._iterations)

    def _weight_decay_for(self, variable):
        inner = self.inner_optimizer
        if inner.weight_decay is not None and inner._use_weight_decay(variable):
            return inner.weight_decay
        return None

    def _apply_updates(self, distribution, variables, slots, exchanged, learning_rate):
        """Cross-replica: the inner optimizer applies the exchanged sum (the frame counts).

        On a skipped step nothing is applied and the inner optimizer's
        `iterations` stay (Adam's bias correction counts applied steps).
        """
        for var, update in zip(variables, exchanged.updates):
            decay = self._weight_decay_for(var)

            def apply_one(var, update, ok, learning_rate, decay=decay):
                def step():
                    lr = tf.cast(learning_rate, var.dtype)
                    if decay:  # decoupled, before the update, as Keras does
                        var.assign_sub(var * (lr * tf.cast(decay, var.dtype)))
                    self._inner_update(compression.summed_gradient(update, var.shape), var, lr)
                    return tf.constant(True)

                return tf.cond(ok, step, lambda: tf.constant(False))

            distribution.extended.update(
                var, apply_one, args=(update, exchanged.ok, learning_rate), group=False)
        distribution.extended.update(
            self._inner_iterations(), lambda it, ok: it.assign_add(tf.cast(ok, it.dtype)),
            args=(exchanged.ok,), group=False)

    def _inner_update(self, grad, variable, learning_rate):
        """The inner optimizer's own update of one variable (per device)."""
        raise NotImplementedError

    def _inner_iterations(self):
        """The inner optimizer's step counter as a tf.Variable."""
        raise NotImplementedError
