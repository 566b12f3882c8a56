// Depthwise convolution on the CPU.
//
// NCHW: one task per (batch, channel) plane. The plane is copied once, converted to the
// accumulation type, into a zero-padded buffer; each output row is then computed 16 columns at
// a time with the 16 accumulators in registers and one multiply-add per tap and column (the
// inner loop over the 16 columns vectorizes). NHWC (channels_last): one task per output row,
// the 16 accumulators running along channels, which are contiguous. The input gradient is the
// same convolution of grad_out with the filter rotated by 180 degrees and padding K - 1 - pad.
// Weight gradients: per channel (NCHW) or per block of 16 channels (NHWC), summed over the
// batch in order.
#include "cpu/depthwise_conv2d.h"

#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <vector>

namespace taskkernels::cpu {
namespace {

constexpr int64_t V = 16;  // accumulators per register block

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

template <class T, class A>
struct Filter {
  std::vector<A> w;  // (C, K, K), rotated when flipped
  std::vector<A> wt;  // (K, K, C): the channels-last kernels' order
  Filter(const DwConvParams& p, bool transposed) {
    const T* src = static_cast<const T*>(p.w);
    const int64_t KK = p.K * p.K;
    w.resize(p.C * KK);
    for (int64_t c = 0; c < p.C; ++c)
      for (int64_t t = 0; t < KK; ++t) w[c * KK + t] = static_cast<A>(src[c * KK + (p.flip ? KK - 1 - t : t)]);
    if (transposed) {
      wt.resize(p.C * KK);
      for (int64_t c = 0; c < p.C; ++c)
        for (int64_t t = 0; t < KK; ++t) wt[t * p.C + c] = w[c * KK + t];
    }
  }
};

// The (b, c) plane of x, zero-padded: row r, column q hold x[r - pad, q - pad]. Wide enough for
// every 16-column block of output.
template <class T, class A>
struct PaddedPlane {
  int64_t rows, width;
  std::vector<A> buf;
  explicit PaddedPlane(const DwConvParams& p)
      : rows(p.Ho + p.K - 1), width(round_up(p.Wo, V) + p.K - 1), buf(rows * width) {}
  void load(const DwConvParams& p, int64_t b, int64_t c) {
    std::fill(buf.begin(), buf.end(), A(0));
    const T* x = static_cast<const T*>(p.x) + b * p.sB + c * p.sC;
    const int64_t rows_in = std::min(p.Hi, rows - p.pad), cols_in = std::min(p.Wi, width - p.pad);
    for (int64_t h = 0; h < rows_in; ++h) {
      A* dst = buf.data() + (h + p.pad) * width + p.pad;
      const T* src = x + h * p.sH;
      for (int64_t w = 0; w < cols_in; ++w) dst[w] = static_cast<A>(src[w * p.sW]);
    }
  }
};

template <class T, class A>
void forward_nchw(const DwConvParams& p) {
  const Filter<T, A> f(p, false);
  const T* bias = static_cast<const T*>(p.bias);
  const int64_t K = p.K, KK = K * K;
  torch::stable::parallel_for(0, p.B * p.C, 1, [&](int64_t begin, int64_t end) {
    PaddedPlane<T, A> plane(p);
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / p.C, c = bc % p.C;
      plane.load(p, b, c);
      const A* w = f.w.data() + c * KK;
      const A b0 = bias ? static_cast<A>(bias[c]) : A(0);
      T* y = static_cast<T*>(p.y) + bc * p.Ho * p.Wo;
      for (int64_t oy = 0; oy < p.Ho; ++oy) {
        for (int64_t x0 = 0; x0 < p.Wo; x0 += V) {
          A acc[V];
          for (int64_t i = 0; i < V; ++i) acc[i] = b0;
          for (int64_t ky = 0; ky < K; ++ky) {
            const A* row = plane.buf.data() + (oy + ky) * plane.width + x0;
            for (int64_t kx = 0; kx < K; ++kx) {
              const A wv = w[ky * K + kx];
              for (int64_t i = 0; i < V; ++i) acc[i] += wv * row[kx + i];
            }
          }
          const int64_t n = std::min(V, p.Wo - x0);
          for (int64_t i = 0; i < n; ++i) y[oy * p.Wo + x0 + i] = static_cast<T>(acc[i]);
        }
      }
    }
  });
}

template <class T, class A>
void forward_nhwc(const DwConvParams& p) {
  const Filter<T, A> f(p, true);
  const T* bias = static_cast<const T*>(p.bias);
  const int64_t K = p.K, C = p.C;
  std::vector<A> b0(C, A(0));
  if (bias)
    for (int64_t c = 0; c < C; ++c) b0[c] = static_cast<A>(bias[c]);
  torch::stable::parallel_for(0, p.B * p.Ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> acc(C);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / p.Ho, oy = row % p.Ho;
      const T* xb = static_cast<const T*>(p.x) + b * p.sB;
      T* y = static_cast<T*>(p.y) + row * p.Wo * C;
      for (int64_t ox = 0; ox < p.Wo; ++ox) {
        std::copy(b0.begin(), b0.end(), acc.begin());
        for (int64_t ky = 0; ky < K; ++ky) {
          const int64_t iy = oy + ky - p.pad;
          if (iy < 0 || iy >= p.Hi) continue;
          for (int64_t kx = 0; kx < K; ++kx) {
            const int64_t ix = ox + kx - p.pad;
            if (ix < 0 || ix >= p.Wi) continue;
            const T* in = xb + iy * p.sH + ix * p.sW;
            const A* w = f.wt.data() + (ky * K + kx) * C;
            A* a = acc.data();
            for (int64_t c = 0; c < C; ++c) a[c] += w[c] * static_cast<A>(in[c]);
          }
        }
        for (int64_t c = 0; c < C; ++c) y[ox * C + c] = static_cast<T>(acc[c]);
      }
    }
  });
}

