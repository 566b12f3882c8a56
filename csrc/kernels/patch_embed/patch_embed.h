// CUDA patch embedding: the interface the torch glue calls. No torch headers here or in the
// .cu files: raw pointers, sizes, strides and a stream.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace taskkernels::cuda {

enum class DType { kHalf, kBFloat16, kFloat, kDouble };

// Shapes: pixels (B, C, H, W) with any strides; weight (D, C, P, P) contiguous; bias (D);
// cls (D); pos (R, D) contiguous, R = Np + (cls != nullptr), Np = (H / P) * (W / P);
// out (B, R, D) contiguous. bias, cls and pos may be null.
struct PatchEmbedShape {
  DType dtype;
  bool allow_tf32;  // float32 only: tensor cores in TF32 instead of exact FP32 FMAs
  int64_t B, C, H, W, P, D;
  int64_t sB, sC, sH, sW;  // element strides of pixels
  bool has_cls;
  int64_t num_patches() const { return (H / P) * (W / P); }
  int64_t rows() const { return num_patches() + (has_cls ? 1 : 0); }
  int64_t patch_len() const { return C * P * P; }
};

struct PatchEmbedForward {
  PatchEmbedShape s;
  const void* pixels;
  const void* weight;
  const void* bias;  // nullable
  const void* cls;   // nullable; required when s.has_cls
  const void* pos;   // nullable
  void* out;
};

// Gradients. Each output pointer may be null (not needed). grad_pixels is (B, C, H, W)
// contiguous; grad_weight (D, C, P, P); grad_bias and grad_cls (D); grad_pos (R, D).
struct PatchEmbedBackward {
  PatchEmbedShape s;
  const void* grad_out;  // (B, R, D) contiguous
  const void* pixels;
  const void* weight;
  void* grad_pixels;
  void* grad_weight;
  void* grad_bias;
  void* grad_cls;
  void* grad_pos;
  void* workspace;  // patch_embed_backward_workspace(p) bytes, 256-byte aligned
};

cudaError_t patch_embed_forward(const PatchEmbedForward& p, cudaStream_t stream);
size_t patch_embed_backward_workspace(const PatchEmbedBackward& p);
cudaError_t patch_embed_backward(const PatchEmbedBackward& p, cudaStream_t stream);

}  // namespace taskkernels::cuda
