"""taskkernels.attention (forward) against the float64 reference."""

import pytest
import torch
import torch.nn.functional as F

import taskkernels
from taskkernels import reference
from conftest import (DEVICES, FLOAT_DTYPES, assert_within_reference_error, attention_grad_floor, requires_cuda,
                      run_portable_cpu_build)

# (B, H, Nq, Nk, D): self-attention at odd sizes, cross-attention both ways, one query (decode).
SHAPES = [
    (2, 3, 1, 1, 64),
    (2, 3, 17, 17, 32),
    (1, 2, 197, 197, 64),
    (2, 2, 33, 130, 80),
    (2, 2, 130, 33, 96),
    (1, 2, 1, 77, 128),
    (1, 2, 40, 90, 128),  # head dim 128 on the tensor-core kernel (its shared memory needs the opt-in)
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
    "k heads": (dict(k=torch.randn(2, 2, 10, 16)), r"k must have shape \(B, Hk, Nk, D\) = \(2, Hk, Nk, 16\) with Hk dividing H = 3"),
    "v length": (dict(v=torch.randn(2, 3, 11, 16)), r"v must have shape \(B, Hk, Nk, D\) = \(2, 3, 10, 16\)"),
    "v heads": (dict(k=torch.randn(2, 1, 10, 16)), r"v must have shape \(B, Hk, Nk, D\) = \(2, 1, 10, 16\)"),
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


# ---- gradients ----------------------------------------------------------------------------------
def grads(fn, tensors, grad_out, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    q, k, v, *bias = leaves
    out = fn(q, k, v, attn_bias=bias[0] if bias else None, **kw)
    return torch.autograd.grad(out, leaves, grad_out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 17, 17, 32), (2, 2, 33, 130, 80), (2, 2, 130, 33, 64), (1, 2, 1, 77, 128),
                                   (1, 2, 40, 50, 256), (0, 2, 5, 5, 16)], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "padding+bias"])
