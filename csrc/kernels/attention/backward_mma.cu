// Attention backward for fp16 / bf16 on tensor cores (FlashAttention-2's algorithm on mma.sync
// m16n8k16, fp32 accumulation), head dims up to 128. Deterministic like the exact kernels
// (backward.cu): two passes, every gradient element a sum in a fixed order, no atomics.
//
//   dK, dV: a block per (b, key/value head, 64 keys), a warp per 16 keys. For each query head of
//     the group and each query tile (BM queries, through shared memory):
//       S^T = K Q^T and dP^T = V dO^T (tensor cores), P^T and dS^T = P^T (dP^T - delta)
//       recomputed from the saved lse in registers, then dV += P^T dO and dK += dS^T Q (tensor
//       cores: the S^T accumulators are the A operand directly, as P is in the forward).
//   dQ (and dbias): a block per (b, head, 64 queries), a warp per 16 queries; key tiles of 64
//     stream through shared memory: S = Q K^T, dP = dO V^T, dS, dQ += dS K.
//
// The streamed tiles (Q and dO in the dK/dV pass, K and V in the dQ pass) are double-buffered:
// the next visible tile's cp.async copies are in flight while the current one is computed. Every
// mma operand comes from shared memory by ldmatrix (.trans where the tile's rows run along the
// product's k dimension).
//
// P and dS enter the second products rounded to the input dtype (as in FlashAttention-2); the
// accumulators are fp32. Masks, bias (and its gradient), causal, key padding, grouped-query
// heads, dropout replay and masked attention's tile skipping as in the exact kernels.
//
// Fragment layouts (kernels/common/ptx.cuh; g = lane / 4, t = lane % 4):
//   A (16x16, row):  a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
//   B (16x8,  col):  b0 (k 2t..2t+1, n g)  b1 (k 2t+8.., n g)
//   C (16x8, f32):   c0 c1 (g, 2t..2t+1)  c2 c3 (g+8, 2t..2t+1)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "common/dropout.h"
#include "kernels/attention/attention.h"
#include "kernels/attention/mma_common.cuh"
#include "kernels/attention/mask_tiles.cuh"
#include "kernels/common/launch.cuh"

