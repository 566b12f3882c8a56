// attention, masked_attention (Mask2Former's per-query mask) and their backwards, and
// pack_attention_mask: schemas, argument checks, CPU and CUDA registrations.
#include <optional>
#include <tuple>
#include <utility>

#include <torch/csrc/stable/accelerator.h>

#include "cpu/attention.h"
#include "ops/common.h"
#ifdef TASKKERNELS_WITH_CUDA
#include "kernels/attention/attention.h"
#endif

namespace taskkernels {
namespace {

namespace ts = torch::stable;
constexpr const char* kOp = "attention";

struct Dims {
  int64_t B, H, Nq, Nk, D, Hk;  // Hk: key/value heads (grouped-query attention when < H)
};

Dims check_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                     const std::optional<Tensor>& key_padding_mask,
                     const std::optional<Tensor>& attn_bias, std::optional<double> scale, const char* op = kOp,
                     bool grouped_query = true) {
  TK_CHECK(q.dim() == 4, op, "q must be 4-D (B, H, Nq, D), got shape ", shape_str(q));
  TK_CHECK(is_floating(q.scalar_type()), op, "q must be float16, bfloat16, float32 or float64, got ",
           dtype_name(q.scalar_type()));
  TK_CHECK(q.is_cpu() || q.is_cuda(), op, "q must be on a CPU or CUDA device");
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3);
  TK_CHECK(D >= 1, op, "q's head dimension must be at least 1, got shape ", shape_str(q));
  TK_CHECK(grouped_query || (k.dim() == 4 && k.size(0) == B && k.size(1) == H && k.size(3) == D), op,
           "k must have shape (B, H, Nk, D) = (", B, ", ", H, ", Nk, ", D, ") to match q, got ", shape_str(k));
  TK_CHECK(k.dim() == 4 && k.size(0) == B && k.size(1) >= 1 && H % k.size(1) == 0 && k.size(3) == D, op,
           "k must have shape (B, Hk, Nk, D) = (", B, ", Hk, Nk, ", D, ") with Hk dividing H = ", H,
           " (Hk < H: grouped-query attention) to match q, got ", shape_str(k));
  const int64_t Hk = k.size(1), Nk = k.size(2);
  TK_CHECK(v.dim() == 4 && v.size(0) == B && v.size(1) == Hk && v.size(2) == Nk && v.size(3) == D,
           op, "v must have shape (B, Hk, Nk, D) = (", B, ", ", Hk, ", ", Nk, ", ", D,
           ") to match q and k, got ", shape_str(v));
  check_same(op, k, "k", q, "q");
  check_same(op, v, "v", q, "q");
  if (key_padding_mask.has_value()) {
    const Tensor& m = *key_padding_mask;
    TK_CHECK(m.scalar_type() == ScalarType::Bool, op,
             "key_padding_mask must be bool (True = padding), got ", dtype_name(m.scalar_type()));
    TK_CHECK(m.dim() == 2 && m.size(0) == B && m.size(1) == Nk, op,
             "key_padding_mask must have shape (B, Nk) = (", B, ", ", Nk, "), got ", shape_str(m));
    TK_CHECK(m.is_cpu() == q.is_cpu() && m.get_device_index() == q.get_device_index(), op,
             "key_padding_mask must be on the device of q (", device_str(q), "), got ", device_str(m));
  }
  if (attn_bias.has_value()) {
    const Tensor& b = *attn_bias;
    TK_CHECK(b.scalar_type() == q.scalar_type() || b.scalar_type() == ScalarType::Float, op,
             "attn_bias must have the dtype of q (", dtype_name(q.scalar_type()),
             ") or float32, got ", dtype_name(b.scalar_type()));
    TK_CHECK(b.is_cpu() == q.is_cpu() && b.get_device_index() == q.get_device_index(), op,
             "attn_bias must be on the device of q (", device_str(q), "), got ", device_str(b));
    const int64_t target[4] = {B, H, Nq, Nk};
    bool ok = b.dim() >= 1 && b.dim() <= 4;
    for (int64_t i = 0; ok && i < b.dim(); ++i) {
      const int64_t s = b.size(b.dim() - 1 - i), t = target[3 - i];
      ok = s == t || s == 1;
    }
    TK_CHECK(ok, op, "attn_bias must broadcast to (B, H, Nq, Nk) = (", B, ", ", H, ", ", Nq, ", ",
             Nk, "), got shape ", shape_str(b));
  }
  if (scale.has_value()) {
    TK_CHECK(std::isfinite(*scale), op, "scale must be finite, got ", *scale);
  }
  return {B, H, Nq, Nk, D, Hk};
}

