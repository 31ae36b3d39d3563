"""What the Keras 3 and tf_keras `VGCSGD` classes share: the docstring and `VGCMixin`."""

from dgc_tf.compressors.vgc import replica

VGCSGD_DOC = r"""SGD with variance-based gradient compression (Tsuzuku, Imachi, Akiba 2018).

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

Args:
  learning_rate: float, schedule or callable. Defaults to 0.01.
  alpha: send an element when `r^2 > alpha * s / B`; >= 0. Defaults to 1.0.
  zeta: decay of `s` on the elements not sent, in [0, 1]. Defaults to 0.999.
  momentum: momentum factor in [0, 1) of the SGD applied to the summed update.
  nesterov: Nesterov momentum. Defaults to False.
  min_compress_size: variables with fewer elements are not compressed.
  local_clipnorm: optional float > 0; local gradient clipping threshold.
  **kwargs: other Keras optimizer arguments (`weight_decay`, `clipnorm`, `name`, ...).
"""

_NEEDS_ESTIMATES = (
    "VGCSGD.apply_gradients needs `grad_sq_means` and `batch_size` (the estimate of the mean "
    "squared per-example gradient and the local batch size). In `model.fit` build the model "
    "as `dgc_tf.vgc.VGCModel` or call `dgc_tf.vgc.use_micro_batch_step(model)`; in a custom "
    "loop use `dgc_tf.vgc.micro_batch_gradients`.")


class VGCMixin:
    """What VGCSGD adds to the frame in both Keras flavours.

    Its step needs two inputs besides the gradients; `apply_gradients` takes
    them (`_step_inputs`) and the replica step reads them back by variable
    (`_pending_inputs`), since Keras passes only gradients between the two.
    """

    @property
    def vgc_config(self):
        """The validated `VGCConfig`."""
        return self.compressor_config

    def _make_slots(self, var):
        config = self.compressor_config
        momentum = self._add_mirrored(var, "momentum") if config.momentum else None
        if config.is_compressed(tuple(var.shape)):
            r = self._add_replica_local(var, "vgc_r")
            s = self._add_replica_local(var, "vgc_s")
            return replica.VGCSlots(True, r, s, momentum)
        return replica.VGCSlots(False, None, None, momentum)

    def _build_method_counters(self):
        self._vgc_sent = self._counter("sent_elements", "float64")
        self._vgc_compressible = self._counter("compressible_elements", "float64")

    def current_density(self):
        """Fraction of compressed elements sent so far, over all replicas and steps."""
        sent = float(self._vgc_sent.numpy())
        total = float(self._vgc_compressible.numpy())
        return sent / total if total else 0.0

    def _method_stats(self):
        return {"sent_elements": float(self._vgc_sent.numpy())}

    def _record_step(self, distribution, exchanged):
        replica.record_sent(distribution, self._vgc_sent, self._vgc_compressible, exchanged)

    # -- the step's extra inputs ----------------------------------------------------

    def _step_inputs(self, grads_and_vars, grad_sq_means, batch_size, key):
        """Validates `apply_gradients`' extra arguments; keeps them by `key(variable)`."""
        if grad_sq_means is None or batch_size is None:
            raise ValueError(_NEEDS_ESTIMATES)
        grad_sq_means = list(grad_sq_means)
        if len(grad_sq_means) != len(grads_and_vars):
            raise ValueError(
                f"`grad_sq_means` has {len(grad_sq_means)} entries for "
                f"{len(grads_and_vars)} gradients.")
        self._vgc_pending = ({key(v): q for (_, v), q in zip(grads_and_vars, grad_sq_means)},
                             batch_size)

    def _compress_and_exchange(self, grads, variables, slots):
        if getattr(self, "_vgc_pending", None) is None:
            raise ValueError(_NEEDS_ESTIMATES)
        sq_by_id, batch_size = self._vgc_pending
        sq = [sq_by_id.get(id(v)) for v in variables]
        exchanged = replica.compress_and_exchange(
            self.compressor_config, grads, sq, batch_size, variables, slots)
        return replica.densify_momentum_updates(exchanged, variables, slots)
