"""Penn Treebank, by its first module name; it lives in `dgc_tf.datasets.ptb`."""

from dgc_tf.datasets.ptb import *  # noqa: F401,F403
from dgc_tf.datasets.ptb import __all__  # noqa: F401
