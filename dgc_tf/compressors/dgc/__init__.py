"""Deep Gradient Compression (Lin, Han, Mao, Wang, Dally, ICLR 2018).

- `compression`: DGC's math as pure functions (warm-up, momentum correction,
  selection, masking);
- `config`: `DGCConfig`;
- `replica`: the replica step on the frame (`compress_and_exchange`);
- `keras3`, `tf_keras`: `DGCSGD` for each Keras flavour; `optimizer`: what
  both share (the docstring, `DGCMixin`).
"""

import importlib

from dgc_tf.compressors.dgc.config import DGCConfig

__all__ = ["DGCConfig", "DGCSGD"]


def __getattr__(name):
    # Lazy, as dgc_tf.DGCSGD: the Keras flavour in use.
    if name == "DGCSGD":
        flavour = importlib.import_module("dgc_tf").keras_flavour()
        return importlib.import_module(f"dgc_tf.compressors.dgc.{flavour}").DGCSGD
    raise AttributeError(f"module 'dgc_tf.compressors.dgc' has no attribute {name!r}")
