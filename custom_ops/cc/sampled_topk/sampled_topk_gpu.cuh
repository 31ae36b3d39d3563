// CUDA implementation of the sampled-threshold exact top-k by magnitude.
//
// Usable without TensorFlow: it works on raw bit patterns (uint32 for
// float32, uint16 for float16 / bfloat16), takes its scratch memory from a
// caller-supplied allocator and its grid sizes from a caller-supplied launch
// policy. The TensorFlow kernel (sampled_topk_kernels.cu.cc) plugs in
// OpKernelContext::allocate_temp and GetGpuLaunchConfig; the standalone test
// (sampled_topk_standalone_test.cu) plugs in cudaMalloc and the device
// properties.
//
// Steps (all on `stream`; the host waits for two scalars per threshold):
//   1. sample m = SampleSize(n, ratio) magnitude keys (strided or seeded),
//      sort them descending (cub radix sort);
//   2. threshold = the rank-th largest sample key, rank = FirstRank(k, m, n);
//      one counting pass over x counts keys >= threshold and flags NaN;
//      fewer than k: double the rank (then: everything) and count again;
//   3. compaction: cub::DeviceSelect::If over the flat indices (stable, so
//      candidates stay in ascending index order);
//   4. gather the candidates' keys and stable-radix-sort (key descending)
//      the (key, index) pairs: equal keys keep ascending index order;
//   5. the first k pairs are the answer; values are x at those indices.
#ifndef DGC_TF_CUSTOM_OPS_SAMPLED_TOPK_GPU_CUH_
#define DGC_TF_CUSTOM_OPS_SAMPLED_TOPK_GPU_CUH_

#include <cuda_runtime.h>

#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_select.cuh>
#include <functional>
#include <limits>
#include <string>
#include <thrust/iterator/counting_iterator.h>

#include "sampled_topk/sampled_topk_common.h"

namespace dgc_topk {
namespace gpu {

struct LaunchConfig {
  int block_count;
  int thread_per_block;  // a multiple of 32
};

// Grid size for a grid-stride kernel over `work` elements.
using LaunchPolicy = std::function<LaunchConfig(int64_t work)>;

// Device memory that stays valid until the SampledTopK call returns.
class ScratchAllocator {
 public:
  virtual ~ScratchAllocator() = default;
  // Returns nullptr on failure.
  virtual void* Allocate(size_t bytes) = 0;
};

struct Result {
  enum Code { kOk = 0, kInvalidArgument = 1, kInternal = 2, kOutOfMemory = 3 };
  Code code = kOk;
  std::string message;
  bool ok() const { return code == kOk; }
  static Result Error(Code code, std::string message) {
    Result r;
    r.code = code;
    r.message = std::move(message);
    return r;
  }
};

namespace internal {

struct Counters {
  unsigned long long count;
  unsigned int nan;
};

template <typename Bits>
__global__ void SampleKernel(const Bits* __restrict__ x, int64_t m,
                             int64_t stride, int64_t seed, Bits mask,
                             Bits* __restrict__ sample) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < m; i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    sample[i] = x[SamplePosition(i, stride, seed)] & mask;
  }
}

// Counts keys >= thr and flags NaN (key > inf). blockDim.x % 32 == 0.
template <typename Bits>
__global__ void CountKernel(const Bits* __restrict__ x, int64_t n, Bits mask,
                            Bits inf, Bits thr, Counters* counters) {
  unsigned long long local = 0;
  bool nan = false;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < n; i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const Bits key = x[i] & mask;
    local += key >= thr ? 1 : 0;
    nan |= key > inf;
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    local += __shfl_down_sync(0xffffffffu, local, offset);
  }
  const bool any_nan = __any_sync(0xffffffffu, nan);
  if ((threadIdx.x & 31) == 0) {
    if (local != 0) atomicAdd(&counters->count, local);
    if (any_nan) atomicOr(&counters->nan, 1u);
  }
}

template <typename Bits, typename Index>
struct AtLeastThreshold {
  const Bits* x;
  Bits mask;
  Bits thr;
  __device__ __forceinline__ bool operator()(Index i) const {
    return (x[i] & mask) >= thr;
  }
};

template <typename Bits, typename Index>
__global__ void GatherKeysKernel(const Bits* __restrict__ x,
                                 const Index* __restrict__ idx, int64_t c,
                                 Bits mask, Bits* __restrict__ keys) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < c; i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    keys[i] = x[idx[i]] & mask;
  }
}

