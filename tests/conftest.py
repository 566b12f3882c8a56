"""Shared test helpers: devices, dtypes and the tolerance rule, stated once."""

import os
import tempfile

import pytest
import torch

# torch.compile's on-disk cache outlives a rebuild of this package; a compiled graph from before an
# op's schema changed would be reused. Each test session compiles into its own directory.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="taskkernels-inductor-"))

# The emulated GPU (scripts/emulate.sh): the CUDA kernels compiled as host C++ and run on the CPU,
# under the same test functions as on a device (tests/emulated_cuda.py).
EMULATED = bool(os.environ.get("TASKKERNELS_EMULATOR"))
if EMULATED:
    import emulated_cuda

    emulated_cuda.load_emulated_module(os.environ["TASKKERNELS_EMULATOR"])
    emulated_cuda.install()

import taskkernels

HAS_CUDA_KERNELS = taskkernels.build_info()["cuda"]
CUDA_OK = HAS_CUDA_KERNELS and (torch.cuda.is_available() or EMULATED)
_CUDA_SKIP = (
    "no CUDA device here (scripts/emulate.sh runs these tests on the emulated GPU)"
    if not torch.cuda.is_available()
    else "taskkernels was built without CUDA kernels"
)
_CUDA_MARKS = [pytest.mark.cuda, pytest.mark.skipif(not CUDA_OK, reason=_CUDA_SKIP)]

DEVICES = ["cpu", pytest.param("cuda", marks=_CUDA_MARKS)]
FLOAT_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]

# Error floor per dtype, relative to the output's magnitude. The rule (FlashAttention's): our
# error against a float64 reference is at most twice PyTorch's own error in the same dtype, plus
# this floor for the cases where PyTorch happens to be exact.
FLOOR = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

# float32 attention gradients: our backward is FlashAttention's algorithm (P recomputed from the
# saved float32 log-sum-exp, delta = dO . O from the forward's output), and its float32 gradients
# reach 4.4e-6 of their largest where PyTorch's math path is ~3e-7 off: measured on CI's seed
# 11354320883775554085 (causal 130 queries x 33 keys, hd 64: 4.4e-6 on the CPU, 3.9e-6 on the
# emulated GPU, so the algorithm's, not one kernel's) and on PyTorch's SDPA OpInfo samples (4.2e-6);
# 40 fresh seeds of that case reach 2.1e-6. The float32 floor above sits under that. PyTorch's own
# fused CPU backend (SDPBackend.FLASH_ATTENTION, the same algorithm) is as far off: over seeds 0-39 of
# that shape, worst 9.6e-7 (end-aligned causal as a mask) and 8.4e-7 (start-aligned) against ours
# 1.1e-6 and 1.6e-6, the math path 6.2e-7 and 8.5e-7 (2026-12-03, this CPU).
ATTENTION_GRAD_FLOOR = {torch.float32: 1e-5}


def attention_grad_floor(dtype):
    """The `floor` for assert_within_reference_error on attention gradients (None: FLOOR's)."""
    return ATTENTION_GRAD_FLOOR.get(dtype)


def requires_cuda(fn):
    for mark in _CUDA_MARKS:
        fn = mark(fn)
    return fn


def emulated_size(device, full: int, emulated: int) -> int:
    """`full` on a device or the CPU, `emulated` for CUDA on the emulated GPU: a smaller size that
    still crosses the same tile edges, where the full one would take minutes there."""
    return emulated if EMULATED and str(device).startswith("cuda") else full


def pytest_report_header(config):
    if EMULATED:
        return emulated_cuda.describe()


# Tests that hold a model to HF's outputs at float32 tolerances: on CUDA, cuDNN's convolutions
# would run in TF32 (torch.backends.cudnn.allow_tf32), which rounds each side's slightly different
# activations to 10 mantissa bits and leaves ~1e-4 between two correct models; they run in FP32.
_HF_MODEL_TESTS = {"test_bart", "test_bert", "test_convnext_layer", "test_detr_glpn", "test_gpt2",
                   "test_mask2former", "test_vit_embeddings", "test_wav2vec2"}


