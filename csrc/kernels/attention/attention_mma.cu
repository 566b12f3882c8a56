// Tensor-core attention forward (fp16 / bf16), FlashAttention-2 style: a block owns 64 queries
// (16 per warp), K and V stream through shared memory 64 keys at a time, S = Q K^T and O += P V
// run on mma.sync m16n8k16 with fp32 accumulators, and the online softmax stays in registers
// (P goes from the S accumulators straight into the A operand of the PV product). Nothing
// Nq x Nk touches global memory.
//
// The load pipeline: Q, K and V tiles arrive by cp.async (16 bytes a copy, zero-filled past the
// head dimension), K and V double-buffered so that tile n + 1 is in flight while tile n is
// computed; operands go from shared memory to registers by ldmatrix (x4 for Q and K, x4.trans for
// V); the output tile is staged through shared memory and stored 16 bytes at a time. Rows that
// are strided or unaligned in the head dimension fall back to element loads and stores.
//
// Fragment layouts of mma.m16n8k16 and ldmatrix (kernels/common/ptx.cuh; g = lane / 4, t = lane % 4):
//   A (16x16, row):  a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
//   B (16x8,  col):  b0 (k 2t..2t+1, n g)  b1 (k 2t+8.., n g)
//   C (16x8, f32):   c0 c1 (g, 2t..2t+1)  c2 c3 (g+8, 2t..2t+1)
//   ldmatrix: lane l names row l % 8 of 8x8 matrix l / 8; register i of lane l holds matrix i's
//   (g, 2t..2t+1), or with .trans its (2t..2t+1, g).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "common/dropout.h"
#include "kernels/attention/attention.h"
#include "kernels/attention/mma_common.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/common/ptx.cuh"

