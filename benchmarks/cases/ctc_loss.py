"""CTC loss cases: Wav2Vec2ForCTC's loss on Wav2Vec2-base outputs (vocabulary 32, 50 frames per
second of audio) for 5, 15 and 30 s clips, targets of T/3 and T/2.5 characters. Speed-ups are over
Hugging Face's path (the reference): log_softmax in float32, transpose to time-major, then
F.ctc_loss (cuDNN off, as HF sets it), timed from the logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import taskkernels
from taskkernels import reference

from ..harness import REFERENCE, Case, Prepared, Provider, pick_cases

MODES = ("forward", "forward+backward")

# name -> (batch, frames, classes, target length)
GPU_CASES = {
    "5 s, T 250, L T/3, batch 16": (16, 250, 32, 83),
    "5 s, T 250, L T/2.5, batch 16": (16, 250, 32, 100),
    "15 s, T 750, L T/3, batch 16": (16, 750, 32, 250),
    "15 s, T 750, L T/2.5, batch 16": (16, 750, 32, 300),
    "30 s, T 1500, L T/3, batch 16": (16, 1500, 32, 500),
    "30 s, T 1500, L T/2.5, batch 16": (16, 1500, 32, 600),
}
CPU_CASES = {
    "5 s, T 250, L T/3, batch 16": (16, 250, 32, 83),
    "15 s, T 750, L T/3, batch 16": (16, 750, 32, 250),
    "15 s, T 750, L T/2.5, batch 16": (16, 750, 32, 300),
}
QUICK_CASES = {"tiny T 30, L 8, batch 2": (2, 30, 8, 8)}
HEADLINE = {"cuda": ["15 s, T 750, L T/3, batch 16"], "cpu": ["15 s, T 750, L T/3, batch 16"]}


def _inputs(B, T, C, L, dtype, device):
    """Ragged like a real batch: inputs 90-100% of T frames, targets 90-100% of L labels."""
    g = torch.Generator().manual_seed(B * 100003 + T * 101 + L)
    logits = torch.randn(B, T, C, generator=g).to(device=device, dtype=dtype).requires_grad_()
    targets = torch.randint(1, C, (B, L), generator=g)
    input_lengths = torch.randint(int(0.9 * T), T + 1, (B,), generator=g)
    target_lengths = torch.randint(int(0.9 * L), L + 1, (B,), generator=g)
    return dict(logits=logits, targets=targets.to(device), input_lengths=input_lengths.to(device),
                target_lengths=target_lengths.to(device))


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    table, dtypes = pick_cases(device, quick, GPU_CASES, CPU_CASES, QUICK_CASES, [torch.float32, torch.bfloat16])
    return [Case(name, dtype, lambda a=args, dtype=dtype: _inputs(*a, dtype, device))
            for name, args in table.items() for dtype in dtypes]


def _loss(fn):
    def prepare(inp):
        x = inp["logits"]
        return Prepared(lambda: fn(x, inp["targets"], inp["input_lengths"], inp["target_lengths"],
                                   reduction="sum"), [x])

    return prepare


def _hf_path(logits, targets, input_lengths, target_lengths, reduction):
    with torch.backends.cudnn.flags(enabled=False):
        return reference.ctc_loss_from_logits(logits, targets, input_lengths, target_lengths, reduction=reduction)


def _ours_after_log_softmax(logits, targets, input_lengths, target_lengths, reduction):
    """The drop-in: HF's code with F.ctc_loss swapped for taskkernels.ctc_loss."""
    log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
    return taskkernels.ctc_loss(log_probs, targets, input_lengths, target_lengths, reduction=reduction)


def _cudnn(inp):
    """F.ctc_loss with cuDNN allowed and its preconditions met (int32 concatenated targets and
    lengths on the CPU, blank 0, float32); cuDNN also wants every label run <= 256 long."""
    x = inp["logits"]
    tl = inp["target_lengths"].cpu()
    flat = torch.cat([t[:n] for t, n in zip(inp["targets"].cpu(), tl)]).int()
    il, tl = inp["input_lengths"].cpu().int(), tl.int()

    def fwd():
        log_probs = F.log_softmax(x, dim=-1, dtype=torch.float32).transpose(0, 1)
        with torch.backends.cudnn.flags(enabled=True):
            return F.ctc_loss(log_probs, flat, il, tl, reduction="sum")

    return Prepared(fwd, [x])


def providers(device: torch.device) -> list[Provider]:
    return [
        Provider("taskkernels", _loss(taskkernels.ctc_loss_from_logits)),
        Provider("tk after log_softmax", _loss(_ours_after_log_softmax), variant=True),
        Provider(REFERENCE, _loss(_hf_path)),
        Provider("F.ctc_loss cuDNN on", _cudnn,
                 unavailable=None if device.type == "cuda" else "cuDNN runs on CUDA only"),
    ]
