"""DETR on taskkernels: every attention of HF's encoder and decoder on :func:`taskkernels.attention`
(through :mod:`.hf_attention`), and the training loss's Hungarian matcher on
:func:`taskkernels.hungarian_match` (the cost built batched on the device, all images solved in
one call). The ResNet backbone, position embeddings, heads and the loss terms stay HF's: they
hold no op of ours."""

from __future__ import annotations


import torch
from torch import nn

from ..ops.hungarian_match import hungarian_match
from . import hf_attention
from ._heads import ConvertsHF

__all__ = ["DetrForObjectDetection", "DetrHungarianMatcher", "detr_loss"]


class DetrHungarianMatcher(nn.Module):
    """HF's DETR ``HungarianMatcher(class_cost, bbox_cost, giou_cost)`` (same call and result) on
    :func:`taskkernels.hungarian_match`."""

    def __init__(self, class_cost: float = 1.0, bbox_cost: float = 1.0, giou_cost: float = 1.0):
        super().__init__()
        if class_cost == 0 and bbox_cost == 0 and giou_cost == 0:
            raise ValueError("DetrHungarianMatcher: all costs can't be 0")
        self.class_cost, self.bbox_cost, self.giou_cost = class_cost, bbox_cost, giou_cost

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]):
        return hungarian_match(outputs["logits"], outputs["pred_boxes"], targets, cost_class=self.class_cost,
                               cost_bbox=self.bbox_cost, cost_giou=self.giou_cost)


def detr_loss(logits, labels, device, pred_boxes, config, outputs_class=None, outputs_coord=None, **kwargs):
    """HF's ``ForObjectDetectionLoss`` (classification, L1, GIoU, cardinality, auxiliary decoder
    layers, weighted as HF weighs them) with :class:`DetrHungarianMatcher`."""
    from transformers.loss.loss_for_object_detection import ImageLoss, _set_aux_loss

    matcher = DetrHungarianMatcher(config.class_cost, config.bbox_cost, config.giou_cost)
    criterion = ImageLoss(matcher=matcher, num_classes=config.num_labels, eos_coef=config.eos_coefficient,
                          losses=["labels", "boxes", "cardinality"]).to(device)
    outputs = {"logits": logits, "pred_boxes": pred_boxes}
    auxiliary = None
    if config.auxiliary_loss:
        auxiliary = _set_aux_loss(outputs_class, outputs_coord)
        outputs["auxiliary_outputs"] = auxiliary
    losses = criterion(outputs, labels)
    weights = {"loss_ce": 1, "loss_bbox": config.bbox_loss_coefficient, "loss_giou": config.giou_loss_coefficient}
    if config.auxiliary_loss:
        weights.update({f"{k}_{i}": v for i in range(config.decoder_layers - 1) for k, v in list(weights.items())})
    loss = sum(losses[k] * weights[k] for k in losses if k in weights)
    return loss, losses, auxiliary


class DetrForObjectDetection(ConvertsHF):
    """HF's ``DetrForObjectDetection`` on taskkernels: building one (``(config)``), converting one
    (``from_hf``, a copy) or loading a saved directory (``from_pretrained``) returns an instance
    of HF's class (same keys, call, outputs and losses) whose attention runs on
    :func:`taskkernels.attention` and whose loss matches with :class:`DetrHungarianMatcher`."""

    hf_class_name = "DetrForObjectDetection"

    @staticmethod
    def _convert(model: nn.Module) -> nn.Module:
        hf_attention.use_taskkernels_attention(model)
        model.loss_function = detr_loss
        return model
