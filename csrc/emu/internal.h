// Internals of the emulated GPU's runtime shared by runtime.cpp and racecheck.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "emu/runtime.h"

namespace emu::detail {

enum class St : uint8_t { kReady, kBarrier, kWarp, kExited };

struct Fiber {
  void* sp = nullptr;
  char* stack_lo = nullptr;  // lowest usable address
  size_t stack_size = 0;
  void* fake_stack = nullptr;  // AddressSanitizer's fake stack while switched away
};

// One emulated CUDA thread.
struct Thr {
  Fiber fiber;
  uint3 tid;
  int linear, warp, lane;
  St st;
  const char* what;  // what it waits at
  const char* file;
  int line;
  int pred, result;  // block barrier reductions
  unsigned mask;     // warp collective
  void* mine;
  Combine combine;
  const void* user;
};

struct Launch;

// One thread's cp.async state: queued copies, where each committed group ends, and the copies the
// last wait took (kept until the thread's next async call, while emu/ptx.h writes them).
struct AsyncQueue {
  std::vector<AsyncCopy> copies;
  std::vector<size_t> group_ends;  // copies.size() at each commit, oldest first
  std::vector<AsyncCopy> done;
  void clear() {
    copies.clear();
    group_ends.clear();
    done.clear();
  }
};

// One OS thread that runs blocks.
struct Worker {
  Fiber sched;
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  std::vector<Thr> thr;
  std::vector<char*> stacks;
  Thr* cur = nullptr;
  Launch* L = nullptr;
  uint3 bidx{};
  int n = 0, exited = 0, at_barrier = 0;
  uint32_t epoch = 0;       // block barriers completed in this block
  uint32_t serial = 0;      // distinct per block ever run (race shadow validity)
  std::vector<uint32_t> warp_sync;  // completed whole-warp collectives per warp
  bool failed = false;
  std::string error;
  std::vector<unsigned char> dyn;  // dynamic shared memory of the running block
  std::vector<AsyncQueue> async;   // per thread of the running block, once one used cp.async
  bool async_used = false;
  unsigned char* tls_lo = nullptr;  // static __shared__ variables: the kernels library's TLS block
  size_t tls_size = 0;
  uint64_t rng = 0;
};

Worker* current_worker();
void fail(Worker& w, const std::string& msg);

// Static shared variable containing a TLS offset of the kernels library ("" when unknown).
std::string shared_variable_at(size_t tls_offset);
// file:line (function) of a code address, via addr2line; "" when unknown.
std::string symbolize(const void* pc);

// Race detector state (racecheck.cpp): called at each block's start.
void race_begin_block(Worker& w);
bool race_enabled();

}  // namespace emu::detail
