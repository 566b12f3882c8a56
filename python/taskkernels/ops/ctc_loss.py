"""CTC loss: a drop-in for ``F.ctc_loss`` and a fused log_softmax + CTC for Wav2Vec2ForCTC."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["ctc_loss", "ctc_loss_from_logits"]

_REDUCTIONS = ("none", "mean", "sum")
_INDEX_DTYPES = (torch.int32, torch.int64)


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor | Sequence[int],
    target_lengths: Tensor | Sequence[int],
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> Tensor:
    """Drop-in for ``torch.nn.functional.ctc_loss``: same arguments, same results.

    Args:
        log_probs: (T, B, C) log-probabilities (``log_softmax`` output), or (T, C) unbatched;
            float32 / float64, or float16 / bfloat16 (computed in float32). Any strides.
        targets: (B, S) padded, or 1-D: the targets of all sequences concatenated; int32/int64,
            each label in [0, C) and not ``blank``.
        input_lengths, target_lengths: (B,) int32/int64 tensors, or sequences of ints.
        blank: the blank class.
        reduction: ``"none"`` (per-sequence losses), ``"sum"``, or ``"mean"`` (each loss divided
            by its target length, clamped to >= 1, then averaged over the batch).
        zero_infinity: give 0 (and a zero gradient) for sequences with no valid alignment,
            instead of ``inf`` (and a NaN gradient).

    Returns:
        The loss in the dtype of ``log_probs``: (B,) for ``"none"``, a scalar otherwise.

    The gradient with respect to ``log_probs`` is F.ctc_loss's: ``exp(log_probs) - posterior``,
    which is the true gradient once composed with ``log_softmax``. It is computed in the forward
    pass (when ``log_probs`` requires grad) and is bitwise reproducible on CPU and CUDA. On the
    CPU, bad lengths or labels raise a RuntimeError naming the sequence; on CUDA they are checked
    on the device without a synchronization and give a NaN loss.
    """
    return _ctc(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, False)


def ctc_loss_from_logits(
    logits: Tensor,
    targets: Tensor,
    input_lengths: Tensor | Sequence[int],
    target_lengths: Tensor | Sequence[int],
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> Tensor:
    """CTC loss straight from logits: what Hugging Face ``Wav2Vec2ForCTC`` computes as
    ``F.ctc_loss(log_softmax(logits.float()).transpose(0, 1), ...)``, in one op.

    Args:
        logits: (B, T, C), batch first as a model returns them (or (T, C) unbatched); float16,
            bfloat16, float32 (computed in float32) or float64. Any strides.
        targets, input_lengths, target_lengths, blank, reduction, zero_infinity: as
            :func:`ctc_loss`.

    Returns:
        The loss in float32 (float64 for float64 logits): (B,) for ``"none"``, else a scalar.

    The gradient with respect to ``logits`` (softmax - posterior) is exact, bitwise reproducible,
    and comes back in the dtype of ``logits``.
    """
    return _ctc(logits, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, True)


def _as_lengths(x, name: str, device: torch.device) -> Tensor:
    if isinstance(x, Tensor):
        if x.dim() == 0:
            x = x.reshape(1)
        return x if x.device == device else x.to(device)
    try:
        values = [int(v) for v in x]
    except TypeError:
        raise TypeError(f"taskkernels.ctc_loss: {name} must be a tensor or a sequence of ints, got {type(x).__name__}") from None
    return torch.tensor(values, dtype=torch.int64, device=device)


def _max_target_length(targets: Tensor, target_lengths, lengths: Tensor) -> int:
    """An upper bound of the target lengths (the CUDA kernel sizes its workspace with it)."""
    if targets.dim() == 2:
        return targets.shape[1]
    if not isinstance(target_lengths, Tensor):
        return max((int(v) for v in target_lengths), default=0)
    if lengths.device.type == "cpu":
        return 0  # the CPU kernel reads the lengths itself
    return int(lengths.max()) if lengths.numel() else 0  # device lengths: one synchronization


def _ctc(input, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, from_logits):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"taskkernels.ctc_loss: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not isinstance(input, Tensor):
        raise TypeError(f"taskkernels.ctc_loss: {'logits' if from_logits else 'log_probs'} must be a tensor")
    unbatched = input.dim() == 2
    if unbatched:
        input = input.unsqueeze(0 if from_logits else 1)
        targets = targets.unsqueeze(0)
    il = _as_lengths(input_lengths, "input_lengths", input.device)
    tl = _as_lengths(target_lengths, "target_lengths", input.device)
    max_tl = _max_target_length(targets, target_lengths, tl)
    need_grad = torch.is_grad_enabled() and input.requires_grad
    nll, _ = torch.ops.taskkernels.ctc_nll(
        input, targets, il, tl, blank, from_logits, from_logits, zero_infinity, need_grad, max_tl
    )
    if not from_logits and not torch.is_autocast_enabled(input.device.type):
        nll = nll.to(input.dtype)  # F.ctc_loss's dtype; under autocast it stays float32, as F.ctc_loss's
    if reduction == "none":
        return nll.squeeze(0) if unbatched else nll
    if reduction == "sum":
        return nll.sum()
    return (nll / tl.clamp_min(1).to(nll.dtype)).mean()


@torch.library.register_fake("taskkernels::ctc_nll")
def _ctc_nll_fake(input, targets, input_lengths, target_lengths, blank, from_logits, batch_first,
                  zero_infinity, need_grad, max_target_length):
    name = "logits" if batch_first else "log_probs"
    torch._check(input.dim() == 3, lambda: f"taskkernels.ctc_loss: {name} must be 3-D, got shape {tuple(input.shape)}")
    B = input.shape[0] if batch_first else input.shape[1]
    for t, n in ((input_lengths, "input_lengths"), (target_lengths, "target_lengths")):
        torch._check(t.dtype in _INDEX_DTYPES, lambda: f"taskkernels.ctc_loss: {n} must be int64 or int32, got {t.dtype}")
        torch._check(tuple(t.shape) == (B,), lambda: f"taskkernels.ctc_loss: {n} must have shape (B,) = ({B},), got {tuple(t.shape)}")
    torch._check(targets.dtype in _INDEX_DTYPES, lambda: f"taskkernels.ctc_loss: targets must be int64 or int32, got {targets.dtype}")
    out = torch.float64 if input.dtype == torch.float64 else torch.float32
    grad_shape = tuple(input.shape) if need_grad else (0,)
    return input.new_empty((B,), dtype=out), input.new_empty(grad_shape, dtype=out)


def _setup_context(ctx, inputs, output):
    input, batch_first, need_grad = inputs[0], inputs[6], inputs[8]
    ctx.save_for_backward(output[1])
    ctx.batch_first, ctx.need_grad, ctx.dtype = batch_first, need_grad, input.dtype


def _backward(ctx, grad_nll, grad_grad):
    if not ctx.need_grad:
        raise RuntimeError(
            "taskkernels.ctc_loss: the gradient is computed in the forward pass; call ctc_nll with "
            "need_grad=True (taskkernels.ctc_loss does when its input requires grad)"
        )
    (grad,) = ctx.saved_tensors
    scale = grad_nll.view(-1, 1, 1) if ctx.batch_first else grad_nll.view(1, -1, 1)
    return (grad * scale).to(ctx.dtype), None, None, None, None, None, None, None, None, None


torch.library.register_autograd("taskkernels::ctc_nll", _backward, setup_context=_setup_context)
