// Kernel launches and dynamic shared memory: the two things host C++ cannot spell, kept here so
// that every .cu file compiles both with nvcc and as host C++ for the emulated GPU
// (TASKKERNELS_EMULATE, csrc/emu), unchanged.
#pragma once

#include <cuda_runtime.h>

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
