// Every inline PTX instruction the kernels use, one wrapper each, named in full after the
// instruction (CUTLASS's arch layer), so a fragment layout is looked up once, in the PTX ISA.
// Kernels call these, never asm directly. nvcc builds emit the instruction (sm_80 and newer);
// the emulated GPU (TASKKERNELS_EMULATE, csrc/emu) runs a host implementation of the same layout
// as a warp collective, so the kernels compile unchanged for both.
#pragma once

#include <cstdint>

#if defined(TASKKERNELS_EMULATE)
#include "emu/ptx.h"
#endif

namespace taskkernels::cuda::ptx {

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32: c += A (16x16 f16, row) B (16x8 f16, col).
// With g = lane / 4, t = lane % 4 (two 16-bit values per register, low half first):
//   A: a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
//   B: b0 (k 2t..2t+1, n g)  b1 (k 2t+8..2t+9, n g)
//   C: c0 c1 (g, 2t..2t+1)  c2 c3 (g+8, 2t..2t+1)
struct SM80_16x8x16_F32F16F16F32_TN {
  static __device__ __forceinline__ void fma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1
#if defined(TASKKERNELS_EMULATE)
                                             , const char* file = __builtin_FILE(), int line = __builtin_LINE()
#endif
  ) {
#if defined(TASKKERNELS_EMULATE)
    ::emu::ptx::mma_m16n8k16<::emu::ptx::Elem::kF16>(c, a, b0, b1, "mma.sync.m16n8k16.f32.f16", file, line);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(__CUDA_ARCH__)
#error "mma.sync m16n8k16 needs sm_80 or newer"
#endif
  }
};

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: the same layouts with bf16 operands.
struct SM80_16x8x16_F32BF16BF16F32_TN {
  static __device__ __forceinline__ void fma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1
#if defined(TASKKERNELS_EMULATE)
                                             , const char* file = __builtin_FILE(), int line = __builtin_LINE()
#endif
  ) {
#if defined(TASKKERNELS_EMULATE)
    ::emu::ptx::mma_m16n8k16<::emu::ptx::Elem::kBF16>(c, a, b0, b1, "mma.sync.m16n8k16.f32.bf16", file, line);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(__CUDA_ARCH__)
#error "mma.sync m16n8k16 needs sm_80 or newer"
#endif
  }
};

}  // namespace taskkernels::cuda::ptx
