// Element types of the depthwise kernels (depthwise_conv2d.cu, layernorm.cu): the accumulation
// type (float, double for double), conversions, and the DwDType -> element type dispatch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/depthwise_conv2d_params.h"

namespace taskkernels::cuda::dw {

template <class T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
template <class T> __device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <class T> __device__ __forceinline__ T from_acc(double v) { return v; }

// f(T{}) for the element type of t; returns f's cudaError_t.
template <class F>
int dispatch(DwDType t, F&& f) {
  switch (t) {
    case DwDType::kHalf: return f(__half{});
    case DwDType::kBFloat16: return f(__nv_bfloat16{});
    case DwDType::kFloat: return f(float{});
    case DwDType::kDouble: return f(double{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace taskkernels::cuda::dw
