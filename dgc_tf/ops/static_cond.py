"""`static_cond`: one branch chosen when the step is traced where that is known, else `tf.cond`.

Several of DGC's choices are fixed for a whole run in one configuration and
change with the warm-up stage in another (the scatter's form, the leader
route, a dense update). Deciding a Python bool at trace time keeps the graph
free of a conditional that could only ever take one branch.
"""

import tensorflow as tf


def static_cond(pred, true_fn, false_fn):
    """`true_fn()` or `false_fn()`: chosen now for a Python bool, by `tf.cond` for a bool tensor."""
    if isinstance(pred, bool):
        return true_fn() if pred else false_fn()
    return tf.cond(pred, true_fn, false_fn)
