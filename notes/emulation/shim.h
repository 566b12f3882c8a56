// Host stand-ins for the CUDA built-ins the emulated kernels use: a block's threads are
// std::threads, __syncthreads a std::barrier, __shfl_xor_sync a per-warp exchange.
#include <barrier>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __align__(x)
typedef struct CUstream_st* cudaStream_t;
struct Dim { unsigned x = 0, y = 0; };
thread_local Dim threadIdx, blockIdx;
Dim blockDim;
std::barrier<>* g_block_barrier;
std::vector<std::unique_ptr<std::barrier<>>> g_warp_barriers;
double g_xbuf[32][32];
inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }
template <class V> V __shfl_xor_sync(unsigned, V v, int off) {
  int w = threadIdx.x / 32, l = threadIdx.x % 32;
  g_xbuf[w][l] = double(v);
  g_warp_barriers[w]->arrive_and_wait();
  V r = V(g_xbuf[w][l ^ off]);
  g_warp_barriers[w]->arrive_and_wait();
  return r;
}
inline int atomicOr(int* p, int v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
struct __half { float f; };
struct __nv_bfloat16 { float f; };
inline float __half2float(__half h) { return h.f; }
inline float __bfloat162float(__nv_bfloat16 h) { return h.f; }
inline __half __float2half_rn(float f) { return {f}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {f}; }
using std::isinf;
using std::isnan;
// Runs fn on every thread of a grid (gx, gy) of blocks of `threads` threads, one block at a time.
inline void emulate(unsigned gx, unsigned gy, unsigned threads, const std::function<void()>& fn) {
  blockDim.x = threads;
  g_warp_barriers.clear();
  for (unsigned w = 0; w < (threads + 31) / 32; ++w) g_warp_barriers.emplace_back(new std::barrier<>(32));
  for (unsigned by = 0; by < gy; ++by)
    for (unsigned bx = 0; bx < gx; ++bx) {
      std::barrier<> bar(threads);
      g_block_barrier = &bar;
      std::vector<std::thread> ts;
      for (unsigned t = 0; t < threads; ++t)
        ts.emplace_back([&, t] { threadIdx.x = t; blockIdx.x = bx; blockIdx.y = by; fn(); });
      for (auto& t : ts) t.join();
    }
}
