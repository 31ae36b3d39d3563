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
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
OP_EXT_NAME = "dgc_tf.ops._dgc_ops"
OP_LIBRARY = os.path.join("dgc_tf", "ops", "_dgc_ops.so")
CC_DIR = os.path.join("custom_ops", "cc")
CPU_SOURCES = [
    os.path.join(CC_DIR, "ops", "sampled_topk_ops.cc"),
    os.path.join(CC_DIR, "kernels", "sampled_topk_kernels.cc"),
    os.path.join(CC_DIR, "ops", "compress_step_ops.cc"),
    os.path.join(CC_DIR, "kernels", "compress_step_kernels.cc"),
]
CUDA_SOURCES = [os.path.join(CC_DIR, "kernels", "sampled_topk_kernels.cu.cc"),
                os.path.join(CC_DIR, "kernels", "compress_step_kernels.cu.cc")]
INCLUDE_DIRS = [os.path.join(CC_DIR, "kernels")]


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _warn(message):
    bar = "=" * 78
    print(f"\n{bar}\nWARNING (dgc_tf): {message}\n{bar}\n", file=sys.stderr, flush=True)


def _tf_flags():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # the TensorFlow that will load the op

    return list(tf.sysconfig.get_compile_flags()), list(tf.sysconfig.get_link_flags())


def _find_nvcc():
    candidates = [os.environ.get("DGC_TF_NVCC")]
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for c in candidates:
        if c and os.path.exists(c):
            return os.path.realpath(c)
    return None


def _cuda_lib_dir(nvcc):
    """Directory holding libcudart_static.a: $CUDA_HOME, nvcc's tree, /usr/local/cuda."""
    homes = [os.environ.get("CUDA_HOME"), os.path.dirname(os.path.dirname(nvcc)), "/usr/local/cuda"]
    for home in homes:
        for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib")):
            if home and os.path.exists(os.path.join(home, sub, "libcudart_static.a")):
                return os.path.join(home, sub)
    raise RuntimeError("libcudart_static.a not found (set CUDA_HOME)")


def _cuda_arch_flags():
    archs = [a.strip() for a in os.environ.get("DGC_TF_CUDA_ARCHS", "80;90").replace(",", ";").split(";") if a.strip()]
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    if archs:  # PTX of the newest for forward compatibility
        flags += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
    return flags


def _run_parallel(commands):
    """Runs compiler commands concurrently; raises with the output of failures."""
    def run(cmd):
        print(" ".join(cmd), flush=True)
        return cmd, subprocess.run(cmd, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        results = list(pool.map(run, commands))
    failures = [f"$ {' '.join(cmd)}\n{proc.stdout[-6000:]}" for cmd, proc in results if proc.returncode != 0]
    if failures:
        raise RuntimeError("compilation failed:\n" + "\n".join(failures))


def build_op_library(output, cuda=False):
    """Compiles the op into `output` (a shared library). Raises on failure."""
    compile_flags, link_flags = _tf_flags()
    cxx = os.environ.get("DGC_TF_CXX", "g++")
    includes = [f"-I{os.path.join(HERE, d)}" for d in INCLUDE_DIRS]
    common = ["-O3", "-fPIC", "-DNDEBUG"] + includes + compile_flags
    defines = []
    extra_objects, extra_link = [], []
    with tempfile.TemporaryDirectory(prefix="dgc_tf_build_") as tmp:
        commands = []
        if cuda:
            nvcc = _find_nvcc()
            if nvcc is None:
                raise RuntimeError("DGC_TF_CUDA=1 but nvcc was not found (set DGC_TF_NVCC or CUDA_HOME)")
            defines = ["-DGOOGLE_CUDA=1"]
            for src in CUDA_SOURCES:
                obj = os.path.join(tmp, os.path.basename(src) + ".o")
                commands.append([nvcc, "-std=c++17", "-c", "-x", "cu", "-Xcompiler", "-fPIC",
                                 "--expt-relaxed-constexpr", "-DNDEBUG", "-DGOOGLE_CUDA=1", "-O3", "-w"]
                                + _cuda_arch_flags() + includes + compile_flags + [src, "-o", obj])
                extra_objects.append(obj)
            lib_dir = _cuda_lib_dir(nvcc)
            extra_link = [f"-L{lib_dir}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
        objects = []
        for src in CPU_SOURCES:
            obj = os.path.join(tmp, os.path.basename(src) + ".o")
            commands.append([cxx, "-c", "-w"] + common + defines + [src, "-o", obj])
            objects.append(obj)
        _run_parallel(commands)
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        tmp_out = os.path.join(tmp, "_dgc_ops.so")
        link = [cxx, "-shared", "-O3", "-fPIC"] + objects + extra_objects + ["-o", tmp_out] + link_flags + extra_link
        print(" ".join(link), flush=True)
        subprocess.run(link, cwd=HERE, check=True)
        shutil.copyfile(tmp_out, output)


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
        try:
            build_op_library(output, cuda=cuda)
            return
        except Exception as e:  # noqa: BLE001 - any failure leaves the fallback
            error = e
        if cuda:
            _warn(f"building the CUDA kernel failed ({error}); building the CPU kernel only.")
            try:
                build_op_library(output, cuda=False)
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
              "  pip install --no-build-isolation -e .    (or: make install)")


setup(
    name="dgc_tf",
    version="0.1.0",
    description="Deep Gradient Compression for TensorFlow 2 / Keras",
    packages=find_packages(include=["dgc_tf", "dgc_tf.*"]),
    python_requires=">=3.10",
    install_requires=["tensorflow>=2.21,<2.22", "numpy"],
    extras_require={"legacy": ["tf-keras>=2.21,<2.22"]},
    ext_modules=[Extension(OP_EXT_NAME, sources=[], optional=True)],
    cmdclass={"build_ext": BuildOpExt},
    zip_safe=False,
)
