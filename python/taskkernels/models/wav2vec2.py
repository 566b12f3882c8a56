"""Wav2Vec2 on taskkernels: the transformer encoder on :func:`taskkernels.attention`, the CTC
loss on :func:`taskkernels.ctc_loss_from_logits`, a greedy CTC decode; loading HF's
``Wav2Vec2ForCTC`` / ``Wav2Vec2ForSequenceClassification`` state dicts unchanged.

The convolutional feature encoder, the feature projection and the convolutional position
embedding hold no op of ours and are HF's modules (``transformers`` is required to build these
classes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.attention import attention
from ..ops.ctc_loss import ctc_loss_from_logits
from ._heads import FromHF, activation

__all__ = ["Wav2Vec2ForCTC", "Wav2Vec2ForSequenceClassification", "Wav2Vec2Model", "ctc_greedy_decode"]


def _hf():
    from transformers.models.wav2vec2 import modeling_wav2vec2

    return modeling_wav2vec2


class Wav2Vec2Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        E, H = config.hidden_size, config.num_attention_heads
        if E % H:
            raise ValueError(f"Wav2Vec2Attention: hidden size {E} is not divisible by the number of heads {H}")
        self.heads, self.dropout = H, config.attention_dropout
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(E, E) for _ in range(4))

    def forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        B, T, E = x.shape
        q, k, v = (p(x).view(B, T, self.heads, E // self.heads).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = attention(q, k, v, key_padding_mask=key_padding_mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, E))


class _FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = activation(config.hidden_act)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class Wav2Vec2EncoderLayer(nn.Module):
    """HF's encoder layer: post-LN (base models) or pre-LN (``do_stable_layer_norm``, large ones)."""

    def __init__(self, config):
        super().__init__()
        self.pre_norm = config.do_stable_layer_norm
        self.attention = Wav2Vec2Attention(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = _FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        if self.pre_norm:
            x = x + self.dropout(self.attention(self.layer_norm(x), key_padding_mask))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.dropout(self.attention(x, key_padding_mask)))
        return self.final_layer_norm(x + self.feed_forward(x))


class Wav2Vec2Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.pos_conv_embed = _hf().Wav2Vec2PositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(Wav2Vec2EncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: Tensor, frame_mask: Tensor | None) -> Tensor:
        key_padding_mask = None
        if frame_mask is not None:
            x = x.masked_fill(~frame_mask[..., None], 0.0)  # padded frames are zero before the position conv
            key_padding_mask = ~frame_mask
        x = x + self.pos_conv_embed(x)
        stable = self.config.do_stable_layer_norm
        if not stable:
            x = self.layer_norm(x)
        x = self.dropout(x)
        for layer in self.layers:
            # HF's layer drop: one draw per layer in training.
            if self.training and self.config.layerdrop > 0.0 and bool(torch.rand([]) < self.config.layerdrop):
                continue
            x = layer(x, key_padding_mask)
        return self.layer_norm(x) if stable else x


