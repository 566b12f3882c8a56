"""taskkernels.patch_embed against the float64 reference, on CPU and (where present) CUDA."""

import pytest
import torch

import taskkernels
from taskkernels import reference
from conftest import DEVICES, FLOAT_DTYPES, TF32_FLOOR, assert_within_reference_error, requires_cuda

# (B, C, H, W, P, D): odd sizes, one patch, rectangular images, empty batch, ViT-B/16 geometry.
SHAPES = [
    (2, 3, 32, 48, 16, 24),
    (1, 1, 7, 7, 7, 5),
    (3, 3, 12, 20, 4, 17),
    (2, 4, 15, 9, 3, 33),
    (0, 3, 16, 16, 8, 8),
    (2, 3, 224, 224, 16, 64),
]
LAYOUTS = ["contiguous", "channels_last", "strided"]
# Which of bias / cls_token / pos_embed are given.
OPTIONS = [
    dict(bias=True, cls=True, pos=True),
    dict(bias=False, cls=False, pos=False),
    dict(bias=True, cls=False, pos=True),
    dict(bias=False, cls=True, pos=False),
    dict(bias=True, cls=True, pos=False),
]


def tf32_floor(dtype, device):
    """On CUDA, float32 runs on tensor cores in TF32 when cuDNN's convolutions may (the default)."""
    tf32 = dtype == torch.float32 and str(device).startswith("cuda") and torch.backends.cudnn.allow_tf32
    return TF32_FLOOR if tf32 else None


