"""The configurations, by their first module name; they live in `dgc_tf.compressors`."""

from dgc_tf.compressors.base.config import CompressorConfig, check_number
from dgc_tf.compressors.dgc.config import DGCConfig

__all__ = ["CompressorConfig", "DGCConfig", "check_number"]
