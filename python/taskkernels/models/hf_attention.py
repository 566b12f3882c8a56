"""taskkernels.attention as a Hugging Face attention implementation.

Models whose attention goes through transformers' ``AttentionInterface`` (DETR, GLPN, and most
models of transformers 5) run on our kernel once :func:`register` has run and the model uses
``attn_implementation="taskkernels"``::

    from taskkernels.models import hf_attention
    hf_attention.register()
    model = transformers.AutoModel.from_config(config, attn_implementation="taskkernels")
    # or, for a model already built: hf_attention.use_taskkernels_attention(model)

Masks: a padding-only (bidirectional) mask is built as (B, 1, 1, Nk) and becomes our
``key_padding_mask``; any other mask comes from transformers' SDPA mask builder (boolean, True =
attend) and becomes an additive float32 bias (or our key padding mask when it is the same for
every query); an additive float mask passes through as the bias.

What the kernel cannot do (softcap, sliding windows, attention sinks, T5's position bias, devices
other than CPU and CUDA, ...) :func:`attention_forward` refuses with NotImplementedError. The
function registered with transformers, :func:`attention_forward_or_fallback`, runs transformers'
own attention there instead (the module's ``_taskkernels_fallback``: "sdpa", the default, or
"eager"), with a warning: never a wrong result.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.attention import attention

__all__ = ["NAME", "attention_forward", "attention_forward_or_fallback", "mask_builder", "register", "unsupported",
           "use_taskkernels_attention"]

NAME = "taskkernels"


def _mask_arguments(mask: Tensor | None, B: int, Nk: int, dtype: torch.dtype) -> dict:
    if mask is None:
        return {}
    if mask.dtype != torch.bool:  # additive (0 / large negative), broadcastable to (B, H, Nq, Nk)
        # As it comes when the kernel takes it (the model's dtype, or float32): a float64 model's
        # bias (Swin's relative positions) keeps its precision.
        return dict(attn_bias=mask if mask.dtype in (dtype, torch.float32) else mask.float())
    if mask.dim() == 4 and mask.shape[1] == 1 and (mask.shape[2] == 1 or mask.stride(2) == 0):
        return dict(key_padding_mask=~mask[:, 0, 0, :].expand(B, Nk))  # the same keys hidden for every query
    return dict(attn_bias=torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(~mask, float("-inf")))

_UNSUPPORTED_KWARGS = ("softcap", "position_bias", "sliding_window", "s_aux")


def unsupported(module: nn.Module, query: Tensor, key: Tensor, attention_mask: Tensor | None,
                is_causal: bool | None, kwargs: dict) -> str | None:
    """Why taskkernels.attention cannot run this attention call (None when it can)."""
    for name in _UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            return f"{name} is not supported"
    if query.device.type not in ("cpu", "cuda"):
        return f"no kernel for {query.device.type} tensors"
    if query.device.type == "cuda" and query.shape[-1] > 256:
        return f"on CUDA the head dimension must be at most 256, got {query.shape[-1]}"
    Nq, Nk = query.shape[2], key.shape[2]
    if is_causal is None:  # transformers' SDPA rule
        is_causal = Nq > 1 and attention_mask is None and getattr(module, "is_causal", True)
    if is_causal and Nq != Nk and attention_mask is None:
        return ("a causal call with Nq != Nk and no mask is ambiguous (transformers' SDPA aligns it to the start, "
                "taskkernels to the end)")
    return None


def _eager_mask(module: nn.Module, query: Tensor, key: Tensor, mask: Tensor | None, is_causal: bool | None):
    """The additive mask an eager attention function needs, from what the SDPA-style mask builder
    gave (bool, True = attend, or None where SDPA's is_causal stands in for the causal mask)."""
    Nq, Nk = query.shape[2], key.shape[2]
    if mask is None:
        if is_causal is None:
            is_causal = Nq > 1 and getattr(module, "is_causal", True)
        if not is_causal:
            return None
        mask = torch.ones(Nq, Nk, dtype=torch.bool, device=query.device).tril()[None, None]  # SDPA's is_causal
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill_(~mask, torch.finfo(query.dtype).min)


def _fallback(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
              dropout: float, scaling: float | None, is_causal: bool | None, kwargs: dict):
    """transformers' own attention for this call: SDPA, or the module's eager function (when the
    model ran eager before taskkernels.optimize)."""
    import sys

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if getattr(module, "_taskkernels_fallback", "sdpa") == "eager":
        eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        if eager is not None:
            mask = _eager_mask(module, query, key, attention_mask, is_causal)
            return eager(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def attention_forward_or_fallback(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                                  attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                                  is_causal: bool | None = None, **kwargs):
    """:func:`attention_forward` where it can run; elsewhere transformers' own attention (SDPA, or
    eager for modules tagged ``_taskkernels_fallback = "eager"``), with a warning. An eager model
    asked for its attention weights (``output_attentions``) gets them from its eager function."""
    import warnings

    reason = unsupported(module, query, key, attention_mask, is_causal, kwargs)
    wants_weights = kwargs.get("output_attentions") and getattr(module, "_taskkernels_fallback", "sdpa") == "eager"
    if reason is None and not wants_weights:
        return attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    if reason is not None:
        warnings.warn(f"taskkernels attention: {type(module).__name__}: {reason}; running transformers' "
                      f"{getattr(module, '_taskkernels_fallback', 'sdpa')} attention there instead", stacklevel=2)
    return _fallback(module, query, key, value, attention_mask, dropout, scaling, is_causal, kwargs)


def attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                      dropout: float = 0.0, scaling: float | None = None, is_causal: bool | None = None,
                      **kwargs) -> tuple[Tensor, None]:
    """transformers' attention-function signature: (B, H, N, D) inputs; returns ((B, Nq, H, D), None)."""
    reason = unsupported(module, query, key, attention_mask, is_causal, kwargs)
    if reason is not None:
        raise NotImplementedError(f"taskkernels attention: {reason}")
    # Grouped-query attention (key/value with H / num_key_value_groups heads): the kernels read the
    # shared heads in place, no repeat_interleave copy.
    B, _, Nq, _ = query.shape
    Nk = key.shape[2]
    if is_causal is None:  # transformers' SDPA rule
        is_causal = Nq > 1 and attention_mask is None and getattr(module, "is_causal", True)
    out = attention(query, key, value, causal=bool(is_causal), scale=scaling, dropout_p=dropout,
                    **_mask_arguments(attention_mask, B, Nk, query.dtype))
    return out.transpose(1, 2), None


def mask_builder(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                 mask_function=None, attention_mask: Tensor | None = None, local_size: int | None = None,
                 use_vmap: bool = False, **kwargs):
    """transformers' mask-builder signature. Padding-only masks stay (B, 1, 1, Nk) (one row per
    batch entry instead of Nq); everything else is transformers' SDPA mask."""
    from transformers import masking_utils as mu

    if mask_function is mu.bidirectional_mask_function and local_size is None and not use_vmap:
        padding = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset)
        return None if padding is None else padding[:, None, None, :].bool()
    if mask_function is None:
        mask_function = mu.causal_mask_function
    return mu.sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                        kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                        local_size=local_size, use_vmap=use_vmap, **kwargs)


def register(name: str = NAME) -> str:
    """Registers the attention function (:func:`attention_forward_or_fallback`) and its mask builder
    under ``name``; idempotent. Returns the name."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(name, attention_forward_or_fallback)
    AttentionMaskInterface.register(name, mask_builder)
    return name


def use_taskkernels_attention(model: nn.Module) -> nn.Module:
    """Switches an HF model (and its sub-models) to the registered taskkernels attention, in place."""
    model.set_attn_implementation(register())
    return model