// The dropout probability and its seed: a 0-dim (or one-element) int64 CPU tensor, drawn from
// torch's generator by the Python wrapper.
uint64_t check_dropout(double dropout_p, const std::optional<Tensor>& seed) {
  TK_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, kOp, "dropout_p must be in [0, 1), got ", dropout_p);
  if (dropout_p == 0.0) return 0;
  TK_CHECK(seed.has_value(), kOp, "dropout_p > 0 needs a seed (an int64 CPU tensor)");
  TK_CHECK(seed->scalar_type() == ScalarType::Long && seed->is_cpu() && seed->numel() == 1, kOp,
           "seed must be a one-element int64 CPU tensor, got ", dtype_name(seed->scalar_type()), " of shape ",
           shape_str(*seed), " on ", device_str(*seed));
  return static_cast<uint64_t>(*static_cast<const int64_t*>(seed->const_data_ptr()));
}

AttnDType attn_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::Half: return AttnDType::kHalf;
    case ScalarType::BFloat16: return AttnDType::kBFloat16;
    case ScalarType::Float: return AttnDType::kFloat;
    default: return AttnDType::kDouble;
  }
}

ScalarType lse_dtype(ScalarType t) {
  return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// The torch-free parameters of checked arguments (out and lse left for the caller).
AttentionParams make_params(const Dims& d, const Tensor& q, const Tensor& k, const Tensor& v,
                            bool causal, const std::optional<Tensor>& key_padding_mask,
                            const std::optional<Tensor>& attn_bias, std::optional<double> scale,
                            double dropout_p, const std::optional<Tensor>& seed) {
  AttentionParams p{};
  p.seed = check_dropout(dropout_p, seed);
  p.dropout_p = dropout_p;
  p.dtype = attn_dtype(q.scalar_type());
  p.B = d.B, p.H = d.H, p.Nq = d.Nq, p.Nk = d.Nk, p.D = d.D, p.Hk = d.Hk;
  p.q = q.const_data_ptr(), p.k = k.const_data_ptr(), p.v = v.const_data_ptr();
  for (int i = 0; i < 4; ++i) {
    p.q_stride[i] = q.stride(i), p.k_stride[i] = k.stride(i), p.v_stride[i] = v.stride(i);
  }
  if (key_padding_mask.has_value()) {
    p.key_padding = static_cast<const bool*>(key_padding_mask->const_data_ptr());
    p.kp_stride[0] = key_padding_mask->stride(0), p.kp_stride[1] = key_padding_mask->stride(1);
  }
  if (attn_bias.has_value()) {
    const Tensor& b = *attn_bias;
    p.bias = b.const_data_ptr();
    p.bias_is_float32 = b.scalar_type() == ScalarType::Float && q.scalar_type() != ScalarType::Float;
    for (int i = 0; i < 4; ++i) {  // broadcast dimensions read with stride 0
      const int64_t src = i - (4 - b.dim());
      p.bias_stride[i] = (src < 0 || b.size(src) == 1) ? 0 : b.stride(src);
    }
  }
  p.causal = causal;
  p.scale = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(d.D));
  return p;
}

// Checks the arguments, allocates out and lse, and fills the parameters.
struct Prepared {
  Tensor out, lse;
  AttentionParams p;
  bool empty;
};

Prepared prepare(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                 const std::optional<Tensor>& key_padding_mask,
                 const std::optional<Tensor>& attn_bias, std::optional<double> scale, double dropout_p,
                 const std::optional<Tensor>& seed) {
  const Dims d = check_attention(q, k, v, key_padding_mask, attn_bias, scale);
  Prepared r{ts::new_empty(q, {d.B, d.H, d.Nq, d.D}),
             ts::new_empty(q, {d.B, d.H, d.Nq}, lse_dtype(q.scalar_type())),
             make_params(d, q, k, v, causal, key_padding_mask, attn_bias, scale, dropout_p, seed),
             d.B * d.H * d.Nq == 0};
  r.p.out = r.out.mutable_data_ptr();
  r.p.lse = r.lse.mutable_data_ptr();
  return r;
}

