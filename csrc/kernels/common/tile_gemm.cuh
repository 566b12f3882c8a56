// A tiled GEMM whose operands are read through small "operand" structs, so that im2col
// gathers, row remaps and transposes happen on the way into shared memory, and whose result
// goes to an epilogue functor, so that bias, residual adds and scatters happen on the way out.
//
//   C[m][n] = sum_k A(m, k) * B(k, n),  m < M, n < N, k in this block's K chunk.
//
// An operand exposes `rows`, `cols`, `load<V>(row, col, dst)`: dst[j] = element (row, col + j),
// zero outside the operand, `at(row, col)`: the element's address, and `vectorizable()`: whether
// every run of V elements that starts at a column multiple of V (inside the operand) is
// contiguous and 16-byte aligned. Its `col` index is the one that is contiguous in memory.
// A_K / B_K say whether that contiguous index is k (true) or m / n (false):
//   A_K:  A(m, k) = opa(m, k)   else A(m, k) = opa(k, m)
//   B_K:  B(k, n) = opb(n, k)   else B(k, n) = opb(k, n)
//
// Block tile 128 x 64 x BK (BK * sizeof(T) = 64 bytes), 128 threads (4 warps, 2 x 2), a
// STAGES-deep ring of shared-memory tiles. Each tile is kept in its operand's own layout (rows of
// the contiguous index, 16 bytes of padding per row), so a 16-byte run of global memory is one
// 16-byte run of shared memory: a vectorizable operand is copied with cp.async (zero-fill past
// its edge) STAGES - 1 tiles ahead of the math; any other operand (strided or channels-last
// pixels, rows that are not 16-byte aligned) is read with the operand's own loads into registers
// before the math and stored to the ring after it. One barrier per K tile.
// Compute: fp16/bf16 on mma.sync m16n8k16 with ldmatrix operands (.trans where a tile is m- or
// n-major), fp32 as TF32 through WMMA (row or column major fragments as the tile lies), or exact
// FMAs (fp32, fp64).
// gridDim.z splits K into chunks of k_chunk (a multiple of BK); the epilogue gets the chunk index
// so callers can write partial sums and reduce them in a fixed order (deterministic).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "kernels/common/launch.cuh"
#include "kernels/common/ptx.cuh"

namespace taskkernels::cuda {

// ---- numeric helpers -------------------------------------------------------------------------
template <class T>
struct Num {
  using acc = float;
  static __device__ __forceinline__ float to_acc(T x) { return static_cast<float>(x); }
  static __device__ __forceinline__ T from_acc(float x) { return static_cast<T>(x); }
  static __device__ __forceinline__ T zero() { return T(0); }
};
template <>
struct Num<__half> {
  using acc = float;
  static __device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_acc(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ __half zero() { return __float2half_rn(0.f); }
};
template <>
struct Num<__nv_bfloat16> {
  using acc = float;
  static __device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_acc(float x) { return __float2bfloat16_rn(x); }
  static __device__ __forceinline__ __nv_bfloat16 zero() { return __float2bfloat16_rn(0.f); }
};
template <>
struct Num<double> {
  using acc = double;
  static __device__ __forceinline__ double to_acc(double x) { return x; }
  static __device__ __forceinline__ double from_acc(double x) { return x; }
  static __device__ __forceinline__ double zero() { return 0.0; }
};

__device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// Operand helpers: V zeros (outside the operand), and one 16-byte read-only load.
template <int V, class T>
__device__ __forceinline__ void fill_zero(T* dst) {
#pragma unroll
  for (int j = 0; j < V; ++j) dst[j] = Num<T>::zero();
}
template <class T>
__device__ __forceinline__ void load16(const T* p, T* dst) {
  *reinterpret_cast<uint4*>(dst) = __ldg(reinterpret_cast<const uint4*>(p));
}

// ---- a row-major operand with remapped rows ---------------------------------------------------
// Row r lives at (r / group) * group_stride + (row_offset + r % group) * row_stride: plain
// row-major with group = rows, or the patch rows of a (B, R, D) tensor that skips a [CLS] row.
template <class T>
struct RowsOperand {
  const T* ptr;
  int64_t rows, cols;
  int64_t group, group_stride, row_offset, row_stride;

