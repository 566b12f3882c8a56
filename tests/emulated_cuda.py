"""The emulated GPU seen from the tests (scripts/emulate.sh sets TASKKERNELS_EMULATOR).

The test functions written for ``device="cuda"`` run unchanged against taskkernels' CUDA kernels
compiled as host C++ (csrc/emu). Three pieces make that work without a GPU:

* the emulated build of ``taskkernels._C`` is loaded in place of the installed one: the same
  torch glue, registered for the CUDA dispatch key, calls the emulated kernels;
* CUDA tensors are real torch tensors on ``cuda:0`` whose storage is host memory (each storage
  keeps a CPU twin of the same bytes alive), so the glue sees ``is_cuda()`` tensors, takes its
  CUDA paths, and hands raw pointers to the kernels;
* a TorchDispatchMode runs every aten op on such tensors on the CPU twins (factories with
  ``device="cuda"`` too) and hands back CUDA tensors, while taskkernels' own ops go to their CUDA
  kernels with the mode re-entered, so the glue's allocations land here as well. The module's
  device guard (csrc/emu/torch_device.cpp) stands in for the driver in autograd and the glue.

What it cannot show: speed, torch's own CUDA kernels (aten ops run on the CPU), inductor's Triton
code (torch.compile on these tensors uses the aot_eager backend), real streams (every launch
completes before it returns; the emulator checks that kernels go to torch's current stream)."""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import sys
import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

CUDA = torch.device("cuda", 0)
_CPU = torch.device("cpu")
_fake_storages: dict[tuple[int, int], weakref.ref] = {}
_module = None


def load_emulated_module(build_dir: str):
    """Imports <build_dir>/taskkernels/_C*.so as taskkernels._C (before taskkernels itself)."""
    global _module
    found = glob.glob(os.path.join(build_dir, "taskkernels", "_C*.so"))
    if not found:
        raise RuntimeError(f"TASKKERNELS_EMULATOR={build_dir}: no taskkernels/_C*.so there; run scripts/emulate.sh")
    if "taskkernels" in sys.modules:
        raise RuntimeError("the emulated module must be loaded before taskkernels is imported")
    spec = importlib.util.spec_from_file_location("taskkernels._C", found[0])
    module = importlib.util.module_from_spec(spec)
    sys.modules["taskkernels._C"] = module
    spec.loader.exec_module(module)
    _module = module
    return module


# ---- CUDA tensors in host memory ----------------------------------------------------------------
def to_emulated(cpu: torch.Tensor) -> torch.Tensor:
    """A cuda:0 tensor over the same bytes as `cpu` (views of one storage share one CUDA storage)."""
    st = cpu.untyped_storage()
    key = (st.data_ptr(), st.nbytes())
    ref = _fake_storages.get(key) if st.nbytes() else None  # empty storages all sit at address 0
    fake = ref() if ref is not None else None
    if fake is None:
        fake = torch._C._construct_storage_from_data_pointer(st.data_ptr(), CUDA, st.nbytes())
        fake._twin = st  # keeps the host bytes alive exactly as long as the CUDA storage
        _fake_storages[key] = weakref.ref(fake)
        if len(_fake_storages) > 4096:
            for k in [k for k, r in _fake_storages.items() if r() is None]:
                del _fake_storages[k]
    meta = {"size": cpu.shape, "stride": cpu.stride(), "storage_offset": cpu.storage_offset(), "dtype": cpu.dtype}
    return torch._C._construct_CUDA_Tensor_From_Storage_And_Metadata(meta, fake)


def to_host(t: torch.Tensor) -> torch.Tensor:
    """The CPU view of an emulated CUDA tensor's bytes (same storage offset, sizes, strides)."""
    twin = getattr(t.untyped_storage(), "_twin", None)
    if twin is None:
        raise RuntimeError("a CUDA tensor that the emulated GPU did not make (no host twin)")
    return torch.empty(0, dtype=t.dtype).set_(twin, t.storage_offset(), t.shape, t.stride())