def make_inputs(shape, dtype, device, layout="contiguous", bias=True, cls=True, pos=True, cls_2d=False):
    B, C, H, W, P, D = shape
    if layout == "strided":  # every other column of a wider image: stride(W) = 2
        x = torch.randn(B, C, H, 2 * W, device=device, dtype=dtype)[..., ::2]
    else:
        x = torch.randn(B, C, H, W, device=device, dtype=dtype)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
    K = C * P * P
    w = (torch.randn(D, C, P, P, device=device) / K**0.5).to(dtype)
    R = (H // P) * (W // P) + (1 if cls else 0)
    return dict(
        pixel_values=x,
        weight=w,
        bias=torch.randn(D, device=device, dtype=dtype) if bias else None,
        cls_token=(torch.randn(D, device=device, dtype=dtype) if cls_2d else torch.randn(1, 1, D, device=device, dtype=dtype))
        if cls
        else None,
        pos_embed=torch.randn(1, R, D, device=device, dtype=dtype) if pos else None,
    )


def to64(inputs):
    return {k: None if v is None else v.detach().double().cpu() for k, v in inputs.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_reference(device, dtype, layout, shape):
    inputs = make_inputs(shape, dtype, device, layout)
    ours = taskkernels.patch_embed(**inputs)
    assert ours.is_contiguous() and ours.device == inputs["pixel_values"].device
    assert_within_reference_error(ours, reference.patch_embed(**inputs), reference.patch_embed(**to64(inputs)), dtype,
                                  floor=tf32_floor(dtype, device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(k for k, v in o.items() if v) or "none")
def test_forward_options(device, dtype, options):
    inputs = make_inputs((3, 3, 12, 20, 4, 17), dtype, device, **options)
    ours = taskkernels.patch_embed(**inputs)
    assert_within_reference_error(ours, reference.patch_embed(**inputs), reference.patch_embed(**to64(inputs)), dtype,
                                  floor=tf32_floor(dtype, device))


@pytest.mark.parametrize("device", DEVICES)
def test_cls_and_pos_shapes_accepted(device):
    """cls_token as (D,) and pos_embed as (R, D) give the same result as the HF shapes."""
    inputs = make_inputs((2, 3, 16, 16, 8, 12), torch.float32, device)
    flat = dict(inputs, cls_token=inputs["cls_token"].reshape(-1), pos_embed=inputs["pos_embed"][0])
    torch.testing.assert_close(taskkernels.patch_embed(**flat), taskkernels.patch_embed(**inputs), rtol=0, atol=0)


def _grads(fn, inputs, grad_out):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    out = fn(**{k: leaves.get(k) for k in inputs})
    out.backward(grad_out)
    return {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 3, 32, 48, 16, 24), (3, 3, 12, 20, 4, 17), (0, 3, 16, 16, 8, 8)], ids=str)
@pytest.mark.parametrize("options", OPTIONS[:3], ids=lambda o: "-".join(k for k, v in o.items() if v) or "none")
def test_backward_matches_reference(device, dtype, layout, shape, options):
    inputs = make_inputs(shape, dtype, device, layout, **options)
    B, C, H, W, P, D = shape
    R = (H // P) * (W // P) + (1 if options["cls"] else 0)
    grad_out = torch.randn(B, R, D, device=device, dtype=dtype)
    ours = _grads(taskkernels.patch_embed, inputs, grad_out)
    theirs = _grads(reference.patch_embed, inputs, grad_out)
    exact = _grads(reference.patch_embed, to64(inputs), grad_out.double().cpu())
    assert ours.keys() == exact.keys()
    for name in exact:
        assert ours[name].shape == inputs[name].shape, name
        assert_within_reference_error(ours[name], theirs[name], exact[name], dtype, what=f"grad of {name}",
                                      floor=tf32_floor(dtype, device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(k for k, v in o.items() if v) or "none")
def test_gradcheck_float64(device, options):
    inputs = make_inputs((2, 2, 6, 9, 3, 5), torch.float64, device, "strided", **options)
    names = [k for k, v in inputs.items() if v is not None]

    def fn(*tensors):
        return taskkernels.patch_embed(**dict(zip(names, tensors)))

    args = tuple(inputs[k].detach().clone().requires_grad_(True) for k in names)
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("device", DEVICES)
def test_only_needed_gradients(device):
    """Frozen pixels (the usual case) get no gradient, and the others still match."""
    inputs = make_inputs((2, 3, 16, 16, 8, 12), torch.float64, device)
    w = inputs["weight"].clone().requires_grad_(True)
    out = taskkernels.patch_embed(inputs["pixel_values"], w, inputs["bias"], inputs["cls_token"], inputs["pos_embed"])
    (gw,) = torch.autograd.grad(out.sum(), [w])
    w_ref = inputs["weight"].clone().requires_grad_(True)
    ref = reference.patch_embed(inputs["pixel_values"], w_ref, inputs["bias"], inputs["cls_token"], inputs["pos_embed"])
    (gw_ref,) = torch.autograd.grad(ref.sum(), [w_ref])
    torch.testing.assert_close(gw, gw_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("options", [OPTIONS[0], OPTIONS[1]], ids=["all", "none"])
def test_opcheck(device, dtype, options):
    inputs = make_inputs((2, 3, 16, 24, 8, 12), dtype, device, "channels_last", **options)
    args = tuple(inputs.values()) + (False,)
    torch.library.opcheck(torch.ops.taskkernels.patch_embed.default, args)
    grad_args = tuple(v.detach().requires_grad_(True) if v is not None else None for v in inputs.values()) + (False,)
    torch.library.opcheck(torch.ops.taskkernels.patch_embed.default, grad_args)
    B, R, D = 2, 6 + (1 if options["cls"] else 0), 12
    bwd_args = (
        torch.randn(B, R, D, device=device, dtype=dtype), inputs["pixel_values"], inputs["weight"],
        options["cls"], True, True, options["bias"], options["cls"], options["pos"], False,
    )
    torch.library.opcheck(torch.ops.taskkernels.patch_embed_backward.default, bwd_args)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    inputs = make_inputs((2, 3, 16, 24, 8, 12), torch.float32, device)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}

    @torch.compile(fullgraph=True)
    def step(x, w, b, c, p):
        return (taskkernels.patch_embed(x, w, b, c, p) * 2).square().mean()

    loss = step(*leaves.values())
    loss.backward()
    eager = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    ref_loss = (taskkernels.patch_embed(**eager) * 2).square().mean()
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss)
    for k in leaves:
        torch.testing.assert_close(leaves[k].grad, eager[k].grad, msg=k)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cuda_backward_is_deterministic(dtype):
    inputs = make_inputs((8, 3, 64, 64, 16, 96), dtype, "cuda")
    grad_out = torch.randn(8, 17, 96, device="cuda", dtype=dtype)
    first = _grads(taskkernels.patch_embed, inputs, grad_out)
    second = _grads(taskkernels.patch_embed, inputs, grad_out)
    for name in first:
        assert torch.equal(first[name], second[name]), name


@requires_cuda
def test_cuda_matches_cpu_float64():
    """The CUDA and CPU implementations agree to float64 rounding on the same inputs."""
    inputs = make_inputs((3, 3, 48, 32, 16, 40), torch.float64, "cpu", "channels_last")
    cuda_inputs = {k: v.cuda() for k, v in inputs.items()}
    torch.testing.assert_close(taskkernels.patch_embed(**cuda_inputs).cpu(), taskkernels.patch_embed(**inputs))


@requires_cuda
def test_cuda_respects_current_stream():
    inputs = make_inputs((4, 3, 32, 32, 16, 32), torch.bfloat16, "cuda")
    expected = taskkernels.patch_embed(**inputs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = taskkernels.patch_embed(**inputs)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(out, expected)
