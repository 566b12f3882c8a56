"""BART on :func:`taskkernels.attention`: encoder self-attention, decoder causal self-attention
and cross-attention with a KV cache, and ``generate()`` (greedy and beam search), loading HF's
``BartForConditionalGeneration`` state dicts unchanged."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.attention import attention
from ._cache import KVCache
from ._heads import FromHF, activation

__all__ = ["BartForConditionalGeneration", "BartModel", "shift_tokens_right"]


def shift_tokens_right(labels: Tensor, pad_token_id: int, decoder_start_token_id: int) -> Tensor:
    """HF's decoder inputs for teacher forcing: labels moved one step right behind the start
    token, -100 (ignored labels) replaced by padding."""
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


class _ScaledEmbedding(nn.Embedding):
    def __init__(self, num: int, dim: int, padding_idx: int, scale: float):
        super().__init__(num, dim, padding_idx)
        self.embed_scale = scale

    def forward(self, ids: Tensor) -> Tensor:
        return super().forward(ids) * self.embed_scale


class _LearnedPositions(nn.Embedding):
    """BART's learned positions, stored with an offset of 2 (HF's layout)."""

    def __init__(self, num: int, dim: int):
        super().__init__(num + 2, dim)

    def forward(self, start: int, length: int) -> Tensor:
        return super().forward(torch.arange(start + 2, start + 2 + length, device=self.weight.device))


class BartAttention(nn.Module):
    def __init__(self, config, heads: int, causal: bool):
        super().__init__()
        E = config.d_model
        if E % heads:
            raise ValueError(f"BartAttention: d_model {E} is not divisible by the number of heads {heads}")
        self.heads, self.causal, self.dropout = heads, causal, config.attention_dropout
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(E, E) for _ in range(4))

    def _split(self, x: Tensor) -> Tensor:  # (B, T, E) -> (B, H, T, D) view
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None, kv: Tensor | None = None,
                cache: KVCache | None = None, cross_cache: list | None = None, layer: int = 0) -> Tensor:
        """Self-attention (kv None; the cache grows by x's tokens) or cross-attention over kv (its
        keys and values computed once and kept in cross_cache[layer])."""
        B, T, _ = x.shape
        q = self._split(self.q_proj(x))
        if kv is None:
            k, v = self._split(self.k_proj(x)), self._split(self.v_proj(x))
            if cache is not None:
                k, v = cache.update(layer, k, v)
        elif cross_cache is not None and cross_cache[layer] is not None:
            k, v = cross_cache[layer]
        else:
            k, v = self._split(self.k_proj(kv)), self._split(self.v_proj(kv))
            if cross_cache is not None:
                cross_cache[layer] = (k, v)
        out = attention(q, k, v, causal=self.causal, key_padding_mask=key_padding_mask,
                        dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, -1))


class _FeedForward(nn.Module):
    """fc1 -> activation -> dropout -> fc2 -> dropout, then residual and final_layer_norm (post-LN)."""

    def __init__(self, config, ffn_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.act = activation(config.activation_function)
        self.activation_dropout, self.dropout = config.activation_dropout, config.dropout

    def ffn(self, x: Tensor) -> Tensor:
        h = F.dropout(self.act(self.fc1(x)), self.activation_dropout, self.training)
        return self.final_layer_norm(x + F.dropout(self.fc2(h), self.dropout, self.training))


class BartEncoderLayer(_FeedForward):
    def __init__(self, config):
        super().__init__(config, config.encoder_ffn_dim)
        self.self_attn = BartAttention(config, config.encoder_attention_heads, causal=False)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        x = self.self_attn_layer_norm(x + F.dropout(self.self_attn(x, key_padding_mask), self.dropout, self.training))
        return self.ffn(x)


class BartDecoderLayer(_FeedForward):
    def __init__(self, config):
        super().__init__(config, config.decoder_ffn_dim)
        self.self_attn = BartAttention(config, config.decoder_attention_heads, causal=True)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.encoder_attn = BartAttention(config, config.decoder_attention_heads, causal=False)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, x: Tensor, self_padding: Tensor | None, enc: Tensor, enc_padding: Tensor | None,
                cache: "_DecoderCache | None", layer: int) -> Tensor:
        h = self.self_attn(x, self_padding, cache=cache.self_attn if cache is not None else None, layer=layer)
        x = self.self_attn_layer_norm(x + F.dropout(h, self.dropout, self.training))
        h = self.encoder_attn(x, enc_padding, kv=enc, cross_cache=cache.cross if cache is not None else None, layer=layer)
        x = self.encoder_attn_layer_norm(x + F.dropout(h, self.dropout, self.training))
        return self.ffn(x)


class _Stack(nn.Module):
    """Embeddings (tokens scaled, learned positions, LayerNorm, dropout) and layers; BartEncoder /
    BartDecoder's keys."""

    def __init__(self, config, shared: nn.Embedding, layers: list, layerdrop: float):
        super().__init__()
        self.embed_tokens = shared
        self.embed_positions = _LearnedPositions(config.max_position_embeddings, config.d_model)
        self.layers = nn.ModuleList(layers)
        self.layernorm_embedding = nn.LayerNorm(config.d_model)
        self.dropout, self.layerdrop = config.dropout, layerdrop

    def embed(self, ids: Tensor, start: int = 0) -> Tensor:
        x = self.embed_tokens(ids) + self.embed_positions(start, ids.shape[1])
        return F.dropout(self.layernorm_embedding(x), self.dropout, self.training)

    def dropped(self) -> bool:
        """HF's layer drop (one draw per layer, in training only)."""
        return self.training and self.layerdrop > 0.0 and bool(torch.rand([]) < self.layerdrop)


