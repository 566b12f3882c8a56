"""Bad input to patch_embed raises an error that names the argument, in eager mode and on fake
tensors (what torch.compile sees)."""

import pytest
import torch

import taskkernels
from conftest import requires_cuda


def good(device="cpu", dtype=torch.float32):
    return dict(
        pixel_values=torch.randn(2, 3, 32, 32, device=device, dtype=dtype),
        weight=torch.randn(8, 3, 16, 16, device=device, dtype=dtype),
        bias=torch.randn(8, device=device, dtype=dtype),
        cls_token=torch.randn(1, 1, 8, device=device, dtype=dtype),
        pos_embed=torch.randn(1, 5, 8, device=device, dtype=dtype),
    )


CASES = {
    "pixel rank": (dict(pixel_values=torch.randn(3, 32, 32)), r"pixel_values must be 4-D \(B, C, H, W\), got shape \(3, 32, 32\)"),
    "integer pixels": (dict(pixel_values=torch.ones(2, 3, 32, 32, dtype=torch.int64)), r"pixel_values must have the dtype|pixel_values must be float16"),
    "weight rank": (dict(weight=torch.randn(8, 3, 16)), r"weight must be 4-D"),
    "non-square kernel": (dict(weight=torch.randn(8, 3, 16, 8)), r"weight must be 4-D \(D, C, P, P\)"),
    "channel mismatch": (dict(weight=torch.randn(8, 4, 16, 16)), r"weight must have C = 3 input channels"),
    "dtype mix": (dict(weight=torch.randn(8, 3, 16, 16, dtype=torch.float64)), r"weight must have the dtype of pixel_values"),
    "not divisible": (dict(pixel_values=torch.randn(2, 3, 40, 32)), r"image size 40x32 must be a positive multiple of the patch size 16"),
    "smaller than a patch": (dict(pixel_values=torch.randn(2, 3, 8, 8)), r"image size 8x8 must be a positive multiple"),
    "bias shape": (dict(bias=torch.randn(7)), r"bias must have shape \(8,\), got \(7,\)"),
    "bias dtype": (dict(bias=torch.randn(8, dtype=torch.float16)), r"bias must have the dtype of pixel_values"),
    "cls shape": (dict(cls_token=torch.randn(1, 2, 8)), r"cls_token must hold one row of D = 8"),
    "pos length": (dict(pos_embed=torch.randn(1, 4, 8)), r"pos_embed must have shape \(1, 5, 8\) or \(5, 8\)"),
    "pos width": (dict(pos_embed=torch.randn(1, 5, 9)), r"pos_embed must have shape \(1, 5, 8\)"),
    "pos length without cls": (dict(cls_token=None), r"pos_embed must have shape \(1, 4, 8\)"),
}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_is_named(case):
    change, message = CASES[case]
    with pytest.raises(RuntimeError, match=message):
        taskkernels.patch_embed(**dict(good(), **change))


@pytest.mark.parametrize("case", [c for c in CASES if c != "integer pixels"], ids=str)
def test_bad_input_is_named_on_fake_tensors(case):
    change, message = CASES[case]
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        args = {k: None if v is None else mode.from_tensor(v) for k, v in dict(good(), **change).items()}
        with pytest.raises(RuntimeError, match=message):
            taskkernels.patch_embed(**args)


def test_device_mix_is_named():
    # A meta tensor beside CPU ones: dispatch goes to the fake kernel, which must refuse.
    inputs = dict(good(), bias=torch.randn(8, device="meta"))
    with pytest.raises(RuntimeError, match=r"bias must be on the device of pixel_values"):
        taskkernels.patch_embed(**inputs)


@requires_cuda
def test_cuda_device_mix_is_named():
    inputs = dict(good("cuda"), pos_embed=torch.randn(1, 5, 8))
    with pytest.raises(RuntimeError, match=r"pos_embed must be on the device of pixel_values"):
        taskkernels.patch_embed(**inputs)


def test_backward_grad_out_shape_is_checked():
    g = good()
    with pytest.raises(RuntimeError, match=r"grad_out must have shape \(2, 5, 8\), got \(2, 4, 8\)"):
        torch.ops.taskkernels.patch_embed_backward(
            torch.randn(2, 4, 8), g["pixel_values"], g["weight"], True, True, True, True, True, True, False
        )
