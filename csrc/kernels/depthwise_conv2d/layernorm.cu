// The ConvNeXt front on CUDA: depthwise convolution + LayerNorm over channels, and its backward.
//
// Fused forward (channels-last input, K = 3, 5 or 7, C <= 1024): a block per strip of kPix
// output pixels of one row, a thread per channel (so every load of x is coalesced along the
// channels). Each thread slides a register window of kPix + K - 1 inputs along each of the K
// input rows: K (kPix + K - 1) loads for K^2 kPix multiply-adds. The convolution is rounded to
// the dtype (the value the CPU path normalizes and the backward reads) and written once for the
// backward; the per-pixel mean and variance are block sums over the channels (a warp shuffle,
// then the warps' partials folded in a fixed order), and the normalized pixel is written straight
// into the (B, Ho, Wo, C) tensor the Linear layers read. Anything else runs the depthwise kernel,
// then channel_layernorm_forward (a warp per pixel).
//
// Backward: a warp per pixel gives the convolution output's gradient (the depthwise backward
// kernels take it from there); the LayerNorm weight and bias gradients are summed per channel
// over fixed slices of the pixels, then over the slices in order. No atomics: bitwise
// reproducible.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/depthwise_conv2d/depthwise_conv2d.h"
#include "kernels/depthwise_conv2d/dtype.cuh"
#include "kernels/common/launch.cuh"

namespace taskkernels::cuda {
namespace {

constexpr int kPix = 8;                // output pixels per block of the fused forward
constexpr int kMaxFusedC = 1024;       // a thread per channel
constexpr int kWarpsPerBlock = 8;      // warp-per-pixel kernels
constexpr int kParamThreads = 128;     // channels per block of the parameter-gradient sums

using dw::Acc;
using dw::dispatch;
using dw::from_acc;
using dw::to_acc;

template <class A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <class A>
__device__ __forceinline__ A inv_std(A var, double eps) {
  return static_cast<A>(1.0 / sqrt(static_cast<double>(var) + eps));
}

// total[r] = the block's sum of v[r], for each of the kPix pixels; the warps' partials are folded
// in warp order. red is reused by the next call only after the barrier that ends this one.
template <class A>
__device__ void block_sum(A (&v)[kPix], A (*red)[kPix], A* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int r = 0; r < kPix; ++r) v[r] = warp_sum(v[r]);
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kPix; ++r) red[warp][r] = v[r];
  }
  __syncthreads();
  if (threadIdx.x < kPix) {
    A s = 0;
    for (int w = 0; w < nwarps; ++w) s += red[w][threadIdx.x];
    total[threadIdx.x] = s;
  }
  __syncthreads();
}

template <class T, int K>
__global__ void __launch_bounds__(kMaxFusedC) fused_front(DwConvParams p, ChannelNormParams n) {
  using A = typename Acc<T>::type;
  __shared__ A red[kMaxFusedC / 32][kPix];
  __shared__ A sum1[kPix], sum2[kPix];
  const int c = threadIdx.x;
  const bool active = c < p.C;
  const int64_t strips = (p.Wo + kPix - 1) / kPix;
  const int64_t row = blockIdx.x / strips, ox0 = (blockIdx.x % strips) * kPix;  // row = b * Ho + oy
  const int64_t b = row / p.Ho, oy = row % p.Ho;

  A acc[kPix];
  const A bias = active && p.bias ? to_acc(static_cast<const T*>(p.bias)[c]) : A(0);
#pragma unroll
  for (int r = 0; r < kPix; ++r) acc[r] = bias;
  if (active) {
    const T* x = static_cast<const T*>(p.x) + b * p.sB + c * p.sC;
    const T* w = static_cast<const T*>(p.w) + c * K * K;
#pragma unroll
    for (int ky = 0; ky < K; ++ky) {
      const int64_t iy = oy + ky - p.pad;
      if (iy < 0 || iy >= p.Hi) continue;
      A win[kPix + K - 1];
#pragma unroll
      for (int q = 0; q < kPix + K - 1; ++q) {
        const int64_t ix = ox0 + q - p.pad;
        win[q] = ix >= 0 && ix < p.Wi ? to_acc(x[iy * p.sH + ix * p.sW]) : A(0);
      }
#pragma unroll
      for (int kx = 0; kx < K; ++kx) {
        const A wv = to_acc(w[ky * K + kx]);
#pragma unroll
        for (int r = 0; r < kPix; ++r) acc[r] += wv * win[r + kx];
      }
    }
  }

  T* conv = static_cast<T*>(p.y) + (row * p.Wo) * p.C;
  A v[kPix], d[kPix];
#pragma unroll
  for (int r = 0; r < kPix; ++r) {
    const bool live = active && ox0 + r < p.Wo;
    const T t = from_acc<T>(acc[r]);
    if (live) conv[(ox0 + r) * p.C + c] = t;
    v[r] = live ? to_acc(t) : A(0);
    d[r] = v[r];
  }
  block_sum(d, red, sum1);
  A mean[kPix];
#pragma unroll
  for (int r = 0; r < kPix; ++r) {
    mean[r] = sum1[r] / static_cast<A>(p.C);
    const A dev = active && ox0 + r < p.Wo ? v[r] - mean[r] : A(0);
    d[r] = dev * dev;
  }
  block_sum(d, red, sum2);
  const T* gamma = static_cast<const T*>(n.gamma);
  const T* beta = static_cast<const T*>(n.beta);
  const A g = active && gamma ? to_acc(gamma[c]) : A(1), bt = active && beta ? to_acc(beta[c]) : A(0);
  T* out = static_cast<T*>(n.out) + (row * p.Wo) * p.C;
#pragma unroll
  for (int r = 0; r < kPix; ++r) {
    const A rstd = inv_std(sum2[r] / static_cast<A>(p.C), n.eps);
    if (active && ox0 + r < p.Wo) out[(ox0 + r) * p.C + c] = from_acc<T>((v[r] - mean[r]) * rstd * g + bt);
    if (threadIdx.x == r && ox0 + r < p.Wo) {
      static_cast<A*>(n.mean)[row * p.Wo + ox0 + r] = mean[r];
      static_cast<A*>(n.rstd)[row * p.Wo + ox0 + r] = rstd;
    }
  }
}

