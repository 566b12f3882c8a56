// A tiled GEMM whose operands are read through small "operand" structs, so that im2col
// gathers, row remaps and transposes happen on the way into shared memory, and whose result
// goes to an epilogue functor, so that bias, residual adds and scatters happen on the way out.
//
//   C[m][n] = sum_k A(m, k) * B(k, n),  m < M, n < N, k in this block's K chunk.
//
// An operand exposes `load<V>(row, col, dst)`: dst[j] = element (row, col + j), zero outside
// the operand. Its `col` index is the one that is contiguous in memory. A_K / B_K say whether
// that contiguous index is k (true) or m / n (false):
//   A_K:  A(m, k) = opa(m, k)   else A(m, k) = opa(k, m)
//   B_K:  B(k, n) = opb(n, k)   else B(k, n) = opb(k, n)
//
// Block tile 128 x 64, 128 threads (4 warps, 2 x 2). The next K tile is loaded into registers
// (16-byte vectors where aligned) while the current one is multiplied from shared memory.
// Compute: tensor cores through WMMA (fp16, bf16, and fp32 as TF32) or exact FMAs (fp32, fp64).
// gridDim.z splits K into chunks of k_chunk (a multiple of BK); the epilogue gets the chunk index
// so callers can write partial sums and reduce them in a fixed order (deterministic).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>

#include "kernels/common/launch.cuh"

namespace taskkernels::cuda {

// ---- numeric helpers -------------------------------------------------------------------------
template <class T>
struct Num {
  using acc = float;
  static __device__ __forceinline__ float to_acc(T x) { return static_cast<float>(x); }
  static __device__ __forceinline__ T from_acc(float x) { return static_cast<T>(x); }
  static __device__ __forceinline__ T zero() { return T(0); }
};
template <>
struct Num<__half> {
  using acc = float;
  static __device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_acc(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ __half zero() { return __float2half_rn(0.f); }
};
template <>
struct Num<__nv_bfloat16> {
  using acc = float;
  static __device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_acc(float x) { return __float2bfloat16_rn(x); }
  static __device__ __forceinline__ __nv_bfloat16 zero() { return __float2bfloat16_rn(0.f); }
};
template <>
struct Num<double> {
  using acc = double;
  static __device__ __forceinline__ double to_acc(double x) { return x; }
  static __device__ __forceinline__ double from_acc(double x) { return x; }
  static __device__ __forceinline__ double zero() { return 0.0; }
};

__device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// Operand helpers: V zeros (outside the operand), and one 16-byte read-only load.
template <int V, class T>
__device__ __forceinline__ void fill_zero(T* dst) {
#pragma unroll
  for (int j = 0; j < V; ++j) dst[j] = Num<T>::zero();
}
template <class T>
__device__ __forceinline__ void load16(const T* p, T* dst) {
  *reinterpret_cast<uint4*>(dst) = __ldg(reinterpret_cast<const uint4*>(p));
}

// ---- a row-major operand with remapped rows ---------------------------------------------------
// Row r lives at (r / group) * group_stride + (row_offset + r % group) * row_stride: plain
// row-major with group = rows, or the patch rows of a (B, R, D) tensor that skips a [CLS] row.
template <class T>
struct RowsOperand {
  const T* ptr;
  int64_t rows, cols;
  int64_t group, group_stride, row_offset, row_stride;

