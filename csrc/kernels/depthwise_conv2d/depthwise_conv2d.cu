// Depthwise convolution on CUDA (stride 1, K x K per channel, any padding < K).
//
// Forward, NCHW: a block computes a 32 x 64 output tile of one (batch, channel) plane from the
// input tile plus its halo in shared memory; each thread computes a column strip of 8 outputs,
// so every input value it loads from shared memory feeds up to K of its outputs (loads per
// output: (8 + K - 1) K / 8 instead of K^2). Forward, NHWC: threads run along channels
// (coalesced), each computing a strip of 4 output rows the same way from global memory.
// The input gradient is the forward with the rotated filter (see common/...params.h).
// Weight gradient: a block per (channel, slice of the rows) sums every tap (and the bias as one
// more tap) over its slice, thread groups splitting the positions and folding in a fixed order;
// a second kernel adds the slices in order. No atomics: bitwise reproducible.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/depthwise_conv2d/depthwise_conv2d.h"
#include "kernels/depthwise_conv2d/dtype.cuh"
#include "kernels/common/launch.cuh"

namespace taskkernels::cuda {
namespace {

constexpr int kTileH = 32, kTileW = 64, kStrip = 8, kThreads = 256;
constexpr int kStripCl = 4;
constexpr int kMaxK = 31;

using dw::Acc;
using dw::dispatch;
using dw::from_acc;
using dw::to_acc;

template <class T>
__device__ __forceinline__ typename Acc<T>::type weight_at(const DwConvParams& p, int64_t c, int t) {
  const int KK = p.K * p.K;
  return to_acc(static_cast<const T*>(p.w)[c * KK + (p.flip ? KK - 1 - t : t)]);
}

template <class T>
__global__ void __launch_bounds__(kThreads) forward_nchw(DwConvParams p) {
  using A = typename Acc<T>::type;
  unsigned char* smem_raw = dynamic_smem();
  A* w = reinterpret_cast<A*>(smem_raw);
  const int K = static_cast<int>(p.K), tile_w = kTileW + K - 1;
  A* tile = w + K * K;
  const int64_t bc = blockIdx.x, b = bc / p.C, c = bc % p.C;
  const int64_t oy0 = int64_t(blockIdx.y) * kTileH, ox0 = int64_t(blockIdx.z) * kTileW;
  for (int t = threadIdx.x; t < K * K; t += blockDim.x) w[t] = weight_at<T>(p, c, t);
  const T* x = static_cast<const T*>(p.x) + b * p.sB + c * p.sC;
  const int rows = kTileH + K - 1;
  for (int i = threadIdx.x; i < rows * tile_w; i += blockDim.x) {
    const int r = i / tile_w, q = i % tile_w;
    const int64_t iy = oy0 + r - p.pad, ix = ox0 + q - p.pad;
    tile[i] = (iy >= 0 && iy < p.Hi && ix >= 0 && ix < p.Wi) ? to_acc(x[iy * p.sH + ix * p.sW]) : A(0);
  }
  __syncthreads();
  const A bias = p.bias ? to_acc(static_cast<const T*>(p.bias)[c]) : A(0);
  const int col = threadIdx.x % kTileW, r0 = (threadIdx.x / kTileW) * kStrip;
  A acc[kStrip];
#pragma unroll
  for (int r = 0; r < kStrip; ++r) acc[r] = bias;
  // Input row r0 + j feeds output row r0 + r through filter row j - r.
  for (int j = 0; j < kStrip + K - 1; ++j) {
    const A* in = tile + (r0 + j) * tile_w + col;
    for (int kx = 0; kx < K; ++kx) {
      const A v = in[kx];
#pragma unroll
      for (int r = 0; r < kStrip; ++r) {
        const int ky = j - r;
        if (ky >= 0 && ky < K) acc[r] += w[ky * K + kx] * v;
      }
    }
  }
  T* y = static_cast<T*>(p.y) + bc * p.Ho * p.Wo;
  const int64_t ox = ox0 + col;
  if (ox >= p.Wo) return;
#pragma unroll
  for (int r = 0; r < kStrip; ++r) {
    const int64_t oy = oy0 + r0 + r;
    if (oy < p.Ho) y[oy * p.Wo + ox] = from_acc<T>(acc[r]);
  }
}

// Threads along channels; each a strip of kStripCl output rows at one (b, ox, c).
template <class T>
__global__ void __launch_bounds__(kThreads) forward_nhwc(DwConvParams p) {
  using A = typename Acc<T>::type;
  const int64_t strips = (p.Ho + kStripCl - 1) / kStripCl;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.B * strips * p.Wo * p.C) return;
  const int64_t c = idx % p.C, rest = idx / p.C;
  const int64_t ox = rest % p.Wo, rest2 = rest / p.Wo;
  const int64_t s = rest2 % strips, b = rest2 / strips;
  const int64_t oy0 = s * kStripCl;
  const int K = static_cast<int>(p.K);
  const T* x = static_cast<const T*>(p.x) + b * p.sB + c * p.sC;
  const A bias = p.bias ? to_acc(static_cast<const T*>(p.bias)[c]) : A(0);
  A acc[kStripCl];
#pragma unroll
  for (int r = 0; r < kStripCl; ++r) acc[r] = bias;
  for (int j = 0; j < kStripCl + K - 1; ++j) {
    const int64_t iy = oy0 + j - p.pad;
    if (iy < 0 || iy >= p.Hi) continue;
    for (int kx = 0; kx < K; ++kx) {
      const int64_t ix = ox + kx - p.pad;
      if (ix < 0 || ix >= p.Wi) continue;
      const A v = to_acc(x[iy * p.sH + ix * p.sW]);
#pragma unroll
      for (int r = 0; r < kStripCl; ++r) {
        const int ky = j - r;
        if (ky >= 0 && ky < K) acc[r] += weight_at<T>(p, c, ky * K + kx) * v;
      }
    }
  }
  T* y = static_cast<T*>(p.y);
#pragma unroll
  for (int r = 0; r < kStripCl; ++r) {
    const int64_t oy = oy0 + r;
    if (oy < p.Ho) y[((b * p.Ho + oy) * p.Wo + ox) * p.C + c] = from_acc<T>(acc[r]);
  }
}

struct GradSplit {
  int64_t slices;  // row slices per channel
  int64_t rows;    // B * Ho
  int64_t rows_per_slice;
};

GradSplit grad_split(const DwConvParams& p) {
  GradSplit g{};
  g.rows = p.B * p.Ho;
  g.slices = std::max<int64_t>(1, std::min<int64_t>(g.rows, (1056 + p.C - 1) / std::max<int64_t>(p.C, 1)));
  g.rows_per_slice = (g.rows + g.slices - 1) / g.slices;
  g.slices = (g.rows + g.rows_per_slice - 1) / g.rows_per_slice;
  return g;
}

// Partial sums of (taps + bias) of channel blockIdx.x over the rows of slice blockIdx.y.
template <class T>
__global__ void __launch_bounds__(kThreads) weight_grad_partial(DwConvWeightGradParams g, GradSplit s,
                                                                typename Acc<T>::type* partial) {
  using A = typename Acc<T>::type;
  const DwConvParams& p = g.shape;
  __shared__ A fold[kThreads];
  const int K = static_cast<int>(p.K), taps = K * K + 1;  // the last "tap" is the bias
  const int groups = std::max(1, kThreads / taps);
  const int64_t c = blockIdx.x, slice = blockIdx.y;
  const int64_t row0 = slice * s.rows_per_slice, row1 = std::min(s.rows, row0 + s.rows_per_slice);
  const T* go = static_cast<const T*>(p.y);
  const int64_t positions = (row1 - row0) * p.Wo;
  for (int t0 = 0; t0 < taps; t0 += kThreads / groups) {
    const int group = threadIdx.x / (kThreads / groups), t = t0 + threadIdx.x % (kThreads / groups);
    A acc = 0;
    if (group < groups && t < taps) {
      const int ky = t / K, kx = t % K;
      for (int64_t i = group; i < positions; i += groups) {
        const int64_t row = row0 + i / p.Wo, ox = i % p.Wo;
        const int64_t b = row / p.Ho, oy = row % p.Ho;
        const int64_t gidx = p.channels_last ? ((b * p.Ho + oy) * p.Wo + ox) * p.C + c
                                             : ((b * p.C + c) * p.Ho + oy) * p.Wo + ox;
        const A gv = to_acc(go[gidx]);
        if (t == taps - 1) {
          acc += gv;
          continue;
        }
        const int64_t iy = oy + ky - p.pad, ix = ox + kx - p.pad;
        if (iy >= 0 && iy < p.Hi && ix >= 0 && ix < p.Wi)
          acc += gv * to_acc(static_cast<const T*>(p.x)[b * p.sB + c * p.sC + iy * p.sH + ix * p.sW]);
      }
    }
    fold[threadIdx.x] = acc;
    __syncthreads();
    const int per = kThreads / groups;
    if (threadIdx.x < per && t0 + int(threadIdx.x) < taps) {
      A total = 0;
      for (int gi = 0; gi < groups; ++gi) total += fold[gi * per + threadIdx.x];
      partial[(slice * p.C + c) * taps + t0 + threadIdx.x] = total;
    }
    __syncthreads();
  }
}

template <class T>
__global__ void weight_grad_finish(DwConvWeightGradParams g, GradSplit s, const typename Acc<T>::type* partial) {
  using A = typename Acc<T>::type;
  const DwConvParams& p = g.shape;
  const int64_t taps = p.K * p.K + 1;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.C * taps) return;
  const int64_t c = i / taps, t = i % taps;
  A total = 0;
  for (int64_t sl = 0; sl < s.slices; ++sl) total += partial[(sl * p.C + c) * taps + t];
  if (t < taps - 1) {
    static_cast<T*>(g.gw)[c * (taps - 1) + t] = from_acc<T>(total);
  } else if (g.gb) {
    static_cast<T*>(g.gb)[c] = from_acc<T>(total);
  }
}

