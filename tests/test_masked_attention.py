"""taskkernels.masked_attention (Mask2Former's per-query mask) against the float64 reference."""

import pytest
import torch

import taskkernels
from taskkernels import reference
from conftest import (DEVICES, FLOAT_DTYPES, FLOOR, assert_within_reference_error, attention_grad_floor, requires_cuda,
                      run_portable_cpu_build)

# (B, H, Q, HW, D): the sizes the issue names (Q 1/100/200, HW 1/256/1024/4096) and odd ones.
SHAPES = [
    (2, 2, 1, 1, 32),
    (2, 2, 100, 256, 32),
    (1, 2, 200, 1024, 64),
    (1, 2, 100, 4096, 32),
    (2, 3, 37, 193, 64),
    (1, 1, 70, 65, 48),
]
DENSITIES = [0.0, 0.05, 0.5, 1.0]  # fraction of keys each query may see


def qkv(B, H, Q, HW, D, dtype, device):
    q = torch.randn(B, Q, H, D, device=device, dtype=dtype).transpose(1, 2)  # HF's (B, N, H, D) views
    k = torch.randn(B, HW, H, D, device=device, dtype=dtype).transpose(1, 2)
    v = torch.randn(B, HW, H, D, device=device, dtype=dtype).transpose(1, 2)
    return q, k, v


