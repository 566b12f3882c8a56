"""Plain-PyTorch references of every taskkernels op. Tests check the ops against these (in
float64) and the benchmark suite times them as the baseline: one definition serves both."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attention", "batched_linear_sum_assignment", "ctc_loss", "ctc_loss_from_logits", "depthwise_conv2d", "depthwise_conv2d_layernorm", "masked_attention", "patch_embed"]


def patch_embed(
    pixel_values: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    cls_token: Tensor | None = None,
    pos_embed: Tensor | None = None,
) -> Tensor:
    """Reference of :func:`taskkernels.patch_embed`: what HF ``ViTEmbeddings`` computes."""
    P = weight.shape[-1]
    x = F.conv2d(pixel_values, weight, bias, stride=P)  # (B, D, H/P, W/P)
    x = x.flatten(2).transpose(1, 2)  # (B, Np, D)
    if cls_token is not None:
        x = torch.cat([cls_token.reshape(1, 1, -1).expand(x.shape[0], 1, -1), x], dim=1)
    if pos_embed is not None:
        x = x + pos_embed.reshape(1, -1, x.shape[-1])
    return x


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    attn_bias: Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    dropout_p: float = 0.0,
    dropout_keep: Tensor | None = None,
):
    """Reference of :func:`taskkernels.attention`: the full score matrix in the inputs' dtype,
    the causal mask aligned to the end (key j visible to query i when j <= i + Nk - Nq), and
    rows with no visible key giving zeros (lse -inf). With dropout, ``dropout_keep`` is the
    (B, H, Nq, Nk) bool keep-mask (taskkernels draws it with ``_C._attention_dropout_keep``).
    k, v with fewer heads than q (grouped-query attention) are repeated to q's heads."""
    Nq, Nk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    if k.dim() == 4 and k.shape[1] != q.shape[1]:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    if attn_bias is not None:
        s = s + attn_bias.to(s.dtype)
    visible = torch.ones(Nq, Nk, dtype=torch.bool, device=q.device)
    if causal:
        visible = torch.ones_like(visible).tril(diagonal=Nk - Nq)
    visible = visible.expand(s.shape)
    if key_padding_mask is not None:
        visible = visible & ~key_padding_mask[:, None, None, :]
    s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s.float() if s.dtype in (torch.float16, torch.bfloat16) else s, dim=-1)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a row with nothing visible: NaN -> 0
    if dropout_p > 0:
        p = p * dropout_keep.to(p.dtype) / (1.0 - dropout_p)
    out = p @ v
    return (out, lse) if return_lse else out


def masked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    mask_logits: Tensor | None = None,
    *,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Reference of :func:`taskkernels.masked_attention`: Mask2Former's rule written out. Blocked
    = ``mask`` or ``mask_logits < 0``; a row blocking every key is unblocked; the (B, Q, HW) mask
    is broadcast over the heads and the full score matrix masked."""
    blocked = mask if mask is not None else mask_logits < 0
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
    Nq, D = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = ((q @ k.transpose(-1, -2)) * scale).masked_fill(blocked[:, None], float("-inf"))
    lse = torch.logsumexp(s.float() if s.dtype in (torch.float16, torch.bfloat16) else s, dim=-1)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # HW == 0: nothing to attend to
    out = p @ v
    return (out, lse) if return_lse else out


def batched_linear_sum_assignment(
    cost: Tensor, num_targets: Tensor | None = None, maximize: bool = False, solver=None
) -> Tensor:
    """Reference of :func:`taskkernels.batched_linear_sum_assignment`: one solve per problem on a
    CPU float64 copy, what DETR's matcher does. ``solver`` defaults to scipy's
    ``linear_sum_assignment`` (the benchmarks also pass taskkernels' drop-in)."""
    if solver is None:
        from scipy.optimize import linear_sum_assignment as solver

    B, N, M = cost.shape
    out = torch.full((B, N), -1, dtype=torch.int64)
    c = cost.detach().to("cpu", torch.float64).numpy()
    for b in range(B):
        m = M if num_targets is None else int(num_targets[b])
        rows, cols = solver(c[b, :, :m], maximize=maximize)
        out[b, torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.int64)
    return out.to(cost.device)


def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean", zero_infinity=False):
    """Reference of :func:`taskkernels.ctc_loss`: ``F.ctc_loss`` itself."""
    return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=blank, reduction=reduction,
                      zero_infinity=zero_infinity)


def ctc_loss_from_logits(logits, targets, input_lengths, target_lengths, blank=0, reduction="mean",
                         zero_infinity=False):
    """Reference of :func:`taskkernels.ctc_loss_from_logits`: Hugging Face ``Wav2Vec2ForCTC``'s
    path, log_softmax in float32 (float64 for float64 logits), time-major, then ``F.ctc_loss``."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    log_probs = F.log_softmax(logits.to(acc), dim=-1).transpose(0, 1)
    return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=blank, reduction=reduction,
                      zero_infinity=zero_infinity)


def depthwise_conv2d(x, weight, bias=None, padding=None):
    """Reference of :func:`taskkernels.depthwise_conv2d`: ``F.conv2d`` with groups = C."""
    padding = (weight.shape[-1] - 1) // 2 if padding is None else padding
    return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])


def depthwise_conv2d_layernorm(x, weight, bias, ln_weight, ln_bias, eps=1e-6, padding=None):
    """Reference of :func:`taskkernels.depthwise_conv2d_layernorm`: HF ConvNeXt's dwconv, permute,
    LayerNorm."""
    y = depthwise_conv2d(x, weight, bias, padding).permute(0, 2, 3, 1)
    return F.layer_norm(y, (y.shape[-1],), ln_weight, ln_bias, eps)
