// Kernel interface of DGC>SampledTopK (see ops/sampled_topk_ops.cc).
#ifndef DGC_TF_CUSTOM_OPS_SAMPLED_TOPK_KERNELS_H_
#define DGC_TF_CUSTOM_OPS_SAMPLED_TOPK_KERNELS_H_

#include <cstdint>

#include "tensorflow/core/framework/op_kernel.h"

namespace Eigen {
struct ThreadPoolDevice;
struct GpuDevice;
}  // namespace Eigen

namespace tensorflow {
namespace functor {

// Writes the exact top-k by magnitude of x[0..n) into values[0..k) and
// indices[0..k): descending |x|, ties by ascending index. The caller has
// checked 0 < n, 1 <= k <= n and that n - 1 fits Tindices; the functor
// checks for NaN (InvalidArgument). Scratch memory comes from
// ctx->allocate_temp.
// One specialization per Device (below), each with the same call operator.
template <typename Device, typename T, typename Tindices>
struct SampledTopKFunctor;

// Defined in sampled_topk_kernels.cc (multi-threaded on the CPU worker pool).
template <typename T, typename Tindices>
struct SampledTopKFunctor<Eigen::ThreadPoolDevice, T, Tindices> {
  absl::Status operator()(OpKernelContext* ctx, const T* x, int64_t n,
                          int64_t k, float sample_ratio, int64_t seed,
                          T* values, Tindices* indices);
};

#if GOOGLE_CUDA
// Defined in sampled_topk_kernels.cu.cc, instantiated there for
// T in {float, Eigen::half, bfloat16} x Tindices in {int32, int64}.
template <typename T, typename Tindices>
struct SampledTopKFunctor<Eigen::GpuDevice, T, Tindices> {
  absl::Status operator()(OpKernelContext* ctx, const T* x, int64_t n,
                          int64_t k, float sample_ratio, int64_t seed,
                          T* values, Tindices* indices);
};
#endif  // GOOGLE_CUDA

}  // namespace functor
}  // namespace tensorflow

#endif  // DGC_TF_CUSTOM_OPS_SAMPLED_TOPK_KERNELS_H_
