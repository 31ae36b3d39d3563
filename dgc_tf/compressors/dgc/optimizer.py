"""What the Keras 3 and tf_keras `DGCSGD` classes share: the docstring and `DGCMixin`."""

from dgc_tf.compressors.dgc import compression

DGCSGD_DOC = r"""SGD with Deep Gradient Compression (Lin et al., ICLR 2018).

Each replica sends only the `compress_ratio` fraction of its accumulated
gradient largest in magnitude; the rest stays in a replica-local residual
until it grows large enough. Momentum is corrected so it survives the
sparsification, and the momentum of sent entries is masked.

Update rule, per replica k, for a compressed variable (rank >= 2 and at least
`min_compress_size` elements), with `g` the replica's gradient after optional
local clipping to `local_clipnorm / sqrt(num_replicas)`:

    u_k = momentum * u_k + g                    # Nesterov: u_k = momentum * (u_k + g)
    v_k = v_k + u_k                             # Nesterov: v_k = v_k + u_k + g
    S_k = top-k of |v_k|, k = max(1, ceil(density * size))
    v_k[S_k] = 0;  u_k[S_k] = 0 (if momentum_masking)
    w   = w - learning_rate * sum_k v_k[S_k]    # the same on every replica

All other variables get exactly `keras.optimizers.SGD`'s update on the summed
gradient. `weight_decay` (decoupled, Keras semantics) is applied to every
variable before the update. `density` is `compress_ratio` after the first
`warmup_steps` steps; during them it follows the paper's schedule
0.25, 0.0625, 0.015625, 0.00390625 in four equal stages (never below
`compress_ratio`).

If any replica's gradients contain NaN or Inf, the whole step is skipped on
every replica (weights, residuals and momenta untouched) and
`skipped_steps` is incremented; `iterations` still advances.

Under a `tf.distribute` strategy the residual and momentum of compressed
variables are `ON_READ` variables: each replica keeps its own. A checkpoint
stores their sum over replicas (restoring gives each replica an equal share),
so the total pending gradient survives; single-replica runs restore exactly.
The selection op has no XLA kernel: compile the model with
`jit_compile=False`.

Args:
  learning_rate: float, schedule or callable. Defaults to 0.01.
  momentum: momentum factor in [0, 1). Defaults to 0.9.
  nesterov: use Nesterov momentum correction. Defaults to False.
  compress_ratio: fraction sent per step after warm-up, in (0, 1]. 0.001
    (99.9% sparsity) by default; 1.0 sends everything.
  sample_ratio: fraction of a variable sampled to choose the selection
    threshold, in (0, 1]. Affects speed only, never which entries are sent.
  warmup_steps: length of the sparsity warm-up in optimizer steps (>= 0).
  momentum_masking: zero the momentum of sent entries. Defaults to True.
  local_clipnorm: optional float > 0; local gradient clipping threshold.
  min_compress_size: variables with fewer elements are not compressed.
  **kwargs: other Keras optimizer arguments (`weight_decay`, `clipnorm`,
    `global_clipnorm`, `name`, ...).

Example:

    model.compile(optimizer=dgc_tf.DGCSGD(learning_rate=0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy", jit_compile=False)
"""


class DGCMixin:
    """What DGCSGD adds to the frame in both Keras flavours."""

    @property
    def dgc_config(self):
        """The validated `DGCConfig`."""
        return self.compressor_config

    def current_density(self):
        """The density the next step will send (warm-up included), as a float."""
        config = self.compressor_config
        return float(compression.density_at(
            int(self.iterations.numpy()), config.compress_ratio, config.warmup_steps).numpy())
