// Parameters of the fused attention forward, shared by the CPU and CUDA implementations.
// Torch-free: pointers, sizes, strides.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace taskkernels {

enum class AttnDType { kHalf, kBFloat16, kFloat, kDouble };

// The score dot products q_i . k_j (and dO_i . v_j in the backward) are summed in chunks of this
// many terms, each chunk's sum then added to the total, on the CPU and in the CUDA SIMT kernels
// alike: one running float32 sum over D = 256 terms put the scores' rounding, and with it the
// gradients', at 3-5x PyTorch's (whose GEMMs block their sums). D <= 64 is one chunk: unchanged.
constexpr int kAttentionDotChunk = 64;

// out[b, h, i] = softmax_j(scale * q_i . k_j + bias[b, h, i, j], masked) @ v, computed in tiles
// with an online softmax: nothing Nq x Nk is ever stored.
// Masks: key_padding[b, j] true = key j is padding (ignored); mask_bits (below); causal: key j is
// visible to query i when j <= i + (Nk - Nq) (aligned to the end, as with a KV cache). A row with
// no visible key gets out = 0 and lse = -inf.
//
// Grouped-query attention: k and v have Hk heads, Hk dividing H; query head h reads key/value
// head h / (H / Hk) (kv_head below), in place. Hk == H is ordinary multi-head attention.
struct AttentionParams {
  AttnDType dtype;
  int64_t B, H, Nq, Nk, D;
  int64_t Hk;  // key/value heads
  const void* q;
  const void* k;
  const void* v;
  int64_t q_stride[4], k_stride[4], v_stride[4];  // element strides (b, h, n, d); k, v: h < Hk
  const bool* key_padding;                       // nullable; (B, Nk)
  int64_t kp_stride[2];
  const void* bias;  // nullable; broadcast through zero strides; dtype of q or float32
  bool bias_is_float32;
  int64_t bias_stride[4];
  bool causal;
  // Per-query key mask shared by all heads (masked attention, Mask2Former): bit (j % 64) of word
  // mask_bits[b * mb_stride[0] + i * mb_stride[1] + j / 64] set = key j is blocked for query i.
  // Nullable. Rows blocking every key are cleared by the packing step (they attend everywhere).
  const uint64_t* mask_bits;
  int64_t mb_stride[2];
  double scale;
  // Attention dropout (common/dropout.h): probabilities kept with 1 - dropout_p and scaled by
  // 1 / (1 - dropout_p); element (b, h, i, j) keyed by ((b * H + h) * Nq + i) * Nk + j.
  double dropout_p;
  uint64_t seed;
  void* out;  // (B, H, Nq, D) contiguous, dtype of q
  void* lse;  // (B, H, Nq) contiguous, float32 (float64 for float64 inputs), natural log
};

// The key/value head query head h reads.
TK_HOST_DEVICE int64_t kv_head(const AttentionParams& p, int64_t h) { return h / (p.H / p.Hk); }

// Gradients of the forward above, recomputing the probabilities from the saved lse (nothing
// Nq x Nk is stored unless the bias gradient is asked for, which is that size by nature).
struct AttentionBackwardParams {
  AttentionParams fwd;   // the forward's inputs; fwd.out / fwd.lse hold the saved results
  const void* grad_out;  // (B, H, Nq, D), any strides
  int64_t grad_out_stride[4];
  void* dq;     // (B, H, Nq, D) contiguous, dtype of q
  void* dk;     // (B, Hk, Nk, D) contiguous: summed over the H / Hk query heads of each group
  void* dv;     // (B, Hk, Nk, D) contiguous
  void* dbias;  // nullable; (B, H, Nq, Nk) contiguous, float32 (float64 for float64 inputs)
};

// The packing of a per-query mask into AttentionParams::mask_bits: from a bool mask (true =
// blocked) or from mask logits (blocked where logit < 0, i.e. sigmoid(logit) < 0.5; NaN is not
// blocked). A row that would block every key is written as all zeros (it attends everywhere).
enum class MaskSource { kBool, kHalf, kBFloat16, kFloat, kDouble };

struct MaskPackParams {
  MaskSource source;
  int64_t B, Q, N;        // the mask is (B, Q, N)
  const void* src;
  int64_t src_stride[3];  // element strides
  uint64_t* bits;         // (B, Q, ceil(N / 64)) contiguous
};

}  // namespace taskkernels
