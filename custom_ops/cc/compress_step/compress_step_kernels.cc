// CPU kernel of DGC>CompressStep / DGC>SparseCompressStep, and the kernel
// registrations.
//
// Passes over memory, for n elements: one accumulation pass that reads the
// gradient, reads and writes u and v (split over TensorFlow's CPU worker
// pool); then DGC>SampledTopK's selection on v (a strided sample, one
// candidate pass: the second and last full read of v); then k scattered
// writes that zero what was sent. A row-sparse gradient is first summed per
// distinct row (nnz rows, not the table) and each row of u and v gets its
// summed row or zero in the same single pass.
#define EIGEN_USE_THREADS

#include "compress_step/compress_step_kernels.h"

#include <algorithm>
#include <vector>

#include "common/kernel_util.h"
#include "common/variable_util.h"
#include "compress_step/compress_step_common.h"
#include "sampled_topk/sampled_topk_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/threadpool.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tensorflow {

using CPUDevice = Eigen::ThreadPoolDevice;
using GPUDevice = Eigen::GpuDevice;

namespace {

// Row-sparse gradient: the sum of each distinct row's gradient rows (in
// order of appearance, as unsorted_segment_sum does), and per row r of the
// variable which summed row is its (-1: row r has no gradient).
template <typename T>
struct SummedRows {
  Tensor tensor;
  const T* values = nullptr;
  std::vector<int64_t> slot;
};

template <typename T>
absl::Status SumSparseRows(OpKernelContext* ctx, const functor::StepGradient<T>& grad,
                           int64_t num_rows, int64_t cols, SummedRows<T>* summed) {
  summed->slot.assign(num_rows, -1);
  int64_t distinct = 0;
  for (int64_t j = 0; j < grad.nnz; ++j) {
    if (summed->slot[grad.rows[j]] < 0) summed->slot[grad.rows[j]] = distinct++;
  }
  Tensor& tensor = summed->tensor;
  TF_RETURN_IF_ERROR(
      ctx->allocate_temp(DataTypeToEnum<T>::v(), TensorShape({distinct * cols}), &tensor));
  T* out = tensor.flat<T>().data();
  std::fill(out, out + distinct * cols, T(0));
  for (int64_t j = 0; j < grad.nnz; ++j) {
    T* row = out + summed->slot[grad.rows[j]] * cols;
    const T* g = grad.values + j * cols;
    for (int64_t c = 0; c < cols; ++c) row[c] = row[c] + g[c];
  }
  summed->values = out;
  return absl::OkStatus();
}

// The accumulation pass over u and v, element ranges on the worker pool.
// `summed` is null for a dense gradient.
template <typename T>
void AccumulateOnPool(OpKernelContext* ctx, const dgc_compress::StepParams<T>& params,
                      const functor::StepGradient<T>& grad, const SummedRows<T>* summed,
                      int64_t n, int64_t cols, T* u, T* v) {
  auto accumulate = [&](int64_t begin, int64_t end) {
    if (summed == nullptr) {
      dgc_compress::AccumulateRange(params, grad.values + begin, u + begin, v + begin,
                                    end - begin);
      return;
    }
    for (int64_t start = begin; start < end;) {  // row by row
      const int64_t r = start / cols;
      const int64_t stop = std::min(end, (r + 1) * cols);
      const int64_t slot = summed->slot[r];
      const T* g = slot < 0 ? nullptr : summed->values + slot * cols + (start - r * cols);
      dgc_compress::AccumulateRange(params, g, u + start, v + start, stop - start);
      start = stop;
    }
  };
  thread::ThreadPool* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  // Per element: ~3 loads, 2 stores.
  const int64_t cost = 5 * sizeof(T);
  if (pool != nullptr) {
    pool->ParallelFor(n, cost, accumulate);
  } else {
    accumulate(0, n);
  }
}

}  // namespace

namespace functor {

template <typename T, typename Tindices>
absl::Status CompressStepFunctor<CPUDevice, T, Tindices>::operator()(
    OpKernelContext* ctx, const dgc_compress::StepParams<T>& params,
    const StepGradient<T>& grad, int64_t num_rows, int64_t cols, int64_t k,
    float sample_ratio, int64_t seed, T* u, T* v, T* values,
    Tindices* indices) {
  const int64_t n = num_rows * cols;
  SummedRows<T> summed;
  if (grad.rows != nullptr) {
    TF_RETURN_IF_ERROR(SumSparseRows(ctx, grad, num_rows, cols, &summed));
  }
  AccumulateOnPool(ctx, params, grad, grad.rows != nullptr ? &summed : nullptr, n, cols, u,
                   v);
  // Selection on the new residual, then masking of what was sent.
  TF_RETURN_IF_ERROR((SampledTopKFunctor<CPUDevice, T, Tindices>()(
      ctx, v, n, k, sample_ratio, seed, values, indices)));
  if (params.mask_selected) {
    for (int64_t j = 0; j < k; ++j) dgc_compress::MaskSent(params, indices[j], u, v);
  }
  return absl::OkStatus();
}

}  // namespace functor

