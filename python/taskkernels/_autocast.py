"""Autocast rules: under ``torch.autocast`` each op runs in the dtype the PyTorch op it replaces
would run in.

Autocast only knows the ops it was written for; an op without a rule takes its inputs as they
arrive (fp32 activations next to bf16 ones, or an fp32 convolution where ``F.conv2d`` would run in
bf16). Each op here gets a kernel at the Autocast dispatch key of the CPU and of CUDA which casts
its floating inputs as autocast's own policies do, then calls the op again below autocast: the
casts are ordinary differentiable ops, so gradients come back to the original tensors in their
own dtype, and the backward ops run in the dtype the forward ran in.

Policies (the names of ``aten/src/ATen/autocast_mode.h``):

* ``lower_precision_fp``: floating inputs are cast to the autocast dtype
  (``torch.get_autocast_dtype(device)``, bf16 or fp16), as for ``F.scaled_dot_product_attention``
  and ``F.conv2d``;
* ``fp32``: floating inputs of lower precision are cast to float32, as for ``F.ctc_loss``.

As in autocast, float64 tensors and tensors on another device type are never cast, and neither
are integer or bool tensors (masks, lengths, packed mask bits).
"""

from __future__ import annotations

import torch

__all__ = ["POLICIES"]

LOWER_PRECISION_FP = "lower_precision_fp"
FP32 = "fp32"

# op name -> (policy, the PyTorch op whose policy it follows). pack_attention_mask has no rule: it
# only tests the sign of its logits, which every floating dtype keeps, and returns int64 bits.
POLICIES: dict[str, tuple[str, str]] = {
    "attention": (LOWER_PRECISION_FP, "F.scaled_dot_product_attention"),
    "masked_attention": (LOWER_PRECISION_FP, "F.scaled_dot_product_attention"),
    "patch_embed": (LOWER_PRECISION_FP, "F.conv2d"),
    "depthwise_conv2d": (LOWER_PRECISION_FP, "F.conv2d"),
    "depthwise_conv2d_layernorm": (LOWER_PRECISION_FP, "F.conv2d"),
    "ctc_nll": (FP32, "F.ctc_loss"),
    "batched_linear_sum_assignment": (FP32, "autocast's fp32 list (cdist, the matcher's cost)"),
}

DEVICE_TYPES = ("cpu", "cuda")

# attention's attn_bias (argument 5) may stay float32 whatever q's dtype (the op takes a float32
# bias with any q): an HF additive mask of finfo(float32).min stays finite, as it would not in
# fp16. A bias of any other dtype follows q.
_ATTN_BIAS = 5


def _eligible(t, device_type: str) -> bool:
    """autocast's is_eligible: a floating tensor on this device type, not float64."""
    return (isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
            and t.device.type == device_type)


def _cast_args(name: str, args: tuple, device_type: str, to: torch.dtype) -> list:
    out = [a.to(to) if _eligible(a, device_type) else a for a in args]
    if name == "attention" and len(args) > _ATTN_BIAS and isinstance(args[_ATTN_BIAS], torch.Tensor):
        bias, q = args[_ATTN_BIAS], out[0]
        out[_ATTN_BIAS] = bias if bias.dtype in (torch.float32, q.dtype) else bias.to(q.dtype)
    return out


def _kernel(name: str, policy: str, device_type: str):
    op = getattr(torch.ops.taskkernels, name).default
    autocast_key = getattr(torch._C.DispatchKey, "Autocast" + torch._C._dispatch_key_for_device(device_type))
    below_autocast = torch._C.DispatchKeySet(autocast_key)

    def kernel(keyset, *args):
        to = torch.get_autocast_dtype(device_type) if policy == LOWER_PRECISION_FP else torch.float32
        cast = _cast_args(name, args, device_type, to)
        with torch._C._ExcludeDispatchKeyGuard(below_autocast):
            return op(*cast)

    return kernel


_lib = torch.library.Library("taskkernels", "IMPL")


def _register() -> None:
    for device_type in DEVICE_TYPES:
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        for name, (policy, _) in POLICIES.items():
            _lib.impl(name, _kernel(name, policy, device_type), key, with_keyset=True)


_register()