// The masked op's packed per-query mask (checked by check_masked).
void set_mask_bits(AttentionParams& p, const Tensor& mask_bits) {
  p.mask_bits = static_cast<const uint64_t*>(mask_bits.const_data_ptr());
  p.mb_stride[0] = mask_bits.stride(0), p.mb_stride[1] = mask_bits.stride(1);
}

std::tuple<Tensor, Tensor> attention_cpu(Tensor q, Tensor k, Tensor v, bool causal,
                                         std::optional<Tensor> key_padding_mask,
                                         std::optional<Tensor> attn_bias,
                                         std::optional<double> scale, double dropout_p,
                                         std::optional<Tensor> seed) {
  Prepared r = prepare(q, k, v, causal, key_padding_mask, attn_bias, scale, dropout_p, seed);
  if (!r.empty) cpu::attention_forward(r.p);
  return {r.out, r.lse};
}

// The backward of checked inputs, on q's device (CPU, or CUDA under the caller's device guard) (mask_bits: the masked op's packed mask, or null;
// op: the name errors carry).
std::tuple<Tensor, Tensor, Tensor, Tensor> run_backward(
    const Dims& d, const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
    const Tensor& lse, bool causal, const std::optional<Tensor>& key_padding_mask,
    const std::optional<Tensor>& attn_bias, std::optional<double> scale, bool need_bias_grad, double dropout_p,
    const std::optional<Tensor>& seed, const Tensor* mask_bits, const char* op) {
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{grad_out, "grad_out"},
                                std::pair<const Tensor&, const char*>{out, "out"}}) {
    TK_CHECK(t.dim() == 4 && t.size(0) == d.B && t.size(1) == d.H && t.size(2) == d.Nq && t.size(3) == d.D,
             op, name, " must have shape (B, H, Nq, D) = (", d.B, ", ", d.H, ", ", d.Nq, ", ", d.D,
             "), got ", shape_str(t));
    check_same(op, t, name, q, "q");
  }
  TK_CHECK(lse.dim() == 3 && lse.size(0) == d.B && lse.size(1) == d.H && lse.size(2) == d.Nq &&
               lse.scalar_type() == lse_dtype(q.scalar_type()),
           op, "lse must be the forward's (B, H, Nq) = (", d.B, ", ", d.H, ", ", d.Nq, ") ",
           dtype_name(lse_dtype(q.scalar_type())), " log-sum-exp, got ", shape_str(lse), " ",
           dtype_name(lse.scalar_type()));
  TK_CHECK(lse.is_cpu() == q.is_cpu() && lse.get_device_index() == q.get_device_index(), op,
           "lse must be on the device of q (", device_str(q), "), got ", device_str(lse));
  need_bias_grad = need_bias_grad && attn_bias.has_value();
  Tensor dq = ts::new_empty(q, {d.B, d.H, d.Nq, d.D});
  Tensor dk = ts::new_empty(q, {d.B, d.Hk, d.Nk, d.D});
  Tensor dv = ts::new_empty(q, {d.B, d.Hk, d.Nk, d.D});
  Tensor dbias = need_bias_grad
                     ? ts::new_zeros(q, {d.B, d.H, d.Nq, d.Nk}, lse_dtype(q.scalar_type()))
                     : ts::new_empty(q, {0}, lse_dtype(q.scalar_type()));
  if (d.B * d.H == 0) return {dq, dk, dv, dbias};
  const Tensor out_c = ts::contiguous(out), lse_c = ts::contiguous(lse);
  AttentionBackwardParams bp{};
  bp.fwd = make_params(d, q, k, v, causal, key_padding_mask, attn_bias, scale, dropout_p, seed);
  bp.fwd.out = const_cast<void*>(out_c.const_data_ptr());
  bp.fwd.lse = const_cast<void*>(lse_c.const_data_ptr());
  bp.grad_out = grad_out.const_data_ptr();
  for (int i = 0; i < 4; ++i) bp.grad_out_stride[i] = grad_out.stride(i);
  bp.dq = dq.mutable_data_ptr(), bp.dk = dk.mutable_data_ptr(), bp.dv = dv.mutable_data_ptr();
  bp.dbias = need_bias_grad ? dbias.mutable_data_ptr() : nullptr;
  if (mask_bits) set_mask_bits(bp.fwd, *mask_bits);
  if (q.is_cpu()) {
    cpu::attention_backward(bp);
    return {dq, dk, dv, dbias};
  }
