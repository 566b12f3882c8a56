// Depthwise convolution on the CPU, written once and compiled once per instruction set: the
// including file defines TK_DW_NS (a namespace of its own, so the two copies never merge at link
// time; for the same reason no std container or algorithm template is instantiated here).
//
// NCHW: one task per (batch, channel) plane, copied once (converted to the accumulation type)
// into a zero-padded buffer. A register block of 4 output rows x 16 columns: each input row
// loaded feeds the up to 4 outputs rows it touches (filter row = input row - output row), so a
// block costs (4 + K - 1) K loads of 16 values for 4 K^2 multiply-adds of 16.
// NHWC (channels_last): one task per output row; a register block of 4 output columns x 16
// channels, each filter tap's 16 weights loaded once for the 4 columns.
// The input gradient is the same convolution of grad_out with the rotated filter. Weight
// gradients: per channel (NCHW) or per block of 16 channels (NHWC), summed over the batch in a
// fixed order. K = 3, 5, 7 are compiled with the kernel size fixed; other sizes use the same
// code with K read at run time.
#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <type_traits>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "cpu/depthwise_conv2d.h"

namespace taskkernels::cpu::TK_DW_NS {
namespace {

constexpr int64_t V = 16;  // lanes of a register block
constexpr int64_t R = 4;   // rows (NCHW) or columns (NHWC) of a register block
constexpr int64_t W32 = 32;  // columns of the AVX2 NCHW block (the padded plane's width unit)

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

template <class A>
struct Buffer {
  A* p;
  int64_t n;
  explicit Buffer(int64_t count) : p(new A[count > 0 ? count : 1]()), n(count) {}
  ~Buffer() { delete[] p; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void zero() {
    for (int64_t i = 0; i < n; ++i) p[i] = A(0);
  }
};

// Filter in the accumulation type: (C, K, K), rotated when p.flip; and (K, K, Cpad) with the
// channels padded to a multiple of V with zeros, for the channels-last kernels.
template <class T, class A>
struct Filter {
  int64_t cpad;
  Buffer<A> w, wt;
  Filter(const DwConvParams& p) : cpad(round_up(p.C, V)), w(p.C * p.K * p.K), wt(p.K * p.K * round_up(p.C, V)) {
    const T* src = static_cast<const T*>(p.w);
    const int64_t KK = p.K * p.K;
    for (int64_t c = 0; c < p.C; ++c)
      for (int64_t t = 0; t < KK; ++t) {
        const A v = static_cast<A>(src[c * KK + (p.flip ? KK - 1 - t : t)]);
        w.p[c * KK + t] = v;
        wt.p[t * cpad + c] = v;
      }
  }
};

// Plane (b, c) of x, zero-padded: buf[r * width + q] = x[r - pad, q - pad]. Tall and wide enough
// for every register block of the output (blocks of 2 or 4 rows; 8 to 32 columns).
template <class T, class A>
struct PaddedPlane {
  int64_t rows, width;
  Buffer<A> buf;
  explicit PaddedPlane(const DwConvParams& p)
      : rows(round_up(p.Ho, R) + p.K - 1), width(round_up(p.Wo, W32) + p.K - 1), buf(rows * width) {}
  // Every plane writes the same interior, so the zero border from construction stays valid.
  void load(const DwConvParams& p, int64_t b, int64_t c) {
    const T* x = static_cast<const T*>(p.x) + b * p.sB + c * p.sC;
    const int64_t rows_in = min64(p.Hi, rows - p.pad), cols_in = min64(p.Wi, width - p.pad);
    for (int64_t h = 0; h < rows_in; ++h) {
      A* dst = buf.p + (h + p.pad) * width + p.pad;
      const T* src = x + h * p.sH;
      if (p.sW == 1) {
        for (int64_t w = 0; w < cols_in; ++w) dst[w] = static_cast<A>(src[w]);
      } else {
        for (int64_t w = 0; w < cols_in; ++w) dst[w] = static_cast<A>(src[w * p.sW]);
      }
    }
  }
};

// One plane: R x V output blocks. KC = K when fixed at compile time, else 0.
template <int KC, class T, class A>
void plane_forward(const PaddedPlane<T, A>& plane, const A* w, A bias, int64_t K_rt, int64_t Ho, int64_t Wo, T* y) {
  const int64_t K = KC ? KC : K_rt;
  for (int64_t oy0 = 0; oy0 < Ho; oy0 += R) {
    for (int64_t x0 = 0; x0 < Wo; x0 += V) {
      A acc[R][V];
      for (int64_t r = 0; r < R; ++r)
        for (int64_t i = 0; i < V; ++i) acc[r][i] = bias;
      for (int64_t j = 0; j < R + K - 1; ++j) {
        const A* in = plane.buf.p + (oy0 + j) * plane.width + x0;
        for (int64_t kx = 0; kx < K; ++kx) {
          A v[V];
          for (int64_t i = 0; i < V; ++i) v[i] = in[kx + i];
          for (int64_t r = 0; r < R; ++r) {
            const int64_t ky = j - r;
            if (ky < 0 || ky >= K) continue;
            const A wv = w[ky * K + kx];
            for (int64_t i = 0; i < V; ++i) acc[r][i] += wv * v[i];
          }
        }
      }
      const int64_t n = min64(V, Wo - x0);
      for (int64_t r = 0; r < R && oy0 + r < Ho; ++r)
        for (int64_t i = 0; i < n; ++i) y[(oy0 + r) * Wo + x0 + i] = static_cast<T>(acc[r][i]);
    }
  }
}


#ifdef __AVX2__
// float, AVX2 + FMA: blocks of RB output rows x 8 NV columns (RB NV accumulators). Input row
// oy0 + j feeds output row oy0 + r with filter row j - r, so each input vector loaded serves up
// to RB multiply-adds.
template <int NV, int RB>
void plane_forward_avx2(const float* buf, int64_t width, const float* w, float bias, int64_t K, int64_t Ho,
                        int64_t Wo, float* y) {
  constexpr int64_t BW = 8 * NV;
  for (int64_t oy0 = 0; oy0 < Ho; oy0 += RB) {
    for (int64_t x0 = 0; x0 < Wo; x0 += BW) {
      __m256 a[RB][NV];
      for (int r = 0; r < RB; ++r)
        for (int i = 0; i < NV; ++i) a[r][i] = _mm256_set1_ps(bias);
      for (int64_t j = 0; j < K + RB - 1; ++j) {
        const float* in = buf + (oy0 + j) * width + x0;
        for (int64_t kx = 0; kx < K; ++kx) {
          __m256 v[NV];
          for (int i = 0; i < NV; ++i) v[i] = _mm256_loadu_ps(in + kx + 8 * i);
          for (int r = 0; r < RB; ++r) {
            const int64_t ky = j - r;
            if (ky < 0 || ky >= K) continue;
            const __m256 wv = _mm256_broadcast_ss(w + ky * K + kx);
            for (int i = 0; i < NV; ++i) a[r][i] = _mm256_fmadd_ps(wv, v[i], a[r][i]);
          }
        }
      }
      const int64_t n = min64(BW, Wo - x0);
      alignas(32) float tmp[RB][BW];
      for (int r = 0; r < RB; ++r)
        for (int i = 0; i < NV; ++i) _mm256_store_ps(tmp[r] + 8 * i, a[r][i]);
      for (int r = 0; r < RB && oy0 + r < Ho; ++r) {
        float* dst = y + (oy0 + r) * Wo + x0;
        for (int64_t i = 0; i < n; ++i) dst[i] = tmp[r][i];
      }
    }
  }
}

// float, AVX2 + FMA, K fixed at compile time (filter loops unrolled, no run-time test of which
// rows a tap reaches), for narrow planes: measured (whole-process A/B runs, 8 x 768 x 7 x 7) 35%
// faster than plane_forward_avx2 there, but 5-20% slower at 14 and 28 columns (code size), so
// only used up to 8 columns.
template <int K, int NV, int RB>
void plane_forward_avx2_v(const float* buf, int64_t width, const float* w, float bias, int64_t Ho, int64_t Wo,
                          float* y) {
  constexpr int64_t BW = 8 * NV;
  for (int64_t oy0 = 0; oy0 < Ho; oy0 += RB) {
    for (int64_t x0 = 0; x0 < Wo; x0 += BW) {
      __m256 a[RB][NV];
#pragma GCC unroll 8
      for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
        for (int i = 0; i < NV; ++i) a[r][i] = _mm256_set1_ps(bias);
#pragma GCC unroll 16
      for (int j = 0; j < K + RB - 1; ++j) {
        const float* in = buf + (oy0 + j) * width + x0;
#pragma GCC unroll 8
        for (int kx = 0; kx < K; ++kx) {
          __m256 v[NV];
#pragma GCC unroll 8
          for (int i = 0; i < NV; ++i) v[i] = _mm256_loadu_ps(in + kx + 8 * i);
#pragma GCC unroll 8
          for (int r = 0; r < RB; ++r) {
            if (j - r < 0 || j - r >= K) continue;
            const __m256 wv = _mm256_broadcast_ss(w + (j - r) * K + kx);
#pragma GCC unroll 8
            for (int i = 0; i < NV; ++i) a[r][i] = _mm256_fmadd_ps(wv, v[i], a[r][i]);
          }
        }
      }
      const int64_t rows = min64(RB, Ho - oy0);
      for (int r = 0; r < rows; ++r) {
        float* dst = y + (oy0 + r) * Wo + x0;
        for (int i = 0; i < NV; ++i) {
          const int64_t left = Wo - x0 - 8 * i;
          if (left >= 8) {
            _mm256_storeu_ps(dst + 8 * i, a[r][i]);
          } else if (left > 0) {
            const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            _mm256_maskstore_ps(dst + 8 * i, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(left)), lane), a[r][i]);
          }
        }
      }
    }
  }
}

inline float hsum(__m256 v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
}

// float, AVX2 + FMA: sums of NK neighbouring filter columns of filter row ky at once.
template <int NK>
void weight_grad_columns_avx2(const float* buf, int64_t width, const float* go, int64_t gwidth, int64_t Ho,
                              int64_t ky, int64_t kx0, float* sums) {
  __m256 p[NK];
  for (int k = 0; k < NK; ++k) p[k] = _mm256_setzero_ps();
  for (int64_t oy = 0; oy < Ho; ++oy) {
    const float* g = go + oy * gwidth;
    const float* in = buf + (oy + ky) * width + kx0;
    for (int64_t x0 = 0; x0 < gwidth; x0 += 8) {
      const __m256 gv = _mm256_loadu_ps(g + x0);
      for (int k = 0; k < NK; ++k) p[k] = _mm256_fmadd_ps(gv, _mm256_loadu_ps(in + x0 + k), p[k]);
    }
  }
  for (int k = 0; k < NK; ++k) sums[k] += hsum(p[k]);
}

inline void plane_weight_grad_avx2(const float* buf, int64_t width, const float* go, int64_t gwidth, int64_t Ho,
                                   int64_t K, float* sums) {
  for (int64_t ky = 0; ky < K; ++ky) {
    for (int64_t kx0 = 0; kx0 < K; kx0 += 8) {
      float* s = sums + ky * K + kx0;
      switch (min64(8, K - kx0)) {
        case 1: weight_grad_columns_avx2<1>(buf, width, go, gwidth, Ho, ky, kx0, s); break;
        case 2: weight_grad_columns_avx2<2>(buf, width, go, gwidth, Ho, ky, kx0, s); break;
        case 3: weight_grad_columns_avx2<3>(buf, width, go, gwidth, Ho, ky, kx0, s); break;
        case 4: weight_grad_columns_avx2<4>(buf, width, go, gwidth, Ho, ky, kx0, s); break;
        case 5: weight_grad_columns_avx2<5>(buf, width, go, gwidth, Ho, ky, kx0, s); break;
        case 6: weight_grad_columns_avx2<6>(buf, width, go, gwidth, Ho, ky, kx0, s); break;
        case 7: weight_grad_columns_avx2<7>(buf, width, go, gwidth, Ho, ky, kx0, s); break;
        default: weight_grad_columns_avx2<8>(buf, width, go, gwidth, Ho, ky, kx0, s);
      }
    }
  }
}

// float channels-last, AVX2 + FMA: one output row, blocks of 4 columns x 16 channels.
inline void row_forward_nhwc_avx2(const DwConvParams& p, const float* wt, int64_t cpad, const float* b0, int64_t b,
                                  int64_t oy) {
  const int64_t K = p.K, C = p.C;
  const float* xb = static_cast<const float*>(p.x) + b * p.sB;
  float* y = static_cast<float*>(p.y) + (b * p.Ho + oy) * p.Wo * C;
  const int64_t ky0 = max64(0, p.pad - oy), ky1 = min64(K, p.Hi + p.pad - oy);
  for (int64_t c0 = 0; c0 + V <= C; c0 += V) {
    for (int64_t ox0 = 0; ox0 < p.Wo; ox0 += R) {
      __m256 a[R][2];
      for (int q = 0; q < R; ++q) {
        a[q][0] = _mm256_loadu_ps(b0 + c0);
        a[q][1] = _mm256_loadu_ps(b0 + c0 + 8);
      }
      for (int64_t ky = ky0; ky < ky1; ++ky) {
        const float* xrow = xb + (oy + ky - p.pad) * p.sH + c0;
        for (int64_t kx = 0; kx < K; ++kx) {
          const float* wv = wt + (ky * K + kx) * cpad + c0;
          const __m256 w0 = _mm256_loadu_ps(wv), w1 = _mm256_loadu_ps(wv + 8);
          for (int q = 0; q < R; ++q) {
            const int64_t ix = ox0 + q + kx - p.pad;
            if (ox0 + q >= p.Wo || ix < 0 || ix >= p.Wi) continue;
            const float* in = xrow + ix * p.sW;
            a[q][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(in), a[q][0]);
            a[q][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(in + 8), a[q][1]);
          }
        }
      }
      for (int q = 0; q < R && ox0 + q < p.Wo; ++q) {
        _mm256_storeu_ps(y + (ox0 + q) * C + c0, a[q][0]);
        _mm256_storeu_ps(y + (ox0 + q) * C + c0 + 8, a[q][1]);
      }
    }
  }
}

// float channels-last weight gradient, AVX2 + FMA: for each tap a run along the output columns
// with the 16 channel sums in two registers.
inline void row_weight_grad_nhwc_avx2(const DwConvParams& p, const float* xrow, const float* gorow, int64_t ky,
                                      float* sums) {
  const int64_t K = p.K;
  for (int64_t kx = 0; kx < K; ++kx) {
    const int64_t ox0 = max64(0, p.pad - kx), ox1 = min64(p.Wo, p.Wi + p.pad - kx);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int64_t ox = ox0; ox < ox1; ++ox) {
      const float* in = xrow + (ox + kx - p.pad) * p.sW;
      const float* g = gorow + ox * V;
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(g), _mm256_loadu_ps(in), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(g + 8), _mm256_loadu_ps(in + 8), a1);
    }
    float* s = sums + (ky * K + kx) * V;
    _mm256_storeu_ps(s, _mm256_add_ps(_mm256_loadu_ps(s), a0));
    _mm256_storeu_ps(s + 8, _mm256_add_ps(_mm256_loadu_ps(s + 8), a1));
  }
}
#endif  // __AVX2__

