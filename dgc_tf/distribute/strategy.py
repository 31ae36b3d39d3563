"""`MultiWorkerMirroredStrategy` with DGC's sparse exchange installed.

TensorFlow's strategy builds its `CollectiveAllReduce` inside its extended
object and asserts that type. This subclass swaps in `SparseAllGather` (a
`CollectiveAllReduce` itself) at exactly those two construction points, on the
same devices, group and collective keys; nothing is patched on a live object.
"""

import tensorflow as tf
from tensorflow.python.distribute import collective_all_reduce_strategy as mwms_lib
from tensorflow.python.distribute import distribute_lib

from dgc_tf.distribute import sparse_all_gather
from dgc_tf.distribute.sparse_all_gather import SparseAllGather

# A dead peer must surface as an error, not a hang: collectives give up after
# this long unless the caller's CommunicationOptions say otherwise.
DEFAULT_COLLECTIVE_TIMEOUT_SECONDS = 120.0


class _SparseExchangeExtended(mwms_lib.CollectiveAllReduceExtended):
    def __init__(self, container_strategy, cluster_resolver, communication_options,
                 wire_dtype=None, devices=None):
        self._dgc_wire_dtype = wire_dtype
        super().__init__(container_strategy, cluster_resolver=cluster_resolver,
                         communication_options=communication_options, devices=devices)

    def _initialize_local(self, cluster_resolver, devices=None):
        super()._initialize_local(cluster_resolver, devices=devices)
        self._cross_device_ops = SparseAllGather.replacing(
            self._cross_device_ops, wire_dtype=self._dgc_wire_dtype)

    def _initialize_multi_worker(self, cluster_resolver):
        try:
            super()._initialize_multi_worker(cluster_resolver)
        except RuntimeError as e:
            if "configured at program startup" not in str(e):
                raise
            # TensorFlow's message names neither the cause nor the fix.
            raise RuntimeError(
                "dgc_tf.distribute.MultiWorkerMirroredStrategy() must be created before any other "
                "TensorFlow call in the process (building a dataset, a model or a tensor, or "
                "listing devices, starts TensorFlow's runtime, and collectives can only be "
                "configured before that). Create the strategy first, right after the imports."
            ) from e
        self._cross_device_ops = SparseAllGather.replacing(
            self._cross_device_ops, wire_dtype=self._dgc_wire_dtype)


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`tf.distribute.MultiWorkerMirroredStrategy` exchanging DGC gradients sparsely.

    With `dgc_tf.DGCSGD`, all compressed gradients of a step travel in one
    packed all-gather; dense gradients are all-reduced as usual. Other
    optimizers train exactly as under TensorFlow's strategy.

    Args:
      cluster_resolver: as for TensorFlow's strategy (default: `TF_CONFIG`).
      communication_options: `tf.distribute.experimental.CommunicationOptions`;
        when None, collectives time out after
        `DEFAULT_COLLECTIVE_TIMEOUT_SECONDS` so a dead worker is reported.
      wire_dtype: None or `tf.float16` (values on the wire in half precision).
    """

    def __init__(self, cluster_resolver=None, communication_options=None, wire_dtype=None):
        if communication_options is None:
            communication_options = tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=DEFAULT_COLLECTIVE_TIMEOUT_SECONDS)
        # TensorFlow's __init__ would build the stock extended object; build ours.
        distribute_lib.Strategy.__init__(self, _SparseExchangeExtended(
            self, cluster_resolver=cluster_resolver,
            communication_options=communication_options, wire_dtype=wire_dtype))

    def reduce(self, reduce_op, value, axis):
        """`tf.distribute.Strategy.reduce`, also for what Keras 3's `fit` passes.

        Keras 3's `fit` under multi-worker training (keras-team/keras#20585)
        calls `reduce` with a nested structure of per-replica values (a whole
        batch, to build the model symbolically) and with `axis=0` on per-replica
        scalars (the metrics). TensorFlow rejects both. Here a structure is
        reduced leaf by leaf, and `axis` is dropped for a scalar, whose mean
        over replicas is the only meaning it can have. Every other call is
        TensorFlow's own.
        """
        if not isinstance(value, tf.distribute.DistributedValues) and tf.nest.is_nested(value):
            return tf.nest.map_structure(lambda v: self.reduce(reduce_op, v, axis), value)
        components = value.values if isinstance(value, tf.distribute.DistributedValues) else [value]
        if axis is not None and all(getattr(v, "shape", None) is not None and v.shape.rank == 0
                                    for v in components):
            axis = None
        return super().reduce(reduce_op, value, axis)

    @classmethod
    def _from_local_devices(cls, devices, communication_options=None, wire_dtype=None):
        """A single-worker strategy over `devices` (tests, notebooks).

        Its collective keys start at a fresh base, so that it can share a
        process with other strategies on the same devices.
        """
        obj = cls.__new__(cls)
        obj._collective_key_base = next(sparse_all_gather.GROUP_KEY_STARTS)
        distribute_lib.Strategy.__init__(obj, _SparseExchangeExtended(
            obj, cluster_resolver=None,
            communication_options=communication_options
            or tf.distribute.experimental.CommunicationOptions(),
            wire_dtype=wire_dtype, devices=devices))
        return obj
