// CUDA CTC loss: host-side interface (no torch, no CUDA headers beyond the stream type).
#pragma once

#include <cstddef>
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace taskkernels::cuda {

enum class CtcDType { kHalf, kBFloat16, kFloat, kDouble };

// B sequences; input element (b, t, c) at input[b * sB + t * sT + c * sC]; lengths and targets
// stay on the device (int32 or int64), nothing is copied to the host.
// targets: padded (B, target_stride) when padded, else concatenated (labels of b start after
// those of 0..b-1). max_target_length bounds every target length (it sizes the workspace); a
// sequence whose lengths or labels are out of range gets NaN for its loss and gradient.
// nll (B,) and grad (at grad[b * gB + t * gT + c * gC]) are double for kDouble input, float
// otherwise; grad may be null (forward only). Semantics: cpu/ctc_loss.h.
struct CtcLossParams {
  CtcDType dtype;
  bool from_logits;
  const void* input;
  int64_t sB, sT, sC;
  int64_t B, T, C;
  const void* input_lengths;
  bool input_lengths_int64;
  const void* target_lengths;
  bool target_lengths_int64;
  const void* targets;
  bool targets_int64;
  bool targets_padded;
  int64_t target_stride;  // padded: the row stride of targets; concatenated: its length
  int64_t max_target_length;
  int64_t blank;
  bool zero_infinity;
  void* nll;
  void* grad;
  int64_t gB, gT, gC;
  void* workspace;  // ctc_loss_workspace(p) bytes, 16-byte aligned
};

size_t ctc_loss_workspace(const CtcLossParams& p);
// Returns a cudaError_t.
int ctc_loss(const CtcLossParams& p, cudaStream_t stream);

}  // namespace taskkernels::cuda
