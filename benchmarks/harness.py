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
OURS = "taskkernels"  # the provider the summary speaks for


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
    variant: bool = False  # another arrangement of our own ops: timed, but not a peer to beat


def role(provider: str, baseline: str, variant: bool) -> str:
    """What a provider is to the summary: 'ours', 'baseline', 'variant' (of ours) or 'peer'."""
    if provider == OURS:
        return "ours"
    if provider == baseline:
        return "baseline"
    return "variant" if variant else "peer"


@dataclass(frozen=True)
class Effort:
    """How long each measurement (one provider, one case, one mode) runs. Providers take turns for
    `rounds` rounds; each round makes `warmup` untimed calls (`rewarm` after the first round), then
    at least `min_repeats` and at most `max_repeats` timed ones, stopping once budget_s / rounds has
    passed. `input_sets` sets of inputs are used in turn."""

    rounds: int
    input_sets: int
    warmup: int
    rewarm: int
    min_repeats: int
    max_repeats: int
    budget_s: float


def effort(device: torch.device, quick: bool, headline: bool, budget_s: float | None) -> Effort:
    """--quick: a few calls (checks the harness, not speed). The full suite: 1 s per measurement,
    at least 12 calls on the CPU (60 on a GPU). The headline set: 0.6 s per measurement on the CPU,
    at least one call per round and one warm-up in the first round only, so that its slowest cases
    (a whole model, a generate() call: up to ~1 s there) cost ~4 calls per provider; on a GPU
    0.5 s, at least 9 calls."""
    if quick:
        return Effort(1, 1, 1, 1, 3, 5, 0.05 if budget_s is None else budget_s)
    cpu = device.type == "cpu"
    if headline:
        return Effort(3, 3, 1 if cpu else 3, 0 if cpu else 1, 1 if cpu else 3, 50 if cpu else 1000,
                      (0.6 if cpu else 0.5) if budget_s is None else budget_s)
    return Effort(3, 3, 2 if cpu else 10, 2 if cpu else 10, 4 if cpu else 20, 50 if cpu else 1000,
                  1.0 if budget_s is None else budget_s)


def headline_mode(module) -> str:
    """The one mode a headline run times for an op's cases module: its HEADLINE_MODE, else
    forward+backward, or forward for inference-only ops."""
    modes = getattr(module, "MODES", MODES)
    return getattr(module, "HEADLINE_MODE", "forward+backward" if "forward+backward" in modes else "forward")


def ratio_quantiles(num_ms: list, den_ms: list, qs=(0.2, 0.8)) -> list[float]:
    """Quantiles of num / den over every pair of one call from each (e.g. the reference's time over
    ours: the spread of the speed-up). Long sample lists are first thinned to 201 of their own
    quantiles, so a GPU run's thousands of calls stay cheap."""
    def thin(xs):
        t = torch.tensor(xs, dtype=torch.float64)
        return torch.quantile(t, torch.linspace(0, 1, 201, dtype=torch.float64)) if len(xs) > 201 else t

    ratios = (thin(num_ms)[:, None] / thin(den_ms)[None, :]).flatten()
    return [float(torch.quantile(ratios, q)) for q in qs]


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
    budget_s: float, warmup: int, grads: list | None = None, first: int = 0,
) -> Timing:
    """Times `mode` over several input sets used in turn (so caches do not flatter anyone).
    CUDA: events around each call on the current stream; CPU: a monotonic clock. `grads` holds the
    output gradients of each set for the backward modes: pass the same list to every round of a
    measurement (an empty one is filled on the first) so that rounds do not pay extra forwards.
    `first`: the input set to start with (give each round another, in case it times only one)."""
    cuda = device.type == "cuda"
    graphs = [p.forward() if mode == "backward" else None for p in prepared_sets]
    grads = [] if grads is None else grads
    if mode != "forward" and not grads:
        outs = graphs if mode == "backward" else [p.forward() for p in prepared_sets]
        grads.extend(torch.randn_like(out) for out in outs)
        del outs
    n = len(prepared_sets)

    def run(i):
        k = (first + i) % n
        return _step(prepared_sets[k], mode, grads[k] if grads else None, graphs[k])

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
