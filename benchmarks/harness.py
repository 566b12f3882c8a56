"""Timing and bookkeeping shared by every op's benchmark cases.

A *case* is a model-shaped problem ("ViT-B/16 224px batch 64") in one dtype; a *provider* is one
implementation of the op (ours, the PyTorch reference from ``taskkernels.reference``, peers such
as the HF module). Each provider turns a case's inputs into a ``Prepared``: a forward callable and
the tensors to differentiate, so the runner can time forward, backward and forward+backward alike.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

MODES = ("forward", "backward", "forward+backward")
REFERENCE = "reference"  # the provider every speed-up is measured against


@dataclass
class Case:
    name: str
    dtype: torch.dtype
    make_inputs: Callable[[], dict]  # fresh random inputs on the benchmark device
    flops: dict = field(default_factory=dict)  # mode -> floating-point operations (stated formula)
    bytes: dict = field(default_factory=dict)  # mode -> bytes that must move (each read once, written once)


@dataclass
class Prepared:
    forward: Callable[[], torch.Tensor]
    leaves: list  # tensors whose gradients the backward computes


@dataclass
class Provider:
    name: str
    prepare: Callable[[dict], Prepared]
    unavailable: str | None = None  # why it cannot run here, or None


@dataclass
class Timing:
    samples_ms: list
    peak_mem_mb: float | None

    def merged(self, other: "Timing") -> "Timing":
        peaks = [p for p in (self.peak_mem_mb, other.peak_mem_mb) if p is not None]
        return Timing(self.samples_ms + other.samples_ms, max(peaks) if peaks else None)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def q20_ms(self) -> float:
        return _quantile(self.samples_ms, 0.2)

    @property
    def q80_ms(self) -> float:
        return _quantile(self.samples_ms, 0.8)

    @property
    def repeats(self) -> int:
        return len(self.samples_ms)


def pick_cases(device: torch.device, quick: bool, gpu: dict, cpu: dict, tiny: dict, gpu_dtypes: list):
    """The size table and dtypes an op's suite runs: tiny sizes in fp32 for --quick (checks the
    harness), model sizes on the GPU in `gpu_dtypes`, smaller model sizes in fp32 on the CPU."""
    if quick:
        return tiny, [torch.float32]
    if device.type == "cuda":
        return gpu, list(gpu_dtypes)
    return cpu, [torch.float32]


def _quantile(xs, q):
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _step(prepared: Prepared, mode: str, grad: torch.Tensor | None, graph=None):
    """One timed unit of work. For 'backward' the graph comes prebuilt (graph = output)."""
    if mode == "forward":
        with torch.no_grad():
            return prepared.forward()
    if mode == "backward":
        return torch.autograd.grad(graph, prepared.leaves, grad, retain_graph=True)
    out = prepared.forward()
    return torch.autograd.grad(out, prepared.leaves, grad)


def time_mode(
    prepared_sets: list[Prepared], mode: str, device: torch.device, min_repeats: int, max_repeats: int,
    budget_s: float, warmup: int,
) -> Timing:
    """Times `mode` over several input sets used in turn (so caches do not flatter anyone).
    CUDA: events around each call on the current stream; CPU: a monotonic clock."""
    cuda = device.type == "cuda"
    graphs, grads = [], []
    for p in prepared_sets:
        if mode == "forward":
            graphs.append(None)
            grads.append(None)
        else:
            out = p.forward()
            graphs.append(out if mode == "backward" else None)
            grads.append(torch.randn_like(out))
    n = len(prepared_sets)

    def run(i):
        return _step(prepared_sets[i % n], mode, grads[i % n], graphs[i % n])

    for i in range(warmup):
        run(i)
    if cuda:
        torch.cuda.synchronize(device)

    peak = None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run(0)
        torch.cuda.synchronize(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20

    times = []
    start_wall = time.perf_counter()
    if cuda:
        events = []
        for i in range(max_repeats):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            run(i)
            e.record()
            events.append((s, e))
            if i + 1 >= min_repeats and time.perf_counter() - start_wall > budget_s:
                break
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) for s, e in events]
    else:
        for i in range(max_repeats):
            t0 = time.perf_counter()
            run(i)
            times.append((time.perf_counter() - t0) * 1e3)
            if i + 1 >= min_repeats and time.perf_counter() - start_wall > budget_s:
                break
    return Timing(times, peak)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"
