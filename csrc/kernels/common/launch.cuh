// Kernel launches and dynamic shared memory: the two things host C++ cannot spell, kept here so
// that every .cu file compiles both with nvcc and as host C++ for the emulated GPU
// (TASKKERNELS_EMULATE, csrc/emu), unchanged.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <utility>

namespace taskkernels::cuda {

// kernel<<<grid, block, smem, stream>>>(args...), returning the launch's error.
template <class... Params, class... Args>
inline cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                 Args&&... args) {
#if defined(TASKKERNELS_EMULATE)
  return ::emu::launch(kernel, grid, block, smem, stream, std::forward<Args>(args)...);
#else
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
#endif
}

// The most dynamic shared memory a block can opt into on every GPU the wheels target: sm_86 and
// sm_89 allow 99 KB (sm_80 163 KB, sm_90 227 KB). Kernels whose size is fixed at compile time stay
// under it (allow_dynamic_smem checks), so no supported GPU refuses their launch.
constexpr size_t kMaxOptInSmemEveryTarget = 99 * 1024;

// Lets Kernel launch with Bytes of dynamic shared memory: over the 48 KB default the limit is
// raised, once per device.
template <auto Kernel, size_t Bytes>
inline cudaError_t allow_dynamic_smem() {
  static_assert(Bytes <= kMaxOptInSmemEveryTarget, "over sm_86/sm_89's 99 KB of shared memory per block");
  if constexpr (Bytes <= 48 * 1024) {
    return cudaSuccess;
  } else {
    static std::atomic<bool> raised[64];
    int dev = 0;
    if (cudaError_t err = cudaGetDevice(&dev); err != cudaSuccess) return err;
    if (dev < 64 && raised[dev].load(std::memory_order_acquire)) return cudaSuccess;
    const cudaError_t err = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Bytes));
    if (err == cudaSuccess && dev < 64) raised[dev].store(true, std::memory_order_release);
    return err;
  }
}

// The running block's dynamic shared memory (the launch's smem bytes), 16-byte aligned.
__device__ __forceinline__ unsigned char* dynamic_smem() {
#if defined(TASKKERNELS_EMULATE)
  return ::emu::dynamic_shared();
#else
  extern __shared__ __align__(16) unsigned char tk_dynamic_smem[];
  return tk_dynamic_smem;
#endif
}

}  // namespace taskkernels::cuda
