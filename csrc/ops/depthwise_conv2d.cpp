// depthwise_conv2d and its two backward ops, and the fused ConvNeXt front (depthwise_conv2d +
// LayerNorm over channels) with its backward: schemas, argument checks, CPU and CUDA
// registrations. Layout: channels_last inputs run the channels-last kernels and give
// channels_last outputs; anything else runs the NCHW kernels (any strides) and gives NCHW.
#include <torch/csrc/stable/accelerator.h>

#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu/depthwise_conv2d.h"
#include "ops/common.h"
#ifdef TASKKERNELS_WITH_CUDA
#include "kernels/depthwise_conv2d/depthwise_conv2d.h"
#endif

namespace taskkernels {
namespace {

namespace ts = torch::stable;
constexpr const char* kOp = "depthwise_conv2d";
constexpr int64_t kMaxK = 31;

DwDType dw_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::Half: return DwDType::kHalf;
    case ScalarType::BFloat16: return DwDType::kBFloat16;
    case ScalarType::Float: return DwDType::kFloat;
    default: return DwDType::kDouble;
  }
}

// Dense channels-last strides (size-1 dimensions may have any stride), and not also dense NCHW.
bool is_channels_last(const Tensor& x) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (C == 1 || H * W == 1 || x.is_contiguous()) return false;
  return x.stride(1) == 1 && (W == 1 || x.stride(3) == C) && (H == 1 || x.stride(2) == W * C) &&
         (B == 1 || x.stride(0) == H * W * C);
}

// (B, C, H, W) view over a new channels-last buffer.
Tensor new_channels_last(const Tensor& like, int64_t B, int64_t C, int64_t H, int64_t W) {
  return ts::permute(ts::new_empty(like, {B, H, W, C}), {0, 3, 1, 2});
}

Tensor as_channels_last(const Tensor& t) {
  return ts::permute(ts::contiguous(ts::permute(t, {0, 2, 3, 1})), {0, 3, 1, 2});
}

void check_x(const Tensor& x, const char* name) {
  TK_CHECK(x.dim() == 4, kOp, name, " must be 4-D (B, C, H, W), got shape ", shape_str(x));
  TK_CHECK(is_floating(x.scalar_type()), kOp, name, " must be float16, bfloat16, float32 or float64, got ",
           dtype_name(x.scalar_type()));
  TK_CHECK(x.is_cpu() || x.is_cuda(), kOp, name, " must be on a CPU or CUDA device");
}

int64_t check_weight(const Tensor& weight, const Tensor& x, int64_t C) {
  check_same(kOp, weight, "weight", x, "x");
  TK_CHECK(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 && weight.size(2) == weight.size(3), kOp,
           "weight must be (C, 1, K, K) with C = ", C, ", got shape ", shape_str(weight));
  const int64_t K = weight.size(2);
  TK_CHECK(K >= 1 && K <= kMaxK, kOp, "the kernel size K must be in [1, ", kMaxK, "], got weight of shape ",
           shape_str(weight));
  return K;
}

void check_padding(int64_t padding, int64_t K) {
  TK_CHECK(padding >= 0 && padding < K, kOp, "padding must be in [0, K - 1 = ", K - 1, "], got ", padding);
}

DwConvParams params(const Tensor& x, const void* w, const void* bias, void* y, int64_t K, int64_t pad,
                    bool channels_last, bool flip) {
  const int64_t B = x.size(0), C = x.size(1), Hi = x.size(2), Wi = x.size(3);
  return {dw_dtype(x.scalar_type()), B, C, Hi, Wi, Hi + 2 * pad - K + 1, Wi + 2 * pad - K + 1, K, pad,
          x.const_data_ptr(), x.stride(0), x.stride(1), x.stride(2), x.stride(3), w, bias, y, channels_last, flip};
}

void run_forward(const DwConvParams& p, const Tensor& x) {
  if (x.is_cpu()) return cpu::depthwise_conv2d_forward(p);
#ifdef TASKKERNELS_WITH_CUDA
  const ts::accelerator::DeviceGuard guard(x.get_device_index());
  auto stream = static_cast<cudaStream_t>(current_cuda_stream(x.get_device_index(), kOp));
  check_cuda(cuda::depthwise_conv2d_forward(p, stream), kOp, "the CUDA forward kernel");
#endif
}

