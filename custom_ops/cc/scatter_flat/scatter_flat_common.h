// DGC>ScatterFlat's core, free of TensorFlow and CUDA: k entries of a
// variable's flat buffer, subtracted or assigned in place.
#ifndef DGC_TF_CUSTOM_OPS_SCATTER_FLAT_COMMON_H_
#define DGC_TF_CUSTOM_OPS_SCATTER_FLAT_COMMON_H_

#include <cstdint>

namespace dgc_scatter {

// The first position j whose index is outside [0, n), or -1 when all are in range.
template <typename Tindices>
int64_t FirstOutOfRange(const Tindices* indices, int64_t count, int64_t n) {
  for (int64_t j = 0; j < count; ++j) {
    const int64_t i = static_cast<int64_t>(indices[j]);
    if (i < 0 || i >= n) return j;
  }
  return -1;
}

// data[indices[j]] -= updates[j] (`subtract`) or = updates[j], for j in
// order: a repeated index is subtracted once per entry, each rounded in T,
// as TensorFlow's CPU ScatterNdSub does (so both paths give the same bits).
template <typename T, typename Tindices>
void ScatterFlat(T* data, const Tindices* indices, const T* updates, int64_t count,
                 bool subtract) {
  for (int64_t j = 0; j < count; ++j) {
    T& x = data[indices[j]];
    x = subtract ? static_cast<T>(x - updates[j]) : updates[j];
  }
}

}  // namespace dgc_scatter

#endif  // DGC_TF_CUSTOM_OPS_SCATTER_FLAT_COMMON_H_
