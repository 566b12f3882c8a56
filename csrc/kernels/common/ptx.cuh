// Every inline PTX instruction the kernels use, one wrapper each, named in full after the
// instruction (CUTLASS's arch layer), so a fragment layout is looked up once, in the PTX ISA.
// Kernels call these, never asm directly. nvcc builds emit the instruction (sm_80 and newer);
// the emulated GPU (TASKKERNELS_EMULATE, csrc/emu) runs a host implementation of the same layout
// (emu/ptx.h: mma and ldmatrix as warp collectives, cp.async as a per-thread queue that lands at
// the wait), so the kernels compile unchanged for both.
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

#if defined(TASKKERNELS_EMULATE)
#define TK_PTX_SITE , const char* file = __builtin_FILE(), int line = __builtin_LINE()
#else
#define TK_PTX_SITE
#endif

// ldmatrix.sync.aligned.m8n8.x{2,4}{,.trans}.shared.b16: loads 2 or 4 8x8 matrices of 16-bit
// elements from shared memory, one register of each per lane. Lane l passes the address of row
// l % 8 of matrix l / 8 (16 bytes, 16-byte aligned; lanes 16..31 are ignored by .x2). Lane l
// receives in d[i], low half first:
//   plain:   (l/4, 2(l%4)) (l/4, 2(l%4)+1) of matrix i   -- an A or B fragment of mma.m16n8k16
//            when the rows run along its k dimension
//   .trans:  (2(l%4), l/4) (2(l%4)+1, l/4) of matrix i   -- a B fragment from k-major rows (V)
struct SM75_U32x4_LDSM_N {
  static __device__ __forceinline__ void copy(uint32_t (&d)[4], const void* smem_row TK_PTX_SITE) {
#if defined(TASKKERNELS_EMULATE)
    ::emu::ptx::ldmatrix<4, false>(d, smem_row, "ldmatrix.sync.aligned.m8n8.x4.shared.b16", file, line);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a));
#elif defined(__CUDA_ARCH__)
#error "ldmatrix needs sm_75 or newer"
#endif
  }
};

struct SM75_U16x8_LDSM_T {  // ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16
  static __device__ __forceinline__ void copy(uint32_t (&d)[4], const void* smem_row TK_PTX_SITE) {
#if defined(TASKKERNELS_EMULATE)
    ::emu::ptx::ldmatrix<4, true>(d, smem_row, "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16", file, line);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a));
#elif defined(__CUDA_ARCH__)
#error "ldmatrix needs sm_75 or newer"
#endif
  }
};

struct SM75_U32x2_LDSM_N {  // ldmatrix.sync.aligned.m8n8.x2.shared.b16
  static __device__ __forceinline__ void copy(uint32_t (&d)[2], const void* smem_row TK_PTX_SITE) {
#if defined(TASKKERNELS_EMULATE)
    ::emu::ptx::ldmatrix<2, false>(d, smem_row, "ldmatrix.sync.aligned.m8n8.x2.shared.b16", file, line);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(d[0]), "=r"(d[1]) : "r"(a));
#elif defined(__CUDA_ARCH__)
#error "ldmatrix needs sm_75 or newer"
#endif
  }
};

struct SM75_U16x4_LDSM_T {  // ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16
  static __device__ __forceinline__ void copy(uint32_t (&d)[2], const void* smem_row TK_PTX_SITE) {
#if defined(TASKKERNELS_EMULATE)
    ::emu::ptx::ldmatrix<2, true>(d, smem_row, "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16", file, line);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(d[0]), "=r"(d[1]) : "r"(a));
#elif defined(__CUDA_ARCH__)
#error "ldmatrix needs sm_75 or newer"
#endif
  }
};

// cp.async.cg.shared.global [smem], [gmem], 16, src_bytes: an asynchronous 16-byte copy from
// global to shared memory (through L2 only), both addresses 16-byte aligned; bytes from
// src_bytes (0..16) on are zero-filled (src_bytes 0 reads nothing). The data is there for this
// thread after a cp_async_wait_group that covers its group, for the others after a barrier too.
struct SM80_CP_ASYNC_CACHEGLOBAL_ZFILL {
  static __device__ __forceinline__ void copy(void* smem_dst, const void* gmem_src, int src_bytes TK_PTX_SITE) {
#if defined(TASKKERNELS_EMULATE)
    ::emu::ptx::cp_async_16(smem_dst, gmem_src, src_bytes, "cp.async.cg.shared.global", file, line);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(gmem_src), "r"(src_bytes) : "memory");
#elif defined(__CUDA_ARCH__)
#error "cp.async needs sm_80 or newer"
#endif
  }
};

// cp.async.commit_group: closes this thread's copies issued since the last commit into a group
// (possibly empty).
__device__ __forceinline__ void cp_async_commit_group() {
#if defined(TASKKERNELS_EMULATE)
  ::emu::ptx::cp_async_commit();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// cp.async.wait_group N: waits until at most the N most recently committed groups of this thread
// are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
  static_assert(N >= 0, "cp.async.wait_group takes a count of groups");
#if defined(TASKKERNELS_EMULATE)
  ::emu::ptx::cp_async_wait(N);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

#undef TK_PTX_SITE

}  // namespace taskkernels::cuda::ptx
