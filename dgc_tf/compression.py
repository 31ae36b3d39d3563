"""DGC's pure steps, by their first name; they live in `dgc_tf.compressors.dgc.compression`."""

from dgc_tf.compressors.dgc.compression import *  # noqa: F401,F403
from dgc_tf.compressors.dgc.compression import __all__  # noqa: F401
