// Attention backward (plain and masked attention), exact and deterministic: every gradient
// element is a sum in a fixed order, no atomics.
//
//   1. delta[i] = dO_i . O_i                                      (one warp per query row)
//   2. dK, dV: a block per (b, key/value head, tile of BN keys); the query tiles of BM of each
//      query head reading that key/value head (grouped-query attention: H / Hk of them, in
//      order) stream through shared memory; P and dS = P (dP - delta) are recomputed from the saved lse for each
//      (query tile, key tile) pair, and dV += P^T dO, dK += dS^T Q accumulate in registers.
//   3. dQ (and dbias): a block per (b, h, tile of BM queries); key tiles stream through; the same
//      P and dS recomputed; dQ += dS K in registers; dbias = dS written once per element.
// Attention dropout is replayed from the seed (common/dropout.h): P Z feeds dV, P (Z dP - delta)
// is dS.
//
// The two passes recompute S twice instead of accumulating dQ with atomics (FlashAttention-2's
// choice), which makes the result bit-for-bit repeatable. SIMT FMA arithmetic in fp32 (fp64 for
// fp64 inputs): fp32, fp64, and fp16/bf16 head dimensions above 128 (up to kMaxAttentionHeadDim);
// fp16/bf16 up to 128 run passes 2 and 3 on tensor cores (backward_mma.cu).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "common/dropout.h"
#include "kernels/attention/attention.h"
#include "kernels/attention/mask_tiles.cuh"
#include "kernels/common/tile_gemm.cuh"  // Num<T>
#include "kernels/common/launch.cuh"

