"""ConvNeXt's block on :func:`taskkernels.depthwise_conv2d`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.depthwise_conv2d import depthwise_conv2d

__all__ = ["ConvNextLayer"]


def _activation(name: str):
    if name == "gelu":
        return nn.GELU()
    from transformers.activations import ACT2FN  # only for activations other than GELU

    return ACT2FN[name]


class ConvNextLayer(nn.Module):
    """Drop-in for ``transformers.models.convnext.modeling_convnext.ConvNextLayer`` (one block:
    depthwise 7x7 -> LayerNorm over channels -> Linear 4x -> GELU -> Linear -> layer scale ->
    stochastic depth -> residual).

    Same constructor (a ``ConvNextConfig``, ``dim``, ``drop_path``), parameters and state-dict
    keys (``dwconv``, ``layernorm``, ``pwconv1``, ``pwconv2``, ``layer_scale_parameter``). The
    depthwise 7x7 runs on ``taskkernels.depthwise_conv2d`` (channels_last inputs stay
    channels_last, so the permute after it is free for them), then PyTorch's LayerNorm. The fused
    ``depthwise_conv2d_layernorm`` is not used yet: on this CPU it is still slower than these two
    ops (README), and it has no CUDA kernel.
    """

    def __init__(self, config, dim: int, drop_path: float = 0.0):
        super().__init__()
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
