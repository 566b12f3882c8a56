"""Shared test helpers: devices, dtypes and the tolerance rule, stated once."""

import os
import tempfile

import pytest
import torch

# torch.compile's on-disk cache outlives a rebuild of this package; a compiled graph from before an
# op's schema changed would be reused. Each test session compiles into its own directory.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="taskkernels-inductor-"))

import taskkernels

HAS_CUDA_KERNELS = taskkernels.build_info()["cuda"]
CUDA_OK = HAS_CUDA_KERNELS and torch.cuda.is_available()
_CUDA_SKIP = (
    "no CUDA device here" if not torch.cuda.is_available() else "taskkernels was built without CUDA kernels"
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_OK, reason=_CUDA_SKIP))]
FLOAT_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]

# Error floor per dtype, relative to the output's magnitude. The rule (FlashAttention's): our
# error against a float64 reference is at most twice PyTorch's own error in the same dtype, plus
# this floor for the cases where PyTorch happens to be exact.
FLOOR = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def requires_cuda(fn):
    return pytest.mark.skipif(not CUDA_OK, reason=_CUDA_SKIP)(fn)


def assert_within_reference_error(ours, torch_lowp, ref64, dtype, what="output"):
    """ours and torch_lowp computed in `dtype`, ref64 the same quantity in float64."""
    assert ours.shape == ref64.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype} != {dtype}"
    ref64 = ref64.double().cpu()
    if ref64.numel() == 0:
        return
    ours_err = (ours.double().cpu() - ref64).abs().max().item()
    torch_err = (torch_lowp.double().cpu() - ref64).abs().max().item()
    scale = max(1.0, ref64.abs().max().item())
    bound = 2 * torch_err + FLOOR[dtype] * scale
    assert ours_err == ours_err, f"{what}: NaN in the result"
    assert ours_err <= bound, f"{what}: error {ours_err:.3e} > bound {bound:.3e} (PyTorch's own error {torch_err:.3e})"


def assert_same_grads(ours, hf, rtol, atol, scale_atol=False):
    """Every parameter gradient of `ours` equals that of the HF module's parameter of the same
    name (the model classes load HF's state dicts unchanged). With scale_atol, atol is relative
    to the largest gradient of each parameter (for losses whose gradients are far from 1)."""
    hf_params = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        want = hf_params[name].grad
        tol = atol * max(1.0, want.abs().max().item()) if scale_atol and want is not None else atol
        torch.testing.assert_close(p.grad, want, rtol=rtol, atol=tol, msg=lambda m: f"{name}: {m}")


def run_portable_cpu_build(script: str) -> str:
    """Runs `script` in a fresh Python with TASKKERNELS_CPU_ISA=generic (the CPU kernels' portable
    copy, the one CPUs without AVX2 get); it must print "ok". Returns its output."""
    import os
    import subprocess
    import sys
    import textwrap

    env = dict(os.environ, TASKKERNELS_CPU_ISA="generic")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh random inputs in every test; the seed is printed so a failure can be replayed."""
    seed = torch.seed()
    print(f"torch seed: {seed}")
    yield seed
