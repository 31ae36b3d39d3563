"""Choosing a strategy from the environment, as the examples and notebooks do."""

import json
import os

import tensorflow as tf

from dgc_tf.distribute.devices import configure_logical_cpus, default_devices
from dgc_tf.distribute.sparse_all_gather import SparseAllGather, check_arguments
from dgc_tf.distribute.strategy import MultiWorkerMirroredStrategy


def strategy_from_environment(local_replicas=2, replicas_per_worker=None, exchange="auto"):
    """The strategy a DGC script wants where it runs.

    With `TF_CONFIG` (set by `dgc_tf.launch`, Kubeflow's TFJob or by hand):
    `dgc_tf.distribute.MultiWorkerMirroredStrategy`. Otherwise one process: a
    `tf.distribute.MirroredStrategy` with `SparseAllGather` over the GPUs, or,
    without GPUs, over `local_replicas` logical CPUs.

    Side effect: without GPUs this changes the process's device configuration
    (`configure_logical_cpus`: the CPU split into `local_replicas` logical
    devices in one process, `replicas_per_worker` under `TF_CONFIG` when
    given), which TensorFlow allows only before its runtime starts. So call it
    first, right after the imports; to configure devices yourself, call
    `configure_logical_cpus` and build the strategy directly.

    Args:
      local_replicas: replicas of a single process without GPUs (>= 1).
      replicas_per_worker: under `TF_CONFIG`, the replicas of each worker
        (None: TensorFlow's choice, every GPU or one CPU device); a worker's
        replicas sum their gradients and compress once.
      exchange: `SparseAllGather`'s route for compressed gradients, "auto",
        "leader" or "allgather" (between workers, or between one process's
        replicas).
    Returns:
      A `tf.distribute.Strategy`.
    Raises:
      RuntimeError: the CPU cannot be split any more (the runtime started).
    """
    gpus = tf.config.list_physical_devices("GPU")
    if os.environ.get("TF_CONFIG"):
        if replicas_per_worker is not None and not gpus:
            configure_logical_cpus(replicas_per_worker)
        return MultiWorkerMirroredStrategy(replicas_per_worker=replicas_per_worker,
                                           exchange=exchange)
    check_arguments(None, exchange, None)  # before the device side effect
    if not gpus:
        configure_logical_cpus(local_replicas)
    devices = default_devices()
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=SparseAllGather(devices, exchange=exchange))


def is_chief():
    """True on worker 0 of a `TF_CONFIG` cluster, and in a single process."""
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    return task.get("index", 0) == 0
