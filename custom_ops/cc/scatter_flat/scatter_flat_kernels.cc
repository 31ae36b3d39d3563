// CPU kernel of DGC>ScatterFlat. No GPU kernel: there dgc_tf uses
// TensorFlow's scatter kernels (dgc_tf/ops/scatter.py).
#include "common/kernel_util.h"
#include "common/variable_util.h"
#include "scatter_flat/scatter_flat_common.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace tensorflow {

using CPUDevice = Eigen::ThreadPoolDevice;

namespace {

template <typename T, typename Tindices>
class ScatterFlatOp : public OpKernel {
 public:
  explicit ScatterFlatOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("subtract", &subtract_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& indices = ctx->input(1);
    const Tensor& updates = ctx->input(2);
    OP_REQUIRES(ctx,
                TensorShapeUtils::IsVector(indices.shape()) &&
                    updates.shape() == indices.shape(),
                errors::InvalidArgument(
                    "scatter_flat: `indices` and `updates` must be vectors of one length, got ",
                    indices.shape().DebugString(), " and ", updates.shape().DebugString(), "."));
    core::RefCountPtr<Var> var;
    OP_REQUIRES_OK(ctx, LookupResource(ctx, HandleFromInput(ctx, 0), &var));
    mutex_lock lock(*var->mu());
    const Tensor* t = var->tensor();
    OP_REQUIRES(ctx, t->IsInitialized(),
                errors::FailedPrecondition("scatter_flat: the variable is not initialized."));
    OP_REQUIRES(ctx, t->dtype() == DataTypeToEnum<T>::v(),
                errors::InvalidArgument("scatter_flat: the variable has dtype ",
                                        DataTypeString(t->dtype()), ", `updates` ",
                                        DataTypeString(DataTypeToEnum<T>::v()), "."));
    const int64_t count = indices.NumElements();
    const Tindices* idx = indices.flat<Tindices>().data();
    const int64_t bad = dgc_scatter::FirstOutOfRange(idx, count, t->NumElements());
    OP_REQUIRES(ctx, bad < 0,
                errors::InvalidArgument("scatter_flat: `indices[", bad, "]` = ",
                                        static_cast<int64_t>(bad < 0 ? 0 : idx[bad]),
                                        " is not in [0, ", t->NumElements(), ")."));
    if (count == 0) return;
    OP_REQUIRES_OK(ctx, dgc_kernels::PrepareToWrite<CPUDevice>(ctx, var.get()));
    dgc_scatter::ScatterFlat(var->tensor()->flat<T>().data(), idx, updates.flat<T>().data(),
                             count, subtract_);
  }

 private:
  bool subtract_;
};

}  // namespace

#define REGISTER_CPU(T, Tindices)                                    \
  REGISTER_KERNEL_BUILDER(Name("DGC>ScatterFlat")                    \
                              .Device(DEVICE_CPU)                    \
                              .TypeConstraint<T>("T")                \
                              .TypeConstraint<Tindices>("Tindices"), \
                          ScatterFlatOp<T, Tindices>)
DGC_FOR_EACH_VALUE_AND_INDEX_TYPE(REGISTER_CPU);

}  // namespace tensorflow
