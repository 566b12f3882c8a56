// Host implementations of the PTX wrappers in kernels/common/ptx.cuh for the emulated GPU: each a
// warp collective with the PTX ISA's fragment layouts (g = lane / 4, t = lane % 4).
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

}  // namespace emu::ptx
