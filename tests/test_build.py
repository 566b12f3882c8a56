"""What the build reports about itself, and that the ops are reachable through the dispatcher."""

import subprocess
import sys

import torch

import taskkernels


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
