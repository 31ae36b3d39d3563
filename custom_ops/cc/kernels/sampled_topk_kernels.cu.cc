// GPU kernel of DGC>SampledTopK: adapts sampled_topk_gpu.cuh (which needs no
// TensorFlow) to an OpKernelContext. Scratch memory comes from
// allocate_temp, grid sizes from GetGpuLaunchConfig, the stream from the
// context's Eigen::GpuDevice.
#if GOOGLE_CUDA

#define EIGEN_USE_GPU

#include <cstdint>
#include <limits>
#include <vector>

#include "sampled_topk_gpu.cuh"
#include "sampled_topk_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/gpu_kernel_helper.h"
#include "tensorflow/core/util/gpu_launch_config.h"

namespace tensorflow {
namespace functor {

using GPUDevice = Eigen::GpuDevice;

namespace {

template <typename T>
struct FormatOf;
template <>
struct FormatOf<float> {
  static constexpr dgc_topk::Format value = dgc_topk::Format::kFloat32;
};
template <>
struct FormatOf<Eigen::half> {
  static constexpr dgc_topk::Format value = dgc_topk::Format::kFloat16;
};
template <>
struct FormatOf<bfloat16> {
  static constexpr dgc_topk::Format value = dgc_topk::Format::kBFloat16;
};

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

}  // namespace

template <typename T, typename Tindices>
absl::Status SampledTopKFunctor<GPUDevice, T, Tindices>::operator()(
    OpKernelContext* ctx, const T* x, int64_t n, int64_t k,
    float sample_ratio, int64_t seed, T* values, Tindices* indices) {
  constexpr dgc_topk::Format F = FormatOf<T>::value;
  using Bits = typename dgc_topk::KeyTraits<F>::Bits;
  static_assert(sizeof(Bits) == sizeof(T), "key and value widths differ");
  const GPUDevice& d = ctx->eigen_device<GPUDevice>();
  const dgc_topk::gpu::LaunchPolicy launch = [&d](int64_t work) {
    // Grid-stride kernels: a capped element count gives the same grid.
    const int capped = static_cast<int>(
        std::min<int64_t>(work, std::numeric_limits<int>::max()));
    const GpuLaunchConfig cfg = GetGpuLaunchConfig(capped, d);
    return dgc_topk::gpu::LaunchConfig{cfg.block_count, cfg.thread_per_block};
  };
  TempScratch scratch(ctx);
  const dgc_topk::gpu::Result r = dgc_topk::gpu::SampledTopK<F, Tindices>(
      reinterpret_cast<const Bits*>(x), n, k, sample_ratio, seed,
      reinterpret_cast<Bits*>(values), indices, &scratch, launch, d.stream());
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

// Explicit instantiations, used by the GPU registrations in
// sampled_topk_kernels.cc.
template struct SampledTopKFunctor<GPUDevice, float, int32>;
template struct SampledTopKFunctor<GPUDevice, float, int64_t>;
template struct SampledTopKFunctor<GPUDevice, Eigen::half, int32>;
template struct SampledTopKFunctor<GPUDevice, Eigen::half, int64_t>;
template struct SampledTopKFunctor<GPUDevice, bfloat16, int32>;
template struct SampledTopKFunctor<GPUDevice, bfloat16, int64_t>;

}  // namespace functor
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