template <typename Bits, typename Index>
__global__ void OutputKernel(const Bits* __restrict__ x,
                             const Index* __restrict__ sorted_idx, int64_t k,
                             Bits* __restrict__ values,
                             Index* __restrict__ indices) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < k; i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const Index j = sorted_idx[i];
    indices[i] = j;
    values[i] = x[j];
  }
}

inline Result CudaError(cudaError_t e, const char* what) {
  return Result::Error(Result::kInternal,
                       std::string("sampled_topk (CUDA): ") + what + ": " +
                           cudaGetErrorString(e));
}

}  // namespace internal

#define DGC_CUDA_RETURN_IF_ERROR(expr, what)                  \
  do {                                                        \
    cudaError_t dgc_e_ = (expr);                              \
    if (dgc_e_ != cudaSuccess) return internal::CudaError(dgc_e_, what); \
  } while (0)

// `kernel` is a variable holding a __global__ function pointer.
#define DGC_LAUNCH(kernel, work, ...)                                       \
  do {                                                                      \
    const LaunchConfig dgc_cfg_ = launch(work);                             \
    if (dgc_cfg_.block_count > 0 && dgc_cfg_.thread_per_block > 0) {        \
      kernel<<<dgc_cfg_.block_count, dgc_cfg_.thread_per_block, 0, stream>>>( \
          __VA_ARGS__);                                                     \
      DGC_CUDA_RETURN_IF_ERROR(cudaGetLastError(), #kernel);                \
    }                                                                       \
  } while (0)

// The exact top-k by magnitude of x[0..n) (device memory, raw bits of
// format F): values[0..k) and indices[0..k) (device memory), ordered by
// descending magnitude, ties by ascending index. Rejects n < 1, k outside
// [1, n], n - 1 not fitting Index, and NaN in x (kInvalidArgument).
template <Format F, typename Index>
Result SampledTopK(const typename KeyTraits<F>::Bits* x, int64_t n, int64_t k,
                   float sample_ratio, int64_t seed,
                   typename KeyTraits<F>::Bits* values, Index* indices,
                   ScratchAllocator* scratch, const LaunchPolicy& launch,
                   cudaStream_t stream) {
  using Bits = typename KeyTraits<F>::Bits;
  constexpr Bits kMask = KeyTraits<F>::kAbsMask;
  constexpr Bits kInf = KeyTraits<F>::kInfKey;
  constexpr int kKeyBits = 8 * sizeof(Bits);

  if (n < 1) {
    return Result::Error(Result::kInvalidArgument,
                         "sampled_topk: `x` is empty; there is nothing to select.");
  }
  if (k < 1 || k > n) {
    return Result::Error(Result::kInvalidArgument,
                         "sampled_topk: `k` must be in [1, size(x) = " +
                             std::to_string(n) + "], got " + std::to_string(k) + ".");
  }
  if (static_cast<uint64_t>(n - 1) >
      static_cast<uint64_t>(std::numeric_limits<Index>::max())) {
    return Result::Error(Result::kInvalidArgument,
                         "sampled_topk: too many elements for the index type.");
  }
  auto alloc = [&](size_t bytes) -> void* {
    return scratch->Allocate(bytes == 0 ? 1 : bytes);
  };
#define DGC_ALLOC(ptr, type, count)                                         \
  type* ptr = static_cast<type*>(alloc(sizeof(type) * (count)));            \
  if (ptr == nullptr)                                                       \
    return Result::Error(Result::kOutOfMemory,                              \
                         "sampled_topk (CUDA): out of scratch memory");

  // 1. Sample and sort it.
  const int64_t m = SampleSize(n, sample_ratio);
  bool take_all = m >= n;
  int64_t rank = 0;
  Bits* sorted_sample = nullptr;
  if (!take_all) {
    DGC_ALLOC(sample, Bits, m);
    DGC_ALLOC(sorted, Bits, m);
    sorted_sample = sorted;
    auto* sample_kernel = internal::SampleKernel<Bits>;
    DGC_LAUNCH(sample_kernel, m, x, m, n / m, seed, kMask,
               sample);
    size_t temp_bytes = 0;
    DGC_CUDA_RETURN_IF_ERROR(
        cub::DeviceRadixSort::SortKeysDescending(nullptr, temp_bytes, sample,
                                                 sorted, m, 0, kKeyBits,
                                                 stream),
        "sample sort (size query)");
    DGC_ALLOC(temp, unsigned char, temp_bytes);
    DGC_CUDA_RETURN_IF_ERROR(
        cub::DeviceRadixSort::SortKeysDescending(temp, temp_bytes, sample,
                                                 sorted, m, 0, kKeyBits,
                                                 stream),
        "sample sort");
    rank = FirstRank(k, m, n);
  }

  // 2. Threshold and candidate count; lower the threshold until >= k.
  DGC_ALLOC(counters, internal::Counters, 1);
  Bits thr = 0;
  int64_t count = 0;
  while (true) {
    thr = 0;
    if (!take_all) {
      DGC_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(&thr, sorted_sample + (rank - 1), sizeof(Bits),
                          cudaMemcpyDeviceToHost, stream),
          "threshold copy");
    }
    DGC_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(counters, 0, sizeof(internal::Counters), stream),
        "counter reset");
    DGC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "threshold sync");
    auto* count_kernel = internal::CountKernel<Bits>;
    DGC_LAUNCH(count_kernel, n, x, n, kMask, kInf, thr,
               counters);
    internal::Counters host;
    DGC_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(&host, counters, sizeof(host), cudaMemcpyDeviceToHost,
                        stream),
        "count copy");
    DGC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "count sync");
    if (host.nan) {
      return Result::Error(
          Result::kInvalidArgument,
          "sampled_topk: `x` contains NaN; top-k by magnitude is undefined.");
    }
    count = static_cast<int64_t>(host.count);
    if (count >= k) break;
    if (take_all) {  // cannot happen: count == n >= k
      return Result::Error(Result::kInternal,
                           "sampled_topk (CUDA): candidate count below k");
    }
    if (rank >= m) {
      take_all = true;
    } else {
      rank = NextRank(rank, m);
    }
  }

  // 3. Compaction of the candidate indices, in ascending index order.
  DGC_ALLOC(cand_idx, Index, count);
  DGC_ALLOC(num_selected, int64_t, 1);
  thrust::counting_iterator<Index> first(0);
  internal::AtLeastThreshold<Bits, Index> pred{x, kMask, thr};
  size_t select_bytes = 0;
  DGC_CUDA_RETURN_IF_ERROR(
      cub::DeviceSelect::If(nullptr, select_bytes, first, cand_idx,
                            num_selected, n, pred, stream),
      "compaction (size query)");
  DGC_ALLOC(select_temp, unsigned char, select_bytes);
  DGC_CUDA_RETURN_IF_ERROR(
      cub::DeviceSelect::If(select_temp, select_bytes, first, cand_idx,
                            num_selected, n, pred, stream),
      "compaction");

  // 4. Stable sort of (key, index) by key descending.
  DGC_ALLOC(cand_keys, Bits, count);
  DGC_ALLOC(sorted_keys, Bits, count);
  DGC_ALLOC(sorted_idx, Index, count);
  auto* gather_kernel = internal::GatherKeysKernel<Bits, Index>;
  DGC_LAUNCH(gather_kernel, count, x, cand_idx,
             count, kMask, cand_keys);
  size_t sort_bytes = 0;
  DGC_CUDA_RETURN_IF_ERROR(
      cub::DeviceRadixSort::SortPairsDescending(
          nullptr, sort_bytes, cand_keys, sorted_keys, cand_idx, sorted_idx,
          count, 0, kKeyBits, stream),
      "candidate sort (size query)");
  DGC_ALLOC(sort_temp, unsigned char, sort_bytes);
  DGC_CUDA_RETURN_IF_ERROR(
      cub::DeviceRadixSort::SortPairsDescending(
          sort_temp, sort_bytes, cand_keys, sorted_keys, cand_idx, sorted_idx,
          count, 0, kKeyBits, stream),
      "candidate sort");

  // 5. Output.
  auto* output_kernel = internal::OutputKernel<Bits, Index>;
  DGC_LAUNCH(output_kernel, k, x, sorted_idx, k,
             values, indices);
  // Scratch must outlive the queued work (the TF allocator hands memory
  // back on return; cudaFree in the standalone test synchronizes anyway).
  DGC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "final sync");
#undef DGC_ALLOC
  return Result();
}

#undef DGC_LAUNCH
#undef DGC_CUDA_RETURN_IF_ERROR

}  // namespace gpu
}  // namespace dgc_topk

#endif  // DGC_TF_CUSTOM_OPS_SAMPLED_TOPK_GPU_CUH_
