// TK_HOST_DEVICE: a small inline function shared by the C++ CPU paths and the CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define TK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TK_HOST_DEVICE inline
#endif
