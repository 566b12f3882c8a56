// Tensor-core attention forward (fp16 / bf16), FlashAttention-2 style: a block owns 64 queries
// (16 per warp), K and V stream through shared memory 64 keys at a time, S = Q K^T and O += P V
// run on mma.sync m16n8k16 with fp32 accumulators, and the online softmax stays in registers
// (P goes from the S accumulators straight into the A operand of the PV product). Nothing
// Nq x Nk touches global memory.
//
// Fragment layouts of mma.m16n8k16 (kernels/common/ptx.cuh; g = lane / 4, t = lane % 4):
//   A (16x16, row):  a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
//   B (16x8,  col):  b0 (k 2t..2t+1, n g)  b1 (k 2t+8.., n g)
//   C (16x8, f32):   c0 c1 (g, 2t..2t+1)  c2 c3 (g+8, 2t..2t+1)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "common/dropout.h"
#include "kernels/attention/attention.h"
#include "kernels/common/launch.cuh"
#include "kernels/common/ptx.cuh"

namespace taskkernels::cuda {
namespace {

constexpr int kBlockM = 64, kBlockN = 64, kWarps = 4, kThreads = kWarps * 32;

template <class T>
struct Mma;

template <>
struct Mma<__half> {
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
struct Mma<__nv_bfloat16> {
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
__device__ __forceinline__ uint32_t ld_pair(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}
// Two 16-bit elements from different rows (same column) as one register: lo, hi.
template <class T>
__device__ __forceinline__ uint32_t ld_col_pair(const T* lo, const T* hi) {
  const uint32_t a = *reinterpret_cast<const uint16_t*>(lo);
  const uint32_t b = *reinterpret_cast<const uint16_t*>(hi);
  return a | (b << 16);
}

// rows x HD tile from a (n, d) strided matrix into shared memory (row stride LD), zero outside
// [0, n_valid) x [0, D). 16-byte loads where the head dimension is contiguous and aligned.
template <class T, int HD, int LD>
__device__ __forceinline__ void load_tile(T* __restrict__ dst, const T* __restrict__ src, int64_t row0,
                                          int64_t n_valid, int64_t D, int64_t s_n, int64_t s_d) {
  constexpr int V = 8, PER_ROW = HD / V;
  const T zero = Mma<T>::from_float(0.f);
  for (int idx = threadIdx.x; idx < kBlockM * PER_ROW; idx += kThreads) {
    const int r = idx / PER_ROW, c = (idx % PER_ROW) * V;
    const int64_t n = row0 + r;
    T* out = dst + r * LD + c;
    if (n < n_valid) {
      const T* in = src + n * s_n + c * s_d;
      if (s_d == 1 && c + V <= D && (reinterpret_cast<uintptr_t>(in) & 15) == 0) {
        *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(in);
        continue;
      }
#pragma unroll
      for (int e = 0; e < V; ++e) out[e] = (c + e < D) ? in[e * s_d] : zero;
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) out[e] = zero;
    }
  }
}

template <class T, int HD>
__global__ void __launch_bounds__(kThreads) attention_mma_kernel(AttentionParams p) {
  constexpr int LD = HD + 8;  // +16 bytes per row: rows stay 16-byte aligned, fewer bank conflicts
  constexpr int KSTEPS = HD / 16, DTILES = HD / 8, NTILES = kBlockN / 8;
  unsigned char* smem_raw = dynamic_smem();
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* Ks = Qs + kBlockM * LD;
  T* Vs = Ks + kBlockN * LD;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.z, h = blockIdx.y, m0 = int64_t(blockIdx.x) * kBlockM;
  const int64_t Nq = p.Nq, Nk = p.Nk, D = p.D, shift = Nk - Nq;
  const float kLog2e = 1.4426950408889634f;
  const float sscale = float(p.scale) * kLog2e;

  const T* qg = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* kg = static_cast<const T*>(p.k) + b * p.k_stride[0] + kv_head(p, h) * p.k_stride[1];
  const T* vg = static_cast<const T*>(p.v) + b * p.v_stride[0] + kv_head(p, h) * p.v_stride[1];

  load_tile<T, HD, LD>(Qs, qg, m0, Nq, D, p.q_stride[2], p.q_stride[3]);
  __syncthreads();
  uint32_t qa[KSTEPS][4];
  {
    const T* q0 = Qs + (warp * 16 + g) * LD + 2 * t;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      qa[ks][0] = ld_pair(q0 + ks * 16);
      qa[ks][1] = ld_pair(q0 + 8 * LD + ks * 16);
      qa[ks][2] = ld_pair(q0 + ks * 16 + 8);
      qa[ks][3] = ld_pair(q0 + 8 * LD + ks * 16 + 8);
    }
  }

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

  // Per-query mask (masked attention): this thread's rows' 64-bit words of blocked keys, one per
  // key tile (kBlockN == 64). Rows past Nq count as blocking everything, so they never keep a
  // tile alive.
  const uint64_t* mb = p.mask_bits ? p.mask_bits + b * p.mb_stride[0] : nullptr;
  static_assert(kBlockN == 64, "a key tile is one word of mask bits");