  // Element (r, c) is at ptr + row_part(r) + col_part(c).
  __device__ __forceinline__ int64_t row_part(int64_t r) const {
    const int64_t g = r / group;
    return g * group_stride + (row_offset + (r - g * group)) * row_stride;
  }
  __device__ __forceinline__ int64_t col_part(int64_t c) const { return c; }
  __device__ __forceinline__ const T* at(int64_t r, int64_t c) const { return ptr + row_part(r) + c; }

  __device__ __forceinline__ bool vectorizable() const {
    constexpr int64_t V = 16 / sizeof(T);
    return aligned16(ptr) && row_stride % V == 0 && (rows <= group || group_stride % V == 0);
  }

  template <int V>
  __device__ __forceinline__ void load(int64_t r, int64_t c, T* dst) const {
    if (r >= rows || c >= cols) return fill_zero<V>(dst);
    const T* p = at(r, c);
    if (c + V <= cols && aligned16(p)) return load16(p, dst);
#pragma unroll
    for (int j = 0; j < V; ++j) dst[j] = (c + j < cols) ? p[j] : Num<T>::zero();
  }
};

// ---- tile configuration ----------------------------------------------------------------------
template <class T, bool TC>
struct TileConfig {
  static constexpr int BM = 128, BN = 64, THREADS = 128, STAGES = 3;
  // Blocks per SM the register allocation must allow: 3 (at most 168 registers) for the mma.sync
  // path, which fits without spilling; the others keep ptxas's choice (fp64 would spill).
  static constexpr int MIN_BLOCKS = (TC && sizeof(T) == 2) ? 3 : 1;
  static constexpr int V = 16 / sizeof(T);        // elements per 16-byte vector
  static constexpr int BK = 64 / int(sizeof(T));  // 64 bytes of K per tile row: 32 / 16 / 8
  // A tile is (BM x BK) when A_K, else (BK x BM); B is (BN x BK) when B_K, else (BK x BN). Each
  // row is padded by 16 bytes: ldmatrix rows and WMMA rows then fall in distinct banks, and every
  // row stays 16-byte aligned for cp.async. A stage holds the larger of either layout.
  static constexpr size_t round128(size_t x) { return (x + 127) & ~size_t(127); }
  static constexpr size_t larger(size_t a, size_t b) { return a > b ? a : b; }
  static constexpr size_t A_BYTES = round128(larger(size_t(BM) * (BK + V), size_t(BK) * (BM + V)) * sizeof(T));
  static constexpr size_t B_BYTES = round128(larger(size_t(BN) * (BK + V), size_t(BK) * (BN + V)) * sizeof(T));
  static constexpr size_t STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr int LDC = BN + 4;  // float staging of the accumulators (TC only)
  static constexpr size_t C_BYTES = TC ? size_t(BM) * LDC * sizeof(float) : 0;
  static constexpr size_t SMEM = larger(STAGES * STAGE_BYTES, C_BYTES);
  static_assert(BK % 16 == 0 || sizeof(T) >= 4, "16-bit tiles hold whole m16n8k16 steps");
  static_assert(SMEM <= 48 * 1024, "static shared memory limit");
};

// The copy of one operand's tile into the ring: a ROWS x COLS tile (COLS along the operand's
// contiguous index) of 16-byte vectors, VECS per thread, rows LD elements apart. Thread tid
// copies column (tid % PER_ROW) * V of rows tid / PER_ROW + i * NT / PER_ROW. K_ROWS: the rows
// run along k (they move from tile to tile, the columns are the block's m or n and stay);
// otherwise the columns do.
template <class T, int ROWS, int COLS, int NT, bool K_ROWS>
struct TileCopy {
  static constexpr int V = 16 / sizeof(T);
  static constexpr int LD = COLS + V;
  static constexpr int PER_ROW = COLS / V;
  static constexpr int VECS = ROWS * PER_ROW / NT;
  static constexpr int ROW_STEP = NT / PER_ROW;
  static_assert(NT % PER_ROW == 0 && VECS * NT == ROWS * PER_ROW, "tile must split evenly over the threads");