class _DecoderCache:
    """The decoder's self-attention KV cache and the cross-attention keys and values."""

    def __init__(self, num_layers: int, capacity: int = 0):
        self.self_attn = KVCache(num_layers, capacity)
        self.cross: list = [None] * num_layers

    def __len__(self) -> int:
        return len(self.self_attn)

    def reorder(self, index: Tensor) -> None:
        # Beam search moves beams only within their batch entry, whose rows share one encoder
        # output, so the cross-attention keys and values are already right.
        self.self_attn.reorder(index)


class BartModel(nn.Module):
    """HF ``BartModel``: shared embeddings, encoder, decoder (same keys)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.shared = _ScaledEmbedding(config.vocab_size, config.d_model, config.pad_token_id, scale)
        self.encoder = _Stack(config, self.shared, [BartEncoderLayer(config) for _ in range(config.encoder_layers)],
                              config.encoder_layerdrop)
        self.decoder = _Stack(config, self.shared, [BartDecoderLayer(config) for _ in range(config.decoder_layers)],
                              config.decoder_layerdrop)

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        padding = None if attention_mask is None else attention_mask == 0
        x = self.encoder.embed(input_ids)
        for layer in self.encoder.layers:
            if not self.encoder.dropped():
                x = layer(x, padding)
        return x

    def decode(self, decoder_input_ids: Tensor, encoder_hidden_states: Tensor, attention_mask: Tensor | None = None,
               decoder_attention_mask: Tensor | None = None, cache: _DecoderCache | None = None) -> Tensor:
        """decoder_input_ids (B, T) the new tokens; decoder_attention_mask (B, past + T) or None;
        attention_mask (B, S) the encoder's."""
        past = len(cache) if cache is not None else 0
        enc_padding = None if attention_mask is None else attention_mask == 0
        self_padding = None if decoder_attention_mask is None else decoder_attention_mask == 0
        x = self.decoder.embed(decoder_input_ids, past)
        for i, layer in enumerate(self.decoder.layers):
            if not self.decoder.dropped():
                x = layer(x, self_padding, encoder_hidden_states, enc_padding, cache, i)
        return x


@dataclass
class Seq2SeqLMOutput:
    loss: Tensor | None = None
    logits: Tensor | None = None
    past_key_values: _DecoderCache | None = None
    encoder_last_hidden_state: Tensor | None = None