def _is_cuda(x) -> bool:
    """An emulated CUDA tensor (not a fake one of FakeTensorMode, which has no bytes at all)."""
    return isinstance(x, torch.Tensor) and x.device.type == "cuda" and not isinstance(x, FakeTensor)


def _has_cuda(args, kwargs) -> bool:
    """Emulated CUDA tensors or a CUDA device among the arguments, and no FakeTensorMode tensor
    (those belong to the mode above this one)."""
    found = fake = False

    def visit(x):
        nonlocal found, fake
        if _is_cuda(x) or (isinstance(x, torch.device) and x.type == "cuda"):
            found = True
        elif isinstance(x, FakeTensor):
            fake = True
        return x

    tree_map(visit, (args, kwargs))
    return found and not fake


_CUDA_KEY = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)


def _overloads(*names):
    packets = [getattr(torch.ops.aten, n) for n in names]
    return {getattr(p, o) for p in packets for o in p.overloads()}


_NO_VENDOR_LIBRARIES = _overloads("_use_cudnn_ctc_loss", "_use_miopen_ctc_loss")
# Ops that take tensors of both devices on a GPU too: copies, indexing with CPU indices, CTC with
# CPU lengths.
_CROSS_DEVICE = _overloads("copy_", "_to_copy", "index", "index_put_", "index_put", "_index_put_impl_", "set_",
                           "_copy_from", "_copy_from_and_resize", "_ctc_loss", "_ctc_loss_backward", "ctc_loss")


def _check_one_device(func, args, kwargs):
    """As on a GPU: an op mixing CUDA tensors with CPU tensors that are not 0-dim scalars fails."""
    if func in _CROSS_DEVICE:
        return
    cpu = [False]

    def visit(x):
        if isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dim() > 0:
            cpu[0] = True
        return x

    tree_map(visit, (args, kwargs))
    if cpu[0]:
        raise RuntimeError(f"{func}: Expected all tensors to be on the same device, but found at least two devices, "
                           "cuda:0 and cpu! (emulated GPU)")


