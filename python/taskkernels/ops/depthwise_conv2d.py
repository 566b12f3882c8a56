"""Depthwise 2-D convolution (ConvNeXt's 7x7, GLPN's Mix-FFN 3x3): stride 1, one filter per
channel, NCHW or channels_last in and out."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["depthwise_conv2d", "depthwise_conv2d_layernorm"]

_MAX_K = 31


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int | None = None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=padding, groups=C)`` for a depthwise filter, stride 1.

    Args:
        x: (B, C, H, W), float16 / bfloat16 / float32 / float64, NCHW, channels_last or any
            strides.
        weight: (C, 1, K, K), K from 1 to 31, in x's dtype.
        bias: (C,) or None.
        padding: zeros on each side, in [0, K - 1]; None means 'same' ((K - 1) / 2, K odd).

    Returns:
        (B, C, H + 2 padding - K + 1, W + 2 padding - K + 1) in x's dtype: channels_last when x
        is, contiguous NCHW otherwise. fp16/bf16 accumulate in fp32.

    Gradients for x, weight and bias come from two ops of their own
    (``depthwise_conv2d_backward_input`` / ``_backward_weight``); the weight gradient is summed
    in a fixed order, so it is bitwise reproducible.
    """
    if padding is None:
        K = weight.shape[-1] if weight.dim() == 4 else 0
        if K % 2 == 0:
            raise RuntimeError(f"taskkernels.depthwise_conv2d: padding=None ('same') needs an odd kernel size, got weight of shape {tuple(weight.shape)}")
        padding = (K - 1) // 2
    return torch.ops.taskkernels.depthwise_conv2d(x, weight, bias, int(padding))


def _is_channels_last(x: Tensor) -> bool:
    """The C++ op's layout rule (csrc/ops/depthwise_conv2d.cpp)."""
    B, C, H, W = x.shape
    if C == 1 or H * W == 1 or x.is_contiguous():
        return False
    s = x.stride()
    return s[1] == 1 and (W == 1 or s[3] == C) and (H == 1 or s[2] == W * C) and (B == 1 or s[0] == H * W * C)


def _empty(like: Tensor, shape, channels_last: bool) -> Tensor:
    out = like.new_empty(shape)
    return out.to(memory_format=torch.channels_last) if channels_last else out


