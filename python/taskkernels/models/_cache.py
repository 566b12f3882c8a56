"""The KV cache the decoder model classes share."""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of the tokens seen so far, per layer, as (B, H, T, D) views of buffers
    that grow by doubling (``capacity`` preallocates; ``generate`` passes prompt + new tokens).
    Attention reads the views as they are (any strides), so nothing is copied per step but the
    new token's keys and values. Under autograd (keys that require grad) it concatenates instead,
    so gradients flow through the cache."""

    def __init__(self, num_layers: int, capacity: int = 0):
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers
        self.lengths = [0] * num_layers
        self.capacity = capacity

    def __len__(self) -> int:
        """Tokens seen (by the first layer; the others catch up within a forward)."""
        return self.lengths[0]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start, T = self.lengths[layer], k.shape[2]
        end = start + T
        if k.requires_grad or v.requires_grad:
            if start:
                k = torch.cat([self.keys[layer][:, :, :start], k], dim=2)
                v = torch.cat([self.values[layer][:, :, :start], v], dim=2)
            self.keys[layer], self.values[layer], self.lengths[layer] = k, v, end
            return k, v
        buf_k, buf_v = self.keys[layer], self.values[layer]
        if buf_k is None or buf_k.shape[2] < end:
            size = max(end, self.capacity, 2 * (buf_k.shape[2] if buf_k is not None else 0))
            new_k = k.new_empty(k.shape[0], k.shape[1], size, k.shape[3])
            new_v = v.new_empty(v.shape[0], v.shape[1], size, v.shape[3])
            if start:
                new_k[:, :, :start] = buf_k[:, :, :start]
                new_v[:, :, :start] = buf_v[:, :, :start]
            buf_k, buf_v = self.keys[layer], self.values[layer] = new_k, new_v
        buf_k[:, :, start:end] = k
        buf_v[:, :, start:end] = v
        self.lengths[layer] = end
        return buf_k[:, :, :end], buf_v[:, :, :end]

    def reorder(self, index: Tensor) -> None:
        """Rows of the batch picked by `index` (beam search: each beam continues a parent's cache)."""
        for layer, n in enumerate(self.lengths):
            if self.keys[layer] is None:
                continue
            if self.keys[layer].requires_grad:
                self.keys[layer] = self.keys[layer].index_select(0, index)
                self.values[layer] = self.values[layer].index_select(0, index)
            else:
                self.keys[layer][:, :, :n] = self.keys[layer][:, :, :n].index_select(0, index)
                self.values[layer][:, :, :n] = self.values[layer][:, :, :n].index_select(0, index)