namespace taskkernels::cuda {
namespace {

constexpr int kBlockM = 64, kBlockN = 64, kWarps = 4, kThreads = kWarps * 32;

template <class T>
using Mma = tc::Tc<T>;  // conversions and the mma of the element type (mma_common.cuh)

// kBlockM rows of a strided (n, d) matrix into a tile (row stride HD + 8), by cp.async where it can.
template <class T, int HD>
__device__ __forceinline__ void load_tile(T* __restrict__ dst, const T* __restrict__ src, int64_t row0,
                                          int64_t n_valid, int64_t D, int64_t s_n, int64_t s_d) {
  tc::load_rows_async<T, kBlockM, HD, HD + 8, kThreads>(dst, src, row0, n_valid, D, s_n, s_d);
}

// The first key tile from n0 on that some query of the block can see, or kend if none: with a
// per-query mask, tiles that every query of the block blocks are skipped (no loads, no math).
// Sets this thread's blocked-key words for its two rows and whether its whole warp blocks the
// tile. Block-uniform; when it returns a tile, at least one __syncthreads has passed since the
// call, so the buffer the tile goes into is no longer read.
__device__ __forceinline__ int64_t next_tile(int64_t n0, int64_t kend, const uint64_t* mb, int64_t mb_row,
                                             const int64_t (&row)[2], int64_t Nq, uint64_t (&blocked)[2],
                                             bool& warp_skip) {
  blocked[0] = blocked[1] = 0;
  warp_skip = false;
  if (n0 >= kend) return kend;
  if (!mb) {
    __syncthreads();
    return n0;
  }
  for (; n0 < kend; n0 += kBlockN) {
    const int64_t nvalid = min(int64_t(kBlockN), kend - n0);
    const uint64_t want = nvalid >= 64 ? ~uint64_t(0) : (uint64_t(1) << nvalid) - 1;
    // Rows past Nq count as blocking everything, so they never keep a tile alive.
#pragma unroll
    for (int r = 0; r < 2; ++r) blocked[r] = row[r] < Nq ? mb[row[r] * mb_row + n0 / 64] : ~uint64_t(0);
    const bool mine = (blocked[0] & want) == want && (blocked[1] & want) == want;
    if (!__syncthreads_and(mine)) {
      warp_skip = __all_sync(0xffffffffu, mine);
      return n0;
    }
  }
  return kend;
}

template <class T, int HD>
__global__ void __launch_bounds__(kThreads) attention_mma_kernel(AttentionParams p) {
  constexpr int LD = HD + 8;  // +16 bytes per row: rows stay 16-byte aligned, ldmatrix conflict-free
  constexpr int KSTEPS = HD / 16, DTILES = HD / 8, NTILES = kBlockN / 8, TILE = kBlockM * LD;
  static_assert(HD % 16 == 0 && DTILES % 2 == 0 && NTILES % 2 == 0, "ldmatrix x4 loads two 8-wide tiles");
  unsigned char* smem_raw = dynamic_smem();
  T* Qs = reinterpret_cast<T*>(smem_raw);  // the Q tile, later the output tile
  T* Ks = Qs + TILE;                       // two K buffers, then two V buffers
  T* Vs = Ks + 2 * TILE;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.z, h = blockIdx.y, m0 = int64_t(blockIdx.x) * kBlockM;
  const int64_t Nq = p.Nq, Nk = p.Nk, D = p.D, shift = Nk - Nq;
  const float kLog2e = 1.4426950408889634f;
  const float sscale = float(p.scale) * kLog2e;

  const T* qg = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* kg = static_cast<const T*>(p.k) + b * p.k_stride[0] + kv_head(p, h) * p.k_stride[1];
  const T* vg = static_cast<const T*>(p.v) + b * p.v_stride[0] + kv_head(p, h) * p.v_stride[1];

  // This thread's two query rows.
  const int64_t row[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  float acc_o[DTILES][4];
#pragma unroll
  for (int dt = 0; dt < DTILES; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_o[dt][e] = 0.f;

  // Attention dropout (common/dropout.h): probabilities counted in the normalizer, then kept
  // with 1 - p and scaled by 1 / (1 - p) before O += P V; element (b, h, i, j) keyed as on the CPU.
  const bool dropout = p.dropout_p > 0;
  const uint32_t threshold = dropout_threshold(p.dropout_p);
  const float keep_scale = dropout ? float(1.0 / (1.0 - p.dropout_p)) : 1.f;
  const uint64_t bh_index = uint64_t(b * p.H + h) * uint64_t(Nq);

  const int64_t last_row = min(Nq, m0 + kBlockM) - 1;
  const int64_t kend = p.causal ? max(int64_t(0), min(Nk, last_row + shift + 1)) : Nk;
  const bool* kpm = p.key_padding ? p.key_padding + b * p.kp_stride[0] : nullptr;
  const int64_t kp_stride = p.kp_stride[1];
  // The bias rows of this thread's two queries, computed once (rows past Nq read none).
  int64_t bias_row[2] = {0, 0};
  if (p.bias)
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if (row[r] < Nq) bias_row[r] = b * p.bias_stride[0] + h * p.bias_stride[1] + row[r] * p.bias_stride[2];
  const int64_t bias_col = p.bias_stride[3];

  // Per-query mask (masked attention): one 64-bit word of blocked keys per row and key tile.
  const uint64_t* mb = p.mask_bits ? p.mask_bits + b * p.mb_stride[0] : nullptr;
  static_assert(kBlockN == 64, "a key tile is one word of mask bits");

  // Prologue: Q (one group) and the first K/V tile (the next), then Q's fragments by ldmatrix
  // while K/V are in flight.
  uint64_t blocked[2];
  bool warp_skip;
  int64_t n0 = next_tile(0, kend, mb, p.mb_stride[1], row, Nq, blocked, warp_skip);
  uint32_t qa[KSTEPS][4];
  if (n0 < kend) {
    load_tile<T, HD>(Qs, qg, m0, Nq, D, p.q_stride[2], p.q_stride[3]);
    ptx::cp_async_commit_group();
    load_tile<T, HD>(Ks, kg, n0, kend, D, p.k_stride[2], p.k_stride[3]);
    load_tile<T, HD>(Vs, vg, n0, kend, D, p.v_stride[2], p.v_stride[3]);
    ptx::cp_async_commit_group();
    ptx::cp_async_wait_group<1>();
    __syncthreads();
    const T* q0 = Qs + warp * 16 * LD + tc::a_ldsm<LD>(lane);  // A fragments of this warp's rows
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) ptx::SM75_U32x4_LDSM_N::copy(qa[ks], q0 + ks * 16);
  }

  // This lane's ldmatrix offsets: K's rows run along the keys (S's N), V's along the keys (PV's K).
  const int k_ld = tc::b_ldsm<LD>(lane), v_ld = tc::bt_ldsm<LD>(lane);

  int buf = 0;
  while (n0 < kend) {
    // Start the next visible tile into the other buffer (its readers retired at next_tile's
    // barrier); every thread commits a group per tile, empty or not, so that waiting for all but
    // the newest one means this tile.
    uint64_t next_blocked[2];
    bool next_skip;
    const int64_t n1 = next_tile(n0 + kBlockN, kend, mb, p.mb_stride[1], row, Nq, next_blocked, next_skip);
    if (n1 < kend) {
      load_tile<T, HD>(Ks + (buf ^ 1) * TILE, kg, n1, kend, D, p.k_stride[2], p.k_stride[3]);
      load_tile<T, HD>(Vs + (buf ^ 1) * TILE, vg, n1, kend, D, p.v_stride[2], p.v_stride[3]);
    }
    ptx::cp_async_commit_group();
    ptx::cp_async_wait_group<1>();
    __syncthreads();  // this tile's copies, from every thread, are in

    if (!warp_skip) {  // else this warp's 16 queries block the whole tile
      const T* Kb = Ks + buf * TILE;
      const T* Vb = Vs + buf * TILE;

      // S = Q K^T for this warp's 16 rows x 64 keys.
      float s[NTILES][4];
#pragma unroll
      for (int nt = 0; nt < NTILES; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
#pragma unroll
      for (int ks = 0; ks < KSTEPS; ++ks)
#pragma unroll
        for (int np = 0; np < NTILES / 2; ++np) {
          uint32_t kb[4];  // b0 b1 of key tile 2np, then of 2np + 1
          ptx::SM75_U32x4_LDSM_N::copy(kb, Kb + np * 16 * LD + ks * 16 + k_ld);
          tc::mma_x2<T>(s[2 * np], s[2 * np + 1], qa[ks], kb);
        }

      // What this thread's rows may see of the tile, as one 64-bit word per row, built once per
      // tile: keys past kend, key padding (one ballot per 32 keys), the per-query mask and the
      // causal diagonal. Full tiles of unmasked attention skip it.
      const bool need_mask = n0 + kBlockN > kend || kpm || mb || (p.causal && n0 + kBlockN - 1 > m0 + shift);
      uint64_t visible[2] = {~uint64_t(0), ~uint64_t(0)};
      if (need_mask) {
        const int64_t nvalid = kend - n0;
        uint64_t keys = nvalid >= 64 ? ~uint64_t(0) : (uint64_t(1) << nvalid) - 1;
        if (kpm) {
          const int64_t j0 = n0 + lane, j1 = n0 + 32 + lane;
          const uint32_t pad0 = __ballot_sync(0xffffffffu, j0 < kend && kpm[j0 * kp_stride]);
          const uint32_t pad1 = __ballot_sync(0xffffffffu, j1 < kend && kpm[j1 * kp_stride]);
          keys &= ~(uint64_t(pad0) | (uint64_t(pad1) << 32));
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          visible[r] = keys & ~blocked[r];
          if (p.causal) {  // keys j <= i + shift: offsets 0..last within the tile
            const int64_t last = row[r] + shift - n0;
            visible[r] &= last >= 63 ? ~uint64_t(0) : last < 0 ? uint64_t(0) : (uint64_t(2) << last) - 1;
          }
        }
      }

      // Scale to base 2, add the bias, hide what is not visible.
#pragma unroll
      for (int nt = 0; nt < NTILES; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2, col = nt * 8 + 2 * t + (e % 2);
          float x = s[nt][e] * sscale;
          if (need_mask && !((visible[r] >> col) & 1)) {
            x = -INFINITY;
          } else if (p.bias && row[r] < Nq) {
            const int64_t idx = bias_row[r] + (n0 + col) * bias_col;
            const float bv = p.bias_is_float32 ? static_cast<const float*>(p.bias)[idx]
                                               : Mma<T>::to_float(static_cast<const T*>(p.bias)[idx]);
            x += bv * kLog2e;
          }
          s[nt][e] = x;
        }

      // Online softmax: row maxima across the quad of threads that share a row.
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mnew = fmaxf(m_run[r], mx);
        // With nothing visible yet (mnew = -inf) every p is 0 and alpha is irrelevant (O = 0).
        const float base = mnew == -INFINITY ? 0.f : mnew;
        const float alpha = m_run[r] == -INFINITY ? 0.f : exp2f(m_run[r] - base);
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) {
          s[nt][2 * r] = exp2f(s[nt][2 * r] - base);
          s[nt][2 * r + 1] = exp2f(s[nt][2 * r + 1] - base);
          sum += s[nt][2 * r] + s[nt][2 * r + 1];
        }
        l_run[r] = l_run[r] * alpha + sum;  // this thread's share; the quad is summed at the end
        m_run[r] = mnew;
        if (dropout && row[r] < Nq) {
          const uint64_t base = (bh_index + uint64_t(row[r])) * uint64_t(Nk);
#pragma unroll
          for (int nt = 0; nt < NTILES; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int64_t j = n0 + nt * 8 + 2 * t + e;
              const bool keep = j < Nk && dropout_keep(p.seed, threshold, base + uint64_t(j));
              s[nt][2 * r + e] = keep ? s[nt][2 * r + e] * keep_scale : 0.f;
            }
        }
#pragma unroll
        for (int dt = 0; dt < DTILES; ++dt) {
          acc_o[dt][2 * r] *= alpha;
          acc_o[dt][2 * r + 1] *= alpha;
        }
      }

      // O += P V: the S accumulators of key tiles 2kk and 2kk+1 are the A fragment of keys
      // 16kk..16kk+15; V's B fragments come transposed by ldmatrix, two head tiles at a time.
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t pa[4];
        tc::acc_as_a<T>(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < DTILES / 2; ++dp) {
          uint32_t vb[4];  // b0 b1 of head tile 2dp, then of 2dp + 1
          ptx::SM75_U16x8_LDSM_T::copy(vb, Vb + kk * 16 * LD + dp * 16 + v_ld);
          tc::mma_x2<T>(acc_o[2 * dp], acc_o[2 * dp + 1], pa, vb);
        }
      }
    }

    n0 = n1;
    blocked[0] = next_blocked[0];
    blocked[1] = next_blocked[1];
    warp_skip = next_skip;
    buf ^= 1;
  }

