"""taskkernels.scaled_dot_product_attention against F.scaled_dot_product_attention: values and
gradients over ranks, broadcasting, every mask kind, causal alignment, grouped-query attention,
scale and dtypes; SDPA's own sample inputs; SDPA's errors.

The references are PyTorch's SDPA on the CPU: in float64 (the truth) and in the test's dtype (the
error PyTorch itself makes, which bounds ours as everywhere in this suite)."""

import pytest
import torch
import torch.nn.functional as F

import taskkernels
from taskkernels.ops import sdpa as sdpa_module
from conftest import DEVICES, FLOAT_DTYPES, assert_within_reference_error, attention_grad_floor

# name: (query shape, key shape, value shape, mask: None or (kind, shape), keyword arguments)
CASES = {
    "rank3": ((4, 9, 16), (4, 13, 16), (4, 13, 16), None, {}),
    "rank4": ((2, 3, 9, 16), (2, 3, 13, 16), (2, 3, 13, 16), None, {}),
    "rank5": ((2, 2, 3, 9, 16), (2, 2, 3, 13, 16), (2, 2, 3, 13, 16), None, {}),
    "rank2": ((9, 16), (13, 16), (13, 16), None, {}),
    "query3_keys4": ((3, 9, 16), (2, 3, 13, 16), (2, 3, 13, 16), None, {}),
    "keys_shared_by_heads": ((2, 3, 9, 16), (2, 1, 13, 16), (2, 1, 13, 16), None, {}),
    "query_broadcast_batch": ((1, 3, 9, 16), (2, 3, 13, 16), (2, 3, 13, 16), None, {}),
    "rank5_broadcast": ((2, 1, 3, 9, 16), (1, 4, 3, 13, 16), (1, 4, 3, 13, 16), None, {}),
    "value_dim_larger": ((2, 3, 9, 16), (2, 3, 13, 16), (2, 3, 13, 24), None, {}),
    "value_dim_smaller": ((2, 3, 9, 32), (2, 3, 13, 32), (2, 3, 13, 8), None, {}),
    "head_dim_64": ((2, 2, 40, 64), (2, 2, 40, 64), (2, 2, 40, 64), None, {}),
    "scale": ((2, 3, 9, 16), (2, 3, 13, 16), (2, 3, 13, 16), None, dict(scale=0.3)),
    "bool_mask_LS": ((2, 3, 9, 16), (2, 3, 13, 16), (2, 3, 13, 16), ("bool", (9, 13)), {}),
    "bool_mask_keys": ((2, 3, 9, 16), (2, 3, 13, 16), (2, 3, 13, 16), ("bool", (2, 1, 1, 13)), {}),
    "bool_mask_heads": ((2, 3, 9, 16), (2, 3, 13, 16), (2, 3, 13, 16), ("bool", (3, 1, 13)), {}),
    "bool_mask_full": ((2, 3, 9, 16), (2, 3, 13, 16), (2, 3, 13, 16), ("bool", (2, 3, 9, 13)), {}),
    "bool_mask_rank5": ((2, 2, 3, 9, 16), (2, 2, 3, 13, 16), (2, 2, 3, 13, 16), ("bool", (2, 1, 1, 1, 13)), {}),
    "float_mask_LS": ((2, 3, 9, 16), (2, 3, 13, 16), (2, 3, 13, 16), ("float", (9, 13)), {}),
    "float_mask_full": ((2, 3, 9, 16), (2, 3, 13, 16), (2, 3, 13, 16), ("float", (2, 3, 9, 13)), {}),
    "float_mask_rank5": ((2, 2, 3, 9, 16), (2, 2, 3, 13, 16), (2, 2, 3, 13, 16), ("float", (2, 1, 3, 1, 13)), {}),
    "causal_square": ((2, 3, 13, 16), (2, 3, 13, 16), (2, 3, 13, 16), None, dict(is_causal=True)),
    "causal_fewer_queries": ((2, 3, 9, 16), (2, 3, 21, 16), (2, 3, 21, 16), None, dict(is_causal=True)),
    "causal_more_queries": ((2, 3, 21, 16), (2, 3, 9, 16), (2, 3, 9, 16), None, dict(is_causal=True)),
    "gqa_groups1": ((2, 3, 9, 16), (2, 3, 13, 16), (2, 3, 13, 16), None, dict(enable_gqa=True)),
    "gqa_groups2": ((2, 4, 9, 16), (2, 2, 13, 16), (2, 2, 13, 16), None, dict(enable_gqa=True)),
    "gqa_groups4_causal": ((2, 8, 13, 64), (2, 2, 13, 64), (2, 2, 13, 64), None, dict(enable_gqa=True, is_causal=True)),
    "gqa_groups4_mask": ((2, 8, 9, 16), (2, 2, 13, 16), (2, 2, 13, 16), ("float", (8, 9, 13)), dict(enable_gqa=True)),
    "gqa_rank3": ((4, 9, 16), (2, 13, 16), (2, 13, 16), ("bool", (9, 13)), dict(enable_gqa=True)),
    "gqa_rank5": ((2, 2, 6, 9, 16), (2, 2, 3, 13, 16), (2, 2, 3, 13, 16), None, dict(enable_gqa=True)),
}


