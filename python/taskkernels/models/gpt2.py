"""GPT-2 on :func:`taskkernels.attention`: the causal LM with a KV cache and ``generate()``
(greedy and top-k / top-p sampling, batches with left padding), loading HF's state dicts
unchanged."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.attention import attention
from ._cache import KVCache
from ._heads import FromHF, activation

__all__ = ["GPT2LMHeadModel", "GPT2Model", "KVCache"]


class Conv1D(nn.Module):
    """HF's ``Conv1D``: a linear layer whose weight is stored (in, out)."""

    def __init__(self, n_out: int, n_in: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(std=0.02))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class GPT2Attention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        E, H = config.hidden_size, config.num_attention_heads
        if E % H:
            raise ValueError(f"GPT2Attention: hidden size {E} is not divisible by the number of heads {H}")
        self.heads, self.layer_idx = H, layer_idx
        self.scaling = (E // H) ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scaling /= float(layer_idx + 1)
        self.c_attn = Conv1D(3 * E, E)
        self.c_proj = Conv1D(E, E)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None, cache: KVCache | None) -> Tensor:
        B, T, _ = x.shape
        # (B, T, H, D) slices of one projection viewed as (B, H, T, D): attention reads the strides.
        # Thirds and -1, not E: under tensor parallelism the projection holds this rank's heads.
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in self.c_attn(x).chunk(3, dim=2))
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        # causal is aligned to the end: the T new queries follow the cached keys.
        out = attention(q, k, v, causal=True, key_padding_mask=key_padding_mask, scale=self.scaling,
                        dropout_p=self.attn_dropout.p if self.training else 0.0)
        return self.resid_dropout(self.c_proj(out.transpose(1, 2).reshape(B, T, -1)))


class GPT2MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        E = config.hidden_size
        inner = config.n_inner if config.n_inner is not None else 4 * E
        self.c_fc = Conv1D(inner, E)
        self.c_proj = Conv1D(E, inner)
        self.act = activation(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        E = config.hidden_size
        self.ln_1 = nn.LayerNorm(E, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(E, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None, cache: KVCache | None) -> Tensor:
        x = x + self.attn(self.ln_1(x), key_padding_mask, cache)
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    """HF ``GPT2Model`` (no cross-attention): token + position embeddings, pre-LN blocks on causal
    :func:`taskkernels.attention`, final LayerNorm."""

    def __init__(self, config):
        super().__init__()
        if getattr(config, "add_cross_attention", False):
            raise ValueError("taskkernels.models.GPT2Model: add_cross_attention is not supported")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                cache: KVCache | None = None) -> Tensor:
        """input_ids (B, T): the new tokens; attention_mask (B, past + T), 1 = token, 0 = padding
        (HF's convention, covering the cached tokens too); position_ids default to
        ``past .. past + T - 1`` as in HF."""
        B, T = input_ids.shape
        past = len(cache) if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device)[None]
        key_padding_mask = None
        if attention_mask is not None:
            if attention_mask.shape != (B, past + T):
                raise ValueError(f"GPT2Model: attention_mask must have shape (B, past + T) = ({B}, {past + T}), "
                                 f"got {tuple(attention_mask.shape)}")
            key_padding_mask = attention_mask == 0
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))
        for block in self.h:
            x = block(x, key_padding_mask, cache)
        return self.ln_f(x)


@dataclass
class CausalLMOutput:
    loss: Tensor | None = None
    logits: Tensor | None = None
    past_key_values: KVCache | None = None
    last_hidden_state: Tensor | None = None


class GPT2LMHeadModel(FromHF):
    """Drop-in for HF ``GPT2LMHeadModel`` (same keys, ``from_hf``, ``from_pretrained``; the LM head
    tied to the token embeddings as in HF): logits, the shifted next-token loss, a KV cache
    (``use_cache=True`` / ``past_key_values``), and :meth:`generate`."""

    hf_class_name = "GPT2LMHeadModel"

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if getattr(config, "tie_word_embeddings", True):
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                labels: Tensor | None = None, past_key_values: KVCache | None = None,
                use_cache: bool = False) -> CausalLMOutput:
        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache(self.config.num_hidden_layers)
        hidden = self.transformer(input_ids, attention_mask, position_ids, cache)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:  # HF's causal LM loss: predict token t + 1 from t, -100 ignored
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits, past_key_values=cache, last_hidden_state=hidden)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 20,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int | None = 50, top_p: float = 1.0,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None) -> Tensor:
        """HF's ``generate`` for a decoder-only model, greedy or sampled, with a KV cache.

        Args:
            input_ids: (B, T) prompts, left-padded when of different lengths.
            attention_mask: (B, T), 1 = token, 0 = padding (left). Positions count tokens only,
                as in HF (``cumsum(mask) - 1``).
            max_new_tokens: tokens to add (fewer when every sequence has ended).
            do_sample: sample from the processed distribution (torch's global generator), else argmax.
            temperature, top_k, top_p: HF's warpers in HF's order (temperature, top-k, top-p; top_k
                None or 0 and top_p 1.0 switch theirs off), used when sampling.
            eos_token_id: id(s) that end a sequence (default: the config's, if in the vocabulary);
                ended sequences continue with ``pad_token_id`` (default: the first eos id).

        Returns:
            (B, T + new) int64: the prompts followed by the generated ids.
        """
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        V = self.config.vocab_size
        if eos_token_id is None:
            eos_token_id = self.config.eos_token_id
        eos = [e for e in ([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id or []) if 0 <= e < V]
        if pad_token_id is None:
            pad_token_id = eos[0] if eos else 0
        eos_ids = torch.tensor(eos, dtype=input_ids.dtype, device=input_ids.device)

        cache = KVCache(self.config.num_hidden_layers, capacity=T + max_new_tokens)
        position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        logits = self(input_ids, attention_mask, position_ids, past_key_values=cache).logits[:, -1]
        tokens = input_ids
        unfinished = torch.ones(B, dtype=torch.bool, device=input_ids.device)
        for step in range(max_new_tokens):
            scores = logits.float()
            if do_sample:
                probs = F.softmax(_warp(scores, temperature, top_k, top_p), dim=-1)
                next_tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
            else:
                next_tokens = scores.argmax(dim=-1)
            next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad_token_id))
            tokens = torch.cat([tokens, next_tokens[:, None]], dim=1)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
            if eos:
                unfinished &= ~torch.isin(next_tokens, eos_ids)
                if not unfinished.any():
                    break
            if step + 1 == max_new_tokens:
                break
            position_ids = position_ids[:, -1:] + 1
            logits = self(next_tokens[:, None], attention_mask, position_ids, past_key_values=cache).logits[:, -1]
        return tokens


def _warp(scores: Tensor, temperature: float, top_k: int | None, top_p: float) -> Tensor:
    """HF's sampling warpers, in HF's order: temperature, top-k, top-p (keeping at least one token)."""
    if temperature != 1.0:
        scores = scores / temperature
    if top_k:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]))[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - top_p)
        drop[..., -1:] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return scores