  template <int V>
  __device__ __forceinline__ void load(int64_t r, int64_t c, T* dst) const {
    if (r >= rows || c >= cols) return fill_zero<V>(dst);
    const int64_t g = r / group;
    const T* p = ptr + g * group_stride + (row_offset + (r - g * group)) * row_stride + c;
    if (c + V <= cols && aligned16(p)) return load16(p, dst);
#pragma unroll
    for (int j = 0; j < V; ++j) dst[j] = (c + j < cols) ? p[j] : Num<T>::zero();
  }
};

// ---- tile configuration ----------------------------------------------------------------------
template <class T, bool TC>
struct TileConfig {
  static constexpr int BM = 128, BN = 64, THREADS = 128;
  static constexpr int V = 16 / sizeof(T);  // elements per 16-byte vector
  static constexpr int BK = sizeof(T) == 8 ? 16 : 32;
  static constexpr int LDA = BK + V;  // +16 bytes per row: fewer bank conflicts, rows stay 16B aligned
  static constexpr int LDB = BN + V;
  static constexpr int LDC = BN + 4;  // float staging of the accumulators (TC only)
  static constexpr size_t A_BYTES = size_t(BM) * LDA * sizeof(T);
  static constexpr size_t B_BYTES = size_t(BK) * LDB * sizeof(T);
  static constexpr size_t C_BYTES = TC ? size_t(BM) * LDC * sizeof(float) : 0;
  static constexpr size_t SMEM = (A_BYTES + B_BYTES) > C_BYTES ? (A_BYTES + B_BYTES) : C_BYTES;
  static constexpr int A_VECS = BM * BK / V / THREADS;
  static constexpr int B_VECS = BK * BN / V / THREADS;
  static_assert(A_VECS * V * THREADS == BM * BK, "A tile must split evenly");
  static_assert(B_VECS * V * THREADS == BK * BN, "B tile must split evenly");
  static_assert(SMEM <= 48 * 1024, "static shared memory limit");
};

template <class T>
struct WmmaType {
  using type = T;
  static constexpr int K = 16;
};
template <>
struct WmmaType<float> {
  using type = nvcuda::wmma::precision::tf32;
  static constexpr int K = 8;
};

// ---- the kernel ------------------------------------------------------------------------------
template <class T, bool TC, class OpA, bool A_K, class OpB, bool B_K, class Epi>
__global__ void __launch_bounds__(128)
    tile_gemm_kernel(int64_t M, int64_t N, int64_t K, int64_t k_chunk, OpA opa, OpB opb, Epi epi) {
  using Cfg = TileConfig<T, TC>;
  using Acc = typename Num<T>::acc;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, V = Cfg::V, NT = Cfg::THREADS;
  constexpr int LDA = Cfg::LDA, LDB = Cfg::LDB;

  __shared__ __align__(128) unsigned char smem[Cfg::SMEM];
  T* As = reinterpret_cast<T*>(smem);
  T* Bs = reinterpret_cast<T*>(smem + Cfg::A_BYTES);

  const int tid = threadIdx.x;
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  const int64_t n0 = int64_t(blockIdx.y) * BN;
  const int64_t kb = int64_t(blockIdx.z) * k_chunk;
  const int64_t ke = (kb + k_chunk < K) ? kb + k_chunk : K;

  uint4 ra[Cfg::A_VECS];
  uint4 rb[Cfg::B_VECS];

  auto global_load = [&](int64_t k0) {
#pragma unroll
    for (int i = 0; i < Cfg::A_VECS; ++i) {
      const int v = tid + i * NT;
      T* dst = reinterpret_cast<T*>(&ra[i]);
      if constexpr (A_K) {
        opa.template load<V>(m0 + v / (BK / V), k0 + (v % (BK / V)) * V, dst);
      } else {
        opa.template load<V>(k0 + v / (BM / V), m0 + (v % (BM / V)) * V, dst);
      }
    }
#pragma unroll
    for (int i = 0; i < Cfg::B_VECS; ++i) {
      const int v = tid + i * NT;
      T* dst = reinterpret_cast<T*>(&rb[i]);
      if constexpr (B_K) {
        opb.template load<V>(n0 + v / (BK / V), k0 + (v % (BK / V)) * V, dst);
      } else {
        opb.template load<V>(k0 + v / (BN / V), n0 + (v % (BN / V)) * V, dst);
      }
    }
  };

  auto shared_store = [&]() {
#pragma unroll
    for (int i = 0; i < Cfg::A_VECS; ++i) {
      const int v = tid + i * NT;
      if constexpr (A_K) {
        *reinterpret_cast<uint4*>(As + (v / (BK / V)) * LDA + (v % (BK / V)) * V) = ra[i];
      } else {
        const T* src = reinterpret_cast<const T*>(&ra[i]);
        const int kk = v / (BM / V), mm = (v % (BM / V)) * V;
#pragma unroll
        for (int j = 0; j < V; ++j) As[(mm + j) * LDA + kk] = src[j];
      }
    }
#pragma unroll
    for (int i = 0; i < Cfg::B_VECS; ++i) {
      const int v = tid + i * NT;
      if constexpr (B_K) {
        const T* src = reinterpret_cast<const T*>(&rb[i]);
        const int nn = v / (BK / V), kk = (v % (BK / V)) * V;
#pragma unroll
        for (int j = 0; j < V; ++j) Bs[(kk + j) * LDB + nn] = src[j];
      } else {
        *reinterpret_cast<uint4*>(Bs + (v / (BN / V)) * LDB + (v % (BN / V)) * V) = rb[i];
      }
    }
  };

  if constexpr (TC) {
    namespace wmma = nvcuda::wmma;
    using In = typename WmmaType<T>::type;
    constexpr int FK = WmmaType<T>::K;
    const int warp = tid / 32, wm = warp / 2, wn = warp % 2;  // warp tile 64 x 32
    wmma::fragment<wmma::accumulator, 16, 16, FK, float> acc[4][2];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

    if (kb < ke) global_load(kb);
    for (int64_t k0 = kb; k0 < ke; k0 += BK) {
      shared_store();
      __syncthreads();
      if (k0 + BK < ke) global_load(k0 + BK);
#pragma unroll
      for (int kk = 0; kk < BK; kk += FK) {
        wmma::fragment<wmma::matrix_a, 16, 16, FK, In, wmma::row_major> a[4];
        wmma::fragment<wmma::matrix_b, 16, 16, FK, In, wmma::row_major> b[2];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          wmma::load_matrix_sync(a[i], As + (wm * 64 + i * 16) * LDA + kk, LDA);
          if constexpr (sizeof(T) == 4) {
#pragma unroll
            for (int e = 0; e < a[i].num_elements; ++e) a[i].x[e] = wmma::__float_to_tf32(a[i].x[e]);
          }
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          wmma::load_matrix_sync(b[j], Bs + kk * LDB + wn * 32 + j * 16, LDB);
          if constexpr (sizeof(T) == 4) {
#pragma unroll
            for (int e = 0; e < b[j].num_elements; ++e) b[j].x[e] = wmma::__float_to_tf32(b[j].x[e]);
          }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }

    // Stage the accumulators through shared memory so the epilogue walks rows with n fastest
    // (coalesced writes) and knows each element's (m, n).
    float* Cs = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(Cs + (wm * 64 + i * 16) * Cfg::LDC + wn * 32 + j * 16, acc[i][j],
                                Cfg::LDC, wmma::mem_row_major);
    __syncthreads();
    for (int idx = tid; idx < BM * BN; idx += NT) {
      const int r = idx / BN, c = idx % BN;
      const int64_t m = m0 + r, n = n0 + c;
      if (m < M && n < N) epi(m, n, Cs[r * Cfg::LDC + c], int(blockIdx.z));
    }
  } else {
    // Exact FMAs: thread (tm, tn) owns rows tm + 16 i and columns tn + 8 j.
    const int tm = tid / 8, tn = tid % 8;
    Acc acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = Acc(0);

    if (kb < ke) global_load(kb);
    for (int64_t k0 = kb; k0 < ke; k0 += BK) {
      shared_store();
      __syncthreads();
      if (k0 + BK < ke) global_load(k0 + BK);
#pragma unroll 4
      for (int k = 0; k < BK; ++k) {
        Acc a[8], b[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i] = Num<T>::to_acc(As[(tm + 16 * i) * LDA + k]);
#pragma unroll
        for (int j = 0; j < 8; ++j) b[j] = Num<T>::to_acc(Bs[k * LDB + tn + 8 * j]);
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int64_t m = m0 + tm + 16 * i, n = n0 + tn + 8 * j;
        if (m < M && n < N) epi(m, n, acc[i][j], int(blockIdx.z));
      }
  }
}

// Launches tile_gemm_kernel over an M x N output with K split into `splits` chunks.
template <class T, bool TC, bool A_K, bool B_K, class OpA, class OpB, class Epi>
cudaError_t launch_tile_gemm(int64_t M, int64_t N, int64_t K, int64_t k_chunk, int64_t splits,
                             const OpA& opa, const OpB& opb, const Epi& epi, cudaStream_t stream) {
  using Cfg = TileConfig<T, TC>;
  if (M <= 0 || N <= 0 || splits <= 0) return cudaSuccess;
  const int64_t gm = (M + Cfg::BM - 1) / Cfg::BM, gn = (N + Cfg::BN - 1) / Cfg::BN;
  if (gn > 65535 || splits > 65535 || gm > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid{unsigned(gm), unsigned(gn), unsigned(splits)};
  return launch_kernel(tile_gemm_kernel<T, TC, OpA, A_K, OpB, B_K, Epi>, grid, Cfg::THREADS, 0, stream, M, N, K, k_chunk, opa, opb, epi);
}

// K chunk (a multiple of the tile's BK) for `splits` pieces of K.
template <class T, bool TC>
inline int64_t k_chunk_for(int64_t K, int64_t splits) {
  constexpr int64_t BK = TileConfig<T, TC>::BK;
  const int64_t per = (K + splits - 1) / splits;
  return ((per + BK - 1) / BK) * BK;
}

}  // namespace taskkernels::cuda