template <class T, class A>
void forward_nchw(const DwConvParams& p) {
  const Filter<T, A> f(p);
  const T* bias = static_cast<const T*>(p.bias);
  const int64_t KK = p.K * p.K;
  torch::stable::parallel_for(0, p.B * p.C, 1, [&](int64_t begin, int64_t end) {
    PaddedPlane<T, A> plane(p);
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / p.C, c = bc % p.C;
      plane.load(p, b, c);
      const A* w = f.w.p + c * KK;
      const A b0 = bias ? static_cast<A>(bias[c]) : A(0);
      T* y = static_cast<T*>(p.y) + bc * p.Ho * p.Wo;
#ifdef __AVX2__
      if constexpr (std::is_same_v<T, float>) {
        if (p.Wo <= 8) switch (p.K) {
          case 3: plane_forward_avx2_v<3, 1, 4>(plane.buf.p, plane.width, w, b0, p.Ho, p.Wo, y); continue;
          case 5: plane_forward_avx2_v<5, 1, 4>(plane.buf.p, plane.width, w, b0, p.Ho, p.Wo, y); continue;
          case 7: plane_forward_avx2_v<7, 1, 4>(plane.buf.p, plane.width, w, b0, p.Ho, p.Wo, y); continue;
          default: break;
        }
        if (p.Wo <= 8) {
          plane_forward_avx2<1, 4>(plane.buf.p, plane.width, w, b0, p.K, p.Ho, p.Wo, y);
        } else if (p.Wo <= 16) {
          plane_forward_avx2<2, 4>(plane.buf.p, plane.width, w, b0, p.K, p.Ho, p.Wo, y);
        } else {
          plane_forward_avx2<4, 2>(plane.buf.p, plane.width, w, b0, p.K, p.Ho, p.Wo, y);
        }
        continue;
      }
#endif
      switch (p.K) {
        case 3: plane_forward<3>(plane, w, b0, 3, p.Ho, p.Wo, y); break;
        case 5: plane_forward<5>(plane, w, b0, 5, p.Ho, p.Wo, y); break;
        case 7: plane_forward<7>(plane, w, b0, 7, p.Ho, p.Wo, y); break;
        default: plane_forward<0>(plane, w, b0, p.K, p.Ho, p.Wo, y);
      }
    }
  });
}

