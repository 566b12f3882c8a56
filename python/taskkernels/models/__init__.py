"""Thin nn.Module classes that route models' hot paths through taskkernels ops."""

from .vit import ViTEmbeddings

__all__ = ["ViTEmbeddings"]
