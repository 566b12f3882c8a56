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
// float with AVX2, K = 3, 5, 7 and 'same' padding (ConvNeXt, GLPN, and their input gradients)
// takes neither of the two forward paths above but tiled_forward: eight channels per vector.
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

// float, AVX2 + FMA, K = 3/5/7 with 'same' padding: eight channels per vector. Each task copies
// eight channels of one image into a zero-padded interleaved tile, tile[(h * wp + pad + w) * 8 +
// ch] (a transpose for NCHW, a copy for channels last), then computes blocks of NC = 8 output
// columns of a row: for each filter tap one weight vector serves the NC outputs, so there are no
// wasted lanes on narrow planes (ConvNeXt's 7 x 7 stage) and NC independent accumulators keep
// the FMA pipes busy. Taps that fall on the padding are skipped at compile time in the first and
// last block of a row (the last block is aligned to end at the row's end, overlapping its
// neighbour) and by the filter-row range at the top and bottom. Measured on this machine (one
// thread, 8 x C x H x H, K = 7): 52-62 GFLOP/s at H = 56, 28, 14 and 41-44 at 7, against 24-37
// for plane_forward_avx2 / row_forward_nhwc_avx2.

inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Lanes [0, n) set.
inline __m256i first_lanes(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// acc[o] += sum_kx w(ky, kx) * tile row at column o + kx, for NC outputs; LEFT / RIGHT: the block
// starts / ends at the row's edge, so taps reaching the padding are left out.
template <int K, int NC, bool LEFT, bool RIGHT>
__attribute__((always_inline)) inline void tile_taps(const float* in, const float* w, int64_t wstride, __m256* acc) {
  constexpr int pad = K / 2;
#pragma GCC unroll 8
  for (int kx = 0; kx < K; ++kx) {
    const __m256 wv = _mm256_loadu_ps(w + kx * wstride);
#pragma GCC unroll 8
    for (int o = 0; o < NC; ++o) {
      if (LEFT && o + kx < pad) continue;
      if (RIGHT && o + kx - pad >= NC) continue;
      acc[o] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(in + 8 * (o + kx)), acc[o]);
    }
  }
}

// Output row oy, columns [ox0, ox0 + NC) of the tile's eight channels into acc[0, NC);
// acc[NC, 8) are zeroed (the NCHW store transposes all eight).
template <int K, int NC, bool LEFT, bool RIGHT>
__attribute__((always_inline)) inline void tile_block(const float* tile, int64_t wp, int64_t H, const float* wt,
                                                      int64_t wstride, __m256 bias, int64_t oy, int64_t ox0,
                                                      __m256 acc[8]) {
  constexpr int pad = K / 2;
  for (int o = 0; o < 8; ++o) acc[o] = o < NC ? bias : _mm256_setzero_ps();
  const int64_t ky0 = max64(0, pad - oy), ky1 = min64(K, H + pad - oy);
  for (int64_t ky = ky0; ky < ky1; ++ky)
    tile_taps<K, NC, LEFT, RIGHT>(tile + ((oy + ky - pad) * wp + ox0) * 8, wt + ky * K * wstride, wstride, acc);
}

// Every output row of the tile; store(oy, ox0, n, acc) writes acc[0, n) (output columns ox0...).
template <int K, int NC, class Store>
void tile_rows(const float* tile, int64_t wp, int64_t H, int64_t W, const float* wt, int64_t wstride, __m256 bias,
               Store&& store) {
  __m256 acc[8];
  for (int64_t oy = 0; oy < H; ++oy) {
    if (W == NC) {
      tile_block<K, NC, true, true>(tile, wp, H, wt, wstride, bias, oy, 0, acc);
      store(oy, int64_t(0), acc);
      continue;
    }
    tile_block<K, NC, true, false>(tile, wp, H, wt, wstride, bias, oy, 0, acc);
    store(oy, int64_t(0), acc);
    int64_t ox0 = NC;
    for (; ox0 + NC < W; ox0 += NC) {
      tile_block<K, NC, false, false>(tile, wp, H, wt, wstride, bias, oy, ox0, acc);
      store(oy, ox0, acc);
    }
    tile_block<K, NC, false, true>(tile, wp, H, wt, wstride, bias, oy, W - NC, acc);
    store(oy, W - NC, acc);
  }
}

// NC = 8 blocks, or one block of the whole row when W < 8.
template <int K, class Store>
void tile_forward(const float* tile, int64_t wp, int64_t H, int64_t W, const float* wt, int64_t wstride,
                  __m256 bias, Store&& store) {
  switch (W) {
    case 1: return tile_rows<K, 1>(tile, wp, H, W, wt, wstride, bias, store);
    case 2: return tile_rows<K, 2>(tile, wp, H, W, wt, wstride, bias, store);
    case 3: return tile_rows<K, 3>(tile, wp, H, W, wt, wstride, bias, store);
    case 4: return tile_rows<K, 4>(tile, wp, H, W, wt, wstride, bias, store);
    case 5: return tile_rows<K, 5>(tile, wp, H, W, wt, wstride, bias, store);
    case 6: return tile_rows<K, 6>(tile, wp, H, W, wt, wstride, bias, store);
    case 7: return tile_rows<K, 7>(tile, wp, H, W, wt, wstride, bias, store);
    default: return tile_rows<K, 8>(tile, wp, H, W, wt, wstride, bias, store);
  }
}

