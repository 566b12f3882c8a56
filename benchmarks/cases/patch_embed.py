"""patch_embed cases: ViT embeddings at the sizes ViT models run."""

from __future__ import annotations

import torch

import taskkernels
from taskkernels import reference

from ..harness import REFERENCE, Case, Prepared, Provider, pick_cases

# name -> (batch, image, patch, hidden)
GPU_CASES = {
    "ViT-B/16 224px batch 64": (64, 224, 16, 768),
    "ViT-B/16 224px batch 1": (1, 224, 16, 768),
    "ViT-L/16 224px batch 32": (32, 224, 16, 1024),
    "ViT-B/32 224px batch 64": (64, 224, 32, 768),
}
CPU_CASES = {
    "ViT-B/16 224px batch 8": (8, 224, 16, 768),
    "ViT-B/16 224px batch 1": (1, 224, 16, 768),
}
QUICK_CASES = {"tiny 32px batch 2": (2, 32, 8, 16)}
# The case `python -m benchmarks.run` times without --all (its first dtype, forward+backward).
HEADLINE = {"cuda": ["ViT-B/16 224px batch 64"], "cpu": ["ViT-B/16 224px batch 8"]}


def _inputs(batch, image, patch, hidden, dtype, device):
    C = 3
    n = (image // patch) ** 2
    pixel_values = torch.randn(batch, C, image, image, device=device, dtype=dtype)
    weight = (torch.randn(hidden, C, patch, patch, device=device) / (C * patch * patch) ** 0.5).to(dtype)
    params = dict(
        weight=weight,
        bias=torch.randn(hidden, device=device, dtype=dtype),
        cls_token=torch.randn(1, 1, hidden, device=device, dtype=dtype),
        pos_embed=torch.randn(1, n + 1, hidden, device=device, dtype=dtype),
    )
    # Training a ViT: the parameters want gradients, the pixels do not.
    return dict(pixel_values=pixel_values, **{k: v.requires_grad_(True) for k, v in params.items()})


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    table, dtypes = pick_cases(device, quick, GPU_CASES, CPU_CASES, QUICK_CASES, [torch.bfloat16, torch.float32])
    out = []
    for name, (b, img, p, d) in table.items():
        gemm = 2.0 * b * (img // p) ** 2 * d * 3 * p * p  # 2 M N K of the patch GEMM
        # Backward with frozen pixels = the weight-gradient GEMM (same FLOPs as the forward).
        flops = {"forward": gemm, "backward": gemm, "forward+backward": 2 * gemm}
        for dtype in dtypes:
            out.append(Case(name, dtype, lambda b=b, img=img, p=p, d=d, dtype=dtype: _inputs(b, img, p, d, dtype, device), flops))
    return out


def _functional(fn):
    def prepare(inputs):
        leaves = [v for v in inputs.values() if v.requires_grad]
        return Prepared(lambda: fn(**inputs), leaves)

    return prepare


def _hf_module(inputs):
    from transformers import ViTConfig
    from transformers.models.vit.modeling_vit import ViTEmbeddings

    x, w = inputs["pixel_values"], inputs["weight"]
    config = ViTConfig(
        image_size=x.shape[-1], patch_size=w.shape[-1], num_channels=x.shape[1], hidden_size=w.shape[0],
        hidden_dropout_prob=0.0,
    )
    module = ViTEmbeddings(config).to(device=x.device, dtype=x.dtype)
    with torch.no_grad():
        module.patch_embeddings.projection.weight.copy_(w)
        module.patch_embeddings.projection.bias.copy_(inputs["bias"])
        module.cls_token.copy_(inputs["cls_token"])
        module.position_embeddings.copy_(inputs["pos_embed"])
    module.eval()
    return Prepared(lambda: module(x), list(module.parameters()))


def providers(device: torch.device) -> list[Provider]:
    try:
        import transformers  # noqa: F401

        hf_missing = None
    except ImportError:
        hf_missing = "transformers is not installed"
    return [
        Provider("taskkernels", _functional(taskkernels.patch_embed)),
        Provider(REFERENCE, _functional(reference.patch_embed)),
        Provider("hf ViTEmbeddings", _hf_module, unavailable=hf_missing),
    ]