// The forward's checks; returns K.
int64_t check_forward(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias, int64_t padding) {
  check_x(x, "x");
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t K = check_weight(weight, x, C);
  check_padding(padding, K);
  if (bias.has_value()) {
    check_same(kOp, *bias, "bias", x, "x");
    TK_CHECK(bias->dim() == 1 && bias->size(0) == C, kOp, "bias must have shape (C,) = (", C, ",), got ",
             shape_str(*bias));
  }
  TK_CHECK(H + 2 * padding - K + 1 >= 1 && W + 2 * padding - K + 1 >= 1, kOp, "x of shape ", shape_str(x),
           " is smaller than the kernel (K = ", K, ", padding = ", padding, ")");
  return K;
}

// Runs the convolution into y (allocated by the caller in the layout `channels_last` says).
void convolve(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias, int64_t K, int64_t padding,
              bool channels_last, void* y) {
  const Tensor w = ts::contiguous(weight);
  const std::optional<Tensor> b = bias.has_value() ? std::optional<Tensor>(ts::contiguous(*bias)) : std::nullopt;
  run_forward(params(x, w.const_data_ptr(), b ? b->const_data_ptr() : nullptr, y, K, padding, channels_last, false),
              x);
}

// y = conv(x, weight) + bias, 'same'-sized for padding = (K - 1) / 2.
Tensor depthwise_conv2d(Tensor x, Tensor weight, std::optional<Tensor> bias, int64_t padding) {
  const int64_t K = check_forward(x, weight, bias, padding);
  const int64_t B = x.size(0), C = x.size(1), Ho = x.size(2) + 2 * padding - K + 1, Wo = x.size(3) + 2 * padding - K + 1;
  const bool cl = is_channels_last(x);
  Tensor y = cl ? new_channels_last(x, B, C, Ho, Wo) : ts::new_empty(x, {B, C, Ho, Wo});
  if (y.numel() > 0) convolve(x, weight, bias, K, padding, cl, y.mutable_data_ptr());
  return y;
}

// grad_x: the convolution of grad_out with the rotated filter, padding K - 1 - padding; in
// channels_last when x was.
Tensor depthwise_conv2d_backward_input(Tensor grad_out, Tensor weight, int64_t padding, bool channels_last) {
  check_x(grad_out, "grad_out");
  const int64_t B = grad_out.size(0), C = grad_out.size(1);
  const int64_t K = check_weight(weight, grad_out, C);
  check_padding(padding, K);
  const int64_t pad = K - 1 - padding;
  const Tensor go = channels_last && !is_channels_last(grad_out) && C > 1 ? as_channels_last(grad_out) : grad_out;
  const bool cl = channels_last && is_channels_last(go);
  const int64_t Hi = go.size(2) + 2 * pad - K + 1, Wi = go.size(3) + 2 * pad - K + 1;
  Tensor gx = cl ? new_channels_last(go, B, C, Hi, Wi) : ts::new_empty(go, {B, C, Hi, Wi});
  if (gx.numel() == 0) return gx;
  const Tensor w = ts::contiguous(weight);
  run_forward(params(go, w.const_data_ptr(), nullptr, gx.mutable_data_ptr(), K, pad, cl, true), go);
  return gx;
}

