"""Choosing a strategy from the environment, as the examples and notebooks do."""

import json
import os

import tensorflow as tf

from dgc_tf.distribute.sparse_all_gather import SparseAllGather
from dgc_tf.distribute.strategy import MultiWorkerMirroredStrategy


def strategy_from_environment(local_replicas=2):
    """The strategy a DGC script wants where it runs.

    With `TF_CONFIG` (set by `dgc_tf.launch`, Kubeflow's TFJob or by hand):
    `dgc_tf.distribute.MultiWorkerMirroredStrategy`. Otherwise one process: a
    `tf.distribute.MirroredStrategy` with `SparseAllGather` over the GPUs, or,
    without GPUs, over `local_replicas` logical CPUs (configured here, so call
    this before TensorFlow initialises its devices).
    """
    if os.environ.get("TF_CONFIG"):
        return MultiWorkerMirroredStrategy()
    if not tf.config.list_physical_devices("GPU"):
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * local_replicas)
    devices = [d.name for d in (tf.config.list_logical_devices("GPU")
                                or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=SparseAllGather(devices))


def is_chief():
    """True on worker 0 of a `TF_CONFIG` cluster, and in a single process."""
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    return task.get("index", 0) == 0
