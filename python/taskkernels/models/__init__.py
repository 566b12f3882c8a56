"""Thin nn.Module classes that route models' hot paths through taskkernels ops."""

from .convnext import ConvNextLayer
from .vit import ViTEmbeddings

__all__ = ["ConvNextLayer", "ViTEmbeddings"]
