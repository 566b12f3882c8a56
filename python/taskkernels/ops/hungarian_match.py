"""DETR's Hungarian matcher in one call: the cost matrix built batched where the predictions live,
then one batched exact solve."""

from __future__ import annotations

import torch
from torch import Tensor

from .linear_sum_assignment import batched_linear_sum_assignment, raise_on_unsolved

__all__ = ["hungarian_cost", "hungarian_match"]


def _corners(b: Tensor) -> Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def _generalized_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise GIoU of corner boxes a (B, N, 4) and b (B, M, 4) -> (B, N, M)."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.maximum(a[:, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, :, None] + area_b[:, None, :] - inter
    iou = inter / union
    lt_c = torch.minimum(a[:, :, None, :2], b[:, None, :, :2])
    rb_c = torch.maximum(a[:, :, None, 2:], b[:, None, :, 2:])
    wh_c = (rb_c - lt_c).clamp(min=0)
    enclosing = wh_c[..., 0] * wh_c[..., 1]
    return iou - (enclosing - union) / enclosing


def _pad_targets(targets: list[dict], device) -> tuple[Tensor, Tensor, Tensor]:
    """Targets padded to (B, M) labels and (B, M, 4) boxes in a handful of launches whatever B
    (the counts come from the shapes: no synchronization)."""
    sizes = [len(t["boxes"]) for t in targets]
    counts = torch.tensor(sizes, dtype=torch.int64)
    B, M = len(targets), max(max(sizes, default=0), 1)
    labels = torch.zeros(B * M, dtype=torch.int64, device=device)
    boxes = torch.full((B * M, 4), 0.5, device=device)  # padding: a harmless unit box
    boxes[:, 2:] = 1.0
    if sum(sizes):
        slots = torch.cat([b * M + torch.arange(n) for b, n in enumerate(sizes)]).to(device, non_blocking=True)
        labels[slots] = torch.cat([t["class_labels"] for t in targets]).to(device, torch.int64)
        boxes[slots] = torch.cat([t["boxes"] for t in targets]).to(device, boxes.dtype)
    return labels.view(B, M), boxes.view(B, M, 4), counts.to(device, non_blocking=True)


@torch.no_grad()
def hungarian_cost(
    pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict], cost_class: float = 1.0,
    cost_bbox: float = 5.0, cost_giou: float = 2.0,
) -> tuple[Tensor, Tensor]:
    """DETR's matching cost for the whole batch at once: (cost (B, N, M), num_targets (B,)), M the
    largest target count; columns past num_targets[b] are padding. Same terms as HF's
    ``DetrHungarianMatcher``: -softmax prob of the target class, L1 between cxcywh boxes, -GIoU;
    NaN/inf replaced by the dtype's max as HF does."""
    B, N, _ = pred_logits.shape
    labels, boxes, counts = _pad_targets(targets, pred_logits.device)
    prob = pred_logits.softmax(-1)
    class_term = -torch.gather(prob, 2, labels[:, None, :].expand(B, N, labels.shape[1]))
    boxes = boxes.to(pred_boxes.dtype)
    l1 = torch.cdist(pred_boxes, boxes, p=1)
    giou = -_generalized_iou(_corners(pred_boxes), _corners(boxes))
    cost = cost_bbox * l1 + cost_class * class_term + cost_giou * giou
    big = torch.finfo(cost.dtype).max
    return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big), counts


@torch.no_grad()
def hungarian_match(
    pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict], cost_class: float = 1.0,
    cost_bbox: float = 5.0, cost_giou: float = 2.0,
) -> list[tuple[Tensor, Tensor]]:
    """Drop-in for HF ``DetrHungarianMatcher(cost_class, cost_bbox, cost_giou)(outputs, targets)``.

    Args:
        pred_logits: (B, N, num_classes + 1) logits; pred_boxes: (B, N, 4) normalized cxcywh.
        targets: B dicts with "class_labels" (M_b,) and "boxes" (M_b, 4) cxcywh.

    Returns:
        B pairs (index_i, index_j) of int64 CPU tensors, index_i ascending, as HF returns them.
        The cost is built batched on the predictions' device and all B problems are solved in one
        call (``batched_linear_sum_assignment``).
    """
    cost, counts = hungarian_cost(pred_logits, pred_boxes, targets, cost_class, cost_bbox, cost_giou)
    assignment = batched_linear_sum_assignment(cost, counts).cpu()  # the one synchronization
    raise_on_unsolved(assignment)
    pairs = []
    for row in assignment:
        i = (row >= 0).nonzero().flatten()
        pairs.append((i, row[i]))
    return pairs
