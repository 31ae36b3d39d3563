"""Error-feedback top-k: top-k compression for any Keras optimizer.

Each replica keeps a residual of its gradient, exchanges its top-k entries
through the same exchange as DGC (`SparseAllGather` or any strategy's
all-reduce), zeroes what it sent, and the wrapped optimizer (Adam, AdamW,
RMSprop, SGD, ...) applies the summed sparse gradient with its own state.
Stich, Cordonnier, Jaggi, "Sparsified SGD with memory", NeurIPS 2018; Karimireddy
et al., "Error feedback fixes SignSGD", ICML 2019; the "gradient accumulation"
baseline of DGC (Lin et al., ICLR 2018).

- `compression`: the math as pure functions (accumulate, select, zero what was
  sent, the exchanged sum as a dense gradient);
- `config`: `ErrorFeedbackConfig`, DGC's config with the momentum factor at 0;
- `optimizer`: the docstring, argument checks and `ErrorFeedbackMixin`, the
  cross-replica apply through the inner optimizer's `update_step`;
- `keras3`, `tf_keras`: `TopKErrorFeedback` for each Keras flavour.

The replica step is DGC's (`dgc_tf.compressors.dgc.replica`): with the
momentum factor at 0, DGC's momentum correction `v = v + (m*u + g)` is the
error feedback `e = e + g`, and its masking, exchange routes and skip protocol
are the same. What this method adds is the apply.
"""

import importlib

from dgc_tf.compressors.error_feedback.config import ErrorFeedbackConfig

__all__ = ["ErrorFeedbackConfig", "TopKErrorFeedback"]


def __getattr__(name):
    # Lazy, as dgc_tf.TopKErrorFeedback: the Keras flavour in use.
    if name == "TopKErrorFeedback":
        flavour = importlib.import_module("dgc_tf").keras_flavour()
        return importlib.import_module(
            f"dgc_tf.compressors.error_feedback.{flavour}").TopKErrorFeedback
    raise AttributeError(f"module 'dgc_tf.compressors.error_feedback' has no attribute {name!r}")
