"""Fused attention: a drop-in for ``F.scaled_dot_product_attention`` in the seed models."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["attention", "attention_with_lse"]


def attention_with_lse(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    attn_bias: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`attention` that also returns the per-row log-sum-exp of the masked, scaled scores:
    lse (B, H, Nq), float32 (float64 for float64 inputs), -inf for rows with no visible key
    (computed before dropout)."""
    seed = None
    if dropout_p > 0.0:
        seed = torch.randint(0, 2**62, (), dtype=torch.int64, generator=generator)
    return torch.ops.taskkernels.attention(q, k, v, causal, key_padding_mask, attn_bias, scale, float(dropout_p), seed)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    attn_bias: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """softmax(scale * q k^T + attn_bias, masked) v, without materializing the Nq x Nk scores.

    Args:
        q: (B, H, Nq, D); k, v: (B, Hk, Nk, D), the layout of ``F.scaled_dot_product_attention``.
            Any strides (e.g. a (B, N, H, D) projection viewed with ``transpose(1, 2)``).
            float16, bfloat16, float32 or float64, all the same dtype and device.
            Hk < H (dividing it) is grouped-query attention: query head h reads key/value head
            ``h // (H // Hk)`` in place (no copy), and k, v's gradients sum over their group.
        causal: query i sees key j only when ``j <= i + (Nk - Nq)``: the mask is aligned to the
            *end*, as with a KV cache (Nq < Nk during generation). For Nq == Nk this is the usual
            lower-triangular mask. (``F.scaled_dot_product_attention(is_causal=True)`` aligns it
            to the start instead; the two agree when Nq == Nk.)
        key_padding_mask: (B, Nk) bool, True where the key is padding (``nn.MultiheadAttention``'s
            convention; from an HF ``attention_mask`` pass ``attention_mask == 0``).
        attn_bias: additive, broadcastable to (B, H, Nq, Nk), dtype of q or float32.
        scale: defaults to ``1 / sqrt(D)``.
        dropout_p: attention dropout, as ``F.scaled_dot_product_attention``'s (applied whenever
            > 0; pass 0 in eval): each probability is kept with 1 - dropout_p and scaled by
            1 / (1 - dropout_p), so the mean output is unbiased. The mask comes from a counter-based
            hash of a seed drawn from torch's generator (or ``generator``) and the element's index:
            nothing is stored, and the backward replays the same mask; CPU and CUDA draw the same mask
            from the same seed.
        generator: the torch.Generator the dropout seed is drawn from (default: torch's global one).

    Returns:
        (B, H, Nq, D), contiguous, dtype of q. A row whose keys are all masked is all zeros
        (never NaN).

    Accumulation is in fp32 for fp16/bf16/fp32 (fp64 for fp64). Gradients flow to q, k, v and
    attn_bias (first order); the backward recomputes the probabilities from the saved
    log-sum-exp and stores nothing Nq x Nk unless attn_bias needs its gradient.
    """
    return attention_with_lse(
        q, k, v, causal=causal, key_padding_mask=key_padding_mask, attn_bias=attn_bias, scale=scale,
        dropout_p=dropout_p, generator=generator,
    )[0]


