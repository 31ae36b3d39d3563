// CPU kernel of DGC>SampledTopK, and the kernel registrations.
//
// One pass over x per threshold tried, split into blocks that run on
// TensorFlow's CPU worker pool. Each block scans its range in small chunks:
// the chunk's largest magnitude key is computed first (a vectorisable max
// that also catches NaN), and only chunks that reach the threshold are
// rescanned to collect candidates into the block's slice of one scratch
// buffer. A block that finds more candidates than its slice holds (heavy
// ties at the threshold) makes the kernel run an exact compaction pass with
// per-block counts and prefix offsets. The exact top-k is then selected
// among the candidates under the order (|x| descending, index ascending):
// with int32 indices, candidates are packed (key, index, sign) words; many
// of them are radix-sorted in parallel parts and the parts merged, fewer go
// through std::nth_element and a radix sort or std::sort.
#define EIGEN_USE_THREADS

#include "sampled_topk/sampled_topk_kernels.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "common/kernel_util.h"
#include "sampled_topk/sampled_topk_common.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/threadpool.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tensorflow {

using CPUDevice = Eigen::ThreadPoolDevice;
using GPUDevice = Eigen::GpuDevice;

namespace {

using dgc_topk::KeyTraits;

// A candidate (magnitude key, flat index, sign) and the output order:
// larger magnitude first, then lower index.
//
// With int32 indices a candidate is one uint64,
//   key << 32 | (0x7fffffff - index) << 1 | sign,
// whose plain descending order is exactly the output order (indices are
// unique, so the sign bit never decides); it sorts fast, radix-sorts, and
// gives the value back without touching x again. With int64 indices (2^31
// elements or more) it is a struct with a comparator.
template <typename Bits, typename Index>
struct CandidateOps {
  struct Type {
    Bits key;
    Index index;
  };
  static Type Make(Bits key, int64_t i, Bits /*raw*/) {
    return Type{key, static_cast<Index>(i)};
  }
  static Index IndexOf(const Type& c) { return c.index; }
  static Bits RawOf(const Type& c, const Bits* xb) { return xb[c.index]; }
  static bool Before(const Type& a, const Type& b) {
    return a.key > b.key || (a.key == b.key && a.index < b.index);
  }
  static constexpr bool kPacked = false;
};

template <typename Bits>
struct CandidateOps<Bits, int32> {
  using Type = uint64_t;
  static constexpr int kSignShift = 8 * sizeof(Bits) - 1;
  static Type Make(Bits key, int64_t i, Bits raw) {
    return (static_cast<uint64_t>(key) << 32) |
           ((0x7fffffffull - static_cast<uint64_t>(i)) << 1) |
           static_cast<uint64_t>(raw >> kSignShift);
  }
  static int32 IndexOf(Type c) {
    return static_cast<int32>(0x7fffffffull - ((c >> 1) & 0x7fffffffull));
  }
  static Bits RawOf(Type c, const Bits* /*xb*/) {
    return static_cast<Bits>((c >> 32) | ((c & 1) << kSignShift));
  }
  static bool Before(Type a, Type b) { return a > b; }
  static constexpr bool kPacked = true;
};

// Stable LSD radix sort of n packed candidates, descending, 11 bits a pass
// (histograms of all passes in one read); passes where every element has
// the same digit are skipped. tmp holds n words.
void RadixSortDescending(uint64_t* data, uint64_t* tmp, int64_t n) {
  constexpr int kBits = 11;
  constexpr int kBuckets = 1 << kBits;
  constexpr int kPasses = (64 + kBits - 1) / kBits;
  if (n < 2) return;
  std::unique_ptr<int64_t[]> hist(new int64_t[kPasses * kBuckets]());
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t v = data[i];
    for (int p = 0; p < kPasses; ++p) {
      ++hist[p * kBuckets + ((v >> (p * kBits)) & (kBuckets - 1))];
    }
  }
  uint64_t* src = data;
  uint64_t* dst = tmp;
  for (int p = 0; p < kPasses; ++p) {
    int64_t* h = hist.get() + p * kBuckets;
    const int shift = p * kBits;
    if (h[(src[0] >> shift) & (kBuckets - 1)] == n) continue;  // one bucket
    int64_t pos = 0;
    for (int d = kBuckets - 1; d >= 0; --d) {  // descending
      const int64_t c = h[d];
      h[d] = pos;
      pos += c;
    }
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t v = src[i];
      dst[h[(v >> shift) & (kBuckets - 1)]++] = v;
    }
    std::swap(src, dst);
  }
  if (src != data) std::memcpy(data, src, n * sizeof(uint64_t));
}