namespace taskkernels::cuda {
namespace {

using tc::acc_as_a;
using tc::Tc;
using LdsmN = ptx::SM75_U32x4_LDSM_N;  // ldmatrix x4
using LdsmT = ptx::SM75_U16x8_LDSM_T;  // ldmatrix x4 .trans

constexpr int kWarps = 4, kThreads = kWarps * 32, kTile = 64;  // keys (dK/dV) or queries (dQ) per block
constexpr float kLog2e = 1.4426950408889634f;

// The score of (query i, key j) in base 2 before the lse: scale * s + bias.
template <class T>
__device__ __forceinline__ float biased(const AttentionParams& p, float s, int64_t b, int64_t h, int64_t i, int64_t j) {
  float x = s * float(p.scale) * kLog2e;
  if (p.bias) {
    const int64_t idx = b * p.bias_stride[0] + h * p.bias_stride[1] + i * p.bias_stride[2] + j * p.bias_stride[3];
    x += (p.bias_is_float32 ? static_cast<const float*>(p.bias)[idx] : Tc<T>::to_float(static_cast<const T*>(p.bias)[idx])) *
         kLog2e;
  }
  return x;
}

// P and dS of one (query i, key j) element from its score s and dP value dp (both raw
// accumulators); P is returned with dropout's keep factor applied (what dV needs).
template <class T>
__device__ __forceinline__ void p_ds(const AttentionParams& p, int64_t b, int64_t h, int64_t i, int64_t j, float s,
                                     float dp, float lse2, float delta, bool visible, float& pz, float& ds) {
  if (!visible || lse2 == -INFINITY) {
    pz = ds = 0.f;
    return;
  }
  const float x = biased<T>(p, s, b, h, i, j) - lse2;
  const float pv = exp2f(fminf(x, 0.f));  // round-off can push a recomputed probability above 1
  if (p.dropout_p > 0) {
    // Z = kept / (1 - p): out = (P Z) V, so dV = (P Z)^T dO and dS = P (Z dP - delta).
    const bool keep = dropout_keep(p.seed, dropout_threshold(p.dropout_p),
                                   (uint64_t(b * p.H + h) * uint64_t(p.Nq) + uint64_t(i)) * uint64_t(p.Nk) + uint64_t(j));
    const float z = keep ? float(1.0 / (1.0 - p.dropout_p)) : 0.f;
    ds = pv * (dp * z - delta);
    pz = pv * z;
  } else {
    ds = pv * (dp - delta);
    pz = pv;
  }
}

__device__ __forceinline__ bool key_visible(const AttentionParams& p, int64_t b, int64_t i, int64_t j, uint64_t blocked_word,
                                            int64_t n0) {
  return i < p.Nq && j < p.Nk && !(p.causal && j > i + (p.Nk - p.Nq)) &&
         !(p.key_padding && p.key_padding[b * p.kp_stride[0] + j * p.kp_stride[1]]) &&
         !((blocked_word >> (j - n0)) & 1);
}

// ---- dK, dV -------------------------------------------------------------------------------------
template <int HD, int BM>
struct KvSmem {
  static constexpr int LD = HD + 8;  // rows stay 16-byte aligned; ldmatrix conflict-free
  // K, V; then two stages of Q, dO and of the tile's lse (base 2), delta and blocked-key words.
  static constexpr size_t bytes(size_t elem) {
    return (2 * kTile + 4 * BM) * LD * elem + 2 * BM * (2 * sizeof(float) + sizeof(uint64_t));
  }
};

// rows [row0, row0 + R) of a strided (n, d) matrix into a tile of row stride HD + 8 (cp.async
// where it can; the caller commits and waits).
template <class T, int R, int HD>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t row0, int64_t n, int64_t D, int64_t s_n,
                                          int64_t s_d) {
  tc::load_rows_async<T, R, HD, HD + 8, kThreads>(dst, src, row0, n, D, s_n, s_d);
}

template <class T, int HD, int BM>
__global__ void __launch_bounds__(kThreads) dkdv_mma_kernel(AttentionBackwardParams bp, const float* __restrict__ delta) {
  constexpr int LD = KvSmem<HD, BM>::LD, KSTEPS = HD / 16, DTILES = HD / 8, QTILES = BM / 8, QT = BM * LD;
  static_assert(HD % 16 == 0 && BM % 16 == 0, "ldmatrix x4 loads 16 x 16 blocks");
  const AttentionParams& p = bp.fwd;
  unsigned char* smem = dynamic_smem();
  T* Ks = reinterpret_cast<T*>(smem);
  T* Vs = Ks + kTile * LD;
  T* Qs = Vs + kTile * LD;  // two stages of BM rows
  T* dOs = Qs + 2 * QT;     // two stages
  float* lse2s = reinterpret_cast<float*>(dOs + 2 * QT);  // [2][BM]
  float* dls = lse2s + 2 * BM;                            // [2][BM]
  uint64_t* wordss = reinterpret_cast<uint64_t*>(dls + 2 * BM);  // [2][BM]: per query, blocked bits of this key tile

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.z, hk = blockIdx.y, n0 = int64_t(blockIdx.x) * kTile;
  const int64_t nvalid = min(int64_t(kTile), p.Nk - n0), shift = p.Nk - p.Nq, group = p.H / p.Hk;
  const T* kg = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* vg = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];