// (grad_weight (C, 1, K, K), grad_bias (C,) or empty).
std::tuple<Tensor, Tensor> depthwise_conv2d_backward_weight(Tensor grad_out, Tensor x, int64_t kernel_size,
                                                             int64_t padding, bool need_bias) {
  check_x(x, "x");
  check_x(grad_out, "grad_out");
  check_same(kOp, grad_out, "grad_out", x, "x");
  const int64_t B = x.size(0), C = x.size(1), K = kernel_size;
  TK_CHECK(K >= 1 && K <= kMaxK, kOp, "kernel_size must be in [1, ", kMaxK, "], got ", K);
  check_padding(padding, K);
  const int64_t Ho = x.size(2) + 2 * padding - K + 1, Wo = x.size(3) + 2 * padding - K + 1;
  TK_CHECK(grad_out.size(0) == B && grad_out.size(1) == C && grad_out.size(2) == Ho && grad_out.size(3) == Wo, kOp,
           "grad_out must have shape (", B, ", ", C, ", ", Ho, ", ", Wo, "), got ", shape_str(grad_out));
  const bool cl = is_channels_last(x);
  const Tensor go = cl ? (is_channels_last(grad_out) ? grad_out : as_channels_last(grad_out)) : ts::contiguous(grad_out);
  Tensor gw = ts::new_empty(x, {C, 1, K, K});
  Tensor gb = ts::new_empty(x, {need_bias ? C : 0});
  // The weight-gradient kernels read grad_out where the forward writes y.
  const DwConvWeightGradParams p{
      params(x, nullptr, nullptr, const_cast<void*>(go.const_data_ptr()), K, padding, cl, false),
      gw.mutable_data_ptr(), need_bias ? gb.mutable_data_ptr() : nullptr};
  if (B * Ho * Wo == 0 || C == 0) {
    ts::zero_(gw);
    if (need_bias) ts::zero_(gb);
    return {gw, gb};
  }
  if (x.is_cpu()) {
    cpu::depthwise_conv2d_weight_grad(p);
  } else {
#ifdef TASKKERNELS_WITH_CUDA
    const ts::accelerator::DeviceGuard guard(x.get_device_index());
    const size_t bytes = cuda::depthwise_conv2d_weight_grad_workspace(p);
    Tensor workspace = ts::new_empty(x, {int64_t(bytes)}, ScalarType::Byte);
    auto stream = static_cast<cudaStream_t>(current_cuda_stream(x.get_device_index(), kOp));
    check_cuda(cuda::depthwise_conv2d_weight_grad(p, bytes ? workspace.mutable_data_ptr() : nullptr, stream), kOp,
               "the CUDA weight-gradient kernels");
#endif
  }
  return {gw, gb};
}


// ---- the ConvNeXt front: depthwise convolution + LayerNorm over channels -----------------------
ScalarType acc_dtype(ScalarType t) { return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float; }

void check_channel_param(const std::optional<Tensor>& t, const char* name, const Tensor& x) {
  if (!t.has_value()) return;
  check_same(kOp, *t, name, x, "x");
  TK_CHECK(t->dim() == 1 && t->size(0) == x.size(1), kOp, name, " must have shape (C,) = (", x.size(1), ",), got ",
           shape_str(*t));
}

ChannelNormParams norm_params(const Tensor& y, const std::optional<Tensor>& gamma, const std::optional<Tensor>& beta,
                              double eps, void* out, void* mean, void* rstd) {
  return {dw_dtype(y.scalar_type()), y.size(0), y.size(1), y.size(2), y.size(3), y.const_data_ptr(),
          y.stride(0), y.stride(1), y.stride(2), y.stride(3),
          gamma.has_value() ? gamma->const_data_ptr() : nullptr, beta.has_value() ? beta->const_data_ptr() : nullptr,
          eps, out, mean, rstd};
}

// (out (B, Ho, Wo, C), conv (B, Ho, Wo, C): the convolution's output, kept for the backward,
// mean, rstd (B, Ho, Wo)): LayerNorm over C of depthwise_conv2d(x). The convolution runs
// channels-last (x is converted once when it is NCHW), so each pixel's channels are contiguous.
std::tuple<Tensor, Tensor, Tensor, Tensor> depthwise_conv2d_layernorm(Tensor x, Tensor weight,
                                                                      std::optional<Tensor> bias,
                                                                      std::optional<Tensor> ln_weight,
                                                                      std::optional<Tensor> ln_bias, double eps,
                                                                      int64_t padding) {
  const int64_t K = check_forward(x, weight, bias, padding);
  check_channel_param(ln_weight, "ln_weight", x);
  check_channel_param(ln_bias, "ln_bias", x);
  TK_CHECK(eps >= 0, kOp, "eps must be >= 0, got ", eps);
  const int64_t B = x.size(0), C = x.size(1), Ho = x.size(2) + 2 * padding - K + 1, Wo = x.size(3) + 2 * padding - K + 1;
  // The channels-last kernel needs unit channel stride; it writes conv as (B, Ho, Wo, C).
  const Tensor xc = x.stride(1) == 1 || C == 1 ? x : as_channels_last(x);
  Tensor conv = ts::new_empty(x, {B, Ho, Wo, C});
  const Tensor y = ts::permute(conv, {0, 3, 1, 2});
  const auto gamma = ln_weight.has_value() ? std::optional<Tensor>(ts::contiguous(*ln_weight)) : std::nullopt;
  const auto beta = ln_bias.has_value() ? std::optional<Tensor>(ts::contiguous(*ln_bias)) : std::nullopt;
  Tensor out = ts::new_empty(x, {B, Ho, Wo, C});
  Tensor mean = ts::new_empty(x, {B, Ho, Wo}, acc_dtype(x.scalar_type()));
  Tensor rstd = ts::new_empty(x, {B, Ho, Wo}, acc_dtype(x.scalar_type()));
  if (out.numel() == 0) return {out, conv, mean, rstd};
  const ChannelNormParams norm =
      norm_params(y, gamma, beta, eps, out.mutable_data_ptr(), mean.mutable_data_ptr(), rstd.mutable_data_ptr());
  const Tensor w = ts::contiguous(weight);
  const std::optional<Tensor> b = bias.has_value() ? std::optional<Tensor>(ts::contiguous(*bias)) : std::nullopt;
  const DwConvParams cp =
      params(xc, w.const_data_ptr(), b ? b->const_data_ptr() : nullptr, conv.mutable_data_ptr(), K, padding, true, false);
  if (x.is_cpu()) {
    cpu::depthwise_conv2d_forward(cp);
    cpu::channel_layernorm_forward(norm);
    return {out, conv, mean, rstd};
  }
#ifdef TASKKERNELS_WITH_CUDA
  const ts::accelerator::DeviceGuard guard(x.get_device_index());
  auto stream = static_cast<cudaStream_t>(current_cuda_stream(x.get_device_index(), kOp));
  if (cuda::fused_front_supported(cp)) {
    check_cuda(cuda::depthwise_conv2d_layernorm_forward(cp, norm, stream), kOp, "the CUDA fused front kernel");
  } else {
    check_cuda(cuda::depthwise_conv2d_forward(cp, stream), kOp, "the CUDA forward kernel");
    check_cuda(cuda::channel_layernorm_forward(norm, stream), kOp, "the CUDA LayerNorm kernel");
  }
#endif
  return {out, conv, mean, rstd};
}