namespace {

template <typename Device, typename T, typename Tk, typename Tindices, bool kSparse,
          typename Trows = int32>
class CompressStepOp : public OpKernel {
 public:
  explicit CompressStepOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    float momentum;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("momentum_factor", &momentum));
    OP_REQUIRES(ctx, momentum >= 0.0f && momentum < 1.0f,
                errors::InvalidArgument(
                    "compress_step: `momentum_factor` must be in [0, 1), got ", momentum));
    params_.momentum = static_cast<T>(momentum);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("nesterov", &params_.nesterov));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("has_momentum", &params_.has_momentum));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("momentum_masking", &params_.momentum_masking));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("mask_selected", &params_.mask_selected));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("sample_ratio", &sample_ratio_));
    OP_REQUIRES(ctx, sample_ratio_ > 0.0f && sample_ratio_ <= 1.0f,
                errors::InvalidArgument(
                    "compress_step: `sample_ratio` must be in (0, 1], got ", sample_ratio_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("seed", &seed_));
  }

  void Compute(OpKernelContext* ctx) override {
    int64_t k;
    OP_REQUIRES_OK(ctx, dgc_kernels::ReadK<Tk>(kOp, ctx->input(kSparse ? 4 : 3), &k));
    core::RefCountPtr<Var> residual;
    core::RefCountPtr<Var> momentum;  // null without a momentum buffer
    OP_REQUIRES_OK(ctx, LookUpState(ctx, &residual, &momentum));
    // Two locks, always in address order (no deadlock with another step
    // locking the same pair).
    Var* first = residual.get();
    Var* second = momentum.get();
    if (second != nullptr && second < first) std::swap(first, second);
    mutex unused;  // stands in for the second lock without a momentum buffer
    mutex_lock lock_first(*first->mu());
    mutex_lock lock_second(second != nullptr ? *second->mu() : unused);

    OP_REQUIRES_OK(ctx, CheckState(residual.get(), momentum.get(), k));
    const TensorShape shape = residual->tensor()->shape();
    functor::StepGradient<T> grad{nullptr, nullptr, 0};
    int64_t num_rows = 1;
    std::vector<int64_t> rows;
    OP_REQUIRES_OK(ctx, ReadGradient(ctx, shape, &grad, &num_rows, &rows));

    OP_REQUIRES_OK(ctx, dgc_kernels::PrepareToWrite<Device>(ctx, residual.get()));
    if (momentum) OP_REQUIRES_OK(ctx, dgc_kernels::PrepareToWrite<Device>(ctx, momentum.get()));
    T* v_data = residual->tensor()->flat<T>().data();
    T* u_data = momentum ? momentum->tensor()->flat<T>().data() : nullptr;

    Tensor* values = nullptr;
    Tensor* indices = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({k}), &values));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({k}), &indices));
    OP_REQUIRES_OK(ctx, (functor::CompressStepFunctor<Device, T, Tindices>()(
                            ctx, params_, grad, num_rows, shape.num_elements() / num_rows, k,
                            sample_ratio_, seed_, u_data, v_data, values->flat<T>().data(),
                            indices->flat<Tindices>().data())));
  }

 private:
  static constexpr char kOp[] = "compress_step";

  // The residual variable and, with a momentum buffer, the momentum variable.
  absl::Status LookUpState(OpKernelContext* ctx, core::RefCountPtr<Var>* residual,
                           core::RefCountPtr<Var>* momentum) const {
    TF_RETURN_IF_ERROR(LookupResource(ctx, HandleFromInput(ctx, 1), residual));
    if (!params_.has_momentum) return absl::OkStatus();
    TF_RETURN_IF_ERROR(LookupResource(ctx, HandleFromInput(ctx, 0), momentum));
    if (momentum->get() == residual->get()) {
      return errors::InvalidArgument(
          "compress_step: `momentum` and `residual` are the same variable.");
    }
    return absl::OkStatus();
  }

  // The variables (locked) are initialized, of dtype T and one shape, and k
  // entries of them can be selected into Tindices indices.
  static absl::Status CheckState(Var* residual, Var* momentum, int64_t k) {
    const Tensor* v = residual->tensor();
    if (!v->IsInitialized()) {
      return errors::FailedPrecondition("compress_step: `residual` is not initialized.");
    }
    if (v->dtype() != DataTypeToEnum<T>::v()) {
      return errors::InvalidArgument("compress_step: `residual` has dtype ",
                                     DataTypeString(v->dtype()), ", the gradient ",
                                     DataTypeString(DataTypeToEnum<T>::v()), ".");
    }
    if (momentum != nullptr) {
      const Tensor* u = momentum->tensor();
      if (!u->IsInitialized()) {
        return errors::FailedPrecondition("compress_step: `momentum` is not initialized.");
      }
      if (u->dtype() != v->dtype() || u->shape() != v->shape()) {
        return errors::InvalidArgument(
            "compress_step: `momentum` (", DataTypeString(u->dtype()), " ",
            u->shape().DebugString(), ") must match `residual` (", DataTypeString(v->dtype()),
            " ", v->shape().DebugString(), ").");
      }
    }
    return dgc_kernels::CheckSelection<Tindices>(kOp, "the variable", v->shape(), k);
  }

  // This step's gradient for a variable of `shape`: dense (input 2), or
  // row-sparse (values input 2, rows input 3, checked into `rows`).
  absl::Status ReadGradient(OpKernelContext* ctx, const TensorShape& shape,
                            functor::StepGradient<T>* grad, int64_t* num_rows,
                            std::vector<int64_t>* rows) const {
    const Tensor& g = ctx->input(2);
    if (!kSparse) {
      if (g.shape() != shape) {
        return errors::InvalidArgument("compress_step: `grad` has shape ",
                                       g.shape().DebugString(), ", the variable ",
                                       shape.DebugString(), ".");
      }
      *grad = {g.flat<T>().data(), nullptr, 0};
      return absl::OkStatus();
    }
    if (shape.dims() < 1) {
      return errors::InvalidArgument(
          "compress_step: a sparse gradient needs a variable of rank >= 1.");
    }
    *num_rows = shape.dim_size(0);
    const Tensor& r = ctx->input(3);
    TensorShape want({r.NumElements()});
    for (int d = 1; d < shape.dims(); ++d) want.AddDim(shape.dim_size(d));
    if (g.shape() != want) {
      return errors::InvalidArgument("compress_step: `grad_values` has shape ",
                                     g.shape().DebugString(), ", expected ",
                                     want.DebugString(), " for ", r.NumElements(),
                                     " rows of a ", shape.DebugString(), " variable.");
    }
    auto r_flat = r.flat<Trows>();
    rows->resize(r.NumElements());
    for (int64_t j = 0; j < r.NumElements(); ++j) {
      const int64_t row = static_cast<int64_t>(r_flat(j));
      if (row < 0 || row >= *num_rows) {
        return errors::InvalidArgument("compress_step: `grad_rows[", j, "]` = ", row,
                                       " is not in [0, ", *num_rows, ").");
      }
      (*rows)[j] = row;
    }
    *grad = {g.flat<T>().data(), rows->data(), static_cast<int64_t>(rows->size())};
    return absl::OkStatus();
  }

  dgc_compress::StepParams<T> params_;
  float sample_ratio_;
  int64_t seed_;
};

}  // namespace