// Elements per chunk: the max pre-check runs over this many, and a chunk
// reaching the threshold is rescanned (it is still in L1). The chunk shrinks
// with the expected candidate density so that few chunks need a rescan.
constexpr int64_t kMaxChunk = 128;
constexpr int64_t kMinChunk = 8;
// Smallest block handed to a worker thread.
constexpr int64_t kMinBlock = 1 << 15;
// Fewest packed candidates per part worth a parallel radix sort.
constexpr int64_t kMinPart = 1 << 15;
// Fewest selected packed candidates worth a radix sort rather than std::sort.
constexpr int64_t kMinRadixSort = 4096;

absl::Status AllocateScratch(OpKernelContext* ctx, int64_t bytes,
                             Tensor* tensor, void** data) {
  TF_RETURN_IF_ERROR(ctx->allocate_temp(
      DT_UINT8, TensorShape({std::max<int64_t>(bytes, 1)}), tensor));
  *data = tensor->flat<uint8>().data();
  return absl::OkStatus();
}

// The flat range [0, n) cut into blocks, a few per worker thread for load
// balance, and a way to run one function per unit of work on the pool.
class Blocks {
 public:
  Blocks(OpKernelContext* ctx, int64_t n) : n_(n) {
    const auto* worker_threads = ctx->device()->tensorflow_cpu_worker_threads();
    pool_ = worker_threads->workers;
    num_threads_ = std::max(1, worker_threads->num_threads);
    int64_t count = std::min<int64_t>((n + kMinBlock - 1) / kMinBlock, 4 * num_threads_);
    count = std::max<int64_t>(count, 1);
    len_ = (n + count - 1) / count;
    count_ = (n + len_ - 1) / len_;
  }

  int64_t count() const { return count_; }
  int64_t num_threads() const { return num_threads_; }
  int64_t begin(int64_t b) const { return b * len_; }
  int64_t end(int64_t b) const { return std::min(n_, (b + 1) * len_); }

  // Runs fn(0), ..., fn(units - 1), concurrently when there is a pool.
  void ForEach(int64_t units, const std::function<void(int64_t)>& fn) const {
    if (units == 1 || pool_ == nullptr) {
      for (int64_t u = 0; u < units; ++u) fn(u);
      return;
    }
    // Fixed blocks of one unit; spelled this way because
    // SchedulingParams::Fixed is missing before TensorFlow 2.20.
    pool_->TransformRangeConcurrently(/*block_size=*/1, units,
                                      [&fn](int64_t u0, int64_t u1) {
                                        for (int64_t u = u0; u < u1; ++u) fn(u);
                                      });
  }

 private:
  int64_t n_;
  thread::ThreadPool* pool_;
  int64_t num_threads_;
  int64_t len_;
  int64_t count_;
};

// One selection of the exact top-k of x[0..n) on the CPU, in the three
// phases the file's header describes: DrawSample, CollectCandidates (one
// pass per threshold tried, then compaction), SelectExact.
template <typename T, typename Tindices>
class CpuSelection {
  using Traits = KeyTraits<dgc_kernels::FormatOf<T>::value>;
  using Bits = typename Traits::Bits;
  using Ops = CandidateOps<Bits, Tindices>;
  using Cand = typename Ops::Type;
  static_assert(sizeof(Bits) == sizeof(T), "key and value widths differ");
  static constexpr Bits kMask = Traits::kAbsMask;
  static constexpr Bits kInf = Traits::kInfKey;

 public:
  CpuSelection(OpKernelContext* ctx, const T* x, int64_t n, int64_t k)
      : ctx_(ctx),
        xb_(reinterpret_cast<const Bits*>(x)),
        n_(n),
        k_(k),
        blocks_(ctx, n),
        counts_(blocks_.count()),
        caps_(blocks_.count()),
        offsets_(blocks_.count()),
        has_nan_(blocks_.count()) {}

  // Phase 1: a sample of magnitude keys and the rank in it of the first
  // threshold. A sample as large as x itself is skipped: all of x is then
  // the candidate set.
  absl::Status DrawSample(float sample_ratio, int64_t seed) {
    m_ = dgc_topk::SampleSize(n_, sample_ratio);
    take_all_ = m_ >= n_;
    if (take_all_) return absl::OkStatus();
    void* data;
    TF_RETURN_IF_ERROR(AllocateScratch(ctx_, m_ * sizeof(Bits), &sample_tensor_, &data));
    sample_ = static_cast<Bits*>(data);
    const int64_t stride = n_ / m_;
    const int64_t units =
        std::max<int64_t>(1, std::min<int64_t>(blocks_.count(), m_ / 4096));
    const int64_t unit_len = (m_ + units - 1) / units;
    blocks_.ForEach(units, [&](int64_t u) {
      const int64_t end = std::min(m_, (u + 1) * unit_len);
      for (int64_t i = u * unit_len; i < end; ++i) {
        sample_[i] = xb_[dgc_topk::SamplePosition(i, stride, seed)] & kMask;
      }
    });
    rank_ = dgc_topk::FirstRank(k_, m_, n_);
    return absl::OkStatus();
  }

