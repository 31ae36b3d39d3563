"""`DGCSGD` for Keras 3, by its first name; it lives in `dgc_tf.compressors.dgc.keras3`."""

from dgc_tf.compressors.dgc.keras3 import DGCSGD

__all__ = ["DGCSGD"]
