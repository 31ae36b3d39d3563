// CUDA implementation of DGC>CompressStep for a dense gradient, independent
// of TensorFlow: one grid-stride accumulation kernel (reads g, u, v once,
// writes u and v once), then dgc_topk::gpu::SampledTopK on v (sample, one
// candidate pass, exact top-k), then a k-thread masking kernel. Used by the
// TensorFlow GPU kernel (compress_step_kernels.cu.cc), the standalone test
// (compress_step_standalone_test.cu) and the torch harness (gpu_harness/).
#ifndef DGC_TF_CUSTOM_OPS_COMPRESS_STEP_GPU_CUH_
#define DGC_TF_CUSTOM_OPS_COMPRESS_STEP_GPU_CUH_

#include <cstdint>

#include "compress_step/compress_step_common.h"
#include "sampled_topk/sampled_topk_gpu.cuh"

namespace dgc_compress {
namespace gpu {

template <typename T>
__global__ void AccumulateKernel(StepParams<T> p, const T* __restrict__ g,
                                 T* __restrict__ u, T* __restrict__ v,
                                 int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < n; i += stride) {
    T ui = p.has_momentum ? u[i] : T(0);
    T vi = v[i];
    Accumulate(p, g[i], &ui, &vi);
    if (p.has_momentum) u[i] = ui;
    v[i] = vi;
  }
}

template <typename T, typename Index>
__global__ void MaskKernel(StepParams<T> p, const Index* __restrict__ indices,
                           int64_t k, T* u, T* v) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       j < k; j += stride) {
    MaskSent(p, indices[j], u, v);
  }
}

// Accumulates g into u (unused without a momentum buffer) and v, writes the
// exact top-k of v by magnitude to values/indices (device memory) and, with
// p.mask_selected, zeroes what was sent. F is T's format (dgc_topk::Format,
// same width as T).
template <dgc_topk::Format F, typename T, typename Index>
dgc_topk::gpu::Result CompressStep(const StepParams<T>& p, const T* g, T* u,
                                   T* v, int64_t n, int64_t k,
                                   float sample_ratio, int64_t seed, T* values,
                                   Index* indices,
                                   dgc_topk::gpu::ScratchAllocator* scratch,
                                   const dgc_topk::gpu::LaunchPolicy& launch,
                                   cudaStream_t stream) {
  using Bits = typename dgc_topk::KeyTraits<F>::Bits;
  static_assert(sizeof(Bits) == sizeof(T), "key and value widths differ");
  const dgc_topk::gpu::LaunchConfig acc = launch(n);
  AccumulateKernel<T><<<acc.block_count, acc.thread_per_block, 0, stream>>>(p, g, u, v, n);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return dgc_topk::gpu::internal::CudaError(e, "accumulate");
  dgc_topk::gpu::Result r = dgc_topk::gpu::SampledTopK<F, Index>(
      reinterpret_cast<const Bits*>(v), n, k, sample_ratio, seed,
      reinterpret_cast<Bits*>(values), indices, scratch, launch, stream);
  if (!r.ok() || !p.mask_selected) return r;
  const dgc_topk::gpu::LaunchConfig mask = launch(k);
  MaskKernel<T, Index><<<mask.block_count, mask.thread_per_block, 0, stream>>>(p, indices, k, u, v);
  e = cudaGetLastError();
  if (e != cudaSuccess) return dgc_topk::gpu::internal::CudaError(e, "mask");
  return r;
}

}  // namespace gpu
}  // namespace dgc_compress

#endif  // DGC_TF_CUSTOM_OPS_COMPRESS_STEP_GPU_CUH_
