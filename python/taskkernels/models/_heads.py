"""Pieces the model classes share: HF's classification loss and the HF-loading plumbing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def classification_loss(logits: Tensor, labels: Tensor, num_labels: int, problem_type: str | None) -> Tensor:
    """HF's sequence / image classification loss: the problem type from the config, else from
    num_labels and the labels' dtype (regression: MSE, single label: CE, multi-label: BCE)."""
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze()) if num_labels == 1 else F.mse_loss(logits, labels)
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels)


def activation(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    from transformers.activations import ACT2FN  # other activations, as HF names them

    return ACT2FN[name]


class FromHF(nn.Module):
    """``from_hf`` / ``from_pretrained`` for a class built from an HF config whose parameters
    carry HF's names; subclasses set ``hf_class_name``."""

    hf_class_name: str

    @classmethod
    def from_hf(cls, hf_model: nn.Module):
        """Builds the model from the matching HF model, sharing nothing, same weights."""
        model = cls(hf_model.config)
        result = model.load_state_dict(hf_model.state_dict(), strict=False)
        hf_params = {name for name, _ in hf_model.named_parameters()}
        unused = [k for k in result.unexpected_keys if k in hf_params]  # HF's extra buffers are fine
        if result.missing_keys or unused:
            raise ValueError(f"{cls.__name__}.from_hf: keys differ: missing {result.missing_keys}, unused {unused}")
        p = next(hf_model.parameters())
        return model.to(device=p.device, dtype=p.dtype)

    @classmethod
    def from_pretrained(cls, local_dir: str):
        """Loads a directory that transformers saved (``save_pretrained``); nothing is downloaded."""
        import transformers

        hf = getattr(transformers, cls.hf_class_name).from_pretrained(local_dir, local_files_only=True)
        return cls.from_hf(hf)


class ConvertsHF:
    """Classes that hand back HF's own model with our pieces swapped in (where the rest of the
    model holds no op of ours): ``Cls(config)`` builds one, ``Cls.from_hf(model)`` converts a copy,
    ``Cls.from_pretrained(local_dir)`` loads a saved directory (nothing downloaded). Subclasses
    set ``hf_class_name`` and write ``_convert(model) -> model`` (in place)."""

    hf_class_name: str

    def __new__(cls, config):
        import transformers

        return cls._convert(getattr(transformers, cls.hf_class_name)(config))

    @classmethod
    def from_hf(cls, hf_model: nn.Module) -> nn.Module:
        import copy

        return cls._convert(copy.deepcopy(hf_model))

    @classmethod
    def from_pretrained(cls, local_dir: str) -> nn.Module:
        import transformers

        return cls._convert(getattr(transformers, cls.hf_class_name).from_pretrained(local_dir, local_files_only=True))

    @staticmethod
    def _convert(model: nn.Module) -> nn.Module:
        raise NotImplementedError
