// The shape function both ops' registrations share (sampled_topk_ops.cc,
// compress_step_ops.cc).
#ifndef DGC_TF_CUSTOM_OPS_COMMON_SHAPE_FNS_H_
#define DGC_TF_CUSTOM_OPS_COMMON_SHAPE_FNS_H_

#include <cstdint>

#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace dgc_shape_fns {

// Outputs 0 and 1 (values, indices) are vectors of length k, the scalar input
// `k_input`: static when k is a constant. An out-of-range k is left to the
// kernel, which reports it as InvalidArgument at run time.
inline absl::Status SelectedEntries(shape_inference::InferenceContext* c, int k_input) {
  shape_inference::ShapeHandle k_shape;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(k_input), 0, &k_shape));
  shape_inference::DimensionHandle k_dim = c->UnknownDim();
  const Tensor* k_tensor = c->input_tensor(k_input);
  if (k_tensor != nullptr) {
    const int64_t k = k_tensor->dtype() == DT_INT32
                          ? static_cast<int64_t>(k_tensor->scalar<int32>()())
                          : k_tensor->scalar<int64_t>()();
    if (k >= 1) k_dim = c->MakeDim(k);
  }
  c->set_output(0, c->Vector(k_dim));
  c->set_output(1, c->Vector(k_dim));
  return absl::OkStatus();
}

}  // namespace dgc_shape_fns
}  // namespace tensorflow

#endif  // DGC_TF_CUSTOM_OPS_COMMON_SHAPE_FNS_H_
