"""``F.scaled_dot_product_attention``'s contract on taskkernels' attention kernels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import attention

__all__ = ["scaled_dot_product_attention"]

_OP = "taskkernels.scaled_dot_product_attention"


def _fail(msg: str):
    raise RuntimeError(f"{_OP}: {msg}")


def _with_rank(t: Tensor, rank: int) -> Tensor:
    """t viewed with leading size-1 dimensions up to ``rank`` dimensions."""
    return t[(None,) * (rank - t.dim())] if t.dim() < rank else t


def _broadcast(what: str, *shapes) -> tuple:
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        _fail(f"the batch dimensions of {what} do not broadcast: " + ", ".join(str(tuple(s)) for s in shapes))


def _flatten(t: Tensor, outer: tuple, rest: tuple) -> Tensor:
    """t (broadcastable to outer + rest) expanded and viewed as (prod(outer),) + rest; a copy only
    when the broadcast dimensions cannot be merged in place."""
    return t.expand(*outer, *rest).reshape(math.prod(outer), *rest)


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` with PyTorch's semantics, on
    taskkernels' fused attention (CPU and CUDA; float16, bfloat16, float32, float64).

    Args:
        query: (..., L, E); key: (..., S, E); value: (..., S, Ev). The leading dimensions
            broadcast against each other as SDPA broadcasts them (a 3-D query with 4-D keys, a
            key shared by all heads, ...). Broadcast dimensions are read in place.
        attn_mask: broadcastable to (..., L, S): bool (True = takes part) or additive float
            (float32 or the dtype of query; its gradient is computed). A mask that is the same
            for every query and head becomes the kernels' key padding mask; any other is read as
            an additive bias at its own shape: (B, H, L, S) is never built unless the mask has it.
        dropout_p: dropout on the attention probabilities, applied whenever > 0 as SDPA applies
            it (pass 0 in eval). The mask is drawn from a seed taken from torch's generator; it
            is not SDPA's mask, only its distribution is the same.
        is_causal: query i sees key j when j <= i (aligned to the start, as SDPA's; for L < S the
            keys past L are seen by no query). Raises together with ``attn_mask``, as SDPA does.
        scale: defaults to 1 / sqrt(E).
        enable_gqa: key and value may have fewer heads (dimension -3) than query, dividing them:
            each key/value head serves a group of consecutive query heads. The kernels read the
            shared heads in place (no ``repeat_interleave`` copy), forward and backward.

    Returns:
        (..., L, Ev) in the dtype of query.

    Differences from SDPA: a query row that sees no key (every mask entry False, or -inf) gives
    zeros, never NaN (SDPA gives zeros for a bool mask and NaN for an all -inf float row).
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{_OP}: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            _fail(f"query, key and value must be at least 2-D (..., N, E), got {name} of shape {tuple(t.shape)}")
    device_type = query.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        # As SDPA under autocast: floating inputs of any mix arrive in the autocast dtype.
        low = torch.get_autocast_dtype(device_type)
        query, key, value = (t.to(low) if t.dtype in (torch.float16, torch.bfloat16, torch.float32) else t
                             for t in (query, key, value))
    if not (query.dtype == key.dtype == value.dtype):
        _fail(f"query, key and value must have the same dtype, got {query.dtype}, {key.dtype} and {value.dtype}")
    L, E = query.shape[-2:]
    S, Ev = value.shape[-2:]
    if key.shape[-1] != E:
        _fail(f"key must have the head dimension E = {E} of query, got key of shape {tuple(key.shape)}")
    if key.shape[-2] != S:
        _fail(f"key and value must have the same length S, got key of shape {tuple(key.shape)} "
              f"and value of shape {tuple(value.shape)}")
    if not 0.0 <= dropout_p <= 1.0:
        _fail(f"dropout_p must be in [0, 1], got {dropout_p}")
    if is_causal and attn_mask is not None:
        _fail("Explicit attn_mask should not be set when is_causal=True (SDPA's rule)")
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"{_OP}: attn_mask must be a Tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype not in (torch.bool, torch.float32, query.dtype):
            _fail(f"attn_mask must be bool (True = takes part), float32 or the dtype of query ({query.dtype}), "
                  f"got {attn_mask.dtype}")

    # Batch dimensions: (outer..., heads), each tensor viewed at the common rank (at least one
    # batch dimension: the heads).
    rank = max(query.dim(), key.dim(), value.dim(), 3)
    q, k, v = (_with_rank(t, rank) for t in (query, key, value))
    qb, kb, vb = q.shape[:-2], k.shape[:-2], v.shape[:-2]
    Hq, Hk = qb[-1], kb[-1]
    if enable_gqa and Hk != Hq:
        if vb[-1] != Hk:
            _fail(f"key and value must have the same number of heads, got key of shape {tuple(key.shape)} "
                  f"and value of shape {tuple(value.shape)}")
        if Hq % Hk != 0:
            _fail(f"the number of heads in key and value ({Hk}) must divide the number of heads in query ({Hq}) "
                  "with enable_gqa=True")
        outer = _broadcast("query, key and value", qb[:-1], kb[:-1], vb[:-1])
        kv_heads = Hk
    else:
        full = _broadcast("query, key and value", qb, kb, vb)
        outer, Hq = full[:-1], full[-1]
        # Key and value shared by every head: one key/value head for all (grouped, in place).
        kv_heads = 1 if kb[-1] == 1 and vb[-1] == 1 else Hq
    batch = (*outer, Hq)
    if attn_mask is not None:
        mask_shape = (*batch, L, S)
        if attn_mask.dim() > len(mask_shape) or _broadcast("attn_mask", attn_mask.shape, mask_shape) != mask_shape:
            _fail(f"attn_mask of shape {tuple(attn_mask.shape)} must broadcast to (..., L, S) = {mask_shape}")
    if dropout_p == 1.0:  # SDPA's limit: every probability dropped, zeros (and zero gradients)
        return scaled_dot_product_attention(query, key, value, attn_mask, 0.0, is_causal, scale, enable_gqa) * 0.0

    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    D = max(E, Ev)
    q4 = _flatten(q, outer, (Hq, L, E))
    k4 = _flatten(k, outer, (kv_heads, S, E))
    v4 = _flatten(v, outer, (kv_heads, S, Ev))
    if E < D:  # value's head dimension is larger: zero columns change no score
        q4, k4 = F.pad(q4, (0, D - E)), F.pad(k4, (0, D - E))
    elif Ev < D:  # zero value columns, cut from the output below
        v4 = F.pad(v4, (0, D - Ev))

    kw = {}
    if is_causal and L > 0 and S > 0:
        if L <= S:
            # Keys past L are seen by no query: the square causal problem on the first L keys.
            k4, v4, kw = k4[:, :, :L], v4[:, :, :L], dict(causal=True)
        else:
            # L > S: rows i >= S see every key; query i sees key j <= i.
            rows = torch.arange(L, device=query.device)[:, None]
            cols = torch.arange(S, device=query.device)[None, :]
            kw = dict(attn_bias=torch.zeros((), device=query.device).masked_fill(cols > rows, float("-inf")))
    elif attn_mask is not None:
        kw = _mask_arguments(_with_rank(attn_mask, len(batch) + 2), outer, Hq, L, S)

    out = attention(q4, k4, v4, scale=scale, dropout_p=float(dropout_p), **kw)
    if Ev < D:
        out = out[..., :Ev]
    out = out.reshape(*batch, L, Ev)
    # Without batch dimensions in any input the head dimension was added here: drop it.
    return out[0] if max(query.dim(), key.dim(), value.dim()) == 2 else out


def _mask_arguments(mask: Tensor, outer: tuple, H: int, L: int, S: int) -> dict:
    """SDPA's mask (outer..., H, L, S)-broadcastable, rank len(outer) + 3, as the kernels' key
    padding mask (when it is the same for every query and head) or additive bias."""
    Hm, Lm = mask.shape[-3], mask.shape[-2]
    if mask.dtype == torch.bool:
        if Hm == 1 and Lm == 1:  # one row of keys per batch entry: key padding (True = padding)
            return dict(key_padding_mask=~_flatten(mask, outer, (1, 1, S)).reshape(-1, S))
        mask = torch.zeros((), dtype=torch.float32, device=mask.device).masked_fill(~mask, float("-inf"))
    if all(s == 1 for s in mask.shape[:-3]):  # the same for every batch entry
        return dict(attn_bias=mask.reshape(mask.shape[-3:]))
    return dict(attn_bias=_flatten(mask, outer, tuple(mask.shape[-3:])))
