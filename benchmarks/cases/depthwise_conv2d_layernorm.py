"""The ConvNeXt block front: depthwise 7x7 + bias, permute to (B, H, W, C), LayerNorm over C. The
reference is HF ConvNextLayer's code (F.conv2d, permute, F.layer_norm); also timed: our
depthwise_conv2d followed by F.layer_norm. Same stages and formats as depthwise_conv2d's cases;
bytes as there (x in, the normalized tensor out; backward grad_out and x in, grad_x out)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import taskkernels
from taskkernels import reference

from ..harness import REFERENCE, Case, Prepared, Provider, pick_cases
from .depthwise_conv2d import CPU_CASES, GPU_CASES, QUICK_CASES, tensor_bytes
from .depthwise_conv2d import HEADLINE as HEADLINE  # the same stage and layout


def _inputs(B, C, S, fmt, dtype, device):
    x = torch.randn(B, C, S, S, device=device, dtype=dtype)
    if fmt == "NHWC":
        x = x.to(memory_format=torch.channels_last)
    params = [torch.randn(C, 1, 7, 7, device=device) / 7, torch.randn(C, device=device),
              1 + 0.1 * torch.randn(C, device=device), 0.1 * torch.randn(C, device=device)]
    return dict(x=x.requires_grad_(), params=[p.to(dtype).requires_grad_() for p in params])


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    table, dtypes = pick_cases(device, quick, GPU_CASES, CPU_CASES, QUICK_CASES, [torch.bfloat16, torch.float32])
    return [Case(name, dtype, lambda a=a, dtype=dtype: _inputs(*a, dtype, device),
                 bytes=tensor_bytes(a[0] * a[1] * a[2] * a[2], dtype))
            for name, a in table.items() for dtype in dtypes]


def _unfused_ours(x, weight, bias, ln_weight, ln_bias):
    y = taskkernels.depthwise_conv2d(x, weight, bias).permute(0, 2, 3, 1)
    return F.layer_norm(y, (y.shape[-1],), ln_weight, ln_bias, 1e-6)


def _functional(fn):
    def prepare(inp):
        return Prepared(lambda: fn(inp["x"], *inp["params"]), [inp["x"], *inp["params"]])

    return prepare


def providers(device: torch.device) -> list[Provider]:
    return [
        Provider("taskkernels", _functional(taskkernels.depthwise_conv2d_layernorm)),
        Provider("tk dwconv + F.layer_norm", _functional(_unfused_ours), variant=True),
        Provider(REFERENCE, _functional(reference.depthwise_conv2d_layernorm)),
    ]
