"""Whether this build's CUDA kernels can run here, and a clear error where they cannot.

A wheel carries its CUDA kernels (and a static CUDA runtime) but links no CUDA library of torch's,
so it imports on any torch from the targeted version on: a CPU-only torch, a machine without a
GPU, or a torch built for another CUDA major. In those cases the CPU ops work and a CUDA call
raises a RuntimeError that says why, instead of an undefined symbol at import or the dispatcher's
"Could not run ... with arguments from the 'CUDA' backend"."""

from __future__ import annotations

import warnings

import torch

from . import _C

_STUB_LIBRARY = None  # keeps the Python CUDA registrations alive


def _major(version: str) -> str:
    return version.split(".")[0]


def _build_reason() -> str | None:
    """Why the CUDA kernels of this build cannot run with the installed torch, known without
    touching a GPU (None when nothing rules them out)."""
    info = _C.build_info()
    if not info["cuda"]:
        return ("this build of taskkernels has no CUDA kernels (it was built without nvcc or a CUDA "
                "torch, or with TASKKERNELS_CUDA=0); install the CUDA wheel or build from source with CUDA")
    if torch.version.cuda is None:
        return f"the installed torch {torch.__version__} is a CPU-only build"
    built = info["cuda_compiler_version"]
    if _major(built) != _major(torch.version.cuda):
        return (f"taskkernels was built with CUDA {built} but torch {torch.__version__} uses CUDA "
                f"{torch.version.cuda}; install a taskkernels wheel built for CUDA {_major(torch.version.cuda)} "
                "or build it from source against this torch")
    return None


def cuda_unavailable_reason() -> str | None:
    """None when taskkernels' CUDA kernels can run here, else the reason they cannot."""
    reason = _build_reason()
    if reason is None and not torch.cuda.is_available():
        reason = "no CUDA device is visible to torch (torch.cuda.is_available() is False)"
    return reason


def _ops() -> list[str]:
    prefix = "taskkernels::"
    return sorted({n[len(prefix):].split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix)})


def _raiser(op: str, reason: str):
    def no_cuda(*args, **kwargs):
        raise RuntimeError(f"taskkernels.{op}: cannot run on CUDA: {reason}")

    return no_cuda


def setup() -> None:
    """Called once at import: registers a CUDA kernel that raises a clear error for every op
    without one, and disables the compiled CUDA kernels when torch's CUDA major differs."""
    global _STUB_LIBRARY
    reason = _build_reason()
    compiled = _C.build_info()["cuda"]
    if compiled and reason is not None and torch.version.cuda is not None:
        _C._disable_cuda(reason)  # kernels compiled, but for another CUDA major than torch's
        warnings.warn(f"taskkernels: CUDA ops disabled: {reason}", RuntimeWarning, stacklevel=3)
    library = torch.library.Library("taskkernels", "IMPL")
    for op in _ops():
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"taskkernels::{op}", "CUDA"):
            continue
        why = reason if not compiled else "this op has no CUDA kernel yet (CPU only); move its inputs to the CPU"
        library.impl(op, _raiser(op, why), "CUDA")
    _STUB_LIBRARY = library
