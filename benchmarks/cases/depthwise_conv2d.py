"""Depthwise 7x7 cases: the four ConvNeXt-T stages, NCHW and channels_last. Speed-ups are over
F.conv2d(groups=C) (the reference) in the same memory format. FLOPs: 2 x 49 per output
(backward: input and weight gradients, twice that). Bytes (for GB/s, against the device's copy
bandwidth): forward reads x and writes y; backward reads grad_out and x and writes grad_x; the
weights are negligible."""

from __future__ import annotations

import torch

import taskkernels
from taskkernels import reference

from ..harness import REFERENCE, Case, Prepared, Provider, pick_cases

# name -> (batch, channels, size)
_STAGES = {"stage 1 (96, 56²)": (96, 56), "stage 2 (192, 28²)": (192, 28), "stage 3 (384, 14²)": (384, 14),
           "stage 4 (768, 7²)": (768, 7)}
GPU_CASES = {f"{name} {fmt} batch {b}": (b, c, s, fmt) for b in (64, 1) for fmt in ("NCHW", "NHWC")
             for name, (c, s) in _STAGES.items()}
CPU_CASES = {f"{name} {fmt} batch 8": (8, c, s, fmt) for fmt in ("NCHW", "NHWC") for name, (c, s) in _STAGES.items()}
QUICK_CASES = {"tiny (8, 9²) NHWC batch 2": (2, 8, 9, "NHWC")}
# ConvNeXt's first stage in HF's layout (NCHW)
HEADLINE = {"cuda": ["stage 1 (96, 56²) NCHW batch 64"], "cpu": ["stage 1 (96, 56²) NCHW batch 8"]}


def _inputs(B, C, S, fmt, dtype, device):
    x = torch.randn(B, C, S, S, device=device, dtype=dtype)
    if fmt == "NHWC":
        x = x.to(memory_format=torch.channels_last)
    weight = (torch.randn(C, 1, 7, 7, device=device) / 7).to(dtype).requires_grad_()
    bias = torch.randn(C, device=device).to(dtype).requires_grad_()
    return dict(x=x.requires_grad_(), weight=weight, bias=bias)


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    table, dtypes = pick_cases(device, quick, GPU_CASES, CPU_CASES, QUICK_CASES, [torch.bfloat16, torch.float32])
    out = []
    for name, (b, c, s, fmt) in table.items():
        flops = 2.0 * b * c * s * s * 49
        modes = {"forward": flops, "backward": 2 * flops, "forward+backward": 3 * flops}
        for dtype in dtypes:
            out.append(Case(name, dtype, lambda b=b, c=c, s=s, fmt=fmt, dtype=dtype: _inputs(b, c, s, fmt, dtype, device),
                            modes, tensor_bytes(b * c * s * s, dtype)))
    return out


def tensor_bytes(numel: int, dtype: torch.dtype) -> dict:
    """Bytes that must move per mode for an op that maps one activation to one of the same size:
    2 tensors forward, 3 backward (grad_out, the saved input, grad_input)."""
    one = numel * torch.empty((), dtype=dtype).element_size()
    return {"forward": 2 * one, "backward": 3 * one, "forward+backward": 5 * one}


def _functional(fn):
    def prepare(inp):
        return Prepared(lambda: fn(inp["x"], inp["weight"], inp["bias"]), [inp["x"], inp["weight"], inp["bias"]])

    return prepare


def providers(device: torch.device) -> list[Provider]:
    return [
        Provider("taskkernels", _functional(taskkernels.depthwise_conv2d)),
        Provider(REFERENCE, _functional(reference.depthwise_conv2d)),
    ]
