"""taskkernels.attention (forward) against the float64 reference."""

import pytest
import torch
import torch.nn.functional as F

import taskkernels
from taskkernels import reference
from conftest import DEVICES, FLOAT_DTYPES, assert_within_reference_error, run_portable_cpu_build

# (B, H, Nq, Nk, D): self-attention at odd sizes, cross-attention both ways, one query (decode).
SHAPES = [
    (2, 3, 1, 1, 64),
    (2, 3, 17, 17, 32),
    (1, 2, 197, 197, 64),
    (2, 2, 33, 130, 80),
    (2, 2, 130, 33, 96),
    (1, 2, 1, 77, 128),
    (0, 2, 17, 17, 64),
]


def qkv(B, H, Nq, Nk, D, dtype, device, layout="contiguous"):
    def make(n):
        if layout == "bnhd":  # a (B, N, H, D) projection viewed as (B, H, N, D): non-contiguous
            return torch.randn(B, n, H, D, device=device, dtype=dtype).transpose(1, 2)
        if layout == "strided":  # every other element of the head dimension
            return torch.randn(B, H, n, 2 * D, device=device, dtype=dtype)[..., ::2]
        return torch.randn(B, H, n, D, device=device, dtype=dtype)

    return make(Nq), make(Nk), make(Nk)


def to64(*ts):
    return [None if t is None else t.detach().cpu().double() if t.is_floating_point() else t.cpu() for t in ts]


def check(q, k, v, dtype, **kw):
    out, lse = taskkernels.attention_with_lse(q, k, v, **kw)
    q64, k64, v64 = to64(q, k, v)
    kw64 = dict(kw)
    for name in ("key_padding_mask", "attn_bias"):
        if kw.get(name) is not None:
            kw64[name] = to64(kw[name])[0]
    ref_out, ref_lse = reference.attention(q64, k64, v64, return_lse=True, **kw64)
    torch_out = reference.attention(q, k, v, **kw)
    assert out.is_contiguous() and out.shape == q.shape
    assert not out.isnan().any()
    assert_within_reference_error(out, torch_out, ref_out, dtype)
    # lse: -inf exactly where the reference's is, close elsewhere.
    lse, ref_lse = lse.cpu().double(), ref_lse.cpu()
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    finite = ~torch.isinf(ref_lse)
    if finite.any():
        tol = 1e-9 if dtype == torch.float64 else 1e-4 * max(1.0, ref_lse[finite].abs().max().item())
        assert (lse[finite] - ref_lse[finite]).abs().max().item() <= tol
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_matches_reference(device, dtype, shape, causal):
    q, k, v = qkv(*shape, dtype, device)
    check(q, k, v, dtype, causal=causal)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["bnhd", "strided"])
