"""Builds the compiled op (`_dgc_ops.so`) against the running TensorFlow.

Used by `setup.py` at install time and by the loader (`_custom_op`) when the
installed library does not match the TensorFlow that runs (TensorFlow upgraded
after the install, another runtime): it then compiles the C++ sources that ship
inside the package into a per-user cache keyed by TensorFlow version and ABI
flags, as `torch.utils.cpp_extension` does. The flags come from
`tf.sysconfig`, never hard-coded.

    python -m dgc_tf.ops.build          # build into the cache now (CPU kernel)
    DGC_TF_CUDA=1 python -m dgc_tf.ops.build   # + CUDA kernel (nvcc)

Environment: DGC_TF_CUDA=1, DGC_TF_CUDA_ARCHS=80;90, DGC_TF_NVCC, DGC_TF_CXX
(default g++), DGC_TF_CACHE_DIR (default $XDG_CACHE_HOME/dgc_tf or
~/.cache/dgc_tf).
"""

import concurrent.futures
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

LIBRARY_NAME = "_dgc_ops.so"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Installed: the sources ship as package data next to this file; in a source
# checkout (editable install) they are in custom_ops/cc.
SOURCE_DIRS = (os.path.join(_PACKAGE_DIR, "cc"),
               os.path.join(os.path.dirname(os.path.dirname(_PACKAGE_DIR)), "custom_ops", "cc"))
# One folder per op (as in tensorflow/custom-op), plus common/ for what both
# ops' kernels share; includes are rooted at the source directory
# ("sampled_topk/sampled_topk_common.h"). The one list of the library's
# sources: setup.py builds from it, and a test checks that the Bazel BUILD
# file lists the same.
CPU_SOURCES = ["sampled_topk/sampled_topk_ops.cc",
               "sampled_topk/sampled_topk_kernels.cc",
               "compress_step/compress_step_ops.cc",
               "compress_step/compress_step_kernels.cc",
               "scatter_flat/scatter_flat_ops.cc",
               "scatter_flat/scatter_flat_kernels.cc"]
CUDA_SOURCES = ["sampled_topk/sampled_topk_kernels.cu.cc",
                "compress_step/compress_step_kernels.cu.cc"]


def sources():
    """The directory holding the op's C++ sources, or None."""
    for d in SOURCE_DIRS:
        if all(os.path.exists(os.path.join(d, s)) for s in CPU_SOURCES):
            return d
    return None


def cache_key():
    """`tf<version>-<hash of TensorFlow's flags and of the op sources>`: a library
    built for one key loads into any TensorFlow with the same key, and a newer
    dgc_tf (other sources, maybe another op) never picks up an older build."""
    import tensorflow as tf

    digest = hashlib.sha256(
        "\n".join(tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()).encode())
    source_dir = sources()
    if source_dir is not None:
        for root, _, files in sorted(os.walk(source_dir)):
            for name in sorted(files):
                with open(os.path.join(root, name), "rb") as f:
                    digest.update(name.encode() + b"\0" + f.read())
    return f"tf{tf.__version__}-{digest.hexdigest()[:12]}"


def cached_library_path():
    """Where the per-user cache keeps the library for the running TensorFlow."""
    root = os.environ.get("DGC_TF_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "dgc_tf")
    return os.path.join(root, cache_key(), LIBRARY_NAME)


def compiler_problem():
    """None if the C++ compiler and the sources are there, else what is missing."""
    cxx = os.environ.get("DGC_TF_CXX", "g++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx}) on PATH"
    if sources() is None:
        return "the op's C++ sources are not installed"
    return None


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


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


def _run_parallel(commands, cwd, verbose=True):
    """Runs compiler commands concurrently; raises with the output of failures."""
    def run(cmd):
        if verbose:
            print(" ".join(cmd), flush=True)
        return cmd, subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        results = list(pool.map(run, commands))
    failures = [f"$ {' '.join(cmd)}\n{proc.stdout[-6000:]}" for cmd, proc in results if proc.returncode != 0]
    if failures:
        raise RuntimeError("compilation failed:\n" + "\n".join(failures))


def build_op_library(output, cuda=False, source_dir=None, verbose=True):
    """Compiles the op into `output` (a shared library). Raises on failure.

    Args:
      output: path of the library to write (its directory is created).
      cuda: also compile the CUDA kernel with nvcc and link it in.
      source_dir: directory holding the ops' folders (default: `sources()`).
      verbose: print the compiler commands.
    """
    source_dir = source_dir or sources()
    if source_dir is None:
        raise RuntimeError("the op's C++ sources were not found")
    compile_flags, link_flags = _tf_flags()
    cxx = os.environ.get("DGC_TF_CXX", "g++")
    includes = [f"-I{source_dir}"]
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
        _run_parallel(commands, source_dir, verbose)
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        tmp_out = os.path.join(tmp, "_dgc_ops.so")
        link = [cxx, "-shared", "-O3", "-fPIC"] + objects + extra_objects + ["-o", tmp_out] + link_flags + extra_link
        if verbose:
            print(" ".join(link), flush=True)
        linked = subprocess.run(link, cwd=source_dir, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        if linked.returncode != 0:
            raise RuntimeError(f"linking failed:\n{linked.stdout[-6000:]}")
        # Written under a temporary name and renamed: a concurrent loader never
        # sees a half-written library.
        partial = f"{output}.{os.getpid()}.tmp"
        shutil.copyfile(tmp_out, partial)
        os.replace(partial, output)


def main():
    output = cached_library_path()
    cuda = _flag("DGC_TF_CUDA")
    build_op_library(output, cuda=cuda)
    print(f"dgc_tf: built the compiled op ({'CPU and CUDA' if cuda else 'CPU'} kernels) "
          f"into {output}")


if __name__ == "__main__":
    main()