def make_inputs(case, dtype, device):
    q_shape, k_shape, v_shape, mask, kw = CASES[case]
    q, k, v = (torch.randn(s, dtype=dtype, device=device) for s in (q_shape, k_shape, v_shape))
    kw = dict(kw)
    if mask is not None:
        kind, shape = mask
        if kind == "bool":
            kw["attn_mask"] = torch.rand(shape, device=device) < 0.7
        else:  # additive: a third of the entries -inf, the rest finite
            m = torch.randn(shape, dtype=dtype, device=device)
            kw["attn_mask"] = m.masked_fill(torch.rand(shape, device=device) < 0.3, float("-inf"))
    return [q, k, v], kw


def run(fn, tensors, kw, grad_out=None, dtype=None, device=None):
    """fn's output and the gradients of q, k, v (and of a float mask) for grad_out, on copies of
    the inputs converted to dtype/device."""
    def conv(t):
        t = t.detach().to(device=device or t.device)
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    leaves = [conv(t).requires_grad_(True) for t in tensors]
    kw = dict(kw)
    mask = kw.get("attn_mask")
    if mask is not None:
        kw["attn_mask"] = conv(mask)
        if mask.is_floating_point():
            leaves.append(kw["attn_mask"].requires_grad_(True))
    out = fn(*leaves[:3], **kw)
    if grad_out is None:
        return out, None
    return out, torch.autograd.grad(out, leaves, conv(grad_out))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_matches_pytorch(device, dtype, case):
    tensors, kw = make_inputs(case, dtype, device)
    exact, _ = run(F.scaled_dot_product_attention, tensors, kw, dtype=torch.float64, device="cpu")
    g = torch.randn(exact.shape, dtype=dtype, device=device)
    ours, our_grads = run(taskkernels.scaled_dot_product_attention, tensors, kw, g)
    exact, exact_grads = run(F.scaled_dot_product_attention, tensors, kw, g, dtype=torch.float64, device="cpu")
    theirs, their_grads = run(F.scaled_dot_product_attention, tensors, kw, g, device="cpu")
    assert ours.device == tensors[0].device
    assert torch.isfinite(exact).all()  # every case above has a finite SDPA output
    assert_within_reference_error(ours, theirs, exact, dtype)
    for name, a, b, c in zip(("query", "key", "value", "attn_mask"), our_grads, their_grads, exact_grads):
        assert_within_reference_error(a, b, c, dtype, what=f"grad of {name}", floor=attention_grad_floor(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_rows_that_see_no_key_are_zero(device):
    """A query row whose mask entries are all False (bool) or all -inf (float): zeros and zero
    gradients, as SDPA's fused CPU path gives (its math backend can give NaN there)."""
    q, k, v = (torch.randn(2, 3, n, 16, dtype=torch.float64, device=device, requires_grad=True) for n in (5, 7, 7))
    bool_mask = torch.rand(5, 7, device=device) < 0.7
    bool_mask[1] = False
    float_mask = torch.zeros(2, 3, 5, 7, dtype=torch.float64, device=device).masked_fill(~bool_mask, float("-inf"))
    for mask in (bool_mask, float_mask):
        out = taskkernels.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert torch.equal(out[:, :, 1], torch.zeros_like(out[:, :, 1]))
        want = F.scaled_dot_product_attention(q.detach().cpu(), k.detach().cpu(), v.detach().cpu(), attn_mask=mask.cpu())
        keep = torch.isfinite(want)
        torch.testing.assert_close(out.detach().cpu()[keep], want[keep])
        dq, = torch.autograd.grad(out.sum(), q)
        assert torch.equal(dq[:, :, 1], torch.zeros_like(dq[:, :, 1])) and torch.isfinite(dq).all()


def test_pytorch_sample_inputs():
    """SDPA's own OpInfo samples (PyTorch's test suite): the same values and gradients, float32
    and float64. Samples with dropout > 0 draw another mask than SDPA's: only their shape,
    dtype and finiteness can be compared."""
    from torch.testing._internal.common_methods_invocations import op_db

    op = next(o for o in op_db if o.name == "nn.functional.scaled_dot_product_attention")
    compared = 0
    for dtype in (torch.float32, torch.float64):
        for sample in op.sample_inputs("cpu", dtype, requires_grad=True):
            tensors, kw = [sample.input, *sample.args], dict(sample.kwargs)
            ours = taskkernels.scaled_dot_product_attention(*tensors, **kw)
            want = F.scaled_dot_product_attention(*tensors, **kw)
            assert ours.shape == want.shape and ours.dtype == want.dtype and torch.isfinite(ours).all()
            if kw.get("dropout_p", 0.0) > 0:
                continue
            g = torch.randn_like(want)
            ours, our_grads = run(taskkernels.scaled_dot_product_attention, tensors, kw, g)
            theirs, their_grads = run(F.scaled_dot_product_attention, tensors, kw, g)
            exact, exact_grads = run(F.scaled_dot_product_attention, tensors, kw, g, dtype=torch.float64)
            # The samples are uniform in [-9, 9]: logits reach the hundreds, and a logit's float32
            # rounding (absolute, ~1e-5 there) is a relative error of every probability of its row.
            # Our float32 gradients reach 4.2e-6 of the largest there (PyTorch's 1e-6): the
            # attention gradient floor (conftest), used for the output here too.
            floor = attention_grad_floor(dtype)
            assert_within_reference_error(ours, theirs, exact, dtype, floor=floor)
            for a, b, c in zip(our_grads, their_grads, exact_grads):
                assert_within_reference_error(a, b, c, dtype, what="gradient", floor=floor)
            compared += 1
    assert compared >= 20


# ---- how the kernels are called: shared heads and masks read in place ---------------------------
class Spy:
    def __init__(self, monkeypatch):
        self.calls = []
        real = sdpa_module.attention

        def spy(q, k, v, **kw):
            self.calls.append((q, k, v, kw))
            return real(q, k, v, **kw)

        monkeypatch.setattr(sdpa_module, "attention", spy)


def test_gqa_reads_shared_heads_in_place(monkeypatch):
    spy = Spy(monkeypatch)
    q = torch.randn(2, 8, 9, 16, requires_grad=True)
    k = torch.randn(2, 9 + 4, 2, 16).transpose(1, 2).requires_grad_(True)  # a (B, S, Hk, E) projection's view
    v = torch.randn(2, 2, 13, 16, requires_grad=True)
    out = taskkernels.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    (_, k_in, v_in, _), = spy.calls
    assert k_in.shape == (2, 2, 13, 16) and k_in.data_ptr() == k.data_ptr() and k_in.stride() == k.stride()
    assert v_in.data_ptr() == v.data_ptr()
    dk, = torch.autograd.grad(out.sum(), k)
    assert dk.shape == k.shape


def test_masks_reach_the_kernels_at_their_own_size(monkeypatch):
    spy = Spy(monkeypatch)
    q, k, v = torch.randn(2, 3, 9, 16), torch.randn(2, 3, 13, 16), torch.randn(2, 3, 13, 16)
    f = taskkernels.scaled_dot_product_attention
    f(q, k, v, attn_mask=torch.rand(2, 1, 1, 13) < 0.5)  # the same for every query: key padding
    f(q, k, v, attn_mask=torch.rand(9, 13) < 0.5)
    f(q, k, v, attn_mask=torch.randn(3, 1, 13))
    f(q, k, v, is_causal=True)  # fewer queries than keys: the first 9 keys, causal, no mask
    kws = [{n: a for n, a in c[3].items() if n not in ("scale", "dropout_p")} for c in spy.calls]
    assert set(kws[0]) == {"key_padding_mask"} and kws[0]["key_padding_mask"].shape == (2, 13)
    assert kws[1]["attn_bias"].numel() == 9 * 13
    assert kws[2]["attn_bias"].numel() == 3 * 13
    assert kws[3] == {"causal": True} and spy.calls[3][1].shape[2] == 9
    # A 3-D query broadcast over the keys' batch is read in place (stride 0), not copied.
    f(q[0], k, v)
    assert spy.calls[4][0].data_ptr() == q.data_ptr()


# ---- dropout -------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_dropout(device):
    """dropout_p > 0 is taskkernels.attention's dropout (the seed from torch's generator), applied
    whenever > 0 as SDPA applies it; dropout_p = 1 gives zeros as SDPA does."""
    q, k, v = (torch.randn(2, 3, n, 16, device=device, requires_grad=True) for n in (9, 13, 13))
    torch.manual_seed(5)
    ours = taskkernels.scaled_dot_product_attention(q, k, v, dropout_p=0.3)
    torch.manual_seed(5)
    direct = taskkernels.attention(q, k, v, dropout_p=0.3)
    assert torch.equal(ours, direct)
    assert not torch.allclose(ours, taskkernels.scaled_dot_product_attention(q, k, v))
    zeros = taskkernels.scaled_dot_product_attention(q, k, v, dropout_p=1.0)
    assert torch.equal(zeros, torch.zeros_like(zeros))
    assert torch.equal(zeros.cpu(), F.scaled_dot_product_attention(q.cpu(), k.cpu(), v.cpu(), dropout_p=1.0))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in torch.autograd.grad(zeros.sum(), (q, k, v)))


def test_torch_compile_fullgraph():
    q, k, v = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 13, 16), torch.randn(2, 2, 13, 16)
    mask = torch.rand(9, 13) < 0.7

    @torch.compile(fullgraph=True)
    def f(q, k, v):
        return taskkernels.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    torch.testing.assert_close(f(q, k, v), F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True))


