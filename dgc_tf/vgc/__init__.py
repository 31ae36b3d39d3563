"""Variance-based gradient compression, by its first name; it lives in
`dgc_tf.compressors.vgc` (see there for the algorithm)."""

import importlib

from dgc_tf.compressors.vgc import (VGCConfig, micro_batch_gradients,  # noqa: F401
                                    micro_batch_moments)
from dgc_tf.compressors.vgc import __all__  # noqa: F401


def __getattr__(name):
    return getattr(importlib.import_module("dgc_tf.compressors.vgc"), name)
