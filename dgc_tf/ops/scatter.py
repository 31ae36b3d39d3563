"""Flat scatters at DGC's entry counts, in whichever form TensorFlow's CPU kernels run faster.

A DGC step scatters its entries three times: into the weights (`w -= lr * G`),
into a dense buffer (the dense route, error feedback's summed gradient) and
as zeros into the residual (masking). TensorFlow's `ScatterNd*` CPU kernels
cost about 170 ns per entry, so at warm-up densities (25% of a layer) the
scatters cost far more than the selection itself. Measured on this machine,
one process, a 4M-element float32 vector, 5-call means:

| entries | `scatter_nd_sub` | `unsorted_segment_sum` + `assign_sub` |
|---|---|---|
| 1,000,000 (25%) | 185 ms | 31 ms |
| 62,500 (1.6%) | 10.8 ms | 6.5 ms |
| 4,000 (0.1%) | 3.0 ms | 6.6 ms |

So a scatter of at least `size / DENSE_FROM` entries is done densely: the
entries summed into a full-size buffer by `unsorted_segment_sum` (which sums
repeated indices, as the scatter does), then one element-wise pass. Fewer
entries keep the scatter, which touches only them. During the sparsity
warm-up the count is a tensor and the form is chosen per step by `tf.cond`;
the two forms round repeated indices in a different order (one sum, then
the subtraction; or one subtraction each) and are otherwise identical.

The scatters into variables (`subtract_at`, `zero_at`) run the compiled
`DGC>ScatterFlat` where it has a kernel (a CPU, the kernel dtypes): it has the
numbers of TensorFlow's `ResourceScatterNd*` kernels but not their side
effect, which is to put a variable in copy-on-read mode for good, after which
every dense read of it copies the whole buffer. On 8 worker processes sharing
2 cores (mlp8m, README "Scaling with workers") those copies, of the weights
in each forward pass and of the residual and momentum after each leader
step, cost more CPU than the fused selection itself. It needs no dense form
(same vector, one process, 5-call means, each way on its own variable):

| entries | `DGC>ScatterFlat` | `unsorted_segment_sum` + `assign_sub` | `ResourceScatterNdSub` |
|---|---|---|---|
| 1,000,000 (25%) | 11.0 ms | 31.8 ms | 169.7 ms |
| 62,500 (1.6%) | 2.1 ms | 4.7 ms | 12.4 ms |
| 4,000 (0.1%) | 0.5 ms | 3.3 ms | 1.5 ms |

Elsewhere (a GPU, float64, the library missing) TensorFlow's kernels do it,
in the two forms above.
"""

import math

import tensorflow as tf

from dgc_tf.ops import _custom_op
from dgc_tf.ops.dtypes import KERNEL_DTYPES
from dgc_tf.ops.static_cond import static_cond

# Entry counts of at least size / DENSE_FROM are scattered densely (the
# table above: the forms cost the same near 1/100 of the size).
DENSE_FROM = 128


def _dense_form(count, size):
    """Whether `count` entries into `size` elements go the dense way (bool or bool tensor)."""
    static = tf.get_static_value(count)
    if static is not None:
        return int(static) * DENSE_FROM >= size
    return tf.cast(count, tf.int64) * DENSE_FROM >= size


