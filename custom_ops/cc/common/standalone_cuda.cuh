// What the programs that run the CUDA code without TensorFlow share: the
// standalone tests (sampled_topk_standalone_test.cu,
// compress_step_standalone_test.cu) and the torch harness's C APIs
// (custom_ops/gpu_harness/*_capi.cu). They stand in for what
// gpu_tf_adapter.cu.h takes from an OpKernelContext: scratch memory and grid
// sizes.
#ifndef DGC_TF_CUSTOM_OPS_COMMON_STANDALONE_CUDA_CUH_
#define DGC_TF_CUSTOM_OPS_COMMON_STANDALONE_CUDA_CUH_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "sampled_topk/sampled_topk_gpu.cuh"

// Exits the program with the CUDA error (these are test programs).
#define CHECK_CUDA(expr)                                                   \
  do {                                                                     \
    cudaError_t e_ = (expr);                                               \
    if (e_ != cudaSuccess) {                                               \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,   \
                   cudaGetErrorString(e_));                                \
      std::exit(2);                                                        \
    }                                                                      \
  } while (0)

// Scratch from the stream-ordered pool, released when the call returns.
class PoolScratch : public dgc_topk::gpu::ScratchAllocator {
 public:
  explicit PoolScratch(cudaStream_t stream) : stream_(stream) {}
  ~PoolScratch() override {
    for (void* p : blocks_) cudaFreeAsync(p, stream_);
  }
  void* Allocate(size_t bytes) override {
    void* p = nullptr;
    if (cudaMallocAsync(&p, bytes, stream_) != cudaSuccess) return nullptr;
    blocks_.push_back(p);
    return p;
  }

 private:
  cudaStream_t stream_;
  std::vector<void*> blocks_;
};

// Same heuristic as TensorFlow's GetGpuLaunchConfig(work, device).
inline dgc_topk::gpu::LaunchPolicy DeviceLaunchPolicy() {
  int dev = 0;
  CHECK_CUDA(cudaGetDevice(&dev));
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, dev));
  const int sms = prop.multiProcessorCount;
  const int per_sm = prop.maxThreadsPerMultiProcessor;
  const int threads = std::min(1024, prop.maxThreadsPerBlock);
  return [=](int64_t work) {
    const int64_t physical = std::min<int64_t>(int64_t{sms} * per_sm, work);
    const int64_t blocks =
        std::min<int64_t>((physical + threads - 1) / threads, sms);
    return dgc_topk::gpu::LaunchConfig{static_cast<int>(blocks), threads};
  };
}

#endif  // DGC_TF_CUSTOM_OPS_COMMON_STANDALONE_CUDA_CUH_