@pytest.fixture(autouse=True)
def fp32_convolutions_in_model_tests(request):
    if request.node.get_closest_marker("cuda") is None or request.module.__name__ not in _HF_MODEL_TESTS:
        yield
        return
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(autouse=True)
def emulated_cuda_device(request):
    """On the emulated GPU, CUDA tests run with the emulated device's dispatch mode active."""
    if not EMULATED or request.node.get_closest_marker("cuda") is None:
        yield
        return
    # Backward runs on the calling thread: torch's CUDA worker threads would ask the driver for a
    # primary context.
    with emulated_cuda.EmulatedCuda(), torch.autograd.set_multithreading_enabled(False):
        yield


# float32 on tensor cores (TF32: 10 mantissa bits), where torch.backends.cudnn.allow_tf32 lets
# patch_embed use them as the convolution it replaces does: PyTorch's own error is TF32-sized
# too, but with a few outputs its maximum is one draw, so the floor is TF32's, not float32's.
TF32_FLOOR = 2e-3


def assert_within_reference_error(ours, torch_lowp, ref64, dtype, what="output", floor=None):
    """ours and torch_lowp computed in `dtype`, ref64 the same quantity in float64 (`floor`
    overrides the dtype's FLOOR)."""
    assert ours.shape == ref64.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype} != {dtype}"
    ref64 = ref64.double().cpu()
    if ref64.numel() == 0:
        return
    ours_err = (ours.double().cpu() - ref64).abs().max().item()
    torch_err = (torch_lowp.double().cpu() - ref64).abs().max().item()
    scale = max(1.0, ref64.abs().max().item())
    bound = 2 * torch_err + (FLOOR[dtype] if floor is None else floor) * scale
    assert ours_err == ours_err, f"{what}: NaN in the result"
    assert ours_err <= bound, f"{what}: error {ours_err:.3e} > bound {bound:.3e} (PyTorch's own error {torch_err:.3e})"


def assert_close_scaled(got, want, rtol, atol, msg=None):
    """assert_close with `atol` relative to the largest magnitude in `want` (at least 1).

    For float32 model outputs compared with HF's: both sum the same terms in another order, and
    that rounding grows with the largest values in the sums, not with each output element; so a
    small logit next to large ones can differ from HF's by more than a fixed atol allows. Measured
    over 150 seeds on this project's CPU: GPT-2's logits (largest ~8) up to 9e-7 of the largest,
    BART's (largest ~5) up to 4e-6; CI's machine once put a GPT-2 logit 1.6e-5 apart, past a
    fixed 1e-5."""
    scale = max(1.0, want.detach().abs().max().item()) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol * scale, msg=msg)


def assert_same_grads(ours, hf, rtol, atol=1e-4):
    """Every parameter gradient of `ours` equals that of the HF module's parameter of the same
    name (the model classes load HF's state dicts unchanged), with atol relative to the largest
    gradient of each parameter (at least 1). A parameter's gradient sums many float32 terms, in
    another order than HF's; where they cancel, an element keeps the rounding of terms much larger
    than itself. Measured over ~50 runs of every model test on this project's CPU: up to 2.2e-5 of
    the parameter's largest gradient past rtol (Wav2Vec2's 'sum' CTC loss; BART's embeddings up to
    1e-5, DETR's query embeddings 3.7e-5), so 1e-4; a wrong gradient is off by its own size."""
    hf_params = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        want = hf_params[name].grad
        if want is None:
            assert p.grad is None, f"{name}: has a gradient, HF's has none"
            continue
        assert p.grad is not None, f"{name}: no gradient, HF's has one"
        assert_close_scaled(p.grad, want, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


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