// One output row (b, oy) of the channels-last forward; R x V blocks of (columns, channels).
template <int KC, class T, class A>
void row_forward_nhwc(const DwConvParams& p, const Filter<T, A>& f, const A* b0, int64_t b, int64_t oy) {
  const int64_t K = KC ? KC : p.K, C = p.C;
  const T* xb = static_cast<const T*>(p.x) + b * p.sB;
  T* y = static_cast<T*>(p.y) + (b * p.Ho + oy) * p.Wo * C;
  const int64_t ky0 = max64(0, p.pad - oy), ky1 = min64(K, p.Hi + p.pad - oy);
  int64_t first = 0;
#ifdef __AVX2__
  if constexpr (std::is_same_v<T, float>) {
    row_forward_nhwc_avx2(p, f.wt.p, f.cpad, b0, b, oy);
    first = C / V * V;  // the tail of fewer than V channels below
  }
#endif
  for (int64_t c0 = first; c0 < C; c0 += V) {
    const int64_t n = min64(V, C - c0);
    for (int64_t ox0 = 0; ox0 < p.Wo; ox0 += R) {
      A acc[R][V];
      for (int64_t q = 0; q < R; ++q)
        for (int64_t i = 0; i < V; ++i) acc[q][i] = b0[c0 + i];
      for (int64_t ky = ky0; ky < ky1; ++ky) {
        const T* xrow = xb + (oy + ky - p.pad) * p.sH + c0;
        for (int64_t kx = 0; kx < K; ++kx) {
          const A* wv = f.wt.p + (ky * K + kx) * f.cpad + c0;
          for (int64_t q = 0; q < R; ++q) {
            const int64_t ix = ox0 + q + kx - p.pad;
            if (ox0 + q >= p.Wo || ix < 0 || ix >= p.Wi) continue;
            const T* in = xrow + ix * p.sW;
            if (n == V) {
              for (int64_t i = 0; i < V; ++i) acc[q][i] += wv[i] * static_cast<A>(in[i]);
            } else {
              for (int64_t i = 0; i < n; ++i) acc[q][i] += wv[i] * static_cast<A>(in[i]);
            }
          }
        }
      }
      for (int64_t q = 0; q < R && ox0 + q < p.Wo; ++q)
        for (int64_t i = 0; i < n; ++i) y[(ox0 + q) * C + c0 + i] = static_cast<T>(acc[q][i]);
    }
  }
}

