"""`SparseAllGather`: all of a step's compressed gradients in one all-gather.

TensorFlow's `CollectiveAllReduce` sums a `tf.IndexedSlices` by gathering it,
with a size exchange and padding, one collective group per tensor. DGC's
gradients don't need that: every replica sends exactly k entries of each
variable per step, so the layout of a packed buffer is the same everywhere.
`SparseAllGather` bit-packs the values and indices of all `CompressedGradient`s
of a step into one float32 buffer, exchanges it with a single raw all-gather
(no size exchange), and unpacks each replica's entries; the sum of sparse
contributions is their concatenation. Everything else (dense gradients, the
optimizer's finite-gradients flag) is all-reduced in packs by the
`CollectiveAllReduce` it extends, so it is accepted wherever that is, including
`MultiWorkerMirroredStrategy`, which asserts that type.
"""

import itertools

import tensorflow as tf
from tensorflow.python.distribute import cross_device_ops as cross_device_ops_lib
from tensorflow.python.distribute import cross_device_utils
from tensorflow.python.util import nest

from dgc_tf import wire
from dgc_tf.distribute.payload import CompressedGradient

# Distinct collective group keys for each SparseAllGather built by hand in one
# process, so that two of them (or one beside a MirroredStrategy's own) never
# share instance keys on the same devices.
GROUP_KEY_STARTS = itertools.count(start=10_000, step=10_000)

WIRE_DTYPES = (None, tf.float16, "float16")


class SparseAllGather(cross_device_ops_lib.CollectiveAllReduce):
    """A `tf.distribute.CrossDeviceOps` for DGC's sparse exchange.

    Args:
      devices: the local devices to reduce across; None or an empty list (as
        `[d.name for d in tf.config.list_logical_devices("GPU")]` is on a
        machine without GPUs) means the logical GPUs, or the logical CPUs when
        there is no GPU, as for `tf.distribute.MirroredStrategy`.
      group_size: replicas in the whole group (all workers); defaults to
        `len(devices)`.
      options: a `tf.distribute.experimental.CommunicationOptions`.
      wire_dtype: None sends values in the gradient dtype; `tf.float16` halves
        the value bytes of float32 gradients at float16 precision.
      collective_keys: internal; `MultiWorkerMirroredStrategy` passes its own.

    Example:

        devices = ["/gpu:0", "/gpu:1"]
        strategy = tf.distribute.MirroredStrategy(
            devices, cross_device_ops=dgc_tf.distribute.SparseAllGather(devices))
    """

    def __init__(self, devices=None, group_size=None, options=None, wire_dtype=None,
                 collective_keys=None, canonicalize_devices=True):
        if wire_dtype not in WIRE_DTYPES:
            raise ValueError(f"`wire_dtype` must be None or tf.float16, got {wire_dtype!r}.")
        devices = list(devices or ())
        if not devices:  # None or [] (no GPUs): what MirroredStrategy falls back to
            devices = [d.name for d in (tf.config.list_logical_devices("GPU")
                                        or tf.config.list_logical_devices("CPU"))]
        if collective_keys is None:
            collective_keys = cross_device_utils.CollectiveKeys(
                group_key_start=next(GROUP_KEY_STARTS))
        super().__init__(
            devices=devices, group_size=group_size or len(devices),
            options=options or tf.distribute.experimental.CommunicationOptions(),
            collective_keys=collective_keys, canonicalize_devices=canonicalize_devices)
        self.wire_dtype = None if wire_dtype is None else tf.float16

    @classmethod
    def replacing(cls, collective, wire_dtype=None):
        """A `SparseAllGather` on the same devices, group and keys as `collective`."""
        return cls(devices=collective._devices, group_size=collective._group_size,
                   options=collective._options, wire_dtype=wire_dtype,
                   collective_keys=collective._collective_keys,
                   canonicalize_devices=collective._canonicalize_devices)

    def _all_reduce(self, reduce_op, value, replica_id, options):
        flat = nest.flatten(value)
        sparse_positions = [i for i, v in enumerate(flat) if isinstance(v, CompressedGradient)]
        if not sparse_positions or reduce_op != tf.distribute.ReduceOp.SUM:
            return super()._all_reduce(reduce_op, value, replica_id, options)
        other_positions = [i for i in range(len(flat)) if i not in set(sparse_positions)]
        results = [None] * len(flat)
        if other_positions:
            reduced = super()._all_reduce(
                reduce_op, [flat[i] for i in other_positions], replica_id, options)
            for position, result in zip(other_positions, reduced):
                results[position] = result
        gathered = self._gather_compressed(
            [flat[i] for i in sparse_positions], replica_id, options)
        for position, result in zip(sparse_positions, gathered):
            results[position] = result
        return nest.pack_sequence_as(value, results)

    def _gather_compressed(self, gradients, replica_id, options):
        pieces, specs = [], []
        for gradient in gradients:
            values = gradient.values
            if self.wire_dtype is not None:
                values = tf.cast(values, self.wire_dtype)
            count = tf.size(gradient.indices)
            pieces += [values, gradient.indices]
            specs += [(values.dtype, count), (gradient.indices.dtype, count)]
        buffer, word_counts = wire.pack(pieces)
        with tf.device(self._devices[replica_id]):
            # Same shape on every replica: no size exchange, one collective.
            gathered = self._launchers[replica_id]._all_gather(buffer, options)
            gathered = tf.reshape(gathered, [self._group_size, -1])
            received = wire.unpack(gathered, specs, word_counts)
        results = []
        for i, gradient in enumerate(gradients):
            values = tf.cast(tf.reshape(received[2 * i], [-1]), gradient.values.dtype)
            indices = tf.reshape(received[2 * i + 1], [-1])
            results.append(tf.IndexedSlices(values, indices, gradient.dense_shape))
        return results