namespace taskkernels::cuda {
namespace {

constexpr int kThreads = 256;

template <class A>
struct Consts;
template <>
struct Consts<float> {
  static constexpr float log2e = 1.4426950408889634f;
};
template <>
struct Consts<double> {
  static constexpr double log2e = 1.4426950408889634;
};
__device__ __forceinline__ float exp2_(float x) { return exp2f(x); }
__device__ __forceinline__ double exp2_(double x) { return exp2(x); }

// ---- 1. delta = rowsum(dO * O) ------------------------------------------------------------------
template <class T, class A>
__global__ void __launch_bounds__(kThreads) delta_kernel(AttentionBackwardParams bp, A* __restrict__ delta) {
  const AttentionParams& p = bp.fwd;
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;  // (b, h, i) flattened
  if (row >= p.B * p.H * p.Nq) return;
  const int64_t i = row % p.Nq, bh = row / p.Nq, h = bh % p.H, b = bh / p.H;
  const T* o = static_cast<const T*>(p.out) + row * p.D;  // out is contiguous
  const T* g = static_cast<const T*>(bp.grad_out) + b * bp.grad_out_stride[0] + h * bp.grad_out_stride[1] +
               i * bp.grad_out_stride[2];
  A sum = A(0);
  for (int64_t d = lane; d < p.D; d += 32) sum += Num<T>::to_acc(o[d]) * Num<T>::to_acc(g[d * bp.grad_out_stride[3]]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (lane == 0) delta[row] = sum;
}

// ---- shared pieces of passes 2 and 3 ------------------------------------------------------------

// Shared memory of one (query tile, key tile) step. Rows padded by one element (LD = HD + 1) so
// that threads walking down a column hit different banks.
template <class A, int HD, int BM, int BN>
struct Tiles {
  static constexpr int LD = HD + 1, LDS = BN + 1;
  A q[BM][LD];   // Q rows of the query tile (zero past Nq and past D)
  A go[BM][LD];  // dO rows
  A k[BN][LD];   // K rows of the key tile (zero past Nk and past D)
  A v[BN][LD];   // V rows
  A p[BM][LDS];  // P, recomputed
  A ds[BM][LDS]; // dS = P (dP - delta)
  A lse2[BM];    // lse in base 2 (-inf: a row that saw nothing)
  A delta[BM];
};

// rows [row0, row0 + R) of a (n, d) strided tensor into dst[R][LD], zero outside [0, n) x [0, D).
template <class T, class A, int R, int HD, int LD>
__device__ __forceinline__ void load_rows(A (*dst)[LD], const T* __restrict__ src, int64_t row0, int64_t n,
                                          int64_t D, int64_t s_n, int64_t s_d) {
  for (int idx = threadIdx.x; idx < R * HD; idx += kThreads) {
    const int r = idx / HD, d = idx % HD;
    const int64_t row = row0 + r;
    dst[r][d] = (row < n && d < D) ? Num<T>::to_acc(src[row * s_n + d * s_d]) : A(0);
  }
}

// With Q, dO, lse2, delta, K and V of the pair in shared memory: P and dS into t.p, t.ds (and
// dS into dbias when asked). Ends with a barrier.
template <class T, class A, int HD, int BM, int BN>
__device__ void recompute_p_ds(const AttentionBackwardParams& bp, Tiles<A, HD, BM, BN>& t, int64_t b, int64_t h,
                               int64_t m0, int64_t n0, bool write_dbias) {
  const AttentionParams& p = bp.fwd;
  const A log2e = Consts<A>::log2e, sl = A(p.scale) * log2e;
  const int64_t shift = p.Nk - p.Nq;
  for (int e = threadIdx.x; e < BM * BN; e += kThreads) {
    const int r = e / BN, c = e % BN;
    const int64_t i = m0 + r, j = n0 + c;
    A pv = A(0), dsv = A(0);
    const A l2 = t.lse2[r];
    const bool visible = i < p.Nq && j < p.Nk && l2 != -INFINITY && !(p.causal && j > i + shift) &&
                         !(p.key_padding && p.key_padding[b * p.kp_stride[0] + j * p.kp_stride[1]]) &&
                         !((tile_blocked_bits(p, b, i, n0, BN) >> c) & 1);
    if (visible) {
      A s = A(0), dp = A(0);
      constexpr int kChunk = HD < kAttentionDotChunk ? HD : kAttentionDotChunk;  // attention_params.h
#pragma unroll
      for (int d0 = 0; d0 < HD; d0 += kChunk) {
        A sc = A(0), dpc = A(0);
#pragma unroll 8
        for (int d = d0; d < d0 + kChunk; ++d) {
          sc += t.q[r][d] * t.k[c][d];
          dpc += t.go[r][d] * t.v[c][d];
        }
        s += sc;
        dp += dpc;
      }
      s *= sl;
      if (p.bias) {
        const int64_t idx = b * p.bias_stride[0] + h * p.bias_stride[1] + i * p.bias_stride[2] + j * p.bias_stride[3];
        const A bv = p.bias_is_float32 ? A(static_cast<const float*>(p.bias)[idx])
                                       : Num<T>::to_acc(static_cast<const T*>(p.bias)[idx]);
        s += bv * log2e;
      }
      const A x = s - l2;
      pv = exp2_(x < A(0) ? x : A(0));  // round-off can push a recomputed probability above 1
      if (p.dropout_p > 0) {
        // Z = kept / (1 - p): out = (P Z) V, so dV = (P Z)^T dO and dS = P (Z dP - delta).
        const bool keep = dropout_keep(p.seed, dropout_threshold(p.dropout_p),
                                       (uint64_t(b * p.H + h) * uint64_t(p.Nq) + uint64_t(i)) * uint64_t(p.Nk) + uint64_t(j));
        const A z = keep ? A(1.0 / (1.0 - p.dropout_p)) : A(0);
        dsv = pv * (dp * z - t.delta[r]);
        pv *= z;
      } else {
        dsv = pv * (dp - t.delta[r]);
      }
    }
    t.p[r][c] = pv;
    t.ds[r][c] = dsv;
    if (write_dbias && i < p.Nq && j < p.Nk)
      static_cast<A*>(bp.dbias)[((b * p.H + h) * p.Nq + i) * p.Nk + j] = dsv;
  }
  __syncthreads();
}

// Q, dO, lse2 and delta of query tile m0 into shared memory (no barrier).
template <class T, class A, int HD, int BM, int BN>
__device__ __forceinline__ void load_query_tile(const AttentionBackwardParams& bp, Tiles<A, HD, BM, BN>& t,
                                                const A* __restrict__ delta, int64_t b, int64_t h, int64_t m0) {
  const AttentionParams& p = bp.fwd;
  const T* qg = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* gg = static_cast<const T*>(bp.grad_out) + b * bp.grad_out_stride[0] + h * bp.grad_out_stride[1];
  load_rows<T, A, BM, HD, Tiles<A, HD, BM, BN>::LD>(t.q, qg, m0, p.Nq, p.D, p.q_stride[2], p.q_stride[3]);
  load_rows<T, A, BM, HD, Tiles<A, HD, BM, BN>::LD>(t.go, gg, m0, p.Nq, p.D, bp.grad_out_stride[2], bp.grad_out_stride[3]);
  const A* lse = static_cast<const A*>(p.lse) + (b * p.H + h) * p.Nq;
  const A* dl = delta + (b * p.H + h) * p.Nq;
  for (int r = threadIdx.x; r < BM; r += kThreads) {
    const int64_t i = m0 + r;
    t.lse2[r] = i < p.Nq ? lse[i] * Consts<A>::log2e : A(-INFINITY);
    t.delta[r] = i < p.Nq ? dl[i] : A(0);
  }
}

// K and V rows of key tile n0 of key/value head hk into shared memory (no barrier).
template <class T, class A, int HD, int BM, int BN>
__device__ __forceinline__ void load_key_tile(const AttentionParams& p, Tiles<A, HD, BM, BN>& t, int64_t b, int64_t hk,
                                              int64_t n0) {
  const T* kg = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* vg = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  load_rows<T, A, BN, HD, Tiles<A, HD, BM, BN>::LD>(t.k, kg, n0, p.Nk, p.D, p.k_stride[2], p.k_stride[3]);
  load_rows<T, A, BN, HD, Tiles<A, HD, BM, BN>::LD>(t.v, vg, n0, p.Nk, p.D, p.v_stride[2], p.v_stride[3]);
}

// ---- 2. dK, dV ----------------------------------------------------------------------------------
template <class T, class A, int HD, int BM, int BN>
__global__ void __launch_bounds__(kThreads) dkdv_kernel(AttentionBackwardParams bp, const A* __restrict__ delta) {
  unsigned char* smem_raw = dynamic_smem();
  auto& t = *reinterpret_cast<Tiles<A, HD, BM, BN>*>(smem_raw);
  const AttentionParams& p = bp.fwd;
  const int64_t b = blockIdx.z, hk = blockIdx.y, n0 = int64_t(blockIdx.x) * BN;
  const int64_t nvalid = min(int64_t(BN), p.Nk - n0), shift = p.Nk - p.Nq, group = p.H / p.Hk;

  // Thread -> (key c, columns d = sub + TPK * u).
  constexpr int TPK = kThreads / BN, COLS = HD / TPK;
  static_assert(kThreads % BN == 0 && HD % TPK == 0, "tile shape");
  const int c = threadIdx.x / TPK, sub = threadIdx.x % TPK;
  A dk[COLS], dv[COLS];
#pragma unroll
  for (int u = 0; u < COLS; ++u) dk[u] = dv[u] = A(0);

  load_key_tile<T, A, HD, BM, BN>(p, t, b, hk, n0);
  // Causal: queries before n0 - shift see none of these keys.
  const int64_t q_first = p.causal ? max(int64_t(0), n0 - shift) : 0;
  // The query heads sharing this key/value head (one without grouped-query attention), in order.
  for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    for (int64_t m0 = q_first / BM * BM; m0 < p.Nq; m0 += BM) {
      if (pair_blocked(p, b, m0, min(int64_t(BM), p.Nq - m0), n0, nvalid)) continue;
      load_query_tile<T, A, HD, BM, BN>(bp, t, delta, b, h, m0);
      __syncthreads();
      recompute_p_ds<T, A, HD, BM, BN>(bp, t, b, h, m0, n0, false);
      for (int r = 0; r < BM; ++r) {
        const A pr = t.p[r][c], dsr = t.ds[r][c];
#pragma unroll
        for (int u = 0; u < COLS; ++u) {
          const int d = sub + TPK * u;
          dv[u] += pr * t.go[r][d];
          dk[u] += dsr * t.q[r][d];
        }
      }
      __syncthreads();  // before the next query tile overwrites Q, dO, P, dS
    }
  }

  const int64_t j = n0 + c;
  if (j < p.Nk) {
    T* dkg = static_cast<T*>(bp.dk) + ((b * p.Hk + hk) * p.Nk + j) * p.D;
    T* dvg = static_cast<T*>(bp.dv) + ((b * p.Hk + hk) * p.Nk + j) * p.D;
    const A scale = A(p.scale);
#pragma unroll
    for (int u = 0; u < COLS; ++u) {
      const int d = sub + TPK * u;
      if (d < p.D) {
        dkg[d] = Num<T>::from_acc(dk[u] * scale);
        dvg[d] = Num<T>::from_acc(dv[u]);
      }
    }
  }
}

// ---- 3. dQ (and dbias) --------------------------------------------------------------------------
template <class T, class A, int HD, int BM, int BN>
__global__ void __launch_bounds__(kThreads) dq_kernel(AttentionBackwardParams bp, const A* __restrict__ delta) {
  unsigned char* smem_raw = dynamic_smem();
  auto& t = *reinterpret_cast<Tiles<A, HD, BM, BN>*>(smem_raw);
  const AttentionParams& p = bp.fwd;
  const int64_t b = blockIdx.z, h = blockIdx.y, m0 = int64_t(blockIdx.x) * BM;
  const int64_t mvalid = min(int64_t(BM), p.Nq - m0), shift = p.Nk - p.Nq;

  constexpr int TPQ = kThreads / BM, COLS = HD / TPQ;
  static_assert(kThreads % BM == 0 && HD % TPQ == 0, "tile shape");
  const int r = threadIdx.x / TPQ, sub = threadIdx.x % TPQ;
  A dq[COLS];
#pragma unroll
  for (int u = 0; u < COLS; ++u) dq[u] = A(0);

  load_query_tile<T, A, HD, BM, BN>(bp, t, delta, b, h, m0);
  // dbias arrives zero-filled: pairs skipped below keep their zeros.
  const bool write_dbias = bp.dbias != nullptr;
  // Causal: keys past the tile's last row's limit are invisible to all of it.
  const int64_t kend = p.causal ? min(p.Nk, max(int64_t(0), m0 + mvalid + shift)) : p.Nk;
  for (int64_t n0 = 0; n0 < kend; n0 += BN) {
    if (pair_blocked(p, b, m0, mvalid, n0, min(int64_t(BN), p.Nk - n0))) continue;
    load_key_tile<T, A, HD, BM, BN>(p, t, b, kv_head(p, h), n0);
    __syncthreads();
    recompute_p_ds<T, A, HD, BM, BN>(bp, t, b, h, m0, n0, write_dbias);
    for (int c = 0; c < BN; ++c) {
      const A dsr = t.ds[r][c];
#pragma unroll
      for (int u = 0; u < COLS; ++u) dq[u] += dsr * t.k[c][sub + TPQ * u];
    }
    __syncthreads();  // before the next key tile overwrites K, V, P, dS
  }

  const int64_t i = m0 + r;
  if (i < p.Nq) {
    T* dqg = static_cast<T*>(bp.dq) + ((b * p.H + h) * p.Nq + i) * p.D;
    const A scale = A(p.scale);
#pragma unroll
    for (int u = 0; u < COLS; ++u) {
      const int d = sub + TPQ * u;
      if (d < p.D) dqg[d] = Num<T>::from_acc(dq[u] * scale);
    }
  }
}

// ---- launch -------------------------------------------------------------------------------------
// Pass 1, delta = rowsum(dO * O), for either implementation of passes 2 and 3.
template <class T, class A>
cudaError_t launch_delta(const AttentionBackwardParams& bp, A* delta, cudaStream_t stream) {
  const AttentionParams& p = bp.fwd;
  const int64_t rows = p.B * p.H * p.Nq;
  const int64_t row_blocks = (rows + kThreads / 32 - 1) / (kThreads / 32);
  if (row_blocks > 0x7fffffff) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  return launch_kernel(delta_kernel<T, A>, unsigned(row_blocks), kThreads, 0, stream, bp, delta);
}

template <class T, class A, int HD, int BM, int BN>
cudaError_t launch(const AttentionBackwardParams& bp, A* delta, cudaStream_t stream) {
  const AttentionParams& p = bp.fwd;
  cudaError_t err = launch_delta<T, A>(bp, delta, stream);
  if (err != cudaSuccess) return err;

  constexpr size_t smem = sizeof(Tiles<A, HD, BM, BN>);
  if ((err = allow_dynamic_smem<dkdv_kernel<T, A, HD, BM, BN>, smem>()) != cudaSuccess) return err;
  if ((err = allow_dynamic_smem<dq_kernel<T, A, HD, BM, BN>, smem>()) != cudaSuccess) return err;
  if (p.Nk > 0) {
    const dim3 grid{unsigned((p.Nk + BN - 1) / BN), unsigned(p.Hk), unsigned(p.B)};
    if ((err = launch_kernel(dkdv_kernel<T, A, HD, BM, BN>, grid, kThreads, smem, stream, bp, delta)) != cudaSuccess) return err;
  }
  if (p.Nq > 0) {
    const dim3 grid{unsigned((p.Nq + BM - 1) / BM), unsigned(p.H), unsigned(p.B)};
    if ((err = launch_kernel(dq_kernel<T, A, HD, BM, BN>, grid, kThreads, smem, stream, bp, delta)) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// Tile sizes (BM queries, BN keys) by head dimension, within the 99 KB of shared memory a block
// can have on every GPU the wheels target (sm_86 and sm_89 have the least; allow_dynamic_smem
// checks): 41-84 KB.
template <class T, class A>
cudaError_t launch_head_dim(const AttentionBackwardParams& bp, void* delta, cudaStream_t stream) {
  A* dl = static_cast<A*>(delta);
  const int64_t D = bp.fwd.D;
  if constexpr (sizeof(T) == 2) {  // fp16 / bf16 come here only above head dim 128 (tensor cores below)
    return launch<T, A, 256, 16, 16>(bp, dl, stream);
  } else if constexpr (sizeof(A) == 4) {
    if (D <= 32) return launch<T, A, 32, 32, 64>(bp, dl, stream);
    if (D <= 64) return launch<T, A, 64, 32, 64>(bp, dl, stream);
    if (D <= 128) return launch<T, A, 128, 32, 32>(bp, dl, stream);
    return launch<T, A, 256, 16, 16>(bp, dl, stream);
  } else {
    if (D <= 32) return launch<T, A, 32, 32, 64>(bp, dl, stream);
    if (D <= 64) return launch<T, A, 64, 32, 32>(bp, dl, stream);
    if (D <= 128) return launch<T, A, 128, 16, 16>(bp, dl, stream);
    return launch<T, A, 256, 8, 8>(bp, dl, stream);
  }
}

}  // namespace

cudaError_t attention_backward(const AttentionBackwardParams& bp, void* delta, cudaStream_t stream) {
  const AttentionParams& p = bp.fwd;
  if (p.B * p.H == 0) return cudaSuccess;
  if (p.D > kMaxAttentionHeadDim || p.H > 65535 || p.B > 65535) return cudaErrorInvalidValue;
  // fp16 / bf16 up to head dim 128: passes 2 and 3 on tensor cores (backward_mma.cu).
  const bool tc = (p.dtype == AttnDType::kHalf || p.dtype == AttnDType::kBFloat16) && p.D <= 128;
  if (tc) {
    float* dl = static_cast<float*>(delta);
    const cudaError_t err = p.dtype == AttnDType::kHalf ? launch_delta<__half, float>(bp, dl, stream)
                                                        : launch_delta<__nv_bfloat16, float>(bp, dl, stream);
    return err != cudaSuccess ? err : attention_backward_mma(bp, dl, stream);
  }
  switch (p.dtype) {
    case AttnDType::kHalf: return launch_head_dim<__half, float>(bp, delta, stream);
    case AttnDType::kBFloat16: return launch_head_dim<__nv_bfloat16, float>(bp, delta, stream);
    case AttnDType::kFloat: return launch_head_dim<float, float>(bp, delta, stream);
    case AttnDType::kDouble: return launch_head_dim<double, double>(bp, delta, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace taskkernels::cuda