template <class T, class A>
void forward_nhwc(const DwConvParams& p) {
  const Filter<T, A> f(p);
  const T* bias = static_cast<const T*>(p.bias);
  Buffer<A> b0(f.cpad);
  if (bias)
    for (int64_t c = 0; c < p.C; ++c) b0.p[c] = static_cast<A>(bias[c]);
  torch::stable::parallel_for(0, p.B * p.Ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / p.Ho, oy = row % p.Ho;
      switch (p.K) {
        case 3: row_forward_nhwc<3>(p, f, b0.p, b, oy); break;
        case 5: row_forward_nhwc<5>(p, f, b0.p, b, oy); break;
        case 7: row_forward_nhwc<7>(p, f, b0.p, b, oy); break;
        default: row_forward_nhwc<0>(p, f, b0.p, b, oy);
      }
    }
  });
}

// sums[ky * K + kx] += sum over the plane of go * shifted input, one filter row at a time with
// the K column sums in registers.
template <int KC, class T, class A>
void plane_weight_grad(const PaddedPlane<T, A>& plane, const A* go, int64_t gwidth, int64_t Ho, int64_t K_rt, A* sums) {
  const int64_t K = KC ? KC : K_rt;
  constexpr int64_t KB = KC ? KC : 1;  // column sums held at once
  for (int64_t ky = 0; ky < K; ++ky) {
    for (int64_t kx0 = 0; kx0 < K; kx0 += KB) {
      const int64_t nk = min64(KB, K - kx0);
      A part[KB][V];
      for (int64_t k = 0; k < KB; ++k)
        for (int64_t i = 0; i < V; ++i) part[k][i] = A(0);
      for (int64_t oy = 0; oy < Ho; ++oy) {
        const A* g = go + oy * gwidth;
        const A* in = plane.buf.p + (oy + ky) * plane.width + kx0;
        for (int64_t x0 = 0; x0 < gwidth; x0 += V) {
          A gv[V];
          for (int64_t i = 0; i < V; ++i) gv[i] = g[x0 + i];
          for (int64_t k = 0; k < KB; ++k)
            for (int64_t i = 0; i < V; ++i) part[k][i] += gv[i] * in[x0 + k + i];
        }
      }
      for (int64_t k = 0; k < nk; ++k) {
        A s = 0;
        for (int64_t i = 0; i < V; ++i) s += part[k][i];
        sums[ky * K + kx0 + k] += s;
      }
    }
  }
}

