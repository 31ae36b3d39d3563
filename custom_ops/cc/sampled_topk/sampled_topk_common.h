// Shared by the CPU kernel, the CUDA kernel and the standalone CUDA test.
// Depends on neither TensorFlow nor CUDA.
//
// Ordering used everywhere: entries are compared by the magnitude key of
// their bit pattern (the IEEE bits with the sign cleared, which orders all
// non-NaN values by |x|, +/-Inf largest), descending, then by flat index,
// ascending. Any key above the format's +Inf key is a NaN.
#ifndef DGC_TF_CUSTOM_OPS_SAMPLED_TOPK_COMMON_H_
#define DGC_TF_CUSTOM_OPS_SAMPLED_TOPK_COMMON_H_

#include <cstdint>

#if defined(__CUDACC__)
#define DGC_HD __host__ __device__
#else
#define DGC_HD
#endif

namespace dgc_topk {

// Below this many elements a sample gives too noisy a threshold; the
// Python fallback (dgc_tf/ops/topk.py) uses the same constants.
constexpr int64_t kMinSampleSize = 4096;
// The threshold aims at about kCandidateMargin * k candidates.
constexpr double kCandidateMargin = 1.3;

enum class Format { kFloat32, kFloat16, kBFloat16 };

template <Format F>
struct KeyTraits;

template <>
struct KeyTraits<Format::kFloat32> {
  using Bits = uint32_t;
  static constexpr Bits kAbsMask = 0x7fffffffu;
  static constexpr Bits kInfKey = 0x7f800000u;
};

template <>
struct KeyTraits<Format::kFloat16> {
  using Bits = uint16_t;
  static constexpr Bits kAbsMask = 0x7fffu;
  static constexpr Bits kInfKey = 0x7c00u;
};

template <>
struct KeyTraits<Format::kBFloat16> {
  using Bits = uint16_t;
  static constexpr Bits kAbsMask = 0x7fffu;
  static constexpr Bits kInfKey = 0x7f80u;
};

// Number of sampled elements: sample_ratio * n, at least kMinSampleSize,
// at most n (then the whole tensor is the candidate set).
inline DGC_HD int64_t SampleSize(int64_t n, float sample_ratio) {
  double want = static_cast<double>(sample_ratio) * static_cast<double>(n);
  int64_t m = static_cast<int64_t>(want);
  if (static_cast<double>(m) < want) ++m;  // ceil
  if (m < kMinSampleSize) m = kMinSampleSize;
  if (m > n) m = n;
  return m;
}

inline DGC_HD uint64_t SplitMix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Position of the i-th sample, 0 <= i < m, with stride = n / m (>= 1).
// seed < 0: strided (i * stride). seed >= 0: one uniformly random position
// inside each stride window (stratified sampling), a pure function of
// (seed, i), so results are reproducible.
inline DGC_HD int64_t SamplePosition(int64_t i, int64_t stride, int64_t seed) {
  int64_t base = i * stride;
  if (seed < 0 || stride == 1) return base;
  uint64_t h = SplitMix64(static_cast<uint64_t>(seed) * 0xd1b54a32d192ed03ull ^
                          static_cast<uint64_t>(i));
  return base + static_cast<int64_t>(h % static_cast<uint64_t>(stride));
}

// 1-based rank (in the descending sample) of the first threshold to try:
// the sample quantile of density k / n, widened by kCandidateMargin.
inline DGC_HD int64_t FirstRank(int64_t k, int64_t m, int64_t n) {
  double r = static_cast<double>(k) * (static_cast<double>(m) /
                                       static_cast<double>(n)) *
             kCandidateMargin;
  int64_t rank = static_cast<int64_t>(r);
  if (static_cast<double>(rank) < r) ++rank;
  if (rank < 1) rank = 1;
  if (rank > m) rank = m;
  return rank;
}

// Next rank after a threshold gave fewer than k candidates.
inline DGC_HD int64_t NextRank(int64_t rank, int64_t m) {
  int64_t next = rank * 2;
  return next > m ? m : next;
}

}  // namespace dgc_topk

#endif  // DGC_TF_CUSTOM_OPS_SAMPLED_TOPK_COMMON_H_