def random_mask(B, Q, HW, density, device, kind="random"):
    """(B, Q, HW) bool, True = blocked, each query seeing about `density` of the keys.
    kind "random": independent pixels; "band": query i sees one contiguous run of keys (so whole
    64 x 64 tiles are blocked for every query of a tile, the kernels' skip path); "blobs": a
    rectangle of a square-ish pixel grid, like a predicted segment."""
    if kind == "random":
        return torch.rand(B, Q, HW, device=device) >= density
    if kind == "band":
        width = max(1, int(density * HW))
        start = (torch.arange(Q, device=device) * (HW - width) // max(1, Q - 1))[None, :, None]
        j = torch.arange(HW, device=device)[None, None, :]
        return ((j < start) | (j >= start + width)).expand(B, Q, HW).clone()
    side = int(HW**0.5)
    assert side * side == HW
    hw = max(1, int(side * density**0.5))
    y0 = torch.randint(0, side - hw + 1, (B, Q, 1, 1), device=device)
    x0 = torch.randint(0, side - hw + 1, (B, Q, 1, 1), device=device)
    y = torch.arange(side, device=device)[:, None]
    x = torch.arange(side, device=device)[None, :]
    inside = (y >= y0) & (y < y0 + hw) & (x >= x0) & (x < x0 + hw)
    return ~inside.flatten(2)


def to64(*ts):
    return [t.detach().cpu().double() for t in ts]


def check(q, k, v, mask, dtype):
    out = taskkernels.masked_attention(q, k, v, mask)
    ref = reference.masked_attention(*to64(q, k, v), mask.cpu())
    lowp = reference.masked_attention(q, k, v, mask)
    assert out.is_contiguous() and out.shape == q.shape and out.dtype == dtype
    assert_within_reference_error(out, lowp, ref, dtype)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("density", DENSITIES, ids=str)
def test_matches_reference(device, dtype, shape, density):
    B, H, Q, HW, D = shape
    q, k, v = qkv(*shape, dtype, device)
    check(q, k, v, random_mask(B, Q, HW, density, device), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind,HW", [("band", 1000), ("band", 4096), ("blobs", 1024), ("blobs", 4096)])
@pytest.mark.parametrize("density", [0.1, 0.3, 0.6])
def test_structured_masks(device, dtype, kind, HW, density):
    """Masks with whole blocked tiles: the kernels skip those, and must still be exact."""
    q, k, v = qkv(2, 2, 200, HW, 32, dtype, device)
    check(q, k, v, random_mask(2, 200, HW, density, device, kind), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_fully_blocked_rows_attend_everywhere(device, dtype):
    q, k, v = qkv(2, 2, 30, 300, 32, dtype, device)
    mask = random_mask(2, 30, 300, 0.2, device)
    mask[0, 3] = True
    mask[1, 10:20] = True
    out = check(q, k, v, mask, dtype)
    unmasked = taskkernels.attention(q, k, v)
    torch.testing.assert_close(out[0, :, 3], unmasked[0, :, 3])
    torch.testing.assert_close(out[1, :, 10:20], unmasked[1, :, 10:20])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_mask_logits_agree_with_the_mask(device, dtype):
    B, H, Q, HW, D = 2, 2, 50, 333, 32
    q, k, v = qkv(B, H, Q, HW, D, dtype, device)
    logits = torch.randn(B, Q, HW, device=device, dtype=dtype) + 1.0
    logits[0, 7] = -1.0  # fully blocked row
    logits[1, :, 5] = float("nan")  # NaN: sigmoid(NaN) < 0.5 is False, not blocked
    blocked = logits.sigmoid() < 0.5  # HF's rule
    assert torch.equal(taskkernels.pack_attention_mask(mask_logits=logits), taskkernels.pack_attention_mask(blocked))
    torch.testing.assert_close(taskkernels.masked_attention(q, k, v, mask_logits=logits),
                               taskkernels.masked_attention(q, k, v, blocked), rtol=0, atol=0)
    check(q, k, v, blocked, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_packed_bits(device):
    """The packed format: bit j % 64 of word j // 64, fully blocked rows cleared, any strides."""
    mask = torch.rand(3, 70, 20, device=device).transpose(1, 2) < 0.5  # (3, 20, 70), non-contiguous
    mask[1, 4] = True
    bits = taskkernels.pack_attention_mask(mask).cpu()
    assert bits.shape == (3, 20, 2) and bits.dtype == torch.int64
    j = torch.arange(70)
    unpacked = ((bits[..., j // 64] >> (j % 64)) & 1).bool()
    want = mask.cpu().clone()
    want[1, 4] = False
    assert torch.equal(unpacked, want)
    # a precomputed packing is accepted as mask_bits
    q, k, v = qkv(3, 2, 20, 70, 16, torch.float32, device)
    torch.testing.assert_close(taskkernels.masked_attention(q, k, v, mask_bits=bits.to(device)),
                               taskkernels.masked_attention(q, k, v, mask), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_sizes(device):
    q, k, v = qkv(2, 2, 5, 0, 16, torch.float32, device)
    assert torch.equal(taskkernels.masked_attention(q, k, v, torch.zeros(2, 5, 0, dtype=torch.bool, device=device)),
                       torch.zeros(2, 2, 5, 16, device=device))
    q, k, v = qkv(0, 2, 5, 9, 16, torch.float32, device)
    assert taskkernels.masked_attention(q, k, v, torch.zeros(0, 5, 9, dtype=torch.bool, device=device)).shape == (0, 2, 5, 16)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    q, k, v = qkv(2, 3, 17, 130, 32, torch.float32, device)
    mask = torch.rand(2, 17, 130, device=device) < 0.5
    torch.library.opcheck(torch.ops.taskkernels.pack_attention_mask.default, (mask, None))
    torch.library.opcheck(torch.ops.taskkernels.pack_attention_mask.default, (None, torch.randn(2, 17, 130, device=device)))
    bits = taskkernels.pack_attention_mask(mask)
    torch.library.opcheck(torch.ops.taskkernels.masked_attention.default, (q, k, v, bits, 0.3))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_with_gradients(device):
    q, k, v = (t.requires_grad_(True) for t in qkv(2, 3, 17, 130, 32, torch.float32, device))
    bits = taskkernels.pack_attention_mask(torch.rand(2, 17, 130, device=device) < 0.5)
    torch.library.opcheck(torch.ops.taskkernels.masked_attention.default, (q, k, v, bits, None))
    out, lse = torch.ops.taskkernels.masked_attention(q.detach(), k.detach(), v.detach(), bits, None)
    bwd = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, bits, None)
    torch.library.opcheck(torch.ops.taskkernels.masked_attention_backward.default, bwd)


# ---- gradients ----------------------------------------------------------------------------------
def grads(fn, tensors, grad_out, mask):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    return torch.autograd.grad(fn(*leaves, mask), leaves, grad_out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 2, 100, 256, 32), (1, 2, 200, 1024, 64), (2, 3, 37, 193, 64), (2, 2, 1, 1, 32)], ids=str)
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0], ids=str)
def test_gradients_match_reference(device, dtype, shape, density):
    B, H, Q, HW, D = shape
    tensors = qkv(*shape, dtype, device)
    mask = random_mask(B, Q, HW, density, device)
    mask[0, 0] = True  # one fully blocked row at every density
    g = torch.randn(B, H, Q, D, dtype=dtype, device=device)
    ours = grads(taskkernels.masked_attention, tensors, g, mask)
    theirs = grads(reference.masked_attention, tensors, g, mask)
    exact = grads(reference.masked_attention, [t.double() for t in tensors], g.double(), mask)
    floor = attention_grad_floor(dtype)
    if HW == 1:
        # One key: the exact gradients of q and k are 0 (a softmax over one key is constant), and
        # PyTorch's are exactly 0; ours are the rounding residue of dP - delta, two D-term dot
        # products dO . V and dO . O summed in different orders, so they scale with |dO| . |V|.
        # (A fresh seed in CI put the plain floor 1.15x under the residue.)
        terms = (g.abs().double() @ tensors[2].abs().double().transpose(-1, -2)).max().item()
        floor = max(floor or FLOOR[dtype], FLOOR[dtype] * max(1.0, terms))
    for name, a, b, c in zip("qkv", ours, theirs, exact):
        assert_within_reference_error(a, b, c, dtype, what=f"grad of {name}", floor=floor)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, D", [(torch.float32, 32), (torch.bfloat16, 32), (torch.float16, 128)], ids=str)
@pytest.mark.parametrize("kind", ["band", "blobs"])
def test_gradients_with_skipped_tiles(device, dtype, D, kind):
    """Blocked (query tile, key tile) pairs skipped in both backward passes: the exact kernels
    (float32) and, on CUDA, the tensor-core passes, whose pipelines then fetch the next unblocked
    tile (64-key tiles at head dim 32, 32-key tiles in the dQ pass at 128)."""
    q, k, v = qkv(2, 2, 130, 1024, D, dtype, device)
    mask = random_mask(2, 130, 1024, 0.1, device, kind)
    g = torch.randn(2, 2, 130, D, device=device, dtype=dtype)
    ours = grads(taskkernels.masked_attention, (q, k, v), g, mask)
    theirs = grads(reference.masked_attention, (q, k, v), g, mask)
    exact = grads(reference.masked_attention, to64(q, k, v), g.double().cpu(), mask.cpu())
    for name, a, b, c in zip("qkv", ours, theirs, exact):
        assert_within_reference_error(a, b, c, dtype, what=f"grad of {name}", floor=attention_grad_floor(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    q, k, v = (t.detach().requires_grad_(True) for t in qkv(2, 2, 9, 70, 8, torch.float64, device))
    mask = random_mask(2, 9, 70, 0.3, device)
    mask[1, 2] = True
    assert torch.autograd.gradcheck(lambda q, k, v: taskkernels.masked_attention(q, k, v, mask, scale=0.6), (q, k, v))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_training_step(device):
    q, k, v = (t.detach().requires_grad_(True) for t in qkv(2, 2, 20, 200, 32, torch.float32, device))
    logits = torch.randn(2, 20, 200, requires_grad=True, device=device)  # a mask predictor's output: no gradient through the mask

    def loss_fn(q, k, v, logits):
        return taskkernels.masked_attention(q * 2, k, v, mask_logits=logits).square().mean()

    compiled = torch.compile(loss_fn, fullgraph=True)
    got = torch.autograd.grad(compiled(q, k, v, logits), (q, k, v))
    want = torch.autograd.grad(loss_fn(q, k, v, logits), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_portable_cpu_build_agrees():
    run_portable_cpu_build("""
        import torch, taskkernels
        from taskkernels import reference
        torch.manual_seed(0)
        q, k, v = (torch.randn(2, 2, n, 32, requires_grad=True) for n in (100, 700, 700))
        mask = torch.rand(2, 100, 700) < 0.6
        mask[:, :64, :128] = True  # a whole blocked tile
        out = taskkernels.masked_attention(q, k, v, mask)
        ref = reference.masked_attention(q.double(), k.double(), v.double(), mask)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), g)
        ref_grads = torch.autograd.grad(ref, (q, k, v), g.double())
        err = max([(out.double() - ref).abs().max().item()] + [(a.double() - b).abs().max().item() for a, b in zip(grads, ref_grads)])
        assert err < 1e-4, err
        print("ok", err)
    """)


ERRORS = {
    "no mask": (dict(), ValueError, r"pass exactly one of mask, mask_logits and mask_bits"),
    "two masks": (dict(mask=torch.zeros(2, 8, 10, dtype=torch.bool), mask_logits=torch.zeros(2, 8, 10)), ValueError,
                  r"pass exactly one of"),
    "mask shape": (dict(mask=torch.zeros(2, 8, 9, dtype=torch.bool)), RuntimeError,
                   r"mask must have shape \(B, Q, HW\) = \(2, 8, 10\)"),
    "mask over heads": (dict(mask=torch.zeros(6, 8, 10, dtype=torch.bool)), RuntimeError,
                        r"mask must have shape \(B, Q, HW\) = \(2, 8, 10\)"),
    "mask dtype": (dict(mask=torch.zeros(2, 8, 10)), RuntimeError, r"mask must be bool \(True = blocked\), got float32"),
    "logits dtype": (dict(mask_logits=torch.zeros(2, 8, 10, dtype=torch.int64)), RuntimeError,
                     r"mask_logits must be float16, bfloat16, float32 or float64, got int64"),
    "bits shape": (dict(mask_bits=torch.zeros(2, 8, 2, dtype=torch.int64)), RuntimeError,
                   r"mask_bits must be the int64 \(B, Nq, ceil\(Nk / 64\)\) = \(2, 8, 1\)"),
    "bits device": (dict(mask_bits=torch.zeros(2, 8, 1, dtype=torch.int64, device="meta")), RuntimeError,
                    r"mask_bits must be on the device of q"),
    "k heads": (dict(k=torch.randn(2, 4, 10, 16), mask=torch.zeros(2, 8, 10, dtype=torch.bool)), RuntimeError,
                r"masked_attention: k must have shape \(B, H, Nk, D\) = \(2, 3, Nk, 16\)"),
}


@pytest.mark.parametrize("case", ERRORS, ids=str)
def test_bad_input_is_named(case):
    args = dict(q=torch.randn(2, 3, 8, 16), k=torch.randn(2, 3, 10, 16), v=torch.randn(2, 3, 10, 16))
    change, error, message = ERRORS[case]
    args.update(change)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(error, match=message):
        taskkernels.masked_attention(q, k, v, **args)


@requires_cuda
def test_cuda_backward_is_deterministic():
    q, k, v = qkv(8, 8, 100, 4096, 32, torch.bfloat16, "cuda")
    mask = random_mask(8, 100, 4096, 0.3, "cuda", "blobs")
    g = torch.randn(8, 8, 100, 32, device="cuda", dtype=torch.bfloat16)
    first = grads(taskkernels.masked_attention, (q, k, v), g, mask)
    second = grads(taskkernels.masked_attention, (q, k, v), g, mask)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
