"""Fashion-MNIST for the examples and tests, read offline where possible.

Debian's `dataset-fashion-mnist` package puts the original IDX files under
`/usr/share/datasets/fashion-mnist`; where they are absent (Colab, other
machines) `keras.datasets.fashion_mnist.load_data()` is used, which downloads.
"""

import gzip
import os

import numpy as np

FASHION_MNIST_DIR = os.environ.get("DGC_TF_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path):
    """Reads one (optionally gzipped) IDX file into a NumPy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number).")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {shape} elements, found {array.size}.")
    return array.reshape(shape)


def load_fashion_mnist(directory=None):
    """Returns `((x_train, y_train), (x_test, y_test))` like `keras.datasets`.

    Images are uint8 `[n, 28, 28]`, labels uint8 `[n]`.
    """
    directory = directory or FASHION_MNIST_DIR
    paths = {split: [os.path.join(directory, name) for name in names]
             for split, names in _FILES.items()}
    if all(os.path.exists(p) for names in paths.values() for p in names):
        return tuple((read_idx(images), read_idx(labels))
                     for images, labels in (paths["train"], paths["test"]))
    import keras  # only where the offline copy is missing
    return keras.datasets.fashion_mnist.load_data()


def fashion_mnist_arrays(train_size=None, test_size=None):
    """Float32 images in [0, 1] with a channel axis, int32 labels, optionally truncated."""
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()

    def prepare(x, y, n):
        x, y = x[:n], y[:n]
        return (x.astype(np.float32) / 255.0)[..., None], y.astype(np.int32)

    return prepare(x_train, y_train, train_size), prepare(x_test, y_test, test_size)
