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
from dgc_tf.distribute.devices import check_count
from dgc_tf.distribute.sparse_all_gather import SparseAllGather



class _SparseExchangeExtended(mwms_lib.CollectiveAllReduceExtended):
    def __init__(self, container_strategy, cluster_resolver, communication_options,
                 wire_dtype=None, exchange="auto", per_worker=None, devices=None,
                 replicas_per_worker=None):
        self._dgc_exchange_args = dict(wire_dtype=wire_dtype, exchange=exchange,
                                       per_worker=per_worker)
        self._dgc_replicas_per_worker = replicas_per_worker
        super().__init__(container_strategy, cluster_resolver=cluster_resolver,
                         communication_options=communication_options, devices=devices)

    def _initialize_local_devices(self, cluster_resolver, worker_device):
        # TensorFlow's choice is every GPU, or ONE CPU device without GPUs.
        devices, device_type = super()._initialize_local_devices(cluster_resolver, worker_device)
        count = self._dgc_replicas_per_worker
        if count is None:
            return devices, device_type
        if device_type == "CPU":  # this process's split (listing devices would add remote ones)
            available = len(tf.config.get_logical_device_configuration(
                tf.config.list_physical_devices("CPU")[0]) or [None])
        else:
            available = len(devices)
        if count > available:
            raise ValueError(
                f"`replicas_per_worker={count}` but this worker has {available} {device_type} "
                "device(s). Without GPUs, split the CPU first with "
                "dgc_tf.distribute.configure_logical_cpus(count), before creating the strategy.")
        return tuple(f"{worker_device}/device:{device_type}:{i}" for i in range(count)), device_type

    def _initialize_local(self, cluster_resolver, devices=None):
        super()._initialize_local(cluster_resolver, devices=devices)
        self._cross_device_ops = SparseAllGather.replacing(
            self._cross_device_ops, **self._dgc_exchange_args)

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
            self._cross_device_ops, **self._dgc_exchange_args)


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`tf.distribute.MultiWorkerMirroredStrategy` exchanging DGC gradients sparsely.

    With `dgc_tf.DGCSGD`, the compressed gradients of a step travel in a few
    packed collectives whose size stays flat as workers are added (see
    `SparseAllGather`); dense gradients are all-reduced as usual. Other
    optimizers train exactly as under TensorFlow's strategy (with
    `wire_dtype=tf.float16`, their gradients are all-reduced in half precision:
    a 16-bit dense baseline, like Horovod's fp16 compression).

    Args:
      cluster_resolver: as for TensorFlow's strategy (default: `TF_CONFIG`).
      communication_options: `tf.distribute.experimental.CommunicationOptions`;
        TensorFlow's defaults when None. No collective timeout is needed to
        report a dead worker (the coordination service's heartbeats do), and
        one is warned about: see `dgc_tf.distribute.collective_timeout`.
      wire_dtype: None or `tf.float16`: every floating gradient tensor on the
        wire (compressed values and dense gradients) in half precision.
      exchange: "auto" (default), "leader" or "allgather": the routes a
        compressed variable may take; see `SparseAllGather`.
      per_worker: None (default: where each worker has several replicas), True
        or False: a worker's replicas sum their gradients densely and the
        worker exchanges compressed entries once (see `SparseAllGather` and
        `dgc_tf.distribute.worker_exchange`).
      replicas_per_worker: None (TensorFlow's choice: every GPU, or one CPU
        device) or the number of local devices each worker trains on: the
        first that many GPUs, or logical CPUs (split the CPU first with
        `dgc_tf.distribute.configure_logical_cpus`).
    """

    def __init__(self, cluster_resolver=None, communication_options=None, wire_dtype=None,
                 exchange="auto", per_worker=None, replicas_per_worker=None):
        # Before TensorFlow's strategy waits for the other workers.
        sparse_all_gather.check_arguments(wire_dtype, exchange, per_worker)
        if replicas_per_worker is not None:
            check_count("replicas_per_worker", replicas_per_worker)
        if communication_options is None:
            communication_options = tf.distribute.experimental.CommunicationOptions()
        # TensorFlow's __init__ would build the stock extended object; build ours.
        distribute_lib.Strategy.__init__(self, _SparseExchangeExtended(
            self, cluster_resolver=cluster_resolver,
            communication_options=communication_options, wire_dtype=wire_dtype,
            exchange=exchange, per_worker=per_worker, replicas_per_worker=replicas_per_worker))

    @property
    def exchange(self):
        """This strategy's `SparseAllGather` (its `CrossDeviceOps`)."""
        return self.extended._cross_device_ops

    @property
    def exchange_routes(self):
        """`{variable name: "allgather" | "leader" | "dense"}` of the compressed
        variables after the sparsity warm-up, as the last traced step routed
        them (per warm-up stage: `exchange.compressed_exchange.stage_routes`;
        see `SparseAllGather`)."""
        return dict(self.exchange.compressed_exchange.routes)

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
    def _from_local_devices(cls, devices, communication_options=None, wire_dtype=None,
                            exchange="auto", per_worker=None):
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
            wire_dtype=wire_dtype, exchange=exchange, per_worker=per_worker, devices=devices))
        return obj