  // The cp.async path's address of each vector splits into the part of the index that stays
  // (computed once, here: -1 outside the operand) and the part along k (computed per tile), so
  // the im2col divisions are not redone for every vector of every tile.
  int64_t fixed[VECS];

  template <class Op>
  __device__ __forceinline__ void prepare(const Op& op, int64_t fixed0, int tid) {
#pragma unroll
    for (int i = 0; i < VECS; ++i) {
      if constexpr (K_ROWS) {
        const int64_t gc = fixed0 + (tid % PER_ROW) * V;
        fixed[i] = gc < op.cols ? op.col_part(gc) : -1;
      } else {
        const int64_t gr = fixed0 + tid / PER_ROW + i * ROW_STEP;
        fixed[i] = gr < op.rows ? op.row_part(gr) : -1;
      }
    }
  }

  // Vectorizable operand: cp.async of this thread's vectors of the tile that starts at k0, the
  // part past the operand's last column zero-filled; zeros past its last row. Otherwise the
  // operand's own loads into `reg`, for `store` to put into the tile later.
  template <class Op>
  __device__ __forceinline__ void issue(const Op& op, bool async, int64_t k0, int64_t fixed0, T* tile,
                                        uint4 (&reg)[VECS], int tid) const {
    const int r0 = tid / PER_ROW, c = (tid % PER_ROW) * V;
    if (async) {
      // The k part of the address: one column for all of this thread's vectors, or one row each.
      const int64_t gc_k = k0 + c;
      const int64_t col_k = (!K_ROWS && gc_k < op.cols) ? op.col_part(gc_k) : 0;
#pragma unroll
      for (int i = 0; i < VECS; ++i) {
        const int r = r0 + i * ROW_STEP;
        T* dst = tile + r * LD + c;
        const int64_t gr = K_ROWS ? k0 + r : fixed0 + r, gc = K_ROWS ? fixed0 + c : gc_k;
        if (fixed[i] >= 0 && gr < op.rows && gc < op.cols) {
          const int64_t off = K_ROWS ? op.row_part(gr) + fixed[i] : fixed[i] + col_k;
          const int64_t left = op.cols - gc;
          const int bytes = left >= V ? 16 : int(left * int64_t(sizeof(T)));
          ptx::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL::copy(dst, op.ptr + off, bytes);
        } else {
          *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
        }
      }
    } else {
#pragma unroll
      for (int i = 0; i < VECS; ++i) {
        const int r = r0 + i * ROW_STEP;
        const int64_t gr = K_ROWS ? k0 + r : fixed0 + r, gc = K_ROWS ? fixed0 + c : k0 + c;
        op.template load<V>(gr, gc, reinterpret_cast<T*>(&reg[i]));
      }
    }
  }

