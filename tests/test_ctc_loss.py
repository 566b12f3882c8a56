"""taskkernels.ctc_loss / ctc_loss_from_logits against F.ctc_loss in float64: values and
gradients, target formats, reductions, blank index, edge lengths, infeasible alignments,
extreme inputs (the log-space fallback), determinism, errors, opcheck and torch.compile."""

import pytest
import torch
import torch.nn.functional as F

import taskkernels
from taskkernels import reference

from conftest import DEVICES, assert_within_reference_error, requires_cuda

# Values and gradients against F.ctc_loss, both in float64: ours sums probabilities where
# PyTorch sums logs, so they agree to rounding, relative to the loss's magnitude.
TOL64 = 1e-10


def make_case(B, T, C, max_len, blank=0, *, min_len=0, full=False, repeats=False, device="cpu"):
    """Random logits (B, T, C), padded targets avoiding `blank`, lengths. full: every sequence
    uses all T frames and max_len labels."""
    logits = torch.randn(B, T, C, dtype=torch.float64, device=device)
    classes = torch.tensor([c for c in range(C) if c != blank])
    targets = classes[torch.randint(0, len(classes), (B, max(max_len, 1)))][:, :max_len]
    if repeats and max_len > 1:  # runs of the same label, which need a blank between them
        targets[:, 1::2] = targets[:, 0::2][:, : targets[:, 1::2].shape[1]]
    if full:
        il = torch.full((B,), T)
        tl = torch.full((B,), max_len)
    else:
        il = torch.randint(max(1, T // 2), T + 1, (B,))
        tl = torch.randint(min_len, max_len + 1, (B,))
    return logits, targets.to(device), il, tl


def concatenate(targets, tl):
    return torch.cat([targets[b, : tl[b]] for b in range(len(tl))])


def check_against_torch(log_probs, targets, il, tl, blank=0, reduction="none", zero_infinity=False):
    """log_probs (T, B, C) float64 on any device; compares loss and gradient with F.ctc_loss on
    the CPU."""
    ours_in = log_probs.detach().clone().requires_grad_()
    ref_in = log_probs.detach().cpu().clone().requires_grad_()
    ours = taskkernels.ctc_loss(ours_in, targets, il, tl, blank, reduction, zero_infinity)
    ref = F.ctc_loss(ref_in, targets.cpu(), il, tl, blank, reduction, zero_infinity)
    weights = torch.rand_like(ref) if reduction == "none" else torch.ones_like(ref)
    (g_ours,) = torch.autograd.grad((ours * weights.to(ours.device)).sum(), ours_in)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), ref_in)
    scale = max(1.0, ref.detach().abs().max().item() if ref.numel() else 1.0)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    torch.testing.assert_close(ours.detach().cpu(), ref.detach(), rtol=0, atol=TOL64 * scale, equal_nan=True)
    torch.testing.assert_close(g_ours.cpu(), g_ref, rtol=0, atol=TOL64 * scale, equal_nan=True)
    return ours, g_ours


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("blank", [0, 3, 7])
def test_matches_f_ctc_loss(device, reduction, blank):
    logits, targets, il, tl = make_case(6, 40, 8, 12, blank, device=device)
    log_probs = logits.log_softmax(-1).transpose(0, 1)  # (T, B, C), not contiguous: HF's layout
    check_against_torch(log_probs, targets, il, tl, blank, reduction)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("lengths_as", ["tensor", "list"])
