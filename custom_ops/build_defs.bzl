"""`dgc_custom_op_library`: the Bazel build of dgc_tf's op library.

Builds the same shared library as setup.py: the op and CPU kernel sources
with TensorFlow's compile flags (from @local_config_tf, see tf_configure.bzl)
plus -O3 -fPIC, linked against libtensorflow_framework; with
`--define=dgc_cuda=true`, the CUDA sources are compiled by nvcc (a genrule:
no rules_cuda needed) with -DGOOGLE_CUDA=1 and linked in with the static
CUDA runtime.

    bazel build //:dgc_tf/ops/_dgc_ops.so
    bazel build --define=dgc_cuda=true //:dgc_tf/ops/_dgc_ops.so
"""

load("@local_config_tf//:build_defs.bzl", "CUDA_LIB_DIR", "NVCC", "TF_CFLAGS", "TF_COPTS")

def dgc_custom_op_library(
        name,
        srcs,
        hdrs = [],
        cuda_srcs = [],
        cuda_hdrs = [],
        include_dirs = [],
        cuda_archs = ["80", "90"],
        copts = [],
        cuda_config = "//:dgc_cuda"):
    """A TensorFlow custom-op shared library `name` (e.g. "pkg/_ops.so").

    Args:
      name: output path of the shared library.
      srcs: C++ sources (op registrations, CPU kernels).
      hdrs: headers used by srcs.
      cuda_srcs: *.cu.cc sources compiled with nvcc when `cuda_config` holds.
      cuda_hdrs: headers used by cuda_srcs (TensorFlow-free CUDA headers).
      include_dirs: extra -I directories (workspace-relative), for g++ and nvcc.
      cuda_archs: SM versions for nvcc -gencode.
      copts: extra compile flags for srcs.
      cuda_config: config_setting label that turns the CUDA build on.
    """
    cuda_objects = []
    gencode = " ".join(["-gencode arch=compute_%s,code=sm_%s" % (a, a) for a in cuda_archs])
    for i, src in enumerate(cuda_srcs):
        obj = "%s_cuda_%d.o" % (name.replace("/", "_"), i)
        native.genrule(
            name = obj + "_nvcc",
            srcs = [src] + hdrs + cuda_hdrs + ["@local_config_tf//:tf_header_files"],
            outs = [obj],
            # Without CUDA the object is an empty placeholder (never linked),
            # so `bazel build //...` works on machines without nvcc.
            cmd = select({
                cuda_config: " ".join([
                    NVCC,
                    "-std=c++17 -c -x cu -Xcompiler -fPIC --expt-relaxed-constexpr",
                    "-DNDEBUG -DGOOGLE_CUDA=1 -O3 -w",
                    gencode,
                    " ".join(["-I" + d for d in include_dirs]),
                    " ".join(TF_CFLAGS),
                    "$(location %s) -o $@" % src,
                ]),
                "//conditions:default": "touch $@",
            }),
        )
        cuda_objects.append(":" + obj)

    native.cc_binary(
        name = name,
        srcs = srcs + hdrs + select({
            cuda_config: cuda_objects,
            "//conditions:default": [],
        }),
        copts = TF_COPTS + ["-O3", "-fPIC", "-DNDEBUG", "-w"] + ["-I" + d for d in include_dirs] + copts + select({
            cuda_config: ["-DGOOGLE_CUDA=1"],
            "//conditions:default": [],
        }),
        linkopts = select({
            cuda_config: ["-L" + CUDA_LIB_DIR, "-lcudart_static", "-ldl", "-lrt", "-lpthread"],
            "//conditions:default": [],
        }),
        linkshared = 1,
        deps = [
            "@local_config_tf//:libtensorflow_framework",
            "@local_config_tf//:tf_header_lib",
        ],
    )
