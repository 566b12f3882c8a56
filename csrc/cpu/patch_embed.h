// CPU patch embedding. Arguments are checked by csrc/ops/patch_embed.cpp before these run.
#pragma once

#include <torch/csrc/stable/tensor.h>

#include <optional>
#include <tuple>

namespace taskkernels::cpu {

using torch::stable::Tensor;

// pixels (B, C, H, W) any strides; weight (D, C, P, P) contiguous; bias (D); cls (D);
// pos (R, D) contiguous. Returns (B, R, D), R = Np + (cls given).
Tensor patch_embed_forward(const Tensor& pixels, const Tensor& weight,
                           const std::optional<Tensor>& bias, const std::optional<Tensor>& cls,
                           const std::optional<Tensor>& pos);

// grad_out (B, R, D) contiguous. Returns (grad_pixels (B, C, H, W), grad_weight (D, C, P, P),
// grad_bias (D), grad_cls (D), grad_pos (R, D)); an output not asked for is an empty (0,) tensor.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> patch_embed_backward(
    const Tensor& grad_out, const Tensor& pixels, const Tensor& weight, bool has_cls,
    bool need_pixels, bool need_weight, bool need_bias, bool need_cls, bool need_pos);

}  // namespace taskkernels::cpu
