// C entry point to compress_step_gpu.cuh (float32) for ctypes
// (bench_compress_step.py).
// Build: nvcc -std=c++17 -O3 --expt-relaxed-constexpr -arch=native -shared \
//   -Xcompiler -fPIC -Icustom_ops/cc -o libdgc_compress_step.so \
//   custom_ops/gpu_harness/dgc_compress_step_capi.cu
#include <cstdio>

#include "common/standalone_cuda.cuh"  // PoolScratch, DeviceLaunchPolicy
#include "compress_step/compress_step_gpu.cuh"

using dgc_topk::Format;
namespace gpu = dgc_topk::gpu;

// In place on device buffers u (ignored when has_momentum == 0), v, read g;
// writes k values and int32 indices. Returns 0 on success, else a
// dgc_topk::gpu::Result code with the message in err.
extern "C" int dgc_compress_step_f32(const float* g, float* u, float* v, int64_t n, int64_t k,
                                     float momentum, int nesterov, int has_momentum,
                                     int momentum_masking, float sample_ratio, int64_t seed,
                                     float* values, int32_t* indices, void* stream, char* err,
                                     int err_len) {
  static const gpu::LaunchPolicy launch = DeviceLaunchPolicy();
  const dgc_compress::StepParams<float> p{momentum, nesterov != 0, has_momentum != 0,
                                          momentum_masking != 0};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  gpu::Result r;
  {
    PoolScratch scratch(s);
    r = dgc_compress::gpu::CompressStep<Format::kFloat32, float, int32_t>(
        p, g, u, v, n, k, sample_ratio, seed, values, indices, &scratch, launch, s);
  }
  if (!r.ok() && err != nullptr && err_len > 0) {
    std::snprintf(err, err_len, "%s", r.message.c_str());
  }
  return static_cast<int>(r.code);
}