  // Phase 2: candidates |x| >= threshold, lowering the threshold until
  // there are at least k, packed at the start of the candidate buffer.
  absl::Status CollectCandidates() {
    while (true) {
      const Bits thr = NextThreshold();
      const double expected = ExpectedCandidates();
      TF_RETURN_IF_ERROR(AllocateSlices(expected));
      ScanBlocks(thr, ChunkFor(expected));
      bool overflow = false;
      TF_RETURN_IF_ERROR(CountCandidates(&overflow));
      if (total_ >= k_) {
        if (overflow) return CompactExactly(thr);
        CloseGaps();
        return absl::OkStatus();
      }
      // Too few: lower the threshold (never reached with take_all_, where
      // total_ == n >= k).
      if (rank_ >= m_) {
        take_all_ = true;
      } else {
        rank_ = dgc_topk::NextRank(rank_, m_);
      }
    }
  }

  // Phase 3: the exact top-k of the candidates, in the output order.
  absl::Status SelectExact(T* values, Tindices* indices) {
    Bits* value_bits = reinterpret_cast<Bits*>(values);
    if constexpr (Ops::kPacked) {
      const int64_t parts = std::min<int64_t>(blocks_.num_threads(), total_ / kMinPart);
      if (parts >= 2) return MergeSortedParts(parts, value_bits, indices);
    }
    if (total_ > k_) {
      std::nth_element(cands_, cands_ + (k_ - 1), cands_ + total_, Ops::Before);
    }
    bool sorted = false;
    if constexpr (Ops::kPacked) {
      if (k_ >= kMinRadixSort) {
        Tensor tmp_tensor;
        TF_RETURN_IF_ERROR(ctx_->allocate_temp(DT_UINT64, TensorShape({k_}), &tmp_tensor));
        RadixSortDescending(cands_, tmp_tensor.flat<uint64>().data(), k_);
        sorted = true;
      }
    }
    if (!sorted) std::sort(cands_, cands_ + k_, Ops::Before);
    for (int64_t i = 0; i < k_; ++i) Emit(i, cands_[i], value_bits, indices);
    return absl::OkStatus();
  }

 private:
  // The threshold to try: the rank-th largest sample key (0 with take_all_).
  // nth_element extends the partition left by earlier (smaller) ranks.
  Bits NextThreshold() {
    if (take_all_) return 0;
    std::nth_element(sample_ + sorted_upto_, sample_ + rank_ - 1, sample_ + m_,
                     std::greater<Bits>());
    sorted_upto_ = rank_ - 1;
    return sample_[rank_ - 1];
  }

  double ExpectedCandidates() const {
    return take_all_ ? static_cast<double>(n_)
                     : static_cast<double>(rank_) * static_cast<double>(n_) /
                           static_cast<double>(m_);
  }

  // Chunk length for the scan: smaller where more chunks will hold candidates.
  int64_t ChunkFor(double expected) const {
    int64_t chunk = kMaxChunk;
    while (chunk > kMinChunk && chunk * expected > 0.15 * n_) chunk /= 2;
    return chunk;
  }

  // Scratch for the candidates: each block gets a slice with room for twice
  // its expected share.
  absl::Status AllocateSlices(double expected) {
    int64_t capacity = 0;
    for (int64_t b = 0; b < blocks_.count(); ++b) {
      const int64_t len = blocks_.end(b) - blocks_.begin(b);
      const int64_t cap =
          take_all_ ? len : static_cast<int64_t>(2.0 * expected * len / n_) + 256;
      caps_[b] = std::min(cap, len);
      offsets_[b] = capacity;
      capacity += caps_[b] + 1;  // +1: the branchless append's spill slot
    }
    void* data;
    TF_RETURN_IF_ERROR(AllocateScratch(ctx_, capacity * sizeof(Cand), &cand_tensor_, &data));
    cands_ = static_cast<Cand*>(data);
    return absl::OkStatus();
  }

