"""One DGC step on a compressed variable's state, in place: `compress_step`.

For the replica-local momentum buffer u and residual v of one compressed
variable and this step's gradient g it does, in order,

    momentum correction   u = m*u + g, v = v + u     (Nesterov: u = m*(u + g), v = v + u + g;
                                                      no buffer, m == 0: v = v + g)
    selection             the k entries of v largest in |v| (`sampled_topk`)
    masking               v[sent] = 0, and u[sent] = 0 with momentum masking
                          (unless `mask_selected=False`: then the caller masks
                          later what its exchange applied)

and returns the selected `(values, flat indices)`. These are
`dgc_tf.compression`'s pure steps (`momentum_correction`, `select`,
`mask_sent`) applied to variables instead of tensors, with the same numbers.

The compiled `DGC>CompressStep` kernel does all of it in one op: one pass
that reads g and updates u and v, the sampled selection's one candidate pass
over v, and k scattered writes, with no full-size temporary. Where it cannot
run (library not built, `DGC_TF_FORCE_FALLBACK=1`, a dtype without a kernel
such as float64, or a sparse gradient on a GPU), `compress_step_tf` does the
same with TensorFlow ops that update the variables in place.

A gradient may be a `tf.IndexedSlices` (an embedding's): it is added row by
row (`scatter_add` / the sparse kernel), never densified to the table's size.
"""

import tensorflow as tf

from dgc_tf.ops import _custom_op
from dgc_tf.ops.dtypes import KERNEL_DTYPES, index_dtype_for, k_tensor
from dgc_tf.ops.scatter import zero_at
from dgc_tf.ops.topk import sampled_topk, sampled_topk_tf


def compress_step(residual, momentum, grad, k, *, momentum_factor, nesterov=False,
                  momentum_masking=True, mask_selected=True, sample_ratio=0.01, seed=None):
    """Momentum correction, top-k selection and masking of one variable's state, in place.

    Args:
      residual: the residual v, a resource variable (a replica's own component
        under a strategy: this runs in replica context).
      momentum: the momentum buffer u (same shape and dtype), or None when
        `momentum_factor` is 0 and no buffer is kept (then u == g).
      grad: this step's gradient: a dense tensor of the variable's shape, or a
        `tf.IndexedSlices` over its first dimension.
      k: entries to select, in `[1, size]` (Python int or integer tensor).
      momentum_factor: m, in [0, 1).
      nesterov: Nesterov momentum correction.
      momentum_masking: also zero the momentum where v was sent.
      mask_selected: zero what was selected (v, and u with `momentum_masking`).
        False leaves both unmasked, for a caller that zeroes only what its
        exchange applied, after it: DGC's replica step, whose leader route
        applies other entries than this selection and whose skipped steps
        apply none.
      sample_ratio: fraction of v sampled for the selection threshold, in (0, 1].
      seed: optional sampling seed (the result does not depend on it).

    Returns:
      `(values, indices)`: `[k]` signed values of v before any masking, by
      descending magnitude (ties to the lower index), and their flat int32
      indices (int64 for 2^31 elements or more).
    """
    if not 0.0 <= momentum_factor < 1.0:
        raise ValueError(f"compress_step: `momentum_factor` must be in [0, 1), got "
                         f"{momentum_factor}.")
    if (momentum is None) != (momentum_factor == 0):
        raise ValueError("compress_step: pass a `momentum` buffer exactly when "
                         f"`momentum_factor` is nonzero (got {momentum_factor}).")
    sparse = isinstance(grad, tf.IndexedSlices)
    ops = _custom_op.load_compress_step()
    on_gpu = "GPU" in (residual.device or "").upper()
    if ops is None or residual.dtype not in KERNEL_DTYPES or (sparse and on_gpu):
        return compress_step_tf(residual, momentum, grad, k, momentum_factor=momentum_factor,
                                nesterov=nesterov, momentum_masking=momentum_masking,
                                mask_selected=mask_selected, sample_ratio=sample_ratio,
                                seed=seed)
    dense_op, sparse_op = ops
    attrs = dict(
        Tindices=index_dtype_for(residual.shape.num_elements()),
        momentum_factor=float(momentum_factor), nesterov=bool(nesterov),
        has_momentum=momentum is not None, momentum_masking=bool(momentum_masking),
        mask_selected=bool(mask_selected), sample_ratio=float(sample_ratio), seed=-1 if seed is None else int(seed))
    # Without a buffer the kernel ignores its momentum input; it still needs a handle.
    u_handle = (momentum if momentum is not None else residual).handle
    k = k_tensor(k)
    if sparse:
        values, indices = sparse_op(u_handle, residual.handle,
                                    tf.cast(grad.values, residual.dtype), grad.indices, k, **attrs)
    else:
        values, indices = dense_op(u_handle, residual.handle, tf.cast(grad, residual.dtype), k,
                                   **attrs)
    return values, indices  # a plain tuple, not the generated wrapper's namedtuple


def compress_step_tf(residual, momentum, grad, k, *, momentum_factor, nesterov=False,
                     momentum_masking=True, mask_selected=True, sample_ratio=0.01, seed=None):
    """Pure-TensorFlow `compress_step` (the fallback; same arguments and results)."""
    accumulate_tf(residual, momentum, grad, momentum_factor, nesterov)
    v = residual.read_value()
    if v.dtype in KERNEL_DTYPES:
        values, indices = sampled_topk(v, k, sample_ratio=sample_ratio, seed=seed)
    else:  # no selection kernel for it either
        values, indices = sampled_topk_tf(v, k, sample_ratio=sample_ratio)
    if not mask_selected:
        return values, indices
    with tf.control_dependencies([values]):  # select from v before zeroing it
        zero_at(residual, indices)
        if momentum is not None and momentum_masking:
            zero_at(momentum, indices)
    return tf.identity(values), tf.identity(indices)


def accumulate_tf(residual, momentum, grad, momentum_factor, nesterov):
    """Momentum correction into the variables, in the pure steps' rounding order.

    A sparse gradient is first summed per distinct row (as densifying it
    would), so each row gets the same numbers as with the dense gradient;
    rows it does not touch get a zero gradient.
    """
    if isinstance(grad, tf.IndexedSlices):
        rows, position = tf.unique(grad.indices)
        summed = tf.math.unsorted_segment_sum(
            tf.cast(grad.values, residual.dtype), position, tf.size(rows))
        grad = tf.IndexedSlices(summed, rows, grad.dense_shape)
        add_grad = lambda var: tf.raw_ops.ResourceScatterAdd(  # noqa: E731
            resource=var.handle, indices=rows, updates=summed)
    else:
        grad = tf.cast(grad, residual.dtype)
        add_grad = lambda var: var.assign_add(grad)  # noqa: E731
    if momentum is None:  # u == g
        add_grad(residual)
        return
    m = tf.cast(momentum_factor, momentum.dtype)
    if nesterov:  # u = m*(u + g); v = (v + u) + g
        add_grad(momentum)
        momentum.assign(m * momentum)
        residual.assign_add(momentum)
        add_grad(residual)
    else:  # u = m*u + g; v = v + u
        momentum.assign(m * momentum)
        add_grad(momentum)
        residual.assign_add(momentum)