  static __device__ __forceinline__ void store(const uint4 (&reg)[VECS], T* tile, int tid) {
    const int r0 = tid / PER_ROW, c = (tid % PER_ROW) * V;
#pragma unroll
    for (int i = 0; i < VECS; ++i) *reinterpret_cast<uint4*>(tile + (r0 + i * ROW_STEP) * LD + c) = reg[i];
  }
};

template <class T>
struct WmmaType {
  using type = T;
  static constexpr int K = 16;
};
template <>
struct WmmaType<float> {
  using type = nvcuda::wmma::precision::tf32;
  static constexpr int K = 8;
};

template <class T>
struct MmaOp;
template <>
struct MmaOp<__half> {
  using type = ptx::SM80_16x8x16_F32F16F16F32_TN;
};
template <>
struct MmaOp<__nv_bfloat16> {
  using type = ptx::SM80_16x8x16_F32BF16BF16F32_TN;
};

// ---- the kernel ------------------------------------------------------------------------------
template <class T, bool TC, class OpA, bool A_K, class OpB, bool B_K, class Epi>
__global__ void __launch_bounds__(TileConfig<T, TC>::THREADS, TileConfig<T, TC>::MIN_BLOCKS)
    tile_gemm_kernel(int64_t M, int64_t N, int64_t K, int64_t k_chunk, OpA opa, OpB opb, Epi epi) {
  using Cfg = TileConfig<T, TC>;
  using Acc = typename Num<T>::acc;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, NT = Cfg::THREADS, S = Cfg::STAGES;
  using CopyA = TileCopy<T, A_K ? BM : BK, A_K ? BK : BM, NT, !A_K>;
  using CopyB = TileCopy<T, B_K ? BN : BK, B_K ? BK : BN, NT, !B_K>;
  constexpr int LDA = CopyA::LD, LDB = CopyB::LD;

  __shared__ __align__(128) unsigned char smem[Cfg::SMEM];
  auto a_tile = [&](int st) { return reinterpret_cast<T*>(smem + st * Cfg::STAGE_BYTES); };
  auto b_tile = [&](int st) { return reinterpret_cast<T*>(smem + st * Cfg::STAGE_BYTES + Cfg::A_BYTES); };

  const int tid = threadIdx.x;
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  const int64_t n0 = int64_t(blockIdx.y) * BN;
  const int64_t kb = int64_t(blockIdx.z) * k_chunk;
  const int64_t ke = (kb + k_chunk < K) ? kb + k_chunk : K;
  const int tiles = kb < ke ? int((ke - kb + BK - 1) / BK) : 0;
  const bool a_async = opa.vectorizable(), b_async = opb.vectorizable();  // uniform

  uint4 ra[CopyA::VECS];
  uint4 rb[CopyB::VECS];
  CopyA copy_a;
  CopyB copy_b;
  if (a_async) copy_a.prepare(opa, m0, tid);
  if (b_async) copy_b.prepare(opb, n0, tid);
  // Starts tile t's copy into stage t % S (cp.async, or loads into ra / rb) ...
  auto issue = [&](int t) {
    const int64_t k0 = kb + int64_t(t) * BK;
    const int st = t % S;
    copy_a.issue(opa, a_async, k0, m0, a_tile(st), ra, tid);
    copy_b.issue(opb, b_async, k0, n0, b_tile(st), rb, tid);
  };
  // ... and stores what went through registers.
  auto land = [&](int t) {
    const int st = t % S;
    if (!a_async) CopyA::store(ra, a_tile(st), tid);
    if (!b_async) CopyB::store(rb, b_tile(st), tid);
  };
  // Runs math(stage) once per K tile. Tile t + S - 1 is in flight while tile t is multiplied;
  // the barrier at the top of an iteration both publishes tile t and frees the stage that tile
  // t + S - 1 reuses (tile t - 1's, read by the previous iteration's math).
  auto pipeline = [&](auto&& math) {
#pragma unroll 1
    for (int t = 0; t < S - 1; ++t) {
      if (t < tiles) {
        issue(t);
        land(t);
      }
      ptx::cp_async_commit_group();  // one group per tile slot, empty or not: the waits count them
    }
#pragma unroll 1
    for (int t = 0; t < tiles; ++t) {
      ptx::cp_async_wait_group<S - 2>();
      __syncthreads();
      const int next = t + S - 1;
      if (next < tiles) issue(next);
      ptx::cp_async_commit_group();
      math(t % S);
      if (next < tiles) land(next);
    }
    ptx::cp_async_wait_group<0>();
    __syncthreads();  // the ring is free for the accumulators' staging
  };

  if constexpr (TC && sizeof(T) == 2) {
    // mma.sync m16n8k16: warp (wm, wn) owns rows wm * 64 + 16 i, columns wn * 32 + 8 j.
    using Mma = typename MmaOp<T>::type;
    const int lane = tid % 32, warp = tid / 32, wm = warp / 2, wn = warp % 2;
    const int g = lane / 4, t4 = lane % 4;
    // ldmatrix: lane gives row lane % 8 of matrix q = lane / 8; (qa, qb) pick the matrix's
    // 8-row / 8-column block in the A fragment order (m, k), (m+8, k), (m, k+8), (m+8, k+8) and
    // the B order (n, k), (n, k+8), (n+8, k), (n+8, k+8).
    const int q = lane / 8, lr = lane % 8;
    const int a_m = (q & 1) * 8, a_k = (q >> 1) * 8, b_n = (q >> 1) * 8, b_k = (q & 1) * 8;
    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    pipeline([&](int st) {
      const T* As = a_tile(st);
      const T* Bs = b_tile(st);
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        uint32_t a[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int mb = wm * 64 + i * 16;
          if constexpr (A_K) {
            ptx::SM75_U32x4_LDSM_N::copy(a[i], As + (mb + a_m + lr) * LDA + kk + a_k);
          } else {
            ptx::SM75_U16x8_LDSM_T::copy(a[i], As + (kk + a_k + lr) * LDA + mb + a_m);
          }
        }
#pragma unroll
        for (int j2 = 0; j2 < 2; ++j2) {  // two n8 tiles: b = {b0, b1} of tile 2 j2, then of 2 j2 + 1
          const int nb = wn * 32 + j2 * 16;
          uint32_t b[4];
          if constexpr (B_K) {
            ptx::SM75_U32x4_LDSM_N::copy(b, Bs + (nb + b_n + lr) * LDB + kk + b_k);
          } else {
            ptx::SM75_U16x8_LDSM_T::copy(b, Bs + (kk + b_k + lr) * LDB + nb + b_n);
          }
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            Mma::fma(acc[i][2 * j2], a[i], b[0], b[1]);
            Mma::fma(acc[i][2 * j2 + 1], a[i], b[2], b[3]);
          }
        }
      }
    });