#define REGISTER_CPU_DENSE(T, Tk, Tindices)                                               \
  REGISTER_KERNEL_BUILDER(Name("DGC>CompressStep")                                        \
                              .Device(DEVICE_CPU)                                         \
                              .TypeConstraint<T>("T")                                     \
                              .TypeConstraint<Tk>("Tk")                                   \
                              .TypeConstraint<Tindices>("Tindices"),                      \
                          CompressStepOp<CPUDevice, T, Tk, Tindices, false>)
#define REGISTER_CPU_SPARSE(T, Tk, Tindices, Trows)                                       \
  REGISTER_KERNEL_BUILDER(Name("DGC>SparseCompressStep")                                  \
                              .Device(DEVICE_CPU)                                         \
                              .TypeConstraint<T>("T")                                     \
                              .TypeConstraint<Tk>("Tk")                                   \
                              .TypeConstraint<Tindices>("Tindices")                       \
                              .TypeConstraint<Trows>("Trows"),                            \
                          CompressStepOp<CPUDevice, T, Tk, Tindices, true, Trows>)
#define REGISTER_CPU(T, Tk, Tindices)          \
  REGISTER_CPU_DENSE(T, Tk, Tindices);         \
  REGISTER_CPU_SPARSE(T, Tk, Tindices, int32); \
  REGISTER_CPU_SPARSE(T, Tk, Tindices, int64_t)
#define REGISTER_CPU_ALL(T) DGC_FOR_EACH_K_AND_INDEX_TYPE(REGISTER_CPU, T)
DGC_FOR_EACH_VALUE_TYPE(REGISTER_CPU_ALL);

#if GOOGLE_CUDA
#define REGISTER_GPU(T, Tk, Tindices)                                   \
  REGISTER_KERNEL_BUILDER(Name("DGC>CompressStep")                      \
                              .Device(DEVICE_GPU)                       \
                              .HostMemory("k")                          \
                              .TypeConstraint<T>("T")                   \
                              .TypeConstraint<Tk>("Tk")                 \
                              .TypeConstraint<Tindices>("Tindices"),    \
                          CompressStepOp<GPUDevice, T, Tk, Tindices, false>)
#define REGISTER_GPU_ALL(T) DGC_FOR_EACH_K_AND_INDEX_TYPE(REGISTER_GPU, T)
DGC_FOR_EACH_VALUE_TYPE(REGISTER_GPU_ALL);
#endif  // GOOGLE_CUDA

}  // namespace tensorflow