#ifdef TASKKERNELS_WITH_CUDA
  TK_CHECK(d.D <= cuda::kMaxAttentionHeadDim, op, "on CUDA the head dimension must be at most ",
           cuda::kMaxAttentionHeadDim, ", got q of shape ", shape_str(q));
  Tensor delta = ts::new_empty(q, {d.B * d.H * d.Nq}, lse_dtype(q.scalar_type()));  // rowsum(dO * O)
  auto stream = static_cast<cudaStream_t>(current_cuda_stream(q.get_device_index(), op));
  check_cuda(cuda::attention_backward(bp, delta.mutable_data_ptr(), stream), op, "the CUDA attention backward kernels");
#endif
  return {dq, dk, dv, dbias};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> attention_backward_impl(
    Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, bool causal,
    std::optional<Tensor> key_padding_mask, std::optional<Tensor> attn_bias,
    std::optional<double> scale, bool need_bias_grad, double dropout_p, std::optional<Tensor> seed) {
  const Dims d = check_attention(q, k, v, key_padding_mask, attn_bias, scale);
  return run_backward(d, grad_out, q, k, v, out, lse, causal, key_padding_mask, attn_bias, scale, need_bias_grad,
                      dropout_p, seed, nullptr, kOp);
}

// ---- masked attention (Mask2Former): a per-query key mask shared by the heads, packed in bits.
constexpr const char* kMaskedOp = "masked_attention";

int64_t mask_words(int64_t n) { return (n + 63) / 64; }

// The mask or its logits (exactly one), (B, Q, N), any strides.
MaskPackParams check_mask_source(const std::optional<Tensor>& mask, const std::optional<Tensor>& mask_logits) {
  TK_CHECK(mask.has_value() != mask_logits.has_value(), kMaskedOp,
           "pass exactly one of mask (bool, True = blocked) and mask_logits (blocked where < 0)");
  const Tensor& m = mask.has_value() ? *mask : *mask_logits;
  const char* name = mask.has_value() ? "mask" : "mask_logits";
  MaskPackParams p{};
  if (mask.has_value()) {
    TK_CHECK(m.scalar_type() == ScalarType::Bool, kMaskedOp, "mask must be bool (True = blocked), got ",
             dtype_name(m.scalar_type()));
    p.source = MaskSource::kBool;
  } else {
    TK_CHECK(is_floating(m.scalar_type()), kMaskedOp,
             "mask_logits must be float16, bfloat16, float32 or float64, got ", dtype_name(m.scalar_type()));
    const ScalarType t = m.scalar_type();
    p.source = t == ScalarType::Half       ? MaskSource::kHalf
               : t == ScalarType::BFloat16 ? MaskSource::kBFloat16
               : t == ScalarType::Float    ? MaskSource::kFloat
                                           : MaskSource::kDouble;
  }
  TK_CHECK(m.dim() == 3, kMaskedOp, name, " must be 3-D (B, Q, HW), got shape ", shape_str(m));
  TK_CHECK(m.is_cpu() || m.is_cuda(), kMaskedOp, name, " must be on a CPU or CUDA device");
  p.B = m.size(0), p.Q = m.size(1), p.N = m.size(2);
  p.src = m.const_data_ptr();
  for (int i = 0; i < 3; ++i) p.src_stride[i] = m.stride(i);
  return p;
}

Tensor new_mask_bits(const std::optional<Tensor>& mask, const std::optional<Tensor>& mask_logits, MaskPackParams& p) {
  const Tensor& m = mask.has_value() ? *mask : *mask_logits;
  Tensor bits = ts::new_empty(m, {p.B, p.Q, mask_words(p.N)}, ScalarType::Long);
  p.bits = static_cast<uint64_t*>(bits.mutable_data_ptr());
  return bits;
}

Tensor pack_attention_mask_cpu(std::optional<Tensor> mask, std::optional<Tensor> mask_logits) {
  MaskPackParams p = check_mask_source(mask, mask_logits);
  Tensor bits = new_mask_bits(mask, mask_logits, p);
  if (p.B * p.Q * p.N > 0) cpu::pack_attention_mask(p);
  return bits;
}