class EmulatedCuda(TorchDispatchMode):
    """Runs aten ops on emulated CUDA tensors on the CPU; sends taskkernels ops to their CUDA kernels."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _has_cuda(args, kwargs):
            return func(*args, **kwargs)
        if func.namespace == "taskkernels":
            with EmulatedCuda():  # the glue's own allocations (new_empty, ...) come back here
                return func.redispatch(_CUDA_KEY, *args, **kwargs)
        originals = {}

        def unwrap(x):
            if _is_cuda(x):
                host = to_host(x)
                originals[id(host)] = x
                return host
            if isinstance(x, torch.Tensor):
                originals[id(x)] = x
                return x
            if isinstance(x, torch.device) and x.type == "cuda":
                return _CPU
            return x

        if func in _NO_VENDOR_LIBRARIES:
            return False  # no cuDNN / MIOpen here: F.ctc_loss takes its native path, run on the CPU
        _check_one_device(func, args, kwargs)
        host_args, host_kwargs = tree_map(unwrap, (args, kwargs))
        device = kwargs.get("device")
        stays_on_cpu = device is not None and torch.device(device).type == "cpu"
        alive = (host_args, host_kwargs)  # `originals` is keyed by the id() of these host views
        exact_args = host_args
        host_args, host_kwargs = _tf32_inputs(func, host_args, host_kwargs)
        out = _CPU_STAND_INS.get(func, func)(*host_args, **host_kwargs)
        if host_args is not exact_args and func is torch.ops.aten.convolution_backward.default and out[2] is not None:
            # cuDNN sums the bias gradient from grad_output itself, not from its TF32 rounding
            mask = [False, False, True]
            out = (out[0], out[1], func(*exact_args[:10], mask)[2])

        def wrap(x):
            if isinstance(x, torch.Tensor):
                if id(x) in originals:  # in-place and out= results are the arguments themselves
                    return originals[id(x)]
                if x.device.type == "cpu" and not stays_on_cpu:
                    return to_emulated(x)
            return x

        wrapped = tree_map(wrap, out)
        del alive
        return wrapped


# cuDNN convolutions (torch.backends.cudnn.allow_tf32, on by default) and, when allowed, matmuls
# read float32 operands as TF32 on a GPU; their CPU stand-ins here round the operands the same way
# (to nearest, ties away), so that tests comparing with PyTorch's CUDA result see its precision.
_CONV = {torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default}
_MATMUL = {torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default,
           torch.ops.aten.baddbmm.default}


def _to_tf32(x):
    if not (isinstance(x, torch.Tensor) and x.dtype == torch.float32):
        return x
    bits = x.contiguous().view(torch.int32)
    finite = (bits & 0x7F800000) != 0x7F800000
    rounded = torch.where(finite, (bits + 0x1000) & ~0x1FFF, bits)
    return rounded.view(torch.float32).reshape(x.shape)


def _tf32_inputs(func, args, kwargs):
    # Grouped (depthwise) convolutions run PyTorch's own CUDA kernels in exact FP32.
    conv = func in _CONV and torch.backends.cudnn.allow_tf32 and args[9 if "backward" in str(func) else 8] == 1
    if conv or (func in _MATMUL and torch.backends.cuda.matmul.allow_tf32):
        return tree_map(_to_tf32, args), kwargs
    return args, kwargs


# cuDNN-only ops that PyTorch picks for CUDA tensors, and their CPU equivalents.
def _cudnn_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps):
    out, mean, invstd = torch.ops.aten.native_batch_norm(input, weight, bias, running_mean, running_var, training,
                                                         momentum, eps)
    return out, mean, invstd, torch.empty(0, dtype=torch.uint8)


def _cudnn_batch_norm_backward(input, grad_output, weight, running_mean, running_var, save_mean, save_var, eps,
                               reserve):
    return torch.ops.aten.native_batch_norm_backward(grad_output, input, weight, running_mean, running_var, save_mean,
                                                     save_var, True, eps, [True, True, True])


_CPU_STAND_INS = {torch.ops.aten.cudnn_batch_norm.default: _cudnn_batch_norm,
                  torch.ops.aten.cudnn_batch_norm_backward.default: _cudnn_batch_norm_backward}


# ---- torch.cuda without a driver -----------------------------------------------------------------
class Stream:
    """torch.cuda.Stream on the emulated GPU: a distinct handle the kernels must be launched on."""

    _next = 0x1000

    def __init__(self, device=None, priority=0, handle=None, **kwargs):
        if handle is None:
            handle = Stream._next
            Stream._next += 0x10
        self.cuda_stream = handle
        self.device = CUDA

    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event or Event()

    def synchronize(self):
        pass

    def query(self):
        return True

    def __eq__(self, other):
        return isinstance(other, Stream) and other.cuda_stream == self.cuda_stream

    def __hash__(self):
        return hash(self.cuda_stream)


class Event:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass

    def synchronize(self):
        pass

    def wait(self, stream=None):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


def current_stream(device=None):
    return Stream(handle=_module._emu_current_stream())


@contextlib.contextmanager
def stream(s):
    if s is None:
        yield
        return
    before = _module._emu_current_stream()
    _module._emu_set_stream(s.cuda_stream)
    try:
        yield
    finally:
        _module._emu_set_stream(before)


def _deepcopy(original):
    """Tensor.__deepcopy__ copies storages with dispatch modes bypassed: clone the host bytes."""

    def deepcopy(self, memo):
        if _is_cuda(self) and type(self) is torch.Tensor and getattr(self.untyped_storage(), "_twin", None) is not None:
            if id(self) in memo:
                return memo[id(self)]
            with torch.no_grad():
                new = to_emulated(to_host(self).clone())
            new.requires_grad_(self.requires_grad)
            memo[id(self)] = new
            return new
        return original(self, memo)

    return deepcopy


def _data_constructor(original):
    """torch.tensor and friends copy to the device with dispatch modes excluded: build on the CPU,
    then move (which the mode sees)."""

    def build(*args, **kwargs):
        device = kwargs.get("device")
        if device is None or torch.device(device).type != "cuda":
            return original(*args, **kwargs)
        requires_grad = kwargs.pop("requires_grad", False)
        out = original(*args, **dict(kwargs, device="cpu")).to(CUDA)
        return out.requires_grad_(requires_grad) if requires_grad else out

    return build


def _repr(original):
    """Printing disables dispatch modes: print the host bytes of an emulated tensor instead."""

    def show(self, *args, **kwargs):
        if self.device.type == "cuda" and getattr(self.untyped_storage(), "_twin", None) is not None:
            with torch.utils._python_dispatch._disable_current_modes():
                text = original(to_host(self).detach(), *args, **kwargs)
            return text[:-1] + ", device='cuda:0')" if text.endswith(")") else text
        return original(self, *args, **kwargs)

    return show


# opcheck's test_aot_dispatch_dynamic and torch.compile trace with dispatch modes disabled, so they
# cannot see the emulated device: on it, opcheck runs its other three tests, and torch.compile
# skips the test (inductor would generate Triton code for a GPU that is not there).
_OPCHECK_ON_EMULATED = ("test_schema", "test_autograd_registration", "test_faketensor")


def _opcheck(original):
    def check(op, args, kwargs=None, *, test_utils=None, **rest):
        if test_utils is None and _has_cuda(args, kwargs or {}):
            test_utils = _OPCHECK_ON_EMULATED
        if test_utils is None:
            return original(op, args, kwargs, **rest)
        return original(op, args, kwargs, test_utils=test_utils, **rest)

    return check


def _gradcheck(original):
    """On emulated CUDA tensors gradcheck runs in fast mode (a few random directional derivatives
    instead of one per input element): every emulated launch is a whole-grid CPU run."""

    def check(func, inputs, *args, **kwargs):
        if "fast_mode" not in kwargs and _has_cuda(inputs if isinstance(inputs, tuple) else (inputs,), {}):
            kwargs["fast_mode"] = True
        return original(func, inputs, *args, **kwargs)

    return check


def _compile(original):
    def compile_(*args, **kwargs):
        if torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is None and any(
            isinstance(m, EmulatedCuda) for m in torch.utils._python_dispatch._get_current_dispatch_mode_stack()
        ):
            import pytest

            pytest.skip("torch.compile on CUDA tensors runs inductor's Triton kernels, which need a GPU; "
                        "the emulated GPU runs taskkernels' kernels only")
        return original(*args, **kwargs)

    return compile_


def install() -> None:
    """Patches what of torch.cuda the tests touch (no driver is asked), once per session."""
    torch.library.opcheck = _opcheck(torch.library.opcheck)
    torch.compile = _compile(torch.compile)
    torch.autograd.gradcheck = _gradcheck(torch.autograd.gradcheck)
    for name in ("tensor", "as_tensor"):
        setattr(torch, name, _data_constructor(getattr(torch, name)))
    torch.Tensor.__repr__ = _repr(torch.Tensor.__repr__)
    torch.Tensor.__deepcopy__ = _deepcopy(torch.Tensor.__deepcopy__)
    cuda = torch.cuda
    cuda._lazy_init = lambda: None
    cuda.synchronize = lambda device=None: None
    cuda.Stream = Stream
    cuda.Event = Event
    cuda.current_stream = current_stream
    cuda.default_stream = lambda device=None: Stream(handle=0)
    cuda.stream = stream
    # Nothing that would tell torch itself (inductor, device queries) that a GPU is there.


def describe() -> str:
    cfg = _module._emu_config()
    race = ", race detector on" if cfg["race_check"] else ""
    return f"emulated GPU: EMU_SEED={cfg['seed']} EMU_WORKERS={cfg['workers']}{race}"