# ---- errors: SDPA's exception types, our messages name the argument -------------------------------
def _qkv():
    return torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)


ERRORS = {
    "causal with a mask": (lambda q, k, v: dict(attn_mask=torch.ones(5, 7, dtype=torch.bool), is_causal=True),
                           r"attn_mask should not be set when is_causal=True"),
    "1-D inputs": (lambda q, k, v: dict(query=q[0, 0, 0], key=k[0, 0, 0], value=v[0, 0, 0]), r"at least 2-D"),
    "dtypes differ": (lambda q, k, v: dict(key=k.double()), r"same dtype"),
    "mask dtype": (lambda q, k, v: dict(attn_mask=torch.ones(5, 7, dtype=torch.int64)), r"attn_mask must be bool"),
    "float64 mask for float32": (lambda q, k, v: dict(attn_mask=torch.ones(5, 7, dtype=torch.float64)), r"attn_mask must be bool"),
    "mask shape": (lambda q, k, v: dict(attn_mask=torch.ones(5, 6, dtype=torch.bool)), r"attn_mask"),
    "mask rank": (lambda q, k, v: dict(attn_mask=torch.ones(1, 2, 3, 5, 7, dtype=torch.bool)), r"attn_mask of shape"),
    "gqa heads": (lambda q, k, v: dict(query=torch.randn(2, 4, 5, 8), enable_gqa=True), r"must divide the number of heads"),
    "heads without gqa": (lambda q, k, v: dict(query=torch.randn(2, 4, 5, 8)), r"do not broadcast"),
    "key head dim": (lambda q, k, v: dict(key=torch.randn(2, 3, 7, 6)), r"key must have the head dimension"),
    "dropout": (lambda q, k, v: dict(dropout_p=-0.1), r"dropout_p"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_as_pytorch(case):
    q, k, v = _qkv()
    change, message = ERRORS[case]
    args = dict(query=q, key=k, value=v)
    args.update(change(q, k, v))
    try:
        F.scaled_dot_product_attention(**args)
    except Exception as error:  # noqa: BLE001 (its type is what is compared)
        expected = type(error)
    else:
        # torch 2.13's CPU SDPA still took is_causal with a mask; ours keeps 2.14's rule there.
        assert case == "causal with a mask", f"{case}: PyTorch's SDPA accepted it"
        expected = RuntimeError
    with pytest.raises(expected, match=message):
        taskkernels.scaled_dot_product_attention(**args)


def test_value_length_must_match_key():
    """Where SDPA's CPU path reads a value shorter than the key without complaint, ours raises."""
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="key and value must have the same length S"):
        taskkernels.scaled_dot_product_attention(q, k, v[:, :, :6])


def test_hf_grouped_query_model_reads_shared_heads(monkeypatch):
    """An HF model with grouped-query attention (Llama, 4 query heads on 2 key/value heads) on
    taskkernels attention: the kernel gets the 2 key/value heads as they are, and the logits and
    gradients are those of the model on transformers' SDPA."""
    import transformers

    from taskkernels.models import hf_attention

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 11))
    model.set_attn_implementation("sdpa")
    want = model(ids).logits
    want_grads = torch.autograd.grad(want.square().sum(), list(model.parameters()))
    heads = []
    real = hf_attention.attention

    def spy(q, k, v, **kw):
        heads.append((q.shape[1], k.shape[1]))
        return real(q, k, v, **kw)

    monkeypatch.setattr(hf_attention, "attention", spy)
    hf_attention.use_taskkernels_attention(model)
    got = model(ids).logits
    got_grads = torch.autograd.grad(got.square().sum(), list(model.parameters()))
    assert heads and all(h == (4, 2) for h in heads)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))


