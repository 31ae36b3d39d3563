"""Packaging for dgc_tf.

The compiled op (`custom_ops/`) is built here at install time; see
`custom_ops/README.md` for the flags, which are read from `tf.sysconfig`.

    pip install --no-build-isolation -e .        # CPU kernel (g++)
    DGC_TF_CUDA=1 pip install --no-build-isolation -e .   # + CUDA kernel (nvcc)

`--no-build-isolation` matters: the op must be compiled against the
TensorFlow that will load it. If the build fails the install still
succeeds, with a warning, and dgc_tf uses its pure-TensorFlow fallback.

Environment switches:
  DGC_TF_CUDA=1            also compile the CUDA kernel with nvcc and link it in
  DGC_TF_CUDA_ARCHS=80;90  GPU architectures for nvcc (default: 80;90)
  DGC_TF_NVCC=/path/nvcc   nvcc to use (default: $CUDA_HOME/bin/nvcc, then PATH)
  DGC_TF_CXX=g++           host C++ compiler (default: g++)
  DGC_TF_SKIP_OP_BUILD=1   do not build the op at all (fallback only)
"""
import importlib.util
import os
import shutil
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
OP_EXT_NAME = "dgc_tf.ops._dgc_ops"
OP_LIBRARY = os.path.join("dgc_tf", "ops", "_dgc_ops.so")
CC_DIR = os.path.join("custom_ops", "cc")


def _load_builder():
    """dgc_tf/ops/build.py, loaded by path: importing the dgc_tf package here would
    import Keras, which an install does not need."""
    spec = importlib.util.spec_from_file_location(
        "_dgc_tf_build", os.path.join(HERE, "dgc_tf", "ops", "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = _load_builder()
_flag = builder._flag


def _banner(kind, message):
    bar = "=" * 78
    print(f"\n{bar}\n{kind} (dgc_tf): {message}\n{bar}\n", file=sys.stderr, flush=True)


def _warn(message):
    _banner("WARNING", message)


def build_op_library(output, cuda=False):
    builder.build_op_library(output, cuda=cuda, source_dir=os.path.join(HERE, CC_DIR))


class BuildPyWithSources(build_py):
    """Ships the op's C++ sources inside the package (dgc_tf/ops/cc), so that
    dgc_tf can rebuild the op for another TensorFlow without a source tree."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "dgc_tf", "ops", "cc")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(os.path.join(HERE, CC_DIR), target)


class BuildOpExt(build_ext):
    """Builds `dgc_tf/ops/_dgc_ops.so` with g++ (and nvcc); never fails the install."""

    def get_ext_filename(self, fullname):
        # A plain `.so` name (no Python ABI tag): TensorFlow loads it, not
        # Python. distutils asks with the last name component only,
        # setuptools with the full dotted name.
        if fullname == OP_EXT_NAME:
            return OP_LIBRARY
        if fullname == OP_EXT_NAME.rsplit(".", 1)[-1]:
            return os.path.basename(OP_LIBRARY)
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if ext.name != OP_EXT_NAME:
            return super().build_extension(ext)
        output = self.get_ext_fullpath(ext.name)
        if _flag("DGC_TF_SKIP_OP_BUILD"):
            _warn("DGC_TF_SKIP_OP_BUILD is set: the compiled op is not built; "
                  "dgc_tf will use its pure-TensorFlow fallback.")
            return
        cuda = _flag("DGC_TF_CUDA")
        import tensorflow as tf
        built_for = f"TensorFlow {tf.__version__}"
        try:
            build_op_library(output, cuda=cuda)
            _banner("INFO", f"built the compiled op for {built_for}: CPU kernel"
                    + (" and CUDA kernel." if cuda else "; no CUDA kernel (DGC_TF_CUDA=1 "
                       "builds one with nvcc)."))
            return
        except Exception as e:  # noqa: BLE001 - any failure leaves the fallback
            error = e
        if cuda:
            _warn(f"building the CUDA kernel failed ({error}); building the CPU kernel only.")
            try:
                build_op_library(output, cuda=False)
                _banner("INFO", f"built the compiled op for {built_for}: CPU kernel only "
                        "(the CUDA kernel failed, above).")
                return
            except Exception as e:  # noqa: BLE001
                error = e
        if os.path.exists(output):
            os.remove(output)
        # A stale in-place library (e.g. built for another TensorFlow) would
        # be picked up by the loader; remove it so the fallback is clean.
        stale = os.path.join(HERE, OP_LIBRARY)
        if (self.inplace or getattr(self, "editable_mode", False)) and os.path.exists(stale):
            os.remove(stale)
        _warn(f"could not build the compiled op ({error}).\n"
              "dgc_tf is installed and will use its pure-TensorFlow fallback (same results, slower).\n"
              "Fix the toolchain (g++, TensorFlow headers) and rebuild with\n"
              "  python -m dgc_tf.ops.build")


setup(
    name="dgc_tf",
    version="0.1.0",
    description="Deep Gradient Compression for TensorFlow 2 / Keras",
    packages=find_packages(include=["dgc_tf", "dgc_tf.*"]),
    python_requires=">=3.10",
    # A range, not a pin, so that installing never replaces the TensorFlow a
    # runtime ships (hosted notebooks lag the newest release).
    install_requires=["tensorflow>=2.19,<2.22", "numpy"],
    extras_require={"legacy": ["tf-keras>=2.19,<2.22"]},
    ext_modules=[Extension(OP_EXT_NAME, sources=[], optional=True)],
    cmdclass={"build_ext": BuildOpExt, "build_py": BuildPyWithSources},
    zip_safe=False,
)