  // The (query head, query tile) pairs of this key tile, u = 0..U-1: head hk * group + u / tiles,
  // queries from m_first + (u % tiles) * BM. Causal: earlier queries see none of these keys.
  const int64_t m_first = p.causal ? max(int64_t(0), n0 - shift) / BM * BM : 0;
  const int64_t tiles = m_first < p.Nq ? (p.Nq - m_first + BM - 1) / BM : 0, U = group * tiles;
  // The first pair from u on that the per-query mask does not block outright (block-uniform).
  auto next_pair = [&](int64_t u) {
    for (; u < U; ++u)
      if (!pair_blocked(p, b, m_first + (u % tiles) * BM, min(int64_t(BM), p.Nq - m_first - (u % tiles) * BM), n0,
                        nvalid))
        break;
    return u;
  };
  // Pair u's Q and dO tiles into stage st (cp.async), and its per-query lse, delta and blocked
  // bits into this thread's registers (thread r < BM holds query r's), read while the current pair
  // is computed and stored into the stage after it (store_side), so no thread waits on them.
  static_assert(BM <= kThreads, "one query's lse, delta and mask word per thread");
  float side_lse2 = -INFINITY, side_dl = 0.f;
  uint64_t side_word = ~uint64_t(0);
  auto load_pair = [&](int64_t u, int st) {
    const int64_t h = hk * group + u / tiles, m0 = m_first + (u % tiles) * BM;
    const T* qg = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
    const T* gg = static_cast<const T*>(bp.grad_out) + b * bp.grad_out_stride[0] + h * bp.grad_out_stride[1];
    load_tile<T, BM, HD>(Qs + st * QT, qg, m0, p.Nq, p.D, p.q_stride[2], p.q_stride[3]);
    load_tile<T, BM, HD>(dOs + st * QT, gg, m0, p.Nq, p.D, bp.grad_out_stride[2], bp.grad_out_stride[3]);
    const int64_t i = m0 + threadIdx.x;
    if (threadIdx.x < BM && i < p.Nq) {
      side_lse2 = static_cast<const float*>(p.lse)[(b * p.H + h) * p.Nq + i] * kLog2e;
      side_dl = delta[(b * p.H + h) * p.Nq + i];
      side_word = tile_blocked_bits(p, b, i, n0, nvalid);
    } else {
      side_lse2 = -INFINITY;
      side_dl = 0.f;
      side_word = ~uint64_t(0);
    }
  };
  auto store_side = [&](int st) {
    if (threadIdx.x < BM) {
      lse2s[st * BM + threadIdx.x] = side_lse2;
      dls[st * BM + threadIdx.x] = side_dl;
      wordss[st * BM + threadIdx.x] = side_word;
    }
  };

  float dk[DTILES][4], dv[DTILES][4];
#pragma unroll
  for (int d = 0; d < DTILES; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[d][e] = dv[d][e] = 0.f;

  // Prologue: K, V and the first pair in one group.
  int64_t u = next_pair(0);
  if (u < U) {
    load_tile<T, kTile, HD>(Ks, kg, n0, p.Nk, p.D, p.k_stride[2], p.k_stride[3]);
    load_tile<T, kTile, HD>(Vs, vg, n0, p.Nk, p.D, p.v_stride[2], p.v_stride[3]);
    load_pair(u, 0);
    store_side(0);
  }
  ptx::cp_async_commit_group();

  const T* kw = Ks + warp * 16 * LD + tc::a_ldsm<LD>(lane);  // this warp's 16 keys, as A fragments
  const T* vw = Vs + warp * 16 * LD + tc::a_ldsm<LD>(lane);
  const int b_ld = tc::b_ldsm<LD>(lane), bt_ld = tc::bt_ldsm<LD>(lane);
  const int64_t key[2] = {n0 + warp * 16 + g, n0 + warp * 16 + g + 8};
  int st = 0;
  while (u < U) {
    // The next pair's copies go into the other stage (its readers passed the loop's last barrier);
    // a group per pair, empty or not, so that waiting for all but the newest means this pair.
    const int64_t u1 = next_pair(u + 1);
    if (u1 < U) load_pair(u1, st ^ 1);
    ptx::cp_async_commit_group();
    ptx::cp_async_wait_group<1>();
    __syncthreads();  // this pair's tiles, from every thread, are in

    const int64_t h = hk * group + u / tiles, m0 = m_first + (u % tiles) * BM;
    const T* Qb = Qs + st * QT;
    const T* dOb = dOs + st * QT;
    const float* lse2 = lse2s + st * BM;
    const float* dl = dls + st * BM;
    const uint64_t* words = wordss + st * BM;

    // S^T = K Q^T and dP^T = V dO^T: this warp's 16 keys x BM queries (Q's and dO's rows run
    // along the queries: B fragments of two query tiles per ldmatrix).
    float s[QTILES][4], dp[QTILES][4];
#pragma unroll
    for (int qt = 0; qt < QTILES; ++qt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[qt][e] = dp[qt][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      uint32_t ka[4], va[4];
      LdsmN::copy(ka, kw + ks * 16);
      LdsmN::copy(va, vw + ks * 16);
#pragma unroll
      for (int qp = 0; qp < QTILES / 2; ++qp) {
        uint32_t qb[4], gb[4];
        LdsmN::copy(qb, Qb + qp * 16 * LD + ks * 16 + b_ld);
        LdsmN::copy(gb, dOb + qp * 16 * LD + ks * 16 + b_ld);
        tc::mma_x2<T>(s[2 * qp], s[2 * qp + 1], ka, qb);
        tc::mma_x2<T>(dp[2 * qp], dp[2 * qp + 1], va, gb);
      }
    }
    // P^T (with dropout's factor) into s, dS^T into dp.
#pragma unroll
    for (int qt = 0; qt < QTILES; ++qt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = qt * 8 + 2 * t + (e & 1);
        const int64_t i = m0 + r, j = key[e >> 1];
        float pz, ds;
        p_ds<T>(p, b, h, i, j, s[qt][e], dp[qt][e], lse2[r], dl[r], key_visible(p, b, i, j, words[r], n0), pz, ds);
        s[qt][e] = pz;
        dp[qt][e] = ds;
      }
    // dV += P^T dO, dK += dS^T Q: k = the tile's queries, 16 at a time (dO's and Q's rows run
    // along k: .trans gives the B fragments of two head tiles per ldmatrix).
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      uint32_t pa[4], da[4];
      acc_as_a<T>(pa, s[2 * kk], s[2 * kk + 1]);
      acc_as_a<T>(da, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
      for (int d2 = 0; d2 < DTILES / 2; ++d2) {
        uint32_t gb[4], qb[4];
        LdsmT::copy(gb, dOb + kk * 16 * LD + d2 * 16 + bt_ld);
        LdsmT::copy(qb, Qb + kk * 16 * LD + d2 * 16 + bt_ld);
        tc::mma_x2<T>(dv[2 * d2], dv[2 * d2 + 1], pa, gb);
        tc::mma_x2<T>(dk[2 * d2], dk[2 * d2 + 1], da, qb);
      }
    }
    if (u1 < U) store_side(st ^ 1);  // published by the next iteration's first barrier
    __syncthreads();  // every warp is done with this stage before the next pair's copies reuse it
    u = u1;
    st ^= 1;
  }

  // dK (times the scale), dV: (B, Hk, Nk, D) contiguous.
  const float scale = float(p.scale);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t j = key[r];
    if (j >= p.Nk) continue;
    T* dkr = static_cast<T*>(bp.dk) + ((b * p.Hk + hk) * p.Nk + j) * p.D;
    T* dvr = static_cast<T*>(bp.dv) + ((b * p.Hk + hk) * p.Nk + j) * p.D;
#pragma unroll
    for (int d = 0; d < DTILES; ++d)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t c = d * 8 + 2 * t + e;
        if (c < p.D) {
          dkr[c] = Tc<T>::from_float(dk[d][2 * r + e] * scale);
          dvr[c] = Tc<T>::from_float(dv[d][2 * r + e]);
        }
      }
  }
}

