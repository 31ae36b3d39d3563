// Standalone check of sampled_topk_gpu.cuh: no TensorFlow needed.
//
// Build and run on a CUDA machine (see custom_ops/README.md):
//   nvcc -std=c++17 -O3 --expt-relaxed-constexpr -arch=native -Icustom_ops/cc \
//     -o /tmp/sampled_topk_test custom_ops/cc/sampled_topk/sampled_topk_standalone_test.cu
//   /tmp/sampled_topk_test            # correctness, then timings
//   /tmp/sampled_topk_test --quick    # correctness only
//
// Checks the GPU result against a CPU reference (sort by |x| descending,
// index ascending) for float32 / float16 / bfloat16, int32 / int64 indices,
// edge sizes (1, 2, k == n, around powers of two), all-equal values, many
// ties, +/-0, +/-Inf, strided and seeded sampling, and the error cases (NaN,
// k < 1, k > n, empty). Then times the op at 1M / 25M / 100M elements and
// density 0.1% / 1% (the comparison with torch.topk is
// custom_ops/gpu_harness/bench_vs_torch.py, which builds dgc_topk_capi.cu
// into a shared library).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/standalone_cuda.cuh"
#include "sampled_topk/sampled_topk_gpu.cuh"

using dgc_topk::Format;
using dgc_topk::KeyTraits;
namespace gpu = dgc_topk::gpu;

template <Format F>
struct Host;
template <>
struct Host<Format::kFloat32> {
  static uint32_t FromFloat(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return b;
  }
  static const char* Name() { return "float32"; }
};
template <>
struct Host<Format::kFloat16> {
  static uint16_t FromFloat(float f) {
    __half h = __float2half_rn(f);
    uint16_t b;
    std::memcpy(&b, &h, 2);
    return b;
  }
  static const char* Name() { return "float16"; }
};
template <>
struct Host<Format::kBFloat16> {
  static uint16_t FromFloat(float f) {
    __nv_bfloat16 h = __float2bfloat16_rn(f);
    uint16_t b;
    std::memcpy(&b, &h, 2);
    return b;
  }
  static const char* Name() { return "bfloat16"; }
};

template <Format F, typename Index>
void Reference(const std::vector<typename KeyTraits<F>::Bits>& x, int64_t k,
               std::vector<Index>* idx) {
  using Bits = typename KeyTraits<F>::Bits;
  std::vector<Index> order(x.size());
  std::iota(order.begin(), order.end(), Index{0});
  const Bits mask = KeyTraits<F>::kAbsMask;
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](Index a, Index b) {
                      const Bits ka = x[a] & mask, kb = x[b] & mask;
                      return ka > kb || (ka == kb && a < b);
                    });
  order.resize(k);
  *idx = std::move(order);
}

struct Stats {
  int passed = 0;
  int failed = 0;
};

