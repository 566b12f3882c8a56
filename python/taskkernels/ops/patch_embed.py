"""ViT patch embedding in one op: Conv2d(kernel = stride = P) + flatten + [CLS] + position add."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["patch_embed"]


def patch_embed(
    pixel_values: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    cls_token: Tensor | None = None,
    pos_embed: Tensor | None = None,
) -> Tensor:
    """The whole of Hugging Face ``ViTEmbeddings`` (without dropout) as one op.

    Equivalent to::

        x = F.conv2d(pixel_values, weight, bias, stride=P).flatten(2).transpose(1, 2)
        x = torch.cat([cls_token.expand(B, 1, D), x], dim=1)   # when cls_token is given
        x = x + pos_embed                                       # when pos_embed is given

    Args:
        pixel_values: (B, C, H, W), float16 / bfloat16 / float32 / float64, in NCHW or
            channels_last (any strides). H and W must be positive multiples of P.
        weight: (D, C, P, P), the patch projection (``Conv2d.weight``).
        bias: (D,) or None, added to every patch row (not to the [CLS] row).
        cls_token: None, or D values shaped (1, 1, D) or (D,): prepended as row 0.
        pos_embed: None, or (1, R, D) / (R, D) with R = Np + 1 when ``cls_token`` is given and
            R = Np otherwise, Np = (H / P) * (W / P); added to every row.

    Returns:
        (B, R, D), contiguous, in the dtype of ``pixel_values``.

    All tensors share one dtype and device. Gradients flow to every tensor argument. fp16/bf16
    accumulate in fp32. On CUDA, float32 inputs use TF32 tensor cores exactly when
    ``torch.backends.cudnn.allow_tf32`` is set (PyTorch's default for the convolution this op
    replaces), and exact FP32 arithmetic otherwise.
    """
    return torch.ops.taskkernels.patch_embed(
        pixel_values, weight, bias, cls_token, pos_embed, torch.backends.cudnn.allow_tf32
    )


def _check(pixel_values, weight, bias, cls_token, pos_embed):
    """The C++ op's argument checks, for fake tensors (torch.compile, meta). Returns B, R, D."""
    torch._check(
        pixel_values.dim() == 4,
        lambda: f"taskkernels.patch_embed: pixel_values must be 4-D (B, C, H, W), got shape {tuple(pixel_values.shape)}",
    )
    torch._check(
        weight.dim() == 4 and weight.shape[2] == weight.shape[3],
        lambda: f"taskkernels.patch_embed: weight must be 4-D (D, C, P, P), got shape {tuple(weight.shape)}",
    )
    B, C, H, W = pixel_values.shape
    D, P = weight.shape[0], weight.shape[2]
    torch._check(
        weight.shape[1] == C,
        lambda: f"taskkernels.patch_embed: weight must have C = {C} input channels, got shape {tuple(weight.shape)}",
    )
    torch._check(
        H >= P and W >= P and H % P == 0 and W % P == 0,
        lambda: f"taskkernels.patch_embed: pixel_values' image size {H}x{W} must be a positive multiple of the patch size {P}",
    )
    R = (H // P) * (W // P) + (1 if cls_token is not None else 0)
    for name, t in (("weight", weight), ("bias", bias), ("cls_token", cls_token), ("pos_embed", pos_embed)):
        if t is None:
            continue
        torch._check(
            t.dtype == pixel_values.dtype,
            lambda: f"taskkernels.patch_embed: {name} must have the dtype of pixel_values ({pixel_values.dtype}), got {t.dtype}",
        )
        torch._check(
            t.device == pixel_values.device,
            lambda: f"taskkernels.patch_embed: {name} must be on the device of pixel_values ({pixel_values.device}), got {t.device}",
        )
    if bias is not None:
        torch._check(
            bias.shape == (D,), lambda: f"taskkernels.patch_embed: bias must have shape ({D},), got {tuple(bias.shape)}"
        )
    if cls_token is not None:
        torch._check(
            cls_token.numel() == D and cls_token.shape[-1] == D,
            lambda: f"taskkernels.patch_embed: cls_token must hold one row of D = {D} values, got {tuple(cls_token.shape)}",
        )
    if pos_embed is not None:
        torch._check(
            tuple(pos_embed.shape) in ((1, R, D), (R, D)),
            lambda: f"taskkernels.patch_embed: pos_embed must have shape (1, {R}, {D}) or ({R}, {D}), got {tuple(pos_embed.shape)}",
        )
    return B, R, D


@torch.library.register_fake("taskkernels::patch_embed")
def _patch_embed_fake(pixel_values, weight, bias=None, cls_token=None, pos_embed=None, allow_tf32=False):
    B, R, D = _check(pixel_values, weight, bias, cls_token, pos_embed)
    return pixel_values.new_empty((B, R, D))


@torch.library.register_fake("taskkernels::patch_embed_backward")
def _patch_embed_backward_fake(
    grad_out, pixel_values, weight, has_cls, need_pixel_values, need_weight, need_bias, need_cls_token,
    need_pos_embed, allow_tf32=False,
):
    B, C, H, W = pixel_values.shape
    D, _, P, _ = weight.shape
    R = (H // P) * (W // P) + (1 if has_cls else 0)
    torch._check(
        tuple(grad_out.shape) == (B, R, D),
        lambda: f"taskkernels.patch_embed: grad_out must have shape ({B}, {R}, {D}), got {tuple(grad_out.shape)}",
    )

    def out(need, shape):
        return pixel_values.new_empty(shape if need else (0,))

    return (
        out(need_pixel_values, (B, C, H, W)),
        out(need_weight, (D, C, P, P)),
        out(need_bias, (D,)),
        out(need_cls_token and has_cls, (D,)),
        out(need_pos_embed, (R, D)),
    )


def _setup_context(ctx, inputs, output):
    pixel_values, weight, bias, cls_token, pos_embed, allow_tf32 = inputs
    ctx.save_for_backward(pixel_values, weight)
    ctx.has_bias = bias is not None
    ctx.cls_shape = None if cls_token is None else cls_token.shape
    ctx.pos_shape = None if pos_embed is None else pos_embed.shape
    ctx.allow_tf32 = allow_tf32
    # Which inputs want a gradient (ctx.needs_input_grad drops None inputs under AOT tracing).
    ctx.need = tuple(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)


def _backward(ctx, grad):
    pixel_values, weight = ctx.saved_tensors
    need = ctx.need
    has_cls, has_pos = ctx.cls_shape is not None, ctx.pos_shape is not None
    gx, gw, gb, gc, gp = torch.ops.taskkernels.patch_embed_backward(
        grad, pixel_values, weight, has_cls,
        need[0], need[1], need[2] and ctx.has_bias, need[3] and has_cls, need[4] and has_pos,
        ctx.allow_tf32,
    )
    return (
        gx if need[0] else None,
        gw if need[1] else None,
        gb if need[2] and ctx.has_bias else None,
        gc.view(ctx.cls_shape) if need[3] and has_cls else None,
        gp.view(ctx.pos_shape) if need[4] and has_pos else None,
        None,
    )


torch.library.register_autograd("taskkernels::patch_embed", _backward, setup_context=_setup_context)