def test_gradients_match_reference(device, dtype, shape, causal, masked):
    B, H, Nq, Nk, D = shape
    q, k, v = qkv(*shape, dtype, device, "bnhd")
    kw = dict(causal=causal)
    tensors = [q, k, v]
    if masked:
        kw["key_padding_mask"] = torch.rand(B, Nk, device=device) < 0.3
        tensors.append(torch.randn(1, H, Nq, Nk, dtype=dtype, device=device))
    g = torch.randn(B, H, Nq, D, dtype=dtype, device=device)
    ours = grads(taskkernels.attention, tensors, g, **kw)
    theirs = grads(reference.attention, tensors, g, **kw)
    exact = grads(reference.attention, [t.double() for t in tensors], g.double(), **kw)
    for name, a, b, c in zip("q k v bias".split(), ours, theirs, exact):
        assert a.shape == c.shape and a.dtype == dtype, name
        assert_within_reference_error(a, b, c, dtype, what=f"grad of {name}", floor=attention_grad_floor(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias_shape", [(1, 1, 1, 1), (2, 1, 9, 1), (9, 12), (2, 3, 9, 12)], ids=str)
def test_gradcheck_float64(device, bias_shape):
    q, k, v = qkv(2, 3, 9, 12, 8, torch.float64, device, "strided")
    kpm = torch.rand(2, 12, device=device) < 0.3
    kpm[1] = True  # a batch entry with nothing visible: zero gradients, not NaN
    bias = torch.randn(bias_shape, dtype=torch.float64, device=device)
    args = [t.detach().clone().requires_grad_(True) for t in (q, k, v, bias)]
    for causal in (False, True):
        assert torch.autograd.gradcheck(
            lambda q, k, v, b: taskkernels.attention(q, k, v, causal=causal, key_padding_mask=kpm, attn_bias=b, scale=0.7), args
        )


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_with_gradients(device):
    q, k, v = qkv(2, 3, 17, 40, 64, torch.float32, device, "bnhd")
    kpm = torch.rand(2, 40, device=device) < 0.3
    bias = torch.randn(1, 3, 17, 40, device=device)
    args = tuple(t.requires_grad_(True) for t in (q, k, v)) + (True, kpm, bias.requires_grad_(True), None)
    torch.library.opcheck(torch.ops.taskkernels.attention.default, args)
    out, lse = taskkernels.attention_with_lse(q.detach(), k.detach(), v.detach(), causal=True)
    bwd = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, True, kpm, bias.detach(), None, True)
    torch.library.opcheck(torch.ops.taskkernels.attention_backward.default, bwd)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_training_step(device):
    q, k, v = (t.requires_grad_(True) for t in qkv(2, 3, 17, 40, 64, torch.float32, device))
    kpm = torch.rand(2, 40, device=device) < 0.3

    @torch.compile(fullgraph=True)
    def loss_fn(q, k, v):
        return taskkernels.attention(q, k, v, causal=True, key_padding_mask=kpm).square().mean()

    loss = loss_fn(q, k, v)
    got = torch.autograd.grad(loss, (q, k, v))
    want = torch.autograd.grad(taskkernels.attention(q, k, v, causal=True, key_padding_mask=kpm).square().mean(), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


# ---- grouped-query attention ---------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("groups", [2, 4], ids=lambda g: f"groups{g}")
@pytest.mark.parametrize("features", ["plain", "causal+padding+bias"])
def test_grouped_query_attention(device, dtype, groups, features):
    """k, v with H / groups heads, read in place (a (B, N, Hk, D) projection's strided view):
    the output and all gradients against the float64 reference that repeats them."""
    B, Hk, Nq, Nk, D = 2, 2, 33, 70, 64
    H = Hk * groups
    q = torch.randn(B, Nq, H, D, dtype=dtype, device=device).transpose(1, 2)
    k, v = (torch.randn(B, Nk, Hk, D, dtype=dtype, device=device).transpose(1, 2) for _ in range(2))
    kw, tensors = {}, [q, k, v]
    if features != "plain":
        kw = dict(causal=True, key_padding_mask=torch.rand(B, Nk, device=device) < 0.3)
        tensors.append(torch.randn(1, H, Nq, Nk, dtype=dtype, device=device))
    g = torch.randn(B, H, Nq, D, dtype=dtype, device=device)
    ours = grads(taskkernels.attention, tensors, g, **kw)
    theirs = grads(reference.attention, tensors, g, **kw)
    exact = grads(reference.attention, [t.double() for t in tensors], g.double(), **kw)
    check(q, k, v, dtype, **dict(kw, attn_bias=tensors[3] if len(tensors) > 3 else None))
    for name, a, b, c in zip("q k v bias".split(), ours, theirs, exact):
        assert a.shape == c.shape and a.dtype == dtype, name
        assert_within_reference_error(a, b, c, dtype, what=f"grad of {name}", floor=attention_grad_floor(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_query_attention_dropout_and_gradcheck(device):
    """Dropout's mask is keyed by the query head; gradcheck through the grouped backward."""
    B, H, Hk, Nq, Nk, D, p = 2, 4, 2, 9, 12, 8, 0.25
    q = torch.randn(B, H, Nq, D, dtype=torch.float64, device=device, requires_grad=True)
    k, v = (torch.randn(B, Hk, Nk, D, dtype=torch.float64, device=device, requires_grad=True) for _ in range(2))
    out = taskkernels.attention(q, k, v, causal=True, dropout_p=p, generator=torch.Generator().manual_seed(3))
    keep = _dropout_keep(3, B, H, Nq, Nk, p).to(device)
    ref = reference.attention(q, k, v, causal=True, dropout_p=p, dropout_keep=keep)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    kpm = torch.rand(B, Nk, device=device) < 0.3
    assert torch.autograd.gradcheck(
        lambda q, k, v: taskkernels.attention(q, k, v, causal=True, key_padding_mask=kpm, scale=0.6), (q, k, v))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_backward_is_deterministic(dtype):
    """No atomics: two backward passes give the same bits."""
    q, k, v = qkv(2, 4, 300, 700, 64, dtype, "cuda")
    kpm = torch.rand(2, 700, device="cuda") < 0.2
    g = torch.randn(2, 4, 300, 64, device="cuda", dtype=dtype)
    first = grads(taskkernels.attention, [q, k, v], g, causal=True, key_padding_mask=kpm)
    second = grads(taskkernels.attention, [q, k, v], g, causal=True, key_padding_mask=kpm)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    # Grouped-query attention: dK, dV sum over each group's query heads in a fixed order.
    k2, v2 = k[:, ::2], v[:, ::2]
    first = grads(taskkernels.attention, [q, k2, v2], g, causal=True, key_padding_mask=kpm)
    second = grads(taskkernels.attention, [q, k2, v2], g, causal=True, key_padding_mask=kpm)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


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
        # dropout in the portable copy: the same mask as the one the tests build
        seed = int(torch.randint(0, 2**62, (), generator=torch.Generator().manual_seed(9)))
        keep = torch.from_numpy(taskkernels._C._attention_dropout_keep(seed, 2, 3, 33, 70, 0.3))
        out = taskkernels.attention(q, k, v, causal=True, dropout_p=0.3, generator=torch.Generator().manual_seed(9))
        ref = reference.attention(q.double(), k.double(), v.double(), causal=True, dropout_p=0.3, dropout_keep=keep)
        err = (out.double() - ref).abs().max().item()
        assert err < 1e-4, err
        print("ok", err)
    """)


# ---- attention dropout ---------------------------------------------------------------------------


def _dropout_keep(generator_seed, B, H, Nq, Nk, p):
    """The keep-mask taskkernels.attention draws with torch.Generator().manual_seed(generator_seed)."""
    seed = int(torch.randint(0, 2**62, (), generator=torch.Generator().manual_seed(generator_seed)))
    return torch.from_numpy(taskkernels._C._attention_dropout_keep(seed, B, H, Nq, Nk, p))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("features", ["plain", "causal+padding", "bias"])
def test_dropout_matches_reference_given_the_mask(device, dtype, features):
    """Forward and backward against the reference applying the same keep-mask (the mask is
    replayed in the backward from the seed, nothing stored); on CUDA, the CPU's mask."""
    B, H, Nq, Nk, D, p = 2, 3, 45, 70, 24, 0.25
    q, k, v = (torch.randn(B, H, n, D, dtype=dtype, device=device, requires_grad=True) for n in (Nq, Nk, Nk))
    kw = {}
    if features == "causal+padding":
        kw = dict(causal=True, key_padding_mask=torch.rand(B, Nk, device=device) < 0.2)
    elif features == "bias":
        kw = dict(attn_bias=torch.randn(1, H, Nq, Nk, dtype=dtype, device=device, requires_grad=True))
    out = taskkernels.attention(q, k, v, dropout_p=p, generator=torch.Generator().manual_seed(7), **kw)
    keep = _dropout_keep(7, B, H, Nq, Nk, p).to(device)
    leaves = [q, k, v] + ([kw["attn_bias"]] if "attn_bias" in kw else [])
    exact = [t.detach().double().requires_grad_() for t in leaves]
    ref_kw = dict(kw, attn_bias=exact[3]) if "attn_bias" in kw else kw
    ref = reference.attention(*exact[:3], dropout_p=p, dropout_keep=keep, **ref_kw)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=tol * ref.abs().max().item())
    grad = torch.randn_like(ref)
    for name, a, b in zip(("q", "k", "v", "bias"), torch.autograd.grad(out, leaves, grad.to(dtype)),
                          torch.autograd.grad(ref, exact, grad)):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=tol * max(1.0, b.abs().max().item()),
                                   msg=lambda m: f"grad {name}: {m}")


def test_dropout_mask_statistics():
    """About 1 - p kept, independent of position, different seeds give different masks."""
    shape = (2, 4, 128, 256)
    n = 2 * 4 * 128 * 256
    for p in (0.1, 0.5):
        keep = _dropout_keep(1, *shape, p).double()
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(keep.mean().item() - (1 - p)) < 5 * sigma
        # rows, columns and heads each keep the same fraction (no structure in the hash)
        for dim in (1, 2, 3):
            per = keep.mean(dim=[d for d in range(4) if d != dim])
            m = n // keep.shape[dim]
            assert (per - (1 - p)).abs().max().item() < 6 * (p * (1 - p) / m) ** 0.5
        centered = keep - keep.mean()
        neighbour_corr = (centered[..., 1:] * centered[..., :-1]).mean() / centered.var()
        assert abs(neighbour_corr.item()) < 0.01
    assert not torch.equal(_dropout_keep(1, *shape, 0.5), _dropout_keep(2, *shape, 0.5))


def test_dropout_output_is_unbiased():
    """The mean over many masks is the output without dropout (1 / (1 - p) rescaling)."""
    q, k, v = (torch.randn(1, 2, n, 8, dtype=torch.float64) for n in (6, 12, 12))
    draws = torch.stack([taskkernels.attention(q, k, v, dropout_p=0.3) for _ in range(400)])
    expected = taskkernels.attention(q, k, v)
    se = draws.std(0) / 400**0.5
    assert ((draws.mean(0) - expected).abs() <= 6 * se + 1e-9).all()


def test_dropout_seed_replay_and_errors():
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    a = taskkernels.attention(q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(3))
    b = taskkernels.attention(q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(3))
    c = taskkernels.attention(q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    for bad in (1.0, -0.1):
        with pytest.raises(RuntimeError, match="dropout_p must be in \\[0, 1\\)"):
            torch.ops.taskkernels.attention(q, k, v, False, None, None, None, bad, torch.tensor(1))
    with pytest.raises(RuntimeError, match="dropout_p > 0 needs a seed"):
        torch.ops.taskkernels.attention(q, k, v, False, None, None, None, 0.1, None)
    with pytest.raises(RuntimeError, match="seed must be a one-element int64 CPU tensor"):
        torch.ops.taskkernels.attention(q, k, v, False, None, None, None, 0.1, torch.tensor(1.0))


def test_dropout_gradcheck():
    """float64 gradcheck through the op with a fixed seed (the same mask at every evaluation)."""
    q, k, v = (torch.randn(1, 2, n, 6, dtype=torch.float64, requires_grad=True) for n in (5, 7, 7))
    bias = torch.randn(1, 2, 5, 7, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor(2024)
    assert torch.autograd.gradcheck(
        lambda q, k, v, b: torch.ops.taskkernels.attention(q, k, v, True, None, b, None, 0.4, seed)[0], (q, k, v, bias))


def test_dropout_opcheck_and_compiled_training_step():
    q, k, v = (torch.randn(2, 2, 20, 16, requires_grad=True) for _ in range(3))
    torch.library.opcheck(torch.ops.taskkernels.attention.default,
                          (q, k, v, True, None, None, None, 0.2, torch.tensor(12345)))

    def step(q, k, v):
        return taskkernels.attention(q, k, v, causal=True, dropout_p=0.2).square().sum()

    compiled = torch.compile(step, fullgraph=True)
    first = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    second = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    assert all(torch.isfinite(g).all() for g in first + second)
    assert not torch.equal(first[0], second[0])  # a new mask every step, not one baked into the graph


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_dropout_on_cuda_matches_cpu(dtype):
    """The same seed gives the same mask on both devices (tensor-core and exact kernels)."""
    q, k, v = (torch.randn(2, 3, n, 64, dtype=dtype, requires_grad=True) for n in (80, 130, 130))
    g = torch.randn(2, 3, 80, 64, dtype=dtype)

    def run(device):
        leaves = [t.detach().to(device).requires_grad_() for t in (q, k, v)]
        out = taskkernels.attention(*leaves, causal=True, dropout_p=0.3, generator=torch.Generator().manual_seed(9))
        return [out] + list(torch.autograd.grad(out, leaves, g.to(device)))

    tol = 2e-5 if dtype == torch.float32 else 2e-2
    for name, a, b in zip(("out", "dq", "dk", "dv"), run("cuda"), run("cpu")):
        torch.testing.assert_close(a.cpu().float(), b.float(), rtol=tol, atol=tol * max(1.0, b.abs().max().item()),
                                   msg=lambda m: f"{name}: {m}")


# ---- the tensor-core backward (fp16 / bf16, head dims up to 128) ---------------------------------
def check_repeatable_grads(ours, tensors, g, dtype, **ref_kw):
    """ours() twice: bit for bit the same gradients, each within the reference-error rule."""
    first, second = ours(), ours()
    theirs = grads(reference.attention, tensors, g, **ref_kw)
    exact = grads(reference.attention, [t.double() for t in tensors], g.double(), **ref_kw)
    for name, a, a2, b, c in zip("q k v bias".split(), first, second, theirs, exact):
        assert torch.equal(a, a2), f"grad of {name} differs between two runs"
        assert_within_reference_error(a, b, c, dtype, what=f"grad of {name}", floor=attention_grad_floor(dtype))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("D", [32, 64, 80, 96, 128])
@pytest.mark.parametrize("features", ["causal+padding+bias", "dropout", "grouped-query"])
def test_tensor_core_backward(dtype, D, features):
    """Every head-dim instantiation of the mma.sync backward, with partial query and key tiles
    (70 queries, 90 keys): gradients within PyTorch's own error of float64, and bit for bit the
    same on a second run."""
    B, H, Nq, Nk = 2, 2, 70, 90
    q, k, v = qkv(B, H, Nq, Nk, D, dtype, "cuda", "bnhd")
    tensors, kw, ref_kw = [q, k, v], {}, {}
    if features == "causal+padding+bias":
        kw = dict(causal=True, key_padding_mask=torch.rand(B, Nk, device="cuda") < 0.3)
        tensors.append(torch.randn(1, H, Nq, Nk, dtype=dtype, device="cuda"))
        ref_kw = kw
    elif features == "dropout":
        keep = _dropout_keep(11, B, H, Nq, Nk, 0.2).to("cuda")
        kw = dict(dropout_p=0.2, generator=torch.Generator().manual_seed(11))
        ref_kw = dict(dropout_p=0.2, dropout_keep=keep)
    else:
        tensors[1], tensors[2] = k[:, :1], v[:, :1]  # one key/value head for both query heads
    g = torch.randn(B, H, Nq, D, dtype=dtype, device="cuda")

    def ours():
        return grads(taskkernels.attention, tensors, g, **dict(kw, generator=torch.Generator().manual_seed(11))
                     if "generator" in kw else kw)

    check_repeatable_grads(ours, tensors, g, dtype, **ref_kw)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("D, unaligned", [(20, False), (72, False), (100, False), (64, True), (128, True)])
def test_tensor_core_backward_pipeline_edges(dtype, D, unaligned):
    """The backward's double-buffered tiles over several query and key tiles (150 x 200): head
    dims off the 16-byte chunk (cp.async with a short source size), and tensors one element past a
    16-byte boundary (every chunk on the element-load fallback), with causal and key padding."""
    B, H, Nq, Nk = 1, 2, 150, 200

    def make(n):
        if not unaligned:
            return torch.randn(B, H, n, D, device="cuda", dtype=dtype)
        return torch.randn(B * H * n * D + 1, device="cuda", dtype=dtype)[1:].view(B, H, n, D)

    tensors = [make(Nq), make(Nk), make(Nk)]
    g = make(Nq)
    kw = dict(causal=True, key_padding_mask=torch.rand(B, Nk, device="cuda") < 0.3)

    def ours():  # grads() would clone the inputs onto aligned storage: differentiate the views
        bases = [t._base.detach().requires_grad_(True) if unaligned else t.detach().requires_grad_(True)
                 for t in tensors]
        views = [b_[1:].view(t.shape) if unaligned else b_ for b_, t in zip(bases, tensors)]
        assert all((v.data_ptr() % 16 != 0) == unaligned for v in views)
        return torch.autograd.grad(taskkernels.attention(*views, **kw), views, g)

    check_repeatable_grads(ours, tensors, g, dtype, **kw)


# ---- the pipelined tensor-core forward's edges (cp.async / ldmatrix fallbacks) ----------------------
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("D", [8, 20, 36, 72, 100, 120])
def test_tensor_core_forward_odd_head_dims(dtype, D):
    """Head dims that are not a multiple of the 16-byte chunk, with padding and bias, partial tiles."""
    B, H, Nq, Nk = 1, 2, 70, 150
    q, k, v = qkv(B, H, Nq, Nk, D, dtype, "cuda")
    kpm = torch.rand(B, Nk, device="cuda") < 0.3
    bias = torch.randn(H, Nq, Nk, device="cuda", dtype=dtype)
    check(q, k, v, dtype, causal=True, key_padding_mask=kpm, attn_bias=bias)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("D", [32, 64])
def test_tensor_core_forward_unaligned_inputs(dtype, D):
    """Tensors one element past a 16-byte boundary: every chunk on the element-load fallback."""
    B, H, Nq, Nk = 1, 2, 40, 140

    def make(n):
        return torch.randn(B * H * n * D + 1, device="cuda", dtype=dtype)[1:].view(B, H, n, D)

    check(make(Nq), make(Nk), make(Nk), dtype, causal=True)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_tensor_core_forward_whole_padded_key_tiles(dtype):
    q, k, v = qkv(1, 2, 300, 300, 64, dtype, "cuda", "bnhd")
    kpm = torch.zeros(1, 300, dtype=torch.bool, device="cuda")
    kpm[0, 64:200] = True  # whole key tiles padded
    check(q, k, v, dtype, causal=True, key_padding_mask=kpm)
