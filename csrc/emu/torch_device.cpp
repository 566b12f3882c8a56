// The emulated GPU seen from torch (TASKKERNELS_EMULATE builds of taskkernels._C only).
//
// Tests make CUDA tensors whose memory is host memory (tests/emulated_cuda.py); torch then needs
// a CUDA device guard that does not ask a driver: this one keeps device index 0 current, the
// emulator's current stream, and has nothing to synchronize (every launch completes before it
// returns). It replaces libtorch_cuda's in c10's registry when the module loads. The bindings
// below are what the tests read and set.
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstring>
#include <pybind11/pybind11.h>

#include <pybind11/numpy.h>

#include "emu/runtime.h"

cudaError_t tkemu_selftest(const char* name, const float* in, float* out, cudaStream_t stream);

namespace {

using c10::Device;
using c10::DeviceIndex;
using c10::DeviceType;
using c10::Stream;

struct EmulatedCudaGuard final : c10::impl::DeviceGuardImplInterface {
  DeviceType type() const override { return DeviceType::CUDA; }
  Device exchangeDevice(Device) const override { return Device(DeviceType::CUDA, 0); }
  Device getDevice() const override { return Device(DeviceType::CUDA, 0); }
  void setDevice(Device) const override {}
  void uncheckedSetDevice(Device) const noexcept override {}
  Stream getStream(Device d) const override {
    return Stream(Stream::UNSAFE, Device(DeviceType::CUDA, 0),
                  static_cast<c10::StreamId>(reinterpret_cast<intptr_t>(emu::current_stream())));
  }
  Stream getDefaultStream(Device) const override { return Stream(Stream::DEFAULT, Device(DeviceType::CUDA, 0)); }
  Stream exchangeStream(Stream s) const override {
    const Stream old = getStream(s.device());
    emu::set_current_stream(reinterpret_cast<cudaStream_t>(static_cast<intptr_t>(s.id())));
    return old;
  }
  DeviceIndex deviceCount() const noexcept override { return 1; }
  void destroyEvent(void*, const DeviceIndex) const noexcept override {}
  void record(void**, const Stream&, const DeviceIndex, const c10::EventFlag) const override {}
  void block(void*, const Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  bool queryStream(const Stream&) const override { return true; }
  void synchronizeStream(const Stream&) const override {}
  void synchronizeEvent(void*) const override {}
  void synchronizeDevice(const DeviceIndex) const override {}
};

// The autograd engine stashes the caller's stream of every device that has a primary context,
// and torch's CUDA hooks ask the driver (which is not there, so they throw). The emulated device
// has none: the hooks object gets a copy of its vtable whose hasPrimaryContext says so.
bool no_primary_context(const void*, DeviceIndex) { return false; }

void patch_cuda_hooks() {
  auto& hooks = const_cast<at::CUDAHooksInterface&>(at::detail::getCUDAHooks());
  using Method = bool (at::CUDAHooksInterface::*)(DeviceIndex) const;
  const Method m = &at::CUDAHooksInterface::hasPrimaryContext;
  uintptr_t raw[2];
  std::memcpy(raw, &m, sizeof(raw));
  if ((raw[0] & 1) == 0) return;  // not a virtual member (Itanium ABI: 1 + offset in the vtable)
  const size_t slot = (raw[0] - 1) / sizeof(void*);
  void** vptr = *reinterpret_cast<void***>(&hooks);
  constexpr size_t kCopy = 256;  // more slots than the interface has
  static void* table[2 + kCopy];
  std::memcpy(table, vptr - 2, sizeof(table));
  if (slot >= kCopy) return;
  table[2 + slot] = reinterpret_cast<void*>(&no_primary_context);
  *reinterpret_cast<void***>(&hooks) = table + 2;
}

const bool g_installed = [] {
  static EmulatedCudaGuard guard;
  c10::impl::device_guard_impl_registry[static_cast<size_t>(DeviceType::CUDA)].store(&guard);
  patch_cuda_hooks();
  return true;
}();

}  // namespace

namespace taskkernels {

void emulator_bindings(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("_emu_config", [] {
    const emu::Config c = emu::config();
    py::dict d;
    d["seed"] = c.seed;
    d["workers"] = c.workers;
    d["race_check"] = c.race_check;
    d["launches"] = emu::launches();
    return d;
  }, "The emulated GPU's settings: seed (EMU_SEED), workers (EMU_WORKERS), race_check, launches so far.");
  m.def("_emu_set_stream", [](uintptr_t s) { emu::set_current_stream(reinterpret_cast<cudaStream_t>(s)); },
        "Sets the emulated current CUDA stream (the handle the glue passes to launches).");
  m.def("_emu_current_stream", [] { return reinterpret_cast<uintptr_t>(emu::current_stream()); });
  m.def("_emu_selftest", [](const std::string& name, py::array_t<float, py::array::c_style | py::array::forcecast> in) {
    if (in.size() < 512) throw py::value_error("in must have at least 512 elements");
    py::array_t<float> out(256);
    std::fill(out.mutable_data(), out.mutable_data() + 256, 0.f);
    const cudaError_t e = tkemu_selftest(name.c_str(), in.data(), out.mutable_data(), emu::current_stream());
    std::string text = e == cudaSuccess ? "" : cudaGetErrorString(e);
    cudaGetLastError();
    return py::make_tuple(int(e), text, out);
  }, py::arg("name"), py::arg("input"), "Runs an emulator self-test kernel (csrc/emu/selftest.cu): (error code, message, out).");
}

}  // namespace taskkernels
