// Kernel interface of DGC>CompressStep / DGC>SparseCompressStep (see
// ops/compress_step_ops.cc). The op kernel looks the variables up, locks
// them and makes their buffers safe to write (copy-on-write, as TF's
// ResourceApply* kernels do); the functor then works on raw buffers.
#ifndef DGC_TF_CUSTOM_OPS_COMPRESS_STEP_KERNELS_H_
#define DGC_TF_CUSTOM_OPS_COMPRESS_STEP_KERNELS_H_

#include <cstdint>

#include "compress_step/compress_step_common.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace Eigen {
struct ThreadPoolDevice;
struct GpuDevice;
}  // namespace Eigen

namespace tensorflow {
namespace functor {

// The gradient of one step: dense (`rows` is null, `values` has n
// elements) or row-sparse (`values` holds `nnz` rows of `cols` elements for
// rows `rows[0..nnz)`, repeated rows summed in order).
template <typename T>
struct StepGradient {
  const T* values;
  const int64_t* rows;  // null for a dense gradient
  int64_t nnz;
};

// Accumulates `grad` into u (unused without a momentum buffer) and v, both of
// n = num_rows * cols elements, selects the exact top-k of v by magnitude
// into values/indices and, with params.mask_selected, zeroes what was sent.
// The caller has checked
// shapes, 1 <= k <= n, that n - 1 fits Tindices and that sparse rows are in
// range; NaN in v is reported as InvalidArgument.
// One specialization per Device (below), each with the same call operator.
template <typename Device, typename T, typename Tindices>
struct CompressStepFunctor;

template <typename T, typename Tindices>
struct CompressStepFunctor<Eigen::ThreadPoolDevice, T, Tindices> {
  absl::Status operator()(OpKernelContext* ctx,
                          const dgc_compress::StepParams<T>& params,
                          const StepGradient<T>& grad, int64_t num_rows,
                          int64_t cols, int64_t k, float sample_ratio,
                          int64_t seed, T* u, T* v, T* values,
                          Tindices* indices);
};

#if GOOGLE_CUDA
// Dense gradients only (the sparse op has no GPU kernel; dgc_tf uses its
// scatter-add fallback there). Defined in compress_step_kernels.cu.cc.
template <typename T, typename Tindices>
struct CompressStepFunctor<Eigen::GpuDevice, T, Tindices> {
  absl::Status operator()(OpKernelContext* ctx,
                          const dgc_compress::StepParams<T>& params,
                          const StepGradient<T>& grad, int64_t num_rows,
                          int64_t cols, int64_t k, float sample_ratio,
                          int64_t seed, T* u, T* v, T* values,
                          Tindices* indices);
};
#endif  // GOOGLE_CUDA

}  // namespace functor
}  // namespace tensorflow

#endif  // DGC_TF_CUSTOM_OPS_COMPRESS_STEP_KERNELS_H_
