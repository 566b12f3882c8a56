// The fp16 / bf16 tensor-core pieces shared by the attention kernels (mma.sync m16n8k16, fp32
// accumulators): the element type's conversions and mma, fragment loads from shared-memory tiles,
// accumulators reused as A operands, and the cp.async tile loader.
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

// This lane's offset (in elements, row stride LD) for one ldmatrix x4 (kernels/common/ptx.cuh;
// lane l names row l % 8 of 8x8 matrix l / 8) of a 16 x 16 block at the tile's origin:
//   a_ldsm:  the A fragment of 16 rows (M) x 16 columns (K) of a row-major tile: matrices
//            (rows 0-7 | 8-15) x (columns 0-7 | 8-15) in the order a0..a3.
//   b_ldsm:  the B fragments of two n-tiles from rows that run along N (k contiguous, as K in
//            S = Q K^T): d[0] d[1] are b0 b1 of rows 0-7, d[2] d[3] of rows 8-15.
//   bt_ldsm: the same from rows that run along K (n contiguous, as V in O = P V), with .trans:
//            d[0] d[1] are b0 b1 of columns 0-7, d[2] d[3] of columns 8-15.
template <int LD>
__device__ __forceinline__ int a_ldsm(int lane) {
  return ((lane % 8) + ((lane / 8) % 2) * 8) * LD + (lane / 16) * 8;
}
template <int LD>
__device__ __forceinline__ int b_ldsm(int lane) {
  return ((lane / 16) * 8 + (lane % 8)) * LD + ((lane / 8) % 2) * 8;
}
template <int LD>
__device__ __forceinline__ int bt_ldsm(int lane) {
  return (((lane / 8) % 2) * 8 + (lane % 8)) * LD + (lane / 16) * 8;
}

// c0 += A B0 and c1 += A B1 for the two n-tiles whose B fragments one ldmatrix x4 gave (b_ldsm or
// bt_ldsm below: b[0] b[1], then b[2] b[3]).
template <class T>
__device__ __forceinline__ void mma_x2(float (&c0)[4], float (&c1)[4], const uint32_t (&a)[4], const uint32_t (&b)[4]) {
  Tc<T>::mma(c0, a, b[0], b[1]);
  Tc<T>::mma(c1, a, b[2], b[3]);
}

// The A fragment of keys/queries 16kk..16kk+15 from C accumulators of n-tiles 2kk and 2kk+1.
template <class T>
__device__ __forceinline__ void acc_as_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = Tc<T>::pack(lo[0], lo[1]);
  a[1] = Tc<T>::pack(lo[2], lo[3]);
  a[2] = Tc<T>::pack(hi[0], hi[1]);
  a[3] = Tc<T>::pack(hi[2], hi[3]);
}

// R rows from row0 x [0, HD) of a (n, d) strided matrix into shared memory (row stride LD), zero
// outside [0, n_valid) x [0, D), by the block's NT threads. Chunks of 8 elements whose source is
// contiguous and 16-byte aligned go by cp.async (the source size cut at D); the others by element
// loads, stored at once. The caller commits the group and waits for it.
template <class T, int R, int HD, int LD, int NT>
__device__ __forceinline__ void load_rows_async(T* __restrict__ dst, const T* __restrict__ src, int64_t row0,
                                                int64_t n_valid, int64_t D, int64_t s_n, int64_t s_d) {
  constexpr int V = 8, PER_ROW = HD / V;
  const T zero = Tc<T>::from_float(0.f);
#pragma unroll
  for (int idx = threadIdx.x; idx < R * PER_ROW; idx += NT) {
    const int r = idx / PER_ROW, c = (idx % PER_ROW) * V;
    const int64_t n = row0 + r;
    T* out = dst + r * LD + c;
    if (n < n_valid && c < D) {
      const T* in = src + n * s_n + c * s_d;
      if (s_d == 1 && (reinterpret_cast<uintptr_t>(in) & 15) == 0) {
        const int bytes = int(min(int64_t(V), D - c)) * int(sizeof(T));
        ptx::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL::copy(out, in, bytes);
        continue;
      }
#pragma unroll
      for (int e = 0; e < V; ++e) out[e] = (c + e < D) ? in[e * s_d] : zero;
    } else {
      *reinterpret_cast<uint4*>(out) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

}  // namespace taskkernels::cuda::tc
