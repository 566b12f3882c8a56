"""taskkernels.depthwise_conv2d against F.conv2d(groups=C) in float64: both memory formats and
any strides, kernel sizes 1-31, explicit padding, small and odd sizes, every dtype, gradients,
determinism, errors, opcheck and torch.compile."""

import pytest
import torch
import torch.nn.functional as F

import taskkernels
from taskkernels import reference

from conftest import DEVICES, FLOAT_DTYPES, assert_within_reference_error, requires_cuda, run_portable_cpu_build

LAYOUTS = ["nchw", "channels_last", "strided"]


def make_x(B, C, H, W, layout, dtype=torch.float64, device="cpu"):
    if layout == "strided":  # every other column of a wider tensor: no dense layout at all
        return torch.randn(B, C, H, 2 * W, dtype=dtype, device=device)[..., ::2]
    x = torch.randn(B, C, H, W, dtype=dtype, device=device)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def check(x, weight, bias, padding, tol=1e-12):
    """Output, layout and the three gradients against the float64 reference."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight) + ((bias,) if bias is not None else ())]
    ours = taskkernels.depthwise_conv2d(leaves[0], leaves[1], leaves[2] if bias is not None else None, padding)
    refs = [t.detach().clone().requires_grad_() for t in leaves]
    ref = reference.depthwise_conv2d(refs[0], refs[1], refs[2] if bias is not None else None, padding)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() and x.shape[1] > 1
    assert ours.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    torch.testing.assert_close(ours, ref, rtol=0, atol=tol * scale)
    grad = torch.randn_like(ref)
    ours_g = torch.autograd.grad(ours, leaves, grad)
    ref_g = torch.autograd.grad(ref, refs, grad)
    for name, a, b in zip(("x", "weight", "bias"), ours_g, ref_g):
        s = max(1.0, b.abs().max().item()) if b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=0, atol=tol * s, msg=lambda m: f"grad {name}: {m}")
    return ours, ours_g


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("K", [3, 5, 7, 31])
def test_kernel_sizes_and_layouts(device, layout, K):
    x = make_x(2, 6, 13, 19, layout, device=device)
    w = torch.randn(6, 1, K, K, dtype=torch.float64, device=device)
    b = torch.randn(6, dtype=torch.float64, device=device)
    check(x, w, b, None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("C", [1, 3, 96])
@pytest.mark.parametrize("HW", [(1, 1), (7, 7), (13, 5), (56, 56)])
def test_sizes(device, layout, C, HW):
    x = make_x(2, C, *HW, layout, device=device)
    check(x, torch.randn(C, 1, 7, 7, dtype=torch.float64, device=device), None, None)


@pytest.mark.parametrize("K", [3, 5, 7])
@pytest.mark.parametrize("HW", [(1, 1), (9, 5), (7, 7), (6, 8), (11, 9)])
def test_float32_narrow_planes(K, HW):
    """float32 NCHW planes up to 8 columns wide and just wider (the CPU's channel-tile kernel;
    the input gradient runs it too), against float64; with padding 0 the row-vector kernel."""
    x = torch.randn(2, 5, *HW)
    w, b = torch.randn(5, 1, K, K), torch.randn(5)
    ours = taskkernels.depthwise_conv2d(x, w, b)
    ref = reference.depthwise_conv2d(x.double(), w.double(), b.double(), K // 2)
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-5 * max(1.0, ref.abs().max().item()))
    check(x.double(), w.double(), b.double(), K // 2)  # (float64: the portable code)
    xg = x.clone().requires_grad_()
    g = torch.randn_like(ours)
    (gx,) = torch.autograd.grad(taskkernels.depthwise_conv2d(xg, w, b), xg, g)
    xr = x.double().requires_grad_()
    (gr,) = torch.autograd.grad(reference.depthwise_conv2d(xr, w.double(), b.double(), K // 2), xr, g.double())
    torch.testing.assert_close(gx.double(), gr, rtol=0, atol=1e-5 * max(1.0, gr.abs().max().item()))
    if min(HW) >= K:
        ours = taskkernels.depthwise_conv2d(x, w, b, 0)
        ref = reference.depthwise_conv2d(x.double(), w.double(), b.double(), 0)
        torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-5 * max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("K", [3, 5, 7])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "row_slice"])
def test_float32_channel_tiles(K, layout):
    """The CPU's float32 kernel for K = 3, 5, 7 with 'same' padding (eight channels per vector):
    every width up to 17 and 28 (one block per row below 8 columns, first/interior/last blocks
    above; below 8 columns images go in pairs, and batch 3 leaves one alone), channel counts
    that leave a partial group of eight, and rows that are a slice of wider rows (its full-width
    loads read past the row end). Output and input gradient (the same
    kernel on the rotated filter) against float64."""
    for W in list(range(1, 18)) + [28]:
        for C in (1, 5, 8, 13, 16):
            H = 3 + W % 5
            if layout == "row_slice":
                x = torch.randn(3, C, H, W + 5)[..., :W]
            else:
                x = make_x(3, C, H, W, layout, dtype=torch.float32)
            w, b = torch.randn(C, 1, K, K), torch.randn(C)
            xg = x.clone().requires_grad_() if layout != "row_slice" else x.detach().requires_grad_()
            ours = taskkernels.depthwise_conv2d(xg, w, b)
            xr = x.double().requires_grad_()
            ref = reference.depthwise_conv2d(xr, w.double(), b.double(), K // 2)
            msg = f"W={W} C={C}"
            torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-5 * max(1.0, ref.abs().max().item()),
                                       msg=lambda m: f"{msg}: {m}")
            g = torch.randn_like(ref)
            (gx,) = torch.autograd.grad(ours, xg, g.float())
            (gr,) = torch.autograd.grad(ref, xr, g)
            torch.testing.assert_close(gx.double(), gr, rtol=0, atol=1e-5 * max(1.0, gr.abs().max().item()),
                                       msg=lambda m: f"{msg} grad x: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("K, padding", [(7, 0), (7, 6), (4, 0), (4, 3), (1, 0), (3, 2)])
def test_explicit_padding(device, layout, K, padding):
    x = make_x(3, 4, 11, 9, layout, device=device)
    check(x, torch.randn(4, 1, K, K, dtype=torch.float64, device=device),
          torch.randn(4, dtype=torch.float64, device=device), padding)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dtypes(device, layout, dtype):
    """In each dtype: output and gradients against float64 on the same rounded inputs, within
    twice PyTorch's own error in that dtype."""
    x = make_x(2, 32, 20, 20, layout, dtype=dtype, device=device).requires_grad_()
    w = (torch.randn(32, 1, 7, 7, device=device) / 7).to(dtype).requires_grad_()
    b = torch.randn(32, device=device).to(dtype).requires_grad_()
    ours = taskkernels.depthwise_conv2d(x, w, b)
    grad = torch.randn_like(ours)
    ours_g = torch.autograd.grad(ours, (x, w, b), grad)
    low = reference.depthwise_conv2d(x, w, b)
    low_g = torch.autograd.grad(low, (x, w, b), grad)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = reference.depthwise_conv2d(x64, w64, b64)
    ref_g = torch.autograd.grad(ref, (x64, w64, b64), grad.double())
    assert_within_reference_error(ours, low, ref, dtype, "output")
    for name, a, l, r in zip(("x", "weight", "bias"), ours_g, low_g, ref_g):
        assert_within_reference_error(a, l, r, dtype, f"grad {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gradients_are_deterministic(device, layout):
    x = make_x(8, 16, 28, 28, layout, dtype=torch.float32, device=device)
    w = torch.randn(16, 1, 7, 7, device=device, requires_grad=True)
    b = torch.randn(16, device=device, requires_grad=True)
    grad = torch.randn(8, 16, 28, 28, device=device)
    first = torch.autograd.grad(taskkernels.depthwise_conv2d(x, w, b), (w, b), grad)
    second = torch.autograd.grad(taskkernels.depthwise_conv2d(x, w, b), (w, b), grad)
    assert all(torch.equal(a, c) for a, c in zip(first, second))


def test_only_requested_gradients():
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    w = torch.randn(3, 1, 3, 3)
    (gx,) = torch.autograd.grad(taskkernels.depthwise_conv2d(x, w).sum(), (x,))
    torch.testing.assert_close(gx, torch.autograd.grad(F.conv2d(x, w, padding=1, groups=3).sum(), (x,))[0])


def test_gradcheck():
    for layout in ("nchw", "channels_last"):
        x = make_x(1, 3, 6, 5, layout).requires_grad_()
        w = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
        b = torch.randn(3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda *a: taskkernels.depthwise_conv2d(*a), (x, w, b))
        assert torch.autograd.gradcheck(lambda *a: taskkernels.depthwise_conv2d(*a, padding=2), (x, w, b))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for layout in ("nchw", "channels_last"):
        x = make_x(2, 4, 9, 8, layout, dtype=torch.float32, device=device).requires_grad_()
        w = torch.randn(4, 1, 5, 5, device=device, requires_grad=True)
        b = torch.randn(4, device=device, requires_grad=True)
        torch.library.opcheck(torch.ops.taskkernels.depthwise_conv2d.default, (x, w, b, 2))
        torch.library.opcheck(torch.ops.taskkernels.depthwise_conv2d.default, (x, w, None, 0))
        go = torch.randn(2, 4, 9, 8, device=device)
        torch.library.opcheck(torch.ops.taskkernels.depthwise_conv2d_backward_input.default,
                              (go, w.detach(), 2, layout == "channels_last"))
        torch.library.opcheck(torch.ops.taskkernels.depthwise_conv2d_backward_weight.default,
                              (go, x.detach(), 5, 2, True))


def test_torch_compile_training_step():
    """ConvNeXt's block front (dwconv 7x7 -> permute -> LayerNorm) trained under torch.compile."""
    conv = torch.nn.Conv2d(8, 8, 7, padding=3, groups=8)
    norm = torch.nn.LayerNorm(8)
    x = torch.randn(2, 8, 14, 14).to(memory_format=torch.channels_last)

    def step(x):
        y = taskkernels.depthwise_conv2d(x, conv.weight, conv.bias)
        return norm(y.permute(0, 2, 3, 1)).square().mean()

    eager = step(x)
    eager.backward()
    grads = [p.grad.clone() for p in (conv.weight, conv.bias)]
    conv.weight.grad = conv.bias.grad = None
    compiled = torch.compile(step, fullgraph=True)(x)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    for p, g in zip((conv.weight, conv.bias), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


def test_errors_name_the_argument():
    x = torch.randn(2, 4, 10, 10)
    w = torch.randn(4, 1, 7, 7)

    def raises(match, *args, **kwargs):
        with pytest.raises(RuntimeError, match=match):
            taskkernels.depthwise_conv2d(*args, **kwargs)

    raises("x must be 4-D", x[0], w)
    raises("x must be float16, bfloat16, float32 or float64", x.int(), w.int())
    raises("weight must be \\(C, 1, K, K\\) with C = 4", x, torch.randn(3, 1, 7, 7))
    raises("weight must be \\(C, 1, K, K\\)", x, torch.randn(4, 2, 7, 7))
    raises("the kernel size K must be in \\[1, 31\\]", x, torch.randn(4, 1, 33, 33))
    raises("padding must be in \\[0, K - 1 = 6\\], got 7", x, w, padding=7)
    raises("needs an odd kernel size", x, torch.randn(4, 1, 4, 4))
    raises("weight must have the dtype of x", x, w.double())
    raises("bias must have shape \\(C,\\) = \\(4,\\)", x, w, torch.randn(5))
    raises("bias must have the dtype of x", x, w, torch.randn(4).double())
    raises("is smaller than the kernel", torch.randn(1, 4, 3, 3), w, padding=0)


def test_portable_cpu_build_agrees():
    """The portable copy of the CPU kernels (CPUs without AVX2) against float64, both layouts,
    a specialized (7) and a generic (4) kernel size, odd widths (vector tails)."""
    run_portable_cpu_build("""
        import torch, taskkernels
        from taskkernels import reference
        err = 0.0
        for cl in (False, True):
            for K, pad in ((7, 3), (4, 2)):
                x = torch.randn(2, 19, 13, 21)
                if cl:
                    x = x.to(memory_format=torch.channels_last)
                x.requires_grad_()
                w = torch.randn(19, 1, K, K, requires_grad=True)
                b = torch.randn(19, requires_grad=True)
                out = taskkernels.depthwise_conv2d(x, w, b, pad)
                leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
                ref = reference.depthwise_conv2d(*leaves, pad)
                g = torch.randn_like(out)
                grads = torch.autograd.grad(out, (x, w, b), g)
                ref_grads = torch.autograd.grad(ref, leaves, g.double())
                err = max([err, (out.double() - ref).abs().max().item() / ref.abs().max().item()]
                          + [((a.double() - r).abs().max() / r.abs().max()).item() for a, r in zip(grads, ref_grads)])
        assert err < 1e-5, err
        print("ok", err)
    """)


# ---- the fused ConvNeXt front: depthwise_conv2d + LayerNorm over channels -------------------------


def fused_args(layout, dtype=torch.float64, C=12, H=9, W=14, K=7, affine=True, device="cpu"):
    x = make_x(2, C, H, W, layout, dtype=dtype, device=device)
    params = [torch.randn(C, 1, K, K) / K, torch.randn(C)]
    params += [torch.randn(C), torch.randn(C)] if affine else [None, None]
    return [x] + [p.to(device, dtype) if p is not None else None for p in params]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("affine", [True, False])
def test_fused_front_matches_reference(layout, affine):
    args = [a.requires_grad_() if a is not None else None for a in fused_args(layout, affine=affine)]
    out = taskkernels.depthwise_conv2d_layernorm(*args)
    ref = reference.depthwise_conv2d_layernorm(*args)
    assert out.shape == ref.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    leaves = [a for a in args if a is not None]
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, leaves, grad), torch.autograd.grad(ref, leaves, grad)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_front_dtypes(dtype):
    args = [a.requires_grad_() for a in fused_args("channels_last", dtype=dtype, C=32, H=14, W=14)]
    out = taskkernels.depthwise_conv2d_layernorm(*args)
    low = reference.depthwise_conv2d_layernorm(*args)
    exact = [a.detach().double().requires_grad_() for a in args]
    ref = reference.depthwise_conv2d_layernorm(*exact)
    grad = torch.randn_like(ref)
    assert_within_reference_error(out, low, ref, dtype, "output")
    ours_g = torch.autograd.grad(out, args, grad.to(dtype))
    low_g = torch.autograd.grad(low, args, grad.to(dtype))
    ref_g = torch.autograd.grad(ref, exact, grad)
    for name, a, l, r in zip(("x", "weight", "bias", "ln_weight", "ln_bias"), ours_g, low_g, ref_g):
        assert_within_reference_error(a, l, r, dtype, f"grad {name}")


def test_fused_front_gradcheck_opcheck_and_determinism():
    args = [a.requires_grad_() for a in fused_args("nchw", C=3, H=5, W=6, K=3)]
    assert torch.autograd.gradcheck(lambda *a: taskkernels.depthwise_conv2d_layernorm(*a, eps=1e-5), args)
    f32 = [a.detach().float().requires_grad_() for a in args]
    torch.library.opcheck(torch.ops.taskkernels.depthwise_conv2d_layernorm.default, (*f32, 1e-6, 1))
    _, conv, mean, rstd = (t.detach() for t in torch.ops.taskkernels.depthwise_conv2d_layernorm(*f32, 1e-6, 1))
    x, w, _, g, _ = (a.detach() for a in f32)
    torch.library.opcheck(torch.ops.taskkernels.depthwise_conv2d_layernorm_backward.default,
                          (torch.randn_like(conv), x, w, g, conv, mean, rstd, 1, True, True, True, True, True))
    big = [a.requires_grad_() for a in fused_args("channels_last", dtype=torch.float32, C=16, H=28, W=28)]
    grad = torch.randn(2, 28, 28, 16)
    first = torch.autograd.grad(taskkernels.depthwise_conv2d_layernorm(*big), big, grad)
    second = torch.autograd.grad(taskkernels.depthwise_conv2d_layernorm(*big), big, grad)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_fused_front_under_torch_compile():
    args = [a.requires_grad_() for a in fused_args("channels_last", dtype=torch.float32)]
    step = lambda *a: taskkernels.depthwise_conv2d_layernorm(*a).square().mean()  # noqa: E731
    eager = torch.autograd.grad(step(*args), args)
    compiled = torch.autograd.grad(torch.compile(step, fullgraph=True)(*args), args)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_front_errors():
    x, w, b, g, beta = fused_args("nchw", dtype=torch.float32)
    with pytest.raises(RuntimeError, match="ln_weight must have shape \\(C,\\) = \\(12,\\)"):
        taskkernels.depthwise_conv2d_layernorm(x, w, b, g[:5], beta)
    with pytest.raises(RuntimeError, match="ln_bias must have the dtype of x"):
        taskkernels.depthwise_conv2d_layernorm(x, w, b, g, beta.double())
    with pytest.raises(RuntimeError, match="eps must be >= 0"):
        taskkernels.depthwise_conv2d_layernorm(x, w, b, g, beta, eps=-1.0)


@requires_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
# The fused kernel (K 3/5/7, C <= 1024; C = 12, 33 leave threads of the last warp idle) and the
# two-kernel path (K = 9, C = 1100).
@pytest.mark.parametrize("K,C", [(7, 96), (7, 12), (3, 40), (5, 33), (9, 16), (7, 1100)], ids=str)
def test_fused_front_on_cuda(dtype, layout, K, C):
    ours_in = [a.requires_grad_() for a in fused_args(layout, dtype, C=C, H=9, W=14, K=K, device="cuda")]
    exact = [a.detach().cpu().double().requires_grad_() for a in ours_in]
    out = taskkernels.depthwise_conv2d_layernorm(*ours_in)
    low = reference.depthwise_conv2d_layernorm(*ours_in)
    ref = reference.depthwise_conv2d_layernorm(*exact)
    assert out.is_cuda and out.is_contiguous()
    assert_within_reference_error(out, low, ref, dtype, "output")
    grad = torch.randn_like(ref)
    ours_g = torch.autograd.grad(out, ours_in, grad.to("cuda", dtype))
    low_g = torch.autograd.grad(low, ours_in, grad.to("cuda", dtype))
    ref_g = torch.autograd.grad(ref, exact, grad)
    for name, a, l, r in zip(("x", "weight", "bias", "ln_weight", "ln_bias"), ours_g, low_g, ref_g):
        assert_within_reference_error(a, l, r, dtype, f"grad {name}")
    again = torch.autograd.grad(taskkernels.depthwise_conv2d_layernorm(*ours_in), ours_in, grad.to("cuda", dtype))
    assert all(torch.equal(a, b) for a, b in zip(ours_g, again)), "two runs differ"


@requires_cuda
def test_fused_front_on_cuda_without_affine_and_with_odd_padding():
    x, w, b, _, _ = fused_args("channels_last", torch.float32, affine=False, device="cuda")
    for padding in (0, 2):
        out = taskkernels.depthwise_conv2d_layernorm(x, w, b, None, None, padding=padding)
        ref = reference.depthwise_conv2d_layernorm(x.double(), w.double(), b.double(), None, None, padding=padding)
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