template <class T, class A>
void weight_grad_nchw(const DwConvWeightGradParams& g) {
  const DwConvParams& p = g.shape;
  const int64_t K = p.K, KK = K * K, gwidth = round_up(p.Wo, V);
  T* gw = static_cast<T*>(g.gw);
  T* gb = static_cast<T*>(g.gb);
  torch::stable::parallel_for(0, p.C, 1, [&](int64_t begin, int64_t end) {
    PaddedPlane<T, A> plane(p);
    Buffer<A> go(p.Ho * gwidth + V), sums(KK);
    for (int64_t c = begin; c < end; ++c) {
      sums.zero();
      A bias_sum = 0;
      for (int64_t b = 0; b < p.B; ++b) {
        plane.load(p, b, c);
        const T* src = static_cast<const T*>(p.y) + (b * p.C + c) * p.Ho * p.Wo;
        go.zero();
        for (int64_t oy = 0; oy < p.Ho; ++oy)
          for (int64_t ox = 0; ox < p.Wo; ++ox) go.p[oy * gwidth + ox] = static_cast<A>(src[oy * p.Wo + ox]);
#ifdef __AVX2__
        if constexpr (std::is_same_v<A, float>) {
          plane_weight_grad_avx2(plane.buf.p, plane.width, go.p, gwidth, p.Ho, K, sums.p);
        } else
#endif
        switch (K) {
          case 3: plane_weight_grad<3>(plane, go.p, gwidth, p.Ho, 3, sums.p); break;
          case 5: plane_weight_grad<5>(plane, go.p, gwidth, p.Ho, 5, sums.p); break;
          case 7: plane_weight_grad<7>(plane, go.p, gwidth, p.Ho, 7, sums.p); break;
          default: plane_weight_grad<0>(plane, go.p, gwidth, p.Ho, K, sums.p);
        }
        if (gb) {
          A part[V] = {};
          for (int64_t j = 0; j < p.Ho * gwidth; j += V)
            for (int64_t i = 0; i < V; ++i) part[i] += go.p[j + i];
          for (int64_t i = 0; i < V; ++i) bias_sum += part[i];
        }
      }
      for (int64_t t = 0; t < KK; ++t) gw[c * KK + t] = static_cast<T>(sums.p[t]);
      if (gb) gb[c] = static_cast<T>(bias_sum);
    }
  });
}

