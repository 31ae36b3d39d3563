// GPU kernel of DGC>CompressStep (dense gradients): adapts
// compress_step_gpu.cuh (which needs no TensorFlow) to an OpKernelContext,
// as sampled_topk_kernels.cu.cc does for the selection.
#if GOOGLE_CUDA

#define EIGEN_USE_GPU

#include <cstdint>
#include <string>

#include "common/gpu_tf_adapter.cu.h"
#include "common/kernel_util.h"
#include "compress_step/compress_step_gpu.cuh"
#include "compress_step/compress_step_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tensorflow {
namespace functor {

using GPUDevice = Eigen::GpuDevice;

using dgc_kernels::FormatOf;
using gpu_adapter::TempScratch;

absl::Status GpuCopyBuffer(OpKernelContext* ctx, const void* src, void* dst, int64_t bytes) {
  const GPUDevice& d = ctx->eigen_device<GPUDevice>();
  const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, d.stream());
  if (e != cudaSuccess) {
    return absl::InternalError(std::string("compress_step: copy-on-write: ") +
                               cudaGetErrorString(e));
  }
  return absl::OkStatus();
}

template <typename T, typename Tindices>
absl::Status CompressStepFunctor<GPUDevice, T, Tindices>::operator()(
    OpKernelContext* ctx, const dgc_compress::StepParams<T>& params,
    const StepGradient<T>& grad, int64_t num_rows, int64_t cols, int64_t k,
    float sample_ratio, int64_t seed, T* u, T* v, T* values, Tindices* indices) {
  if (grad.rows != nullptr) {
    return absl::UnimplementedError("compress_step: no GPU kernel for a sparse gradient.");
  }
  const GPUDevice& d = ctx->eigen_device<GPUDevice>();
  const dgc_topk::gpu::LaunchPolicy launch = gpu_adapter::LaunchPolicyFor(d);
  TempScratch scratch(ctx);
  const dgc_topk::gpu::Result r =
      dgc_compress::gpu::CompressStep<FormatOf<T>::value, T, Tindices>(
          params, grad.values, u, v, num_rows * cols, k, sample_ratio, seed, values, indices,
          &scratch, launch, d.stream());
  return gpu_adapter::ToStatus(r, scratch);
}

#define INSTANTIATE(T, Tindices) template struct CompressStepFunctor<GPUDevice, T, Tindices>
DGC_FOR_EACH_VALUE_AND_INDEX_TYPE(INSTANTIATE);
#undef INSTANTIATE

}  // namespace functor
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