def test_non_contiguous_inputs(device, dtype, layout):
    q, k, v = qkv(2, 3, 40, 70, 64, dtype, device, layout)
    assert not q.is_contiguous()
    check(q, k, v, dtype, causal=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("bias_shape", [None, (1, 1, 1, 1), (1, 3, 1, 130), (2, 1, 33, 130), (33, 130), (2, 3, 33, 130)], ids=str)
def test_padding_and_bias(device, dtype, causal, bias_shape):
    B, H, Nq, Nk, D = 2, 3, 33, 130, 64
    q, k, v = qkv(B, H, Nq, Nk, D, dtype, device)
    kpm = torch.rand(B, Nk, device=device) < 0.3
    kpm[1, 100:] = True  # a padded tail, as in a padded batch
    bias = None if bias_shape is None else torch.randn(bias_shape, device=device, dtype=dtype)
    check(q, k, v, dtype, causal=causal, key_padding_mask=kpm, attn_bias=bias)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_bias_with_low_precision_inputs(device):
    q, k, v = qkv(2, 2, 20, 50, 64, torch.bfloat16, device)
    bias = torch.randn(2, 1, 20, 50, device=device)
    check(q, k, v, torch.bfloat16, attn_bias=bias)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_rows_with_nothing_visible_are_zero(device, dtype):
    B, H, Nq, Nk, D = 2, 2, 9, 20, 32
    q, k, v = qkv(B, H, Nq, Nk, D, dtype, device)
    kpm = torch.zeros(B, Nk, dtype=torch.bool, device=device)
    kpm[0] = True  # batch 0: every key is padding
    out = check(q, k, v, dtype, key_padding_mask=kpm)
    assert torch.all(out[0] == 0)
    # causal with more queries than keys: the first Nq - Nk rows see nothing.
    q2, k2, v2 = qkv(B, H, 12, 5, D, dtype, device)
    out2 = check(q2, k2, v2, dtype, causal=True)
    assert torch.all(out2[:, :, :7] == 0) and torch.all(out2[:, :, 7:].abs().sum(-1) > 0)
    bias = torch.full((Nq, Nk), float("-inf"), device=device, dtype=dtype)
    bias[3:] = 0
    out3 = check(q, k, v, dtype, attn_bias=bias)
    assert torch.all(out3[:, :, :3] == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_long_sequence_and_scale(device):
    q, k, v = qkv(1, 2, 1025, 1025, 64, torch.float32, device)
    check(q, k, v, torch.float32, causal=True, scale=0.3)


@pytest.mark.parametrize("device", DEVICES)
def test_agrees_with_sdpa(device):
    """With Nq == Nk the end-aligned causal mask is SDPA's; key padding = SDPA's boolean mask."""
    q, k, v = qkv(2, 4, 77, 77, 64, torch.float32, device)
    torch.testing.assert_close(taskkernels.attention(q, k, v, causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=2e-5, rtol=1e-4)
    kpm = torch.rand(2, 77, device=device) < 0.2
    ours = taskkernels.attention(q, k, v, key_padding_mask=kpm)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=~kpm[:, None, None, :])
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_keys(device):
    q, k, v = qkv(2, 2, 5, 0, 32, torch.float32, device)
    out, lse = taskkernels.attention_with_lse(q, k, v)
    assert torch.all(out == 0) and torch.all(torch.isinf(lse) & (lse < 0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck(device, dtype):
    q, k, v = qkv(2, 3, 17, 40, 64, dtype, device, "bnhd")
    kpm = torch.rand(2, 40, device=device) < 0.3
    bias = torch.randn(1, 3, 17, 40, device=device, dtype=dtype)
    torch.library.opcheck(torch.ops.taskkernels.attention.default, (q, k, v, True, kpm, bias, 0.2))
    torch.library.opcheck(torch.ops.taskkernels.attention.default, (q, k, v))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    q, k, v = qkv(2, 3, 17, 40, 64, torch.float32, device)
    kpm = torch.rand(2, 40, device=device) < 0.3

    @torch.compile(fullgraph=True)
    def f(q, k, v, kpm):
        return taskkernels.attention(q * 2, k, v, causal=True, key_padding_mask=kpm).sum(-1)

    torch.testing.assert_close(f(q, k, v, kpm), taskkernels.attention(q * 2, k, v, causal=True, key_padding_mask=kpm).sum(-1))


ERRORS = {
    "q rank": (dict(q=torch.randn(2, 3, 8)), r"q must be 4-D \(B, H, Nq, D\), got shape \(2, 3, 8\)"),
    "k heads": (dict(k=torch.randn(2, 4, 10, 16)), r"k must have shape \(B, H, Nk, D\) = \(2, 3, Nk, 16\)"),
    "v length": (dict(v=torch.randn(2, 3, 11, 16)), r"v must have shape \(B, H, Nk, D\) = \(2, 3, 10, 16\)"),
    "dtype mix": (dict(k=torch.randn(2, 3, 10, 16, dtype=torch.float64)), r"k must have the dtype of q"),
    "integer q": (dict(q=torch.ones(2, 3, 8, 16, dtype=torch.int32)), r"q must be float16|k must have the dtype of q"),
    "mask dtype": (dict(key_padding_mask=torch.zeros(2, 10)), r"key_padding_mask must be bool"),
    "mask shape": (dict(key_padding_mask=torch.zeros(2, 9, dtype=torch.bool)), r"key_padding_mask must have shape \(B, Nk\) = \(2, 10\)"),
    "bias shape": (dict(attn_bias=torch.randn(3, 8, 7)), r"attn_bias must broadcast to \(B, H, Nq, Nk\) = \(2, 3, 8, 10\)"),
    "bias dtype": (dict(attn_bias=torch.randn(8, 10, dtype=torch.float64)), r"attn_bias must have the dtype of q"),
    "bias device": (dict(attn_bias=torch.randn(8, 10, device="meta")), r"attn_bias must be on the device of q"),
    "scale": (dict(scale=float("nan")), r"scale must be finite"),
}


@pytest.mark.parametrize("case", ERRORS, ids=str)
def test_bad_input_is_named(case):
    args = dict(q=torch.randn(2, 3, 8, 16), k=torch.randn(2, 3, 10, 16), v=torch.randn(2, 3, 10, 16))
    change, message = ERRORS[case]
    args.update(change)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(RuntimeError, match=message):
        taskkernels.attention(q, k, v, **args)


# ---- gradients (the CUDA backward is not written yet: CPU only) --------------------------------
def grads(fn, tensors, grad_out, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    q, k, v, *bias = leaves
    out = fn(q, k, v, attn_bias=bias[0] if bias else None, **kw)
    return torch.autograd.grad(out, leaves, grad_out)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 17, 17, 32), (2, 2, 33, 130, 80), (2, 2, 130, 33, 64), (1, 2, 1, 77, 128), (0, 2, 5, 5, 16)], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "padding+bias"])
def test_gradients_match_reference(dtype, shape, causal, masked):
    B, H, Nq, Nk, D = shape
    q, k, v = qkv(*shape, dtype, "cpu", "bnhd")
    kw = dict(causal=causal)
    tensors = [q, k, v]
    if masked:
        kw["key_padding_mask"] = torch.rand(B, Nk) < 0.3
        tensors.append(torch.randn(1, H, Nq, Nk, dtype=dtype))
    g = torch.randn(B, H, Nq, D, dtype=dtype)
    ours = grads(taskkernels.attention, tensors, g, **kw)
    theirs = grads(reference.attention, tensors, g, **kw)
    exact = grads(reference.attention, [t.double() for t in tensors], g.double(), **kw)
    for name, a, b, c in zip("q k v bias".split(), ours, theirs, exact):
        assert a.shape == c.shape and a.dtype == dtype, name
        assert_within_reference_error(a, b, c, dtype, what=f"grad of {name}")


@pytest.mark.parametrize("bias_shape", [(1, 1, 1, 1), (2, 1, 9, 1), (9, 12), (2, 3, 9, 12)], ids=str)
def test_gradcheck_float64(bias_shape):
    q, k, v = qkv(2, 3, 9, 12, 8, torch.float64, "cpu", "strided")
    kpm = torch.rand(2, 12) < 0.3
    kpm[1] = True  # a batch entry with nothing visible: zero gradients, not NaN
    bias = torch.randn(bias_shape, dtype=torch.float64)
    args = [t.detach().clone().requires_grad_(True) for t in (q, k, v, bias)]
    for causal in (False, True):
        assert torch.autograd.gradcheck(
            lambda q, k, v, b: taskkernels.attention(q, k, v, causal=causal, key_padding_mask=kpm, attn_bias=b, scale=0.7), args
        )


def test_opcheck_with_gradients():
    q, k, v = qkv(2, 3, 17, 40, 64, torch.float32, "cpu", "bnhd")
    kpm = torch.rand(2, 40) < 0.3
    bias = torch.randn(1, 3, 17, 40)
    args = tuple(t.requires_grad_(True) for t in (q, k, v)) + (True, kpm, bias.requires_grad_(True), None)
    torch.library.opcheck(torch.ops.taskkernels.attention.default, args)
    out, lse = taskkernels.attention_with_lse(q.detach(), k.detach(), v.detach(), causal=True)
    bwd = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, True, kpm, bias.detach(), None, True)
    torch.library.opcheck(torch.ops.taskkernels.attention_backward.default, bwd)


