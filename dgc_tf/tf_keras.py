"""`DGCSGD` for tf_keras, by its first name; it lives in `dgc_tf.compressors.dgc.tf_keras`."""

from dgc_tf.compressors.dgc.tf_keras import DGCSGD

__all__ = ["DGCSGD"]
