// Host implementations of the PTX wrappers in kernels/common/ptx.cuh for the emulated GPU: mma and
// ldmatrix as warp collectives with the PTX ISA's fragment layouts (g = lane / 4, t = lane % 4);
// cp.async as a per-thread queue whose data lands only at the wait.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#include "emu/runtime.h"

namespace emu::ptx {

enum class Elem { kF16, kBF16 };

inline float elem_to_float(Elem e, uint16_t bits) {
  if (e == Elem::kBF16) {
    const uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  __half h;
  std::memcpy(&h, &bits, 2);
  return __half2float(h);
}

struct MmaLane {
  float* c;  // in: C, out: D (4 floats)
  uint32_t a[4], b[2];
};

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32
template <Elem E>
inline void mma_m16n8k16_combine(void* const* lanes, unsigned, const void*) {
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const auto* x = static_cast<const MmaLane*>(lanes[l]);
    const int g = l / 4, t = l % 4;
    // A: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..); low half first.
    for (int r = 0; r < 4; ++r) {
      const int row = g + (r & 1) * 8, col = 2 * t + (r >> 1) * 8;
      A[row][col] = elem_to_float(E, uint16_t(x->a[r] & 0xffff));
      A[row][col + 1] = elem_to_float(E, uint16_t(x->a[r] >> 16));
    }
    // B: b0 (k 2t..2t+1, n g), b1 (k 2t+8..2t+9, n g).
    for (int r = 0; r < 2; ++r) {
      const int k = 2 * t + r * 8;
      B[k][g] = elem_to_float(E, uint16_t(x->b[r] & 0xffff));
      B[k + 1][g] = elem_to_float(E, uint16_t(x->b[r] >> 16));
    }
    // C: c0 c1 (g, 2t..2t+1), c2 c3 (g+8, 2t..2t+1).
    C[g][2 * t] = x->c[0];
    C[g][2 * t + 1] = x->c[1];
    C[g + 8][2 * t] = x->c[2];
    C[g + 8][2 * t + 1] = x->c[3];
  }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      float s = C[m][n];
      for (int k = 0; k < 16; ++k) s += A[m][k] * B[k][n];
      C[m][n] = s;
    }
  for (int l = 0; l < 32; ++l) {
    auto* x = static_cast<const MmaLane*>(lanes[l]);
    const int g = l / 4, t = l % 4;
    x->c[0] = C[g][2 * t];
    x->c[1] = C[g][2 * t + 1];
    x->c[2] = C[g + 8][2 * t];
    x->c[3] = C[g + 8][2 * t + 1];
  }
}

template <Elem E>
inline void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, const char* what,
                         const char* file, int line) {
  MmaLane mine{c, {a[0], a[1], a[2], a[3]}, {b0, b1}};
  ::emu::warp_collective(0xffffffffu, what, &mine, mma_m16n8k16_combine<E>, nullptr, file, line);
}

// ldmatrix.sync.aligned.m8n8.x{1,2,4}{,.trans}.shared.b16: lanes 8i..8i+7 give the row addresses
// of matrix i (16 bytes each, 16-byte aligned, in shared memory). Each lane reads the row it
// names (so the race build sees the reads as that lane's); the collective hands them out. Without
// .trans lane l receives (l/4, 2(l%4)) in the low and (l/4, 2(l%4)+1) in the high half of register
// i; with .trans, (2(l%4), l/4) and (2(l%4)+1, l/4).
struct LdmatrixLane {
  uint32_t row[4];  // the 16 bytes at this lane's address (lanes < 8 * matrices)
  uint32_t out[4];
};