class Wav2Vec2Model(nn.Module):
    """HF ``Wav2Vec2Model`` (same keys): HF's conv feature encoder and projection, SpecAugment
    masking in training (HF's sampler), our transformer encoder. ``forward`` returns
    ``(last_hidden_state, frame_mask)``, the mask (B, frames) being None without an input mask."""

    def __init__(self, config):
        super().__init__()
        if getattr(config, "add_adapter", False) or getattr(config, "adapter_attn_dim", None) is not None:
            raise ValueError("taskkernels.models.Wav2Vec2Model: adapters are not supported")
        hf = _hf()
        self.config = config
        self.feature_extractor = hf.Wav2Vec2FeatureEncoder(config)
        self.feature_projection = hf.Wav2Vec2FeatureProjection(config)
        if config.mask_time_prob > 0.0 or config.mask_feature_prob > 0.0:
            self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        self.encoder = Wav2Vec2Encoder(config)

    def output_lengths(self, input_lengths: Tensor) -> Tensor:
        """Frames out of the conv feature encoder for `input_lengths` samples."""
        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride):
            input_lengths = torch.div(input_lengths - kernel, stride, rounding_mode="floor") + 1
        return input_lengths

    def frame_mask(self, frames: int, attention_mask: Tensor) -> Tensor:
        lengths = self.output_lengths(attention_mask.sum(-1)).to(torch.long)
        return torch.arange(frames, device=attention_mask.device)[None, :] < lengths[:, None]

    def _spec_augment(self, x: Tensor, frame_mask: Tensor | None) -> Tensor:
        cfg = self.config
        if not self.training or not getattr(cfg, "apply_spec_augment", True):
            return x
        B, T, E = x.shape
        compute = _hf()._compute_mask_indices
        if cfg.mask_time_prob > 0:
            idx = compute((B, T), mask_prob=cfg.mask_time_prob, mask_length=cfg.mask_time_length,
                          attention_mask=frame_mask, min_masks=cfg.mask_time_min_masks)
            idx = torch.tensor(idx, device=x.device, dtype=torch.bool)
            x = torch.where(idx[..., None], self.masked_spec_embed.to(x.dtype), x)
        if cfg.mask_feature_prob > 0:
            idx = compute((B, E), mask_prob=cfg.mask_feature_prob, mask_length=cfg.mask_feature_length,
                          min_masks=cfg.mask_feature_min_masks)
            x = x.masked_fill(torch.tensor(idx, device=x.device, dtype=torch.bool)[:, None, :], 0.0)
        return x

    def forward(self, input_values: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        features = self.feature_extractor(input_values).transpose(1, 2)
        frame_mask = None if attention_mask is None else self.frame_mask(features.shape[1], attention_mask)
        x, _ = self.feature_projection(features)
        x = self._spec_augment(x, frame_mask)
        return self.encoder(x, frame_mask), frame_mask


def ctc_greedy_decode(logits: Tensor, output_lengths: Tensor | None = None, blank: int = 0) -> list[list[int]]:
    """Best-path CTC decoding: the argmax label per frame, repeats merged, blanks dropped, over the
    first ``output_lengths[b]`` frames of each sequence. Returns one list of ids per sequence."""
    best = logits.argmax(dim=-1).cpu()
    lengths = [best.shape[1]] * best.shape[0] if output_lengths is None else output_lengths.tolist()
    out = []
    for b, n in enumerate(lengths):
        ids = torch.unique_consecutive(best[b, :n])
        out.append(ids[ids != blank].tolist())
    return out


@dataclass
class Wav2Vec2Output:
    loss: Tensor | None = None
    logits: Tensor | None = None
    last_hidden_state: Tensor | None = None
    output_lengths: Tensor | None = None  # valid frames per sequence (None without an input mask)


class Wav2Vec2ForCTC(FromHF):
    """Drop-in for HF ``Wav2Vec2ForCTC`` (same keys, ``from_hf``, ``from_pretrained``): frame logits
    over the vocabulary; with ``labels`` (B, L), padded with -100, HF's CTC loss (blank = the
    config's pad token, its reduction and zero_infinity) computed by ``ctc_loss_from_logits``
    straight from the logits. :meth:`decode` turns logits into label ids (greedy)."""

    hf_class_name = "Wav2Vec2ForCTC"

    def __init__(self, config):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("Wav2Vec2ForCTC: the config needs a vocab_size")
        self.config = config
        self.wav2vec2 = Wav2Vec2Model(config)
        self.dropout = nn.Dropout(config.final_dropout)
        out = config.output_hidden_size if getattr(config, "add_adapter", False) else config.hidden_size
        self.lm_head = nn.Linear(out, config.vocab_size)

    def forward(self, input_values: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None) -> Wav2Vec2Output:
        hidden, frame_mask = self.wav2vec2(input_values, attention_mask)
        logits = self.lm_head(self.dropout(hidden))
        lengths = None if frame_mask is None else frame_mask.sum(-1)
        loss = None
        if labels is not None:
            if labels.max() >= self.config.vocab_size:
                raise ValueError(f"Wav2Vec2ForCTC: labels must be < vocab_size ({self.config.vocab_size}), "
                                 f"got {int(labels.max())}")
            input_lengths = lengths if lengths is not None else torch.full(
                (logits.shape[0],), logits.shape[1], dtype=torch.long, device=logits.device)
            valid = labels >= 0
            # Valid labels first, in order (HF flattens them with masked_select); the rest is ignored.
            order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
            targets = torch.gather(labels, 1, order).clamp(min=0)
            loss = ctc_loss_from_logits(logits, targets, input_lengths, valid.sum(-1), blank=self.config.pad_token_id,
                                        reduction=self.config.ctc_loss_reduction,
                                        zero_infinity=self.config.ctc_zero_infinity)
        return Wav2Vec2Output(loss=loss, logits=logits, last_hidden_state=hidden, output_lengths=lengths)

    def decode(self, logits: Tensor, output_lengths: Tensor | None = None) -> list[list[int]]:
        """Greedy CTC decode with the config's pad token as the blank."""
        return ctc_greedy_decode(logits, output_lengths, blank=self.config.pad_token_id)


class Wav2Vec2ForSequenceClassification(FromHF):
    """Drop-in for HF ``Wav2Vec2ForSequenceClassification`` (same keys, ``from_hf``,
    ``from_pretrained``): the encoder (or HF's learned weighted sum of its layers) projected,
    mean-pooled over the valid frames, classified; HF's cross-entropy loss."""

    hf_class_name = "Wav2Vec2ForSequenceClassification"

    def __init__(self, config):
        super().__init__()
        if getattr(config, "use_weighted_layer_sum", False):
            raise ValueError("taskkernels.models.Wav2Vec2ForSequenceClassification: use_weighted_layer_sum is not supported")
        self.config = config
        self.num_labels = config.num_labels
        self.wav2vec2 = Wav2Vec2Model(config)
        self.projector = nn.Linear(config.hidden_size, config.classifier_proj_size)
        self.classifier = nn.Linear(config.classifier_proj_size, config.num_labels)

    def forward(self, input_values: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None) -> Wav2Vec2Output:
        hidden, frame_mask = self.wav2vec2(input_values, attention_mask)
        x = self.projector(hidden)
        if frame_mask is None:
            pooled = x.mean(dim=1)
        else:
            pooled = x.masked_fill(~frame_mask[..., None], 0.0).sum(dim=1) / frame_mask.sum(dim=1, keepdim=True)
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:  # HF's: cross-entropy whatever the problem type
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return Wav2Vec2Output(loss=loss, logits=logits, last_hidden_state=hidden,
                              output_lengths=None if frame_mask is None else frame_mask.sum(-1))