def test_torch_compile_training_step():
    q, k, v = (t.requires_grad_(True) for t in qkv(2, 3, 17, 40, 64, torch.float32, "cpu"))
    kpm = torch.rand(2, 40) < 0.3

    @torch.compile(fullgraph=True)
    def loss_fn(q, k, v):
        return taskkernels.attention(q, k, v, causal=True, key_padding_mask=kpm).square().mean()

    loss = loss_fn(q, k, v)
    got = torch.autograd.grad(loss, (q, k, v))
    want = torch.autograd.grad(taskkernels.attention(q, k, v, causal=True, key_padding_mask=kpm).square().mean(), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_backward_checks_its_arguments():
    q, k, v = qkv(2, 3, 8, 10, 16, torch.float32, "cpu")
    out, lse = taskkernels.attention_with_lse(q, k, v)
    with pytest.raises(RuntimeError, match=r"grad_out must have shape \(B, H, Nq, D\) = \(2, 3, 8, 16\)"):
        torch.ops.taskkernels.attention_backward(out[:, :, :4], q, k, v, out, lse, False, None, None, None, False)
    with pytest.raises(RuntimeError, match=r"lse must be the forward's"):
        torch.ops.taskkernels.attention_backward(out, q, k, v, out, lse.double(), False, None, None, None, False)


def test_portable_cpu_build_agrees():
    """The portable copy of the CPU kernels (chosen on CPUs without AVX2) gives the same results."""
    run_portable_cpu_build("""
        import torch, taskkernels
        from taskkernels import reference
        torch.manual_seed(0)
        q, k, v = (torch.randn(2, 3, n, 80, dtype=torch.float32, requires_grad=True) for n in (33, 70, 70))
        kpm = torch.rand(2, 70) < 0.3
        out = taskkernels.attention(q, k, v, causal=True, key_padding_mask=kpm)
        ref = reference.attention(q.double(), k.double(), v.double(), causal=True, key_padding_mask=kpm)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), g)
        ref_grads = torch.autograd.grad(ref, (q, k, v), g.double())
        err = max([(out.double() - ref).abs().max().item()] + [(a.double() - b).abs().max().item() for a, b in zip(grads, ref_grads)])
        assert err < 1e-4, err
        print("ok", err)
    """)
