// CUDA fused attention (forward and backward): the interface the torch glue calls. Torch-free.
#pragma once

#include <cuda_runtime_api.h>

#include "common/attention_params.h"

namespace taskkernels::cuda {

// Largest head dimension the CUDA kernels take.
constexpr int64_t kMaxAttentionHeadDim = 256;

// Writes p.out and p.lse on `stream`. Picks the tensor-core kernel where it applies and the
// exact (FMA) kernel otherwise.
cudaError_t attention_forward(const AttentionParams& p, cudaStream_t stream);

// Gradients (AttentionBackwardParams, dropout replayed from its seed): dq, dk, dv, and dS into dbias when non-null
// (which must arrive zero-filled). `delta` is a workspace of B * H * Nq accumulators (float, or
// double for float64 inputs). Deterministic: no atomics.
cudaError_t attention_backward(const AttentionBackwardParams& p, void* delta, cudaStream_t stream);

// Passes 2 and 3 of the backward (dK/dV, then dQ and dbias) on tensor cores: fp16 / bf16, head
// dims up to 128; `delta` = rowsum(dO * O) per query row, float (pass 1, done by the caller).
cudaError_t attention_backward_mma(const AttentionBackwardParams& p, const float* delta, cudaStream_t stream);

// Packs a per-query mask (bool or logits) into bits: MaskPackParams (common/attention_params.h).
cudaError_t pack_attention_mask(const MaskPackParams& p, cudaStream_t stream);

// The exact kernel alone (every dtype, D <= kMaxAttentionHeadDim): one warp per query row.
cudaError_t attention_forward_simt(const AttentionParams& p, cudaStream_t stream);

}  // namespace taskkernels::cuda
