// The CPU attention forward and backward, written once and compiled once per instruction set:
// the including file defines TK_ATTN_NS (a namespace of its own, so the two copies never merge at
// link time).
//
// Work item: (b, h, block of BQ queries). Keys stream through in blocks of BK: S = Q K^T in a
// register-blocked micro-kernel, masks and bias applied, online softmax in base 2 (scores are
// pre-scaled by log2 e), O += P V. Nothing larger than BQ x BK is stored.
#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "common/dropout.h"
#include "cpu/attention.h"

namespace taskkernels::cpu::TK_ATTN_NS {
namespace {

constexpr int64_t BQ = 64;  // queries per work item
constexpr int64_t BK = 64;  // keys per block
constexpr int64_t RB = 4;   // micro-kernel rows
constexpr int64_t CB = 16;  // micro-kernel columns (two AVX2 vectors of float)

static_assert(BK == 64, "a key block is one 64-bit word of the per-query mask bits");

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// The bits of the keys [k0, k0 + nk) blocked for query i (0 without a per-query mask).
inline uint64_t blocked_bits(const AttentionParams& p, int64_t b, int64_t i, int64_t k0) {
  return p.mask_bits ? p.mask_bits[b * p.mb_stride[0] + i * p.mb_stride[1] + k0 / BK] : 0;
}
inline uint64_t low_bits(int64_t n) { return n >= 64 ? ~uint64_t(0) : (uint64_t(1) << n) - 1; }

// The rows r of [0, nr) (queries q0 + r) that see at least one key of [k0, k0 + nk) through the
// per-query mask, into live; returns how many.
inline int64_t live_rows(const AttentionParams& p, int64_t b, int64_t q0, int64_t nr, int64_t k0, int64_t nk,
                         int64_t* live) {
  const uint64_t want = low_bits(nk);
  int64_t n = 0;
  for (int64_t r = 0; r < nr; ++r)
    if ((blocked_bits(p, b, q0 + r, k0) & want) != want) live[n++] = r;
  return n;
}

// s[c] = -inf for the blocked keys among the first nk.
template <class A>
inline void apply_blocked(A* s, uint64_t bits, int64_t nk) {
  bits &= low_bits(nk);
  while (bits) {
    s[__builtin_ctzll(bits)] = -std::numeric_limits<A>::infinity();
    bits &= bits - 1;
  }
}

// A zero-initialised scratch array. Plain new[]/delete[] rather than std::vector: this file is
// compiled for two instruction sets, and out-of-line std template code from the AVX2 copy could
// be the one the linker keeps for both.
template <class A>
struct Buffer {
  A* p;
  explicit Buffer(int64_t n) : p(new A[n]()) {}
  ~Buffer() { delete[] p; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  A* data() { return p; }
  A& operator[](int64_t i) { return p[i]; }
};

template <class A>
inline void fill(A* p, int64_t n, A v) {
  for (int64_t i = 0; i < n; ++i) p[i] = v;
}

// 2^x for x <= 0 (and -inf): round-to-nearest range reduction and a degree-7 Taylor polynomial on
// [-0.5, 0.5] (relative error < 1e-8); 0 below 2^-126. Branch-free so loops vectorize.
inline float exp2_neg(float x) {
  const float xc = x < -126.f ? -126.f : x;
  const float n = std::nearbyint(xc);
  const float f = xc - n;
  float p = 1.5252734e-05f;
  p = p * f + 1.5403530e-04f;
  p = p * f + 1.3333558e-03f;
  p = p * f + 9.6181291e-03f;
  p = p * f + 5.5504109e-02f;
  p = p * f + 2.4022651e-01f;
  p = p * f + 6.9314718e-01f;
  p = p * f + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -126.f ? 0.f : p * scale;
}
inline double exp2_neg(double x) { return std::exp2(x); }

// S[i][j] = sum_d Q[i][d] * KT[d][j], rows [0, rows), columns [0, cols) (multiples of RB, CB);
// Q's rows are ldq apart, KT's ldk; S's BK. The sum runs in chunks of DC terms added at the end
// (kAttentionDotChunk: why, in common/attention_params.h), for a load and an add per accumulator
// every DC steps.
constexpr int64_t DC = kAttentionDotChunk;
template <class A>
void qk_block(const A* __restrict Q, const A* __restrict KT, A* __restrict S, int64_t rows,
              int64_t cols, int64_t D, int64_t ldk, int64_t ldq) {
  for (int64_t i0 = 0; i0 < rows; i0 += RB) {
    for (int64_t j0 = 0; j0 < cols; j0 += CB) {
      for (int64_t d0 = 0; d0 < D; d0 += DC) {
        A acc[RB][CB] = {};
        for (int64_t d = d0, dend = std::min(D, d0 + DC); d < dend; ++d) {
          const A* kt = KT + d * ldk + j0;
          for (int64_t r = 0; r < RB; ++r) {
            const A a = Q[(i0 + r) * ldq + d];
            for (int64_t c = 0; c < CB; ++c) acc[r][c] += a * kt[c];
          }
        }
        for (int64_t r = 0; r < RB; ++r)
          for (int64_t c = 0; c < CB; ++c) {
            A* out = S + (i0 + r) * BK + j0 + c;
            *out = d0 > 0 ? *out + acc[r][c] : acc[r][c];
          }
      }
    }
  }
}

// O[i][d] += sum_j P[i][j] * V[j][d], rows [0, rows), keys [0, keys), Dp a multiple of CB.
template <class A>
void pv_block(const A* __restrict P, const A* __restrict V, A* __restrict O, int64_t rows,
              int64_t keys, int64_t Dp) {
  for (int64_t i0 = 0; i0 < rows; i0 += RB) {
    for (int64_t d0 = 0; d0 < Dp; d0 += CB) {
      A acc[RB][CB];
      for (int64_t r = 0; r < RB; ++r)
        for (int64_t c = 0; c < CB; ++c) acc[r][c] = O[(i0 + r) * Dp + d0 + c];
      for (int64_t j = 0; j < keys; ++j) {
        const A* vv = V + j * Dp + d0;
        for (int64_t r = 0; r < RB; ++r) {
          const A a = P[(i0 + r) * BK + j];
          for (int64_t c = 0; c < CB; ++c) acc[r][c] += a * vv[c];
        }
      }
      for (int64_t r = 0; r < RB; ++r)
        for (int64_t c = 0; c < CB; ++c) O[(i0 + r) * Dp + d0 + c] = acc[r][c];
    }
  }
}

#if defined(__AVX2__) && defined(__FMA__)
// float micro-kernels with explicit AVX2 + FMA: 4 x 16 accumulators in eight registers.
template <>
void qk_block<float>(const float* __restrict Q, const float* __restrict KT, float* __restrict S,
                     int64_t rows, int64_t cols, int64_t D, int64_t ldk, int64_t ldq) {
  for (int64_t i0 = 0; i0 < rows; i0 += RB) {
    for (int64_t j0 = 0; j0 < cols; j0 += CB) {
      const float* q = Q + i0 * ldq;
      float* o = S + i0 * BK + j0;
      for (int64_t d0 = 0; d0 < D; d0 += DC) {
        __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00,
               a30 = a00, a31 = a00;
        for (int64_t d = d0, dend = std::min(D, d0 + DC); d < dend; ++d) {
          const __m256 k0 = _mm256_loadu_ps(KT + d * ldk + j0);
          const __m256 k1 = _mm256_loadu_ps(KT + d * ldk + j0 + 8);
          __m256 x = _mm256_broadcast_ss(q + d);
          a00 = _mm256_fmadd_ps(x, k0, a00), a01 = _mm256_fmadd_ps(x, k1, a01);
          x = _mm256_broadcast_ss(q + ldq + d);
          a10 = _mm256_fmadd_ps(x, k0, a10), a11 = _mm256_fmadd_ps(x, k1, a11);
          x = _mm256_broadcast_ss(q + 2 * ldq + d);
          a20 = _mm256_fmadd_ps(x, k0, a20), a21 = _mm256_fmadd_ps(x, k1, a21);
          x = _mm256_broadcast_ss(q + 3 * ldq + d);
          a30 = _mm256_fmadd_ps(x, k0, a30), a31 = _mm256_fmadd_ps(x, k1, a31);
        }
        if (d0 > 0) {  // add the earlier chunks' sums
          a00 = _mm256_add_ps(a00, _mm256_loadu_ps(o)), a01 = _mm256_add_ps(a01, _mm256_loadu_ps(o + 8));
          a10 = _mm256_add_ps(a10, _mm256_loadu_ps(o + BK)), a11 = _mm256_add_ps(a11, _mm256_loadu_ps(o + BK + 8));
          a20 = _mm256_add_ps(a20, _mm256_loadu_ps(o + 2 * BK)), a21 = _mm256_add_ps(a21, _mm256_loadu_ps(o + 2 * BK + 8));
          a30 = _mm256_add_ps(a30, _mm256_loadu_ps(o + 3 * BK)), a31 = _mm256_add_ps(a31, _mm256_loadu_ps(o + 3 * BK + 8));
        }
        _mm256_storeu_ps(o, a00), _mm256_storeu_ps(o + 8, a01);
        _mm256_storeu_ps(o + BK, a10), _mm256_storeu_ps(o + BK + 8, a11);
        _mm256_storeu_ps(o + 2 * BK, a20), _mm256_storeu_ps(o + 2 * BK + 8, a21);
        _mm256_storeu_ps(o + 3 * BK, a30), _mm256_storeu_ps(o + 3 * BK + 8, a31);
      }
    }
  }
}

template <>
void pv_block<float>(const float* __restrict P, const float* __restrict V, float* __restrict O,
                     int64_t rows, int64_t keys, int64_t Dp) {
  for (int64_t i0 = 0; i0 < rows; i0 += RB) {
    for (int64_t d0 = 0; d0 < Dp; d0 += CB) {
      float* o = O + i0 * Dp + d0;
      __m256 a00 = _mm256_loadu_ps(o), a01 = _mm256_loadu_ps(o + 8);
      __m256 a10 = _mm256_loadu_ps(o + Dp), a11 = _mm256_loadu_ps(o + Dp + 8);
      __m256 a20 = _mm256_loadu_ps(o + 2 * Dp), a21 = _mm256_loadu_ps(o + 2 * Dp + 8);
      __m256 a30 = _mm256_loadu_ps(o + 3 * Dp), a31 = _mm256_loadu_ps(o + 3 * Dp + 8);
      const float* pr = P + i0 * BK;
      for (int64_t j = 0; j < keys; ++j) {
        const __m256 v0 = _mm256_loadu_ps(V + j * Dp + d0);
        const __m256 v1 = _mm256_loadu_ps(V + j * Dp + d0 + 8);
        __m256 x = _mm256_broadcast_ss(pr + j);
        a00 = _mm256_fmadd_ps(x, v0, a00), a01 = _mm256_fmadd_ps(x, v1, a01);
        x = _mm256_broadcast_ss(pr + BK + j);
        a10 = _mm256_fmadd_ps(x, v0, a10), a11 = _mm256_fmadd_ps(x, v1, a11);
        x = _mm256_broadcast_ss(pr + 2 * BK + j);
        a20 = _mm256_fmadd_ps(x, v0, a20), a21 = _mm256_fmadd_ps(x, v1, a21);
        x = _mm256_broadcast_ss(pr + 3 * BK + j);
        a30 = _mm256_fmadd_ps(x, v0, a30), a31 = _mm256_fmadd_ps(x, v1, a31);
      }
      _mm256_storeu_ps(o, a00), _mm256_storeu_ps(o + 8, a01);
      _mm256_storeu_ps(o + Dp, a10), _mm256_storeu_ps(o + Dp + 8, a11);
      _mm256_storeu_ps(o + 2 * Dp, a20), _mm256_storeu_ps(o + 2 * Dp + 8, a21);
      _mm256_storeu_ps(o + 3 * Dp, a30), _mm256_storeu_ps(o + 3 * Dp + 8, a31);
    }
  }
}
#endif

// max and sum over n (a multiple of 8) values, in 8 lanes so that the loops vectorize.
template <class A>
inline A row_max(const A* x, int64_t n) {
  A lane[8];
  for (int u = 0; u < 8; ++u) lane[u] = x[u];
  for (int64_t c = 8; c < n; c += 8)
    for (int u = 0; u < 8; ++u) lane[u] = lane[u] > x[c + u] ? lane[u] : x[c + u];
  A m = lane[0];
  for (int u = 1; u < 8; ++u) m = m > lane[u] ? m : lane[u];
  return m;
}

// p[c] = 2^(s[c] - mx); returns the sum.
template <class A>
inline A exp_and_sum(const A* s, A* p, int64_t n, A mx) {
  A lane[8] = {};
  for (int64_t c = 0; c < n; c += 8)
    for (int u = 0; u < 8; ++u) {
      p[c + u] = exp2_neg(s[c + u] - mx);
      lane[u] += p[c + u];
    }
  A sum = 0;
  for (int u = 0; u < 8; ++u) sum += lane[u];
  return sum;
}

#if defined(__AVX2__) && defined(__FMA__)
inline __m256 exp2_neg8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-126.f);
  const __m256 xc = _mm256_max_ps(x, lo);
  const __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(xc, n);
  __m256 p = _mm256_set1_ps(1.5252734e-05f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.5403530e-04f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558e-03f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291e-03f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504109e-02f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022651e-01f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718e-01f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 r = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_and_ps(r, _mm256_cmp_ps(x, lo, _CMP_GE_OQ));  // 0 below 2^-126 (and for -inf)
}

template <>
inline float row_max<float>(const float* x, int64_t n) {
  __m256 m = _mm256_loadu_ps(x);
  for (int64_t c = 8; c < n; c += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + c));
  alignas(32) float lane[8];
  _mm256_store_ps(lane, m);
  float r = lane[0];
  for (int u = 1; u < 8; ++u) r = r > lane[u] ? r : lane[u];
  return r;
}

template <>
inline float exp_and_sum<float>(const float* s, float* p, int64_t n, float mx) {
  const __m256 m = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t c = 0; c < n; c += 8) {
    const __m256 e = exp2_neg8(_mm256_sub_ps(_mm256_loadu_ps(s + c), m));
    _mm256_storeu_ps(p + c, e);
    acc = _mm256_add_ps(acc, e);
  }
  alignas(32) float lane[8];
  _mm256_store_ps(lane, acc);
  float r = 0;
  for (int u = 0; u < 8; ++u) r += lane[u];
  return r;
}
#endif