size_t acc_size(DwDType t) { return t == DwDType::kDouble ? sizeof(double) : sizeof(float); }

}  // namespace

int depthwise_conv2d_forward(const DwConvParams& p, cudaStream_t stream) {
  if (p.K > kMaxK) return cudaErrorInvalidValue;
  return dispatch(p.dtype, [&](auto tag) -> int {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    if (p.channels_last) {
      const int64_t n = p.B * ((p.Ho + kStripCl - 1) / kStripCl) * p.Wo * p.C;
      return launch_kernel(forward_nhwc<T>, static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0, stream, p);
    } else {
      const size_t smem = (p.K * p.K + (kTileH + p.K - 1) * (kTileW + p.K - 1)) * sizeof(A);
      if (cudaError_t e = cudaFuncSetAttribute(forward_nchw<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
          e != cudaSuccess)
        return e;
      const dim3 grid(static_cast<unsigned>(p.B * p.C), static_cast<unsigned>((p.Ho + kTileH - 1) / kTileH),
                      static_cast<unsigned>((p.Wo + kTileW - 1) / kTileW));
      return launch_kernel(forward_nchw<T>, grid, kThreads, smem, stream, p);
    }
  });
}

size_t depthwise_conv2d_weight_grad_workspace(const DwConvWeightGradParams& g) {
  const GradSplit s = grad_split(g.shape);
  return s.slices * g.shape.C * (g.shape.K * g.shape.K + 1) * acc_size(g.shape.dtype);
}

int depthwise_conv2d_weight_grad(const DwConvWeightGradParams& g, void* workspace, cudaStream_t stream) {
  const GradSplit s = grad_split(g.shape);
  return dispatch(g.shape.dtype, [&](auto tag) -> int {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    A* partial = static_cast<A*>(workspace);
    const dim3 grid(static_cast<unsigned>(g.shape.C), static_cast<unsigned>(s.slices));
    if (cudaError_t e = launch_kernel(weight_grad_partial<T>, grid, kThreads, 0, stream, g, s, partial); e != cudaSuccess)
      return e;
    const int64_t n = g.shape.C * (g.shape.K * g.shape.K + 1);
    return launch_kernel(weight_grad_finish<T>, static_cast<unsigned>((n + 255) / 256), 256, 0, stream, g, s, partial);
  });
}

}  // namespace taskkernels::cuda
