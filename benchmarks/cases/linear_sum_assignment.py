"""Assignment cases: DETR's matcher problems (100 queries x 1..50 targets, a batch of 64) and one
300 x 300 problem. Speed-ups are over scipy.optimize.linear_sum_assignment called per image, the
way DETR's HungarianMatcher calls it."""

from __future__ import annotations

import torch

import taskkernels
from taskkernels import reference

from ..harness import Case, Prepared, Provider, pick_cases

BASELINE = "scipy"
MODES = ("forward",)

# name -> (batch, queries, max targets, ragged)
GPU_CASES = {
    "DETR 100 x 1..50, batch 64": (64, 100, 50, True),
    "DINO 900 x 1..100, batch 16": (16, 900, 100, True),
    "300 x 300": (1, 300, 300, False),
}
CPU_CASES = {
    "DETR 100 x 1..50, batch 64": (64, 100, 50, True),
    "300 x 300": (1, 300, 300, False),
}
QUICK_CASES = {"tiny 10 x 1..5, batch 4": (4, 10, 5, True)}
HEADLINE = {"cuda": ["DETR 100 x 1..50, batch 64"], "cpu": ["DETR 100 x 1..50, batch 64"]}


def _inputs(B, N, M, ragged, dtype, device):
    cost = torch.rand(B, N, M, device=device, dtype=dtype)
    num_targets = torch.randint(1, M + 1, (B,), device=device) if ragged else None
    return dict(cost=cost, num_targets=num_targets)


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    table, _ = pick_cases(device, quick, GPU_CASES, CPU_CASES, QUICK_CASES, [torch.float32])
    return [Case(name, torch.float32, lambda a=args: _inputs(*a, torch.float32, device)) for name, args in table.items()]


def _per_image(solver):
    """DETR's loop: one solve per image on a CPU copy of the cost (the reference)."""
    return lambda inp: Prepared(
        lambda: reference.batched_linear_sum_assignment(inp["cost"], inp["num_targets"], solver=solver), [])


def providers(device: torch.device) -> list[Provider]:
    try:
        from scipy.optimize import linear_sum_assignment as scipy_lsa
    except ImportError:
        scipy_lsa = None
    return [
        Provider("taskkernels", lambda inp: Prepared(
            lambda: taskkernels.batched_linear_sum_assignment(inp["cost"], inp["num_targets"]), [])),
        Provider("taskkernels per image", _per_image(taskkernels.linear_sum_assignment), variant=True),
        Provider(BASELINE, _per_image(scipy_lsa), unavailable=None if scipy_lsa else "scipy is not installed"),
    ]
