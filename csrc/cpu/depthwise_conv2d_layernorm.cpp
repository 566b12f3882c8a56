// LayerNorm over channels (ConvNeXt's front after the depthwise convolution), forward and
// backward, on the CPU. Per pixel: two passes over its C values (mean, then variance) in the
// accumulation type. The parameter gradients are summed per fixed chunk of pixels, then over the
// chunks in order, so they do not depend on the thread count.
#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <cmath>
#include <vector>

#include "cpu/depthwise_conv2d.h"

namespace taskkernels::cpu {
namespace {

constexpr int64_t kChunk = 256;  // pixels per partial sum of the parameter gradients

// Pixel i = (b, h, w) of y: its C values in the accumulation type (a straight copy when the
// channels are contiguous, as they are for the channels-last convolution output).
template <class T, class A>
void load_pixel(const ChannelNormParams& p, int64_t i, A* v) {
  const int64_t hw = p.H * p.W, b = i / hw, h = (i % hw) / p.W, w = i % p.W;
  const T* y = static_cast<const T*>(p.y) + b * p.sB + h * p.sH + w * p.sW;
  if (p.sC == 1) {
    for (int64_t c = 0; c < p.C; ++c) v[c] = static_cast<A>(y[c]);
  } else {
    for (int64_t c = 0; c < p.C; ++c) v[c] = static_cast<A>(y[c * p.sC]);
  }
}

// Sum of n values in 8 interleaved partial sums (vectorizable, and not one long dependency
// chain), folded in a fixed order.
template <class A>
A lane_sum(const A* v, int64_t n) {
  A part[8] = {};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int i = 0; i < 8; ++i) part[i] += v[c + i];
  for (int i = 0; c < n; ++c, ++i) part[i] += v[c];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

template <class A>
void moments(A* v, A* tmp, int64_t C, double eps, A* mean, A* rstd) {
  const A m = lane_sum(v, C) / static_cast<A>(C);
  for (int64_t c = 0; c < C; ++c) tmp[c] = (v[c] - m) * (v[c] - m);
  const A var = lane_sum(tmp, C) / static_cast<A>(C);
  *mean = m;
  *rstd = static_cast<A>(1.0 / std::sqrt(static_cast<double>(var) + eps));
}

template <class T, class A>
void forward(const ChannelNormParams& p) {
  const int64_t N = p.B * p.H * p.W, C = p.C;
  const T* gamma = static_cast<const T*>(p.gamma);
  const T* beta = static_cast<const T*>(p.beta);
  std::vector<A> g(C, A(1)), bt(C, A(0));
  for (int64_t c = 0; c < C; ++c) {
    if (gamma) g[c] = static_cast<A>(gamma[c]);
    if (beta) bt[c] = static_cast<A>(beta[c]);
  }
  torch::stable::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    std::vector<A> v(C), tmp(C);
    for (int64_t i = begin; i < end; ++i) {
      load_pixel<T, A>(p, i, v.data());
      A m, r;
      moments(v.data(), tmp.data(), C, p.eps, &m, &r);
      static_cast<A*>(p.mean)[i] = m;
      static_cast<A*>(p.rstd)[i] = r;
      T* out = static_cast<T*>(p.out) + i * C;
      for (int64_t c = 0; c < C; ++c) out[c] = static_cast<T>((v[c] - m) * r * g[c] + bt[c]);
    }
  });
}

template <class T, class A>
void backward(const ChannelNormBackwardParams& g) {
  const ChannelNormParams& p = g.fwd;
  const int64_t N = p.B * p.H * p.W, C = p.C, chunks = (N + kChunk - 1) / kChunk;
  const T* gamma = static_cast<const T*>(p.gamma);
  const bool params = g.ggamma || g.gbeta;
  std::vector<A> partial(params ? chunks * 2 * C : 0);
  std::vector<A> gm(C, A(1));
  if (gamma)
    for (int64_t c = 0; c < C; ++c) gm[c] = static_cast<A>(gamma[c]);
  torch::stable::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> v(C), gw(C), t(C);
    for (int64_t k = begin; k < end; ++k) {
      A* pg = params ? partial.data() + k * 2 * C : nullptr;
      if (pg)
        for (int64_t c = 0; c < 2 * C; ++c) pg[c] = 0;
      for (int64_t i = k * kChunk; i < (k + 1) * kChunk && i < N; ++i) {
        load_pixel<T, A>(p, i, v.data());
        const A m = static_cast<const A*>(p.mean)[i], r = static_cast<const A*>(p.rstd)[i];
        const T* go = static_cast<const T*>(g.grad_out) + i * C;
        for (int64_t c = 0; c < C; ++c) {
          v[c] = (v[c] - m) * r;  // xhat from here on
          const A gc = static_cast<A>(go[c]);
          gw[c] = gc * gm[c];
          t[c] = gw[c] * v[c];
          if (pg) {
            pg[c] += gc * v[c];
            pg[C + c] += gc;
          }
        }
        const A c1 = lane_sum(t.data(), C) / static_cast<A>(C), c2 = lane_sum(gw.data(), C) / static_cast<A>(C);
        T* dy = static_cast<T*>(g.dy) + i * C;
        for (int64_t c = 0; c < C; ++c) dy[c] = static_cast<T>(r * (gw[c] - c2 - v[c] * c1));
      }
    }
  });
  if (!params) return;
  for (int64_t c = 0; c < C; ++c) {
    A sg = 0, sb = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      sg += partial[k * 2 * C + c];
      sb += partial[k * 2 * C + C + c];
    }
    if (g.ggamma) static_cast<T*>(g.ggamma)[c] = static_cast<T>(sg);
    if (g.gbeta) static_cast<T*>(g.gbeta)[c] = static_cast<T>(sb);
  }
}

}  // namespace

void channel_layernorm_forward(const ChannelNormParams& p) {
  dispatch_dw(p.dtype, [&](auto t, auto a) { forward<decltype(t), decltype(a)>(p); });
}

void channel_layernorm_backward(const ChannelNormBackwardParams& p) {
  dispatch_dw(p.fwd.dtype, [&](auto t, auto a) { backward<decltype(t), decltype(a)>(p); });
}

}  // namespace taskkernels::cpu
