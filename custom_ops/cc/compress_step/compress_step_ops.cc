// Op registration for DGC>CompressStep and DGC>SparseCompressStep: one DGC
// step on a compressed variable's state, in place (Deep Gradient
// Compression, Lin et al. 2018, Algorithms 3 and 4).
#include "common/shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {

using dgc_shape_fns::SelectedEntries;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

namespace {

constexpr char kStepDoc[] = R"doc(
Then selects the k entries of the new residual largest in |v| exactly as
DGC>SampledTopK does (sampled threshold, one candidate pass, exact top-k;
ties to the lower flat index; NaN rejected), zeroes the residual there and,
with `momentum_masking`, the momentum too, and returns the selected
(values, flat indices) of the residual before zeroing. With
`mask_selected=false` nothing is zeroed: the caller masks later what its
exchange applied (which may be other entries than these).

Every operation rounds in T in the order the pure-TensorFlow path uses, so
both paths give the same numbers. The variables are updated in place under
their locks (like ResourceApply* ops): u is read and written once, v is read
twice (accumulation, candidate pass) and written once plus k entries.

momentum: resource of the momentum buffer u (ignored when has_momentum is
  false: pass the residual's handle again).
residual: resource of the residual v, same shape and dtype T.
k: scalar, 1 <= k <= size(v).
momentum_factor: m.
has_momentum: false when m == 0 and no buffer is kept (then u == g).
mask_selected: zero what was selected (default); false leaves u and v unmasked.
values: [k] signed values of v at `indices`, by descending |v|.
indices: [k] flat (row-major) indices into v.
)doc";

}  // namespace

REGISTER_OP("DGC>CompressStep")
    .Input("momentum: resource")
    .Input("residual: resource")
    .Input("grad: T")
    .Input("k: Tk")
    .Output("values: T")
    .Output("indices: Tindices")
    .Attr("T: {float, half, bfloat16}")
    .Attr("Tk: {int32, int64} = DT_INT32")
    .Attr("Tindices: {int32, int64} = DT_INT32")
    .Attr("momentum_factor: float")
    .Attr("nesterov: bool = false")
    .Attr("has_momentum: bool = true")
    .Attr("momentum_masking: bool = true")
    .Attr("mask_selected: bool = true")
    .Attr("sample_ratio: float = 0.01")
    .Attr("seed: int = -1")
    .SetShapeFn([](InferenceContext* c) { return SelectedEntries(c, /*k_input=*/3); })
    .Doc(std::string(R"doc(
One DGC step for a compressed variable, with a dense gradient `grad` of the
variable's shape: momentum correction into the momentum buffer u and the
residual v, in place,
  momentum SGD: u = m*u + g,   v = v + u
  Nesterov:     u = m*(u + g), v = v + u + g
  no buffer:    v = v + g.
)doc") + kStepDoc);

REGISTER_OP("DGC>SparseCompressStep")
    .Input("momentum: resource")
    .Input("residual: resource")
    .Input("grad_values: T")
    .Input("grad_rows: Trows")
    .Input("k: Tk")
    .Output("values: T")
    .Output("indices: Tindices")
    .Attr("T: {float, half, bfloat16}")
    .Attr("Trows: {int32, int64} = DT_INT32")
    .Attr("Tk: {int32, int64} = DT_INT32")
    .Attr("Tindices: {int32, int64} = DT_INT32")
    .Attr("momentum_factor: float")
    .Attr("nesterov: bool = false")
    .Attr("has_momentum: bool = true")
    .Attr("momentum_masking: bool = true")
    .Attr("mask_selected: bool = true")
    .Attr("sample_ratio: float = 0.01")
    .Attr("seed: int = -1")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle rows;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &rows));
      return SelectedEntries(c, /*k_input=*/4);
    })
    .Doc(std::string(R"doc(
DGC>CompressStep for a row-sparse gradient (an embedding's IndexedSlices):
row grad_rows[j] of the variable (its first dimension) receives
grad_values[j]; repeated rows are summed in order of appearance, rows not
named have a zero gradient. No dense copy of the gradient is made: each row
of u and v is updated in the same single pass with its summed gradient row
or with zero.
grad_values: [nnz, ...] (the variable's shape without its first dimension).
grad_rows: [nnz] row indices in [0, rows).
)doc") + kStepDoc);

}  // namespace tensorflow