// Gradients of x, weight, bias, ln_weight, ln_bias (each (0,) when not needed), from the
// forward's saved convolution output `conv` (B, Ho, Wo, C) and statistics.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> depthwise_conv2d_layernorm_backward(
    Tensor grad_out, Tensor x, Tensor weight, std::optional<Tensor> ln_weight, Tensor conv, Tensor mean, Tensor rstd,
    int64_t padding, bool need_x, bool need_weight, bool need_bias, bool need_ln_weight, bool need_ln_bias) {
  check_x(x, "x");
  const int64_t C = x.size(1), K = check_weight(weight, x, C);
  check_padding(padding, K);
  check_channel_param(ln_weight, "ln_weight", x);
  check_same(kOp, conv, "conv", x, "x");
  const int64_t B = x.size(0), Ho = x.size(2) + 2 * padding - K + 1, Wo = x.size(3) + 2 * padding - K + 1;
  TK_CHECK(conv.dim() == 4 && conv.size(0) == B && conv.size(1) == Ho && conv.size(2) == Wo && conv.size(3) == C, kOp,
           "conv must be the forward's (", B, ", ", Ho, ", ", Wo, ", ", C, ") convolution output, got ", shape_str(conv));
  const Tensor y = ts::permute(ts::contiguous(conv), {0, 3, 1, 2});
  check_same(kOp, grad_out, "grad_out", x, "x");
  TK_CHECK(grad_out.dim() == 4 && grad_out.size(0) == B && grad_out.size(1) == Ho && grad_out.size(2) == Wo &&
               grad_out.size(3) == C,
           kOp, "grad_out must have shape (", B, ", ", Ho, ", ", Wo, ", ", C, "), got ", shape_str(grad_out));
  for (const Tensor* t : {&mean, &rstd})
    TK_CHECK(t->dim() == 3 && t->size(0) == B && t->size(1) == Ho && t->size(2) == Wo &&
                 t->scalar_type() == acc_dtype(x.scalar_type()),
             kOp, "mean and rstd must be the forward's (", B, ", ", Ho, ", ", Wo, ") statistics, got ", shape_str(*t));
  const auto gamma = ln_weight.has_value() ? std::optional<Tensor>(ts::contiguous(*ln_weight)) : std::nullopt;
  const Tensor go = ts::contiguous(grad_out), m = ts::contiguous(mean), r = ts::contiguous(rstd);
  auto empty0 = [&] { return ts::new_empty(x, {0}); };
  Tensor dy = ts::new_empty(x, {B, Ho, Wo, C});
  Tensor glnw = need_ln_weight && gamma ? ts::new_empty(x, {C}) : empty0();
  Tensor glnb = need_ln_bias ? ts::new_empty(x, {C}) : empty0();
  if (dy.numel() == 0) {
    if (glnw.numel()) ts::zero_(glnw);
    if (glnb.numel()) ts::zero_(glnb);
  } else {
    const ChannelNormBackwardParams g{norm_params(y, gamma, std::nullopt, 0.0, nullptr,
                                                  const_cast<void*>(m.const_data_ptr()),
                                                  const_cast<void*>(r.const_data_ptr())),
                                      go.const_data_ptr(), dy.mutable_data_ptr(),
                                      glnw.numel() ? glnw.mutable_data_ptr() : nullptr,
                                      glnb.numel() ? glnb.mutable_data_ptr() : nullptr};
    if (x.is_cpu()) {
      cpu::channel_layernorm_backward(g);
    } else {
#ifdef TASKKERNELS_WITH_CUDA
      const ts::accelerator::DeviceGuard guard(x.get_device_index());
      const size_t bytes = cuda::channel_layernorm_backward_workspace(g);
      Tensor workspace = ts::new_empty(x, {int64_t(bytes)}, ScalarType::Byte);
      auto stream = static_cast<cudaStream_t>(current_cuda_stream(x.get_device_index(), kOp));
      check_cuda(cuda::channel_layernorm_backward(g, bytes ? workspace.mutable_data_ptr() : nullptr, stream), kOp,
                 "the CUDA LayerNorm backward kernels");
#endif
    }
  }
  const Tensor dy_nchw = ts::permute(dy, {0, 3, 1, 2});  // channels_last view of the conv output's grad
  Tensor gx = need_x ? depthwise_conv2d_backward_input(dy_nchw, weight, padding, is_channels_last(x)) : empty0();
  Tensor gw = empty0(), gb = empty0();
  if (need_weight || need_bias) {
    std::tie(gw, gb) = depthwise_conv2d_backward_weight(dy_nchw, x, weight.size(2), padding, need_bias);
    if (!need_weight) gw = empty0();
  }
  return {gx, gw, gb, glnw, glnb};
}

}  // namespace
}  // namespace taskkernels

