// What the TensorFlow kernels of both ops (DGC>SampledTopK and
// DGC>CompressStep, CPU and GPU) share: the key format of a value type, the
// checks of `k` and of the selection's size, and the type lists the kernels
// are registered and their functors instantiated for.
//
// TensorFlow-dependent (unlike the *_common.h headers, which a standalone
// CUDA test compiles without TensorFlow).
#ifndef DGC_TF_CUSTOM_OPS_COMMON_KERNEL_UTIL_H_
#define DGC_TF_CUSTOM_OPS_COMMON_KERNEL_UTIL_H_

#include <cstdint>
#include <limits>

#include "sampled_topk/sampled_topk_common.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"

namespace tensorflow {
namespace dgc_kernels {

// The magnitude-key format (sampled_topk_common.h) of a kernel value type.
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

// `k` from its scalar input tensor (dtype Tk).
template <typename Tk>
absl::Status ReadK(const char* op, const Tensor& k_tensor, int64_t* k) {
  if (!TensorShapeUtils::IsScalar(k_tensor.shape())) {
    return errors::InvalidArgument(op, ": `k` must be a scalar, got shape ",
                                   k_tensor.shape().DebugString());
  }
  *k = static_cast<int64_t>(k_tensor.scalar<Tk>()());
  return absl::OkStatus();
}

// What every selection of k of n entries into Tindices flat indices needs:
// 0 < n, 1 <= k <= n, and n - 1 fits Tindices. `what` names the selected
// tensor in the messages ("`x`", "the variable").
template <typename Tindices>
absl::Status CheckSelection(const char* op, const char* what,
                            const TensorShape& shape, int64_t k) {
  const int64_t n = shape.num_elements();
  if (n <= 0) {
    return errors::InvalidArgument(op, ": ", what, " is empty (shape ",
                                   shape.DebugString(),
                                   "); there is nothing to select.");
  }
  if (k < 1 || k > n) {
    return errors::InvalidArgument(op, ": `k` must be in [1, ", n, "] (the size of ",
                                   what, "), got ", k, ".");
  }
  if (n - 1 > static_cast<int64_t>(std::numeric_limits<Tindices>::max())) {
    return errors::InvalidArgument(
        op, ": ", what, " has ", n, " elements, too many for ",
        DataTypeString(DataTypeToEnum<Tindices>::v()), " indices; use Tindices=int64.");
  }
  return absl::OkStatus();
}

}  // namespace dgc_kernels
}  // namespace tensorflow

// The type lists of both ops (their `T`, `Tk` and `Tindices` attributes in
// *_ops.cc). M is a macro taking the types and is invoked once per entry.
//   value types T:
#define DGC_FOR_EACH_VALUE_TYPE(M) \
  M(float);                        \
  M(Eigen::half);                  \
  M(bfloat16)
//   (T, Tindices), for the functors' explicit instantiations:
#define DGC_FOR_EACH_VALUE_AND_INDEX_TYPE(M) \
  M(float, int32);                           \
  M(float, int64_t);                         \
  M(Eigen::half, int32);                     \
  M(Eigen::half, int64_t);                   \
  M(bfloat16, int32);                        \
  M(bfloat16, int64_t)
//   (Tk, Tindices) for one T, for the kernel registrations:
#define DGC_FOR_EACH_K_AND_INDEX_TYPE(M, T) \
  M(T, int32, int32);                       \
  M(T, int64_t, int32);                     \
  M(T, int32, int64_t);                     \
  M(T, int64_t, int64_t)

#endif  // DGC_TF_CUSTOM_OPS_COMMON_KERNEL_UTIL_H_