// ---- dQ (and dbias) -----------------------------------------------------------------------------
// BN = keys per tile of the dQ pass: 64, or 32 at head dim 128, where 64 would need 102 KB of
// shared memory (over sm_86/sm_89's 99 KB).
template <int HD, int BN>
struct QSmem {
  static constexpr int LD = HD + 8;
  static constexpr size_t bytes(size_t elem) { return (2 * kTile + 4 * BN) * LD * elem; }  // Q, dO, then K, V twice
};

template <class T, int HD, int BN>
__global__ void __launch_bounds__(kThreads, 2) dq_mma_kernel(AttentionBackwardParams bp, const float* __restrict__ delta) {
  constexpr int LD = QSmem<HD, BN>::LD, KSTEPS = HD / 16, DTILES = HD / 8, NTILES = BN / 8, TILE = kTile * LD,
                KVT = BN * LD;
  static_assert(HD % 16 == 0 && BN % 16 == 0 && 64 % BN == 0, "ldmatrix x4 loads 16 x 16 blocks; a key tile within a mask word");
  const AttentionParams& p = bp.fwd;
  unsigned char* smem = dynamic_smem();
  T* Qs = reinterpret_cast<T*>(smem);
  T* dOs = Qs + TILE;
  T* Ks = dOs + TILE;    // two stages of BN keys
  T* Vs = Ks + 2 * KVT;  // two stages

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.z, h = blockIdx.y, m0 = int64_t(blockIdx.x) * kTile;
  const int64_t mvalid = min(int64_t(kTile), p.Nq - m0), shift = p.Nk - p.Nq;
  const T* qg = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* gg = static_cast<const T*>(bp.grad_out) + b * bp.grad_out_stride[0] + h * bp.grad_out_stride[1];
  const T* kg = static_cast<const T*>(p.k) + b * p.k_stride[0] + kv_head(p, h) * p.k_stride[1];
  const T* vg = static_cast<const T*>(p.v) + b * p.v_stride[0] + kv_head(p, h) * p.v_stride[1];

  // This thread's two query rows, their lse (base 2) and delta.
  const int64_t row[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};
  float lse2[2], dl[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool in = row[r] < p.Nq;
    lse2[r] = in ? static_cast<const float*>(p.lse)[(b * p.H + h) * p.Nq + row[r]] * kLog2e : -INFINITY;
    dl[r] = in ? delta[(b * p.H + h) * p.Nq + row[r]] : 0.f;
  }
  float dq[DTILES][4];
#pragma unroll
  for (int d = 0; d < DTILES; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[d][e] = 0.f;

  float* dbias = static_cast<float*>(bp.dbias);  // zero-filled: skipped pairs keep their zeros
  // Causal: keys past the tile's last row's limit are invisible to all of it.
  const int64_t kend = p.causal ? min(p.Nk, max(int64_t(0), m0 + mvalid + shift)) : p.Nk;
  // The first key tile from n0 on that the per-query mask does not block outright (block-uniform).
  auto next_tile = [&](int64_t n0) {
    for (; n0 < kend; n0 += BN)
      if (!pair_blocked(p, b, m0, mvalid, n0, min(int64_t(BN), p.Nk - n0))) break;
    return min(n0, kend);
  };
  auto load_kv = [&](int64_t n0, int st) {
    load_tile<T, BN, HD>(Ks + st * KVT, kg, n0, p.Nk, p.D, p.k_stride[2], p.k_stride[3]);
    load_tile<T, BN, HD>(Vs + st * KVT, vg, n0, p.Nk, p.D, p.v_stride[2], p.v_stride[3]);
  };

  // Prologue: Q, dO and the first key tile in one group.
  int64_t n0 = next_tile(0);
  if (n0 < kend) {
    load_tile<T, kTile, HD>(Qs, qg, m0, p.Nq, p.D, p.q_stride[2], p.q_stride[3]);
    load_tile<T, kTile, HD>(dOs, gg, m0, p.Nq, p.D, bp.grad_out_stride[2], bp.grad_out_stride[3]);
    load_kv(n0, 0);
  }
  ptx::cp_async_commit_group();

  const T* qw = Qs + warp * 16 * LD + tc::a_ldsm<LD>(lane);  // this warp's 16 queries, as A fragments
  const T* gw = dOs + warp * 16 * LD + tc::a_ldsm<LD>(lane);
  const int b_ld = tc::b_ldsm<LD>(lane), bt_ld = tc::bt_ldsm<LD>(lane);
  int st = 0;
  while (n0 < kend) {
    // The next tile's copies into the other stage, a group per tile (as in the dK/dV pass).
    const int64_t n1 = next_tile(n0 + BN);
    if (n1 < kend) load_kv(n1, st ^ 1);
    ptx::cp_async_commit_group();
    ptx::cp_async_wait_group<1>();
    __syncthreads();  // this tile's copies, from every thread, are in

    const int64_t nvalid = min(int64_t(BN), p.Nk - n0);
    const T* Kb = Ks + st * KVT;
    const T* Vb = Vs + st * KVT;
    uint64_t words[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) words[r] = row[r] < p.Nq ? tile_blocked_bits(p, b, row[r], n0, nvalid) : ~uint64_t(0);

    // S = Q K^T, dP = dO V^T: this warp's 16 queries x BN keys (K's and V's rows run along the
    // keys: B fragments of two key tiles per ldmatrix).
    float s[NTILES][4], dp[NTILES][4];
#pragma unroll
    for (int nt = 0; nt < NTILES; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      uint32_t qa[4], ga[4];
      LdsmN::copy(qa, qw + ks * 16);
      LdsmN::copy(ga, gw + ks * 16);
#pragma unroll
      for (int np = 0; np < NTILES / 2; ++np) {
        uint32_t kb[4], vb[4];
        LdsmN::copy(kb, Kb + np * 16 * LD + ks * 16 + b_ld);
        LdsmN::copy(vb, Vb + np * 16 * LD + ks * 16 + b_ld);
        tc::mma_x2<T>(s[2 * np], s[2 * np + 1], qa, kb);
        tc::mma_x2<T>(dp[2 * np], dp[2 * np + 1], ga, vb);
      }
    }
    // dS into dp (and dbias).
#pragma unroll
    for (int nt = 0; nt < NTILES; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const int64_t i = row[r], j = n0 + nt * 8 + 2 * t + (e & 1);
        float pz, ds;
        p_ds<T>(p, b, h, i, j, s[nt][e], dp[nt][e], lse2[r], dl[r], key_visible(p, b, i, j, words[r], n0), pz, ds);
        dp[nt][e] = ds;
        if (dbias && i < p.Nq && j < p.Nk) dbias[((b * p.H + h) * p.Nq + i) * p.Nk + j] = ds;
      }
    // dQ += dS K: k = the tile's keys, 16 at a time (K's rows run along k: .trans gives the B
    // fragments of two head tiles per ldmatrix).
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t da[4];
      acc_as_a<T>(da, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
      for (int d2 = 0; d2 < DTILES / 2; ++d2) {
        uint32_t kb[4];
        LdsmT::copy(kb, Kb + kk * 16 * LD + d2 * 16 + bt_ld);
        tc::mma_x2<T>(dq[2 * d2], dq[2 * d2 + 1], da, kb);
      }
    }
    __syncthreads();  // every warp is done with this stage before the next tile's copies reuse it
    n0 = n1;
    st ^= 1;
  }

  const float scale = float(p.scale);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = row[r];
    if (i >= p.Nq) continue;
    T* dqr = static_cast<T*>(bp.dq) + ((b * p.H + h) * p.Nq + i) * p.D;
#pragma unroll
    for (int d = 0; d < DTILES; ++d)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t c = d * 8 + 2 * t + e;
        if (c < p.D) dqr[c] = Tc<T>::from_float(dq[d][2 * r + e] * scale);
      }
  }
}