// p[c] = 2^min(s[c], 0) for n (a multiple of 8) values: recomputed probabilities, which round-off
// can push a hair above 1 (s slightly > 0).
template <class A>
inline void exp_row(const A* s, A* p, int64_t n) {
  for (int64_t c = 0; c < n; ++c) p[c] = exp2_neg(s[c] < A(0) ? s[c] : A(0));
}
#if defined(__AVX2__) && defined(__FMA__)
template <>
inline void exp_row<float>(const float* s, float* p, int64_t n) {
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t c = 0; c < n; c += 8) _mm256_storeu_ps(p + c, exp2_neg8(_mm256_min_ps(_mm256_loadu_ps(s + c), zero)));
}
#endif

template <class T, class A>
void run(const AttentionParams& p) {
  constexpr A kLog2e = A(1.4426950408889634);
  constexpr A kLn2 = A(0.6931471805599453);
  constexpr A kNegInf = -std::numeric_limits<A>::infinity();
  const int64_t B = p.B, H = p.H, Nq = p.Nq, Nk = p.Nk, D = p.D;
  const int64_t Dp = round_up(D, CB);
  const int64_t shift = Nk - Nq;  // causal: key j visible to query i when j <= i + shift
  const int64_t q_blocks = (Nq + BQ - 1) / BQ;
  const T* qp = static_cast<const T*>(p.q);
  const T* kp = static_cast<const T*>(p.k);
  const T* vp = static_cast<const T*>(p.v);
  T* out = static_cast<T*>(p.out);
  A* lse = static_cast<A*>(p.lse);
  const A qscale = static_cast<A>(p.scale) * kLog2e;
  const bool dropout = p.dropout_p > 0;
  const uint32_t threshold = dropout_threshold(p.dropout_p);
  const A keep_scale = dropout ? static_cast<A>(1.0 / (1.0 - p.dropout_p)) : A(1);

  // A work item is (b, h, a run of query blocks): K^T and V of the head are converted once per
  // item. Whole heads when there are enough of them to keep every thread busy.
  const int64_t threads = torch::stable::get_num_threads();
  const int64_t per_item = B * H >= 4 * threads ? q_blocks : 1;
  const int64_t items_per_head = (q_blocks + per_item - 1) / per_item;
  const int64_t ldk = round_up(Nk, BK);  // keys in the K^T and V buffers

  torch::stable::parallel_for(0, B * H * items_per_head, 1, [&](int64_t begin, int64_t end) {
    Buffer<A> Qb(BQ * D), KT(D * ldk), Vb(ldk * Dp), S(BQ * BK), P(BQ * BK), O(BQ * Dp), m(BQ), l(BQ);
    // Per-query mask: the rows of a tile that see any of its keys, gathered (Qc, Oc) so that the
    // micro-kernels work only on them: cost falls with the mask's density.
    Buffer<int64_t> live(BQ), all_rows(BQ);
    for (int64_t r = 0; r < BQ; ++r) all_rows[r] = r;
    Buffer<A> Qc(p.mask_bits ? BQ * D : 1), Oc(p.mask_bits ? BQ * Dp : 1);
    // Key padding as an additive row (0 or -inf) per key, and which key blocks have any key left.
    Buffer<A> pad_add(p.key_padding ? ldk : 1);
    Buffer<bool> block_live(ldk / BK + 1);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / items_per_head, b = bh / H, h = bh % H;
      const int64_t qb_begin = (item % items_per_head) * per_item;
      const int64_t qb_end = std::min(q_blocks, qb_begin + per_item);
      const T* qbase = qp + b * p.q_stride[0] + h * p.q_stride[1];
      const T* kbase = kp + b * p.k_stride[0] + kv_head(p, h) * p.k_stride[1];
      const T* vbase = vp + b * p.v_stride[0] + kv_head(p, h) * p.v_stride[1];

      // The keys any row of this item can see; K^T gets zero columns up to a whole block.
      const int64_t last_row = std::min(Nq, qb_end * BQ) - 1;
      const int64_t kmax = p.causal ? std::max<int64_t>(0, std::min(Nk, last_row + 1 + shift)) : Nk;
      const int64_t kpad = round_up(kmax, BK);
      // K^T stored block by block ([key block][d][BK]): each block's rows are contiguous, so the
      // micro-kernel does not stride across the whole head (4 KB aliasing in L1).
      for (int64_t k0 = 0; k0 < kpad; k0 += BK) {
        A* blk = KT.data() + k0 * D;
        for (int64_t d = 0; d < D; ++d)
          for (int64_t c = 0; c < BK; ++c)
            blk[d * BK + c] = k0 + c < kmax ? static_cast<A>(kbase[(k0 + c) * p.k_stride[2] + d * p.k_stride[3]]) : A(0);
      }
      for (int64_t j = 0; j < kmax; ++j)
        for (int64_t d = 0; d < D; ++d)
          Vb[j * Dp + d] = static_cast<A>(vbase[j * p.v_stride[2] + d * p.v_stride[3]]);

      for (int64_t k0 = 0; k0 < kpad; k0 += BK) block_live[k0 / BK] = true;
      if (p.key_padding) {
        const bool* kpm = p.key_padding + b * p.kp_stride[0];
        for (int64_t k0 = 0; k0 < kpad; k0 += BK) {
          bool live = false;
          for (int64_t j = k0; j < std::min(k0 + BK, kmax); ++j) {
            const bool pad = kpm[j * p.kp_stride[1]];
            pad_add[j] = pad ? kNegInf : A(0);
            live = live || !pad;
          }
          block_live[k0 / BK] = live;
        }
      }

      for (int64_t qb = qb_begin; qb < qb_end; ++qb) {
        const int64_t q0 = qb * BQ, nr = std::min(BQ, Nq - q0), rows = round_up(nr, RB);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t d = 0; d < D; ++d)
            Qb[r * D + d] = r < nr ? static_cast<A>(qbase[(q0 + r) * p.q_stride[2] + d * p.q_stride[3]]) * qscale : A(0);
        fill(O.data(), BQ * Dp, A(0));
        fill(m.data(), BQ, kNegInf);
        fill(l.data(), BQ, A(0));

        // Keys past the last row's causal limit are never visible to this block.
        const int64_t kend = p.causal ? std::min(Nk, q0 + nr + shift) : Nk;
        for (int64_t k0 = 0; k0 < kend; k0 += BK) {
          if (!block_live[k0 / BK]) continue;  // every key of this block is padding
          const int64_t nk = std::min(BK, kend - k0), cols = round_up(nk, CB);
          // Working rows: all of the block's, or (per-query mask) only those that see a key here.
          const A* Qw = Qb.data();
          A* Ow = O.data();
          const int64_t* row_of = all_rows.data();
          int64_t nw = nr;
          if (p.mask_bits) {
            nw = live_rows(p, b, q0, nr, k0, nk, live.data());
            if (nw == 0) continue;  // every query blocks every key of the tile
            if (nw < nr) {
              for (int64_t t = 0; t < round_up(nw, RB); ++t) {
                for (int64_t d = 0; d < D; ++d) Qc[t * D + d] = t < nw ? Qb[live[t] * D + d] : A(0);
                for (int64_t d = 0; d < Dp; ++d) Oc[t * Dp + d] = t < nw ? O[live[t] * Dp + d] : A(0);
              }
              Qw = Qc.data(), Ow = Oc.data(), row_of = live.data();
            }
          }
          const int64_t wrows = round_up(nw, RB);
          qk_block(Qw, KT.data() + k0 * D, S.data(), wrows, cols, D, BK, D);

          // Masks are needed only where this block can hide something.
          const bool causal_cut = p.causal && k0 + nk - 1 > q0 + shift;
          for (int64_t t = 0; t < nw; ++t) {
            const int64_t r = row_of[t];  // S, P and Ow row t hold block row r
            A* s = S.data() + t * BK;
            A* pr = P.data() + t * BK;
            const int64_t i = q0 + r;
            if (p.bias) {
              const int64_t base = b * p.bias_stride[0] + h * p.bias_stride[1] + i * p.bias_stride[2];
              const int64_t bs = p.bias_stride[3];
              if (p.bias_is_float32) {
                const float* bp = static_cast<const float*>(p.bias) + base + k0 * bs;
                for (int64_t c = 0; c < nk; ++c) s[c] += static_cast<A>(bp[c * bs]) * kLog2e;
              } else {
                const T* bp = static_cast<const T*>(p.bias) + base + k0 * bs;
                for (int64_t c = 0; c < nk; ++c) s[c] += static_cast<A>(bp[c * bs]) * kLog2e;
              }
            }
            if (p.key_padding) {
              const A* pa = pad_add.data() + k0;
              for (int64_t c = 0; c < nk; ++c) s[c] += pa[c];
            }
            if (p.mask_bits) apply_blocked(s, blocked_bits(p, b, i, k0), nk);
            if (causal_cut) {
              for (int64_t c = std::max<int64_t>(0, i + shift + 1 - k0); c < nk; ++c) s[c] = kNegInf;
            }
            for (int64_t c = nk; c < cols; ++c) s[c] = kNegInf;
            const A mx = row_max(s, cols);
            const A mnew = m[r] > mx ? m[r] : mx;
            if (mnew == kNegInf) {  // nothing visible to this row yet
              fill(pr, cols, A(0));
              continue;
            }
            const A alpha = m[r] == kNegInf ? A(0) : exp2_neg(m[r] - mnew);
            const A sum = exp_and_sum(s, pr, cols, mnew);
            l[r] = l[r] * alpha + sum;  // the normalizer counts every probability, kept or not
            m[r] = mnew;
            if (dropout) {
              const uint64_t base = static_cast<uint64_t>(((b * H + h) * Nq + i) * Nk + k0);
              for (int64_t c = 0; c < nk; ++c) pr[c] = dropout_keep(p.seed, threshold, base + c) ? pr[c] * keep_scale : A(0);
            }
            if (alpha != A(1)) {
              A* orow = Ow + t * Dp;
              for (int64_t d = 0; d < Dp; ++d) orow[d] *= alpha;
            }
          }
          // Rows past nw (up to wrows) hold stale probabilities; their O rows are discarded.
          pv_block(P.data(), Vb.data() + k0 * Dp, Ow, wrows, nk, Dp);
          if (Ow != O.data())
            for (int64_t t = 0; t < nw; ++t)
              for (int64_t d = 0; d < Dp; ++d) O[live[t] * Dp + d] = Oc[t * Dp + d];
        }

        T* obase = out + ((b * H + h) * Nq + q0) * D;
        A* lbase = lse + (b * H + h) * Nq + q0;
        for (int64_t r = 0; r < nr; ++r) {
          const A inv = l[r] > A(0) ? A(1) / l[r] : A(0);
          for (int64_t d = 0; d < D; ++d) obase[r * D + d] = static_cast<T>(O[r * Dp + d] * inv);
          lbase[r] = l[r] > A(0) ? (m[r] + std::log2(l[r])) * kLn2 : kNegInf;
        }
      }
    }
  });
}


