"""Checks and times the CUDA fused compress step (compress_step_gpu.cuh) with torch.

Runs on a CUDA machine with PyTorch and nvcc; TensorFlow is not needed. It
builds `dgc_compress_step_capi.cu` with nvcc, calls it through ctypes on torch
CUDA tensors, and

1. checks it against the same step written in torch (momentum correction in
   float32, exact top-k by torch.sort(|v|, descending, stable=True), masking):
   values, indices, u and v must match bit for bit;
2. times it against a device-to-device copy of the bytes it must move at
   least (read g, u, v; write u, v: 20 n bytes), in GB/s (CUDA events, median).

    python custom_ops/gpu_harness/bench_compress_step.py [--json out.json] [--sizes 1M,25M,100M]
"""
import argparse
import ctypes
import json
import os

import torch

from bench_vs_torch import build_library  # the harnesses' one nvcc build (same folder)

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "dgc_compress_step_capi.cu")


def build(out_dir, nvcc="nvcc", arch="native"):
    return build_library(SOURCE, "libdgc_compress_step.so", out_dir, nvcc, arch)


class CompressStep:
    def __init__(self, lib_path):
        f = ctypes.CDLL(lib_path).dgc_compress_step_f32
        f.restype = ctypes.c_int
        f.argtypes = ([ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_float]
                      + [ctypes.c_int] * 3 + [ctypes.c_float, ctypes.c_int64]
                      + [ctypes.c_void_p] * 3 + [ctypes.c_char_p, ctypes.c_int])
        self.fn = f

    def __call__(self, g, u, v, k, momentum=0.9, nesterov=False, masking=True):
        values = torch.empty(k, dtype=torch.float32, device=v.device)
        indices = torch.empty(k, dtype=torch.int32, device=v.device)
        err = ctypes.create_string_buffer(512)
        code = self.fn(g.data_ptr(), u.data_ptr(), v.data_ptr(), v.numel(), k, momentum,
                       int(nesterov), 1, int(masking), 0.01, -1, values.data_ptr(),
                       indices.data_ptr(), torch.cuda.current_stream().cuda_stream, err, 512)
        if code:
            raise RuntimeError(err.value.decode())
        return values, indices


def reference(g, u, v, k, momentum, nesterov, masking):
    m = torch.tensor(momentum, dtype=torch.float32, device=v.device)
    if nesterov:
        u = m * (u + g)
        v = (v + u) + g
    else:
        u = m * u + g
        v = v + u
    order = torch.sort(v.abs(), descending=True, stable=True).indices[:k]
    values = v[order].clone()
    v = v.clone()
    v[order] = 0
    if masking:
        u = u.clone()
        u[order] = 0
    return values, order.to(torch.int32), u, v


def check(step):
    ok = True
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n in (1000, 4103, 100_000, 1 << 20):
        for density in (0.001, 0.01):
            k = max(1, int(n * density))
            for nesterov in (False, True):
                for masking in (False, True):
                    g, u, v = (torch.randn(n, device="cuda", generator=gen) for _ in range(3))
                    want = reference(g, u, v, k, 0.9, nesterov, masking)
                    got_values, got_indices = step(g, u, v, k, 0.9, nesterov, masking)
                    torch.cuda.synchronize()
                    same = all(torch.equal(a, b) for a, b in zip(
                        (got_values, got_indices, u, v), want))
                    print(f"{'ok  ' if same else 'FAIL'} n={n} k={k} nesterov={nesterov} "
                          f"masking={masking}")
                    ok = ok and same
    return ok


def time_ms(fn, reps=20):
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,25M,100M")
    parser.add_argument("--build-dir", default="/tmp/dgc_compress_step_build")
    parser.add_argument("--json")
    args = parser.parse_args()
    step = CompressStep(build(args.build_dir))
    ok = check(step)
    rows = []
    for text in args.sizes.split(","):
        n = int(float(text.rstrip("M")) * 2**20) if text.endswith("M") else int(text)
        k = max(1, n // 1000)
        g, u, v = (torch.randn(n, device="cuda") for _ in range(3))
        src = torch.empty(5 * n // 2, device="cuda")
        dst = torch.empty_like(src)
        step_ms = time_ms(lambda: step(g, u, v, k))
        copy_ms = time_ms(lambda: dst.copy_(src))  # reads and writes 20 n bytes in all
        gbps = lambda ms: 20 * n / ms / 1e6  # noqa: E731
        rows.append(dict(n=n, k=k, step_ms=step_ms, copy_ms=copy_ms, step_gbps=gbps(step_ms),
                         copy_gbps=gbps(copy_ms), step_over_copy=step_ms / copy_ms))
    print("| n | k | fused step | GB/s | d2d copy (same bytes) | GB/s | step / copy |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['k']:,} | {r['step_ms']:.3f} ms | {r['step_gbps']:.0f} | "
              f"{r['copy_ms']:.3f} ms | {r['copy_gbps']:.0f} | {r['step_over_copy']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "correct": ok, "rows": rows}, f,
                      indent=2)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