  // Normalize into the warp's own 16 rows of the Q tile (only this warp has read them, barriers
  // ago), then 16-byte stores: out (B, H, Nq, D) contiguous, lse (B, H, Nq) float32, natural log.
  T* out = static_cast<T*>(p.out) + (b * p.H + h) * Nq * D;
  float* lse = static_cast<float*>(p.lse) + (b * p.H + h) * Nq;
  T* Os = Qs + warp * 16 * LD;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_run[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    T* o = Os + (g + 8 * r) * LD + 2 * t;
#pragma unroll
    for (int dt = 0; dt < DTILES; ++dt)
      *reinterpret_cast<uint32_t*>(o + dt * 8) = Mma<T>::pack(acc_o[dt][2 * r] * inv, acc_o[dt][2 * r + 1] * inv);
    if (t == 0 && row[r] < Nq) lse[row[r]] = l > 0.f ? (m_run[r] + log2f(l)) * 0.6931471805599453f : -INFINITY;
  }
  __syncwarp();
  constexpr int PER_ROW = HD / 8;
#pragma unroll
  for (int idx = lane; idx < 16 * PER_ROW; idx += 32) {
    const int r = idx / PER_ROW, c = (idx % PER_ROW) * 8;
    const int64_t i = m0 + warp * 16 + r;
    if (i >= Nq || c >= D) continue;
    T* dst = out + i * D + c;
    const T* src = Os + r * LD + c;
    if (c + 8 <= D && (reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      for (int e = 0; e < 8 && c + e < D; ++e) dst[e] = src[e];
    }
  }
}

template <class T, int HD>
cudaError_t launch(const AttentionParams& p, cudaStream_t stream) {
  constexpr int LD = HD + 8;
  constexpr size_t smem = size_t(kBlockM + 4 * kBlockN) * LD * sizeof(T);  // Q, then K and V twice
  if (cudaError_t err = allow_dynamic_smem<attention_mma_kernel<T, HD>, smem>(); err != cudaSuccess) return err;
  const dim3 grid{unsigned((p.Nq + kBlockM - 1) / kBlockM), unsigned(p.H), unsigned(p.B)};
  return launch_kernel(attention_mma_kernel<T, HD>, grid, kThreads, smem, stream, p);
}

template <class T>
cudaError_t launch_head_dim(const AttentionParams& p, cudaStream_t stream) {
  if (p.D <= 32) return launch<T, 32>(p, stream);
  if (p.D <= 64) return launch<T, 64>(p, stream);
  if (p.D <= 80) return launch<T, 80>(p, stream);
  if (p.D <= 96) return launch<T, 96>(p, stream);
  return launch<T, 128>(p, stream);
}

}  // namespace

cudaError_t attention_forward(const AttentionParams& p, cudaStream_t stream) {
  if (p.B * p.H * p.Nq == 0) return cudaSuccess;
  if (p.D > kMaxAttentionHeadDim || p.H > 65535 || p.B > 65535) return cudaErrorInvalidValue;
  // Tensor cores for fp16/bf16 up to head dim 128 with enough queries to fill the tile's rows;
  // the exact kernel for the rest (fp32, fp64, decode-sized Nq, larger heads).
  const bool tc = (p.dtype == AttnDType::kHalf || p.dtype == AttnDType::kBFloat16) && p.D <= 128 && p.Nq >= 16;
  if (!tc) return attention_forward_simt(p, stream);
  return p.dtype == AttnDType::kHalf ? launch_head_dim<__half>(p, stream)
                                     : launch_head_dim<__nv_bfloat16>(p, stream);
}

}  // namespace taskkernels::cuda
