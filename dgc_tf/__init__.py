"""dgc_tf: Deep Gradient Compression for TensorFlow 2 and Keras.

`dgc_tf.DGCSGD` follows `tf.keras`: the Keras 3 optimizer by default, the
tf_keras one when `TF_USE_LEGACY_KERAS=1`, so that
`model.compile(optimizer=dgc_tf.DGCSGD())` works with whichever Keras
`tf.keras` is. `dgc_tf.keras3.DGCSGD` and `dgc_tf.tf_keras.DGCSGD` name a
flavour explicitly. `dgc_tf.VGCSGD` (variance-based gradient compression,
`dgc_tf.vgc`) follows `tf.keras` the same way. `dgc_tf.TopKErrorFeedback(inner)`
(error-feedback top-k, `dgc_tf.compressors.error_feedback`) wraps any Keras
optimizer (Adam, AdamW, SGD, ...) the way `LossScaleOptimizer` does.

The layout: `dgc_tf.compressors` holds one package per method (`dgc`, `vgc`, `error_feedback`)
on a neutral frame (`compressors.base`, whose docstring is the contract a
method fulfils); `dgc_tf.distribute` is the exchange; `dgc_tf.ops` the
compiled selection ops; `dgc_tf.datasets` the example data readers.
`dgc_tf.keras3`, `dgc_tf.tf_keras`, `dgc_tf.vgc`, `dgc_tf.compression`,
`dgc_tf.config`, `dgc_tf.data` and `dgc_tf.ptb` are the first names of
modules that moved, kept so that code importing them still works.

Importing dgc_tf registers every public optimizer class with the Keras
serialization registry of each flavour that is installed, so that
`keras.models.load_model("m.keras")` (or tf_keras's) finds them by name in a
new process with no `custom_objects`.
"""

import importlib
import importlib.util
import os
import sys

__version__ = "0.1.0"

__all__ = ["DGCSGD", "VGCSGD", "TopKErrorFeedback", "DGCConfig", "ops", "keras_flavour"]


def keras_flavour():
    """"tf_keras" when `TF_USE_LEGACY_KERAS` is set to a true value, else "keras3"."""
    legacy = os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() in ("1", "true", "yes")
    return "tf_keras" if legacy else "keras3"


def __getattr__(name):
    # Lazy, so that importing dgc_tf pulls in only the Keras flavour in use.
    if name == "DGCSGD":
        return importlib.import_module(f"dgc_tf.{keras_flavour()}").DGCSGD
    if name == "VGCSGD":
        return importlib.import_module(f"dgc_tf.compressors.vgc.{keras_flavour()}").VGCSGD
    if name == "TopKErrorFeedback":
        from dgc_tf.compressors import error_feedback
        return error_feedback.TopKErrorFeedback
    if name == "DGCConfig":
        from dgc_tf.compressors.dgc.config import DGCConfig
        return DGCConfig
    if name in ("ops", "keras3", "tf_keras", "compression", "distribute", "callbacks", "data",
                "vgc", "compressors", "datasets"):
        return importlib.import_module(f"dgc_tf.{name}")
    raise AttributeError(f"module 'dgc_tf' has no attribute {name!r}")


# Modules whose import registers the public optimizer classes (their
# `register_keras_serializable` decorators), keyed by the Keras package each
# needs. Importing them creates no TensorFlow context, so a strategy made
# afterwards can still configure collectives.
_SERIALIZABLE_MODULES = {
    "keras": ("dgc_tf.compressors.dgc.keras3", "dgc_tf.compressors.vgc.keras3",
              "dgc_tf.compressors.error_feedback.keras3"),
    "tf_keras": ("dgc_tf.compressors.dgc.tf_keras", "dgc_tf.compressors.vgc.tf_keras",
                 "dgc_tf.compressors.error_feedback.tf_keras"),
}


def _is_the_launcher():
    """True in `python -m dgc_tf.launch`, which imports this package first: the
    launcher only starts worker processes and should not import TensorFlow."""
    argv = list(getattr(sys, "orig_argv", ()))
    return any(a == "-m" and argv[i + 1:i + 2] == ["dgc_tf.launch"] for i, a in enumerate(argv))


def _register_serializables():
    if _is_the_launcher():
        return
    for package, modules in _SERIALIZABLE_MODULES.items():
        if importlib.util.find_spec(package) is None:
            continue  # that flavour is not installed
        for module in modules:
            importlib.import_module(module)


_register_serializables()
