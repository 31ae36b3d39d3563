// Op registration for DGC>SampledTopK: exact top-k by magnitude with a
// sampled-threshold pre-filter (Deep Gradient Compression, Lin et al. 2018).
#include "common/shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {

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
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      return dgc_shape_fns::SelectedEntries(c, /*k_input=*/1);
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
