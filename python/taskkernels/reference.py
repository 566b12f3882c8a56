"""Plain-PyTorch references of every taskkernels op. Tests check the ops against these (in
float64) and the benchmark suite times them as the baseline: one definition serves both."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["patch_embed"]


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