// Channels last: per block of V channels, per (b, oy, ky, kx) a run along the output columns
// with the V sums in registers.
template <class T, class A>
void weight_grad_nhwc(const DwConvWeightGradParams& g) {
  const DwConvParams& p = g.shape;
  const int64_t K = p.K, KK = K * K, C = p.C;
  T* gw = static_cast<T*>(g.gw);
  T* gb = static_cast<T*>(g.gb);
  const int64_t blocks = (C + V - 1) / V;
  torch::stable::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    Buffer<A> sums(KK * V), bsum(V), gorow(p.Wo * V);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * V, n = min64(V, C - c0);
      sums.zero();
      bsum.zero();
      for (int64_t b = 0; b < p.B; ++b) {
        const T* xb = static_cast<const T*>(p.x) + b * p.sB + c0 * p.sC;
        for (int64_t oy = 0; oy < p.Ho; ++oy) {
          const T* go = static_cast<const T*>(p.y) + (b * p.Ho + oy) * p.Wo * C + c0;
          gorow.zero();
          for (int64_t ox = 0; ox < p.Wo; ++ox)
            for (int64_t i = 0; i < n; ++i) gorow.p[ox * V + i] = static_cast<A>(go[ox * C + i]);
          for (int64_t ox = 0; ox < p.Wo; ++ox)
            for (int64_t i = 0; i < V; ++i) bsum.p[i] += gorow.p[ox * V + i];
          const int64_t ky0 = max64(0, p.pad - oy), ky1 = min64(K, p.Hi + p.pad - oy);
          for (int64_t ky = ky0; ky < ky1; ++ky) {
            const T* xrow = xb + (oy + ky - p.pad) * p.sH;
#ifdef __AVX2__
            if constexpr (std::is_same_v<T, float>) {
              if (n == V) {
                row_weight_grad_nhwc_avx2(p, xrow, gorow.p, ky, sums.p);
                continue;
              }
            }
#endif
            for (int64_t kx = 0; kx < K; ++kx) {
              const int64_t ox0 = max64(0, p.pad - kx), ox1 = min64(p.Wo, p.Wi + p.pad - kx);
              A acc[V] = {};
              for (int64_t ox = ox0; ox < ox1; ++ox) {
                const T* in = xrow + (ox + kx - p.pad) * p.sW;
                const A* gv = gorow.p + ox * V;
                if (n == V) {
                  for (int64_t i = 0; i < V; ++i) acc[i] += gv[i] * static_cast<A>(in[i]);
                } else {
                  for (int64_t i = 0; i < n; ++i) acc[i] += gv[i] * static_cast<A>(in[i]);
                }
              }
              A* s = sums.p + (ky * K + kx) * V;
              for (int64_t i = 0; i < V; ++i) s[i] += acc[i];
            }
          }
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t t = 0; t < KK; ++t) gw[(c0 + i) * KK + t] = static_cast<T>(sums.p[t * V + i]);
        if (gb) gb[c0 + i] = static_cast<T>(bsum.p[i]);
      }
    }
  });
}

}  // namespace

void depthwise_conv2d_forward(const DwConvParams& p) {
  dispatch_dw(p.dtype, [&](auto t, auto a) {
    using T = decltype(t);
    using A = decltype(a);
    p.channels_last ? forward_nhwc<T, A>(p) : forward_nchw<T, A>(p);
  });
}

void depthwise_conv2d_weight_grad(const DwConvWeightGradParams& g) {
  dispatch_dw(g.shape.dtype, [&](auto t, auto a) {
    using T = decltype(t);
    using A = decltype(a);
    g.shape.channels_last ? weight_grad_nhwc<T, A>(g) : weight_grad_nchw<T, A>(g);
  });
}

}  // namespace taskkernels::cpu::TK_DW_NS
