// GPU kernel of DGC>SampledTopK: adapts sampled_topk_gpu.cuh (which needs no
// TensorFlow) to an OpKernelContext (gpu_tf_adapter.cu.h); the stream is the
// context's Eigen::GpuDevice's.
#if GOOGLE_CUDA

#define EIGEN_USE_GPU

#include <cstdint>

#include "common/gpu_tf_adapter.cu.h"
#include "common/kernel_util.h"
#include "sampled_topk/sampled_topk_gpu.cuh"
#include "sampled_topk/sampled_topk_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tensorflow {
namespace functor {

using GPUDevice = Eigen::GpuDevice;

using dgc_kernels::FormatOf;
using gpu_adapter::TempScratch;

template <typename T, typename Tindices>
absl::Status SampledTopKFunctor<GPUDevice, T, Tindices>::operator()(
    OpKernelContext* ctx, const T* x, int64_t n, int64_t k,
    float sample_ratio, int64_t seed, T* values, Tindices* indices) {
  constexpr dgc_topk::Format F = FormatOf<T>::value;
  using Bits = typename dgc_topk::KeyTraits<F>::Bits;
  static_assert(sizeof(Bits) == sizeof(T), "key and value widths differ");
  const GPUDevice& d = ctx->eigen_device<GPUDevice>();
  const dgc_topk::gpu::LaunchPolicy launch = gpu_adapter::LaunchPolicyFor(d);
  TempScratch scratch(ctx);
  const dgc_topk::gpu::Result r = dgc_topk::gpu::SampledTopK<F, Tindices>(
      reinterpret_cast<const Bits*>(x), n, k, sample_ratio, seed,
      reinterpret_cast<Bits*>(values), indices, &scratch, launch, d.stream());
  return gpu_adapter::ToStatus(r, scratch);
}

// Explicit instantiations, used by the GPU registrations in
// sampled_topk_kernels.cc.
#define INSTANTIATE(T, Tindices) template struct SampledTopKFunctor<GPUDevice, T, Tindices>
DGC_FOR_EACH_VALUE_AND_INDEX_TYPE(INSTANTIATE);
#undef INSTANTIATE

}  // namespace functor
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
