// Standalone check of compress_step_gpu.cuh (float32): no TensorFlow needed.
//
// Build and run on a CUDA machine (see custom_ops/README.md):
//   nvcc -std=c++17 -O3 --expt-relaxed-constexpr -arch=native -Icustom_ops/cc \
//     -o /tmp/compress_step_test custom_ops/cc/compress_step/compress_step_standalone_test.cu
//   /tmp/compress_step_test            # correctness, then timings
//   /tmp/compress_step_test --quick    # correctness only
//
// Checks the fused step bit for bit against the CPU reference built from the
// same header (compress_step_common.h: AccumulateRange, then an exact top-k by
// sorting, then MaskSent) for momentum SGD, Nesterov, no momentum buffer,
// with and without momentum masking, masking in the step or left to the
// caller (mask_selected), at several sizes and densities. Then
// times it at 1M / 25M / 100M elements (0.1%) beside a device-to-device copy
// of the bytes it must move at least (g, u, v read, u and v written: 5 n
// words), in GB/s.
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
#include "compress_step/compress_step_common.h"
#include "compress_step/compress_step_gpu.cuh"

namespace {

using dgc_compress::StepParams;
using dgc_topk::Format;
namespace gpu = dgc_topk::gpu;

// The CPU reference: accumulate, exact top-k (|v| descending, index
// ascending), mask.
void Reference(const StepParams<float>& p, const std::vector<float>& g, std::vector<float>* u,
               std::vector<float>* v, int64_t k, std::vector<float>* values,
               std::vector<int32_t>* indices) {
  const int64_t n = static_cast<int64_t>(v->size());
  dgc_compress::AccumulateRange(p, g.data(), u->data(), v->data(), n);
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return std::fabs((*v)[a]) > std::fabs((*v)[b]);
  });
  values->resize(k);
  indices->resize(k);
  for (int64_t j = 0; j < k; ++j) {
    (*indices)[j] = order[j];
    (*values)[j] = (*v)[order[j]];
  }
  if (!p.mask_selected) return;
  for (int64_t j = 0; j < k; ++j) dgc_compress::MaskSent(p, order[j], u->data(), v->data());
}

