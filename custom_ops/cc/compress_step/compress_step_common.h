// The element-wise half of DGC>CompressStep: momentum correction into the
// residual, and the masking of what was sent. Shared by the CPU kernel, the
// CUDA kernel and the standalone CUDA test; depends on neither TensorFlow
// nor CUDA.
//
// Every operation is rounded in T, in the order the pure-TensorFlow path
// (dgc_tf/compression.py, momentum_correction) evaluates it, so both paths
// give the same bits:
//   momentum SGD: u = m*u + g,   v = v + u
//   Nesterov:     u = m*(u + g), v = (v + u) + g
//   no momentum buffer (momentum factor 0): v = v + g
// m*u + g must not be contracted into one fused multiply-add (which rounds
// once, not twice): the CPU build has no FMA instructions enabled (TF's
// flags carry no -mfma), and the CUDA kernel rounds float operations
// explicitly (compress_step_gpu.cuh).
#ifndef DGC_TF_CUSTOM_OPS_COMPRESS_STEP_COMMON_H_
#define DGC_TF_CUSTOM_OPS_COMPRESS_STEP_COMMON_H_

#include <cstdint>

#if defined(__CUDACC__)
#define DGC_CS_HD __host__ __device__
#else
#define DGC_CS_HD
#endif

namespace dgc_compress {

// What one step does to an entry; a plain struct so that kernels can pass it
// by value.
template <typename T>
struct StepParams {
  T momentum;             // m, already rounded to T
  bool nesterov;
  bool has_momentum;      // false: no momentum buffer (m == 0), u == g
  bool momentum_masking;  // zero u where v was sent
  // Zero what was selected (MaskSent) in the step. False: the step only
  // accumulates and selects, and the caller masks later what it applied
  // (an exchange that applies other entries than this replica's selection).
  bool mask_selected = true;
};

// One rounding per operation. For float on a GPU the intrinsics also keep
// nvcc from contracting m*u + g into a fused multiply-add; half types round
// each operation through float in their own operators.
template <typename T>
inline DGC_CS_HD T Mul(T a, T b) { return a * b; }
template <typename T>
inline DGC_CS_HD T Add(T a, T b) { return a + b; }
inline DGC_CS_HD float Mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
inline DGC_CS_HD float Add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// Updates u[i] and v[i] with gradient g (g == 0 for rows a sparse gradient
// does not touch: m*u + 0 and m*(u + 0) round exactly like m*u).
template <typename T>
inline DGC_CS_HD void Accumulate(const StepParams<T>& p, T g, T* u, T* v) {
  if (!p.has_momentum) {
    *v = Add(*v, g);
  } else if (p.nesterov) {
    const T un = Mul(p.momentum, Add(*u, g));
    *u = un;
    *v = Add(Add(*v, un), g);
  } else {
    const T un = Add(Mul(p.momentum, *u), g);
    *u = un;
    *v = Add(*v, un);
  }
}

// Accumulates the flat range [0, len) of u and v. `g` is the matching
// gradient range, or nullptr for an all-zero gradient. `u` is unused when
// there is no momentum buffer. Written as separate loops per case so that
// each one vectorises.
template <typename T>
inline void AccumulateRange(const StepParams<T>& p, const T* g, T* u, T* v,
                            int64_t len) {
  const T m = p.momentum;
  if (!p.has_momentum) {
    if (g == nullptr) return;  // v + 0 == v
    for (int64_t i = 0; i < len; ++i) v[i] = v[i] + g[i];
  } else if (p.nesterov) {
    if (g == nullptr) {
      for (int64_t i = 0; i < len; ++i) {
        const T un = m * (u[i] + T(0));
        u[i] = un;
        v[i] = (v[i] + un) + T(0);
      }
    } else {
      for (int64_t i = 0; i < len; ++i) {
        const T un = m * (u[i] + g[i]);
        u[i] = un;
        v[i] = (v[i] + un) + g[i];
      }
    }
  } else {
    if (g == nullptr) {
      for (int64_t i = 0; i < len; ++i) {
        const T un = m * u[i] + T(0);
        u[i] = un;
        v[i] = v[i] + un;
      }
    } else {
      for (int64_t i = 0; i < len; ++i) {
        const T un = m * u[i] + g[i];
        u[i] = un;
        v[i] = v[i] + un;
      }
    }
  }
}

// Zeroes what was sent: v at every selected index, u too with momentum
// factor masking.
template <typename T, typename Index>
inline DGC_CS_HD void MaskSent(const StepParams<T>& p, Index index, T* u,
                               T* v) {
  v[index] = T(0);
  if (p.has_momentum && p.momentum_masking) u[index] = T(0);
}

}  // namespace dgc_compress

#endif  // DGC_TF_CUSTOM_OPS_COMPRESS_STEP_COMMON_H_
