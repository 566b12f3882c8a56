// WMMA (nvcuda::wmma) on the emulated GPU: shadows the toolkit's <mma.h> in TASKKERNELS_EMULATE
// builds. The mapping of matrix elements into a fragment's x[] is unspecified on the device and
// differs between architectures, so here it is a random permutation fixed per process (EMU_SEED):
// code that assumes a layout gets wrong results. load/store/mma are warp collectives that check
// what the device requires: every lane with the same pointer and leading dimension, 256-bit
// aligned pointers, a leading dimension that is a multiple of 16 bytes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "emu/runtime.h"

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
template <class T> struct storage { using type = T; };
template <> struct storage<precision::tf32> { using type = float; };

template <class Use, int M, int N, int K> struct dims;
template <int M, int N, int K> struct dims<matrix_a, M, N, K> { static constexpr int R = M, C = K, kind = 0; };
template <int M, int N, int K> struct dims<matrix_b, M, N, K> { static constexpr int R = K, C = N, kind = 1; };
template <int M, int N, int K> struct dims<accumulator, M, N, K> { static constexpr int R = M, C = N, kind = 2; };

template <class T> inline float to_float(T v) { return static_cast<float>(v); }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
// Tensor cores read the TF32 bits of a float operand (19 bits: sign, exponent, 10 of mantissa).
inline float tf32_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u &= 0xffffe000u;
  std::memcpy(&v, &u, 4);
  return v;
}

struct CheckLane {
  const void* ptr;
  unsigned ldm;
  int layout;
  bool same;
};
inline void check_combine(void* const* lanes, unsigned, const void*) {
  const CheckLane* first = nullptr;
  bool same = true;
  for (int l = 0; l < 32; ++l) {
    auto* x = static_cast<CheckLane*>(lanes[l]);
    if (!x) continue;
    if (!first) first = x;
    same = same && x->ptr == first->ptr && x->ldm == first->ldm && x->layout == first->layout;
  }
  for (int l = 0; l < 32; ++l)
    if (lanes[l]) static_cast<CheckLane*>(lanes[l])->same = same;
}
inline void check_args(const char* what, const void* ptr, unsigned ldm, size_t elem, int layout, const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(ptr) % 32)
    ::emu::fault(file, line, "%s: pointer %p is not 256-bit aligned", what, ptr);
  if ((ldm * elem) % 16)
    ::emu::fault(file, line, "%s: leading dimension %u (x %zu bytes) is not a multiple of 16 bytes", what, ldm, elem);
  CheckLane mine{ptr, ldm, layout, false};
  ::emu::warp_collective(0xffffffffu, what, &mine, check_combine, nullptr, file, line);
  if (!mine.same) ::emu::fault(file, line, "%s: the lanes of the warp passed different pointers or leading dimensions", what);
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
 public:
  using D = detail::dims<Use, M, N, K>;
  using element_type = typename detail::storage<T>::type;
  static constexpr int num_elements = D::R * D::C / 32;
  static_assert(D::R * D::C % 32 == 0, "fragment shape");
  element_type x[num_elements];
  // Row-major matrix index of this lane's element e.
  static int index(int lane, int e) {
    return ::emu::fragment_permutation(D::kind, D::R, D::C)[lane * num_elements + e];
  }
};

template <class Use, int M, int N, int K, class T, class Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, typename fragment<Use, M, N, K, T, Layout>::element_type v) {
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = v;
}

template <class Use, int M, int N, int K, class T, class Layout, class P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned ldm,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using F = fragment<Use, M, N, K, T, Layout>;
  constexpr bool row = std::is_same_v<Layout, row_major>;
  detail::check_args("wmma::load_matrix_sync", p, ldm, sizeof(P), row, file, line);
  const int lane = ::emu::lane_id();
  for (int e = 0; e < F::num_elements; ++e) {
    const int idx = F::index(lane, e), r = idx / F::D::C, c = idx % F::D::C;
    f.x[e] = static_cast<typename F::element_type>(row ? p[r * ldm + c] : p[c * ldm + r]);
  }
}

template <int M, int N, int K, class T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t layout,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using F = fragment<accumulator, M, N, K, T>;
  detail::check_args("wmma::load_matrix_sync", p, ldm, sizeof(T), layout, file, line);
  const int lane = ::emu::lane_id();
  for (int e = 0; e < F::num_elements; ++e) {
    const int idx = F::index(lane, e), r = idx / N, c = idx % N;
    f.x[e] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  }
}

template <int M, int N, int K, class T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout,
                              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using F = fragment<accumulator, M, N, K, T>;
  detail::check_args("wmma::store_matrix_sync", p, ldm, sizeof(T), layout, file, line);
  const int lane = ::emu::lane_id();
  for (int e = 0; e < F::num_elements; ++e) {
    const int idx = F::index(lane, e), r = idx / N, c = idx % N;
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[e];
  }
}

namespace detail {
template <class FD, class FA, class FB, class FC>
struct MmaLane {
  FD* d;
  const FA* a;
  const FB* b;
  const FC* c;
};
template <class FD, class FA, class FB, class FC, int M, int N, int K, bool TF32>
inline void mma_combine(void* const* lanes, unsigned, const void*) {
  float A[M][K], B[K][N], C[M][N];
  for (int l = 0; l < 32; ++l) {
    const auto* x = static_cast<const MmaLane<FD, FA, FB, FC>*>(lanes[l]);
    for (int e = 0; e < FA::num_elements; ++e) {
      const int i = FA::index(l, e);
      const float v = to_float(x->a->x[e]);
      A[i / K][i % K] = TF32 ? tf32_bits(v) : v;
    }
    for (int e = 0; e < FB::num_elements; ++e) {
      const int i = FB::index(l, e);
      const float v = to_float(x->b->x[e]);
      B[i / N][i % N] = TF32 ? tf32_bits(v) : v;
    }
    for (int e = 0; e < FC::num_elements; ++e) {
      const int i = FC::index(l, e);
      C[i / N][i % N] = x->c->x[e];
    }
  }
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float s = C[m][n];
      for (int k = 0; k < K; ++k) s += A[m][k] * B[k][n];
      C[m][n] = s;
    }
  for (int l = 0; l < 32; ++l) {
    auto* x = static_cast<const MmaLane<FD, FA, FB, FC>*>(lanes[l]);
    for (int e = 0; e < FD::num_elements; ++e) {
      const int i = FD::index(l, e);
      x->d->x[e] = C[i / N][i % N];
    }
  }
}
}  // namespace detail

template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using FD = fragment<accumulator, M, N, K, TC>;
  using FA = fragment<matrix_a, M, N, K, TA, LA>;
  using FB = fragment<matrix_b, M, N, K, TB, LB>;
  static_assert(std::is_same_v<TC, float>, "the emulated WMMA accumulates in float");
  detail::MmaLane<FD, FA, FB, FD> mine{&d, &a, &b, &c};
  constexpr bool tf32 = std::is_same_v<TA, precision::tf32>;
  ::emu::warp_collective(0xffffffffu, "wmma::mma_sync", &mine, detail::mma_combine<FD, FA, FB, FD, M, N, K, tf32>, nullptr,
                         file, line);
}

// cvt.rna.tf32.f32: round to nearest, ties away from zero, to TF32's 10 mantissa bits.
inline float __float_to_tf32(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) {
    u += 0x1000u;
    u &= 0xffffe000u;
  }
  std::memcpy(&v, &u, 4);
  return v;
}

}  // namespace wmma
}  // namespace nvcuda