class BartForConditionalGeneration(FromHF):
    """Drop-in for HF ``BartForConditionalGeneration`` (same keys, ``from_hf``,
    ``from_pretrained``; embeddings and LM head tied as in HF): logits, HF's loss (decoder inputs
    shifted from the labels), a KV cache, and :meth:`generate` (greedy and beam search)."""

    hf_class_name = "BartForConditionalGeneration"

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = BartModel(config)
        self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if getattr(config, "tie_word_embeddings", True):
            self.lm_head.weight = self.model.shared.weight

    def _logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden) + self.final_logits_bias

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                decoder_input_ids: Tensor | None = None, decoder_attention_mask: Tensor | None = None,
                labels: Tensor | None = None, encoder_outputs: Tensor | None = None,
                past_key_values: _DecoderCache | None = None, use_cache: bool = False) -> Seq2SeqLMOutput:
        cfg = self.config
        if decoder_input_ids is None:
            source = labels if labels is not None else input_ids
            decoder_input_ids = shift_tokens_right(source, cfg.pad_token_id, cfg.decoder_start_token_id)
        enc = encoder_outputs if encoder_outputs is not None else self.model.encode(input_ids, attention_mask)
        cache = past_key_values
        if cache is None and use_cache and labels is None:
            cache = _DecoderCache(cfg.decoder_layers)
        logits = self._logits(self.model.decode(decoder_input_ids, enc, attention_mask, decoder_attention_mask, cache))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), labels.reshape(-1))
        return Seq2SeqLMOutput(loss=loss, logits=logits, past_key_values=cache, encoder_last_hidden_state=enc)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 20,
                 num_beams: int = 1, length_penalty: float = 1.0, early_stopping: bool | str = False,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
                 decoder_start_token_id: int | None = None, forced_eos_token_id: int | None = -1) -> Tensor:
        """HF's ``generate`` for BART: greedy (``num_beams=1``) or beam search, with a KV cache.

        Args:
            input_ids, attention_mask: (B, S) source ids and mask (1 = token, 0 = padding).
            max_new_tokens: decoder tokens after the start token.
            num_beams, length_penalty, early_stopping: HF's beam search (finished hypotheses scored
                by log-prob / generated length ** length_penalty; ``early_stopping`` True, False or
                "never" as in HF).
            eos_token_id, pad_token_id, decoder_start_token_id: default to the config's.
            forced_eos_token_id: forced as the last token when the length limit is reached (HF's
                ForcedEOSTokenLogitsProcessor); default (-1): the config's; None: off.

        Returns:
            (B, 1 + generated) int64 decoder ids, starting with the start token, finished
            sequences padded as HF pads them.
        """
        cfg = self.config
        eos_token_id = cfg.eos_token_id if eos_token_id is None else eos_token_id
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        pad = cfg.pad_token_id if pad_token_id is None else pad_token_id
        start = cfg.decoder_start_token_id if decoder_start_token_id is None else decoder_start_token_id
        forced_eos = getattr(cfg, "forced_eos_token_id", None) if forced_eos_token_id == -1 else forced_eos_token_id
        max_length = 1 + max_new_tokens
        B = input_ids.shape[0]

        enc = self.model.encode(input_ids, attention_mask)
        if num_beams > 1:
            enc = enc.repeat_interleave(num_beams, dim=0)
            attention_mask = None if attention_mask is None else attention_mask.repeat_interleave(num_beams, dim=0)
        cache = _DecoderCache(cfg.decoder_layers, capacity=max_length)

        def next_log_scores(tokens: Tensor, cur_len: int, log_softmax: bool) -> Tensor:
            scores = self._logits(self.model.decode(tokens, enc, attention_mask, None, cache))[:, -1].float()
            if log_softmax:
                scores = F.log_softmax(scores, dim=-1)
            if forced_eos is not None and cur_len == max_length - 1:
                scores = torch.full_like(scores, -math.inf)
                scores[:, forced_eos] = 0
            return scores

        first = torch.full((B * num_beams, 1), start, dtype=torch.long, device=input_ids.device)
        if num_beams == 1:
            return self._greedy(first, next_log_scores, max_length, eos, pad)
        return self._beam_search(first, next_log_scores, cache, B, num_beams, max_length, eos, pad, length_penalty,
                                 early_stopping)

    @staticmethod
    def _greedy(tokens: Tensor, next_scores, max_length: int, eos: list[int], pad: int) -> Tensor:
        B = tokens.shape[0]
        eos_ids = torch.tensor(eos, dtype=tokens.dtype, device=tokens.device)
        unfinished = torch.ones(B, dtype=torch.bool, device=tokens.device)
        step_input = tokens
        while tokens.shape[1] < max_length:
            nxt = next_scores(step_input, tokens.shape[1], log_softmax=False).argmax(dim=-1)
            nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad))
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            if eos:
                unfinished &= ~torch.isin(nxt, eos_ids)
                if not unfinished.any():
                    break
            step_input = nxt[:, None]
        return tokens

    @staticmethod
    def _beam_search(first: Tensor, next_scores, cache: _DecoderCache, B: int, nb: int, max_length: int,
                     eos: list[int], pad: int, length_penalty: float, early_stopping: bool | str) -> Tensor:
        """HF's (vectorized) beam search, step for step: keep the best (1 + #eos) x nb candidates;
        the best nb that do not stop continue; candidates among the top nb that stop compete
        for the nb finished slots with length-normalized scores; stop when no running beam can
        beat the worst finished one (HF's heuristic), when every candidate stops, or at the limit."""
        dev = first.device
        eos_ids = torch.tensor(eos, dtype=torch.long, device=dev)
        keep = max(2, 1 + len(eos)) * nb
        top_nb = torch.arange(keep, device=dev) < nb
        fill = (pad if pad else eos[0]) if eos else -1  # HF's fill value for unused positions
        neg = -1.0e9

        running = torch.full((B, nb, max_length), fill, dtype=torch.long, device=dev)
        running[:, :, 0] = first.view(B, nb, 1)[:, :, 0]
        finished = running.clone()
        run_scores = torch.zeros(B, nb, device=dev)
        run_scores[:, 1:] = neg
        fin_scores = torch.full((B, nb), neg, device=dev)
        fin_flag = torch.zeros(B, nb, dtype=torch.bool, device=dev)
        improvable = torch.ones(B, 1, dtype=torch.bool, device=dev)
        run_parents = torch.full((B, nb, max_length - 1), -1, dtype=torch.int32, device=dev)
        fin_parents = run_parents.clone()

        def gather(t: Tensor, idx: Tensor) -> Tensor:
            return torch.take_along_dim(t, idx.view(*idx.shape, *([1] * (t.dim() - 2))), dim=1)

        cur_len, step_input = 1, first
        while True:
            logp = next_scores(step_input, cur_len, log_softmax=True)
            V = logp.shape[-1]
            logp = (logp.view(B, nb, V) + run_scores[:, :, None]).reshape(B, nb * V)
            cand_scores, cand = torch.topk(logp, k=keep)
            src = cand // V
            cand_seq = gather(running, src)
            cand_seq[:, :, cur_len] = cand % V
            cand_parents = gather(run_parents, src)
            cand_parents[:, :, cur_len - 1] = (src + torch.arange(B, device=dev)[:, None] * nb).to(torch.int32)
            stops = torch.isin(cand_seq[:, :, cur_len], eos_ids) | (cur_len + 1 >= max_length)

            # The running beams of the next step.
            cont_scores = cand_scores + stops.to(torch.float32) * neg
            nxt = torch.topk(cont_scores, k=nb)[1]
            running, run_scores, run_parents = gather(cand_seq, nxt), gather(cont_scores, nxt), gather(cand_parents, nxt)

            # Finished hypotheses.
            just_finished = stops & top_nb[None, :]
            scored = cand_scores / ((cur_len + 1 - 1) ** length_penalty)
            full = torch.all(fin_flag, dim=-1, keepdim=True) & (early_stopping is True)
            scored += full.to(torch.float32) * neg
            scored += (~improvable).to(torch.float32) * neg
            scored += (~just_finished) * neg
            merged_scores = torch.cat((fin_scores, scored), dim=1)
            best = torch.topk(merged_scores, k=nb)[1]
            finished = gather(torch.cat((finished, cand_seq), dim=1), best)
            fin_scores = gather(merged_scores, best)
            fin_parents = gather(torch.cat((fin_parents, cand_parents), dim=1), best)
            fin_flag = gather(torch.cat((fin_flag, just_finished), dim=1), best)

            cache.reorder(run_parents[:, :, cur_len - 1].reshape(-1).long())
            cur_len += 1
            # HF's early-stop heuristic: can the best running beam still beat the worst finished one?
            length = (max_length - 1) if (early_stopping == "never" and length_penalty > 0.0) else (cur_len - 1)
            best_running = run_scores[:, :1] / (length ** length_penalty)
            worst_finished = torch.where(fin_flag, torch.min(fin_scores, dim=1, keepdim=True)[0], neg)
            improvable = improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
            open_beams = not (bool(torch.all(fin_flag)) and early_stopping is True)
            if not (bool(torch.any(improvable)) and open_beams and not bool(torch.all(stops))):
                break
            step_input = running[:, :, cur_len - 1].reshape(B * nb, 1)

        generated = int(((fin_parents[:, 0] + 1).bool()).sum(dim=1).max())
        return finished[:, 0, : 1 + generated]
