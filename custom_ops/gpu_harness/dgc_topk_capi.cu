// C entry point to sampled_topk_gpu.cuh for ctypes (bench_vs_torch.py).
// Build: nvcc -std=c++17 -O3 --expt-relaxed-constexpr -arch=native -shared \
//   -Xcompiler -fPIC -Icustom_ops/cc -o libdgc_topk.so custom_ops/gpu_harness/dgc_topk_capi.cu
#include <cstdio>

#include "common/standalone_cuda.cuh"  // PoolScratch, DeviceLaunchPolicy
#include "sampled_topk/sampled_topk_gpu.cuh"

using dgc_topk::Format;
using dgc_topk::KeyTraits;
namespace gpu = dgc_topk::gpu;

namespace {

template <Format F>
int Run(const void* x, int64_t n, int64_t k, float ratio, int64_t seed,
        void* values, void* indices, int index_bytes, cudaStream_t stream,
        char* err, int err_len) {
  using Bits = typename KeyTraits<F>::Bits;
  static const gpu::LaunchPolicy launch = DeviceLaunchPolicy();
  gpu::Result r;
  {
    PoolScratch scratch(stream);
    if (index_bytes == 4) {
      r = gpu::SampledTopK<F, int32_t>(
          static_cast<const Bits*>(x), n, k, ratio, seed,
          static_cast<Bits*>(values), static_cast<int32_t*>(indices),
          &scratch, launch, stream);
    } else {
      r = gpu::SampledTopK<F, int64_t>(
          static_cast<const Bits*>(x), n, k, ratio, seed,
          static_cast<Bits*>(values), static_cast<int64_t*>(indices),
          &scratch, launch, stream);
    }
  }
  if (!r.ok() && err != nullptr && err_len > 0) {
    std::snprintf(err, err_len, "%s", r.message.c_str());
  }
  return static_cast<int>(r.code);
}

}  // namespace

// format: 0 float32, 1 float16, 2 bfloat16. index_bytes: 4 or 8.
// Returns 0 on success, else a gpu::Result code with the message in err.
extern "C" int dgc_sampled_topk(int format, const void* x, int64_t n,
                                int64_t k, float sample_ratio, int64_t seed,
                                void* values, void* indices, int index_bytes,
                                void* stream, char* err, int err_len) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (format) {
    case 0:
      return Run<Format::kFloat32>(x, n, k, sample_ratio, seed, values,
                                   indices, index_bytes, s, err, err_len);
    case 1:
      return Run<Format::kFloat16>(x, n, k, sample_ratio, seed, values,
                                   indices, index_bytes, s, err, err_len);
    case 2:
      return Run<Format::kBFloat16>(x, n, k, sample_ratio, seed, values,
                                    indices, index_bytes, s, err, err_len);
    default:
      if (err != nullptr && err_len > 0) {
        std::snprintf(err, err_len, "unknown format %d", format);
      }
      return 1;
  }
}