    // Stage the accumulators through shared memory so the epilogue walks rows with n fastest
    // (coalesced writes) and knows each element's (m, n).
    float* Cs = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float* c = Cs + (wm * 64 + i * 16 + g) * Cfg::LDC + wn * 32 + j * 8 + 2 * t4;
        *reinterpret_cast<float2*>(c) = make_float2(acc[i][j][0], acc[i][j][1]);
        *reinterpret_cast<float2*>(c + 8 * Cfg::LDC) = make_float2(acc[i][j][2], acc[i][j][3]);
      }
    __syncthreads();
    for (int idx = tid; idx < BM * BN; idx += NT) {
      const int r = idx / BN, c = idx % BN;
      const int64_t m = m0 + r, n = n0 + c;
      if (m < M && n < N) epi(m, n, Cs[r * Cfg::LDC + c], int(blockIdx.z));
    }
  } else if constexpr (TC) {
    // TF32 through WMMA; the fragments' layouts follow the tiles'.
    namespace wmma = nvcuda::wmma;
    using In = typename WmmaType<T>::type;
    constexpr int FK = WmmaType<T>::K;
    using LayoutA = std::conditional_t<A_K, wmma::row_major, wmma::col_major>;
    using LayoutB = std::conditional_t<B_K, wmma::col_major, wmma::row_major>;
    const int warp = tid / 32, wm = warp / 2, wn = warp % 2;  // warp tile 64 x 32
    wmma::fragment<wmma::accumulator, 16, 16, FK, float> acc[4][2];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

    pipeline([&](int st) {
      const T* As = a_tile(st);
      const T* Bs = b_tile(st);
#pragma unroll
      for (int kk = 0; kk < BK; kk += FK) {
        wmma::fragment<wmma::matrix_a, 16, 16, FK, In, LayoutA> a[4];
        wmma::fragment<wmma::matrix_b, 16, 16, FK, In, LayoutB> b[2];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int mb = wm * 64 + i * 16;
          wmma::load_matrix_sync(a[i], A_K ? As + mb * LDA + kk : As + kk * LDA + mb, LDA);
#pragma unroll
          for (int e = 0; e < a[i].num_elements; ++e) a[i].x[e] = wmma::__float_to_tf32(a[i].x[e]);
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int nb = wn * 32 + j * 16;
          wmma::load_matrix_sync(b[j], B_K ? Bs + nb * LDB + kk : Bs + kk * LDB + nb, LDB);
#pragma unroll
          for (int e = 0; e < b[j].num_elements; ++e) b[j].x[e] = wmma::__float_to_tf32(b[j].x[e]);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
      }
    });

    float* Cs = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(Cs + (wm * 64 + i * 16) * Cfg::LDC + wn * 32 + j * 16, acc[i][j],
                                Cfg::LDC, wmma::mem_row_major);
    __syncthreads();
    for (int idx = tid; idx < BM * BN; idx += NT) {
      const int r = idx / BN, c = idx % BN;
      const int64_t m = m0 + r, n = n0 + c;
      if (m < M && n < N) epi(m, n, Cs[r * Cfg::LDC + c], int(blockIdx.z));
    }
  } else {
    // Exact FMAs: thread (tm, tn) owns rows tm + 16 i and columns tn + 8 j.
    const int tm = tid / 8, tn = tid % 8;
    Acc acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = Acc(0);

    pipeline([&](int st) {
      const T* As = a_tile(st);
      const T* Bs = b_tile(st);
#pragma unroll 4
      for (int k = 0; k < BK; ++k) {
        Acc a[8], b[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int m = tm + 16 * i;
          a[i] = Num<T>::to_acc(A_K ? As[m * LDA + k] : As[k * LDA + m]);
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const int n = tn + 8 * j;
          b[j] = Num<T>::to_acc(B_K ? Bs[n * LDB + k] : Bs[k * LDB + n]);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
      }
    });
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int64_t m = m0 + tm + 16 * i, n = n0 + tn + 8 * j;
        if (m < M && n < N) epi(m, n, acc[i][j], int(blockIdx.z));
      }
  }
}

