// Run-time access to torch's CUDA stream, for the CUDA registrations in csrc/ops/*.cpp, and the
// switch that disables them.
#include <mutex>
#include <string>

#ifdef TASKKERNELS_WITH_CUDA
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#endif
#ifdef TASKKERNELS_EMULATE
#include "emu/runtime.h"
#endif

#include "ops/common.h"

namespace taskkernels {
namespace {
std::mutex g_disabled_mutex;
std::string g_disabled_reason;
}  // namespace

void disable_cuda(const std::string& reason) {
  std::lock_guard<std::mutex> lock(g_disabled_mutex);
  g_disabled_reason = reason;
}

#ifdef TASKKERNELS_WITH_CUDA
namespace {
using GetStreamFn = AOTITorchError (*)(int32_t, void**);

GetStreamFn lookup_get_stream() {
  // torch loads libtorch_cuda.so privately (RTLD_LOCAL), so look for it by name among the
  // libraries already loaded; RTLD_NOLOAD never loads a second copy.
  for (const char* lib : {"libtorch_cuda.so", "libtorch.so"}) {
    if (void* handle = dlopen(lib, RTLD_NOW | RTLD_NOLOAD)) {
      if (void* sym = dlsym(handle, "aoti_torch_get_current_cuda_stream")) {
        return reinterpret_cast<GetStreamFn>(sym);
      }
    }
  }
  return reinterpret_cast<GetStreamFn>(dlsym(RTLD_DEFAULT, "aoti_torch_get_current_cuda_stream"));
}
}  // namespace

void* current_cuda_stream(int32_t device, const char* op) {
  {
    std::lock_guard<std::mutex> lock(g_disabled_mutex);
    TK_CHECK(g_disabled_reason.empty(), op, "cannot run on CUDA: ", g_disabled_reason);
  }
#ifdef TASKKERNELS_EMULATE
  return emu::current_stream();  // the emulated GPU's (csrc/emu/torch_device.cpp)
#endif
  static const GetStreamFn get_stream = lookup_get_stream();
  TK_CHECK(get_stream != nullptr, "cuda",
           "the installed torch has no CUDA support loaded (aoti_torch_get_current_cuda_stream "
           "not found), so CUDA kernels cannot run");
  void* stream = nullptr;
  TK_CHECK(get_stream(device, &stream) == AOTI_TORCH_SUCCESS, "cuda",
           "could not read torch's current CUDA stream for device ", device);
  return stream;
}

void check_cuda(int err, const char* op, const char* what) {
  if (err != cudaSuccess) {
    const auto e = static_cast<cudaError_t>(err);
    fail(op, what, " failed: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
  }
}

#endif  // TASKKERNELS_WITH_CUDA

}  // namespace taskkernels
