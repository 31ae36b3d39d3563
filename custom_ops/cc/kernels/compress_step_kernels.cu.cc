// GPU kernel of DGC>CompressStep (dense gradients): adapts
// compress_step_gpu.cuh (which needs no TensorFlow) to an OpKernelContext,
// as sampled_topk_kernels.cu.cc does for the selection.
#if GOOGLE_CUDA

#define EIGEN_USE_GPU

#include <cstdint>
#include <limits>
#include <vector>

#include "compress_step_gpu.cuh"
#include "gpu_tf_adapter.cu.h"
#include "compress_step_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/gpu_kernel_helper.h"
#include "tensorflow/core/util/gpu_launch_config.h"

namespace tensorflow {
namespace functor {

using GPUDevice = Eigen::GpuDevice;

using gpu_adapter::FormatOf;
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

template struct CompressStepFunctor<GPUDevice, float, int32>;
template struct CompressStepFunctor<GPUDevice, float, int64_t>;
template struct CompressStepFunctor<GPUDevice, Eigen::half, int32>;
template struct CompressStepFunctor<GPUDevice, Eigen::half, int64_t>;
template struct CompressStepFunctor<GPUDevice, bfloat16, int32>;
template struct CompressStepFunctor<GPUDevice, bfloat16, int64_t>;

}  // namespace functor
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
