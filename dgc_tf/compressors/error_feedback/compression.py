"""Error-feedback top-k's math as small pure functions on tensors.

Per replica k and compressed variable, with `g` its gradient (scaled, as
tf.distribute scales it, so that the sum over replicas is the global-batch
mean) and `e` its residual:

    e        = accumulate(e, g)                      # e + g
    val, idx = select(e, k)                          # top-k of |e| (DGC's selection)
    e        = zero_sent(e, idx)                     # what was sent leaves the residual
    G        = summed_gradient(sum_k (val, idx), shape)
    w, state = inner_optimizer(w, G, state)          # Adam, SGD, ... on the dense G

The first three are DGC's steps with the momentum factor at 0, and the replica
step is DGC's (`dgc_tf.compressors.dgc.replica`, one fused in-place op); these
functions are the specification both are tested against. What is this
method's own is the last line: the exchanged sum is handed, as a dense
gradient, to an ordinary Keras optimizer.
"""

import tensorflow as tf

from dgc_tf.compressors.dgc import compression as dgc
from dgc_tf.ops import scatter

__all__ = ["accumulate", "select", "zero_sent", "summed_gradient"]

select = dgc.select


def accumulate(residual, grad):
    """The residual plus this step's gradient (error feedback: nothing unsent is dropped)."""
    return residual + grad


def zero_sent(residual, indices):
    """The residual with the sent flat `indices` zeroed: they now live in the weights."""
    _, residual = dgc.mask_sent(None, residual, indices, momentum_masking=False)
    return residual


def summed_gradient(update, shape):
    """The exchanged update as a dense gradient of `shape`, for the wrapped optimizer.

    Args:
      update: a flat `tf.IndexedSlices` (every replica's sent entries; an index
        sent by several replicas appears once per sender and is summed here)
        or, for a variable exchanged densely, the summed dense gradient.
      shape: the variable's static shape.
    Returns:
      A dense tensor of `shape`: zero wherever no replica sent an entry.
    """
    if not isinstance(update, tf.IndexedSlices):
        return update
    return tf.reshape(scatter.dense_at(update.values, update.indices, shape.num_elements()),
                      shape)
