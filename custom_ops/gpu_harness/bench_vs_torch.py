"""Checks and times the CUDA sampled top-k (sampled_topk_gpu.cuh) against torch.

Runs on a CUDA machine with PyTorch and nvcc; TensorFlow is not needed.
It builds `dgc_topk_capi.cu` (which includes the header and the standalone
test's helpers) into a shared library with nvcc, calls it through ctypes on
torch CUDA tensors, and

1. checks it against an exact reference, torch.sort(|x|, descending,
   stable=True) (ties by ascending index), for float32 / float16 / bfloat16,
   int32 / int64 indices, edge sizes and patterns, and NaN / k errors;
2. times it against torch.topk(|x|, k) and the one-pass floor |x|.max()
   at 1M / 25M / 100M elements and density 0.1% / 1% (CUDA events, median).

    python custom_ops/gpu_harness/bench_vs_torch.py [--json out.json] [--sizes 1M,25M]
"""
import argparse
import ctypes
import json
import math
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "dgc_topk_capi.cu")
# The op's sources: the include root (#include "sampled_topk/...").
CC_DIR = os.path.join(os.path.dirname(HERE), "cc")
FORMATS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def build_library(source, lib_name, out_dir, nvcc="nvcc", arch="native"):
    """Compiles `source` (a C-API .cu file) into `out_dir/lib_name` with nvcc, unless
    that library is newer than `source` and every file under custom_ops/cc; returns its path."""
    lib = os.path.join(out_dir, lib_name)
    deps = [source] + [os.path.join(root, f) for root, _, files in os.walk(CC_DIR) for f in files]
    if os.path.exists(lib) and all(
            os.path.getmtime(lib) >= os.path.getmtime(d) for d in deps):
        return lib
    os.makedirs(out_dir, exist_ok=True)
    cmd = [nvcc, "-std=c++17", "-O3", "--expt-relaxed-constexpr", f"-arch={arch}", "-shared",
           "-Xcompiler", "-fPIC", f"-I{CC_DIR}", "-o", lib, source]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return lib


def build(out_dir, nvcc="nvcc", arch="native"):
    return build_library(SOURCE, "libdgc_topk.so", out_dir, nvcc, arch)


class SampledTopK:
    def __init__(self, lib_path):
        self.lib = ctypes.CDLL(lib_path)
        f = self.lib.dgc_sampled_topk
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_float,
                      ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                      ctypes.c_char_p, ctypes.c_int]
        self.fn = f

    def __call__(self, x, k, sample_ratio=0.01, seed=None, index_dtype=None):
        x = x.contiguous().reshape(-1)
        if index_dtype is None:
            index_dtype = torch.int32 if x.numel() < 2**31 else torch.int64
        values = torch.empty(max(k, 1), dtype=x.dtype, device=x.device)
        indices = torch.empty(max(k, 1), dtype=index_dtype, device=x.device)
        err = ctypes.create_string_buffer(512)
        code = self.fn(FORMATS[x.dtype], x.data_ptr(), x.numel(), k, sample_ratio,
                       -1 if seed is None else seed, values.data_ptr(), indices.data_ptr(),
                       indices.element_size(), torch.cuda.current_stream().cuda_stream, err, 512)
        if code != 0:
            raise ValueError(err.value.decode())
        return values[:k], indices[:k]


def reference(x, k):
    order = torch.sort(x.reshape(-1).abs().float(), descending=True, stable=True).indices[:k]
    return x.reshape(-1)[order], order


def make(pattern, n, dtype, gen):
    if pattern == "normal":
        x = torch.randn(n, generator=gen, device="cuda")
    elif pattern == "equal":
        x = torch.full((n,), -1.5, device="cuda")
    elif pattern == "ties":
        x = torch.randint(-3, 4, (n,), generator=gen, device="cuda").float()
    elif pattern == "inf":
        x = torch.randn(n, generator=gen, device="cuda")
        x[torch.randint(0, n, (3,), generator=gen, device="cuda")] = math.inf
        x[0] = -math.inf
    else:
        raise ValueError(pattern)
    return x.to(dtype)


def check(op):
    gen = torch.Generator(device="cuda").manual_seed(0)
    passed = failed = 0
    for dtype in FORMATS:
        for n in (1, 2, 3, 1023, 1024, 1025, 4097, 65535, 65537, 1_000_003):
            for pattern in ("normal", "equal", "ties", "inf"):
                x = make(pattern, n, dtype, gen)
                for k in sorted({1, n, max(1, n // 1000), max(1, n // 100), n // 2 or 1}):
                    for seed, idx_dtype in ((None, torch.int32), (5, torch.int64)):
                        values, indices = op(x, k, seed=seed, index_dtype=idx_dtype)
                        ref_values, ref_indices = reference(x, k)
                        ok = torch.equal(indices.long(), ref_indices) and torch.equal(values, ref_values)
                        passed += ok
                        failed += not ok
                        if not ok:
                            print(f"FAIL {dtype} n={n} {pattern} k={k} seed={seed}")
    for bad in (lambda: op(torch.tensor([1.0, float("nan")], device="cuda"), 1),
                lambda: op(torch.ones(10, device="cuda"), 11),
                lambda: op(torch.ones(10, device="cuda"), 0)):
        try:
            bad()
            failed += 1
            print("FAIL: error case accepted")
        except ValueError:
            passed += 1
    print(f"correctness: {passed} passed, {failed} failed", flush=True)
    return failed == 0


def time_cuda(fn, repeats=20, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def parse_size(text):
    text = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def bench(op, sizes, densities, dtype):
    rows = []
    print(f"| size | density | k | dgc ms | torch.topk ms | floor ms | topk/dgc | dgc/floor |  ({dtype})")
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        x = torch.randn(n, device="cuda").to(dtype)
        for d in densities:
            k = max(1, math.ceil(d * n))
            t_op = time_cuda(lambda: op(x, k))
            t_topk = time_cuda(lambda: torch.topk(x.abs(), k))
            t_floor = time_cuda(lambda: x.abs().max())
            same = torch.equal(torch.sort(op(x, k)[1].long()).values,
                               torch.sort(reference(x, k)[1]).values)
            row = dict(size=n, density=d, k=k, dgc_ms=t_op, torch_topk_ms=t_topk, floor_ms=t_floor,
                       speedup_vs_topk=t_topk / t_op, dgc_over_floor=t_op / t_floor, exact=bool(same))
            rows.append(row)
            print(f"| {n} | {d:.1%} | {k} | {t_op:.3f} | {t_topk:.3f} | {t_floor:.3f} | "
                  f"{t_topk / t_op:.2f}x | {t_op / t_floor:.2f}x |{'' if same else ' MISMATCH'}", flush=True)
        del x
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", default=os.path.join(HERE, "build"))
    parser.add_argument("--nvcc", default=os.environ.get("NVCC", "nvcc"))
    parser.add_argument("--arch", default="native")
    parser.add_argument("--sizes", default="1M,25M,100M")
    parser.add_argument("--densities", default="0.001,0.01")
    parser.add_argument("--json")
    parser.add_argument("--skip-check", action="store_true")
    args = parser.parse_args()
    op = SampledTopK(build(args.build_dir, args.nvcc, args.arch))
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    ok = True if args.skip_check else check(op)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    densities = [float(d) for d in args.densities.split(",")]
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "correct": ok}
    for dtype in (torch.float32, torch.float16):
        results[str(dtype)] = bench(op, sizes, densities, dtype)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
