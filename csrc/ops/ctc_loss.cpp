// ctc_nll: per-sequence CTC negative log-likelihood and (optionally) its gradient, computed in
// one pass; schema, argument checks, CPU and CUDA registrations. The reductions and the
// autograd wiring live in python/taskkernels/ops/ctc_loss.py.
#include <torch/csrc/stable/accelerator.h>

#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/ctc_loss.h"
#include "cpu/dispatch.h"
#include "ops/common.h"
#ifdef TASKKERNELS_WITH_CUDA
#include "kernels/ctc_loss/ctc_loss.h"
#endif

namespace taskkernels {
namespace {

namespace ts = torch::stable;
constexpr const char* kOp = "ctc_loss";

struct Dims {
  int64_t B, T, C, sB, sT, sC;
};

bool is_index(ScalarType t) { return t == ScalarType::Long || t == ScalarType::Int; }

// Checks that need no tensor values (so they hold on CUDA without a host synchronization).
Dims check_shapes(const Tensor& input, const Tensor& targets, const Tensor& input_lengths,
                  const Tensor& target_lengths, int64_t blank, bool batch_first) {
  const char* layout = batch_first ? "(B, T, C)" : "(T, B, C)";
  const char* name = batch_first ? "logits" : "log_probs";
  TK_CHECK(input.dim() == 3, kOp, name, " must be 3-D ", layout, ", got shape ", shape_str(input));
  TK_CHECK(is_floating(input.scalar_type()), kOp, name, " must be float16, bfloat16, float32 or float64, got ",
           dtype_name(input.scalar_type()));
  TK_CHECK(input.is_cpu() || input.is_cuda(), kOp, name, " must be on a CPU or CUDA device");
  const int b = batch_first ? 0 : 1, t = batch_first ? 1 : 0;
  const Dims d{input.size(b), input.size(t), input.size(2), input.stride(b), input.stride(t), input.stride(2)};
  TK_CHECK(d.C >= 1, kOp, name, " must have at least one class, got shape ", shape_str(input));
  TK_CHECK(blank >= 0 && blank < d.C, kOp, "blank must be in [0, C = ", d.C, "), got ", blank);
  const std::pair<const Tensor*, const char*> lengths[] = {{&input_lengths, "input_lengths"},
                                                           {&target_lengths, "target_lengths"}};
  for (const auto& [len, len_name] : lengths) {
    TK_CHECK(is_index(len->scalar_type()), kOp, len_name, " must be int64 or int32, got ",
             dtype_name(len->scalar_type()));
    TK_CHECK(len->dim() == 1 && len->size(0) == d.B, kOp, len_name, " must have shape (B,) = (", d.B,
             ",), got ", shape_str(*len));
    TK_CHECK(len->is_cpu() == input.is_cpu() && len->get_device_index() == input.get_device_index(), kOp,
             len_name, " must be on the device of ", name, " (", device_str(input), "), got ", device_str(*len));
  }
  TK_CHECK(is_index(targets.scalar_type()), kOp, "targets must be int64 or int32, got ",
           dtype_name(targets.scalar_type()));
  TK_CHECK(targets.dim() == 1 || (targets.dim() == 2 && targets.size(0) == d.B), kOp,
           "targets must be (B, S) padded with B = ", d.B, ", or 1-D concatenated, got shape ", shape_str(targets));
  TK_CHECK(targets.is_cpu() == input.is_cpu() && targets.get_device_index() == input.get_device_index(), kOp,
           "targets must be on the device of ", name, " (", device_str(input), "), got ", device_str(targets));
  return d;
}

std::vector<int64_t> to_int64(const Tensor& t) {
  const Tensor c = ts::contiguous(t);
  std::vector<int64_t> out(c.numel());
  if (c.scalar_type() == ScalarType::Long) {
    const auto* p = static_cast<const int64_t*>(c.const_data_ptr());
    out.assign(p, p + out.size());
  } else {
    const auto* p = static_cast<const int32_t*>(c.const_data_ptr());
    out.assign(p, p + out.size());
  }
  return out;
}

ScalarType out_dtype(ScalarType t) { return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float; }

std::tuple<Tensor, Tensor> ctc_nll_cpu(Tensor input, Tensor targets, Tensor input_lengths, Tensor target_lengths,
                                       int64_t blank, bool from_logits, bool batch_first, bool zero_infinity,
                                       bool need_grad, int64_t max_target_length) {
  const Dims d = check_shapes(input, targets, input_lengths, target_lengths, blank, batch_first);
  const std::vector<int64_t> il = to_int64(input_lengths), tl = to_int64(target_lengths);
  const std::vector<int64_t> all = to_int64(targets);
  const bool padded = targets.dim() == 2;
  const int64_t width = padded ? targets.size(1) : 0;
  std::vector<int64_t> offsets(d.B);
  int64_t next = 0;
  for (int64_t b = 0; b < d.B; ++b) {
    TK_CHECK(il[b] >= 0 && il[b] <= d.T, kOp, "input_lengths[", b, "] must be in [0, T = ", d.T, "], got ", il[b]);
    TK_CHECK(tl[b] >= 0, kOp, "target_lengths[", b, "] must be >= 0, got ", tl[b]);
    if (padded) {
      TK_CHECK(tl[b] <= width, kOp, "target_lengths[", b, "] = ", tl[b], " exceeds the padded targets' length ",
               width);
      offsets[b] = b * width;
    } else {
      TK_CHECK(next + tl[b] <= int64_t(all.size()), kOp, "target_lengths sum past the ", all.size(),
               " concatenated targets (at sequence ", b, ")");
      offsets[b] = next;
      next += tl[b];
    }
    for (int64_t k = 0; k < tl[b]; ++k) {
      const int64_t label = all[offsets[b] + k];
      TK_CHECK(label >= 0 && label < d.C && label != blank, kOp, "targets of sequence ", b, " at position ", k,
               " must be a class in [0, C = ", d.C, ") other than blank = ", blank, ", got ", label);
    }
  }
  const ScalarType o = out_dtype(input.scalar_type());
  Tensor nll = ts::new_empty(input, {d.B}, o);
  Tensor grad = ts::new_empty(input, need_grad ? std::vector<int64_t>{input.size(0), input.size(1), input.size(2)}
                                               : std::vector<int64_t>{0}, o);
  // grad is contiguous in the input's logical layout: (B, T, C) or (T, B, C).
  const int64_t gB = batch_first ? d.T * d.C : d.C, gT = batch_first ? d.C : d.B * d.C;
  const cpu::CtcParams p{from_logits ? cpu::CtcInput::kLogits : cpu::CtcInput::kLogProbs,
                         input.const_data_ptr(), d.sB, d.sT, d.sC, d.B, d.T, d.C,
                         il.data(), all.data(), offsets.data(), tl.data(), blank, zero_infinity,
                         nll.mutable_data_ptr(), need_grad ? grad.mutable_data_ptr() : nullptr, gB, gT, 1};
  cpu::dispatch_floating(input.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    using Out = std::conditional_t<std::is_same_v<In, double>, double, float>;
    cpu::ctc_loss<In, Out>(p);
  });
  return {nll, grad};
}

#ifdef TASKKERNELS_WITH_CUDA
std::tuple<Tensor, Tensor> ctc_nll_cuda(Tensor input, Tensor targets, Tensor input_lengths, Tensor target_lengths,
                                        int64_t blank, bool from_logits, bool batch_first, bool zero_infinity,
                                        bool need_grad, int64_t max_target_length) {
  const Dims d = check_shapes(input, targets, input_lengths, target_lengths, blank, batch_first);
  TK_CHECK(max_target_length >= 0, kOp, "max_target_length must be >= 0, got ", max_target_length);
  const ts::accelerator::DeviceGuard guard(input.get_device_index());
  const Tensor tg = ts::contiguous(targets), il = ts::contiguous(input_lengths), tl = ts::contiguous(target_lengths);
  const ScalarType o = out_dtype(input.scalar_type());
  Tensor nll = ts::new_empty(input, {d.B}, o);
  Tensor grad = ts::new_empty(input, need_grad ? std::vector<int64_t>{input.size(0), input.size(1), input.size(2)}
                                               : std::vector<int64_t>{0}, o);
  const int64_t gB = batch_first ? d.T * d.C : d.C, gT = batch_first ? d.C : d.B * d.C;
  cuda::CtcDType dt = cuda::CtcDType::kDouble;
  switch (input.scalar_type()) {
    case ScalarType::Half: dt = cuda::CtcDType::kHalf; break;
    case ScalarType::BFloat16: dt = cuda::CtcDType::kBFloat16; break;
    case ScalarType::Float: dt = cuda::CtcDType::kFloat; break;
    default: break;
  }
  const bool padded = tg.dim() == 2;
  cuda::CtcLossParams p{dt, from_logits, input.const_data_ptr(), d.sB, d.sT, d.sC, d.B, d.T, d.C,
                        il.const_data_ptr(), il.scalar_type() == ScalarType::Long,
                        tl.const_data_ptr(), tl.scalar_type() == ScalarType::Long,
                        tg.const_data_ptr(), tg.scalar_type() == ScalarType::Long, padded,
                        padded ? tg.size(1) : tg.numel(), max_target_length, blank, zero_infinity,
                        nll.mutable_data_ptr(), need_grad ? grad.mutable_data_ptr() : nullptr, gB, gT, 1, nullptr};
  const size_t bytes = cuda::ctc_loss_workspace(p);
  Tensor workspace = ts::new_empty(input, {int64_t(bytes)}, ScalarType::Byte);
  p.workspace = bytes ? workspace.mutable_data_ptr() : nullptr;
  auto stream = static_cast<cudaStream_t>(current_cuda_stream(input.get_device_index(), kOp));
  check_cuda(cuda::ctc_loss(p, stream), kOp, "the CUDA kernels");
  return {nll, grad};
}
#endif  // TASKKERNELS_WITH_CUDA

}  // namespace
}  // namespace taskkernels

STABLE_TORCH_LIBRARY_FRAGMENT(taskkernels, m) {
  m.def(
      "ctc_nll(Tensor input, Tensor targets, Tensor input_lengths, Tensor target_lengths, int blank, "
      "bool from_logits, bool batch_first, bool zero_infinity, bool need_grad, int max_target_length) "
      "-> (Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(taskkernels, CPU, m) {
  m.impl("ctc_nll", TORCH_BOX(&taskkernels::ctc_nll_cpu));
}

#ifdef TASKKERNELS_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(taskkernels, CUDA, m) {
  m.impl("ctc_nll", TORCH_BOX(&taskkernels::ctc_nll_cuda));
}
#endif
