"""Mask2Former's masked cross-attention on taskkernels.masked_attention.

:class:`MaskedCrossAttention` replaces the ``nn.MultiheadAttention`` that HF's
``Mask2FormerMaskedAttentionDecoderLayer`` uses as ``cross_attn``: same parameters and state-dict
keys, same call, same outputs; the per-query mask is read once per image instead of once per
head, and no (B * heads, Q, HW) score matrix is formed. :func:`use_masked_attention` swaps it into
a whole HF model in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.masked_attention import masked_attention

__all__ = ["MaskedCrossAttention", "use_masked_attention"]


class MaskedCrossAttention(nn.Module):
    """``nn.MultiheadAttention(embed_dim, num_heads)`` as Mask2Former calls it, on masked_attention.

    Parameters (and state-dict keys) are nn.MultiheadAttention's: ``in_proj_weight`` (3E, E),
    ``in_proj_bias`` (3E), ``out_proj.weight``, ``out_proj.bias``.

    Args of forward (sequence-first, as ``batch_first=False``):
        query (Q, B, E), key (HW, B, E), value (HW, B, E).
        attn_mask: bool, True = blocked: HF's (B * num_heads, Q, HW) (the same mask repeated per
            head; only the first head's copy is read, and ``check_heads`` verifies the copies
            agree) or the (B, Q, HW) mask itself.
        mask_logits: instead of attn_mask, the (B, Q, HW) mask logits (blocked where < 0, HF's
            ``sigmoid(logits) < 0.5``), which skips building the dense mask at all.
    A query whose mask blocks every pixel attends to all of them (Mask2Former's rule; HF applies
    it before the call, we apply it inside, so both give the same result).

    Returns (output (Q, B, E), None): attention weights are never formed.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, check_heads: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"MaskedCrossAttention: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.check_heads = check_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    @classmethod
    def from_hf(cls, mha: nn.MultiheadAttention, check_heads: bool = True) -> "MaskedCrossAttention":
        """The same attention as ``mha`` (an nn.MultiheadAttention with packed in-projection and
        sequence-first inputs), with a copy of its weights."""
        if mha.batch_first or mha.in_proj_weight is None or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("MaskedCrossAttention.from_hf: only the packed, sequence-first nn.MultiheadAttention "
                             "without bias_k/bias_v/add_zero_attn that Mask2Former uses")
        p = mha.in_proj_weight
        module = cls(mha.embed_dim, mha.num_heads, mha.dropout, check_heads).to(device=p.device, dtype=p.dtype)
        module.load_state_dict(mha.state_dict())
        return module

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                key_padding_mask: Tensor | None = None, need_weights: bool = True, mask_logits: Tensor | None = None,
                **unused) -> tuple[Tensor, None]:
        if key_padding_mask is not None:
            raise NotImplementedError("MaskedCrossAttention: key_padding_mask is not supported (Mask2Former passes None)")
        if self.training and self.dropout > 0:
            raise NotImplementedError(f"MaskedCrossAttention: attention dropout (p = {self.dropout}) is not supported in "
                                      "training; Mask2Former's default config has dropout 0")
        Q, B, E = query.shape
        HW, H = key.shape[0], self.num_heads
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)

        def heads(x, w, b):  # (N, B, E) -> (B, H, N, D), a view of the projection
            return F.linear(x, w, b).view(x.shape[0], B, H, E // H).permute(1, 2, 0, 3)

        q, k, v = heads(query, wq, bq), heads(key, wk, bk), heads(value, wv, bv)
        if attn_mask is not None and mask_logits is not None:
            raise ValueError("MaskedCrossAttention: pass attn_mask or mask_logits, not both")
        if attn_mask is not None:
            attn_mask = self._per_image_mask(attn_mask, B, Q, HW)
        elif mask_logits is None:  # unmasked cross-attention
            attn_mask = torch.zeros(B, Q, HW, dtype=torch.bool, device=query.device)
        out = masked_attention(q, k, v, attn_mask, mask_logits)  # (B, H, Q, D)
        out = out.permute(2, 0, 1, 3).reshape(Q, B, E)
        return self.out_proj(out), None

    def _per_image_mask(self, attn_mask: Tensor, B: int, Q: int, HW: int) -> Tensor:
        if attn_mask.dtype != torch.bool:
            raise TypeError(f"MaskedCrossAttention: attn_mask must be bool (True = blocked), got {attn_mask.dtype}")
        H = self.num_heads
        if attn_mask.dim() == 3 and tuple(attn_mask.shape) == (B * H, Q, HW) and H > 1:
            per_head = attn_mask.view(B, H, Q, HW)
            if self.check_heads and not torch.compiler.is_compiling():
                if not torch.equal(per_head, per_head[:, :1].expand_as(per_head)):
                    raise ValueError("MaskedCrossAttention: attn_mask differs between heads; masked_attention "
                                     "takes one mask per image (Mask2Former's repeated mask)")
            return per_head[:, 0]
        if attn_mask.dim() == 3 and tuple(attn_mask.shape) == (B, Q, HW):
            return attn_mask
        raise ValueError(f"MaskedCrossAttention: attn_mask must have shape (B * num_heads, Q, HW) = ({B * H}, {Q}, {HW}) "
                         f"or (B, Q, HW) = ({B}, {Q}, {HW}), got {tuple(attn_mask.shape)}")


def use_masked_attention(model: nn.Module, check_heads: bool = True) -> nn.Module:
    """Replaces, in place, the ``cross_attn`` of every HF ``Mask2FormerMaskedAttentionDecoderLayer``
    in ``model`` with a :class:`MaskedCrossAttention` holding the same weights. Returns ``model``."""
    count = 0
    for module in model.modules():
        if type(module).__name__ == "Mask2FormerMaskedAttentionDecoderLayer" and isinstance(module.cross_attn, nn.MultiheadAttention):
            module.cross_attn = MaskedCrossAttention.from_hf(module.cross_attn, check_heads)
            count += 1
    if count == 0:
        raise ValueError("use_masked_attention: no Mask2FormerMaskedAttentionDecoderLayer with an nn.MultiheadAttention found")
    return model
