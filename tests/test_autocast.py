"""Autocast rules (taskkernels/_autocast.py): under torch.autocast each op runs in the dtype of
the PyTorch op it replaces, and its output and gradients are those of the same op called on
inputs cast by hand; a ViT and a BERT training step under CPU autocast run every op in bf16."""

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import taskkernels as tk
from taskkernels import _autocast
from conftest import DEVICES, EMULATED

LOW = [torch.bfloat16, torch.float16]
OTHER_LOW = {torch.bfloat16: torch.float16, torch.float16: torch.bfloat16}


@contextlib.contextmanager
def autocast(device, dtype):
    if EMULATED and device == "cuda":
        # torch.autocast("cuda") turns itself off where torch.cuda.is_available() is False, as on
        # the emulated GPU: set the state it sets on a real one.
        before = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", dtype)
        try:
            yield
        finally:
            torch.set_autocast_enabled("cuda", before[0])
            torch.set_autocast_dtype("cuda", before[1])
            torch.clear_autocast_cache()
    else:
        with torch.autocast(device, dtype=dtype):
            yield


class OpCalls(TorchDispatchMode):
    """Records each taskkernels op that runs, with the dtype of each tensor argument by schema
    name: what the kernels received, after autocast's casts (the mode sits below autocast)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "taskkernels":
            names = [a.name for a in func._schema.arguments]
            self.calls.append((func._opname, {n: a.dtype for n, a in zip(names, args) if isinstance(a, torch.Tensor)}))
        return func(*args, **(kwargs or {}))

    def of(self, opname):
        found = [dtypes for name, dtypes in self.calls if name == opname]
        assert found, f"{opname} did not run; ran: {[name for name, _ in self.calls]}"
        return found


def leaf(*shape, device, dtype=torch.float32, grad=True):
    return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(grad)


def outputs_and_grads(fn, inputs, cast=None):
    """fn's tensor outputs and the gradients of the floating inputs that require grad, for a fixed
    cotangent per output; `cast` maps each input first (a differentiable cast, as autocast's)."""
    xs = [cast(x) if cast is not None and isinstance(x, torch.Tensor) else x for x in inputs]
    out = fn(*xs)
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.is_floating_point()]
    wrt = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    if wrt:
        gen = torch.Generator().manual_seed(0)
        cot = [torch.randn(o.shape, generator=gen).to(o.device, o.dtype) for o in outs]
        grads = torch.autograd.grad(outs, wrt, cot)
    else:
        grads = []
    return [o.detach() for o in outs], grads