template <int M, bool Trans>
inline void ldmatrix_combine(void* const* lanes, unsigned, const void*) {
  uint32_t out[32][M];
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < M; ++i) {
      if (!Trans) {
        out[l][i] = static_cast<const LdmatrixLane*>(lanes[8 * i + l / 4])->row[l % 4];
      } else {
        // Element (r, c) of matrix i is half (c % 2) of word c / 2 of the row lane 8i + r gave.
        auto elem = [&](int r, int c) {
          return (static_cast<const LdmatrixLane*>(lanes[8 * i + r])->row[c / 2] >> (16 * (c % 2))) & 0xffffu;
        };
        out[l][i] = elem(2 * (l % 4), l / 4) | (elem(2 * (l % 4) + 1, l / 4) << 16);
      }
    }
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < M; ++i) static_cast<LdmatrixLane*>(lanes[l])->out[i] = out[l][i];
}

template <int M, bool Trans>
inline void ldmatrix(uint32_t (&d)[M], const void* row_addr, const char* what, const char* file, int line) {
  static_assert(M == 1 || M == 2 || M == 4, "ldmatrix loads 1, 2 or 4 matrices");
  LdmatrixLane mine{};
  const int lane = ::emu::lane_id();
  if (lane < 8 * M) {  // the other lanes' addresses are ignored
    if (reinterpret_cast<uintptr_t>(row_addr) & 15)
      ::emu::fault(file, line, "%s: lane %d's row address %p is not 16-byte aligned", what, lane, row_addr);
    if (!::emu::is_shared(row_addr, 16))
      ::emu::fault(file, line, "%s: lane %d's row address %p is not in this block's shared memory", what, lane,
                   row_addr);
    const auto* p = static_cast<const uint32_t*>(row_addr);
    for (int w = 0; w < 4; ++w) mine.row[w] = p[w];
  }
  ::emu::warp_collective(0xffffffffu, what, &mine, ldmatrix_combine<M, Trans>, nullptr, file, line);
  for (int i = 0; i < M; ++i) d[i] = mine.out[i];
}

// cp.async.cg.shared.global [dst], [src], 16, src_bytes: reads the first src_bytes bytes of src
// now (zeros for the rest) and poisons dst (0xff: NaN in every float format), so a read before
// the wait shows; the data lands when a wait_group takes its group. The poisoning and the landing
// are plain stores of the issuing thread, which the race build checks against other threads'
// accesses like any other store.
inline void cp_async_16(void* dst, const void* src, int src_bytes, const char* what, const char* file, int line) {
  if (src_bytes < 0 || src_bytes > 16) ::emu::fault(file, line, "%s: source size %d is not in 0..16", what, src_bytes);
  if (reinterpret_cast<uintptr_t>(dst) & 15)
    ::emu::fault(file, line, "%s: shared destination %p is not 16-byte aligned", what, dst);
  if (reinterpret_cast<uintptr_t>(src) & 15)
    ::emu::fault(file, line, "%s: global source %p is not 16-byte aligned", what, src);
  if (!::emu::is_shared(dst, 16))
    ::emu::fault(file, line, "%s: destination %p is not in this block's shared memory", what, dst);
  if (::emu::is_shared(src, 1)) ::emu::fault(file, line, "%s: source %p is in shared memory, not global", what, src);
  ::emu::AsyncCopy c;
  c.dst = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  for (int i = 0; i < 16; ++i) c.data[i] = i < src_bytes ? s[i] : 0;
  auto* d = static_cast<uint32_t*>(dst);
  for (int w = 0; w < 4; ++w) d[w] = 0xffffffffu;
  ::emu::async_issue(c);
}

inline void cp_async_commit() { ::emu::async_commit(); }

// cp.async.wait_group n (n < 0: cp.async.wait_all, which also commits the open group).
inline void cp_async_wait(int pending) {
  if (pending < 0) ::emu::async_commit();
  const ::emu::AsyncCopy* copies = nullptr;
  const size_t n = ::emu::async_complete(pending < 0 ? 0 : pending, &copies);
  for (size_t k = 0; k < n; ++k) {
    uint32_t w[4];
    std::memcpy(w, copies[k].data, 16);
    auto* d = reinterpret_cast<uint32_t*>(copies[k].dst);
    for (int i = 0; i < 4; ++i) d[i] = w[i];
  }
}

}  // namespace emu::ptx
