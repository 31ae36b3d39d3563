"""VGC's estimator of the mean squared per-example gradient, from micro-batches.

See the package docstring ("Estimator of mean_b(g^2): micro-batches") for why
and how; the Keras training steps (`keras3.micro_batch_train_step`,
`tf_keras.micro_batch_train_step`) and custom loops use these.
"""

import tensorflow as tf

from dgc_tf.compressors.base.step import densify
from dgc_tf.compressors.vgc.config import check_num_groups


def micro_batch_moments(group_grads, group_sizes):
    """`(mean_b(g), estimate of mean_b(g^2))` from m >= 2 micro-batch mean gradients.

    Args:
      group_grads: m lists of dense gradients, `group_grads[j][i]` the mean
        gradient of variable i over micro-batch j.
      group_sizes: m example counts `n_j` (tensors or ints), summing to B.
    Returns:
      `(means, sq_means, batch_size)`: per variable the exact minibatch mean
      `gbar = sum_j n_j gbar_j / B`, the estimate
      `sum_j n_j (gbar_j - gbar)^2 / (m - 1) + gbar^2` of the mean squared
      per-example gradient, and B.
    """
    m = check_num_groups(len(group_grads))
    sizes = [tf.cast(n, tf.float32) for n in group_sizes]
    batch = tf.add_n(sizes)
    means, sq_means = [], []
    for i in range(len(group_grads[0])):
        grads = [g[i] for g in group_grads]
        if any(g is None for g in grads):
            means.append(None)
            sq_means.append(None)
            continue
        dtype = grads[0].dtype
        w = [tf.cast(n, dtype) for n in sizes]
        total = tf.cast(batch, dtype)
        mean = tf.add_n([n * g for n, g in zip(w, grads)]) / total
        between = tf.add_n([n * tf.square(g - mean) for n, g in zip(w, grads)])
        means.append(mean)
        sq_means.append(between / tf.cast(m - 1, dtype) + tf.square(mean))
    return means, sq_means, batch


def micro_batch_gradients(loss_fn, variables, inputs, num_groups=4, tape_fn=None):
    """Minibatch gradients and the `mean_b(g^2)` estimate in `num_groups` backward passes.

    Args:
      loss_fn: `inputs_subset -> scalar`, the MEAN loss over the examples it
        gets (scaled as the caller scales its loss, e.g. for replicas).
      variables: the variables to differentiate.
      inputs: a nest of tensors whose leading axis is the local batch.
      num_groups: m >= 2 micro-batches (examples `j, j+m, j+2m, ...`).
    Returns:
      `(grads, grad_sq_means, batch_size)`, as `VGCSGD.apply_gradients` takes them.
    """
    check_num_groups(num_groups)
    group_grads, sizes = [], []
    for j in range(num_groups):
        part = tf.nest.map_structure(lambda t: t[j::num_groups], inputs)
        with tf.GradientTape() as tape:
            loss = loss_fn(part)
        grads = tape.gradient(loss, variables)
        group_grads.append([None if g is None else densify(g, v)
                            for g, v in zip(grads, variables)])
        sizes.append(tf.shape(tf.nest.flatten(part)[0])[0])
    return micro_batch_moments(group_grads, sizes)
