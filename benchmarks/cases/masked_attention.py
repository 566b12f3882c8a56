"""masked_attention cases: Mask2Former's decoder cross-attention at the 1/32, 1/16 and 1/8 levels
of a 1024 px image (HW 1024, 4096, 16384), 100 and 200 queries, 8 heads of 32, with masks made
of blobs covering 10%, 30% and 60% of the pixels (FLOPs: 4 B H Q HW D, as if dense; backward
2.5x). Speed-ups are over HF's path: ``nn.MultiheadAttention``'s math with the mask repeated over
heads (what HF's Mask2Former runs)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import taskkernels

from ..harness import Case, Prepared, Provider, pick_cases

BASELINE = "hf"

# name -> (B, H, Q, HW, D, density)
GPU_CASES = {
    f"Q{q} HW{hw} {int(d * 100)}%": (8, 8, q, hw, 32, d)
    for q in (100, 200) for hw in (1024, 4096, 16384) for d in (0.1, 0.3, 0.6)
}
CPU_CASES = {
    f"Q100 HW{hw} {int(d * 100)}% b2": (2, 8, 100, hw, 32, d) for hw in (1024, 4096) for d in (0.1, 0.6)
}
QUICK_CASES = {"tiny": (2, 2, 10, 64, 32, 0.3)}
# the 1/16 level; on the CPU the denser of its two masks (our speed-up falls with density)
HEADLINE = {"cuda": ["Q100 HW4096 30%"], "cpu": ["Q100 HW4096 60% b2"]}


def blob_masks(B: int, Q: int, HW: int, density: float, device) -> torch.Tensor:
    """(B, Q, HW) bool, True = blocked: each query sees one elliptical blob of about `density` of
    a square pixel grid, at a random place and aspect, like a predicted segment."""
    side = math.isqrt(HW)
    y = torch.arange(side, device=device, dtype=torch.float32)[:, None]
    x = torch.arange(side, device=device, dtype=torch.float32)[None, :]
    cy, cx = (torch.rand(2, B, Q, 1, 1, device=device) * side).unbind(0)
    aspect = torch.exp(torch.empty(B, Q, 1, 1, device=device).uniform_(-0.7, 0.7))
    area = density * HW
    ry, rx = (area / math.pi * aspect).sqrt(), (area / math.pi / aspect).sqrt()
    inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
    return ~inside.flatten(2)


def _inputs(B, H, Q, HW, D, density, dtype, device):
    # q, k, v as HF's projections leave them: (N, B, E) viewed as (B, H, N, D)
    q = torch.randn(Q, B, H, D, device=device, dtype=dtype).permute(1, 2, 0, 3).requires_grad_(True)
    k = torch.randn(HW, B, H, D, device=device, dtype=dtype).permute(1, 2, 0, 3).requires_grad_(True)
    v = torch.randn(HW, B, H, D, device=device, dtype=dtype).permute(1, 2, 0, 3).requires_grad_(True)
    return dict(q=q, k=k, v=v, mask=blob_masks(B, Q, HW, density, device))


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    table, dtypes = pick_cases(device, quick, GPU_CASES, CPU_CASES, QUICK_CASES, [torch.bfloat16])
    out = []
    for name, (B, H, Q, HW, D, density) in table.items():
        flops = 4.0 * B * H * Q * HW * D
        for dtype in dtypes:
            out.append(Case(name, dtype, lambda a=(B, H, Q, HW, D, density), dtype=dtype: _inputs(*a, dtype, device),
                            {"forward": flops, "backward": 2.5 * flops, "forward+backward": 3.5 * flops}))
    return out


def _leaves(inp):
    return [inp["q"], inp["k"], inp["v"]]


def _ours(inp):
    return Prepared(lambda: taskkernels.masked_attention(inp["q"], inp["k"], inp["v"], inp["mask"]), _leaves(inp))


def _hf_mask(mask: torch.Tensor, H: int) -> torch.Tensor:
    """What HF's decoder hands nn.MultiheadAttention: the mask repeated per head, fully blocked
    rows cleared."""
    m = mask[:, None].repeat(1, H, 1, 1).flatten(0, 1)
    return m * (m.sum(-1) != m.shape[-1]).unsqueeze(-1)


def _hf(inp):
    """nn.MultiheadAttention's attention with need_weights (HF's call): the bool mask made an
    additive float mask, baddbmm, softmax, bmm, on (B * H, N, D) batches."""
    q, k, v, mask = inp["q"], inp["k"], inp["v"], inp["mask"]
    B, H, Q, D = q.shape
    HW = k.shape[2]

    def run():
        m = _hf_mask(mask, H)
        float_mask = torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill_(m, float("-inf"))
        qb = q.reshape(B * H, Q, D) * (1.0 / math.sqrt(D))
        s = torch.baddbmm(float_mask, qb, k.reshape(B * H, HW, D).transpose(1, 2))
        p = torch.softmax(s, dim=-1)
        return torch.bmm(p, v.reshape(B * H, HW, D)).view(B, H, Q, D)

    return Prepared(run, _leaves(inp))


def _sdpa(inp):
    """F.scaled_dot_product_attention with the boolean mask expanded over heads (True = take part)."""
    q, k, v, mask = inp["q"], inp["k"], inp["v"], inp["mask"]
    H = q.shape[1]

    def run():
        keep = ~_hf_mask(mask, H).view(q.shape[0], H, q.shape[2], k.shape[2])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)

    return Prepared(run, _leaves(inp))


def providers(device: torch.device) -> list[Provider]:
    return [Provider("taskkernels", _ours), Provider(BASELINE, _hf), Provider("sdpa bool mask", _sdpa)]