// Planes narrower than 8 columns (one block per row, so only NC <= 7 accumulators, short of
// what the FMA latency needs): two images of the same channels at once, sharing each weight
// vector between 2 NC accumulators.
template <int K, int NC, class Store0, class Store1>
void tile_rows_pair(const float* t0, const float* t1, int64_t wp, int64_t H, const float* wt, int64_t wstride,
                    __m256 bias, Store0&& store0, Store1&& store1) {
  constexpr int pad = K / 2;
  __m256 a0[8], a1[8];
  for (int64_t oy = 0; oy < H; ++oy) {
    for (int o = 0; o < 8; ++o) a0[o] = a1[o] = o < NC ? bias : _mm256_setzero_ps();
    const int64_t ky0 = max64(0, pad - oy), ky1 = min64(K, H + pad - oy);
    for (int64_t ky = ky0; ky < ky1; ++ky) {
      const float* r0 = t0 + (oy + ky - pad) * wp * 8;
      const float* r1 = t1 + (oy + ky - pad) * wp * 8;
      const float* w = wt + ky * K * wstride;
#pragma GCC unroll 8
      for (int kx = 0; kx < K; ++kx) {
        const __m256 wv = _mm256_loadu_ps(w + kx * wstride);
#pragma GCC unroll 8
        for (int o = 0; o < NC; ++o) {
          if (o + kx < pad || o + kx - pad >= NC) continue;  // the padding
          a0[o] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(r0 + 8 * (o + kx)), a0[o]);
          a1[o] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(r1 + 8 * (o + kx)), a1[o]);
        }
      }
    }
    store0(oy, int64_t(0), a0);
    store1(oy, int64_t(0), a1);
  }
}

template <int K, class Store0, class Store1>
void tile_forward_pair(const float* t0, const float* t1, int64_t wp, int64_t H, int64_t W, const float* wt,
                       int64_t wstride, __m256 bias, Store0&& store0, Store1&& store1) {
  switch (W) {
    case 1: return tile_rows_pair<K, 1>(t0, t1, wp, H, wt, wstride, bias, store0, store1);
    case 2: return tile_rows_pair<K, 2>(t0, t1, wp, H, wt, wstride, bias, store0, store1);
    case 3: return tile_rows_pair<K, 3>(t0, t1, wp, H, wt, wstride, bias, store0, store1);
    case 4: return tile_rows_pair<K, 4>(t0, t1, wp, H, wt, wstride, bias, store0, store1);
    case 5: return tile_rows_pair<K, 5>(t0, t1, wp, H, wt, wstride, bias, store0, store1);
    case 6: return tile_rows_pair<K, 6>(t0, t1, wp, H, wt, wstride, bias, store0, store1);
    default: return tile_rows_pair<K, 7>(t0, t1, wp, H, wt, wstride, bias, store0, store1);
  }
}

inline bool tiled_forward_applies(const DwConvParams& p) {
  const bool k_ok = p.K == 3 || p.K == 5 || p.K == 7;
  const bool same = p.pad == p.K / 2;  // then Ho == Hi and Wo == Wi
  const bool unit = p.channels_last ? (p.sC == 1 || p.C == 1) : (p.sW == 1 || p.Wi == 1);
  return k_ok && same && unit;
}

// Fills the tiles of images b0 (and b0 + 1 when nimg == 2) and computes them.
template <int K, class Fill, class MakeStore>
void run_tiles(Fill& fill, MakeStore& store, float* tiles, int64_t tile_n, int64_t b0, int64_t nimg, int64_t wp,
               int64_t H, int64_t W, const float* w, int64_t wstride, __m256 bias) {
  fill(b0, tiles);
  if (nimg == 2) {
    fill(b0 + 1, tiles + tile_n);
    tile_forward_pair<K>(tiles, tiles + tile_n, wp, H, W, w, wstride, bias, store(b0), store(b0 + 1));
  } else {
    tile_forward<K>(tiles, wp, H, W, w, wstride, bias, store(b0));
  }
}