// Pixel i = (b, h, w) of the (B, C, H, W) strided y.
template <class T>
__device__ __forceinline__ const T* pixel(const ChannelNormParams& n, int64_t i) {
  const int64_t hw = n.H * n.W, b = i / hw, h = (i % hw) / n.W, w = i % n.W;
  return static_cast<const T*>(n.y) + b * n.sB + h * n.sH + w * n.sW;
}

template <class T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) layernorm_forward(ChannelNormParams n) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t i = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (i >= n.B * n.H * n.W) return;
  const T* y = pixel<T>(n, i);
  A s = 0;
  for (int64_t c = lane; c < n.C; c += 32) s += to_acc(y[c * n.sC]);
  const A m = warp_sum(s) / static_cast<A>(n.C);
  A q = 0;
  for (int64_t c = lane; c < n.C; c += 32) {
    const A dev = to_acc(y[c * n.sC]) - m;
    q += dev * dev;
  }
  const A rstd = inv_std(warp_sum(q) / static_cast<A>(n.C), n.eps);
  const T* gamma = static_cast<const T*>(n.gamma);
  const T* beta = static_cast<const T*>(n.beta);
  T* out = static_cast<T*>(n.out) + i * n.C;
  for (int64_t c = lane; c < n.C; c += 32) {
    const A g = gamma ? to_acc(gamma[c]) : A(1), bt = beta ? to_acc(beta[c]) : A(0);
    out[c] = from_acc<T>((to_acc(y[c * n.sC]) - m) * rstd * g + bt);
  }
  if (lane == 0) {
    static_cast<A*>(n.mean)[i] = m;
    static_cast<A*>(n.rstd)[i] = rstd;
  }
}

// dy = rstd (g - mean(g) - xhat mean(g xhat)) with g = grad_out * gamma, per pixel.
template <class T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) layernorm_backward_input(ChannelNormBackwardParams g) {
  using A = typename Acc<T>::type;
  const ChannelNormParams& n = g.fwd;
  const int lane = threadIdx.x & 31;
  const int64_t i = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (i >= n.B * n.H * n.W) return;
  const T* y = pixel<T>(n, i);
  const T* go = static_cast<const T*>(g.grad_out) + i * n.C;
  const T* gamma = static_cast<const T*>(n.gamma);
  const A m = static_cast<const A*>(n.mean)[i], r = static_cast<const A*>(n.rstd)[i];
  A s1 = 0, s2 = 0;
  for (int64_t c = lane; c < n.C; c += 32) {
    const A gc = to_acc(go[c]) * (gamma ? to_acc(gamma[c]) : A(1));
    s1 += gc * ((to_acc(y[c * n.sC]) - m) * r);
    s2 += gc;
  }
  const A c1 = warp_sum(s1) / static_cast<A>(n.C), c2 = warp_sum(s2) / static_cast<A>(n.C);
  T* dy = static_cast<T*>(g.dy) + i * n.C;
  for (int64_t c = lane; c < n.C; c += 32) {
    const A gc = to_acc(go[c]) * (gamma ? to_acc(gamma[c]) : A(1));
    const A xhat = (to_acc(y[c * n.sC]) - m) * r;
    dy[c] = from_acc<T>(r * (gc - c2 - xhat * c1));
  }
}

struct ParamSplit {
  int64_t slices, per_slice;
};

ParamSplit param_split(const ChannelNormParams& n) {
  const int64_t N = n.B * n.H * n.W, col_blocks = (n.C + kParamThreads - 1) / kParamThreads;
  int64_t slices = std::max<int64_t>(1, std::min<int64_t>(N, (1056 + col_blocks - 1) / col_blocks));
  const int64_t per = (N + slices - 1) / slices;
  return {(N + per - 1) / per, per};
}