bool CheckOne(int64_t n, int64_t k, const StepParams<float>& p, uint64_t seed,
              cudaStream_t stream) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> g(n), u(n), v(n);
  for (int64_t i = 0; i < n; ++i) {
    g[i] = normal(rng);
    u[i] = normal(rng);
    v[i] = normal(rng);
  }
  float *dg, *du, *dv, *dvalues;
  int32_t* dindices;
  CHECK_CUDA(cudaMalloc(&dg, n * 4));
  CHECK_CUDA(cudaMalloc(&du, n * 4));
  CHECK_CUDA(cudaMalloc(&dv, n * 4));
  CHECK_CUDA(cudaMalloc(&dvalues, k * 4));
  CHECK_CUDA(cudaMalloc(&dindices, k * 4));
  CHECK_CUDA(cudaMemcpy(dg, g.data(), n * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(du, u.data(), n * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dv, v.data(), n * 4, cudaMemcpyHostToDevice));
  static const gpu::LaunchPolicy launch = DeviceLaunchPolicy();
  gpu::Result r;
  {
    PoolScratch scratch(stream);
    r = dgc_compress::gpu::CompressStep<Format::kFloat32, float, int32_t>(
        p, dg, du, dv, n, k, 0.01f, -1, dvalues, dindices, &scratch, launch, stream);
  }
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<float> got_u(n), got_v(n), got_values(k);
  std::vector<int32_t> got_indices(k);
  CHECK_CUDA(cudaMemcpy(got_u.data(), du, n * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(got_v.data(), dv, n * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(got_values.data(), dvalues, k * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(got_indices.data(), dindices, k * 4, cudaMemcpyDeviceToHost));
  for (float* ptr : {dg, du, dv, dvalues}) CHECK_CUDA(cudaFree(ptr));
  CHECK_CUDA(cudaFree(dindices));

  std::vector<float> want_values;
  std::vector<int32_t> want_indices;
  Reference(p, g, &u, &v, k, &want_values, &want_indices);
  const bool ok = r.ok() && got_indices == want_indices &&
                  std::memcmp(got_values.data(), want_values.data(), k * 4) == 0 &&
                  std::memcmp(got_v.data(), v.data(), n * 4) == 0 &&
                  (!p.has_momentum || std::memcmp(got_u.data(), u.data(), n * 4) == 0);
  std::printf("%s n=%lld k=%lld momentum=%d nesterov=%d masking=%d mask_selected=%d%s%s\n",
              ok ? "ok  " : "FAIL", static_cast<long long>(n), static_cast<long long>(k),
              p.has_momentum, p.nesterov, p.momentum_masking, p.mask_selected,
              r.ok() ? "" : " error: ", r.message.c_str());
  return ok;
}

void Time(int64_t n, double density, cudaStream_t stream) {
  const int64_t k = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(density * n)));
  float *dg, *du, *dv, *dvalues, *dcopy;
  int32_t* dindices;
  CHECK_CUDA(cudaMalloc(&dg, n * 4));
  CHECK_CUDA(cudaMalloc(&du, n * 4));
  CHECK_CUDA(cudaMalloc(&dv, n * 4));
  CHECK_CUDA(cudaMalloc(&dcopy, 5 * n * 4));
  CHECK_CUDA(cudaMalloc(&dvalues, k * 4));
  CHECK_CUDA(cudaMalloc(&dindices, k * 4));
  std::vector<float> h(n);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal;
  for (auto& x : h) x = normal(rng);
  CHECK_CUDA(cudaMemcpy(dg, h.data(), n * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemset(du, 0, n * 4));
  CHECK_CUDA(cudaMemset(dv, 0, n * 4));
  static const gpu::LaunchPolicy launch = DeviceLaunchPolicy();
  const StepParams<float> p{0.9f, false, true, true};
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  auto step = [&] {
    PoolScratch scratch(stream);
    gpu::Result r = dgc_compress::gpu::CompressStep<Format::kFloat32, float, int32_t>(
        p, dg, du, dv, n, k, 0.01f, -1, dvalues, dindices, &scratch, launch, stream);
    if (!r.ok()) std::fprintf(stderr, "error: %s\n", r.message.c_str());
  };
  // The bytes the step must move at least: read g, u, v; write u, v.
  const size_t bytes = 5ull * n * 4;
  auto copy = [&] {  // the same bytes, half read and half written
    CHECK_CUDA(cudaMemcpyAsync(dcopy + 5 * n / 2, dcopy, bytes / 2, cudaMemcpyDeviceToDevice,
                               stream));
  };
  float ms_step = 0, ms_copy = 0;
  for (int pass = 0; pass < 2; ++pass) {  // first pass warms up
    const int reps = 20;
    CHECK_CUDA(cudaEventRecord(a, stream));
    for (int i = 0; i < reps; ++i) step();
    CHECK_CUDA(cudaEventRecord(b, stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    CHECK_CUDA(cudaEventElapsedTime(&ms_step, a, b));
    ms_step /= reps;
    CHECK_CUDA(cudaEventRecord(a, stream));
    for (int i = 0; i < reps; ++i) copy();
    CHECK_CUDA(cudaEventRecord(b, stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    CHECK_CUDA(cudaEventElapsedTime(&ms_copy, a, b));
    ms_copy /= reps;
  }
  std::printf("n=%-10lld density=%.4f  step %.3f ms (%.0f GB/s)  copy of %zu MB %.3f ms "
              "(%.0f GB/s)  step/copy %.2fx\n",
              static_cast<long long>(n), density, ms_step, bytes / ms_step / 1e6, bytes >> 20,
              ms_copy, bytes / ms_copy / 1e6, ms_step / ms_copy);
  for (float* ptr : {dg, du, dv, dvalues, dcopy}) CHECK_CUDA(cudaFree(ptr));
  CHECK_CUDA(cudaFree(dindices));
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  bool ok = true;
  uint64_t seed = 1;
  for (int64_t n : {1, 1000, 4096 + 7, 100000, 1 << 20}) {
    for (double density : {0.001, 0.01, 1.0}) {
      const int64_t k = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(density * n)));
      for (int mode = 0; mode < 3; ++mode) {  // momentum SGD, Nesterov, no buffer
        for (bool masking : {true, false}) {
          for (bool mask_selected : {true, false}) {
            const StepParams<float> p{mode == 2 ? 0.0f : 0.9f, mode == 1, mode != 2, masking,
                                      mask_selected};
            ok = CheckOne(n, k, p, seed++, stream) && ok;
          }
        }
      }
    }
  }
  std::printf(ok ? "all correctness checks passed\n" : "SOME CHECKS FAILED\n");
  if (ok && !quick) {
    for (int64_t n : {int64_t{1} << 20, int64_t{25} << 20, int64_t{100} << 20}) {
      Time(n, 0.001, stream);
    }
  }
  CHECK_CUDA(cudaStreamDestroy(stream));
  return ok ? 0 : 1;
}