def _check(x, weight, padding, name="x"):
    def need(cond, msg):
        torch._check(cond, lambda: f"taskkernels.depthwise_conv2d: {msg}")

    need(x.dim() == 4, f"{name} must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    C = x.shape[1]
    need(weight.dim() == 4 and weight.shape[0] == C and weight.shape[1] == 1 and weight.shape[2] == weight.shape[3],
         f"weight must be (C, 1, K, K) with C = {C}, got shape {tuple(weight.shape)}")
    K = weight.shape[2]
    need(1 <= K <= _MAX_K, f"the kernel size K must be in [1, {_MAX_K}], got weight of shape {tuple(weight.shape)}")
    need(0 <= padding < K, f"padding must be in [0, K - 1 = {K - 1}], got {padding}")
    need(weight.dtype == x.dtype, f"weight must have the dtype of {name} ({x.dtype}), got {weight.dtype}")
    return K


@torch.library.register_fake("taskkernels::depthwise_conv2d")
def _fake(x, weight, bias, padding):
    K = _check(x, weight, padding)
    B, C, H, W = x.shape
    return _empty(x, (B, C, H + 2 * padding - K + 1, W + 2 * padding - K + 1), _is_channels_last(x))


@torch.library.register_fake("taskkernels::depthwise_conv2d_backward_input")
def _fake_backward_input(grad_out, weight, padding, channels_last):
    K = _check(grad_out, weight, padding, "grad_out")
    B, C, Ho, Wo = grad_out.shape
    pad = K - 1 - padding
    return _empty(grad_out, (B, C, Ho + 2 * pad - K + 1, Wo + 2 * pad - K + 1), channels_last and C > 1)


@torch.library.register_fake("taskkernels::depthwise_conv2d_backward_weight")
def _fake_backward_weight(grad_out, x, kernel_size, padding, need_bias):
    C = x.shape[1]
    return x.new_empty((C, 1, kernel_size, kernel_size)), x.new_empty((C if need_bias else 0,))


def _setup_context(ctx, inputs, output):
    x, weight, bias, padding = inputs
    ctx.save_for_backward(x, weight)
    ctx.padding = padding
    ctx.need = (x.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
    ctx.channels_last = _is_channels_last(x)


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.need
    gx = gw = gb = None
    if need_x:
        gx = torch.ops.taskkernels.depthwise_conv2d_backward_input(grad_out, weight, ctx.padding, ctx.channels_last)
    if need_w or need_b:
        gw, gb = torch.ops.taskkernels.depthwise_conv2d_backward_weight(grad_out, x, weight.shape[-1], ctx.padding, need_b)
        gw = gw if need_w else None
        gb = gb if need_b else None
    return gx, gw, gb, None


torch.library.register_autograd("taskkernels::depthwise_conv2d", _backward, setup_context=_setup_context)


def depthwise_conv2d_layernorm(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    ln_weight: Tensor | None,
    ln_bias: Tensor | None,
    eps: float = 1e-6,
    padding: int | None = None,
) -> Tensor:
    """ConvNeXt's block front in one op: ``F.layer_norm(depthwise_conv2d(x, weight, bias,
    padding).permute(0, 2, 3, 1), (C,), ln_weight, ln_bias, eps)``.

    Args:
        x, weight, bias, padding: as :func:`depthwise_conv2d`.
        ln_weight, ln_bias: (C,) or None, the LayerNorm's affine parameters (x's dtype).
        eps: the LayerNorm's epsilon (ConvNeXt: 1e-6).

    Returns:
        (B, H', W', C) contiguous, what ConvNeXt's Linear layers read.

    Gradients for every tensor argument through ``depthwise_conv2d_layernorm_backward`` (from the
    convolution output and LayerNorm statistics the forward keeps); the parameter gradients are
    summed in a fixed order. On CUDA one kernel computes the convolution and the LayerNorm (for
    K = 3, 5, 7 and C <= 1024; otherwise the depthwise kernel, then a LayerNorm kernel).
    """
    if padding is None:
        K = weight.shape[-1] if weight.dim() == 4 else 0
        if K % 2 == 0:
            raise RuntimeError(f"taskkernels.depthwise_conv2d: padding=None ('same') needs an odd kernel size, got weight of shape {tuple(weight.shape)}")
        padding = (K - 1) // 2
    return torch.ops.taskkernels.depthwise_conv2d_layernorm(x, weight, bias, ln_weight, ln_bias, float(eps), int(padding))[0]


@torch.library.register_fake("taskkernels::depthwise_conv2d_layernorm")
def _fused_fake(x, weight, bias, ln_weight, ln_bias, eps, padding):
    K = _check(x, weight, padding)
    B, C, H, W = x.shape
    Ho, Wo = H + 2 * padding - K + 1, W + 2 * padding - K + 1
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.new_empty((B, Ho, Wo, C)), x.new_empty((B, Ho, Wo, C)), x.new_empty((B, Ho, Wo), dtype=acc),
            x.new_empty((B, Ho, Wo), dtype=acc))


@torch.library.register_fake("taskkernels::depthwise_conv2d_layernorm_backward")
def _fused_backward_fake(grad_out, x, weight, ln_weight, conv, mean, rstd, padding, need_x, need_weight, need_bias,
                         need_ln_weight, need_ln_bias):
    C = x.shape[1]
    K = weight.shape[-1]

    def maybe(need, shape, like=None):
        return (like if like is not None else x).new_empty(shape if need else (0,))

    gx = x.new_empty(x.shape).to(memory_format=torch.channels_last) if need_x and _is_channels_last(x) else maybe(need_x, x.shape)
    return (gx, maybe(need_weight, (C, 1, K, K)), maybe(need_bias, (C,)),
            maybe(need_ln_weight and ln_weight is not None, (C,)), maybe(need_ln_bias, (C,)))


def _fused_setup_context(ctx, inputs, output):
    x, weight, bias, ln_weight, ln_bias, eps, padding = inputs
    _, conv, mean, rstd = output
    ctx.save_for_backward(x, weight, ln_weight, conv, mean, rstd)
    ctx.padding = padding
    ctx.need = tuple(t is not None and t.requires_grad for t in (x, weight, bias, ln_weight, ln_bias))


def _fused_backward(ctx, grad_out, grad_conv, grad_mean, grad_rstd):
    x, weight, ln_weight, conv, mean, rstd = ctx.saved_tensors
    grads = torch.ops.taskkernels.depthwise_conv2d_layernorm_backward(
        grad_out.contiguous(), x, weight, ln_weight, conv, mean, rstd, ctx.padding, *ctx.need)
    return tuple(g if need else None for g, need in zip(grads, ctx.need)) + (None, None)


torch.library.register_autograd("taskkernels::depthwise_conv2d_layernorm", _fused_backward,
                                setup_context=_fused_setup_context)
