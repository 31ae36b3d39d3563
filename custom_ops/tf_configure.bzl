"""Repository rule `tf_configure`: the installed TensorFlow as a Bazel repository.

Like tensorflow/custom-op's tf_configure, but it asks `tf.sysconfig` directly
(with $PYTHON_BIN_PATH, default python3) instead of reading a generated
.bazelrc. It creates @local_config_tf with
  :tf_header_lib                the TensorFlow headers (cc_library)
  :libtensorflow_framework      the framework shared library
  build_defs.bzl                TF_COPTS (compile flags other than -I, e.g.
                                --std=c++17 -D_GLIBCXX_USE_CXX11_ABI=1),
                                TF_CFLAGS (all of them), NVCC, CUDA_LIB_DIR
so the C++17 / ABI flags are TensorFlow's own, never hard-coded.
"""

_QUERY = """
import json, tensorflow as tf
print(json.dumps({
    "cflags": tf.sysconfig.get_compile_flags(),
    "lflags": tf.sysconfig.get_link_flags(),
    "include": tf.sysconfig.get_include(),
    "lib": tf.sysconfig.get_lib(),
}))
"""

def _tf_configure_impl(ctx):
    python = ctx.os.environ.get("PYTHON_BIN_PATH", "python3")
    result = ctx.execute([python, "-c", _QUERY], environment = {"TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.return_code != 0:
        fail("tf_configure: could not import tensorflow with %s:\n%s" % (python, result.stderr))
    info = json.decode(result.stdout.strip().splitlines()[-1])
    ctx.symlink(info["include"], "include")
    ctx.symlink(info["lib"], "lib")
    framework = [f[len("-l:"):] for f in info["lflags"] if f.startswith("-l:")]
    framework = framework[0] if framework else "libtensorflow_framework.so.2"
    nvcc = ctx.os.environ.get("DGC_TF_NVCC", "")
    if not nvcc:
        found = ctx.which("nvcc")
        nvcc = str(found) if found else "/usr/local/cuda/bin/nvcc"
    nvcc_path = ctx.path(nvcc)
    cuda_lib_dir = "/usr/local/cuda/lib64"
    if nvcc_path.exists:
        cuda_lib_dir = str(nvcc_path.realpath.dirname.dirname) + "/lib64"
    ctx.file("BUILD", """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "tf_header_lib",
    hdrs = glob(["include/**"], allow_empty = True),
    includes = ["include"],
)

filegroup(
    name = "tf_header_files",
    srcs = glob(["include/**"], allow_empty = True),
)

cc_library(
    name = "libtensorflow_framework",
    srcs = ["lib/%s"],
)
""" % framework)
    ctx.file("build_defs.bzl", "\n".join([
        "TF_CFLAGS = %r" % info["cflags"],
        "TF_COPTS = %r" % [f for f in info["cflags"] if not f.startswith("-I")],
        "TF_INCLUDE = %r" % info["include"],
        "NVCC = %r" % nvcc,
        "CUDA_LIB_DIR = %r" % cuda_lib_dir,
        "",
    ]))

tf_configure = repository_rule(
    implementation = _tf_configure_impl,
    environ = ["PYTHON_BIN_PATH", "DGC_TF_NVCC"],
    local = True,
)
