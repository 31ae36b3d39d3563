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

#include "sampled_topk_kernels.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <vector>

#include "sampled_topk_common.h"
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

using dgc_topk::Format;
using dgc_topk::KeyTraits;

template <typename T>
struct FormatOf;
template <>
struct FormatOf<float> {
  static constexpr Format value = Format::kFloat32;
};
template <>
struct FormatOf<Eigen::half> {
  static constexpr Format value = Format::kFloat16;
};
template <>
struct FormatOf<bfloat16> {
  static constexpr Format value = Format::kBFloat16;
};

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

absl::Status AllocateScratch(OpKernelContext* ctx, int64_t bytes,
                             Tensor* tensor, void** data) {
  TF_RETURN_IF_ERROR(ctx->allocate_temp(
      DT_UINT8, TensorShape({std::max<int64_t>(bytes, 1)}), tensor));
  *data = tensor->flat<uint8>().data();
  return absl::OkStatus();
}

}  // namespace

namespace functor {

template <typename T, typename Tindices>
absl::Status SampledTopKFunctor<CPUDevice, T, Tindices>::operator()(
    OpKernelContext* ctx, const T* x, int64_t n, int64_t k,
    float sample_ratio, int64_t seed, T* values, Tindices* indices) {
  using Traits = KeyTraits<FormatOf<T>::value>;
  using Bits = typename Traits::Bits;
  using Ops = CandidateOps<Bits, Tindices>;
  using Cand = typename Ops::Type;
  static_assert(sizeof(Bits) == sizeof(T), "key and value widths differ");
  constexpr Bits kMask = Traits::kAbsMask;
  constexpr Bits kInf = Traits::kInfKey;
  const Bits* xb = reinterpret_cast<const Bits*>(x);

  const auto* worker_threads = ctx->device()->tensorflow_cpu_worker_threads();
  thread::ThreadPool* pool = worker_threads->workers;
  const int64_t num_threads = std::max(1, worker_threads->num_threads);

  // Blocks of the flat range, a few per thread for load balance.
  int64_t num_blocks = std::min<int64_t>((n + kMinBlock - 1) / kMinBlock,
                                         4 * num_threads);
  num_blocks = std::max<int64_t>(num_blocks, 1);
  const int64_t block_len = (n + num_blocks - 1) / num_blocks;
  num_blocks = (n + block_len - 1) / block_len;
  auto for_each_block = [&](int64_t blocks,
                            const std::function<void(int64_t)>& fn) {
    if (blocks == 1 || pool == nullptr) {
      for (int64_t b = 0; b < blocks; ++b) fn(b);
      return;
    }
    // Fixed blocks of one unit; spelled this way because
    // SchedulingParams::Fixed is missing before TensorFlow 2.20.
    pool->TransformRangeConcurrently(/*block_size=*/1, blocks,
                                     [&fn](int64_t b0, int64_t b1) {
                                       for (int64_t b = b0; b < b1; ++b) fn(b);
                                     });
  };

  // Sample of magnitude keys.
  const int64_t m = dgc_topk::SampleSize(n, sample_ratio);
  Tensor sample_tensor;
  Bits* sample = nullptr;
  bool take_all = m >= n;  // the sample would be x itself: select directly
  int64_t rank = 0;        // 1-based rank in the sample of the threshold
  if (!take_all) {
    void* data;
    TF_RETURN_IF_ERROR(AllocateScratch(ctx, m * sizeof(Bits), &sample_tensor,
                                       &data));
    sample = static_cast<Bits*>(data);
    const int64_t stride = n / m;
    const int64_t sample_blocks =
        std::max<int64_t>(1, std::min<int64_t>(num_blocks, m / 4096));
    const int64_t sample_len = (m + sample_blocks - 1) / sample_blocks;
    for_each_block(sample_blocks, [&](int64_t b) {
      const int64_t begin = b * sample_len;
      const int64_t end = std::min(m, begin + sample_len);
      for (int64_t i = begin; i < end; ++i) {
        sample[i] = xb[dgc_topk::SamplePosition(i, stride, seed)] & kMask;
      }
    });
    rank = dgc_topk::FirstRank(k, m, n);
  }

  std::vector<int64_t> counts(num_blocks), caps(num_blocks),
      offsets(num_blocks);
  std::vector<char> has_nan(num_blocks);
  int64_t sorted_upto = 0;  // sample[0, sorted_upto) is partitioned
  Tensor cand_tensor;
  Cand* cands = nullptr;
  int64_t total = 0;
  while (true) {
    Bits thr = 0;
    if (!take_all) {
      // rank-th largest sample key; nth_element extends the partition
      // left by earlier (smaller) ranks.
      std::nth_element(sample + sorted_upto, sample + rank - 1, sample + m,
                       std::greater<Bits>());
      sorted_upto = rank - 1;
      thr = sample[rank - 1];
    }
    // Scratch: each block gets room for twice its expected share.
    const double expected =
        take_all ? static_cast<double>(n)
                 : static_cast<double>(rank) * static_cast<double>(n) /
                       static_cast<double>(m);
    int64_t capacity = 0;
    for (int64_t b = 0; b < num_blocks; ++b) {
      const int64_t len = std::min(n, (b + 1) * block_len) - b * block_len;
      int64_t cap =
          take_all ? len
                   : static_cast<int64_t>(2.0 * expected * len / n) + 256;
      caps[b] = std::min(cap, len);
      offsets[b] = capacity;
      capacity += caps[b] + 1;  // +1: the branchless append's spill slot
    }
    int64_t chunk = kMaxChunk;
    while (chunk > kMinChunk && chunk * expected > 0.15 * n) chunk /= 2;
    void* data;
    TF_RETURN_IF_ERROR(
        AllocateScratch(ctx, capacity * sizeof(Cand), &cand_tensor, &data));
    cands = static_cast<Cand*>(data);

    for_each_block(num_blocks, [&](int64_t b) {
      const int64_t begin = b * block_len;
      const int64_t end = std::min(n, begin + block_len);
      Cand* out = cands + offsets[b];
      const int64_t cap = caps[b];
      int64_t count = 0;
      Bits seen_max = 0;
      for (int64_t c = begin; c < end; c += chunk) {
        const int64_t c_end = std::min(end, c + chunk);
        Bits chunk_max = 0;
        for (int64_t i = c; i < c_end; ++i) {
          const Bits key = xb[i] & kMask;
          chunk_max = key > chunk_max ? key : chunk_max;
        }
        seen_max = chunk_max > seen_max ? chunk_max : seen_max;
        if (chunk_max < thr) continue;
        for (int64_t i = c; i < c_end; ++i) {
          // Branchless append; past the slice's capacity it keeps
          // overwriting the spill slot and only counts.
          const Bits key = xb[i] & kMask;
          out[count < cap ? count : cap] = Ops::Make(key, i, xb[i]);
          count += key >= thr ? 1 : 0;
        }
      }
      counts[b] = count;
      has_nan[b] = seen_max > kInf;
    });

    total = 0;
    bool overflow = false;
    for (int64_t b = 0; b < num_blocks; ++b) {
      if (has_nan[b]) {
        return absl::InvalidArgumentError(
            "sampled_topk: `x` contains NaN; top-k by magnitude is "
            "undefined.");
      }
      total += counts[b];
      overflow |= counts[b] > caps[b];
    }
    if (total < k) {
      // Too few candidates: lower the threshold (never reached with
      // take_all, where total == n >= k).
      if (rank >= m) {
        take_all = true;
      } else {
        rank = dgc_topk::NextRank(rank, m);
      }
      continue;
    }
    if (overflow) {
      // Exact compaction: per-block counts are known, so each block writes
      // at its prefix offset.
      int64_t pos = 0;
      for (int64_t b = 0; b < num_blocks; ++b) {
        offsets[b] = pos;
        pos += counts[b];
      }
      TF_RETURN_IF_ERROR(
          AllocateScratch(ctx, total * sizeof(Cand), &cand_tensor, &data));
      cands = static_cast<Cand*>(data);
      for_each_block(num_blocks, [&](int64_t b) {
        const int64_t begin = b * block_len;
        const int64_t end = std::min(n, begin + block_len);
        Cand* out = cands + offsets[b];
        for (int64_t i = begin; i < end; ++i) {
          const Bits key = xb[i] & kMask;
          if (key >= thr) *out++ = Ops::Make(key, i, xb[i]);
        }
      });
    } else {
      // Close the gaps between the blocks' slices.
      int64_t pos = 0;
      for (int64_t b = 0; b < num_blocks; ++b) {
        if (offsets[b] != pos && counts[b] > 0) {
          std::memmove(cands + pos, cands + offsets[b],
                       counts[b] * sizeof(Cand));
        }
        pos += counts[b];
      }
    }
    break;
  }

  // Exact selection among the candidates, into the output order.
  Bits* value_bits = reinterpret_cast<Bits*>(values);
  auto emit = [&](int64_t i, const Cand& c) {
    indices[i] = Ops::IndexOf(c);
    value_bits[i] = Ops::RawOf(c, xb);
  };
  if constexpr (Ops::kPacked) {
    constexpr int64_t kMinPart = 1 << 15;
    const int64_t parts = std::min<int64_t>(num_threads, total / kMinPart);
    if (parts >= 2) {
      // Radix-sort parts of the candidates in parallel, then merge the
      // parts' heads for the first k.
      Tensor tmp_tensor;
      TF_RETURN_IF_ERROR(ctx->allocate_temp(DT_UINT64, TensorShape({total}),
                                            &tmp_tensor));
      uint64_t* tmp = tmp_tensor.flat<uint64>().data();
      std::vector<int64_t> head(parts + 1);
      for (int64_t p = 0; p <= parts; ++p) head[p] = total * p / parts;
      for_each_block(parts, [&](int64_t p) {
        RadixSortDescending(cands + head[p], tmp + head[p],
                            head[p + 1] - head[p]);
      });
      std::vector<int64_t> end(head.begin() + 1, head.end());
      head.pop_back();
      for (int64_t i = 0; i < k; ++i) {
        int64_t best = -1;
        for (int64_t p = 0; p < parts; ++p) {
          if (head[p] < end[p] &&
              (best < 0 || cands[head[p]] > cands[head[best]])) {
            best = p;
          }
        }
        emit(i, cands[head[best]++]);
      }
      return absl::OkStatus();
    }
  }
  if (total > k) {
    std::nth_element(cands, cands + (k - 1), cands + total, Ops::Before);
  }
  bool sorted = false;
  if constexpr (Ops::kPacked) {
    if (k >= 4096) {
      Tensor tmp_tensor;
      TF_RETURN_IF_ERROR(
          ctx->allocate_temp(DT_UINT64, TensorShape({k}), &tmp_tensor));
      RadixSortDescending(cands, tmp_tensor.flat<uint64>().data(), k);
      sorted = true;
    }
  }
  if (!sorted) std::sort(cands, cands + k, Ops::Before);
  for (int64_t i = 0; i < k; ++i) emit(i, cands[i]);
  return absl::OkStatus();
}

}  // namespace functor

