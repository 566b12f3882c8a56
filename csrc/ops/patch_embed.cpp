// patch_embed: schema, argument checks, CPU and CUDA registrations.
#include <torch/csrc/stable/accelerator.h>

#include <optional>
#include <tuple>

#include "cpu/patch_embed.h"
#include "ops/common.h"
#ifdef TASKKERNELS_WITH_CUDA
#include "kernels/patch_embed/patch_embed.h"
#endif

namespace taskkernels {
namespace {

namespace ts = torch::stable;
constexpr const char* kOp = "patch_embed";

struct Checked {
  int64_t B, C, H, W, P, D, np, R;
};

// Every argument of the forward, with messages that name it. Returns the geometry.
Checked check_forward(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias,
                      const std::optional<Tensor>& cls, const std::optional<Tensor>& pos) {
  TK_CHECK(x.dim() == 4, kOp, "pixel_values must be 4-D (B, C, H, W), got shape ", shape_str(x));
  TK_CHECK(is_floating(x.scalar_type()), kOp,
           "pixel_values must be float16, bfloat16, float32 or float64, got ",
           dtype_name(x.scalar_type()));
  TK_CHECK(x.is_cpu() || x.is_cuda(), kOp, "pixel_values must be on a CPU or CUDA device");
  TK_CHECK(w.dim() == 4 && w.size(2) == w.size(3), kOp,
           "weight must be 4-D (D, C, P, P) with a square P x P kernel, got shape ", shape_str(w));
  check_same(kOp, w, "weight", x, "pixel_values");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t D = w.size(0), P = w.size(2);
  TK_CHECK(C >= 1 && w.size(1) == C, kOp, "weight must have C = ", C,
           " input channels to match pixel_values, got shape ", shape_str(w));
  TK_CHECK(P >= 1, kOp, "weight's patch size must be at least 1, got shape ", shape_str(w));
  TK_CHECK(H >= P && W >= P && H % P == 0 && W % P == 0, kOp, "pixel_values' image size ", H,
           "x", W, " must be a positive multiple of the patch size ", P);
  const int64_t np = (H / P) * (W / P);
  const int64_t R = np + (cls.has_value() ? 1 : 0);
  if (bias.has_value()) {
    TK_CHECK(bias->dim() == 1 && bias->size(0) == D, kOp, "bias must have shape (", D,
             ",), got ", shape_str(*bias));
    check_same(kOp, *bias, "bias", x, "pixel_values");
  }
  if (cls.has_value()) {
    TK_CHECK(cls->dim() >= 1 && cls->numel() == D && cls->size(cls->dim() - 1) == D, kOp,
             "cls_token must hold one row of D = ", D, " values ((1, 1, D) or (D,)), got ",
             shape_str(*cls));
    check_same(kOp, *cls, "cls_token", x, "pixel_values");
  }
  if (pos.has_value()) {
    const bool shape_ok = (pos->dim() == 2 || (pos->dim() == 3 && pos->size(0) == 1)) &&
                          pos->size(pos->dim() - 2) == R && pos->size(pos->dim() - 1) == D;
    TK_CHECK(shape_ok, kOp, "pos_embed must have shape (1, ", R, ", ", D, ") or (", R, ", ", D,
             "): ", np, " patches", (cls.has_value() ? " + [CLS]" : ""), " of D = ", D,
             ", got ", shape_str(*pos));
    check_same(kOp, *pos, "pos_embed", x, "pixel_values");
  }
  return {B, C, H, W, P, D, np, R};
}

Checked check_backward(const Tensor& grad_out, const Tensor& x, const Tensor& w, bool has_cls) {
  const std::optional<Tensor> none;
  const Checked c = check_forward(x, w, none, none, none);
  const int64_t R = c.np + (has_cls ? 1 : 0);
  TK_CHECK(grad_out.dim() == 3 && grad_out.size(0) == c.B && grad_out.size(1) == R &&
               grad_out.size(2) == c.D,
           kOp, "grad_out must have shape (", c.B, ", ", R, ", ", c.D, "), got ",
           shape_str(grad_out));
  check_same(kOp, grad_out, "grad_out", x, "pixel_values");
  return c;
}

std::optional<Tensor> contiguous_opt(const std::optional<Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return ts::contiguous(*t);
}

// ---- CPU ---------------------------------------------------------------------------------------
Tensor patch_embed_cpu(Tensor pixel_values, Tensor weight, std::optional<Tensor> bias,
                       std::optional<Tensor> cls_token, std::optional<Tensor> pos_embed,
                       bool allow_tf32) {
  check_forward(pixel_values, weight, bias, cls_token, pos_embed);
  return cpu::patch_embed_forward(pixel_values, ts::contiguous(weight), contiguous_opt(bias),
                                  contiguous_opt(cls_token), contiguous_opt(pos_embed));
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> patch_embed_backward_cpu(
    Tensor grad_out, Tensor pixel_values, Tensor weight, bool has_cls, bool need_pixel_values,
    bool need_weight, bool need_bias, bool need_cls_token, bool need_pos_embed, bool allow_tf32) {
  check_backward(grad_out, pixel_values, weight, has_cls);
  return cpu::patch_embed_backward(ts::contiguous(grad_out), pixel_values, ts::contiguous(weight),
                                   has_cls, need_pixel_values, need_weight, need_bias,
                                   need_cls_token && has_cls, need_pos_embed);
}

// ---- CUDA --------------------------------------------------------------------------------------
#ifdef TASKKERNELS_WITH_CUDA
cuda::DType cuda_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::Half: return cuda::DType::kHalf;
    case ScalarType::BFloat16: return cuda::DType::kBFloat16;
    case ScalarType::Float: return cuda::DType::kFloat;
    default: return cuda::DType::kDouble;
  }
}

cuda::PatchEmbedShape cuda_shape(const Tensor& x, const Checked& c, bool has_cls, bool allow_tf32) {
  return {cuda_dtype(x.scalar_type()), allow_tf32, c.B, c.C, c.H, c.W, c.P, c.D,
          x.stride(0), x.stride(1), x.stride(2), x.stride(3), has_cls};
}

const void* data_or_null(const std::optional<Tensor>& t) {
  return t.has_value() ? t->const_data_ptr() : nullptr;
}

Tensor patch_embed_cuda(Tensor pixel_values, Tensor weight, std::optional<Tensor> bias,
                        std::optional<Tensor> cls_token, std::optional<Tensor> pos_embed,
                        bool allow_tf32) {
  const Checked c = check_forward(pixel_values, weight, bias, cls_token, pos_embed);
  const ts::accelerator::DeviceGuard guard(pixel_values.get_device_index());
  const Tensor w = ts::contiguous(weight);
  const auto b = contiguous_opt(bias), cls = contiguous_opt(cls_token), pos = contiguous_opt(pos_embed);
  Tensor out = ts::new_empty(pixel_values, {c.B, c.R, c.D});
  const cuda::PatchEmbedForward p{cuda_shape(pixel_values, c, cls.has_value(), allow_tf32),
                                  pixel_values.const_data_ptr(), w.const_data_ptr(),
                                  data_or_null(b), data_or_null(cls), data_or_null(pos),
                                  out.mutable_data_ptr()};
  auto stream = static_cast<cudaStream_t>(current_cuda_stream(pixel_values.get_device_index(), kOp));
  check_cuda(cuda::patch_embed_forward(p, stream), kOp, "the CUDA forward kernel");
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> patch_embed_backward_cuda(
    Tensor grad_out, Tensor pixel_values, Tensor weight, bool has_cls, bool need_pixel_values,
    bool need_weight, bool need_bias, bool need_cls_token, bool need_pos_embed, bool allow_tf32) {
  const Checked c = check_backward(grad_out, pixel_values, weight, has_cls);
  const ts::accelerator::DeviceGuard guard(pixel_values.get_device_index());
  const Tensor g = ts::contiguous(grad_out), w = ts::contiguous(weight);
  auto make = [&](bool need, std::vector<int64_t> sizes) {
    return ts::new_empty(pixel_values, need ? sizes : std::vector<int64_t>{0});
  };
  const int64_t R = c.np + (has_cls ? 1 : 0);
  need_cls_token = need_cls_token && has_cls;
  Tensor gx = make(need_pixel_values, {c.B, c.C, c.H, c.W});
  Tensor gw = make(need_weight, {c.D, c.C, c.P, c.P});
  Tensor gb = make(need_bias, {c.D});
  Tensor gc = make(need_cls_token, {c.D});
  Tensor gp = make(need_pos_embed, {R, c.D});
  cuda::PatchEmbedBackward p{cuda_shape(pixel_values, c, has_cls, allow_tf32),
                             g.const_data_ptr(), pixel_values.const_data_ptr(), w.const_data_ptr(),
                             need_pixel_values ? gx.mutable_data_ptr() : nullptr,
                             need_weight ? gw.mutable_data_ptr() : nullptr,
                             need_bias ? gb.mutable_data_ptr() : nullptr,
                             need_cls_token ? gc.mutable_data_ptr() : nullptr,
                             need_pos_embed ? gp.mutable_data_ptr() : nullptr,
                             nullptr};
  const size_t bytes = cuda::patch_embed_backward_workspace(p);
  Tensor workspace = ts::new_empty(pixel_values, {int64_t(bytes)}, ScalarType::Byte);
  p.workspace = bytes ? workspace.mutable_data_ptr() : nullptr;
  auto stream = static_cast<cudaStream_t>(current_cuda_stream(pixel_values.get_device_index(), kOp));
  check_cuda(cuda::patch_embed_backward(p, stream), kOp, "the CUDA backward kernels");
  return {gx, gw, gb, gc, gp};
}
#endif  // TASKKERNELS_WITH_CUDA

}  // namespace
}  // namespace taskkernels

STABLE_TORCH_LIBRARY_FRAGMENT(taskkernels, m) {
  m.def(
      "patch_embed(Tensor pixel_values, Tensor weight, Tensor? bias=None, Tensor? cls_token=None, "
      "Tensor? pos_embed=None, bool allow_tf32=False) -> Tensor");
  m.def(
      "patch_embed_backward(Tensor grad_out, Tensor pixel_values, Tensor weight, bool has_cls, "
      "bool need_pixel_values, bool need_weight, bool need_bias, bool need_cls_token, "
      "bool need_pos_embed, bool allow_tf32=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(taskkernels, CPU, m) {
  m.impl("patch_embed", TORCH_BOX(&taskkernels::patch_embed_cpu));
  m.impl("patch_embed_backward", TORCH_BOX(&taskkernels::patch_embed_backward_cpu));
}

#ifdef TASKKERNELS_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(taskkernels, CUDA, m) {
  m.impl("patch_embed", TORCH_BOX(&taskkernels::patch_embed_cuda));
  m.impl("patch_embed_backward", TORCH_BOX(&taskkernels::patch_embed_backward_cuda));
}
#endif
