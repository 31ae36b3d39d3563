"""Test set-up: two logical CPUs, so a 2-replica MirroredStrategy runs without GPUs.

Logical devices must be configured before TensorFlow initialises its
runtime, hence at import time here, before any test module runs an op.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

NUM_REPLICAS = 2
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_REPLICAS)