def flat_to_coords(indices, shape):
    """`[n]` flat indices -> `[n, rank]` coordinates for `scatter_nd` into `shape`."""
    rank = len(shape)
    if rank == 0:
        return tf.zeros([tf.size(indices), 0], indices.dtype)
    if rank == 1:
        return indices[:, None]
    # Row-major strides by hand: tf.unravel_index rejects an empty `indices`
    # (VGC may select nothing).
    strides = [math.prod(shape[j + 1:]) for j in range(rank)]
    return tf.stack([(indices // stride) % dim for stride, dim in zip(strides, shape)], axis=1)


def dense_at(values, indices, size):
    """A flat tensor of `size` with `values` summed at flat `indices` (zero elsewhere).

    Args:
      values: `[count]` values.
      indices: `[count]` int32 or int64 flat indices; repeats are summed.
      size: the number of elements (a Python int).
    Returns:
      A `[size]` tensor of `values.dtype`.
    """
    return tf.math.unsorted_segment_sum(values, indices, size)


def _compiled_scatter(variable):
    """The compiled in-place scatter for `variable`, or None (then TensorFlow's kernels).

    Only for a variable placed on a CPU (it has no other kernel), of a kernel dtype.
    """
    op = _custom_op.load_scatter_flat()
    if op is None or variable.dtype not in KERNEL_DTYPES:
        return None
    device = variable.device or ""
    if device:
        return op if tf.DeviceSpec.from_string(device).device_type == "CPU" else None
    # Unplaced: it lands where ops do by default, a CPU only if there is no GPU.
    return None if tf.config.list_logical_devices("GPU") else op


def subtract_at(variable, indices, values):
    """`variable.flat[indices] -= values`, in place (repeated indices subtract their sum).

    Args:
      variable: a `tf.Variable` (a component variable inside
        `strategy.extended.update`).
      indices: `[count]` flat indices.
      values: `[count]` values of the variable's dtype.
    """
    op = _compiled_scatter(variable)
    if op is not None:  # in place at any count (about 11 ns per entry): no dense form needed
        op(variable.handle, indices, values, subtract=True)
        return
    size = variable.shape.num_elements()
    shape = variable.shape.as_list()

    def dense():
        variable.assign_sub(tf.reshape(dense_at(values, indices, size), shape))
        return tf.constant(True)

    def sparse():
        tf.raw_ops.ResourceScatterNdSub(ref=variable.handle, indices=flat_to_coords(indices, shape),
                                        updates=values)
        return tf.constant(True)

    static_cond(_dense_form(tf.size(indices), size), dense, sparse)


def zero_at(variable, indices):
    """`variable.flat[indices] = 0`, in place (repeated indices are fine).

    Masking where it is not fused into the selection step: DGC's after the
    leader route's exchange (which says what it applied) and in the
    pure-TensorFlow compress step, and VGC's reset of what it sent.

    Through the handle: under a strategy, a replica-local (`ON_READ`)
    variable's handle in replica context is this replica's component, which
    `scatter_nd_update` on the distributed variable does not offer.

    Args:
      variable: a `tf.Variable`.
      indices: `[count]` flat indices.
    """
    zeros = tf.zeros(tf.shape(indices), variable.dtype)
    op = _compiled_scatter(variable)
    if op is not None:
        op(variable.handle, indices, zeros, subtract=False)
        return
    size = variable.shape.num_elements()
    shape = variable.shape.as_list()

    def dense():
        value = tf.raw_ops.ReadVariableOp(resource=variable.handle, dtype=variable.dtype)
        tf.raw_ops.AssignVariableOp(resource=variable.handle,
                                    value=_zeroed_where_hit(value, indices))
        return tf.constant(True)

    def sparse():
        tf.raw_ops.ResourceScatterNdUpdate(ref=variable.handle,
                                           indices=flat_to_coords(indices, shape), updates=zeros)
        return tf.constant(True)

    static_cond(_dense_form(tf.size(indices), size), dense, sparse)


def _zeroed_where_hit(tensor, indices):
    """`tensor` with its flat `indices` zeroed, in one element-wise pass (the dense form)."""
    hit = dense_at(tf.ones(tf.shape(indices), tf.int32), indices, tensor.shape.num_elements())
    return tf.where(tf.reshape(hit, tf.shape(tensor)) > 0, tf.zeros_like(tensor), tensor)


def zeroed_at(tensor, indices):
    """`tensor` with its flat `indices` set to zero (a new tensor of the same shape)."""
    tensor = tf.convert_to_tensor(tensor)
    flat = tf.reshape(tensor, [-1])
    size = tensor.shape.num_elements()

    def dense():
        return _zeroed_where_hit(flat, indices)

    def sparse():
        return tf.tensor_scatter_nd_update(flat, indices[:, None],
                                           tf.zeros(tf.shape(indices), tensor.dtype))

    return tf.reshape(static_cond(_dense_form(tf.size(indices), size), dense, sparse),
                      tf.shape(tensor))
