"""DETR's whole matcher (cost matrix + assignment) against HF's HungarianMatcher."""

from __future__ import annotations

import torch

import taskkernels

from ..harness import Case, Prepared, Provider, pick_cases

BASELINE = "hf matcher"
MODES = ("forward",)

# name -> (batch, queries, classes, max targets per image)
GPU_CASES = {
    "DETR batch 2": (2, 100, 91, 30),
    "DETR batch 16": (16, 100, 91, 30),
    "DETR batch 64": (64, 100, 91, 30),
    "DINO 900 queries batch 16": (16, 900, 91, 30),
}
CPU_CASES = {"DETR batch 2": (2, 100, 91, 30), "DETR batch 16": (16, 100, 91, 30), "DETR batch 64": (64, 100, 91, 30)}
QUICK_CASES = {"tiny": (2, 10, 5, 3)}
HEADLINE = {"cuda": ["DETR batch 16"], "cpu": ["DETR batch 16"]}


def _inputs(B, N, C, max_targets, device):
    def boxes(*shape):
        return torch.cat([torch.rand(*shape, 2, device=device) * 0.8 + 0.1,
                          torch.rand(*shape, 2, device=device) * 0.3 + 0.05], -1)

    counts = torch.randint(1, max_targets + 1, (B,)).tolist()
    targets = [dict(class_labels=torch.randint(0, C, (m,), device=device), boxes=boxes(m)) for m in counts]
    return dict(logits=torch.randn(B, N, C + 1, device=device), pred_boxes=boxes(B, N), targets=targets)


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    table, _ = pick_cases(device, quick, GPU_CASES, CPU_CASES, QUICK_CASES, [torch.float32])
    return [Case(name, torch.float32, lambda a=args: _inputs(*a, device)) for name, args in table.items()]


def providers(device: torch.device) -> list[Provider]:
    try:
        from transformers.loss.loss_for_object_detection import HungarianMatcher

        hf, missing = HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2), None
    except ImportError:
        hf, missing = None, "transformers is not installed"
    return [
        Provider("taskkernels", lambda inp: Prepared(
            lambda: taskkernels.hungarian_match(inp["logits"], inp["pred_boxes"], inp["targets"], 1, 5, 2), [])),
        Provider(BASELINE, lambda inp: Prepared(
            lambda: hf(dict(logits=inp["logits"], pred_boxes=inp["pred_boxes"]), inp["targets"]), []), unavailable=missing),
    ]