// wt: the filter as (K, K, cpad), rotated when p.flip (Filter::wt).
template <int K>
void tiled_forward(const DwConvParams& p, const float* wt, int64_t cpad) {
  constexpr int pad = K / 2;
  const int64_t H = p.Hi, W = p.Wi, C = p.C, groups = (C + 7) / 8, wp = W + K - 1;
  const int64_t tile_n = H * wp * 8 + 64;  // 64: room for the last row's full 8-pixel stores
  const int64_t per = W < 8 && p.B > 1 ? 2 : 1, bsteps = (p.B + per - 1) / per;
  const float* bias = static_cast<const float*>(p.bias);
  torch::stable::parallel_for(0, bsteps * groups, 1, [&](int64_t begin, int64_t end) {
    Buffer<float> tiles(per * tile_n);  // zero: the padding columns keep their zeros
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b0 = task / groups * per, c0 = task % groups * 8, nch = min64(8, C - c0);
      const int64_t nimg = min64(per, p.B - b0);
      alignas(32) float bb[8] = {};
      for (int64_t ch = 0; ch < nch && bias; ++ch) bb[ch] = bias[c0 + ch];
      const __m256 bv = _mm256_load_ps(bb);
      const __m256i chmask = first_lanes(nch);
      const float* w = wt + c0;
      if (p.channels_last) {
        auto fill = [&](int64_t b, float* tile) {
          const float* x = static_cast<const float*>(p.x) + b * p.sB + c0;
          for (int64_t h = 0; h < H; ++h)
            for (int64_t q = 0; q < W; ++q)
              _mm256_storeu_ps(tile + (h * wp + pad + q) * 8, _mm256_maskload_ps(x + h * p.sH + q * p.sW, chmask));
        };
        auto store = [&](int64_t b) {
          float* y = static_cast<float*>(p.y) + b * H * W * C + c0;
          return [=](int64_t oy, int64_t ox0, __m256* acc) {
            const int64_t n = min64(8, W - ox0);
            float* dst = y + (oy * W + ox0) * C;
            for (int64_t o = 0; o < n; ++o) {
              if (nch == 8) {
                _mm256_storeu_ps(dst + o * C, acc[o]);
              } else {
                _mm256_maskstore_ps(dst + o * C, chmask, acc[o]);
              }
            }
          };
        };
        run_tiles<K>(fill, store, tiles.p, tile_n, b0, nimg, wp, H, W, w, cpad, bv);
      } else {
        // Full 8-lane loads and stores wherever they stay inside the plane (AMD's masked moves
        // are slow): lanes past the row end read the plane's next elements and are zeroed before
        // the transpose; on the output they land on the next row, which is written after.
        const int64_t plane_end = (H - 1) * p.sH + W;
        auto fill = [&](int64_t b, float* tile) {
          const float* x = static_cast<const float*>(p.x) + b * p.sB + c0 * p.sC;
          for (int64_t h = 0; h < H; ++h)
            for (int64_t q = 0; q < W; q += 8) {
              const int64_t at = h * p.sH + q;
              const __m256i m = first_lanes(W - q);
              __m256 r[8];
              for (int64_t ch = 0; ch < 8; ++ch) {
                if (ch >= nch) {
                  r[ch] = _mm256_setzero_ps();
                } else if (at + 8 <= plane_end) {
                  r[ch] = _mm256_and_ps(_mm256_loadu_ps(x + ch * p.sC + at), _mm256_castsi256_ps(m));
                } else {
                  r[ch] = _mm256_maskload_ps(x + ch * p.sC + at, m);
                }
              }
              transpose8(r);
              // All eight: past the row end they are zeros, landing on padding or on columns of
              // the next row (written after); a fixed count keeps the stores out of a memcpy.
              float* dst = tile + (h * wp + pad + q) * 8;
#pragma GCC unroll 8
              for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + 8 * i, r[i]);
            }
        };
        auto store = [&](int64_t b) {
          float* y = static_cast<float*>(p.y) + (b * C + c0) * H * W;
          return [=](int64_t oy, int64_t ox0, __m256* acc) {
            const int64_t n = min64(8, W - ox0), at = oy * W + ox0;
            transpose8(acc);
            for (int64_t ch = 0; ch < nch; ++ch) {
              if (at + 8 <= H * W) {
                _mm256_storeu_ps(y + ch * H * W + at, acc[ch]);
              } else {
                _mm256_maskstore_ps(y + ch * H * W + at, first_lanes(n), acc[ch]);
              }
            }
          };
        };
        run_tiles<K>(fill, store, tiles.p, tile_n, b0, nimg, wp, H, W, w, cpad, bv);
      }
    }
  });
}

template <class T, class A>
void tiled_forward_k(const DwConvParams& p, const Filter<T, A>& f) {
  switch (p.K) {
    case 3: return tiled_forward<3>(p, f.wt.p, f.cpad);
    case 5: return tiled_forward<5>(p, f.wt.p, f.cpad);
    default: return tiled_forward<7>(p, f.wt.p, f.cpad);
  }
}
#endif  // __AVX2__

template <class T, class A>
void forward_nchw(const DwConvParams& p) {
  const Filter<T, A> f(p);
#ifdef __AVX2__
  if constexpr (std::is_same_v<T, float>) {
    if (tiled_forward_applies(p)) return tiled_forward_k(p, f);
  }
#endif
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
#ifdef __AVX2__
  if constexpr (std::is_same_v<T, float>) {
    if (tiled_forward_applies(p)) return tiled_forward_k(p, f);
  }
#endif
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
