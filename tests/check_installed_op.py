"""Checks an installed dgc_tf against the TensorFlow of its environment (run by `make test`
in a separate virtual environment with the oldest supported TensorFlow, from outside the
source tree so that the installed package is what is imported).

    python tests/check_installed_op.py 2.19

Fails unless: TensorFlow is still the version asked for (the install did not replace it), the
compiled op loaded, it returns the same exact top-k as the pure-TensorFlow fallback, and its
in-place scatter gives TensorFlow's scatter's bits.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dgc_tf  # noqa: E402
from dgc_tf.ops import _custom_op, topk  # noqa: E402


def main(expected_tf):
    assert tf.__version__.startswith(expected_tf + "."), (
        f"TensorFlow {tf.__version__} is installed; the install replaced {expected_tf}")
    assert "site-packages" in dgc_tf.__file__, f"not the installed package: {dgc_tf.__file__}"
    op = _custom_op.load()
    assert op is not None, "the compiled op did not load"
    rng = np.random.default_rng(0)
    for n, k in [(10, 3), (5000, 5), (300_000, 300)]:
        for dtype in (np.float32, np.float16):
            x = tf.constant(rng.normal(size=n).astype(dtype))
            values, indices = op(x, k)
            ref_values, ref_indices = topk.sampled_topk_tf(x, k)
            np.testing.assert_array_equal(indices.numpy(), ref_indices.numpy())
            np.testing.assert_array_equal(values.numpy(), ref_values.numpy())
    scatter_flat = _custom_op.load_scatter_flat()
    assert scatter_flat is not None, "the compiled scatter did not load"
    ours, theirs = tf.Variable(tf.ones([50, 4])), tf.Variable(tf.ones([50, 4]))
    indices, updates = tf.constant([3, 199, 3]), tf.constant([0.5, 2.0, 0.25])
    scatter_flat(ours.handle, indices, updates, subtract=True)
    tf.raw_ops.ResourceScatterNdSub(ref=theirs.handle, indices=tf.stack(
        [indices // 4, indices % 4], axis=1), updates=updates)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    print(f"dgc_tf {dgc_tf.__version__}: compiled op OK on TensorFlow {tf.__version__} "
          f"({_custom_op.library_path()})")


if __name__ == "__main__":
    main(sys.argv[1])
