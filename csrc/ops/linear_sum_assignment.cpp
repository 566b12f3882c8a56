// batched_linear_sum_assignment: schema, argument checks, CPU and CUDA registrations.
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/ops.h>

#include <optional>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/linear_sum_assignment.h"
#include "ops/common.h"
#ifdef TASKKERNELS_WITH_CUDA
#include "kernels/linear_sum_assignment/linear_sum_assignment.h"
#endif

namespace taskkernels {
namespace {

namespace ts = torch::stable;
constexpr const char* kOp = "batched_linear_sum_assignment";

// Checks that need no tensor values (so they hold on CUDA without a host synchronization).
void check_args(const Tensor& cost, const std::optional<Tensor>& num_targets) {
  TK_CHECK(cost.dim() == 3, kOp, "cost must be 3-D (B, N, M), got shape ", shape_str(cost));
  TK_CHECK(is_floating(cost.scalar_type()), kOp, "cost must be a floating dtype, got ",
           dtype_name(cost.scalar_type()));
  if (num_targets.has_value()) {
    const Tensor& t = *num_targets;
    TK_CHECK(t.scalar_type() == ScalarType::Long || t.scalar_type() == ScalarType::Int, kOp,
             "num_targets must be int64 or int32, got ", dtype_name(t.scalar_type()));
    TK_CHECK(t.dim() == 1 && t.size(0) == cost.size(0), kOp, "num_targets must have shape (B,) = (",
             cost.size(0), ",), got ", shape_str(t));
    TK_CHECK(t.is_cpu() == cost.is_cpu() && t.get_device_index() == cost.get_device_index(), kOp,
             "num_targets must be on the device of cost (", device_str(cost), "), got ", device_str(t));
  }
}

Tensor batched_lsa_cpu(Tensor cost, std::optional<Tensor> num_targets, bool maximize) {
  check_args(cost, num_targets);
  const int64_t B = cost.size(0), N = cost.size(1), M = cost.size(2);
  std::vector<int64_t> counts(B, M);
  if (num_targets.has_value()) {
    const Tensor& t = *num_targets;
    const Tensor tc = ts::contiguous(t);
    for (int64_t b = 0; b < B; ++b) {
      counts[b] = t.scalar_type() == ScalarType::Long ? static_cast<const int64_t*>(tc.const_data_ptr())[b]
                                                       : static_cast<const int32_t*>(tc.const_data_ptr())[b];
      TK_CHECK(counts[b] >= 0 && counts[b] <= M, kOp, "num_targets[", b, "] must be in [0, M = ", M,
               "], got ", counts[b]);
    }
  }
  Tensor out = ts::new_empty(cost, {B, N}, ScalarType::Long);
  int64_t* o = static_cast<int64_t*>(out.mutable_data_ptr());
  const int64_t s0 = cost.stride(0), s1 = cost.stride(1), s2 = cost.stride(2);
  std::vector<cpu::LsaStatus> status(B, cpu::LsaStatus::kOk);
  cpu::dispatch_floating(cost.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* c = static_cast<const T*>(cost.const_data_ptr());
    // Exceptions must not cross torch's parallel_for: statuses are collected and raised after.
    ts::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> dense;
      for (int64_t b = begin; b < end; ++b) {
        const int64_t m = counts[b];
        dense.resize(N * m);
        for (int64_t i = 0; i < N; ++i)
          for (int64_t j = 0; j < m; ++j) dense[i * m + j] = static_cast<double>(c[b * s0 + i * s1 + j * s2]);
        status[b] = cpu::linear_sum_assignment(dense.data(), N, m, m, 1, maximize, o + b * N);
      }
    });
  });
  for (int64_t b = 0; b < B; ++b) {
    TK_CHECK(status[b] != cpu::LsaStatus::kInvalid, kOp, "cost[", b, "] contains invalid entries (NaN, or ",
             maximize ? "+inf when maximizing)" : "-inf)");
    TK_CHECK(status[b] != cpu::LsaStatus::kInfeasible, kOp, "cost[", b,
             "] is infeasible: no complete assignment avoids its forbidden (inf) entries");
  }
  return out;
}

#ifdef TASKKERNELS_WITH_CUDA
// No host synchronization: num_targets is read by the kernel, and a problem that cannot be solved
// is reported in its row of the result (the codes of kernels/linear_sum_assignment/*.h, which
// python/taskkernels/ops/linear_sum_assignment.py turns into the CPU's errors on request).
Tensor batched_lsa_cuda(Tensor cost, std::optional<Tensor> num_targets, bool maximize) {
  check_args(cost, num_targets);
  TK_CHECK(cost.is_cuda(), kOp, "cost must be on a CPU or CUDA device");
  const int64_t B = cost.size(0), N = cost.size(1), M = cost.size(2);
  TK_CHECK(N < (int64_t(1) << 30) && M < (int64_t(1) << 30), kOp,
           "cost's N and M must be below 2^30 on CUDA, got shape ", shape_str(cost));
  const ts::accelerator::DeviceGuard guard(cost.get_device_index());
  Tensor out = ts::new_empty(cost, {B, N}, ScalarType::Long);
  std::optional<Tensor> counts;
  if (num_targets.has_value()) counts = ts::contiguous(*num_targets);
  cuda::LsaDType dt = cuda::LsaDType::kDouble;
  switch (cost.scalar_type()) {
    case ScalarType::Half: dt = cuda::LsaDType::kHalf; break;
    case ScalarType::BFloat16: dt = cuda::LsaDType::kBFloat16; break;
    case ScalarType::Float: dt = cuda::LsaDType::kFloat; break;
    default: break;
  }
  cuda::LsaParams p{dt, cost.const_data_ptr(), B, N, M, cost.stride(0), cost.stride(1), cost.stride(2),
                    counts.has_value() ? counts->const_data_ptr() : nullptr,
                    counts.has_value() && counts->scalar_type() == ScalarType::Long, maximize,
                    static_cast<int64_t*>(out.mutable_data_ptr()), nullptr};
  const size_t bytes = cuda::lsa_workspace(p);
  Tensor workspace = ts::new_empty(cost, {int64_t(bytes)}, ScalarType::Byte);
  p.workspace = bytes ? workspace.mutable_data_ptr() : nullptr;
  auto stream = static_cast<cudaStream_t>(current_cuda_stream(cost.get_device_index(), kOp));
  check_cuda(cuda::batched_linear_sum_assignment(p, stream), kOp, "the CUDA kernel");
  return out;
}
#endif  // TASKKERNELS_WITH_CUDA

}  // namespace
}  // namespace taskkernels

STABLE_TORCH_LIBRARY_FRAGMENT(taskkernels, m) {
  m.def("batched_linear_sum_assignment(Tensor cost, Tensor? num_targets=None, bool maximize=False) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(taskkernels, CPU, m) {
  m.impl("batched_linear_sum_assignment", TORCH_BOX(&taskkernels::batched_lsa_cpu));
}

#ifdef TASKKERNELS_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(taskkernels, CUDA, m) {
  m.impl("batched_linear_sum_assignment", TORCH_BOX(&taskkernels::batched_lsa_cuda));
}
#endif