// q, k, v as for attention; mask_bits the packed (B, Nq, ceil(Nk / 64)) int64 mask. Head dims
// and strides as attention's.
Dims check_masked(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask_bits,
                  std::optional<double> scale) {
  const Dims d = check_attention(q, k, v, std::nullopt, std::nullopt, scale, kMaskedOp, /*grouped_query=*/false);
  TK_CHECK(mask_bits.scalar_type() == ScalarType::Long && mask_bits.dim() == 3 && mask_bits.size(0) == d.B &&
               mask_bits.size(1) == d.Nq && mask_bits.size(2) == mask_words(d.Nk),
           kMaskedOp, "mask_bits must be the int64 (B, Nq, ceil(Nk / 64)) = (", d.B, ", ", d.Nq, ", ",
           mask_words(d.Nk), ") packing of the mask (pack_attention_mask), got ", dtype_name(mask_bits.scalar_type()),
           " of shape ", shape_str(mask_bits));
  TK_CHECK(mask_bits.is_cpu() == q.is_cpu() && mask_bits.get_device_index() == q.get_device_index(), kMaskedOp,
           "mask_bits must be on the device of q (", device_str(q), "), got ", device_str(mask_bits));
  TK_CHECK(mask_bits.stride(2) == 1, kMaskedOp, "mask_bits must be contiguous in its last dimension");
  return d;
}

std::tuple<Tensor, Tensor> masked_attention_cpu(Tensor q, Tensor k, Tensor v, Tensor mask_bits,
                                                std::optional<double> scale) {
  check_masked(q, k, v, mask_bits, scale);
  Prepared r = prepare(q, k, v, false, std::nullopt, std::nullopt, scale, 0.0, std::nullopt);
  set_mask_bits(r.p, mask_bits);
  if (!r.empty) cpu::attention_forward(r.p);
  return {r.out, r.lse};
}

std::tuple<Tensor, Tensor, Tensor> masked_attention_backward_impl(Tensor grad_out, Tensor q, Tensor k, Tensor v,
                                                                 Tensor out, Tensor lse, Tensor mask_bits,
                                                                 std::optional<double> scale) {
  const Dims d = check_masked(q, k, v, mask_bits, scale);
  auto [dq, dk, dv, dbias] = run_backward(d, grad_out, q, k, v, out, lse, false, std::nullopt, std::nullopt,
                                          scale, false, 0.0, std::nullopt, &mask_bits, kMaskedOp);
  return {dq, dk, dv};
}

#ifdef TASKKERNELS_WITH_CUDA
std::tuple<Tensor, Tensor> attention_cuda(Tensor q, Tensor k, Tensor v, bool causal,
                                          std::optional<Tensor> key_padding_mask,
                                          std::optional<Tensor> attn_bias,
                                          std::optional<double> scale, double dropout_p,
                                          std::optional<Tensor> seed) {
  const ts::accelerator::DeviceGuard guard(q.get_device_index());
  Prepared r = prepare(q, k, v, causal, key_padding_mask, attn_bias, scale, dropout_p, seed);
  TK_CHECK(r.p.D <= cuda::kMaxAttentionHeadDim, kOp, "on CUDA the head dimension must be at most ",
           cuda::kMaxAttentionHeadDim, ", got q of shape ", shape_str(q));
  if (!r.empty) {
    auto stream = static_cast<cudaStream_t>(current_cuda_stream(q.get_device_index(), kOp));
    check_cuda(cuda::attention_forward(r.p, stream), kOp, "the CUDA attention kernel");
  }
  return {r.out, r.lse};
}