// Explicit instantiations: DGC>CompressStep (compress_step_kernels.cc)
// selects with the same functor.
template struct functor::SampledTopKFunctor<CPUDevice, float, int32>;
template struct functor::SampledTopKFunctor<CPUDevice, float, int64_t>;
template struct functor::SampledTopKFunctor<CPUDevice, Eigen::half, int32>;
template struct functor::SampledTopKFunctor<CPUDevice, Eigen::half, int64_t>;
template struct functor::SampledTopKFunctor<CPUDevice, bfloat16, int32>;
template struct functor::SampledTopKFunctor<CPUDevice, bfloat16, int64_t>;

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
    const Tensor& k_tensor = ctx->input(1);
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(k_tensor.shape()),
                errors::InvalidArgument(
                    "sampled_topk: `k` must be a scalar, got shape ",
                    k_tensor.shape().DebugString()));
    const int64_t k = static_cast<int64_t>(k_tensor.scalar<Tk>()());
    const int64_t n = x.NumElements();
    OP_REQUIRES(ctx, n > 0,
                errors::InvalidArgument(
                    "sampled_topk: `x` is empty (shape ",
                    x.shape().DebugString(), "); there is nothing to select."));
    OP_REQUIRES(ctx, k >= 1,
                errors::InvalidArgument("sampled_topk: `k` must be >= 1, got ",
                                        k, "."));
    OP_REQUIRES(ctx, k <= n,
                errors::InvalidArgument(
                    "sampled_topk: `k` must be <= size(x) = ", n, ", got ", k,
                    "."));
    OP_REQUIRES(
        ctx,
        n - 1 <= static_cast<int64_t>(std::numeric_limits<Tindices>::max()),
        errors::InvalidArgument("sampled_topk: `x` has ", n,
                                " elements, too many for ",
                                DataTypeString(DataTypeToEnum<Tindices>::v()),
                                " indices; use Tindices=int64."));
    Tensor* values = nullptr;
    Tensor* indices = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({k}), &values));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({k}), &indices));
    OP_REQUIRES_OK(ctx, functor::SampledTopKFunctor<Device, T, Tindices>()(
                            ctx, x.flat<T>().data(), n, k, sample_ratio_,
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

#define REGISTER_CPU_ALL(T)           \
  REGISTER_CPU(T, int32, int32);      \
  REGISTER_CPU(T, int64_t, int32);    \
  REGISTER_CPU(T, int32, int64_t);    \
  REGISTER_CPU(T, int64_t, int64_t)

REGISTER_CPU_ALL(float);
REGISTER_CPU_ALL(Eigen::half);
REGISTER_CPU_ALL(bfloat16);

#if GOOGLE_CUDA
#define REGISTER_GPU(T, Tk, Tindices)                                \
  REGISTER_KERNEL_BUILDER(Name("DGC>SampledTopK")                    \
                              .Device(DEVICE_GPU)                    \
                              .HostMemory("k")                       \
                              .TypeConstraint<T>("T")                \
                              .TypeConstraint<Tk>("Tk")              \
                              .TypeConstraint<Tindices>("Tindices"), \
                          SampledTopKOp<GPUDevice, T, Tk, Tindices>)

#define REGISTER_GPU_ALL(T)        \
  REGISTER_GPU(T, int32, int32);   \
  REGISTER_GPU(T, int64_t, int32); \
  REGISTER_GPU(T, int32, int64_t); \
  REGISTER_GPU(T, int64_t, int64_t)

REGISTER_GPU_ALL(float);
REGISTER_GPU_ALL(Eigen::half);
REGISTER_GPU_ALL(bfloat16);
#endif  // GOOGLE_CUDA

}  // namespace tensorflow
