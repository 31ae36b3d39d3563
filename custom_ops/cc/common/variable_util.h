// What the kernels that update a resource variable in place share: making
// the variable's buffer safe to write.
//
// TensorFlow-dependent (unlike the *_common.h headers).
#ifndef DGC_TF_CUSTOM_OPS_COMMON_VARIABLE_UTIL_H_
#define DGC_TF_CUSTOM_OPS_COMMON_VARIABLE_UTIL_H_

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor.h"

namespace Eigen {
struct ThreadPoolDevice;
struct GpuDevice;
}  // namespace Eigen

namespace tensorflow {

#if GOOGLE_CUDA
namespace functor {
// Device-to-device copy on the op's stream (copy-on-write of a variable).
// Defined in compress_step/compress_step_kernels.cu.cc.
absl::Status GpuCopyBuffer(OpKernelContext* ctx, const void* src, void* dst,
                           int64_t bytes);
}  // namespace functor
#endif  // GOOGLE_CUDA

namespace dgc_kernels {

// Makes the variable's buffer safe to write in place: a buffer still shared
// with a reader is copied first. Call with the variable locked EXCLUSIVELY.
//
// TensorFlow's ResourceApply* kernels also copy whenever the variable is in
// copy-on-read mode, because with `use_locking=False` they write under a
// shared lock, beside a ResourceGather reading the buffer in place. The ops
// that call this hold the exclusive lock, so no such reader runs, and in
// copy-on-read mode readers hold copies, not the buffer: the reference count
// alone decides. (An embedding gathered every forward pass stays in that mode;
// copying it whole on every write would cost more than TensorFlow's scatter.)
//
// Unlike TensorFlow's scatter kernels, the ops that call this never put the
// variable in copy-on-read mode: that mode is permanent, and from then on
// every dense read of the variable (a model's forward pass) copies it whole.
template <typename Device>
absl::Status PrepareToWrite(OpKernelContext* ctx, Var* var) {
  Tensor* tensor = var->tensor();
  if (tensor->RefCountIsOne()) return absl::OkStatus();
  Tensor copy;
  AllocatorAttributes attr;
  attr.set_gpu_compatible(true);
  attr.set_nic_compatible(true);
  TF_RETURN_IF_ERROR(ctx->allocate_temp(tensor->dtype(), tensor->shape(), &copy, attr));
  const int64_t bytes = tensor->TotalBytes();
  if (std::is_same<Device, Eigen::ThreadPoolDevice>::value) {
    std::memcpy(copy.data(), tensor->data(), bytes);
  } else {
#if GOOGLE_CUDA
    TF_RETURN_IF_ERROR(functor::GpuCopyBuffer(ctx, tensor->data(), copy.data(), bytes));
#endif
  }
  *tensor = copy;
  return absl::OkStatus();
}

}  // namespace dgc_kernels
}  // namespace tensorflow

#endif  // DGC_TF_CUSTOM_OPS_COMMON_VARIABLE_UTIL_H_
