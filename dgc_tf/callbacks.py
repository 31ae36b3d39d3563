"""`CompressionStats`: DGC's exchange statistics in the `fit` logs.

Adds, after every batch and epoch, what the optimizer's `compression_stats()`
reports: `dgc_density` (its `current_density()`; DGCSGD: the fraction of each
compressed variable the next step sends, warm-up included; VGCSGD: the
fraction of compressed elements sent so far), `dgc_bytes_sent` (bytes this
replica handed to the collectives in the last step), `dgc_compression_ratio` (dense bytes / bytes sent, all
variables, since the start) and `dgc_skipped_steps` (steps skipped because some
replica's gradients were not finite; the first one also raises a warning with
the count), so they show in the progress bar and in `History`. For TensorBoard: list `CompressionStats` before the `TensorBoard`
callback and its epoch scalars include them (`epoch_dgc_*`); pass the same
`log_dir` to `CompressionStats` and it also writes them per step
(`batch_dgc_*`, in `log_dir/train`, the run TensorBoard's callback writes to).

`dgc_tf.callbacks.CompressionStats` follows `tf.keras` like `dgc_tf.DGCSGD`;
`KerasCompressionStats` / `TfKerasCompressionStats` name a flavour.
"""

import importlib
import os
import warnings

import tensorflow as tf


class _CompressionStatsMixin:
    """Flavour-independent part: reads the optimizer's counters into logs.

    Args:
      log_dir: optional TensorBoard log directory for per-step scalars.
    """

    def __init__(self, log_dir=None):
        super().__init__()
        self.log_dir = log_dir
        self._writer = None
        self._warned_skipped = False

    def on_train_begin(self, logs=None):
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def _dgc_logs(self):
        optimizer = self.model.optimizer
        if not callable(getattr(optimizer, "compression_stats", None)):
            raise ValueError(
                "CompressionStats needs a model compiled with a dgc_tf compressor (DGCSGD, "
                f"VGCSGD, ...: any `dgc_tf.compressors` optimizer); got optimizer "
                f"{type(optimizer).__name__}.")
        # Each optimizer says what it sent and what its density is (the frame's
        # `compression_stats`); nothing here knows a method's rules.
        stats = optimizer.compression_stats()
        skipped = stats["skipped_steps"]
        if skipped and not self._warned_skipped:
            self._warned_skipped = True
            warnings.warn(
                f"dgc_tf: {skipped} training step(s) so far were skipped on every replica because "
                "some replica's gradients held NaN or Inf (weights and DGC state untouched). "
                "Lower the learning rate or set local_clipnorm; `dgc_skipped_steps` in the logs "
                "keeps the count.", RuntimeWarning, stacklevel=2)
        return {
            "dgc_density": stats["density"],
            "dgc_bytes_sent": stats["last_bytes_sent"],
            "dgc_compression_ratio": stats["compression_ratio"],
            "dgc_skipped_steps": skipped,
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