// Backward for one (b, key/value head) per work item, its query heads one after another (one
// head without grouped-query attention): key blocks outer, query blocks inner. dK, dV accumulate
// in per-item buffers over the group's heads in order and are written once; dQ accumulates over
// key blocks in a per-head buffer. P is recomputed from lse; dS = P * (dP - rowsum(dO * O)).
template <class T, class A>
void run_backward(const AttentionBackwardParams& bp) {
  const AttentionParams& p = bp.fwd;
  constexpr A kLog2e = A(1.4426950408889634);
  constexpr A kNegInf = -std::numeric_limits<A>::infinity();
  const int64_t B = p.B, H = p.H, Hk = p.Hk, G = H / Hk, Nq = p.Nq, Nk = p.Nk, D = p.D;
  const int64_t Dp = round_up(D, CB), Nqp = round_up(Nq, BQ), Nkp = round_up(Nk, BK), shift = Nk - Nq;
  const A scale = static_cast<A>(p.scale), sl = scale * kLog2e;
  const bool dropout = p.dropout_p > 0;
  const uint32_t threshold = dropout_threshold(p.dropout_p);
  const A keep_scale = dropout ? static_cast<A>(1.0 / (1.0 - p.dropout_p)) : A(1);
  const T* qp = static_cast<const T*>(p.q);
  const T* kp = static_cast<const T*>(p.k);
  const T* vp = static_cast<const T*>(p.v);
  const T* op = static_cast<const T*>(p.out);
  const A* lsep = static_cast<const A*>(p.lse);
  const T* gp = static_cast<const T*>(bp.grad_out);

  torch::stable::parallel_for(0, B * Hk, 1, [&](int64_t begin, int64_t end) {
    // Per query head: Q, dO as [Nqp][Dp] rows; lse and Delta per row; dQ accumulator.
    Buffer<A> Q(Nqp * Dp), dO(Nqp * Dp), lse2(Nqp), delta(Nqp), dQ(Nqp * Dp);
    // Per item: dK, dV accumulators [Nkp][Dp]. Per key block: K^T, V^T as [D][BK]; K as [BK][Dp].
    Buffer<A> KT(D * BK), VT(D * BK), Kb(BK * Dp), dK_all(Nkp * Dp), dV_all(Nkp * Dp);
    Buffer<A> S(BQ * BK), P(BQ * BK), Pn(BQ * BK), PT(BK * BQ), dP(BQ * BK), dST(BK * BQ);
    Buffer<A> pad_add(p.key_padding ? Nk : 1);  // key padding as an additive row (0 / -inf)
    // Per-query mask: a tile's rows that see any of its keys, gathered (Q, dO rows; dQ rows
    // accumulated apart and added back) so that the micro-kernels work only on them.
    Buffer<int64_t> live(BQ), all_rows(BQ);
    for (int64_t r = 0; r < BQ; ++r) all_rows[r] = r;
    const bool compact = p.mask_bits != nullptr;
    Buffer<A> Qc(compact ? BQ * Dp : 1), dOc(compact ? BQ * Dp : 1), dQc(compact ? BQ * Dp : 1);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / Hk, hk = item % Hk;
      const T* kb = kp + b * p.k_stride[0] + hk * p.k_stride[1];
      const T* vb = vp + b * p.v_stride[0] + hk * p.v_stride[1];
      fill(dK_all.data(), Nkp * Dp, A(0));
      fill(dV_all.data(), Nkp * Dp, A(0));
      for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
        const T* qb = qp + b * p.q_stride[0] + h * p.q_stride[1];
        const T* gb = gp + b * bp.grad_out_stride[0] + h * bp.grad_out_stride[1];
        const T* ob = op + (b * H + h) * Nq * D;
        const A* lb = lsep + (b * H + h) * Nq;
        for (int64_t i = 0; i < Nqp; ++i) {
          A dsum = 0;
          for (int64_t d = 0; d < Dp; ++d) {
            const bool in = i < Nq && d < D;
            Q[i * Dp + d] = in ? static_cast<A>(qb[i * p.q_stride[2] + d * p.q_stride[3]]) : A(0);
            dO[i * Dp + d] = in ? static_cast<A>(gb[i * bp.grad_out_stride[2] + d * bp.grad_out_stride[3]]) : A(0);
            if (in) dsum += dO[i * Dp + d] * static_cast<A>(ob[i * D + d]);
            dQ[i * Dp + d] = A(0);
          }
          delta[i] = dsum;
          lse2[i] = i < Nq ? lb[i] * kLog2e : kNegInf;  // base 2, like the scores below
        }
        const bool* kpm = p.key_padding ? p.key_padding + b * p.kp_stride[0] : nullptr;
        if (kpm)
          for (int64_t j = 0; j < Nk; ++j) pad_add[j] = kpm[j * p.kp_stride[1]] ? kNegInf : A(0);

        for (int64_t k0 = 0; k0 < Nk; k0 += BK) {
          const int64_t nk = std::min(BK, Nk - k0), cols = round_up(nk, CB), krows = round_up(nk, RB);
          for (int64_t d = 0; d < D; ++d)
            for (int64_t c = 0; c < BK; ++c) {
              const bool in = c < nk;
              KT[d * BK + c] = in ? static_cast<A>(kb[(k0 + c) * p.k_stride[2] + d * p.k_stride[3]]) : A(0);
              VT[d * BK + c] = in ? static_cast<A>(vb[(k0 + c) * p.v_stride[2] + d * p.v_stride[3]]) : A(0);
            }
          for (int64_t c = 0; c < BK; ++c)
            for (int64_t d = 0; d < Dp; ++d) Kb[c * Dp + d] = c < nk && d < D ? KT[d * BK + c] : A(0);
          A* dK = dK_all.data() + k0 * Dp;
          A* dV = dV_all.data() + k0 * Dp;
          // Query rows that can see a key of this block (causal: i + shift >= k0).
          const int64_t q_first = p.causal ? std::max<int64_t>(0, k0 - shift) : 0;
          for (int64_t q0 = q_first / BQ * BQ; q0 < Nq; q0 += BQ) {
            const int64_t nr = std::min(BQ, Nq - q0);
            // Working rows: all of the block's, or (per-query mask) those that see a key here.
            const A* Qw = Q.data() + q0 * Dp;
            const A* dOw = dO.data() + q0 * Dp;
            A* dQw = dQ.data() + q0 * Dp;
            const int64_t* row_of = all_rows.data();
            int64_t nw = nr;
            if (compact) {
              nw = live_rows(p, b, q0, nr, k0, nk, live.data());
              if (nw == 0) continue;  // nothing of this tile is visible
              if (nw < nr) {
                for (int64_t t = 0; t < round_up(nw, RB); ++t)
                  for (int64_t d = 0; d < Dp; ++d) {
                    Qc[t * Dp + d] = t < nw ? Q[(q0 + live[t]) * Dp + d] : A(0);
                    dOc[t * Dp + d] = t < nw ? dO[(q0 + live[t]) * Dp + d] : A(0);
                    dQc[t * Dp + d] = A(0);
                  }
                Qw = Qc.data(), dOw = dOc.data(), dQw = dQc.data(), row_of = live.data();
              }
            }
            const int64_t wrows = round_up(nw, RB);
            qk_block(Qw, KT.data(), S.data(), wrows, cols, D, BK, Dp);
            qk_block(dOw, VT.data(), dP.data(), wrows, cols, D, BK, Dp);
            for (int64_t t = 0; t < BQ; ++t) {
              A* sr = S.data() + t * BK;
              A* pn = Pn.data() + t * BK;
              A* ds = P.data() + t * BK;  // dS, row-major: the A operand of dQ += dS K
              const int64_t i = t < nw ? q0 + row_of[t] : 0;
              if (t >= nw || lse2[i] == kNegInf) {  // padding row, or a row that saw nothing
                fill(pn, BK, A(0));
                fill(ds, BK, A(0));
                continue;
              }
              const A li = lse2[i];
              for (int64_t c = 0; c < BK; ++c) sr[c] = sr[c] * sl - li;
              if (p.bias) {
                const int64_t base = b * p.bias_stride[0] + h * p.bias_stride[1] + i * p.bias_stride[2];
                const int64_t bs = p.bias_stride[3];
                if (p.bias_is_float32) {
                  const float* bq = static_cast<const float*>(p.bias) + base + k0 * bs;
                  for (int64_t c = 0; c < nk; ++c) sr[c] += static_cast<A>(bq[c * bs]) * kLog2e;
                } else {
                  const T* bq = static_cast<const T*>(p.bias) + base + k0 * bs;
                  for (int64_t c = 0; c < nk; ++c) sr[c] += static_cast<A>(bq[c * bs]) * kLog2e;
                }
              }
              if (kpm) {
                const A* pa = pad_add.data() + k0;
                for (int64_t c = 0; c < nk; ++c) sr[c] += pa[c];
              }
              if (p.mask_bits) apply_blocked(sr, blocked_bits(p, b, i, k0), nk);
              const int64_t visible = p.causal ? std::min(nk, std::max<int64_t>(0, i + shift + 1 - k0)) : nk;
              for (int64_t c = visible; c < BK; ++c) sr[c] = kNegInf;
              exp_row(sr, pn, BK);
              const A di = delta[i];
              const A* dpr = dP.data() + t * BK;
              if (dropout) {
                // Z = kept / (1 - p): out = (P Z) V, so dV = (P Z)^T dO and dS = P (Z dP' - delta).
                const uint64_t base = static_cast<uint64_t>(((b * H + h) * Nq + i) * Nk + k0);
                for (int64_t c = 0; c < BK; ++c) {
                  const A z = c < nk && dropout_keep(p.seed, threshold, base + c) ? keep_scale : A(0);
                  ds[c] = pn[c] * (dpr[c] * z - di);
                  pn[c] *= z;
                }
              } else {
                for (int64_t c = 0; c < BK; ++c) ds[c] = pn[c] * (dpr[c] - di);
              }
              if (bp.dbias) {
                A* db = static_cast<A*>(bp.dbias) + (((b * H + h) * Nq) + i) * Nk + k0;
                for (int64_t c = 0; c < nk; ++c) db[c] = ds[c];
              }
            }
            for (int64_t c = 0; c < BK; ++c)
              for (int64_t r = 0; r < BQ; ++r) {
                PT[c * BQ + r] = Pn[r * BK + c];
                dST[c * BQ + r] = P[r * BK + c];
              }
            pv_block(PT.data(), dOw, dV, krows, nw, Dp);   // dV += P^T dO
            pv_block(dST.data(), Qw, dK, krows, nw, Dp);   // dK += dS^T Q
            pv_block(P.data(), Kb.data(), dQw, wrows, nk, Dp);    // dQ += dS K
            if (dQw == dQc.data())
              for (int64_t t = 0; t < nw; ++t)
                for (int64_t d = 0; d < Dp; ++d) dQ[(q0 + live[t]) * Dp + d] += dQc[t * Dp + d];
          }
        }
        T* dqb = static_cast<T*>(bp.dq) + (b * H + h) * Nq * D;
        for (int64_t i = 0; i < Nq; ++i)
          for (int64_t d = 0; d < D; ++d) dqb[i * D + d] = static_cast<T>(dQ[i * Dp + d] * scale);
      }  // query heads of the group
      T* dkb = static_cast<T*>(bp.dk) + (b * Hk + hk) * Nk * D;
      T* dvb = static_cast<T*>(bp.dv) + (b * Hk + hk) * Nk * D;
      for (int64_t j = 0; j < Nk; ++j)
        for (int64_t d = 0; d < D; ++d) {
          dkb[j * D + d] = static_cast<T>(dK_all[j * Dp + d] * scale);
          dvb[j * D + d] = static_cast<T>(dV_all[j * Dp + d]);
        }
    }
  });
}
}  // namespace

void attention_forward(const AttentionParams& p) {
  switch (p.dtype) {
    case AttnDType::kHalf: return run<c10::Half, float>(p);
    case AttnDType::kBFloat16: return run<c10::BFloat16, float>(p);
    case AttnDType::kFloat: return run<float, float>(p);
    case AttnDType::kDouble: return run<double, double>(p);
  }
}

void attention_backward(const AttentionBackwardParams& p) {
  switch (p.fwd.dtype) {
    case AttnDType::kHalf: return run_backward<c10::Half, float>(p);
    case AttnDType::kBFloat16: return run_backward<c10::BFloat16, float>(p);
    case AttnDType::kFloat: return run_backward<float, float>(p);
    case AttnDType::kDouble: return run_backward<double, double>(p);
  }
}

}  // namespace taskkernels::cpu::TK_ATTN_NS
