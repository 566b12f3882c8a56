"""Thin nn.Module classes that route models' hot paths through taskkernels ops."""

from .bert import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification, BertModel
from .convnext import ConvNextForImageClassification, ConvNextLayer, ConvNextModel
from .mask2former import MaskedCrossAttention, use_masked_attention
from .vit import ViTEmbeddings, ViTForImageClassification, ViTModel

__all__ = [
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "ConvNextForImageClassification",
    "ConvNextLayer",
    "ConvNextModel",
    "MaskedCrossAttention",
    "ViTEmbeddings",
    "ViTForImageClassification",
    "ViTModel",
    "use_masked_attention",
]
