// The fp16 / bf16 tensor-core pieces shared by the attention kernels (mma.sync m16n8k16, fp32
// accumulators): the element type's conversions and mma, fragment loads from shared-memory tiles,
// accumulators reused as A operands, and the tile loader.
//
// Fragment layouts (kernels/common/ptx.cuh; g = lane / 4, t = lane % 4):
//   A (16x16, row):  a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
//   B (16x8,  col):  b0 (k 2t..2t+1, n g)  b1 (k 2t+8.., n g)
//   C (16x8, f32):   c0 c1 (g, 2t..2t+1)  c2 c3 (g+8, 2t..2t+1)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/common/ptx.cuh"

namespace taskkernels::cuda::tc {

template <class T>
struct Tc;

template <>
struct Tc<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    ptx::SM80_16x8x16_F32F16F16F32_TN::fma(c, a, b0, b1);
  }
};

template <>
struct Tc<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    ptx::SM80_16x8x16_F32BF16BF16F32_TN::fma(c, a, b0, b1);
  }
};

// Two consecutive 16-bit elements of a shared-memory row as one register.
template <class T>
__device__ __forceinline__ uint32_t pair(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}
// The same column of two consecutive rows (row stride LD) as one register: lo, hi.
template <class T, int LD>
__device__ __forceinline__ uint32_t col_pair(const T* p) {
  return uint32_t(*reinterpret_cast<const uint16_t*>(p)) | (uint32_t(*reinterpret_cast<const uint16_t*>(p + LD)) << 16);
}
// The A fragment (16 rows from `rows`, row stride LD, columns k0..k0+15) of a row-major tile.
template <class T, int LD>
__device__ __forceinline__ void a_frag(uint32_t (&a)[4], const T* rows, int k0, int g, int t) {
  const T* r0 = rows + g * LD + k0 + 2 * t;
  a[0] = pair(r0);
  a[1] = pair(r0 + 8 * LD);
  a[2] = pair(r0 + 8);
  a[3] = pair(r0 + 8 * LD + 8);
}
// The A fragment of keys/queries 16kk..16kk+15 from C accumulators of n-tiles 2kk and 2kk+1.
template <class T>
__device__ __forceinline__ void acc_as_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = Tc<T>::pack(lo[0], lo[1]);
  a[1] = Tc<T>::pack(lo[2], lo[3]);
  a[2] = Tc<T>::pack(hi[0], hi[1]);
  a[3] = Tc<T>::pack(hi[2], hi[3]);
}

// rows [row0, row0 + R) x [0, HD) of a (n, d) strided matrix into shared memory (row stride LD),
// zero outside [0, n) x [0, D); 16-byte loads where the head dimension is contiguous and aligned.
template <class T, int R, int HD, int LD>
__device__ __forceinline__ void load_rows(T* __restrict__ dst, const T* __restrict__ src, int64_t row0, int64_t n,
                                          int64_t D, int64_t s_n, int64_t s_d) {
  constexpr int V = 8, PER_ROW = HD / V;
  const T zero = Tc<T>::from_float(0.f);
  for (int idx = threadIdx.x; idx < R * PER_ROW; idx += blockDim.x) {
    const int r = idx / PER_ROW, c = (idx % PER_ROW) * V;
    const int64_t row = row0 + r;
    T* out = dst + r * LD + c;
    if (row < n) {
      const T* in = src + row * s_n + c * s_d;
      if (s_d == 1 && c + V <= D && (reinterpret_cast<uintptr_t>(in) & 15) == 0) {
        *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(in);
        continue;
      }
#pragma unroll
      for (int e = 0; e < V; ++e) out[e] = c + e < D ? in[e * s_d] : zero;
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) out[e] = zero;
    }
  }
}

}  // namespace taskkernels::cuda::tc
