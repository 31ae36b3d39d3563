"""Compiled ops with pure-TF fallbacks: exact top-k selection and the fused, in-place DGC step."""

from dgc_tf.ops.compress_step import compress_step, compress_step_tf
from dgc_tf.ops.dtypes import index_dtype_for
from dgc_tf.ops.topk import sampled_topk, sampled_topk_tf, using_custom_op

__all__ = ["compress_step", "compress_step_tf", "index_dtype_for", "sampled_topk",
           "sampled_topk_tf", "using_custom_op"]