// Launches tile_gemm_kernel over an M x N output with K split into `splits` chunks.
template <class T, bool TC, bool A_K, bool B_K, class OpA, class OpB, class Epi>
cudaError_t launch_tile_gemm(int64_t M, int64_t N, int64_t K, int64_t k_chunk, int64_t splits,
                             const OpA& opa, const OpB& opb, const Epi& epi, cudaStream_t stream) {
  using Cfg = TileConfig<T, TC>;
  if (M <= 0 || N <= 0 || splits <= 0) return cudaSuccess;
  const int64_t gm = (M + Cfg::BM - 1) / Cfg::BM, gn = (N + Cfg::BN - 1) / Cfg::BN;
  if (gn > 65535 || splits > 65535 || gm > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid{unsigned(gm), unsigned(gn), unsigned(splits)};
  return launch_kernel(tile_gemm_kernel<T, TC, OpA, A_K, OpB, B_K, Epi>, grid, Cfg::THREADS, 0, stream, M, N, K, k_chunk, opa, opb, epi);
}

// K chunk (a multiple of the tile's BK) for `splits` pieces of K.
template <class T, bool TC>
inline int64_t k_chunk_for(int64_t K, int64_t splits) {
  constexpr int64_t BK = TileConfig<T, TC>::BK;
  const int64_t per = (K + splits - 1) / splits;
  return ((per + BK - 1) / BK) * BK;
}

}  // namespace taskkernels::cuda
