"""VGC for Keras 3, by its first name; it lives in `dgc_tf.compressors.vgc.keras3`."""

from dgc_tf.compressors.vgc.keras3 import (VGCSGD, VGCModel, micro_batch_train_step,
                                           use_micro_batch_step)

__all__ = ["VGCSGD", "VGCModel", "micro_batch_train_step", "use_micro_batch_step"]
