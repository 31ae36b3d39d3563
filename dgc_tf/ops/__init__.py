"""Selection ops: exact top-k by magnitude with a sampled-threshold pre-filter."""

from dgc_tf.ops.topk import sampled_topk, sampled_topk_tf, using_custom_op

__all__ = ["sampled_topk", "sampled_topk_tf", "using_custom_op"]
