"""Variance-based gradient compression (VGC): Tsuzuku, Imachi, Akiba, ICLR 2018
workshop, arXiv 1802.06058.

Where DGC sends a fixed top fraction of each accumulated gradient, VGC delays
every element until it is *unambiguous*: large against its own noise.

The algorithm (per worker k, per compressed variable, element-wise):

    r_k += mean_b(g)                   # the worker's minibatch mean gradient
    s_k += mean_b(g^2)                 # the mean squared per-example gradient
    send r_k where  r_k^2 > alpha * s_k / B      (B: the local batch size)
    there r_k = 0, s_k = 0;  elsewhere s_k *= zeta
    G = sum over workers of the sent entries
    w = SGD-with-momentum(w, G)        # identical on every worker

`s / B` estimates the variance of `r` (the variance of a mean of B examples is
the per-example variance over B; using the second moment instead of the
variance is the paper's conservative, cheaper choice). `alpha` defaults to
1.0 and `zeta` to 0.999, as in the paper. Variables of rank < 2 or with fewer
than `min_compress_size` elements are exchanged densely, as in `DGCSGD`.

Design decisions
----------------

* **Estimator of mean_b(g^2): micro-batches.** A Keras optimizer sees only the
  minibatch gradient, and a per-example backward pass costs B passes. The
  paper computes the per-example squared sum inside the backward pass of
  fully connected and convolution layers (per-example gradients are outer
  products of inputs and output deltas); that needs a hook into every layer's
  backward pass, which Keras exposes for no layer. We split the local batch
  into m strided micro-batches (default m = 4; examples j, j+m, ...), run one
  forward/backward per micro-batch (the same arithmetic as one pass over the
  whole batch, in m smaller pieces), and from their mean gradients `gbar_j`
  (n_j examples each) compute

      mean_b(g)   = sum_j n_j gbar_j / B                        (exact)
      mean_b(g^2) ~ sum_j n_j (gbar_j - mean_b(g))^2 / (m - 1) + mean_b(g)^2

  The first term is the unbiased between-group estimate of the per-example
  variance (E = sigma^2 for i.i.d. examples, any group sizes), so the whole
  estimates E[g^2] = sigma^2 + mu^2. With m = B it is the per-example
  formula (variance with the B - 1 denominator). It is noisier than the
  paper's exact sum for small m; `alpha` absorbs the scale, the noise is
  averaged by the accumulation in `s`. Layers whose behaviour depends on the
  batch (BatchNormalization) see micro-batch statistics, like ghost batch
  norm, and update their moving statistics m times per step.
* **How it reaches the optimizer.** `VGCSGD.apply_gradients(grads_and_vars,
  grad_sq_means=..., batch_size=...)`; plain `apply_gradients` without them
  is an error naming the helpers. `model.fit`: `VGCModel(inputs, outputs,
  num_groups=4)` or `use_micro_batch_step(model, num_groups)` (Keras 3 with
  the TensorFlow backend, or tf_keras) swap in `micro_batch_train_step`. Custom loops:
  `micro_batch_gradients(loss_fn, variables, inputs, num_groups)`. Gradients
  and squares are in the caller's scale (Keras divides the loss by the number
  of replicas); the test `r^2 > alpha s / B` is invariant to that scale.
* **Momentum.** The paper combines VGC with momentum SGD applied to the
  exchanged (summed) update. We apply Keras SGD's momentum (and optional
  Nesterov) to G, with a mirrored momentum buffer, identically on every
  replica; with `momentum=0` the update is a sparse scatter `w -= lr * G`.
  With `alpha=0` every nonzero element is sent at once and VGCSGD equals
  `keras.optimizers.SGD` with the same momentum.
* **Variable-size payload.** Each replica sends a different, data-dependent
  count per variable and step. After agreeing on finiteness (one scalar, so
  that r and s are updated in place or not at all) the optimizer all-reduces
  a small size table (each replica fills its row with its counts, 2 float32
  words per variable, exact to 2^36), then pads every replica's
  entries with (0.0 at index 0) to the per-step maximum over replicas (at
  least 1) and hands them as ordinary `CompressedGradient`s plus the dense
  gradients to one `all_reduce`. Under `SparseAllGather` (and dgc_tf's
  `MultiWorkerMirroredStrategy`) that is one packed all-gather with no
  further size exchange; under any other strategy the padded entries are
  summed as `tf.IndexedSlices` (correct: padding adds zero). Reported bytes
  (`compression_stats`) count the size table and the padding.
* **Nothing lost.** With momentum 0, for every worker and compressed variable,
  (sum of what it sent) + r == (sum of its gradients).
* **State.** r and s are replica-local (`ON_READ`, `SUM`) like DGC's residual:
  a checkpoint keeps the total pending gradient across workers.

Modules
-------

- `compression`: the pure steps; `estimator`: the micro-batch estimator;
  `config`: `VGCConfig`; `replica`: the replica step on the frame;
- `keras3`, `tf_keras`: `VGCSGD`, `VGCModel`, `micro_batch_train_step` and
  `use_micro_batch_step` for each Keras flavour; `optimizer`: what both share.
"""

import importlib

from dgc_tf.compressors.vgc.config import VGCConfig
from dgc_tf.compressors.vgc.estimator import micro_batch_gradients, micro_batch_moments

__all__ = ["VGCSGD", "VGCConfig", "VGCModel", "micro_batch_gradients", "micro_batch_moments",
           "micro_batch_train_step", "use_micro_batch_step"]


def __getattr__(name):
    # Lazy, as dgc_tf.VGCSGD: the Keras flavour in use (`dgc_tf.keras_flavour()`).
    if name in ("VGCSGD", "VGCModel", "micro_batch_train_step", "use_micro_batch_step"):
        flavour = importlib.import_module("dgc_tf").keras_flavour()
        return getattr(importlib.import_module(f"dgc_tf.compressors.vgc.{flavour}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