def _check(q, k, v, key_padding_mask, attn_bias, scale, op="attention", grouped_query=True):
    """The C++ op's checks for fake tensors (torch.compile, meta)."""
    def need(cond, msg):
        torch._check(cond, lambda: f"taskkernels.{op}: {msg}")

    need(q.dim() == 4, f"q must be 4-D (B, H, Nq, D), got shape {tuple(q.shape)}")
    B, H, Nq, D = q.shape
    need(grouped_query or (k.dim() == 4 and (k.shape[0], k.shape[1], k.shape[3]) == (B, H, D)),
         f"k must have shape (B, H, Nk, D) = ({B}, {H}, Nk, {D}) to match q, got {tuple(k.shape)}")
    need(k.dim() == 4 and (k.shape[0], k.shape[3]) == (B, D) and k.shape[1] >= 1 and H % k.shape[1] == 0,
         f"k must have shape (B, Hk, Nk, D) = ({B}, Hk, Nk, {D}) with Hk dividing H = {H} "
         f"(Hk < H: grouped-query attention) to match q, got {tuple(k.shape)}")
    Hk, Nk = k.shape[1], k.shape[2]
    need(tuple(v.shape) == (B, Hk, Nk, D),
         f"v must have shape (B, Hk, Nk, D) = ({B}, {Hk}, {Nk}, {D}) to match q and k, got {tuple(v.shape)}")
    for name, t in (("k", k), ("v", v)):
        need(t.dtype == q.dtype, f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
        need(t.device == q.device, f"{name} must be on the device of q ({q.device}), got {t.device}")
    if key_padding_mask is not None:
        need(key_padding_mask.dtype == torch.bool, f"key_padding_mask must be bool (True = padding), got {key_padding_mask.dtype}")
        need(tuple(key_padding_mask.shape) == (B, Nk),
             f"key_padding_mask must have shape (B, Nk) = ({B}, {Nk}), got {tuple(key_padding_mask.shape)}")
        need(key_padding_mask.device == q.device, f"key_padding_mask must be on the device of q ({q.device})")
    if attn_bias is not None:
        need(attn_bias.dtype in (q.dtype, torch.float32), f"attn_bias must have the dtype of q ({q.dtype}) or float32, got {attn_bias.dtype}")
        need(attn_bias.device == q.device, f"attn_bias must be on the device of q ({q.device})")
        shape = tuple(attn_bias.shape)
        need(1 <= len(shape) <= 4 and all(s in (1, t) for s, t in zip(reversed(shape), (Nk, Nq, H, B))),
             f"attn_bias must broadcast to (B, H, Nq, Nk) = ({B}, {H}, {Nq}, {Nk}), got shape {shape}")
    if scale is not None:
        need(math.isfinite(scale), f"scale must be finite, got {scale}")
    return B, H, Nq, D


@torch.library.register_fake("taskkernels::attention")
def _attention_fake(q, k, v, causal=False, key_padding_mask=None, attn_bias=None, scale=None, dropout_p=0.0, seed=None):
    torch._check(0.0 <= dropout_p < 1.0, lambda: f"taskkernels.attention: dropout_p must be in [0, 1), got {dropout_p}")
    B, H, Nq, D = _check(q, k, v, key_padding_mask, attn_bias, scale)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty((B, H, Nq, D)), q.new_empty((B, H, Nq), dtype=lse_dtype)


@torch.library.register_fake("taskkernels::attention_backward")
def _attention_backward_fake(grad_out, q, k, v, out, lse, causal, key_padding_mask, attn_bias, scale, need_bias_grad,
                             dropout_p=0.0, seed=None):
    B, H, Nq, D = _check(q, k, v, key_padding_mask, attn_bias, scale)
    Hk, Nk = k.shape[1], k.shape[2]
    torch._check(tuple(grad_out.shape) == (B, H, Nq, D),
                 lambda: f"taskkernels.attention: grad_out must have shape ({B}, {H}, {Nq}, {D}), got {tuple(grad_out.shape)}")
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    dbias_shape = (B, H, Nq, Nk) if need_bias_grad and attn_bias is not None else (0,)
    return (q.new_empty((B, H, Nq, D)), q.new_empty((B, Hk, Nk, D)), q.new_empty((B, Hk, Nk, D)),
            q.new_empty(dbias_shape, dtype=acc))


def _setup_context(ctx, inputs, output):
    q, k, v, causal, key_padding_mask, attn_bias, scale, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_padding_mask, attn_bias, seed)
    ctx.causal, ctx.scale, ctx.dropout_p = causal, scale, dropout_p
    ctx.bias_needs_grad = attn_bias is not None and attn_bias.requires_grad


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, key_padding_mask, attn_bias, seed = ctx.saved_tensors
    # lse is an output for later kernels' use; its gradient is not supported (never needed by
    # attention() itself, which discards it).
    dq, dk, dv, dbias = torch.ops.taskkernels.attention_backward(
        grad_out, q, k, v, out, lse, ctx.causal, key_padding_mask, attn_bias, ctx.scale, ctx.bias_needs_grad,
        ctx.dropout_p, seed,
    )
    grad_bias = None
    if ctx.bias_needs_grad:  # sum over the dimensions the bias was broadcast along
        grad_bias = dbias.sum_to_size(attn_bias.shape).to(attn_bias.dtype)
    return dq, dk, dv, None, None, grad_bias, None, None, None


torch.library.register_autograd("taskkernels::attention", _backward, setup_context=_setup_context)
