"""Mask2Former on taskkernels: the masked cross-attention, the decoder around it, the matcher.

- :class:`MaskedCrossAttention` replaces the ``nn.MultiheadAttention`` that HF's
  ``Mask2FormerMaskedAttentionDecoderLayer`` uses as ``cross_attn``: same parameters and
  state-dict keys, same call, same outputs; the per-query mask is read once per image instead of
  once per head, and no (B * heads, Q, HW) score matrix is formed.
- :class:`Mask2FormerMaskedAttentionDecoder` runs HF's decoder (same submodules and keys) with
  the per-image (B, Q, HW) mask handed to that attention, instead of HF's copy repeated per head.
- :class:`Mask2FormerHungarianMatcher`: HF's matching costs, one batched solve on our
  assignment solver instead of one scipy call (and one device sync) per image.
- :class:`Mask2FormerForUniversalSegmentation` builds (or converts) HF's whole model with the
  three in place. The Swin backbone, pixel decoder, heads and losses stay HF's: they hold no op
  of ours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.linear_sum_assignment import batched_linear_sum_assignment, raise_on_unsolved
from ..ops.masked_attention import masked_attention
from ._heads import ConvertsHF

__all__ = [
    "Mask2FormerForUniversalSegmentation",
    "Mask2FormerHungarianMatcher",
    "Mask2FormerMaskedAttentionDecoder",
    "MaskedCrossAttention",
    "use_masked_attention",
]


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
    in ``model`` with a :class:`MaskedCrossAttention` holding the same weights. Returns ``model``.
    (HF's decoder still builds its per-head mask; :class:`Mask2FormerForUniversalSegmentation`
    also replaces the decoder, which avoids that.)"""
    count = 0
    for module in model.modules():
        if type(module).__name__ == "Mask2FormerMaskedAttentionDecoderLayer" and isinstance(module.cross_attn, nn.MultiheadAttention):
            module.cross_attn = MaskedCrossAttention.from_hf(module.cross_attn, check_heads)
            count += 1
    if count == 0:
        raise ValueError("use_masked_attention: no Mask2FormerMaskedAttentionDecoderLayer with an nn.MultiheadAttention found")
    return model


