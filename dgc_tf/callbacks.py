"""`CompressionStats`: DGC's exchange statistics in the `fit` logs.

Adds, after every batch and epoch, `dgc_density` (fraction of each compressed
variable sent this step), `dgc_bytes_sent` (bytes this replica handed to the
collectives this step) and `dgc_compression_ratio` (dense bytes / bytes sent,
all variables, since the start), so they show in the progress bar and in
`History`. For TensorBoard: list `CompressionStats` before the `TensorBoard`
callback and its epoch scalars include them (`epoch_dgc_*`); pass the same
`log_dir` to `CompressionStats` and it also writes them per step
(`batch_dgc_*`, in `log_dir/train`, the run TensorBoard's callback writes to).

`dgc_tf.callbacks.CompressionStats` follows `tf.keras` like `dgc_tf.DGCSGD`;
`KerasCompressionStats` / `TfKerasCompressionStats` name a flavour.
"""

import importlib
import os

import tensorflow as tf

from dgc_tf import compression


class _CompressionStatsMixin:
    """Flavour-independent part: reads the optimizer's counters into logs.

    Args:
      log_dir: optional TensorBoard log directory for per-step scalars.
    """

    def __init__(self, log_dir=None):
        super().__init__()
        self.log_dir = log_dir
        self._writer = None

    def on_train_begin(self, logs=None):
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def _dgc_logs(self):
        optimizer = self.model.optimizer
        counters = getattr(optimizer, "_dgc_counters", None)
        if counters is None:
            raise ValueError(
                "CompressionStats needs a model compiled with dgc_tf.DGCSGD; got optimizer "
                f"{type(optimizer).__name__}.")
        config = optimizer.dgc_config
        step = max(int(optimizer.iterations.numpy()) - 1, 0)
        stats = counters.as_dict()
        return {
            "dgc_density": float(compression.density_at(
                step, config.compress_ratio, config.warmup_steps).numpy()),
            "dgc_bytes_sent": stats["last_bytes_sent"],
            "dgc_compression_ratio": stats["compression_ratio"],
        }

    def on_train_batch_end(self, batch, logs=None):
        stats = self._dgc_logs()
        if logs is not None:
            logs.update(stats)
        if self._writer is not None:
            step = int(self.model.optimizer.iterations.numpy())
            with self._writer.as_default():
                for name, value in stats.items():
                    tf.summary.scalar(f"batch_{name}", value, step=step)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self._dgc_logs())


def _make(base):
    class CompressionStats(_CompressionStatsMixin, base):
        __doc__ = __doc__

    return CompressionStats


def __getattr__(name):
    if name == "KerasCompressionStats":
        import keras
        cls = _make(keras.callbacks.Callback)
    elif name == "TfKerasCompressionStats":
        import tf_keras
        cls = _make(tf_keras.callbacks.Callback)
    elif name == "CompressionStats":
        flavour = importlib.import_module("dgc_tf").keras_flavour()
        return __getattr__("KerasCompressionStats" if flavour == "keras3"
                           else "TfKerasCompressionStats")
    else:
        raise AttributeError(f"module 'dgc_tf.callbacks' has no attribute {name!r}")
    globals()[name] = cls  # build each class once
    return cls
