// What both TF GPU kernels (sampled_topk_kernels.cu.cc,
// compress_step_kernels.cu.cc) need to run the TF-free CUDA code under an
// OpKernelContext: scratch from allocate_temp, grid sizes from
// GetGpuLaunchConfig, and the Result as an absl::Status.
#ifndef DGC_TF_CUSTOM_OPS_COMMON_GPU_TF_ADAPTER_CU_H_
#define DGC_TF_CUSTOM_OPS_COMMON_GPU_TF_ADAPTER_CU_H_

#if GOOGLE_CUDA

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/kernel_util.h"
#include "sampled_topk/sampled_topk_gpu.cuh"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/gpu_kernel_helper.h"
#include "tensorflow/core/util/gpu_launch_config.h"

namespace tensorflow {
namespace functor {
namespace gpu_adapter {

// Temporaries live as long as this object (the functor call).
class TempScratch : public dgc_topk::gpu::ScratchAllocator {
 public:
  explicit TempScratch(OpKernelContext* ctx) : ctx_(ctx) {}
  void* Allocate(size_t bytes) override {
    // 8-byte elements keep every block suitably aligned.
    const int64_t words = static_cast<int64_t>((bytes + 7) / 8);
    Tensor t;
    status_ = ctx_->allocate_temp(DT_INT64, TensorShape({words}), &t);
    if (!status_.ok()) return nullptr;
    tensors_.push_back(t);
    return t.flat<int64_t>().data();
  }
  const absl::Status& status() const { return status_; }

 private:
  OpKernelContext* ctx_;
  std::vector<Tensor> tensors_;
  absl::Status status_;
};

// Grid-stride kernels: a capped element count gives the same grid.
inline dgc_topk::gpu::LaunchPolicy LaunchPolicyFor(const Eigen::GpuDevice& d) {
  return [&d](int64_t work) {
    const int capped = static_cast<int>(std::min<int64_t>(
        std::max<int64_t>(work, 1), std::numeric_limits<int>::max()));
    const GpuLaunchConfig cfg = GetGpuLaunchConfig(capped, d);
    return dgc_topk::gpu::LaunchConfig{cfg.block_count, cfg.thread_per_block};
  };
}

inline absl::Status ToStatus(const dgc_topk::gpu::Result& r, const TempScratch& scratch) {
  if (!scratch.status().ok()) return scratch.status();
  switch (r.code) {
    case dgc_topk::gpu::Result::kOk:
      return absl::OkStatus();
    case dgc_topk::gpu::Result::kInvalidArgument:
      return absl::InvalidArgumentError(r.message);
    case dgc_topk::gpu::Result::kOutOfMemory:
      return absl::ResourceExhaustedError(r.message);
    default:
      return absl::InternalError(r.message);
  }
}

}  // namespace gpu_adapter
}  // namespace functor
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
#endif  // DGC_TF_CUSTOM_OPS_COMMON_GPU_TF_ADAPTER_CU_H_