// ---- launch -------------------------------------------------------------------------------------
template <class T, int HD, int BM, int BN>
cudaError_t launch(const AttentionBackwardParams& bp, const float* delta, cudaStream_t stream) {
  const AttentionParams& p = bp.fwd;
  cudaError_t err = cudaSuccess;
  if (p.Nk > 0) {
    constexpr size_t smem = KvSmem<HD, BM>::bytes(sizeof(T));
    if ((err = allow_dynamic_smem<dkdv_mma_kernel<T, HD, BM>, smem>()) != cudaSuccess) return err;
    const dim3 grid{unsigned((p.Nk + kTile - 1) / kTile), unsigned(p.Hk), unsigned(p.B)};
    if ((err = launch_kernel(dkdv_mma_kernel<T, HD, BM>, grid, kThreads, smem, stream, bp, delta)) != cudaSuccess) return err;
  }
  if (p.Nq > 0) {
    constexpr size_t smem = QSmem<HD, BN>::bytes(sizeof(T));
    if ((err = allow_dynamic_smem<dq_mma_kernel<T, HD, BN>, smem>()) != cudaSuccess) return err;
    const dim3 grid{unsigned((p.Nq + kTile - 1) / kTile), unsigned(p.H), unsigned(p.B)};
    if ((err = launch_kernel(dq_mma_kernel<T, HD, BN>, grid, kThreads, smem, stream, bp, delta)) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// BM = query tile of the dK/dV pass: 64 rows up to head dim 64, 32 above (the dK, dV accumulators
// of 16 keys x HD then take most of a thread's registers). BN = key tile of the dQ pass (QSmem).
template <class T>
cudaError_t launch_head_dim(const AttentionBackwardParams& bp, const float* delta, cudaStream_t stream) {
  const int64_t D = bp.fwd.D;
  if (D <= 32) return launch<T, 32, 64, 64>(bp, delta, stream);
  if (D <= 64) return launch<T, 64, 64, 64>(bp, delta, stream);
  if (D <= 80) return launch<T, 80, 16, 64>(bp, delta, stream);  // BM 32 spills 8 bytes on sm_80
  if (D <= 96) return launch<T, 96, 32, 64>(bp, delta, stream);
  return launch<T, 128, 32, 32>(bp, delta, stream);
}

}  // namespace

cudaError_t attention_backward_mma(const AttentionBackwardParams& bp, const float* delta, cudaStream_t stream) {
  const AttentionParams& p = bp.fwd;
  if (p.D > 128 || !(p.dtype == AttnDType::kHalf || p.dtype == AttnDType::kBFloat16)) return cudaErrorInvalidValue;
  return p.dtype == AttnDType::kHalf ? launch_head_dim<__half>(bp, delta, stream)
                                     : launch_head_dim<__nv_bfloat16>(bp, delta, stream);
}

}  // namespace taskkernels::cuda