def assert_same(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype, f"dtype {g.dtype} != {w.dtype}"
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def to_low(dtype, device):
    """autocast's lower_precision_fp cast, by hand."""
    return lambda x: x.to(dtype) if x.is_floating_point() and x.dtype != torch.float64 and x.device.type == device else x


# ---- the ops that run in the autocast dtype ------------------------------------------------------
def attention_case(device, dtype):
    B, H, N, D = 2, 3, 13, 16
    q, k, v = (leaf(B, H, N, D, device=device) for _ in range(3))
    kpm = torch.zeros(B, N, dtype=torch.bool, device=device)
    kpm[1, 9:] = True
    bias = leaf(1, H, N, N, device=device)  # float32: stays float32 (the op takes it with any q)
    fn = lambda q, k, v, bias: tk.attention(q, k, v, key_padding_mask=kpm, attn_bias=bias)  # noqa: E731
    low = to_low(dtype, device)
    cast = lambda x: x if x is bias else low(x)  # noqa: E731
    return fn, (q, k, v, bias), cast, "attention", dict(q=dtype, k=dtype, v=dtype, attn_bias=torch.float32)


def attention_mixed_case(device, dtype):
    """q in float32, k and v in the other low dtype, a bias in it too: all cast to the autocast
    dtype, so a call that is invalid outside autocast is valid inside it, as SDPA's."""
    other = OTHER_LOW[dtype]
    q, k, v = leaf(1, 2, 9, 8, device=device), leaf(1, 2, 11, 8, device=device, dtype=other), \
        leaf(1, 2, 11, 8, device=device, dtype=other)
    bias = leaf(9, 11, device=device, dtype=other)
    fn = lambda q, k, v, bias: tk.attention_with_lse(q, k, v, causal=True, attn_bias=bias)  # noqa: E731
    return fn, (q, k, v, bias), to_low(dtype, device), "attention", dict(q=dtype, k=dtype, v=dtype, attn_bias=dtype)


def masked_attention_case(device, dtype):
    q, k, v = leaf(2, 2, 7, 16, device=device), leaf(2, 2, 70, 16, device=device), leaf(2, 2, 70, 16, device=device)
    logits = torch.randn(2, 7, 70, device=device)
    fn = lambda q, k, v: tk.masked_attention(q, k, v, mask_logits=logits)  # noqa: E731
    return fn, (q, k, v), to_low(dtype, device), "masked_attention", dict(q=dtype, k=dtype, v=dtype)


def patch_embed_case(device, dtype):
    x, w, b = leaf(2, 3, 16, 24, device=device), leaf(8, 3, 4, 4, device=device), leaf(8, device=device)
    cls, pos = leaf(1, 1, 8, device=device), leaf(1, 25, 8, device=device)
    return tk.patch_embed, (x, w, b, cls, pos), to_low(dtype, device), "patch_embed", dict(
        pixel_values=dtype, weight=dtype, bias=dtype, cls_token=dtype, pos_embed=dtype)


def depthwise_case(device, dtype):
    x = leaf(2, 6, 9, 11, device=device).detach().to(memory_format=torch.channels_last).requires_grad_()
    w, b = leaf(6, 1, 7, 7, device=device), leaf(6, device=device)
    return tk.depthwise_conv2d, (x, w, b), to_low(dtype, device), "depthwise_conv2d", dict(x=dtype, weight=dtype,
                                                                                           bias=dtype)


def depthwise_layernorm_case(device, dtype):
    x, w, b = leaf(2, 8, 9, 9, device=device), leaf(8, 1, 7, 7, device=device), leaf(8, device=device)
    lw, lb = leaf(8, device=device), leaf(8, device=device)
    return tk.depthwise_conv2d_layernorm, (x, w, b, lw, lb), to_low(dtype, device), "depthwise_conv2d_layernorm", \
        dict(x=dtype, weight=dtype, bias=dtype, ln_weight=dtype, ln_bias=dtype)


LOWER_PRECISION_CASES = [attention_case, attention_mixed_case, masked_attention_case, patch_embed_case, depthwise_case,
                         depthwise_layernorm_case]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("case", LOWER_PRECISION_CASES, ids=lambda c: c.__name__.removesuffix("_case"))
def test_runs_in_the_autocast_dtype(case, dtype, device):
    fn, inputs, cast, opname, want = case(device, dtype)
    with autocast(device, dtype), OpCalls() as calls:
        got_out, got_grads = outputs_and_grads(fn, inputs)
    (received,) = calls.of(opname)
    assert {n: received[n] for n in want} == want
    assert got_out[0].dtype == dtype
    # The same op on inputs cast by hand, outside autocast: identical outputs, and identical
    # gradients back in each input's own dtype.
    want_out, want_grads = outputs_and_grads(fn, inputs, cast)
    assert_same(got_out, want_out)
    assert_same(got_grads, want_grads)
    assert all(g.dtype == x.dtype for g, x in zip(got_grads, [x for x in inputs if x.requires_grad]))


@pytest.mark.parametrize("device", DEVICES)
def test_float64_and_integer_inputs_are_not_cast(device):
    """autocast casts neither float64 nor non-floating tensors (the packed mask's int64 words)."""
    q, k, v = (leaf(1, 2, 5, 8, device=device, dtype=torch.float64) for _ in range(3))
    with autocast(device, torch.bfloat16), OpCalls() as calls:
        out = tk.attention(q, k, v)
        masked = tk.masked_attention(q, k, v, mask=torch.rand(1, 5, 5, device=device) < 0.5)
    assert out.dtype == masked.dtype == torch.float64
    assert calls.of("attention")[0] == dict(q=torch.float64, k=torch.float64, v=torch.float64)
    assert calls.of("masked_attention")[0]["mask_bits"] == torch.int64
    torch.testing.assert_close(out, tk.attention(q, k, v), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_pack_attention_mask_has_no_rule(device):
    """It only tests the logits' sign (kept by every dtype): no cast, the same bits."""
    logits = torch.randn(2, 5, 130, device=device)
    with autocast(device, torch.bfloat16), OpCalls() as calls:
        bits = tk.pack_attention_mask(mask_logits=logits)
    assert calls.of("pack_attention_mask")[0]["mask_logits"] == torch.float32
    assert torch.equal(bits, tk.pack_attention_mask(mask_logits=logits))


# ---- CTC loss in float32 (F.ctc_loss's policy) ---------------------------------------------------
def ctc_batch(device, dtype):
    logits = torch.randn(3, 20, 6, device=device).to(dtype).requires_grad_()
    targets = torch.randint(1, 6, (3, 5), device=device)
    return logits, targets, torch.tensor([20, 17, 12], device=device), torch.tensor([5, 3, 4], device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_ctc_loss_from_logits_runs_in_float32(device, dtype):
    logits, targets, il, tl = ctc_batch(device, dtype)
    fn = lambda x: tk.ctc_loss_from_logits(x, targets, il, tl, reduction="sum")  # noqa: E731
    with autocast(device, dtype), OpCalls() as calls:
        got_out, got_grads = outputs_and_grads(fn, (logits,))
    assert calls.of("ctc_nll")[0]["input"] == torch.float32
    want_out, want_grads = outputs_and_grads(fn, (logits,), lambda x: x.float())
    assert got_out[0].dtype == torch.float32
    assert_same(got_out, want_out)
    assert_same(got_grads, want_grads)
    assert got_grads[0].dtype == dtype


@pytest.mark.parametrize("device", DEVICES)
def test_ctc_loss_float32_and_float64_stay(device):
    """fp32 policy: float32 logits are not lowered by a bf16 region, float64 ones keep float64."""
    for dtype in (torch.float32, torch.float64):
        logits, targets, il, tl = ctc_batch(device, dtype)
        with autocast(device, torch.bfloat16), OpCalls() as calls:
            loss = tk.ctc_loss(logits.log_softmax(-1).transpose(0, 1), targets, il, tl)
        assert calls.of("ctc_nll")[0]["input"] == dtype
        assert loss.dtype == dtype


@pytest.mark.parametrize("device", DEVICES)
def test_ctc_loss_runs_in_float32(device):
    logits, targets, il, tl = ctc_batch(device, torch.bfloat16)
    log_probs = logits.float().log_softmax(-1).transpose(0, 1).to(torch.bfloat16)
    with autocast(device, torch.bfloat16), OpCalls() as calls:
        loss = tk.ctc_loss(log_probs, targets, il, tl, reduction="none")
    assert calls.of("ctc_nll")[0]["input"] == torch.float32
    want = tk.ctc_loss(log_probs.float(), targets, il, tl, reduction="none")
    torch.testing.assert_close(loss, want.to(loss.dtype), rtol=0, atol=0)  # the dtype: the next test


def test_ctc_loss_returns_float32_under_autocast_as_f_ctc_loss():
    logits, targets, il, tl = ctc_batch("cpu", torch.bfloat16)
    log_probs = logits.float().log_softmax(-1).transpose(0, 1).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.nn.functional.ctc_loss(log_probs, targets, il, tl)
        got = tk.ctc_loss(log_probs, targets, il, tl)
    assert want.dtype == torch.float32
    assert got.dtype == want.dtype


# ---- the assignment in float32 / float64 ---------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW + [torch.float64], ids=str)
def test_linear_sum_assignment_solves_in_float32_or_float64(device, dtype):
    cost = torch.randn(3, 7, 5, device=device).to(dtype)
    counts = torch.tensor([5, 2, 0], device=device)
    with autocast(device, torch.bfloat16 if dtype == torch.float64 else dtype), OpCalls() as calls:
        got = tk.batched_linear_sum_assignment(cost, counts)
    solved_in = torch.float64 if dtype == torch.float64 else torch.float32
    assert calls.of("batched_linear_sum_assignment")[0]["cost"] == solved_in
    assert torch.equal(got, tk.batched_linear_sum_assignment(cost.to(solved_in), counts))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_hungarian_cost_is_float32(device, dtype):
    """Float32 predictions give the cost they give without autocast; low-precision ones (a
    model's outputs under autocast) a float32 cost, as HF's matcher (cdist runs in float32)."""
    if EMULATED and device == "cuda" and dtype == torch.float16:
        pytest.skip("CUDA autocast runs softmax on fp16 as _softmax(half_to_float=True), which has no CPU kernel "
                    "for the emulated GPU to run it with (aten ops run on the CPU there)")
    logits, boxes = torch.randn(2, 9, 6, device=device), torch.rand(2, 9, 4, device=device) * 0.5 + 0.25
    targets = [dict(class_labels=torch.randint(0, 5, (n,), device=device),
                    boxes=torch.rand(n, 4, device=device) * 0.5 + 0.25) for n in (4, 2)]
    with autocast(device, dtype):
        cost32, counts = tk.hungarian_cost(logits, boxes, targets)
        cost_low, _ = tk.hungarian_cost(logits.to(dtype), boxes.to(dtype), targets)
        pairs = tk.hungarian_match(logits, boxes, targets)
    want, _ = tk.hungarian_cost(logits, boxes, targets)
    assert cost32.dtype == cost_low.dtype == torch.float32
    torch.testing.assert_close(cost32, want, rtol=0, atol=0)
    for (i, j), (wi, wj) in zip(pairs, tk.hungarian_match(logits, boxes, targets), strict=True):
        assert torch.equal(i, wi) and torch.equal(j, wj)


def test_torch_compile_traces_the_casts():
    """The rules hold in a compiled region too: AOT autograd traces through the autocast kernels
    (aot_eager: the trace is what matters here, not inductor's code, which takes ~30 s to build)."""
    x, w = leaf(2, 4, 8, 8, device="cpu"), leaf(4, 1, 3, 3, device="cpu")
    q = leaf(1, 2, 5, 8, device="cpu")

    def step(x, w, q):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return tk.depthwise_conv2d(x, w), tk.attention(q, q, q)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got_out, got_grads = outputs_and_grads(compiled, (x, w, q))
    want_out, want_grads = outputs_and_grads(step, (x, w, q))
    assert [o.dtype for o in got_out] == [torch.bfloat16, torch.bfloat16]
    assert_same(got_out, want_out)
    assert_same(got_grads, want_grads)


def test_every_op_with_floating_inputs_has_a_policy():
    """A new op must be given a rule here (or be listed as having none, with a reason)."""
    no_rule = {"pack_attention_mask"}  # a sign test: exact in any dtype
    # Backward ops need none: they run in the dtype their forward ran in.
    forward = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("taskkernels::")
               and not s.name.split("::")[1].endswith(("_backward", "_backward_input", "_backward_weight"))}
    assert forward - no_rule == set(_autocast.POLICIES)
    for name in _autocast.POLICIES:
        for key in ("AutocastCPU", "AutocastCUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"taskkernels::{name}", key)


# ---- training steps of whole models under CPU autocast -------------------------------------------
ACCUMULATORS = {"lse", "mean", "rstd"}  # the ops' own float32 statistics, saved for the backward


def assert_all_in_bf16(calls, expect_ops):
    ran = {name for name, _ in calls.calls}
    assert expect_ops <= ran, f"expected {expect_ops}, ran {ran}"
    for name, dtypes in calls.calls:
        floating = {n: d for n, d in dtypes.items() if d.is_floating_point and n not in ACCUMULATORS}
        assert floating and all(d == torch.bfloat16 for d in floating.values()), f"{name}: {floating}"


def train_step_under_autocast(model, batch):
    with OpCalls() as calls:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    return loss, calls


def test_vit_training_step_runs_our_ops_in_bf16():
    from transformers import ViTConfig

    from taskkernels.models import ViTForImageClassification

    model = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=4, intermediate_size=64, num_labels=5))
    batch = dict(pixel_values=torch.randn(3, 3, 16, 16), labels=torch.randint(0, 5, (3,)))
    loss, calls = train_step_under_autocast(model, batch)
    assert_all_in_bf16(calls, {"patch_embed", "patch_embed_backward", "attention", "attention_backward"})
    assert len(calls.of("attention")) == 2
    with torch.no_grad():
        torch.testing.assert_close(loss, model(**batch).loss, rtol=0.05, atol=0.05)  # bf16 vs fp32


def test_bert_training_step_runs_our_ops_in_bf16():
    from transformers import BertConfig

    from taskkernels.models import BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64,
                                                     max_position_embeddings=32, num_labels=3,
                                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    mask = (torch.arange(10)[None] < torch.tensor([10, 6, 3])[:, None]).long()
    batch = dict(input_ids=torch.randint(1, 99, (3, 10)) * mask, attention_mask=mask, labels=torch.randint(0, 3, (3,)))
    loss, calls = train_step_under_autocast(model, batch)
    assert_all_in_bf16(calls, {"attention", "attention_backward"})
    assert len(calls.of("attention")) == 2 and calls.of("attention")[0]["key_padding_mask"] == torch.bool
    with torch.no_grad():
        torch.testing.assert_close(loss, model(**batch).loss, rtol=0.05, atol=0.05)
