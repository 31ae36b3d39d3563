"""Gradient compressors, one package per method on one neutral frame.

    compressors/
      base/   the frame: state, counters, guards, the skip protocol, the
              exchange hand-off, apply, stats, and the Keras 3 / tf_keras
              adapters (its docstring is the contract a method fulfils)
      dgc/    Deep Gradient Compression: pure math, config, replica step, DGCSGD
      vgc/    variance-based gradient compression: the same, plus VGC's
              micro-batch estimator and training step, VGCSGD
      error_feedback/  error-feedback top-k for any Keras optimizer: DGC's
              replica step without momentum, the wrapped optimizer's apply,
              TopKErrorFeedback

Why this layout: a method is a room of its own. Everything two methods would
otherwise write twice (or borrow from each other) sits in `base/` once, and a
method's package holds only what makes it that method: its math as small
pure functions (optax style, the specification its step is tested against),
its replica step, and thin Keras adapters that declare its state. Imports go
one way: methods import the frame, the frame imports no method, and
`dgc_tf.distribute` (the exchange) imports neither. A new method is a new
sibling package; nothing in `base/` or in another method changes.

The old module paths (`dgc_tf.keras3`, `dgc_tf.tf_keras`, `dgc_tf.vgc`,
`dgc_tf.compression`, `dgc_tf.config`) re-export from here.
"""