Tensor pack_attention_mask_cuda(std::optional<Tensor> mask, std::optional<Tensor> mask_logits) {
  MaskPackParams p = check_mask_source(mask, mask_logits);
  const Tensor& m = mask.has_value() ? *mask : *mask_logits;
  const ts::accelerator::DeviceGuard guard(m.get_device_index());
  Tensor bits = new_mask_bits(mask, mask_logits, p);
  if (p.B * p.Q * p.N > 0) {
    auto stream = static_cast<cudaStream_t>(current_cuda_stream(m.get_device_index(), kMaskedOp));
    check_cuda(cuda::pack_attention_mask(p, stream), kMaskedOp, "the CUDA mask packing kernel");
  }
  return bits;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> attention_backward_cuda(
    Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, bool causal,
    std::optional<Tensor> key_padding_mask, std::optional<Tensor> attn_bias,
    std::optional<double> scale, bool need_bias_grad, double dropout_p, std::optional<Tensor> seed) {
  const ts::accelerator::DeviceGuard guard(q.get_device_index());
  return attention_backward_impl(grad_out, q, k, v, out, lse, causal, key_padding_mask, attn_bias, scale,
                                need_bias_grad, dropout_p, seed);
}

std::tuple<Tensor, Tensor, Tensor> masked_attention_backward_cuda(Tensor grad_out, Tensor q, Tensor k, Tensor v,
                                                                  Tensor out, Tensor lse, Tensor mask_bits,
                                                                  std::optional<double> scale) {
  const ts::accelerator::DeviceGuard guard(q.get_device_index());
  return masked_attention_backward_impl(grad_out, q, k, v, out, lse, mask_bits, scale);
}

std::tuple<Tensor, Tensor> masked_attention_cuda(Tensor q, Tensor k, Tensor v, Tensor mask_bits,
                                                 std::optional<double> scale) {
  const ts::accelerator::DeviceGuard guard(q.get_device_index());
  check_masked(q, k, v, mask_bits, scale);
  Prepared r = prepare(q, k, v, false, std::nullopt, std::nullopt, scale, 0.0, std::nullopt);
  set_mask_bits(r.p, mask_bits);
  TK_CHECK(r.p.D <= cuda::kMaxAttentionHeadDim, kMaskedOp, "on CUDA the head dimension must be at most ",
           cuda::kMaxAttentionHeadDim, ", got q of shape ", shape_str(q));
  if (!r.empty) {
    auto stream = static_cast<cudaStream_t>(current_cuda_stream(q.get_device_index(), kMaskedOp));
    check_cuda(cuda::attention_forward(r.p, stream), kMaskedOp, "the CUDA masked attention kernel");
  }
  return {r.out, r.lse};
}
#endif

}  // namespace
}  // namespace taskkernels

STABLE_TORCH_LIBRARY_FRAGMENT(taskkernels, m) {
  m.def(
      "attention(Tensor q, Tensor k, Tensor v, bool causal=False, Tensor? key_padding_mask=None, "
      "Tensor? attn_bias=None, float? scale=None, float dropout_p=0.0, Tensor? seed=None) -> (Tensor, Tensor)");
  m.def(
      "attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "bool causal, Tensor? key_padding_mask, Tensor? attn_bias, float? scale, bool need_bias_grad, "
      "float dropout_p=0.0, Tensor? seed=None) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("pack_attention_mask(Tensor? mask=None, Tensor? mask_logits=None) -> Tensor");
  m.def("masked_attention(Tensor q, Tensor k, Tensor v, Tensor mask_bits, float? scale=None) -> (Tensor, Tensor)");
  m.def(
      "masked_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "Tensor mask_bits, float? scale) -> (Tensor, Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(taskkernels, CPU, m) {
  m.impl("attention", TORCH_BOX(&taskkernels::attention_cpu));
  m.impl("attention_backward", TORCH_BOX(&taskkernels::attention_backward_impl));
  m.impl("pack_attention_mask", TORCH_BOX(&taskkernels::pack_attention_mask_cpu));
  m.impl("masked_attention", TORCH_BOX(&taskkernels::masked_attention_cpu));
  m.impl("masked_attention_backward", TORCH_BOX(&taskkernels::masked_attention_backward_impl));
}

#ifdef TASKKERNELS_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(taskkernels, CUDA, m) {
  m.impl("attention", TORCH_BOX(&taskkernels::attention_cuda));
  m.impl("pack_attention_mask", TORCH_BOX(&taskkernels::pack_attention_mask_cuda));
  m.impl("masked_attention", TORCH_BOX(&taskkernels::masked_attention_cuda));
  m.impl("attention_backward", TORCH_BOX(&taskkernels::attention_backward_cuda));
  m.impl("masked_attention_backward", TORCH_BOX(&taskkernels::masked_attention_backward_cuda));
}
#endif
