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
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.attention import attention

__all__ = ["NAME", "attention_forward", "mask_builder", "register", "use_taskkernels_attention"]

NAME = "taskkernels"


def _mask_arguments(mask: Tensor | None, B: int, Nk: int) -> dict:
    if mask is None:
        return {}
    if mask.dtype != torch.bool:  # additive (0 / large negative), broadcastable to (B, H, Nq, Nk)
        return dict(attn_bias=mask if mask.dtype == torch.float32 else mask.float())
    if mask.dim() == 4 and mask.shape[1] == 1 and (mask.shape[2] == 1 or mask.stride(2) == 0):
        return dict(key_padding_mask=~mask[:, 0, 0, :].expand(B, Nk))  # the same keys hidden for every query
    return dict(attn_bias=torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(~mask, float("-inf")))


def attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                      dropout: float = 0.0, scaling: float | None = None, is_causal: bool | None = None,
                      **kwargs) -> tuple[Tensor, None]:
    """transformers' attention-function signature: (B, H, N, D) inputs; returns ((B, Nq, H, D), None)."""
    for name in ("softcap", "position_bias", "sliding_window", "s_aux"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"taskkernels attention: {name} is not supported")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    B, _, Nq, _ = query.shape
    Nk = key.shape[2]
    if is_causal is None:  # transformers' SDPA rule
        is_causal = Nq > 1 and attention_mask is None and getattr(module, "is_causal", True)
    if is_causal and Nq != Nk and attention_mask is None:
        raise NotImplementedError("taskkernels attention: a causal call with Nq != Nk and no mask is ambiguous "
                                  "(transformers' SDPA aligns it to the start, taskkernels to the end)")
    out = attention(query, key, value, causal=bool(is_causal), scale=scaling, dropout_p=dropout,
                    **_mask_arguments(attention_mask, B, Nk))
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
    """Registers the attention function and its mask builder under ``name``; idempotent.
    Returns the name."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, mask_builder)
    return name


def use_taskkernels_attention(model: nn.Module) -> nn.Module:
    """Switches an HF model (and its sub-models) to the registered taskkernels attention, in place."""
    model.set_attn_implementation(register())
    return model