template <Format F, typename Index>
gpu::Result RunGpu(const std::vector<typename KeyTraits<F>::Bits>& x,
                   int64_t k, float ratio, int64_t seed,
                   std::vector<typename KeyTraits<F>::Bits>* values,
                   std::vector<Index>* indices, cudaStream_t stream,
                   const gpu::LaunchPolicy& launch) {
  using Bits = typename KeyTraits<F>::Bits;
  const int64_t n = static_cast<int64_t>(x.size());
  Bits* dx = nullptr;
  Bits* dv = nullptr;
  Index* di = nullptr;
  CHECK_CUDA(cudaMalloc(&dx, sizeof(Bits) * std::max<int64_t>(n, 1)));
  CHECK_CUDA(cudaMalloc(&dv, sizeof(Bits) * std::max<int64_t>(k, 1)));
  CHECK_CUDA(cudaMalloc(&di, sizeof(Index) * std::max<int64_t>(k, 1)));
  if (n > 0) {
    CHECK_CUDA(cudaMemcpy(dx, x.data(), sizeof(Bits) * n,
                          cudaMemcpyHostToDevice));
  }
  gpu::Result r;
  {
    PoolScratch scratch(stream);
    r = gpu::SampledTopK<F, Index>(dx, n, k, ratio, seed, dv, di, &scratch,
                                   launch, stream);
  }
  CHECK_CUDA(cudaStreamSynchronize(stream));
  if (r.ok()) {
    values->resize(k);
    indices->resize(k);
    CHECK_CUDA(cudaMemcpy(values->data(), dv, sizeof(Bits) * k,
                          cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(indices->data(), di, sizeof(Index) * k,
                          cudaMemcpyDeviceToHost));
  }
  CHECK_CUDA(cudaFree(dx));
  CHECK_CUDA(cudaFree(dv));
  CHECK_CUDA(cudaFree(di));
  return r;
}

template <Format F, typename Index>
void CheckCase(const std::string& name, const std::vector<float>& xf,
               int64_t k, float ratio, int64_t seed, Stats* stats,
               cudaStream_t stream, const gpu::LaunchPolicy& launch) {
  using Bits = typename KeyTraits<F>::Bits;
  std::vector<Bits> x(xf.size());
  for (size_t i = 0; i < xf.size(); ++i) x[i] = Host<F>::FromFloat(xf[i]);
  std::vector<Bits> values;
  std::vector<Index> indices, expected;
  gpu::Result r = RunGpu<F, Index>(x, k, ratio, seed, &values, &indices,
                                   stream, launch);
  bool ok = r.ok();
  if (ok) {
    Reference<F, Index>(x, k, &expected);
    ok = indices == expected;
    for (int64_t i = 0; ok && i < k; ++i) ok = values[i] == x[indices[i]];
  }
  if (ok) {
    ++stats->passed;
  } else {
    ++stats->failed;
    std::printf("FAIL %s %s idx%zu n=%zu k=%lld seed=%lld: %s\n",
                name.c_str(), Host<F>::Name(), sizeof(Index) * 8, xf.size(),
                static_cast<long long>(k), static_cast<long long>(seed),
                r.ok() ? "wrong result" : r.message.c_str());
  }
}

template <Format F>
void ExpectError(const std::string& name, const std::vector<float>& xf,
                 int64_t k, const char* needle, Stats* stats,
                 cudaStream_t stream, const gpu::LaunchPolicy& launch) {
  using Bits = typename KeyTraits<F>::Bits;
  std::vector<Bits> x(xf.size());
  for (size_t i = 0; i < xf.size(); ++i) x[i] = Host<F>::FromFloat(xf[i]);
  std::vector<Bits> values;
  std::vector<int32_t> indices;
  gpu::Result r = RunGpu<F, int32_t>(x, k, 0.01f, -1, &values, &indices,
                                     stream, launch);
  if (r.code == gpu::Result::kInvalidArgument &&
      r.message.find(needle) != std::string::npos) {
    ++stats->passed;
  } else {
    ++stats->failed;
    std::printf("FAIL error case %s %s: code %d message '%s'\n", name.c_str(),
                Host<F>::Name(), static_cast<int>(r.code), r.message.c_str());
  }
}

template <Format F>
void CorrectnessSuite(Stats* stats, cudaStream_t stream,
                      const gpu::LaunchPolicy& launch) {
  std::mt19937_64 rng(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> small(-3, 3);
  const std::vector<int64_t> sizes = {1,     2,     3,     31,     32,
                                      33,    1023,  1024,   1025,  4095,
                                      4096,  4097,  65535,  65536, 65537,
                                      (1 << 20) + 3, 3000017};
  for (int64_t n : sizes) {
    for (int pattern = 0; pattern < 5; ++pattern) {
      std::vector<float> x(n);
      std::string name;
      switch (pattern) {
        case 0:
          name = "normal";
          for (auto& v : x) v = normal(rng);
          break;
        case 1:
          name = "all-equal";
          std::fill(x.begin(), x.end(), -1.5f);
          break;
        case 2:
          name = "ties";
          for (auto& v : x) v = static_cast<float>(small(rng));
          break;
        case 3:
          name = "inf";
          for (auto& v : x) v = normal(rng);
          x[0] = -INFINITY;
          x[n / 2] = INFINITY;
          x[n - 1] = INFINITY;
          break;
        default:
          name = "zeros-signed";
          for (int64_t i = 0; i < n; ++i) x[i] = (i % 2) ? -0.0f : 0.0f;
          if (n > 2) x[n / 3] = 1e-30f;  // denormal in half, tiny in float
          break;
      }
      std::vector<int64_t> ks = {1, n};
      if (n > 2) ks.push_back(2);
      if (n > 1000) ks.push_back(n / 1000);
      if (n > 100) ks.push_back(n / 100);
      if (n > 3) ks.push_back(n / 2 + 1);
      for (int64_t k : ks) {
        CheckCase<F, int32_t>(name, x, k, 0.01f, -1, stats, stream, launch);
        CheckCase<F, int32_t>(name, x, k, 0.01f, 42, stats, stream, launch);
      }
      CheckCase<F, int64_t>(name, x, std::max<int64_t>(1, n / 1000), 0.01f,
                            -1, stats, stream, launch);
      CheckCase<F, int64_t>(name, x, n, 0.05f, 7, stats, stream, launch);
    }
  }
  // Errors.
  std::vector<float> x(5000, 1.0f);
  x[4321] = NAN;
  ExpectError<F>("nan", x, 10, "NaN", stats, stream, launch);
  std::vector<float> small_nan = {1.0f, NAN};
  ExpectError<F>("nan-small", small_nan, 1, "NaN", stats, stream, launch);
  std::vector<float> y(10, 1.0f);
  ExpectError<F>("k=0", y, 0, "`k`", stats, stream, launch);
  ExpectError<F>("k>n", y, 11, "`k`", stats, stream, launch);
  ExpectError<F>("empty", {}, 1, "empty", stats, stream, launch);
}

template <Format F>
void TimeSuite(cudaStream_t stream, const gpu::LaunchPolicy& launch) {
  using Bits = typename KeyTraits<F>::Bits;
  std::mt19937_64 rng(99);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t n : {int64_t{1} << 20, int64_t{25000000}, int64_t{100000000}}) {
    std::vector<Bits> x(n);
    for (auto& v : x) v = Host<F>::FromFloat(normal(rng));
    Bits* dx;
    CHECK_CUDA(cudaMalloc(&dx, sizeof(Bits) * n));
    CHECK_CUDA(cudaMemcpy(dx, x.data(), sizeof(Bits) * n,
                          cudaMemcpyHostToDevice));
    for (double density : {0.001, 0.01}) {
      const int64_t k = std::max<int64_t>(1, std::ceil(density * n));
      Bits* dv;
      int32_t* di;
      CHECK_CUDA(cudaMalloc(&dv, sizeof(Bits) * k));
      CHECK_CUDA(cudaMalloc(&di, sizeof(int32_t) * k));
      cudaEvent_t start, stop;
      CHECK_CUDA(cudaEventCreate(&start));
      CHECK_CUDA(cudaEventCreate(&stop));
      std::vector<float> ms;
      for (int rep = 0; rep < 12; ++rep) {
        CHECK_CUDA(cudaEventRecord(start, stream));
        {
          PoolScratch scratch(stream);
          gpu::Result r = gpu::SampledTopK<F, int32_t>(
              dx, n, k, 0.01f, -1, dv, di, &scratch, launch, stream);
          if (!r.ok()) {
            std::printf("timing run failed: %s\n", r.message.c_str());
            std::exit(1);
          }
        }
        CHECK_CUDA(cudaEventRecord(stop, stream));
        CHECK_CUDA(cudaEventSynchronize(stop));
        float t;
        CHECK_CUDA(cudaEventElapsedTime(&t, start, stop));
        if (rep >= 2) ms.push_back(t);  // first runs warm the pool
      }
      std::sort(ms.begin(), ms.end());
      std::printf("time %-8s n=%-10lld density=%-6g k=%-8lld median %.3f ms\n",
                  Host<F>::Name(), static_cast<long long>(n), density,
                  static_cast<long long>(k), ms[ms.size() / 2]);
      CHECK_CUDA(cudaEventDestroy(start));
      CHECK_CUDA(cudaEventDestroy(stop));
      CHECK_CUDA(cudaFree(dv));
      CHECK_CUDA(cudaFree(di));
    }
    CHECK_CUDA(cudaFree(dx));
  }
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device\n");
    return 3;
  }
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  const gpu::LaunchPolicy launch = DeviceLaunchPolicy();
  Stats stats;
  CorrectnessSuite<Format::kFloat32>(&stats, stream, launch);
  CorrectnessSuite<Format::kFloat16>(&stats, stream, launch);
  CorrectnessSuite<Format::kBFloat16>(&stats, stream, launch);
  std::printf("correctness: %d passed, %d failed\n", stats.passed,
              stats.failed);
  if (stats.failed == 0 && !quick) {
    TimeSuite<Format::kFloat32>(stream, launch);
    TimeSuite<Format::kFloat16>(stream, launch);
  }
  CHECK_CUDA(cudaStreamDestroy(stream));
  return stats.failed == 0 ? 0 : 1;
}