def test_concatenated_targets_and_index_dtypes(device, index_dtype, lengths_as):
    logits, targets, il, tl = make_case(5, 30, 6, 10, device=device)
    flat = concatenate(targets, tl).to(index_dtype)
    log_probs = logits.log_softmax(-1).transpose(0, 1)
    il_, tl_ = (il.to(index_dtype), tl.to(index_dtype)) if lengths_as == "tensor" else (il.tolist(), tl.tolist())
    loss = taskkernels.ctc_loss(log_probs, flat, il_, tl_, reduction="none")
    ref = F.ctc_loss(log_probs.cpu(), flat.cpu(), il_, tl_, reduction="none")
    torch.testing.assert_close(loss.cpu(), ref, rtol=0, atol=TOL64 * ref.abs().max().item())
    padded = taskkernels.ctc_loss(log_probs, targets.to(index_dtype), il_, tl_, reduction="none")
    torch.testing.assert_close(padded, loss, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_edge_lengths_and_repeats(device):
    """Target lengths 0, 1 and the most the input allows; input length 0 and 1; runs of one
    label (each repeat costs a blank frame)."""
    T, C = 12, 5
    logits = torch.randn(8, T, C, dtype=torch.float64, device=device)
    targets = torch.tensor([[1] * 6, [2] * 6, [1, 2, 3, 4, 1, 2], [3, 3, 3, 3, 3, 3],
                            [1, 1, 2, 2, 3, 3], [4, 0, 0, 0, 0, 0], [1, 2, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0]])
    targets[targets == 0] = 1
    il = torch.tensor([12, 12, 6, 11, 9, 1, 0, 1])
    tl = torch.tensor([0, 6, 6, 6, 6, 1, 0, 1])  # 11 = 6 labels + 5 repeats: exactly feasible
    check_against_torch(logits.log_softmax(-1).transpose(0, 1), targets.to(device), il, tl)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_infeasible(device, zero_infinity):
    """Targets longer than the input allows: inf and a NaN gradient, or 0 and a zero gradient
    with zero_infinity, exactly like F.ctc_loss; the feasible sequences are unaffected."""
    logits = torch.randn(3, 10, 5, dtype=torch.float64, device=device)
    targets = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 2, 3, 4, 1, 2], [1, 2, 1, 2, 0, 0]]).clamp_min(1)
    il = torch.tensor([10, 5, 10])  # sequence 0 needs 11 frames (6 + 5 repeats), 1 needs 6
    tl = torch.tensor([6, 6, 4])
    loss, grad = check_against_torch(logits.log_softmax(-1).transpose(0, 1), targets.to(device), il, tl,
                                     zero_infinity=zero_infinity)
    assert torch.isfinite(loss[2])
    if zero_infinity:
        assert loss[0] == 0 and loss[1] == 0 and (grad[:, :2] == 0).all()
    else:
        assert loss[0] == float("inf") and grad[:, 0].isnan().all()


