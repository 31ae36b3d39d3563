"""Which local devices the exchange and the strategies run on.

One home for the default device list (what `tf.distribute.MirroredStrategy`
falls back to) and for the one call that changes the process's device
configuration: splitting the CPU into logical devices, so that several
replicas run without GPUs.
"""

import tensorflow as tf


def default_devices():
    """The logical GPUs, or the logical CPUs where there is no GPU (names)."""
    return [d.name for d in (tf.config.list_logical_devices("GPU")
                             or tf.config.list_logical_devices("CPU"))]


def configure_logical_cpus(count):
    """Splits the first CPU into `count` logical devices, for `count` replicas without GPUs.

    This changes the process's device configuration, which TensorFlow allows
    only before its runtime starts: call it right after the imports, before
    any tensor, dataset, model or strategy is built (for multi-worker runs,
    before `dgc_tf.distribute.MultiWorkerMirroredStrategy(replicas_per_worker=
    count)`). Calling it again with the count the runtime already has does
    nothing.

    Args:
      count: the number of logical CPU devices, >= 1.
    Returns:
      Their names, e.g. `["/device:CPU:0", "/device:CPU:1"]`.
    Raises:
      ValueError: `count` is not a positive integer.
      RuntimeError: the runtime has already started with another count.
    """
    check_count("count", count)
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as e:  # the runtime has started: fine if it has what was asked
        present = len(tf.config.get_logical_device_configuration(cpu) or [None])
        if present != count:
            raise RuntimeError(
                f"Cannot split the CPU into {count} logical devices: TensorFlow's runtime "
                f"has already started with {present}. Call configure_logical_cpus (or "
                "dgc_tf.distribute.strategy_from_environment) before any other TensorFlow "
                "call that builds a tensor, dataset, model or strategy.") from e
    return [f"/device:CPU:{i}" for i in range(count)]


def check_count(name, value):
    """A ValueError naming argument `name` unless `value` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
