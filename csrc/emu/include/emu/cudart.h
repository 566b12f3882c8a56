// The CUDA runtime calls the emulated GPU implements (csrc/emu/runtime.cpp), renamed so that they
// never bind to a real libcudart that torch has loaded into the process. Force-included before any
// CUDA header in every TASKKERNELS_EMULATE translation unit (the kernels, the glue, the runtime).
#pragma once

#define cudaGetLastError tkemu_cudaGetLastError
#define cudaPeekAtLastError tkemu_cudaPeekAtLastError
#define cudaGetErrorName tkemu_cudaGetErrorName
#define cudaGetErrorString tkemu_cudaGetErrorString
#define cudaFuncSetAttribute tkemu_cudaFuncSetAttribute
#define cudaGetDevice tkemu_cudaGetDevice
#define cudaSetDevice tkemu_cudaSetDevice
#define cudaDeviceGetAttribute tkemu_cudaDeviceGetAttribute
#define cudaMemsetAsync tkemu_cudaMemsetAsync
#define cudaMemcpyAsync tkemu_cudaMemcpyAsync
#define cudaDeviceSynchronize tkemu_cudaDeviceSynchronize
#define cudaStreamSynchronize tkemu_cudaStreamSynchronize
