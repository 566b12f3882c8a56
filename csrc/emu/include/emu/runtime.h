// The emulated GPU's runtime (libtkemu): the interface between kernels compiled as host C++ and
// the scheduler that runs them. Test tooling only (TASKKERNELS_EMULATE builds); never in a wheel.
//
// A block's threads are fibers on one OS thread, run until they wait at a barrier or a warp
// collective; blocks run on a few worker threads in a shuffled order. Errors a GPU would turn into
// a hang, a fault or undefined results (barrier divergence, a warp collective missing a lane, a
// launch over the hardware limits, misused tensor-core fragments, shared-memory races in the race
// build) fail the launch with a message naming the kernel, block, threads and source lines.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

namespace emu {

// ---- the running thread ---------------------------------------------------------------------
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
int lane_id();

// ---- block barriers -------------------------------------------------------------------------
enum class BarrierKind { kPlain, kAnd, kOr, kCount };
// Waits until every thread of the block arrives; returns the reduction of pred (0 for kPlain).
int block_barrier(BarrierKind kind, int pred, const char* file, int line);

// ---- warp collectives -----------------------------------------------------------------------
// Every lane of `mask` calls with the same `what` and mask; when the last one arrives, combine
// runs once with each lane's `mine` pointer (lanes[l], nullptr for lanes outside mask), then all
// continue. The emulator checks the mask names existing, non-exited lanes that agree.
using Combine = void (*)(void* const* lanes, unsigned mask, const void* user);
void warp_collective(unsigned mask, const char* what, void* mine, Combine combine, const void* user,
                     const char* file, int line);
unsigned active_mask();

// Reports an error a GPU would turn into a fault (the block stops; the launch fails).
[[noreturn]] void fault(const char* file, int line, const char* fmt, ...);

// ---- shared memory --------------------------------------------------------------------------
unsigned char* dynamic_shared();  // this block's dynamic shared memory (launch's smem bytes)
// Whether [p, p + bytes) lies inside the running block's shared memory (its static __shared__
// variables or its dynamic buffer).
bool is_shared(const void* p, size_t bytes);

// ---- asynchronous copies (cp.async; emu/ptx.h moves the data) ------------------------------
// The runtime only keeps each thread's queue; the bytes are read at issue and written at the wait
// by inline code in emu/ptx.h, so that the race build sees the writes as the waiting thread's.
struct AsyncCopy {
  unsigned char* dst;
  unsigned char data[16];
};
void async_issue(const AsyncCopy& c);  // queues a copy of the running thread in its open group
void async_commit();                   // closes the running thread's open group (may be empty)
// Takes the running thread's copies of every committed group except the newest `pending`, in
// issue order: *copies points at them until this thread's next async call. Returns the count.
size_t async_complete(int pending, const AsyncCopy** copies);

// ---- launches -------------------------------------------------------------------------------
using Body = void (*)(const void* ctx);
cudaError_t launch_raw(const void* kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Body body, const void* ctx);

template <class... Params, class... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   Args&&... args) {
  struct Ctx {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
  };
  const Ctx ctx{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  // Each thread gets its own copy of the parameters, as from the device's parameter space.
  Body body = [](const void* c) {
    const Ctx& x = *static_cast<const Ctx*>(c);
    std::apply(x.kernel, x.params);
  };
  return launch_raw(reinterpret_cast<const void*>(kernel), grid, block, smem, stream, body, &ctx);
}

// ---- configuration (tests, the pytest header) -----------------------------------------------
struct Config {
  uint64_t seed;      // block order, thread order, fragment layouts (EMU_SEED, else random)
  int workers;        // OS threads running blocks (EMU_WORKERS, else min(cores, 4))
  bool race_check;    // the kernels were built with the shared-memory race detector
};
Config config();
cudaStream_t current_stream();
void set_current_stream(cudaStream_t s);
uint64_t launches();  // kernel launches so far (tests)

// Per fragment type, a permutation of its elements, fixed for the process (WMMA).
const uint16_t* fragment_permutation(int kind, int rows, int cols);

}  // namespace emu