// partial[(slice * C + c) * 2 + {0, 1}] = the slice's sums of grad_out * xhat and grad_out.
template <class T>
__global__ void __launch_bounds__(kParamThreads) layernorm_param_partial(ChannelNormBackwardParams g, ParamSplit s,
                                                                         typename Acc<T>::type* partial) {
  using A = typename Acc<T>::type;
  const ChannelNormParams& n = g.fwd;
  const int64_t c = int64_t(blockIdx.x) * kParamThreads + threadIdx.x, slice = blockIdx.y;
  if (c >= n.C) return;
  const int64_t N = n.B * n.H * n.W, i1 = std::min(N, (slice + 1) * s.per_slice);
  A sg = 0, sb = 0;
  for (int64_t i = slice * s.per_slice; i < i1; ++i) {
    const A gc = to_acc(static_cast<const T*>(g.grad_out)[i * n.C + c]);
    const A xhat = (to_acc(pixel<T>(n, i)[c * n.sC]) - static_cast<const A*>(n.mean)[i]) *
                   static_cast<const A*>(n.rstd)[i];
    sg += gc * xhat;
    sb += gc;
  }
  partial[(slice * n.C + c) * 2] = sg;
  partial[(slice * n.C + c) * 2 + 1] = sb;
}

template <class T>
__global__ void layernorm_param_finish(ChannelNormBackwardParams g, ParamSplit s, const typename Acc<T>::type* partial) {
  using A = typename Acc<T>::type;
  const int64_t C = g.fwd.C, c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  A sg = 0, sb = 0;
  for (int64_t sl = 0; sl < s.slices; ++sl) {
    sg += partial[(sl * C + c) * 2];
    sb += partial[(sl * C + c) * 2 + 1];
  }
  if (g.ggamma) static_cast<T*>(g.ggamma)[c] = from_acc<T>(sg);
  if (g.gbeta) static_cast<T*>(g.gbeta)[c] = from_acc<T>(sb);
}

unsigned warp_blocks(int64_t pixels) { return static_cast<unsigned>((pixels + kWarpsPerBlock - 1) / kWarpsPerBlock); }

}  // namespace

bool fused_front_supported(const DwConvParams& p) {
  return p.channels_last && !p.flip && (p.sC == 1 || p.C == 1) && p.C <= kMaxFusedC &&
         (p.K == 3 || p.K == 5 || p.K == 7);
}

int depthwise_conv2d_layernorm_forward(const DwConvParams& p, const ChannelNormParams& n, cudaStream_t stream) {
  if (!fused_front_supported(p)) return cudaErrorInvalidValue;
  return dispatch(p.dtype, [&](auto tag) -> int {
    using T = decltype(tag);
    const int64_t blocks = p.B * p.Ho * ((p.Wo + kPix - 1) / kPix);
    const unsigned threads = static_cast<unsigned>((p.C + 31) / 32 * 32);
    auto kernel = p.K == 3 ? fused_front<T, 3> : p.K == 5 ? fused_front<T, 5> : fused_front<T, 7>;
    return launch_kernel(kernel, static_cast<unsigned>(blocks), threads, 0, stream, p, n);
  });
}

int channel_layernorm_forward(const ChannelNormParams& n, cudaStream_t stream) {
  return dispatch(n.dtype, [&](auto tag) -> int {
    using T = decltype(tag);
    return launch_kernel(layernorm_forward<T>, warp_blocks(n.B * n.H * n.W), kWarpsPerBlock * 32, 0, stream, n);
  });
}

size_t channel_layernorm_backward_workspace(const ChannelNormBackwardParams& g) {
  if (!g.ggamma && !g.gbeta) return 0;
  const size_t acc = g.fwd.dtype == DwDType::kDouble ? sizeof(double) : sizeof(float);
  return param_split(g.fwd).slices * g.fwd.C * 2 * acc;
}

int channel_layernorm_backward(const ChannelNormBackwardParams& g, void* workspace, cudaStream_t stream) {
  return dispatch(g.fwd.dtype, [&](auto tag) -> int {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    if (cudaError_t e = launch_kernel(layernorm_backward_input<T>, warp_blocks(g.fwd.B * g.fwd.H * g.fwd.W),
                                      kWarpsPerBlock * 32, 0, stream, g);
        e != cudaSuccess)
      return e;
    if (g.ggamma || g.gbeta) {
      const ParamSplit s = param_split(g.fwd);
      A* partial = static_cast<A*>(workspace);
      const dim3 grid(static_cast<unsigned>((g.fwd.C + kParamThreads - 1) / kParamThreads),
                      static_cast<unsigned>(s.slices));
      if (cudaError_t e = launch_kernel(layernorm_param_partial<T>, grid, kParamThreads, 0, stream, g, s, partial);
          e != cudaSuccess)
        return e;
      return launch_kernel(layernorm_param_finish<T>, static_cast<unsigned>((g.fwd.C + 255) / 256), 256, 0, stream, g, s,
                           partial);
    }
    return cudaSuccess;
  });
}

}  // namespace taskkernels::cuda
