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

template <class F>
void dispatch(DwDType t, F&& f) {
  switch (t) {
    case DwDType::kHalf: return f(c10::Half{}, float{});
    case DwDType::kBFloat16: return f(c10::BFloat16{}, float{});
    case DwDType::kFloat: return f(float{}, float{});
    case DwDType::kDouble: return f(double{}, double{});
  }
}

// Pixel i = (b, h, w) of y: its C values in the accumulation type.
template <class T, class A>
void load_pixel(const ChannelNormParams& p, int64_t i, A* v) {
  const int64_t hw = p.H * p.W, b = i / hw, h = (i % hw) / p.W, w = i % p.W;
  const T* y = static_cast<const T*>(p.y) + b * p.sB + h * p.sH + w * p.sW;
  for (int64_t c = 0; c < p.C; ++c) v[c] = static_cast<A>(y[c * p.sC]);
}

template <class A>
void moments(const A* v, int64_t C, double eps, A* mean, A* rstd) {
  A m = 0;
  for (int64_t c = 0; c < C; ++c) m += v[c];
  m /= static_cast<A>(C);
  A var = 0;
  for (int64_t c = 0; c < C; ++c) var += (v[c] - m) * (v[c] - m);
  var /= static_cast<A>(C);
  *mean = m;
  *rstd = static_cast<A>(1.0 / std::sqrt(static_cast<double>(var) + eps));
}

template <class T, class A>
void forward(const ChannelNormParams& p) {
  const int64_t N = p.B * p.H * p.W, C = p.C;
  const T* gamma = static_cast<const T*>(p.gamma);
  const T* beta = static_cast<const T*>(p.beta);
  torch::stable::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    std::vector<A> v(C);
    for (int64_t i = begin; i < end; ++i) {
      load_pixel<T, A>(p, i, v.data());
      A m, r;
      moments(v.data(), C, p.eps, &m, &r);
      static_cast<A*>(p.mean)[i] = m;
      static_cast<A*>(p.rstd)[i] = r;
      T* out = static_cast<T*>(p.out) + i * C;
      for (int64_t c = 0; c < C; ++c) {
        A o = (v[c] - m) * r;
        if (gamma) o *= static_cast<A>(gamma[c]);
        if (beta) o += static_cast<A>(beta[c]);
        out[c] = static_cast<T>(o);
      }
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
  torch::stable::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> v(C), gw(C);
    for (int64_t k = begin; k < end; ++k) {
      A* pg = params ? partial.data() + k * 2 * C : nullptr;
      if (pg)
        for (int64_t c = 0; c < 2 * C; ++c) pg[c] = 0;
      for (int64_t i = k * kChunk; i < (k + 1) * kChunk && i < N; ++i) {
        load_pixel<T, A>(p, i, v.data());
        const A m = static_cast<const A*>(p.mean)[i], r = static_cast<const A*>(p.rstd)[i];
        const T* go = static_cast<const T*>(g.grad_out) + i * C;
        A c1 = 0, c2 = 0;
        for (int64_t c = 0; c < C; ++c) {
          const A xhat = (v[c] - m) * r, gc = static_cast<A>(go[c]);
          gw[c] = gamma ? gc * static_cast<A>(gamma[c]) : gc;
          c1 += gw[c] * xhat;
          c2 += gw[c];
          if (pg) {
            pg[c] += gc * xhat;
            pg[C + c] += gc;
          }
        }
        c1 /= static_cast<A>(C);
        c2 /= static_cast<A>(C);
        T* dy = static_cast<T*>(g.dy) + i * C;
        for (int64_t c = 0; c < C; ++c) dy[c] = static_cast<T>(r * (gw[c] - c2 - (v[c] - m) * r * c1));
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
  dispatch(p.dtype, [&](auto t, auto a) { forward<decltype(t), decltype(a)>(p); });
}

void channel_layernorm_backward(const ChannelNormBackwardParams& p) {
  dispatch(p.fwd.dtype, [&](auto t, auto a) { backward<decltype(t), decltype(a)>(p); });
}

}  // namespace taskkernels::cpu