  // One pass over x: each block appends its candidates to its slice (counting
  // past the slice's capacity without writing) and notes NaN.
  void ScanBlocks(Bits thr, int64_t chunk) {
    blocks_.ForEach(blocks_.count(), [&](int64_t b) {
      const int64_t end = blocks_.end(b);
      Cand* out = cands_ + offsets_[b];
      const int64_t cap = caps_[b];
      int64_t count = 0;
      Bits seen_max = 0;
      for (int64_t c = blocks_.begin(b); c < end; c += chunk) {
        const int64_t c_end = std::min(end, c + chunk);
        Bits chunk_max = 0;
        for (int64_t i = c; i < c_end; ++i) {
          const Bits key = xb_[i] & kMask;
          chunk_max = key > chunk_max ? key : chunk_max;
        }
        seen_max = chunk_max > seen_max ? chunk_max : seen_max;
        if (chunk_max < thr) continue;
        for (int64_t i = c; i < c_end; ++i) {
          // Branchless append; past the slice's capacity it keeps
          // overwriting the spill slot and only counts.
          const Bits key = xb_[i] & kMask;
          out[count < cap ? count : cap] = Ops::Make(key, i, xb_[i]);
          count += key >= thr ? 1 : 0;
        }
      }
      counts_[b] = count;
      has_nan_[b] = seen_max > kInf;
    });
  }

  // total_ = the candidates found; *overflow: some slice was too small.
  absl::Status CountCandidates(bool* overflow) {
    total_ = 0;
    *overflow = false;
    for (int64_t b = 0; b < blocks_.count(); ++b) {
      if (has_nan_[b]) {
        return absl::InvalidArgumentError(
            "sampled_topk: `x` contains NaN; top-k by magnitude is undefined.");
      }
      total_ += counts_[b];
      *overflow |= counts_[b] > caps_[b];
    }
    return absl::OkStatus();
  }

  // A second pass into a buffer of exactly total_ candidates: per-block
  // counts are known, so each block writes at its prefix offset.
  absl::Status CompactExactly(Bits thr) {
    int64_t pos = 0;
    for (int64_t b = 0; b < blocks_.count(); ++b) {
      offsets_[b] = pos;
      pos += counts_[b];
    }
    void* data;
    TF_RETURN_IF_ERROR(AllocateScratch(ctx_, total_ * sizeof(Cand), &cand_tensor_, &data));
    cands_ = static_cast<Cand*>(data);
    blocks_.ForEach(blocks_.count(), [&](int64_t b) {
      const int64_t end = blocks_.end(b);
      Cand* out = cands_ + offsets_[b];
      for (int64_t i = blocks_.begin(b); i < end; ++i) {
        const Bits key = xb_[i] & kMask;
        if (key >= thr) *out++ = Ops::Make(key, i, xb_[i]);
      }
    });
    return absl::OkStatus();
  }

  // Moves the blocks' slices together at the start of the buffer.
  void CloseGaps() {
    int64_t pos = 0;
    for (int64_t b = 0; b < blocks_.count(); ++b) {
      if (offsets_[b] != pos && counts_[b] > 0) {
        std::memmove(cands_ + pos, cands_ + offsets_[b], counts_[b] * sizeof(Cand));
      }
      pos += counts_[b];
    }
  }

  // Packed candidates only: radix-sorts `parts` parts of the candidates in
  // parallel, then merges the parts' heads for the first k.
  absl::Status MergeSortedParts(int64_t parts, Bits* value_bits, Tindices* indices) {
    Tensor tmp_tensor;
    TF_RETURN_IF_ERROR(ctx_->allocate_temp(DT_UINT64, TensorShape({total_}), &tmp_tensor));
    uint64_t* tmp = tmp_tensor.flat<uint64>().data();
    std::vector<int64_t> head(parts + 1);
    for (int64_t p = 0; p <= parts; ++p) head[p] = total_ * p / parts;
    blocks_.ForEach(parts, [&](int64_t p) {
      RadixSortDescending(cands_ + head[p], tmp + head[p], head[p + 1] - head[p]);
    });
    std::vector<int64_t> end(head.begin() + 1, head.end());
    head.pop_back();
    for (int64_t i = 0; i < k_; ++i) {
      int64_t best = -1;
      for (int64_t p = 0; p < parts; ++p) {
        if (head[p] < end[p] && (best < 0 || cands_[head[p]] > cands_[head[best]])) best = p;
      }
      Emit(i, cands_[head[best]++], value_bits, indices);
    }
    return absl::OkStatus();
  }

  void Emit(int64_t i, const Cand& c, Bits* value_bits, Tindices* indices) const {
    indices[i] = Ops::IndexOf(c);
    value_bits[i] = Ops::RawOf(c, xb_);
  }

