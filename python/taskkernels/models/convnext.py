"""ConvNeXt on :func:`taskkernels.depthwise_conv2d`: the block, and the whole classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.depthwise_conv2d import depthwise_conv2d, depthwise_conv2d_layernorm
from ._heads import FromHF, activation as _activation, classification_loss
from .vit import ImageClassifierOutput

__all__ = ["ConvNextForImageClassification", "ConvNextLayer", "ConvNextModel"]


class ConvNextLayer(nn.Module):
    """Drop-in for ``transformers.models.convnext.modeling_convnext.ConvNextLayer`` (one block:
    depthwise 7x7 -> LayerNorm over channels -> Linear 4x -> GELU -> Linear -> layer scale ->
    stochastic depth -> residual).

    Same constructor (a ``ConvNextConfig``, ``dim``, ``drop_path``), parameters and state-dict
    keys (``dwconv``, ``layernorm``, ``pwconv1``, ``pwconv2``, ``layer_scale_parameter``). The
    depthwise 7x7 runs on ``taskkernels.depthwise_conv2d`` (channels_last inputs stay
    channels_last, so the permute after it is free for them), then PyTorch's LayerNorm; or both as
    the fused ``depthwise_conv2d_layernorm``. ``fused_front``: True / False force one or the
    other; None (default) fuses on CUDA (one kernel instead of two, the convolution's output
    normalized in place of being re-read) and not on the CPU, where the fused op measured slower
    than the two ops (README).
    """

    def __init__(self, config, dim: int, drop_path: float = 0.0, fused_front: bool | None = None):
        super().__init__()
        self.fused_front = fused_front
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.layernorm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = _activation(config.hidden_act)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        scale = config.layer_scale_init_value
        self.layer_scale_parameter = nn.Parameter(scale * torch.ones(dim)) if scale > 0 else None
        self.drop_path = float(drop_path)

    @classmethod
    def from_hf(cls, hf_layer: nn.Module) -> "ConvNextLayer":
        """Builds the layer from an HF ``ConvNextLayer``, sharing nothing, same weights."""
        dim = hf_layer.dwconv.weight.shape[0]
        scale = hf_layer.layer_scale_parameter
        cfg = type("Cfg", (), dict(hidden_act="gelu", layer_scale_init_value=1.0 if scale is not None else 0.0))
        drop = getattr(hf_layer.drop_path, "drop_prob", 0.0)
        layer = cls(cfg, dim, drop_path=drop or 0.0)
        layer.act = hf_layer.act
        layer.load_state_dict(hf_layer.state_dict())
        return layer.to(device=hf_layer.dwconv.weight.device, dtype=hf_layer.dwconv.weight.dtype)

    def forward(self, features: Tensor) -> Tensor:
        residual = features
        norm = self.layernorm
        fused = features.is_cuda if self.fused_front is None else self.fused_front
        if fused:
            x = depthwise_conv2d_layernorm(features, self.dwconv.weight, self.dwconv.bias, norm.weight, norm.bias,
                                           norm.eps, padding=3)
        else:
            x = depthwise_conv2d(features, self.dwconv.weight, self.dwconv.bias, padding=3).permute(0, 2, 3, 1)
            x = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        x = self.pwconv2(self.act(self.pwconv1(x)))
        if self.layer_scale_parameter is not None:
            x = self.layer_scale_parameter * x
        x = x.permute(0, 3, 1, 2)
        if self.training and self.drop_path > 0.0:  # stochastic depth, per sample, as HF's drop_path
            keep = 1.0 - self.drop_path
            mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
            x = x * mask / keep
        return residual + x


class _ChannelsFirstLayerNorm(nn.LayerNorm):
    """HF's ``ConvNextLayerNorm(data_format="channels_first")``: LayerNorm over C of (B, C, H, W)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class _Embeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.patch_embeddings = nn.Conv2d(config.num_channels, config.hidden_sizes[0], kernel_size=config.patch_size,
                                          stride=config.patch_size)
        self.layernorm = _ChannelsFirstLayerNorm(config.hidden_sizes[0], eps=1e-6)
        self.num_channels = config.num_channels

    def forward(self, pixel_values: Tensor) -> Tensor:
        if pixel_values.shape[1] != self.num_channels:
            raise ValueError(f"ConvNextModel: pixel_values must have {self.num_channels} channels (the config's "
                             f"num_channels), got shape {tuple(pixel_values.shape)}")
        return self.layernorm(self.patch_embeddings(pixel_values))


class _Stage(nn.Module):
    def __init__(self, config, in_channels, out_channels, stride, depth, drop_path_rates, fused_front):
        super().__init__()
        self.downsampling_layer = nn.ModuleList()
        if in_channels != out_channels or stride > 1:
            self.downsampling_layer.append(_ChannelsFirstLayerNorm(in_channels, eps=1e-6))
            self.downsampling_layer.append(nn.Conv2d(in_channels, out_channels, kernel_size=2, stride=stride))
        self.layers = nn.ModuleList(
            [ConvNextLayer(config, out_channels, drop_path_rates[j], fused_front) for j in range(depth)]
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.downsampling_layer:
            x = layer(x)
        for layer in self.layers:
            x = layer(x)
        return x


class _Encoder(nn.Module):
    def __init__(self, config, fused_front):
        super().__init__()
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths)).split(list(config.depths))
        self.stages = nn.ModuleList()
        prev = config.hidden_sizes[0]
        for i in range(config.num_stages):
            out = config.hidden_sizes[i]
            self.stages.append(_Stage(config, prev, out, 2 if i > 0 else 1, config.depths[i], rates[i].tolist(), fused_front))
            prev = out

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


class ConvNextModel(FromHF):
    """Drop-in for HF ``ConvNextModel`` (same keys, ``from_hf``, ``from_pretrained``): patch stem,
    four stages of :class:`ConvNextLayer` (their depthwise 7x7 on taskkernels), mean-pooled and
    normalized features. Returns ``(last_hidden_state (B, C, H, W), pooler_output (B, C))``."""

    hf_class_name = "ConvNextModel"

    def __init__(self, config, fused_front: bool | None = None):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config, fused_front)
        self.layernorm = nn.LayerNorm(config.hidden_sizes[-1], eps=config.layer_norm_eps)

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.encoder(self.embeddings(pixel_values))
        return hidden, self.layernorm(hidden.mean([-2, -1]))


class ConvNextForImageClassification(FromHF):
    """Drop-in for HF ``ConvNextForImageClassification`` (same keys, ``from_hf``,
    ``from_pretrained``): :class:`ConvNextModel`'s pooled features through the classifier; HF's
    losses. ``fused_front`` as in :class:`ConvNextLayer` (None: the fused
    ``depthwise_conv2d_layernorm`` on CUDA, the two ops on the CPU)."""

    hf_class_name = "ConvNextForImageClassification"

    def __init__(self, config, fused_front: bool | None = None):
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.convnext = ConvNextModel(config, fused_front)
        self.classifier = nn.Linear(config.hidden_sizes[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()

    @classmethod
    def from_hf(cls, hf_model: nn.Module, fused_front: bool | None = None):
        model = super().from_hf(hf_model)
        for module in model.modules():
            if isinstance(module, ConvNextLayer):
                module.fused_front = fused_front
        return model

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None):
        hidden, pooled = self.convnext(pixel_values)
        logits = self.classifier(pooled)
        loss = None if labels is None else classification_loss(logits, labels, self.num_labels, self.config.problem_type)
        return ImageClassifierOutput(loss=loss, logits=logits, last_hidden_state=hidden)
