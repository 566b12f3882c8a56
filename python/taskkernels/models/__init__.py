"""Thin nn.Module classes that route models' hot paths through taskkernels ops."""

from . import hf_attention
from .bart import BartForConditionalGeneration, BartModel
from .bert import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification, BertModel
from .convnext import ConvNextForImageClassification, ConvNextLayer, ConvNextModel
from .detr import DetrForObjectDetection, DetrHungarianMatcher
from .glpn import GLPNForDepthEstimation
from .gpt2 import GPT2LMHeadModel, GPT2Model, KVCache
from .mask2former import (
    Mask2FormerForUniversalSegmentation,
    Mask2FormerHungarianMatcher,
    Mask2FormerMaskedAttentionDecoder,
    MaskedCrossAttention,
    use_masked_attention,
)
from .vit import ViTEmbeddings, ViTForImageClassification, ViTModel
from .wav2vec2 import Wav2Vec2ForCTC, Wav2Vec2ForSequenceClassification, Wav2Vec2Model, ctc_greedy_decode

__all__ = [
    "BartForConditionalGeneration",
    "BartModel",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "ConvNextForImageClassification",
    "ConvNextLayer",
    "ConvNextModel",
    "DetrForObjectDetection",
    "DetrHungarianMatcher",
    "GLPNForDepthEstimation",
    "GPT2LMHeadModel",
    "GPT2Model",
    "KVCache",
    "Mask2FormerForUniversalSegmentation",
    "Mask2FormerHungarianMatcher",
    "Mask2FormerMaskedAttentionDecoder",
    "MaskedCrossAttention",
    "ViTEmbeddings",
    "ViTForImageClassification",
    "ViTModel",
    "Wav2Vec2ForCTC",
    "Wav2Vec2ForSequenceClassification",
    "Wav2Vec2Model",
    "ctc_greedy_decode",
    "hf_attention",
    "use_masked_attention",
]
