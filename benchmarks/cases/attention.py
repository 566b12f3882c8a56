"""attention cases: the attention of each seed model at its usual size, forward and backward
(FLOPs: 4 B H Nq Nk D, halved when causal; backward 2.5x). Speed-ups are over
F.scaled_dot_product_attention with its own backend choice."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

import taskkernels
from taskkernels import reference

from ..harness import Case, Prepared, Provider, pick_cases

BASELINE = "sdpa"

# name -> (B, H, Nq, Nk, D, causal, padded)
GPU_CASES = {
    "BERT-base 512 padded": (32, 12, 512, 512, 64, False, True),
    "GPT-2 1024 causal": (8, 12, 1024, 1024, 64, True, False),
    "ViT-B/16 197": (64, 12, 197, 197, 64, False, False),
    "BART cross 128x1024": (16, 16, 128, 1024, 64, False, False),
    "long 4096 d128": (4, 16, 4096, 4096, 128, False, False),
    "long 4096 d128 causal": (4, 16, 4096, 4096, 128, True, False),
}
CPU_CASES = {
    "BERT-base 512 padded b8": (8, 12, 512, 512, 64, False, True),
    "GPT-2 1024 causal b2": (2, 12, 1024, 1024, 64, True, False),
    "ViT-B/16 197 b8": (8, 12, 197, 197, 64, False, False),
    "BART cross 128x1024 b4": (4, 16, 128, 1024, 64, False, False),
}
QUICK_CASES = {"tiny": (2, 2, 33, 40, 32, True, True)}
HEADLINE = {"cuda": ["BERT-base 512 padded"], "cpu": ["BERT-base 512 padded b8"]}


def _inputs(B, H, Nq, Nk, D, causal, padded, dtype, device):
    q = torch.randn(B, H, Nq, D, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(B, H, Nk, D, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(B, H, Nk, D, device=device, dtype=dtype, requires_grad=True)
    kpm = None
    if padded:  # a padded batch: each sequence keeps between half and all of its tokens
        lengths = torch.randint(Nk // 2, Nk + 1, (B,), device=device)
        kpm = torch.arange(Nk, device=device)[None, :] >= lengths[:, None]
    return dict(q=q, k=k, v=v, causal=causal, key_padding_mask=kpm)


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    table, dtypes = pick_cases(device, quick, GPU_CASES, CPU_CASES, QUICK_CASES, [torch.bfloat16, torch.float16])
    out = []
    for name, (B, H, Nq, Nk, D, causal, padded) in table.items():
        flops = 4.0 * B * H * Nq * Nk * D / (2 if causal else 1)
        case_dtypes = dtypes + ([torch.float32] if device.type == "cuda" and name.startswith("BERT") else [])
        for dtype in case_dtypes:
            out.append(Case(name, dtype, lambda a=(B, H, Nq, Nk, D, causal, padded), dtype=dtype: _inputs(*a, dtype, device),
                            {"forward": flops, "backward": 2.5 * flops, "forward+backward": 3.5 * flops}))
    return out


def _ours(inp):
    return Prepared(lambda: taskkernels.attention(inp["q"], inp["k"], inp["v"], causal=inp["causal"],
                                                  key_padding_mask=inp["key_padding_mask"]), _leaves(inp))


def _leaves(inp):
    return [inp["q"], inp["k"], inp["v"]]


def _sdpa(backend=None, sdpa=F.scaled_dot_product_attention):
    """SDPA (a backend forced, or its own choice), or a drop-in with its signature."""
    def prepare(inp):
        q, k, kpm, causal = inp["q"], inp["k"], inp["key_padding_mask"], inp["causal"]
        mask = None if kpm is None else ~kpm[:, None, None, :]  # SDPA: True = take part
        if causal and (mask is not None or q.shape[2] != k.shape[2]):
            # SDPA's is_causal takes no mask and aligns to the start: spell ours out instead.
            Nq, Nk = q.shape[2], k.shape[2]
            tril = torch.ones(Nq, Nk, dtype=torch.bool, device=q.device).tril(Nk - Nq)
            mask = tril if mask is None else mask & tril
            causal = False

        def run():
            ctx = contextlib.nullcontext()
            if backend is not None:
                from torch.nn.attention import sdpa_kernel

                ctx = sdpa_kernel([backend])
            with ctx:
                return sdpa(q, k, inp["v"], attn_mask=mask, is_causal=causal)

        return Prepared(run, _leaves(inp))

    return prepare


def _eager(inp):
    return Prepared(lambda: reference.attention(inp["q"], inp["k"], inp["v"], causal=inp["causal"],
                                                key_padding_mask=inp["key_padding_mask"]), _leaves(inp))


def providers(device: torch.device) -> list[Provider]:
    out = [Provider("taskkernels", _ours),
           Provider("tk sdpa drop-in", _sdpa(sdpa=taskkernels.scaled_dot_product_attention), variant=True),
           Provider(BASELINE, _sdpa())]
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend

        for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                              ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)):
            out.append(Provider(f"sdpa {name}", _sdpa(backend)))
    out.append(Provider("eager (models)", _eager))
    return out
