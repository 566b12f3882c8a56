"""What the build reports about itself, and that the ops are reachable through the dispatcher."""

import json
import re
import subprocess
import sys

import pytest
import torch

import taskkernels

from conftest import requires_cuda


def test_build_info_fields():
    info = taskkernels.build_info()
    assert info["torch_version"].count(".") >= 1
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert info["torch_cuda_version"] and info["cuda_archs"]
        assert all(a.startswith(("sm_", "compute_")) for a in info["cuda_archs"])
    else:
        assert info["cuda_archs"] == []


def test_ops_are_registered_in_the_taskkernels_namespace():
    for name in ("patch_embed", "patch_embed_backward"):
        op = getattr(torch.ops.taskkernels, name)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.default.name(), "CPU")
        if taskkernels.build_info()["cuda"]:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op.default.name(), "CUDA")


def test_info_command():
    out = subprocess.run([sys.executable, "-m", "taskkernels.info"], check=True, capture_output=True, text=True)
    assert '"cuda"' in out.stdout and '"torch_version"' in out.stdout


def test_every_op_has_a_cuda_kernel_or_a_clear_error():
    """Every op answers CUDA inputs: with its kernel, or with a RuntimeError saying why not
    (never the dispatcher's "Could not run ... 'CUDA' backend")."""
    from taskkernels import _cuda

    ops = _cuda._ops()
    assert {"attention", "ctc_nll", "patch_embed", "batched_linear_sum_assignment"} <= set(ops)
    for op in ops:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"taskkernels::{op}", "CUDA"), op
    with pytest.raises(RuntimeError, match="taskkernels.attention_backward: cannot run on CUDA: because"):
        _cuda._raiser("attention_backward", "because")()


@pytest.mark.parametrize("torch_cuda, built, expect", [
    (None, True, "is a CPU-only build"),
    ("12.8", True, "built with CUDA 13.0.88 but torch .* uses CUDA 12.8; install a taskkernels wheel built for CUDA 12"),
    ("13.0", False, "has no CUDA kernels"),
])
def test_cuda_unavailable_reasons(monkeypatch, torch_cuda, built, expect):
    from taskkernels import _cuda

    class FakeC:
        @staticmethod
        def build_info():
            return dict(cuda=built, cuda_compiler_version="13.0.88" if built else "")

    monkeypatch.setattr(_cuda, "_C", FakeC)
    monkeypatch.setattr(torch.version, "cuda", torch_cuda)
    assert re.search(expect, _cuda.cuda_unavailable_reason())


def test_cuda_reason_on_this_machine():
    reason = taskkernels.cuda_unavailable_reason()
    if not torch.cuda.is_available():
        assert reason is not None
    info = json.loads(subprocess.run([sys.executable, "-m", "taskkernels.info"], check=True, capture_output=True,
                                     text=True).stdout)
    assert info["cuda_unavailable_reason"] == reason and info["cuda_kernels_usable"] == (reason is None)


@requires_cuda
def test_disabled_cuda_kernels_raise_naming_the_op():
    x = torch.randn(1, 3, 32, 32, device="cuda")
    w = torch.randn(8, 3, 16, 16, device="cuda")
    taskkernels._C._disable_cuda("a test says so")
    try:
        with pytest.raises(RuntimeError, match="taskkernels.patch_embed: cannot run on CUDA: a test says so"):
            taskkernels.patch_embed(x, w)
    finally:
        taskkernels._C._disable_cuda("")
    assert taskkernels.patch_embed(x, w).shape == (1, 4, 8)
