"""ViT on taskkernels: the embeddings on :func:`taskkernels.patch_embed`, every attention on
:func:`taskkernels.attention`, loading Hugging Face's state dicts unchanged."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..ops.attention import attention
from ..ops.patch_embed import patch_embed
from ._heads import FromHF, activation, classification_loss

__all__ = ["ViTEmbeddings", "ViTModel", "ViTForImageClassification"]


class ViTEmbeddings(nn.Module):
    """Drop-in for ``transformers.models.vit.modeling_vit.ViTEmbeddings``.

    Same constructor (a ``ViTConfig``, ``use_mask_token``), same parameters and state-dict keys
    (``cls_token``, ``mask_token``, ``position_embeddings``,
    ``patch_embeddings.projection.{weight,bias}``), same ``forward``. The convolution, [CLS]
    concatenation and position add run as one ``taskkernels.patch_embed`` call; dropout follows
    it as in HF. With ``bool_masked_pos`` the mask tokens are blended in between the patch
    projection and the [CLS]/position step, as HF does.
    """

    def __init__(self, config, use_mask_token: bool = False):
        super().__init__()
        image_size, patch_size = config.image_size, config.patch_size
        image_size = tuple(image_size) if isinstance(image_size, (list, tuple)) else (image_size, image_size)
        patch_size = tuple(patch_size) if isinstance(patch_size, (list, tuple)) else (patch_size, patch_size)
        if patch_size[0] != patch_size[1]:
            raise ValueError(f"ViTEmbeddings: only square patches are supported, got {patch_size}")
        num_patches = (image_size[0] // patch_size[0]) * (image_size[1] // patch_size[1])
        hidden = config.hidden_size

        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden)) if use_mask_token else None
        # Holds projection.weight / projection.bias under HF's keys; its forward is not used.
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(
            config.num_channels, hidden, kernel_size=patch_size, stride=patch_size
        )
        self.position_embeddings = nn.Parameter(torch.randn(1, num_patches + 1, hidden))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.patch_size = patch_size[0]
        self.image_size = image_size
        self.num_channels = config.num_channels

    @classmethod
    def from_hf(cls, hf_module: nn.Module) -> "ViTEmbeddings":
        """Builds the module from an HF ``ViTEmbeddings``, sharing nothing, same weights."""
        config = hf_module.patch_embeddings  # ViTPatchEmbeddings keeps the sizes
        hidden = hf_module.cls_token.shape[-1]
        cfg = type("Cfg", (), dict(
            image_size=config.image_size, patch_size=config.patch_size, num_channels=config.num_channels,
            hidden_size=hidden, hidden_dropout_prob=hf_module.dropout.p,
        ))
        module = cls(cfg, use_mask_token=hf_module.mask_token is not None)
        module.load_state_dict(hf_module.state_dict())
        return module.to(device=hf_module.cls_token.device, dtype=hf_module.cls_token.dtype)

    def interpolate_pos_encoding(self, height: int, width: int) -> Tensor:
        """HF's bicubic resize of the patch position embeddings to a (height, width) image."""
        pos = self.position_embeddings
        num_positions = pos.shape[1] - 1
        new_h, new_w = height // self.patch_size, width // self.patch_size
        if new_h * new_w == num_positions and height == width:
            return pos
        dim = pos.shape[-1]
        side = int(num_positions**0.5)
        patch_pos = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        patch_pos = nn.functional.interpolate(patch_pos, size=(new_h, new_w), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((pos[:, :1], patch_pos), dim=1)

    def forward(
        self,
        pixel_values: Tensor,
        bool_masked_pos: Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> Tensor:
        _, num_channels, height, width = pixel_values.shape
        if num_channels != self.num_channels:
            raise ValueError(
                f"ViTEmbeddings: pixel_values has {num_channels} channels, the configuration {self.num_channels}"
            )
        if interpolate_pos_encoding:
            pos = self.interpolate_pos_encoding(height, width)
        else:
            if (height, width) != self.image_size:
                raise ValueError(
                    f"Input image size ({height}*{width}) doesn't match model ({self.image_size[0]}*{self.image_size[1]})."
                )
            pos = self.position_embeddings
        proj = self.patch_embeddings.projection
        if bool_masked_pos is None:
            embeddings = patch_embed(pixel_values, proj.weight, proj.bias, self.cls_token, pos)
        else:
            patches = patch_embed(pixel_values, proj.weight, proj.bias)
            mask = bool_masked_pos.unsqueeze(-1).type_as(self.mask_token)
            patches = patches * (1.0 - mask) + self.mask_token.expand_as(patches) * mask
            cls = self.cls_token.expand(patches.shape[0], -1, -1)
            embeddings = torch.cat((cls, patches), dim=1) + pos
        return self.dropout(embeddings)


class ViTSelfAttention(nn.Module):
    """HF ViTAttention's parameters (q/k/v/o projections) around ``taskkernels.attention``."""

    def __init__(self, config):
        super().__init__()
        hidden = config.hidden_size
        self.heads = config.num_attention_heads
        self.q_proj = nn.Linear(hidden, hidden, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden, hidden, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden, hidden, bias=config.qkv_bias)
        self.o_proj = nn.Linear(hidden, hidden)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        q, k, v = (proj(x).view(B, N, self.heads, -1).transpose(1, 2)  # -1: this rank's heads under TP
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = attention(q, k, v, dropout_p=self.dropout_p if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(B, N, -1))


class ViTLayer(nn.Module):
    """Pre-LayerNorm encoder block, HF ``ViTLayer``'s parameters."""

    def __init__(self, config):
        super().__init__()
        self.attention = ViTSelfAttention(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.mlp.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.attention(self.layernorm_before(x)))
        return x + self.dropout(self.mlp.fc2(self.act(self.mlp.fc1(self.layernorm_after(x)))))


class ViTModel(nn.Module):
    """HF ``ViTModel`` without the pooler: patch embedding on ``taskkernels.patch_embed``, every
    attention on ``taskkernels.attention``; returns the final LayerNorm's (B, 1 + Np, D)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = ViTEmbeddings(config)
        self.layers = nn.ModuleList(ViTLayer(config) for _ in range(config.num_hidden_layers))
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        x = self.embeddings(pixel_values.to(self.embeddings.cls_token.dtype),
                            interpolate_pos_encoding=interpolate_pos_encoding)
        for layer in self.layers:
            x = layer(x)
        return self.layernorm(x)


class ViTForImageClassification(FromHF):
    """Drop-in for HF ``ViTForImageClassification`` (same keys, ``from_hf``, ``from_pretrained``):
    the [CLS] row of :class:`ViTModel` through the classifier; HF's losses."""

    hf_class_name = "ViTForImageClassification"

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.vit = ViTModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None, interpolate_pos_encoding: bool = False):
        hidden = self.vit(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        logits = self.classifier(hidden[:, 0])
        loss = None if labels is None else classification_loss(logits, labels, self.num_labels, self.config.problem_type)
        return ImageClassifierOutput(loss=loss, logits=logits, last_hidden_state=hidden)


@dataclass
class ImageClassifierOutput:
    loss: Tensor | None = None
    logits: Tensor | None = None
    last_hidden_state: Tensor | None = None