  for (int64_t n0 = 0; n0 < kend; n0 += kBlockN) {
    uint64_t blocked[2] = {0, 0};
    bool warp_skip = false;
    if (mb) {
      const int64_t nvalid = min(int64_t(kBlockN), kend - n0);
      const uint64_t want = nvalid >= 64 ? ~uint64_t(0) : (uint64_t(1) << nvalid) - 1;
#pragma unroll
      for (int r = 0; r < 2; ++r) blocked[r] = row[r] < Nq ? mb[row[r] * p.mb_stride[1] + n0 / 64] : ~uint64_t(0);
      const bool mine = (blocked[0] & want) == want && (blocked[1] & want) == want;
      // Every query of the block blocks every key of the tile: skip its loads and math (the
      // barrier also retires the previous tile, as the plain __syncthreads below does).
      if (__syncthreads_and(mine)) continue;
      warp_skip = __all_sync(0xffffffffu, mine);
    } else {
      __syncthreads();  // everyone is done with the previous K/V tile
    }
    load_tile<T, HD, LD>(Ks, kg, n0, kend, D, p.k_stride[2], p.k_stride[3]);
    load_tile<T, HD, LD>(Vs, vg, n0, kend, D, p.v_stride[2], p.v_stride[3]);
    __syncthreads();
    if (warp_skip) continue;  // this warp's 16 queries block the whole tile

    // S = Q K^T for this warp's 16 rows x 64 keys.
    float s[NTILES][4];
#pragma unroll
    for (int nt = 0; nt < NTILES; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
      const T* k0 = Ks + (nt * 8 + g) * LD + 2 * t;
#pragma unroll
      for (int ks = 0; ks < KSTEPS; ++ks) Mma<T>::mma(s[nt], qa[ks], ld_pair(k0 + ks * 16), ld_pair(k0 + ks * 16 + 8));
    }

    // Scale to base 2, add the bias, hide what is masked.
    const bool need_mask = n0 + kBlockN > kend || kpm || p.bias || mb ||
                           (p.causal && n0 + kBlockN - 1 > m0 + shift);
#pragma unroll
    for (int nt = 0; nt < NTILES; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[nt][e] * sscale;
        if (need_mask) {
          const int64_t i = row[e / 2], j = n0 + nt * 8 + 2 * t + (e % 2);
          if (j >= kend || (p.causal && j > i + shift) || (kpm && kpm[j * p.kp_stride[1]]) ||
              ((blocked[e / 2] >> (j - n0)) & 1)) {
            x = -INFINITY;
          } else if (p.bias && i < Nq) {
            const int64_t idx = b * p.bias_stride[0] + h * p.bias_stride[1] + i * p.bias_stride[2] + j * p.bias_stride[3];
            const float bv = p.bias_is_float32 ? static_cast<const float*>(p.bias)[idx]
                                               : Mma<T>::to_float(static_cast<const T*>(p.bias)[idx]);
            x += bv * kLog2e;
          }
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
    // 16kk..16kk+15.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      const uint32_t pa[4] = {
          Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]), Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]),
          Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]), Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      const T* v0 = Vs + (kk * 16 + 2 * t) * LD + g;
#pragma unroll
      for (int dt = 0; dt < DTILES; ++dt) {
        const T* vp = v0 + dt * 8;
        Mma<T>::mma(acc_o[dt], pa, ld_col_pair(vp, vp + LD), ld_col_pair(vp + 8 * LD, vp + 9 * LD));
      }
    }
  }

  // Normalize and write: out (B, H, Nq, D) contiguous, lse (B, H, Nq) float32, natural log.
  T* out = static_cast<T*>(p.out) + (b * p.H + h) * Nq * D;
  float* lse = static_cast<float*>(p.lse) + (b * p.H + h) * Nq;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_run[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int64_t i = row[r];
    if (i >= Nq) continue;
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int dt = 0; dt < DTILES; ++dt) {
      const int64_t d = dt * 8 + 2 * t;
      if (d < D) out[i * D + d] = Mma<T>::from_float(acc_o[dt][2 * r] * inv);
      if (d + 1 < D) out[i * D + d + 1] = Mma<T>::from_float(acc_o[dt][2 * r + 1] * inv);
    }
    if (t == 0) lse[i] = l > 0.f ? (m_run[r] + log2f(l)) * 0.6931471805599453f : -INFINITY;
  }
}

template <class T, int HD>
cudaError_t launch(const AttentionParams& p, cudaStream_t stream) {
  constexpr int LD = HD + 8;
  constexpr size_t smem = size_t(kBlockM + 2 * kBlockN) * LD * sizeof(T);
  if constexpr (smem > 48 * 1024) {  // above the default limit: raise it, once per device
    static bool raised[64] = {};
    int dev = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err != cudaSuccess) return err;
    if (dev >= 64 || !raised[dev]) {
      err = cudaFuncSetAttribute(attention_mma_kernel<T, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
      if (err != cudaSuccess) return err;
      if (dev < 64) raised[dev] = true;
    }
  }
  const dim3 grid{unsigned((p.Nq + kBlockM - 1) / kBlockM), unsigned(p.H), unsigned(p.B)};
  return launch_kernel(attention_mma_kernel<T, HD>, grid, kThreads, smem, stream, p);
}

template <class T>
cudaError_t launch_head_dim(const AttentionParams& p, cudaStream_t stream) {
  if (p.D <= 32) return launch<T, 32>(p, stream);
  if (p.D <= 64) return launch<T, 64>(p, stream);
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
