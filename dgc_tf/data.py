"""Fashion-MNIST, by its first module name; it lives in `dgc_tf.datasets.fashion_mnist`."""

from dgc_tf.datasets.fashion_mnist import (FASHION_MNIST_DIR, fashion_mnist_arrays,
                                           load_fashion_mnist, read_idx)

__all__ = ["FASHION_MNIST_DIR", "fashion_mnist_arrays", "load_fashion_mnist", "read_idx"]