class Mask2FormerMaskedAttentionDecoder(nn.Module):
    """HF's ``Mask2FormerMaskedAttentionDecoder`` (same submodules: ``layers``, ``layernorm``,
    ``mask_predictor``; same keys, call and outputs) with the attention mask kept per image.

    HF's mask predictor repeats the (B, Q, HW) mask over the heads and the decoder clears fully
    blocked rows on that (B * heads, Q, HW) copy before every layer; here the mask predictor's
    pieces give the (B, Q, HW) mask (``sigmoid(logits) < 0.5``, HF's rule in the model's dtype)
    and :func:`masked_attention` applies the fully-blocked rule itself.
    """

    def __init__(self, hf_decoder: nn.Module):
        super().__init__()
        for name in ("config", "mask_feature_size", "dropout", "layerdrop", "num_feature_levels", "decoder_layers"):
            setattr(self, name, getattr(hf_decoder, name))
        self.layers = hf_decoder.layers
        self.layernorm = hf_decoder.layernorm
        self.mask_predictor = hf_decoder.mask_predictor
        self.gradient_checkpointing = False
        use_masked_attention(self)

    @classmethod
    def from_hf(cls, hf_decoder: nn.Module) -> "Mask2FormerMaskedAttentionDecoder":
        """A copy of ``hf_decoder`` (nothing shared) on our attention."""
        import copy

        return cls(copy.deepcopy(hf_decoder))

    def _predict(self, hidden: Tensor, pixel_embeddings: Tensor, size) -> tuple[Tensor, Tensor]:
        """(mask logits (B, Q, h, w) at the pixel embeddings' size, blocked (B, Q, HW) at `size`)."""
        embeddings = self.mask_predictor.mask_embedder(hidden.transpose(0, 1))
        masks = torch.einsum("bqc, bchw -> bqhw", embeddings, pixel_embeddings)
        logits = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        return masks, (logits.flatten(2).sigmoid() < 0.5).detach()

    def forward(self, inputs_embeds=None, multi_stage_positional_embeddings=None, pixel_embeddings=None,
                encoder_hidden_states=None, query_position_embeddings=None, feature_size_list=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        from transformers.models.mask2former.modeling_mask2former import Mask2FormerMaskedAttentionDecoderOutput

        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict

        hidden = inputs_embeds
        all_hidden = () if output_hidden_states else None
        attentions = () if output_attentions else None
        normed = self.layernorm(inputs_embeds)
        intermediate = (normed,)
        masks, blocked = self._predict(normed, pixel_embeddings, feature_size_list[0])
        mask_predictions = (masks,)
        for idx, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden += (hidden,)
            if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
                continue  # layer drop, drawn as HF draws it
            outputs = layer(hidden, idx % self.num_feature_levels, None, multi_stage_positional_embeddings,
                            query_position_embeddings, encoder_hidden_states, encoder_attention_mask=blocked,
                            output_attentions=output_attentions)
            normed = self.layernorm(outputs[0])
            masks, blocked = self._predict(normed, pixel_embeddings,
                                           feature_size_list[(idx + 1) % self.num_feature_levels])
            mask_predictions += (masks,)
            intermediate += (normed,)
            hidden = outputs[0]
            if output_attentions:
                attentions += (outputs[1],)
        if output_hidden_states:
            all_hidden += (hidden,)
        hidden = hidden.transpose(1, 0)
        if not return_dict:
            return tuple(v for v in (hidden, all_hidden, attentions, intermediate, mask_predictions) if v is not None)
        return Mask2FormerMaskedAttentionDecoderOutput(
            last_hidden_state=hidden, hidden_states=all_hidden, attentions=attentions,
            intermediate_hidden_states=intermediate, masks_queries_logits=mask_predictions,
        )


class Mask2FormerHungarianMatcher(nn.Module):
    """HF's ``Mask2FormerHungarianMatcher`` (same arguments, call and result) with one batched
    solve: the per-image cost matrices are built as HF builds them (same point sampling, same
    random draws, on the predictions' device), padded into one (B, Q, max targets) tensor and
    solved by :func:`taskkernels.batched_linear_sum_assignment` (one host round trip per batch
    instead of one per image). NaN / inf costs become the dtype's largest value, as in HF."""

    def __init__(self, cost_class: float = 1.0, cost_mask: float = 1.0, cost_dice: float = 1.0, num_points: int = 12544):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("Mask2FormerHungarianMatcher: all costs can't be 0")
        self.cost_class, self.cost_mask, self.cost_dice, self.num_points = cost_class, cost_mask, cost_dice, num_points

    @classmethod
    def from_hf(cls, matcher: nn.Module) -> "Mask2FormerHungarianMatcher":
        return cls(matcher.cost_class, matcher.cost_mask, matcher.cost_dice, matcher.num_points)

    @torch.no_grad()
    def forward(self, masks_queries_logits: Tensor, class_queries_logits: Tensor, mask_labels, class_labels):
        from transformers.models.mask2former.modeling_mask2former import (
            pair_wise_dice_loss,
            pair_wise_sigmoid_cross_entropy_loss,
            sample_point,
        )

        B, Q = masks_queries_logits.shape[:2]
        if B == 0:
            return []
        costs = []
        for i in range(B):
            pred_mask = masks_queries_logits[i][:, None]
            target_mask = mask_labels[i].to(pred_mask)[:, None]
            points = torch.rand(1, self.num_points, 2, device=pred_mask.device)
            target_points = sample_point(target_mask, points.repeat(target_mask.shape[0], 1, 1), align_corners=False).squeeze(1)
            pred_points = sample_point(pred_mask, points.repeat(pred_mask.shape[0], 1, 1), align_corners=False).squeeze(1)
            cost = (self.cost_mask * pair_wise_sigmoid_cross_entropy_loss(pred_points, target_points)
                    - self.cost_class * class_queries_logits[i].softmax(-1)[:, class_labels[i]]
                    + self.cost_dice * pair_wise_dice_loss(pred_points, target_points))
            big = torch.finfo(cost.dtype).max
            costs.append(torch.nan_to_num(cost, nan=big, posinf=big, neginf=big))
        num_targets = torch.tensor([c.shape[1] for c in costs], dtype=torch.int64)
        padded = costs[0].new_zeros((B, Q, int(num_targets.max())))
        for i, c in enumerate(costs):
            padded[i, :, : c.shape[1]] = c
        assigned = batched_linear_sum_assignment(padded, num_targets.to(padded.device)).cpu()
        raise_on_unsolved(assigned)
        matched = []
        for i in range(B):
            rows = (assigned[i] >= 0).nonzero().squeeze(1)
            matched.append((rows, assigned[i, rows]))
        return matched


class Mask2FormerForUniversalSegmentation(ConvertsHF):
    """HF's ``Mask2FormerForUniversalSegmentation`` on taskkernels: building one (``(config)``),
    converting one (``from_hf``, a copy) or loading a saved directory (``from_pretrained``) returns
    an instance of HF's class (same keys, call, outputs and losses) whose masked-attention decoder
    is :class:`Mask2FormerMaskedAttentionDecoder` and whose loss matcher is
    :class:`Mask2FormerHungarianMatcher`."""

    hf_class_name = "Mask2FormerForUniversalSegmentation"

    @staticmethod
    def _convert(model: nn.Module) -> nn.Module:
        transformer = model.model.transformer_module
        transformer.decoder = Mask2FormerMaskedAttentionDecoder(transformer.decoder)
        model.criterion.matcher = Mask2FormerHungarianMatcher.from_hf(model.criterion.matcher)
        return model