STABLE_TORCH_LIBRARY_FRAGMENT(taskkernels, m) {
  m.def("depthwise_conv2d(Tensor x, Tensor weight, Tensor? bias, int padding) -> Tensor");
  m.def("depthwise_conv2d_backward_input(Tensor grad_out, Tensor weight, int padding, bool channels_last) -> Tensor");
  m.def(
      "depthwise_conv2d_backward_weight(Tensor grad_out, Tensor x, int kernel_size, int padding, bool need_bias) "
      "-> (Tensor, Tensor)");
  m.def(
      "depthwise_conv2d_layernorm(Tensor x, Tensor weight, Tensor? bias, Tensor? ln_weight, Tensor? ln_bias, "
      "float eps, int padding) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "depthwise_conv2d_layernorm_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? ln_weight, "
      "Tensor conv, Tensor mean, Tensor rstd, int padding, bool need_x, bool need_weight, bool need_bias, "
      "bool need_ln_weight, bool need_ln_bias) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(taskkernels, CPU, m) {
  m.impl("depthwise_conv2d", TORCH_BOX(&taskkernels::depthwise_conv2d));
  m.impl("depthwise_conv2d_backward_input", TORCH_BOX(&taskkernels::depthwise_conv2d_backward_input));
  m.impl("depthwise_conv2d_backward_weight", TORCH_BOX(&taskkernels::depthwise_conv2d_backward_weight));
  m.impl("depthwise_conv2d_layernorm", TORCH_BOX(&taskkernels::depthwise_conv2d_layernorm));
  m.impl("depthwise_conv2d_layernorm_backward", TORCH_BOX(&taskkernels::depthwise_conv2d_layernorm_backward));
}

#ifdef TASKKERNELS_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(taskkernels, CUDA, m) {
  m.impl("depthwise_conv2d", TORCH_BOX(&taskkernels::depthwise_conv2d));
  m.impl("depthwise_conv2d_backward_input", TORCH_BOX(&taskkernels::depthwise_conv2d_backward_input));
  m.impl("depthwise_conv2d_backward_weight", TORCH_BOX(&taskkernels::depthwise_conv2d_backward_weight));
  m.impl("depthwise_conv2d_layernorm", TORCH_BOX(&taskkernels::depthwise_conv2d_layernorm));
  m.impl("depthwise_conv2d_layernorm_backward", TORCH_BOX(&taskkernels::depthwise_conv2d_layernorm_backward));
}
#endif