@pytest.mark.parametrize("device", DEVICES)
def test_zero_probabilities(device):
    """-inf log-probabilities (classes that cannot be emitted at some frames). The loss matches;
    the gradient there is 0 (exp(-inf) minus a zero posterior), where F.ctc_loss's formula gives
    NaN (-inf + inf); everywhere else it matches."""
    logits, targets, il, tl = make_case(4, 20, 6, 5, full=True, device=device)
    log_probs = logits.log_softmax(-1)
    log_probs[:, ::3, 2] = float("-inf")
    log_probs = log_probs.transpose(0, 1)
    ours_in, ref_in = log_probs.clone().requires_grad_(), log_probs.cpu().clone().requires_grad_()
    ours = taskkernels.ctc_loss(ours_in, targets, il, tl, reduction="sum")
    ref = F.ctc_loss(ref_in, targets.cpu(), il, tl, reduction="sum")
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours.cpu(), ref, rtol=0, atol=TOL64 * ref.item())
    impossible = log_probs.cpu() == float("-inf")
    assert ref_in.grad[impossible].isnan().all() and (ours_in.grad.cpu()[impossible] == 0).all()
    torch.testing.assert_close(ours_in.grad.cpu()[~impossible], ref_in.grad[~impossible], rtol=0, atol=TOL64 * ref.item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B", [1, 64])
def test_batch_sizes(device, B):
    logits, targets, il, tl = make_case(B, 50, 10, 15, device=device)
    check_against_torch(logits.log_softmax(-1).transpose(0, 1), targets, il, tl, reduction="mean")


@pytest.mark.parametrize("device", DEVICES)
def test_long_sequences(device):
    """T = 3000 frames, targets up to 1000 labels (Wav2Vec2 on a minute of audio, and more)."""
    logits, targets, il, tl = make_case(2, 3000, 32, 1000, full=True, device=device)
    check_against_torch(logits.log_softmax(-1).transpose(0, 1), targets, il, tl)


@pytest.mark.parametrize("device", DEVICES)
def test_extreme_logits_take_the_log_space_path(device):
    """Logits scaled to hundreds: the scaled probabilities underflow and the sequence is redone
    in log space; results still match F.ctc_loss."""
    logits, targets, il, tl = make_case(4, 60, 6, 10, full=True, device=device)
    before = taskkernels._C._ctc_log_space_fallbacks()
    check_against_torch((300 * logits).log_softmax(-1).transpose(0, 1), targets, il, tl)
    if device == "cpu":
        assert taskkernels._C._ctc_log_space_fallbacks() > before


@pytest.mark.parametrize("device", DEVICES)
def test_unbatched(device):
    logits, targets, il, tl = make_case(1, 25, 6, 8, full=True, device=device)
    log_probs = logits[0].log_softmax(-1)
    ours = taskkernels.ctc_loss(log_probs, targets[0], il[0], tl[0], reduction="none")
    ref = F.ctc_loss(log_probs.cpu(), targets[0].cpu(), il[0], tl[0], reduction="none")
    assert ours.shape == ref.shape == ()
    torch.testing.assert_close(ours.cpu(), ref, rtol=0, atol=1e-10 * ref.abs().item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_from_logits_dtypes(device, dtype):
    """ctc_loss_from_logits on (B, T, C) logits in each dtype: loss and gradient against the
    float64 reference on the same (rounded) logits, and within twice the error of HF's path."""
    logits64, targets, il, tl = make_case(6, 50, 12, 15, device=device)
    logits = logits64.to(dtype).requires_grad_()
    loss = taskkernels.ctc_loss_from_logits(logits, targets, il, tl, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.dtype == acc and grad.dtype == dtype
    exact_in = logits.detach().double().requires_grad_()
    ref = reference.ctc_loss_from_logits(exact_in, targets, il, tl, reduction="none")
    (ref_grad,) = torch.autograd.grad(ref.sum(), exact_in)
    hf_in = logits.detach().requires_grad_()
    hf = reference.ctc_loss_from_logits(hf_in, targets, il, tl, reduction="none")
    (hf_grad,) = torch.autograd.grad(hf.sum(), hf_in)
    assert_within_reference_error(loss, hf, ref, acc, "loss")
    assert_within_reference_error(grad, hf_grad, ref_grad, dtype, "grad")


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_are_deterministic(device):
    logits, targets, il, tl = make_case(16, 200, 32, 60, device=device)
    logits = logits.float().requires_grad_()
    grads = []
    for _ in range(2):
        loss = taskkernels.ctc_loss_from_logits(logits, targets, il, tl)
        grads.append(torch.autograd.grad(loss, logits)[0])
    assert torch.equal(grads[0], grads[1])


def test_gradcheck():
    logits, targets, il, tl = make_case(3, 9, 4, 3)
    # Every sequence feasible (3 labels with repeats need up to 5 frames; make_case may give 4):
    # an infinite loss has no finite differences to check against.
    il = torch.full_like(il, 9)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: taskkernels.ctc_loss_from_logits(x, targets, il, tl, reduction="none"), (logits,))
    # ctc_loss's gradient is F.ctc_loss's, the true one once composed with log_softmax.
    assert torch.autograd.gradcheck(
        lambda x: taskkernels.ctc_loss(x.log_softmax(-1).transpose(0, 1), targets, il, tl, reduction="sum"), (logits,))


def test_no_grad_skips_the_gradient_pass():
    logits, targets, il, tl = make_case(4, 30, 6, 8)
    logits.requires_grad_()
    with torch.no_grad():
        a = taskkernels.ctc_loss_from_logits(logits, targets, il, tl, reduction="none")
    nll, grad = torch.ops.taskkernels.ctc_nll(logits.detach(), targets, il, tl, 0, True, True, False, False, 8)
    assert grad.numel() == 0
    torch.testing.assert_close(a, nll, rtol=0, atol=0)
    b = taskkernels.ctc_loss_from_logits(logits, targets, il, tl, reduction="none")
    torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    logits, targets, il, tl = make_case(3, 20, 5, 6, device=device)
    il, tl = il.to(device), tl.to(device)
    for need_grad in (False, True):
        torch.library.opcheck(torch.ops.taskkernels.ctc_nll.default,
                              (logits.float().requires_grad_(need_grad), targets, il, tl, 0, True, True, False, need_grad, 6))
    log_probs = logits.log_softmax(-1).transpose(0, 1).contiguous()
    torch.library.opcheck(torch.ops.taskkernels.ctc_nll.default,
                          (log_probs.requires_grad_(), concatenate(targets, tl), il, tl, 0, False, False, True, True, 6))


def test_torch_compile_training_step():
    """A Wav2Vec2ForCTC-like head (Linear -> CTC from logits) trained under torch.compile gives
    the eager gradients."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 8)
    hidden = torch.randn(4, 40, 16)
    _, targets, il, tl = make_case(4, 40, 8, 10)

    def step(h):
        return taskkernels.ctc_loss_from_logits(head(h), targets, il, tl, reduction="mean")

    eager = step(hidden)
    eager.backward()
    eager_grad = head.weight.grad.clone()
    head.weight.grad = None
    compiled = torch.compile(step, fullgraph=True)(hidden)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(head.weight.grad, eager_grad, rtol=1e-5, atol=1e-6)


@requires_cuda
def test_cuda_device_lengths_and_workspace_bound():
    """Lengths given as CUDA tensors (concatenated targets: one synchronization for the bound)."""
    logits, targets, il, tl = make_case(8, 120, 16, 40, device="cuda")
    flat = concatenate(targets.cpu(), tl).cuda()
    log_probs = logits.log_softmax(-1).transpose(0, 1)
    ours = taskkernels.ctc_loss(log_probs, flat, il.cuda(), tl.cuda(), reduction="none")
    ref = F.ctc_loss(log_probs.cpu(), flat.cpu(), il, tl, reduction="none")
    torch.testing.assert_close(ours.cpu(), ref, rtol=0, atol=TOL64 * ref.abs().max().item())


@requires_cuda
def test_cuda_malformed_labels_give_nan():
    logits, targets, il, tl = make_case(2, 20, 5, 4, full=True, device="cuda")
    targets[1, 0] = 0  # the blank index: invalid, and a kernel cannot raise
    loss = taskkernels.ctc_loss_from_logits(logits, targets, il, tl, reduction="none")
    assert loss[1].isnan() and loss[0].isfinite()


def test_errors_name_the_argument():
    logits, targets, il, tl = make_case(2, 10, 5, 4, full=True)
    lp = logits.log_softmax(-1).transpose(0, 1)

    def raises(match, *args, **kwargs):
        with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
            taskkernels.ctc_loss(*args, **kwargs)

    raises("input_lengths\\[1\\] must be in \\[0, T = 10\\]", lp, targets, [10, 11], tl)
    raises("input_lengths\\[0\\] must be in", lp, targets, [-1, 10], tl)
    raises("target_lengths\\[0\\] = 5 exceeds the padded targets' length 4", lp, targets, il, [5, 4])
    raises("target_lengths\\[1\\] must be >= 0", lp, targets, il, [4, -1])
    raises("target_lengths sum past the 8 concatenated targets", lp, targets.flatten(), il, [4, 5])
    bad = targets.clone()
    bad[1, 2] = 0
    raises("targets of sequence 1 at position 2 must be a class in \\[0, C = 5\\) other than blank = 0", lp, bad, il, tl)
    bad[1, 2] = 7
    raises("targets of sequence 1 at position 2", lp, bad, il, tl)
    raises("blank must be in \\[0, C = 5\\)", lp, targets, il, tl, blank=5)
    raises("input_lengths must be int64 or int32", lp, targets, il.float(), tl)
    raises("target_lengths must have shape \\(B,\\) = \\(2,\\)", lp, targets, il, torch.tensor([4, 4, 4]))
    raises("targets must be int64 or int32", lp, targets.float(), il, tl)
    raises("targets must be \\(B, S\\) padded with B = 2", lp, targets[:1], il, tl)
    raises("log_probs must be 3-D", lp[0, 0], targets, il, tl)
    raises("log_probs must be float16, bfloat16, float32 or float64", lp.to(torch.int32), targets, il, tl)
    raises("reduction must be one of", lp, targets, il, tl, reduction="avg")
    raises("input_lengths must be a tensor or a sequence of ints", lp, targets, 3.5, tl)


def test_pytorch_sample_inputs():
    """F.ctc_loss's own OpInfo samples (PyTorch's test suite: list and tensor lengths, every
    reduction, zero_infinity): values and gradients within PyTorch's own float32 error of the
    float64 result."""
    from torch.testing._internal.common_methods_invocations import op_db

    op = next(o for o in op_db if o.name == "nn.functional.ctc_loss")
    compared = 0
    for dtype in (torch.float32, torch.float64):
        for sample in op.sample_inputs("cpu", dtype, requires_grad=True):
            log_probs, (targets, input_lengths, target_lengths), kw = sample.input, sample.args, sample.kwargs
            results = []
            for fn, dt in ((taskkernels.ctc_loss, dtype), (F.ctc_loss, dtype), (F.ctc_loss, torch.float64)):
                x = log_probs.detach().to(dt).requires_grad_(True)
                loss = fn(x, targets, input_lengths, target_lengths, **kw)
                results.append((loss, torch.autograd.grad(loss.sum(), x)[0]))
            (ours, our_grad), (theirs, their_grad), (exact, exact_grad) = results
            assert_within_reference_error(ours, theirs, exact, dtype)
            assert_within_reference_error(our_grad, their_grad, exact_grad, dtype, what="gradient")
            compared += 1
    assert compared >= 20
