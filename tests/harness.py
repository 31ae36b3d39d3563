"""Drives DGCSGD of either Keras flavour with chosen per-replica gradients; what the
tests of the compiled ops share."""

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import NUM_REPLICAS

FLAVOURS = ("keras3", "tf_keras")
# The op's sources: one folder per op, includes rooted here.
CC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "custom_ops", "cc")


def assert_cuda_sources_compile(kernel, standalone, timeout):
    """nvcc compiles `kernel` (a TF CUDA kernel, path under custom_ops/cc, with
    TensorFlow's flags) to an object and links the standalone test `standalone`
    (without them: its headers must not need TensorFlow), both at once."""
    nvcc = shutil.which("nvcc")
    arch = ["-gencode", "arch=compute_90,code=sm_90"]
    with tempfile.TemporaryDirectory() as tmp:
        binary = os.path.join(tmp, "standalone_test")
        tf_kernel = [nvcc, "-std=c++17", "-c", "-x", "cu", "-Xcompiler", "-fPIC",
                     "--expt-relaxed-constexpr", "-DNDEBUG", "-DGOOGLE_CUDA=1", "-O2", "-w",
                     *arch, f"-I{CC_DIR}", *tf.sysconfig.get_compile_flags(),
                     os.path.join(CC_DIR, kernel), "-o", os.path.join(tmp, "kernels.cu.o")]
        linked = [nvcc, "-std=c++17", "-O2", "--expt-relaxed-constexpr", *arch, f"-I{CC_DIR}",
                  os.path.join(CC_DIR, standalone), "-o", binary]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for cmd in (tf_kernel, linked)]
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
        for cmd, p, out in zip((tf_kernel, linked), procs, outs):
            assert p.returncode == 0, f"{' '.join(cmd)}\n{out[-5000:]}"
        assert os.path.getsize(os.path.join(tmp, "kernels.cu.o")) > 0
        assert os.path.exists(binary)


def skip_without_op(reason="the compiled op library is not built"):
    """Skips a test of the compiled ops for want of them, or fails it under
    `DGC_TF_REQUIRE_OP=1` (set by `make test`: there a missing library is a failed build)."""
    if os.environ.get("DGC_TF_REQUIRE_OP", "").strip().lower() in ("1", "true", "yes", "on"):
        pytest.fail("DGC_TF_REQUIRE_OP=1 but " + reason)
    pytest.skip(reason)


def _data_pointer(tensor):
    """The address of an eager CPU tensor's buffer (its DLPack view shares it)."""
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    capsule = tf.experimental.dlpack.to_dlpack(tensor)
    # DLManagedTensor starts with DLTensor, which starts with `void* data`.
    return ctypes.cast(get_pointer(capsule, b"dltensor"), ctypes.POINTER(ctypes.c_void_p))[0]


def shares_buffer_with_readers(variable):
    """Whether two reads alias the variable's buffer (dense mode) or are copies of it
    (TensorFlow's copy-on-read mode, set for good by its scatter and gather kernels)."""
    reads = [tf.raw_ops.ReadVariableOp(resource=variable.handle, dtype=variable.dtype)
             for _ in range(2)]  # both alive, so a copy cannot reuse the first's memory
    return _data_pointer(reads[0]) == _data_pointer(reads[1])


@functools.lru_cache(maxsize=None)
def mirrored_strategy():
    """One strategy per process: collective instance keys restart with every new
    MirroredStrategy, and a second one would clash with the first's cached shapes."""
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(NUM_REPLICAS)])


def optimizer_class(flavour, name="DGCSGD"):
    if flavour == "keras3":
        import keras
        import dgc_tf.keras3 as module
        return getattr(module, name) if name == "DGCSGD" else getattr(keras.optimizers, name)
    import tf_keras
    import dgc_tf.tf_keras as module
    return getattr(module, name) if name == "DGCSGD" else getattr(tf_keras.optimizers, name)


def make_variable(flavour, value, name):
    if flavour == "keras3":
        import keras
        return keras.Variable(value, name=name)
    return tf.Variable(value, name=name)


def local_values(variable):
    """The per-replica values of an ON_READ / mirrored variable, as NumPy arrays."""
    return [np.array(v.numpy()) for v in variable.values]


class Run:
    """Variables and an optimizer under a 2-replica MirroredStrategy."""

    def __init__(self, flavour, optimizer_cls, optimizer_kwargs, weights, strategy=None):
        self.flavour = flavour
        self.strategy = strategy or mirrored_strategy()
        with self.strategy.scope():
            self.variables = [make_variable(flavour, np.array(w, np.float32), f"w{i}")
                              for i, w in enumerate(weights)]
            self.optimizer = optimizer_cls(**optimizer_kwargs)
            # As `fit` does: Keras 3 optimizers built lazily inside a traced
            # multi-replica step fail (for keras.optimizers.SGD too).
            self.optimizer.build(self.variables)

        @tf.function
        def step(grads):
            self.strategy.run(
                lambda g: self.optimizer.apply_gradients(zip(g, self.variables)), args=(grads,))

        self._step = step

    def apply(self, grads_per_replica):
        """`grads_per_replica[r][j]`: replica r's gradient for variable j."""
        grads = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: [tf.constant(np.asarray(g, np.float32))
                         for g in grads_per_replica[ctx.replica_id_in_sync_group]])
        self._step(grads)

    def weights(self):
        return [np.array(v.numpy()) for v in self.variables]


def keras_module(flavour):
    """The Keras package of a flavour: `keras` (Keras 3) or `tf_keras`."""
    if flavour == "keras3":
        import keras
        return keras
    import tf_keras
    return tf_keras