template <class T, class A>
void weight_grad_nchw(const DwConvWeightGradParams& g) {
  const DwConvParams& p = g.shape;
  const int64_t K = p.K, KK = K * K, gw_width = round_up(p.Wo, V);
  T* gw = static_cast<T*>(g.gw);
  T* gb = static_cast<T*>(g.gb);
  torch::stable::parallel_for(0, p.C, 1, [&](int64_t begin, int64_t end) {
    PaddedPlane<T, A> plane(p);
    std::vector<A> go(p.Ho * gw_width), sums(KK);
    for (int64_t c = begin; c < end; ++c) {
      std::fill(sums.begin(), sums.end(), A(0));
      A bias_sum = 0;
      for (int64_t b = 0; b < p.B; ++b) {
        plane.load(p, b, c);
        const T* src = static_cast<const T*>(p.y) + (b * p.C + c) * p.Ho * p.Wo;
        std::fill(go.begin(), go.end(), A(0));
        for (int64_t oy = 0; oy < p.Ho; ++oy)
          for (int64_t ox = 0; ox < p.Wo; ++ox) go[oy * gw_width + ox] = static_cast<A>(src[oy * p.Wo + ox]);
        for (int64_t ky = 0; ky < K; ++ky) {
          for (int64_t kx = 0; kx < K; ++kx) {
            A part[V] = {};
            for (int64_t oy = 0; oy < p.Ho; ++oy) {
              const A* in = plane.buf.data() + (oy + ky) * plane.width + kx;
              const A* gr = go.data() + oy * gw_width;
              for (int64_t x0 = 0; x0 < gw_width; x0 += V)
                for (int64_t i = 0; i < V; ++i) part[i] += gr[x0 + i] * in[x0 + i];
            }
            A s = 0;
            for (int64_t i = 0; i < V; ++i) s += part[i];
            sums[ky * K + kx] += s;
          }
        }
        if (gb) {
          A part[V] = {};
          for (int64_t j = 0; j < p.Ho * gw_width; j += V)
            for (int64_t i = 0; i < V; ++i) part[i] += go[j + i];
          for (int64_t i = 0; i < V; ++i) bias_sum += part[i];
        }
      }
      for (int64_t t = 0; t < KK; ++t) gw[c * KK + t] = static_cast<T>(sums[t]);
      if (gb) gb[c] = static_cast<T>(bias_sum);
    }
  });
}

template <class T, class A>
void weight_grad_nhwc(const DwConvWeightGradParams& g) {
  const DwConvParams& p = g.shape;
  const int64_t K = p.K, KK = K * K, C = p.C;
  T* gw = static_cast<T*>(g.gw);
  T* gb = static_cast<T*>(g.gb);
  const int64_t blocks = (C + V - 1) / V;
  torch::stable::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> sums(KK * V), bsum(V);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * V, n = std::min(V, C - c0);
      std::fill(sums.begin(), sums.end(), A(0));
      std::fill(bsum.begin(), bsum.end(), A(0));
      for (int64_t b = 0; b < p.B; ++b) {
        const T* xb = static_cast<const T*>(p.x) + b * p.sB + c0 * p.sC;
        for (int64_t oy = 0; oy < p.Ho; ++oy) {
          for (int64_t ox = 0; ox < p.Wo; ++ox) {
            const T* go = static_cast<const T*>(p.y) + ((b * p.Ho + oy) * p.Wo + ox) * C + c0;
            A gv[V] = {};
            for (int64_t i = 0; i < n; ++i) gv[i] = static_cast<A>(go[i]);
            for (int64_t i = 0; i < V; ++i) bsum[i] += gv[i];
            for (int64_t ky = 0; ky < K; ++ky) {
              const int64_t iy = oy + ky - p.pad;
              if (iy < 0 || iy >= p.Hi) continue;
              for (int64_t kx = 0; kx < K; ++kx) {
                const int64_t ix = ox + kx - p.pad;
                if (ix < 0 || ix >= p.Wi) continue;
                const T* in = xb + iy * p.sH + ix * p.sW;
                A xv[V] = {};
                for (int64_t i = 0; i < n; ++i) xv[i] = static_cast<A>(in[i]);
                A* s = sums.data() + (ky * K + kx) * V;
                for (int64_t i = 0; i < V; ++i) s[i] += gv[i] * xv[i];
              }
            }
          }
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t t = 0; t < KK; ++t) gw[(c0 + i) * KK + t] = static_cast<T>(sums[t * V + i]);
        if (gb) gb[c0 + i] = static_cast<T>(bsum[i]);
      }
    }
  });
}

template <class F>
void dispatch(DwDType t, F&& f) {
  switch (t) {
    case DwDType::kHalf: return f(c10::Half{}, float{});
    case DwDType::kBFloat16: return f(c10::BFloat16{}, float{});
    case DwDType::kFloat: return f(float{}, float{});
    case DwDType::kDouble: return f(double{}, double{});
  }
}

}  // namespace

void depthwise_conv2d_forward(const DwConvParams& p) {
  dispatch(p.dtype, [&](auto t, auto a) {
    using T = decltype(t);
    using A = decltype(a);
    p.channels_last ? forward_nhwc<T, A>(p) : forward_nchw<T, A>(p);
  });
}

void depthwise_conv2d_weight_grad(const DwConvWeightGradParams& g) {
  dispatch(g.shape.dtype, [&](auto t, auto a) {
    using T = decltype(t);
    using A = decltype(a);
    g.shape.channels_last ? weight_grad_nhwc<T, A>(g) : weight_grad_nchw<T, A>(g);
  });
}

}  // namespace taskkernels::cpu
