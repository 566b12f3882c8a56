// Force-included (-include emu/device.h) into every .cu file of the emulated GPU build: the CUDA
// keywords, built-in variables and device intrinsics our kernels use, as host C++ over the
// emulator runtime (emu/runtime.h). The toolkit's own cuda_runtime.h, cuda_fp16.h and cuda_bf16.h
// supply the types and the host conversions (rounding as on the device).
#pragma once

#ifndef TASKKERNELS_EMULATE
#define TASKKERNELS_EMULATE 1
#endif

#include "emu/cudart.h"

// Keywords, before the toolkit headers (they keep definitions that already exist).
#define __global__
#define __device__
#define __host__
#define __constant__
// A block's threads share one OS thread, so a thread_local is exactly a block's shared variable;
// the runtime poisons them at each block's start and tracks them in the race build.
#define __shared__ thread_local
#define __launch_bounds__(...)

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "emu/runtime.h"

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
#define warpSize 32

// cuda_runtime.h's C++ overload taking a kernel, which it declares only for nvcc.
template <class... P>
inline cudaError_t cudaFuncSetAttribute(void (*entry)(P...), cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}

using std::isfinite;
using std::isinf;
using std::isnan;

// CUDA's min/max accept any pair of arithmetic types (the usual conversions).
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(b) < C(a) ? C(b) : C(a);
}
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(b) : C(a);
}

// ---- loads and bit intrinsics ---------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) { return *p; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- block barriers -------------------------------------------------------------------------
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::emu::block_barrier(::emu::BarrierKind::kPlain, 0, file, line);
}
inline int __syncthreads_and(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::emu::block_barrier(::emu::BarrierKind::kAnd, pred, file, line);
}
inline int __syncthreads_or(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::emu::block_barrier(::emu::BarrierKind::kOr, pred, file, line);
}
inline int __syncthreads_count(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::emu::block_barrier(::emu::BarrierKind::kCount, pred, file, line);
}

// ---- warp collectives -----------------------------------------------------------------------
namespace emu {
struct ShflLane {
  uint64_t value, result;
  int src;  // the lane this one reads (already resolved for the mode and width)
};
inline void shfl_combine(void* const* lanes, unsigned mask, const void*) {
  for (int l = 0; l < 32; ++l) {
    if (!lanes[l]) continue;
    auto* me = static_cast<ShflLane*>(lanes[l]);
    const int s = me->src;
    // A source lane outside the mask is undefined on the device: the emulator returns poison.
    me->result = ((mask >> s) & 1u) ? static_cast<ShflLane*>(lanes[s])->value : ~uint64_t(0);
  }
}
enum class ShflMode { kIdx, kUp, kDown, kXor };
template <class T>
inline T shfl(ShflMode mode, unsigned mask, T var, int arg, int width, const char* what, const char* file,
              int line) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move at most 8 bytes");
  if (width < 1 || width > 32 || (width & (width - 1))) ::emu::fault(file, line, "%s: width %d is not a power of two <= 32", what, width);
  const int lane = ::emu::lane_id(), base = lane & ~(width - 1), last = base + width - 1;
  int src = lane;
  switch (mode) {
    case ShflMode::kIdx: src = base + (arg & (width - 1)); break;
    case ShflMode::kUp: src = lane - arg >= base ? lane - arg : lane; break;
    case ShflMode::kDown: src = lane + arg <= last ? lane + arg : lane; break;
    case ShflMode::kXor: src = (lane ^ arg) <= last && (lane ^ arg) >= base ? (lane ^ arg) : lane; break;
  }
  ShflLane mine{0, 0, src};
  std::memcpy(&mine.value, &var, sizeof(T));
  ::emu::warp_collective(mask, what, &mine, shfl_combine, nullptr, file, line);
  T out;
  std::memcpy(&out, &mine.result, sizeof(T));
  return out;
}
struct VoteLane {
  int pred;
  unsigned result;
};
inline void ballot_combine(void* const* lanes, unsigned, const void*) {
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l)
    if (lanes[l] && static_cast<VoteLane*>(lanes[l])->pred) bits |= 1u << l;
  for (int l = 0; l < 32; ++l)
    if (lanes[l]) static_cast<VoteLane*>(lanes[l])->result = bits;
}
inline unsigned ballot(unsigned mask, int pred, const char* what, const char* file, int line) {
  VoteLane mine{pred != 0, 0};
  ::emu::warp_collective(mask, what, &mine, ballot_combine, nullptr, file, line);
  return mine.result;
}
}  // namespace emu

inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::emu::warp_collective(mask, "__syncwarp", nullptr, nullptr, nullptr, file, line);
}
template <class T>
inline T __shfl_sync(unsigned mask, T var, int src, int width = 32, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
  return ::emu::shfl(::emu::ShflMode::kIdx, mask, var, src, width, "__shfl_sync", file, line);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
  return ::emu::shfl(::emu::ShflMode::kUp, mask, var, int(delta), width, "__shfl_up_sync", file, line);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
  return ::emu::shfl(::emu::ShflMode::kDown, mask, var, int(delta), width, "__shfl_down_sync", file, line);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                         int line = __builtin_LINE()) {
  return ::emu::shfl(::emu::ShflMode::kXor, mask, var, lane_mask, width, "__shfl_xor_sync", file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::emu::ballot(mask, pred, "__ballot_sync", file, line);
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return (::emu::ballot(mask, pred, "__all_sync", file, line) & mask) == mask;
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return (::emu::ballot(mask, pred, "__any_sync", file, line) & mask) != 0;
}
inline unsigned __activemask() { return ::emu::active_mask(); }

// ---- atomics (real atomics: blocks run on several OS threads) --------------------------------
template <class T>
inline T emu_atomic_cas_loop(T* p, T v, T (*op)(T, T)) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomic size");
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  U* up = reinterpret_cast<U*>(p);
  U old = __atomic_load_n(up, __ATOMIC_RELAXED), want;
  T oldv;
  do {
    std::memcpy(&oldv, &old, sizeof(T));
    const T nv = op(oldv, v);
    std::memcpy(&want, &nv, sizeof(T));
  } while (!__atomic_compare_exchange_n(up, &old, want, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
  return oldv;
}
template <class T>
inline T atomicAdd(T* p, T v) {
  if constexpr (std::is_integral_v<T>) return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
  else return emu_atomic_cas_loop<T>(p, v, [](T a, T b) { return a + b; });
}
template <class T>
inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicMax(T* p, T v) { return emu_atomic_cas_loop<T>(p, v, [](T a, T b) { return a < b ? b : a; }); }
template <class T>
inline T atomicMin(T* p, T v) { return emu_atomic_cas_loop<T>(p, v, [](T a, T b) { return b < a ? b : a; }); }
template <class T>
inline T atomicCAS(T* p, T compare, T v) {
  __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;
}
