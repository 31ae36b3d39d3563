// Op registration for DGC>ScatterFlat: entries of a variable, by flat index,
// subtracted or assigned in place.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {

using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

REGISTER_OP("DGC>ScatterFlat")
    .Input("resource: resource")
    .Input("indices: Tindices")
    .Input("updates: T")
    .Attr("T: {float, half, bfloat16}")
    .Attr("Tindices: {int32, int64} = DT_INT32")
    .Attr("subtract: bool")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle indices;
      ShapeHandle updates;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indices));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &updates));
      return c->Merge(indices, updates, &indices);
    })
    .Doc(R"doc(
`resource.flat[indices[j]] -= updates[j]` (subtract) or `= updates[j]`, for
each j in order, in place under the variable's lock: DGC's weight update
(w -= lr * G on the exchanged entries) and its masking after the leader
route (u and v zeroed where the exchange applied).

ResourceScatterNdSub / ResourceScatterNdUpdate do the same, but put the
variable in copy-on-read mode for good: from then on every dense read of it
(the model's forward pass, DGC>CompressStep) copies the whole buffer. This
op keeps the variable in its dense mode, and copies its buffer only while a
reader still holds it (under the variable's exclusive lock it need not copy,
as ResourceApply* kernels do, whenever the variable is in copy-on-read mode).

resource: a resource variable of dtype T (any shape; indexed row-major).
indices: [count] flat indices in [0, size); repeats are applied in turn.
updates: [count] values.
subtract: true subtracts, false assigns.
)doc");

}  // namespace tensorflow
