"""BERT on :func:`taskkernels.attention`: the encoder and the sequence-classification,
token-classification and question-answering heads, loading Hugging Face's state dicts unchanged."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.attention import attention
from ._heads import FromHF, activation, classification_loss

__all__ = ["BertModel", "BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering"]


@dataclass
class BertOutput:
    """What the heads return: HF's fields (``loss`` None without labels)."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    start_logits: Tensor | None = None
    end_logits: Tensor | None = None
    last_hidden_state: Tensor | None = None
    pooler_output: Tensor | None = None


class BertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None, position_ids: Tensor | None) -> Tensor:
        B, N = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(N, device=input_ids.device).expand(B, N)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        B, N, _ = x.shape
        # (B, N, H, D) projections viewed as (B, H, N, D): attention takes the strides as they are.
        # The head size comes from the projection (under tensor parallelism it holds this rank's heads).
        q, k, v = (proj(x).view(B, N, self.heads, -1).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        out = attention(q, k, v, key_padding_mask=key_padding_mask,
                        dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(B, N, -1)


class _Residual(nn.Module):
    """dense -> dropout -> LayerNorm(+ residual): HF's BertSelfOutput and BertOutput."""

    def __init__(self, config, d_in: int):
        super().__init__()
        self.dense = nn.Linear(d_in, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = BertSelfAttention(config)
        self.attention.output = _Residual(config, config.hidden_size)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.output = _Residual(config, config.intermediate_size)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        x = self.attention.output(self.attention.self(x, key_padding_mask), x)
        return self.output(self.act(self.intermediate.dense(x)), x)


class BertModel(nn.Module):
    """HF ``BertModel`` (absolute positions, encoder only): same keys, ``(last_hidden_state,
    pooler_output)`` out."""

    def __init__(self, config, add_pooling_layer: bool = True):
        super().__init__()
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError("taskkernels.models.BertModel: only absolute position embeddings are supported")
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        if add_pooling_layer:
            self.pooler = nn.Module()
            self.pooler.dense = nn.Linear(config.hidden_size, config.hidden_size)
        else:
            self.pooler = None

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        # HF's attention_mask: 1 = token, 0 = padding; taskkernels.attention wants True = padding.
        key_padding_mask = None if attention_mask is None else attention_mask == 0
        x = self.embeddings(input_ids, token_type_ids, position_ids)
        for layer in self.encoder.layer:
            x = layer(x, key_padding_mask)
        pooled = torch.tanh(self.pooler.dense(x[:, 0])) if self.pooler is not None else None
        return x, pooled


def _classifier_dropout(config) -> nn.Dropout:
    drop = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return nn.Dropout(drop)


class BertForSequenceClassification(FromHF):
    hf_class_name = "BertForSequenceClassification"

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.bert = BertModel(config)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None):
        hidden, pooled = self.bert(input_ids, attention_mask, token_type_ids, position_ids)
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else classification_loss(logits, labels, self.num_labels,
                                                                self.config.problem_type)
        return BertOutput(loss=loss, logits=logits, last_hidden_state=hidden, pooler_output=pooled)


class BertForTokenClassification(FromHF):
    hf_class_name = "BertForTokenClassification"

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None):
        hidden, _ = self.bert(input_ids, attention_mask, token_type_ids, position_ids)
        logits = self.classifier(self.dropout(hidden))
        loss = None if labels is None else F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return BertOutput(loss=loss, logits=logits, last_hidden_state=hidden)


class BertForQuestionAnswering(FromHF):
    hf_class_name = "BertForQuestionAnswering"

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, start_positions=None,
                end_positions=None):
        hidden, _ = self.bert(input_ids, attention_mask, token_type_ids, position_ids)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in self.qa_outputs(hidden).split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.size(1)  # positions outside the input are ignored, as in HF
            start = start_positions.reshape(-1).clamp(0, ignored)
            end = end_positions.reshape(-1).clamp(0, ignored)
            loss = (F.cross_entropy(start_logits, start, ignore_index=ignored)
                    + F.cross_entropy(end_logits, end, ignore_index=ignored)) / 2
        return BertOutput(loss=loss, start_logits=start_logits, end_logits=end_logits, last_hidden_state=hidden)
