// Exact attention forward: one warp per query row, keys in chunks of 32 (one per lane), online
// softmax in base 2, fp32 accumulation (fp64 for fp64). The path for fp32/fp64 inputs and the
// reference the tensor-core kernel is checked against on the device.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "common/dropout.h"
#include "kernels/attention/attention.h"
#include "kernels/common/tile_gemm.cuh"  // Num<T>
#include "kernels/common/launch.cuh"

namespace taskkernels::cuda {
namespace {

constexpr int kRowsPerBlock = 4;  // warps per block
constexpr int kMaxPerLane = kMaxAttentionHeadDim / 32;

template <class A>
__device__ __forceinline__ A warp_max(A x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmax(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
template <class A>
__device__ __forceinline__ A warp_sum(A x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float exp2_(float x) { return exp2f(x); }
__device__ __forceinline__ double exp2_(double x) { return exp2(x); }
__device__ __forceinline__ float log2_(float x) { return log2f(x); }
__device__ __forceinline__ double log2_(double x) { return log2(x); }

template <class T, class A>
__global__ void __launch_bounds__(kRowsPerBlock * 32) attention_simt_kernel(AttentionParams p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int64_t i = int64_t(blockIdx.x) * kRowsPerBlock + warp;
  if (i >= p.Nq) return;  // the whole warp leaves; no block-wide barrier below
  const A kLog2e = A(1.4426950408889634), kLn2 = A(0.6931471805599453);
  const A neg_inf = -INFINITY;
  const int64_t D = p.D;

  __shared__ A qs[kRowsPerBlock][kMaxAttentionHeadDim];
  const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1] + i * p.q_stride[2];
  const A qscale = A(p.scale) * kLog2e;
  for (int64_t d = lane; d < D; d += 32) qs[warp][d] = Num<T>::to_acc(q[d * p.q_stride[3]]) * qscale;
  __syncwarp();

  const T* kb = static_cast<const T*>(p.k) + b * p.k_stride[0] + kv_head(p, h) * p.k_stride[1];
  const T* vb = static_cast<const T*>(p.v) + b * p.v_stride[0] + kv_head(p, h) * p.v_stride[1];
  const int64_t shift = p.Nk - p.Nq;
  const int64_t kend = p.causal ? min(p.Nk, max(int64_t(0), i + shift + 1)) : p.Nk;

  // Attention dropout, keyed by element (b, h, i, j) as on the CPU (common/dropout.h).
  const bool dropout = p.dropout_p > 0;
  const uint32_t threshold = dropout_threshold(p.dropout_p);
  const A keep_scale = dropout ? A(1.0 / (1.0 - p.dropout_p)) : A(1);

  A m = neg_inf, l = A(0), o[kMaxPerLane];
#pragma unroll
  for (int u = 0; u < kMaxPerLane; ++u) o[u] = A(0);

  // Per-query mask (masked attention): bit (j % 64) of word j / 64 set = key j blocked.
  const uint64_t* mb = p.mask_bits ? p.mask_bits + b * p.mb_stride[0] + i * p.mb_stride[1] : nullptr;

  for (int64_t k0 = 0; k0 < kend; k0 += 32) {
    const int64_t j = k0 + lane;
    // The chunk's 32 bits (k0 is a multiple of 32, so they lie in one word).
    const uint32_t chunk_blocked = mb ? uint32_t(mb[k0 / 64] >> (k0 % 64)) : 0u;
    const int64_t nvalid = min(int64_t(32), kend - k0);
    const uint32_t valid = nvalid >= 32 ? 0xffffffffu : (1u << nvalid) - 1;
    if ((chunk_blocked & valid) == valid) continue;  // warp-uniform: every key of the chunk blocked
    A s = neg_inf;
    if (j < kend && !((chunk_blocked >> lane) & 1u)) {
      const T* kr = kb + j * p.k_stride[2];
      A dot = A(0);
      if constexpr (sizeof(A) == 8) {  // fp64 needs no chunks (and spills registers with them)
        for (int64_t d = 0; d < D; ++d) dot += qs[warp][d] * Num<T>::to_acc(kr[d * p.k_stride[3]]);
      } else {  // float: the sum in chunks (common/attention_params.h)
        for (int64_t d0 = 0; d0 < D; d0 += kAttentionDotChunk) {
          const int64_t d1 = min(D, d0 + int64_t(kAttentionDotChunk));
          A part = A(0);
          for (int64_t d = d0; d < d1; ++d) part += qs[warp][d] * Num<T>::to_acc(kr[d * p.k_stride[3]]);
          dot += part;
        }
      }
      s = dot;
      if (p.bias) {
        const int64_t idx = b * p.bias_stride[0] + h * p.bias_stride[1] + i * p.bias_stride[2] + j * p.bias_stride[3];
        const A bv = p.bias_is_float32 ? A(static_cast<const float*>(p.bias)[idx])
                                       : Num<T>::to_acc(static_cast<const T*>(p.bias)[idx]);
        s += bv * kLog2e;
      }
      if (p.key_padding && p.key_padding[b * p.kp_stride[0] + j * p.kp_stride[1]]) s = neg_inf;
    }
    const A mnew = fmax(m, warp_max(s));
    if (mnew == neg_inf) continue;  // warp-uniform: nothing visible yet
    const A alpha = m == neg_inf ? A(0) : exp2_(m - mnew);
    A pj = s == neg_inf ? A(0) : exp2_(s - mnew);
    l = l * alpha + warp_sum(pj);  // the normalizer counts every probability, kept or not
    if (dropout && j < kend) {
      pj = dropout_keep(p.seed, threshold, (uint64_t(b * p.H + h) * uint64_t(p.Nq) + uint64_t(i)) * uint64_t(p.Nk) + uint64_t(j))
               ? pj * keep_scale
               : A(0);
    }
    m = mnew;
#pragma unroll
    for (int u = 0; u < kMaxPerLane; ++u) o[u] *= alpha;
    const int64_t nk = min(int64_t(32), kend - k0);
    for (int jj = 0; jj < nk; ++jj) {
      const A pb = __shfl_sync(0xffffffffu, pj, jj);
      const T* vr = vb + (k0 + jj) * p.v_stride[2];
#pragma unroll
      for (int u = 0; u < kMaxPerLane; ++u) {
        const int64_t d = lane + 32 * u;
        if (d < D) o[u] += pb * Num<T>::to_acc(vr[d * p.v_stride[3]]);
      }
    }
  }

  T* out = static_cast<T*>(p.out) + ((b * p.H + h) * p.Nq + i) * D;
  const A inv = l > A(0) ? A(1) / l : A(0);
#pragma unroll
  for (int u = 0; u < kMaxPerLane; ++u) {
    const int64_t d = lane + 32 * u;
    if (d < D) out[d] = Num<T>::from_acc(o[u] * inv);
  }
  if (lane == 0) {
    static_cast<A*>(p.lse)[(b * p.H + h) * p.Nq + i] = l > A(0) ? (m + log2_(l)) * kLn2 : neg_inf;
  }
}

template <class T, class A>
cudaError_t launch(const AttentionParams& p, cudaStream_t stream) {
  const dim3 grid{unsigned((p.Nq + kRowsPerBlock - 1) / kRowsPerBlock), unsigned(p.H), unsigned(p.B)};
  return launch_kernel(attention_simt_kernel<T, A>, grid, kRowsPerBlock * 32, 0, stream, p);
}

}  // namespace

cudaError_t attention_forward_simt(const AttentionParams& p, cudaStream_t stream) {
  if (p.B * p.H * p.Nq == 0) return cudaSuccess;
  if (p.D > kMaxAttentionHeadDim || p.H > 65535 || p.B > 65535) return cudaErrorInvalidValue;
  switch (p.dtype) {
    case AttnDType::kHalf: return launch<__half, float>(p, stream);
    case AttnDType::kBFloat16: return launch<__nv_bfloat16, float>(p, stream);
    case AttnDType::kFloat: return launch<float, float>(p, stream);
    case AttnDType::kDouble: return launch<double, double>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace taskkernels::cuda
