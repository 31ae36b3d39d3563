// Op registration for DGC>SampledTopK: exact top-k by magnitude with a
// sampled-threshold pre-filter (Deep Gradient Compression, Lin et al. 2018).
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

REGISTER_OP("DGC>SampledTopK")
    .Input("x: T")
    .Input("k: Tk")
    .Output("values: T")
    .Output("indices: Tindices")
    .Attr("T: {float, half, bfloat16}")
    .Attr("Tk: {int32, int64} = DT_INT32")
    .Attr("Tindices: {int32, int64} = DT_INT32")
    .Attr("sample_ratio: float = 0.01")
    .Attr("seed: int = -1")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle k_shape;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 0, &k_shape));
      // A constant k gives a static [k]; a k out of range is left to the
      // kernel, which reports it as InvalidArgument at run time.
      DimensionHandle k_dim = c->UnknownDim();
      const Tensor* k_tensor = c->input_tensor(1);
      if (k_tensor != nullptr) {
        const int64_t k =
            k_tensor->dtype() == DT_INT32
                ? static_cast<int64_t>(k_tensor->scalar<int32>()())
                : k_tensor->scalar<int64_t>()();
        if (k >= 1) k_dim = c->MakeDim(k);
      }
      c->set_output(0, c->Vector(k_dim));
      c->set_output(1, c->Vector(k_dim));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Exact top-k of the flattened `x` by magnitude, with a sampled threshold.

Returns the k entries of `x` (any rank, read flattened in row-major order)
largest in |x|. Ties in |x| are broken in favour of the lower flat index, and
the output is ordered by descending |x|, equal magnitudes by ascending index.
+Inf and -Inf are valid and have the largest magnitude; NaN is rejected.

Algorithm (DGC's sampled threshold): a sample of |x| (strided, or one random
position per stride window when `seed >= 0`) gives a threshold at the sample
quantile of density k / size(x), aimed at about 1.3 k candidates. One pass
collects the candidates |x| >= threshold (checking for NaN on the way); if
there are fewer than k the threshold is lowered and the pass repeated. The
exact top-k of the candidates is the exact top-k of `x`. The result does not
depend on the sample, only the amount of work does. No XLA kernel exists.

x: float32, float16 or bfloat16 tensor of any rank, non-empty, without NaN.
k: scalar, 1 <= k <= size(x); may change from call to call.
values: [k] signed values of `x` at `indices`.
indices: [k] flat (row-major) indices into `x`. Tindices must hold
  size(x) - 1 (use int64 for 2^31 elements or more).
sample_ratio: fraction of `x` sampled, in (0, 1]; at least 4096 elements are
  sampled (or the whole tensor when smaller).
seed: < 0 for strided sampling, >= 0 for seeded random positions.
)doc");

}  // namespace tensorflow
