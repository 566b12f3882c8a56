"""Masked attention: Mask2Former's cross-attention, each query restricted to its predicted mask."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["masked_attention", "pack_attention_mask"]


def pack_attention_mask(mask: Tensor | None = None, mask_logits: Tensor | None = None) -> Tensor:
    """The packed form of a per-query key mask that :func:`masked_attention` runs on.

    Args:
        mask: (B, Q, N) bool, True where key j is blocked for query i (Mask2Former's convention),
        mask_logits: or (B, Q, N) floating mask logits: blocked where ``logit < 0``, i.e. where
            ``sigmoid(logit) < 0.5`` (NaN is not blocked). Exactly one of the two.

    Returns:
        (B, Q, ceil(N / 64)) int64: bit ``j % 64`` of word ``j // 64`` set when key j is blocked.
        A row that blocks every key comes out all zeros: such a query attends everywhere, as in
        Mask2Former. Not differentiable (a mask has no gradient). Pack once and pass the result
        as ``mask_bits`` when several calls share a mask (e.g. the heads of several layers).
    """
    if (mask is None) == (mask_logits is None):
        raise ValueError("taskkernels.pack_attention_mask: pass exactly one of mask and mask_logits")
    if mask_logits is not None:
        mask_logits = mask_logits.detach()
    return torch.ops.taskkernels.pack_attention_mask(mask, mask_logits)


def masked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    mask_logits: Tensor | None = None,
    *,
    mask_bits: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """softmax(scale * q k^T, blocked keys hidden per query) v, the same mask for every head.

    Mask2Former's decoder cross-attention: query i of image b sees only the pixels j where its
    previous mask prediction is on. The mask is (B, Q, HW), never expanded over heads; the kernels
    read it as packed bits and skip key tiles that every query of a tile blocks, so the cost falls
    with the mask's density.

    Args:
        q: (B, H, Q, D); k, v: (B, H, HW, D), any strides, float16/bfloat16/float32/float64,
            same dtype and device.
        mask: (B, Q, HW) bool, True = blocked (what ``nn.MultiheadAttention``'s ``attn_mask``
            takes in HF's Mask2Former, without its repeat over heads).
        mask_logits: or (B, Q, HW) mask logits (the mask predictor's output resized to the
            feature level): blocked where ``logit < 0`` (= ``sigmoid(logit) < 0.5``).
        mask_bits: or the packed mask from :func:`pack_attention_mask`. Exactly one of the three.
        scale: defaults to ``1 / sqrt(D)``.

    A query whose mask blocks every key attends to every key instead (Mask2Former's rule).

    Returns:
        (B, H, Q, D), contiguous, dtype of q. Accumulation in fp32 (fp64 for fp64). Gradients
        flow to q, k and v; the backward recomputes the probabilities and stores nothing Q x HW.
    """
    given = sum(x is not None for x in (mask, mask_logits, mask_bits))
    if given != 1:
        raise ValueError("taskkernels.masked_attention: pass exactly one of mask, mask_logits and mask_bits")
    if mask_bits is None:
        src, name = (mask, "mask") if mask is not None else (mask_logits, "mask_logits")
        if q.dim() == 4 and k.dim() == 4:
            want = (q.shape[0], q.shape[2], k.shape[2])
            if src.dim() != 3 or tuple(src.shape) != want:
                raise RuntimeError(
                    f"taskkernels.masked_attention: {name} must have shape (B, Q, HW) = {want} "
                    f"to match q {tuple(q.shape)} and k {tuple(k.shape)}, got {tuple(src.shape)}"
                )
        mask_bits = pack_attention_mask(mask, mask_logits)
    return torch.ops.taskkernels.masked_attention(q, k, v, mask_bits, scale)[0]


def _need(cond, msg):
    torch._check(cond, lambda: f"taskkernels.masked_attention: {msg}")


def _check(q, k, v, mask_bits, scale):
    """The C++ op's checks for fake tensors (torch.compile, meta)."""
    from .attention import _check as check_attention

    B, H, Nq, D = check_attention(q, k, v, None, None, scale, op="masked_attention", grouped_query=False)
    W = (k.shape[2] + 63) // 64
    _need(mask_bits.dtype == torch.int64 and tuple(mask_bits.shape) == (B, Nq, W),
          f"mask_bits must be the int64 (B, Nq, ceil(Nk / 64)) = ({B}, {Nq}, {W}) packing of the mask "
          f"(pack_attention_mask), got {mask_bits.dtype} of shape {tuple(mask_bits.shape)}")
    _need(mask_bits.device == q.device, f"mask_bits must be on the device of q ({q.device}), got {mask_bits.device}")
    return B, H, Nq, D


@torch.library.register_fake("taskkernels::pack_attention_mask")
def _pack_fake(mask=None, mask_logits=None):
    _need((mask is None) != (mask_logits is None), "pass exactly one of mask and mask_logits")
    src = mask if mask is not None else mask_logits
    _need(src.dim() == 3, f"{'mask' if mask is not None else 'mask_logits'} must be 3-D (B, Q, HW), got shape {tuple(src.shape)}")
    if mask is not None:
        _need(mask.dtype == torch.bool, f"mask must be bool (True = blocked), got {mask.dtype}")
    else:
        _need(mask_logits.is_floating_point(), f"mask_logits must be floating, got {mask_logits.dtype}")
    B, Q, N = src.shape
    return src.new_empty((B, Q, (N + 63) // 64), dtype=torch.int64)


@torch.library.register_fake("taskkernels::masked_attention")
def _masked_attention_fake(q, k, v, mask_bits, scale=None):
    B, H, Nq, D = _check(q, k, v, mask_bits, scale)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty((B, H, Nq, D)), q.new_empty((B, H, Nq), dtype=lse_dtype)


@torch.library.register_fake("taskkernels::masked_attention_backward")
def _masked_attention_backward_fake(grad_out, q, k, v, out, lse, mask_bits, scale):
    B, H, Nq, D = _check(q, k, v, mask_bits, scale)
    _need(tuple(grad_out.shape) == (B, H, Nq, D), f"grad_out must have shape ({B}, {H}, {Nq}, {D}), got {tuple(grad_out.shape)}")
    Nk = k.shape[2]
    return q.new_empty((B, H, Nq, D)), q.new_empty((B, H, Nk, D)), q.new_empty((B, H, Nk, D))


def _setup_context(ctx, inputs, output):
    q, k, v, mask_bits, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, mask_bits)
    ctx.scale = scale


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, mask_bits = ctx.saved_tensors
    dq, dk, dv = torch.ops.taskkernels.masked_attention_backward(grad_out, q, k, v, out, lse, mask_bits, ctx.scale)
    return dq, dk, dv, None, None


torch.library.register_autograd("taskkernels::masked_attention", _backward, setup_context=_setup_context)