def test_autocast_takes_mixed_dtypes_as_sdpa():
    """Under autocast SDPA takes query, key and value of different floating dtypes (all cast to the
    autocast dtype); so does ours, with SDPA's result."""
    q, k, v = torch.randn(2, 3, 9, 16), torch.randn(2, 3, 13, 16, dtype=torch.bfloat16), torch.randn(2, 3, 13, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = taskkernels.scaled_dot_product_attention(q, k, v)
        theirs = F.scaled_dot_product_attention(q, k, v)
    exact = F.scaled_dot_product_attention(*(t.bfloat16().double() for t in (q, k, v)))
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert_within_reference_error(ours, theirs, exact, torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    """Finite differences through the broadcasting, the float mask (its gradient too), the
    start-aligned causal path and grouped-query heads."""
    f = taskkernels.scaled_dot_product_attention
    q = torch.randn(2, 4, 5, 8, dtype=torch.float64, device=device, requires_grad=True)
    k, v = (torch.randn(2, 2, 7, 8, dtype=torch.float64, device=device, requires_grad=True) for _ in range(2))
    mask = torch.randn(4, 5, 7, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v, m: f(q, k, v, attn_mask=m, enable_gqa=True), (q, k, v, mask))
    assert torch.autograd.gradcheck(lambda q, k, v: f(q, k, v, is_causal=True, enable_gqa=True, scale=0.5), (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: f(q[0, :2], k[0], v[0]), (q, k, v))  # 3-D, L < S