  OpKernelContext* const ctx_;
  const Bits* const xb_;
  const int64_t n_;
  const int64_t k_;
  const Blocks blocks_;
  // Phase 1.
  int64_t m_ = 0;          // sample size
  bool take_all_ = false;  // all of x is the candidate set
  int64_t rank_ = 0;       // 1-based rank in the sample of the threshold
  int64_t sorted_upto_ = 0;  // sample_[0, sorted_upto_) is partitioned
  Tensor sample_tensor_;
  Bits* sample_ = nullptr;
  // Phase 2, per block: candidates found, slice capacity and offset, NaN seen.
  std::vector<int64_t> counts_, caps_, offsets_;
  std::vector<char> has_nan_;
  Tensor cand_tensor_;
  Cand* cands_ = nullptr;
  int64_t total_ = 0;
};

}  // namespace

namespace functor {

template <typename T, typename Tindices>
absl::Status SampledTopKFunctor<CPUDevice, T, Tindices>::operator()(
    OpKernelContext* ctx, const T* x, int64_t n, int64_t k,
    float sample_ratio, int64_t seed, T* values, Tindices* indices) {
  CpuSelection<T, Tindices> selection(ctx, x, n, k);
  TF_RETURN_IF_ERROR(selection.DrawSample(sample_ratio, seed));
  TF_RETURN_IF_ERROR(selection.CollectCandidates());
  return selection.SelectExact(values, indices);
}

// Explicit instantiations: DGC>CompressStep (compress_step_kernels.cc)
// selects with the same functor.
#define INSTANTIATE(T, Tindices) template struct SampledTopKFunctor<CPUDevice, T, Tindices>
DGC_FOR_EACH_VALUE_AND_INDEX_TYPE(INSTANTIATE);
#undef INSTANTIATE

}  // namespace functor

template <typename Device, typename T, typename Tk, typename Tindices>
class SampledTopKOp : public OpKernel {
 public:
  explicit SampledTopKOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("sample_ratio", &sample_ratio_));
    OP_REQUIRES(ctx, sample_ratio_ > 0.0f && sample_ratio_ <= 1.0f,
                errors::InvalidArgument(
                    "sampled_topk: `sample_ratio` must be in (0, 1], got ",
                    sample_ratio_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("seed", &seed_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    int64_t k;
    OP_REQUIRES_OK(ctx, dgc_kernels::ReadK<Tk>("sampled_topk", ctx->input(1), &k));
    OP_REQUIRES_OK(ctx, dgc_kernels::CheckSelection<Tindices>("sampled_topk", "`x`",
                                                              x.shape(), k));
    Tensor* values = nullptr;
    Tensor* indices = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({k}), &values));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({k}), &indices));
    OP_REQUIRES_OK(ctx, functor::SampledTopKFunctor<Device, T, Tindices>()(
                            ctx, x.flat<T>().data(), x.NumElements(), k, sample_ratio_,
                            seed_, values->flat<T>().data(),
                            indices->flat<Tindices>().data()));
  }

 private:
  float sample_ratio_;
  int64_t seed_;
};

#define REGISTER_CPU(T, Tk, Tindices)                                \
  REGISTER_KERNEL_BUILDER(Name("DGC>SampledTopK")                    \
                              .Device(DEVICE_CPU)                    \
                              .TypeConstraint<T>("T")                \
                              .TypeConstraint<Tk>("Tk")              \
                              .TypeConstraint<Tindices>("Tindices"), \
                          SampledTopKOp<CPUDevice, T, Tk, Tindices>)
#define REGISTER_CPU_ALL(T) DGC_FOR_EACH_K_AND_INDEX_TYPE(REGISTER_CPU, T)
DGC_FOR_EACH_VALUE_TYPE(REGISTER_CPU_ALL);

#if GOOGLE_CUDA
#define REGISTER_GPU(T, Tk, Tindices)                                \
  REGISTER_KERNEL_BUILDER(Name("DGC>SampledTopK")                    \
                              .Device(DEVICE_GPU)                    \
                              .HostMemory("k")                       \
                              .TypeConstraint<T>("T")                \
                              .TypeConstraint<Tk>("Tk")              \
                              .TypeConstraint<Tindices>("Tindices"), \
                          SampledTopKOp<GPUDevice, T, Tk, Tindices>)
#define REGISTER_GPU_ALL(T) DGC_FOR_EACH_K_AND_INDEX_TYPE(REGISTER_GPU, T)
DGC_FOR_EACH_VALUE_TYPE(REGISTER_GPU_ALL);
#endif  // GOOGLE_CUDA

}  // namespace tensorflow
