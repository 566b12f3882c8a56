// The emulated GPU's shared-memory race detector, like compute-sanitizer's racecheck.
//
// The race build compiles the kernels with GCC's -fsanitize=thread instrumentation but links no
// ThreadSanitizer runtime: the __tsan_* calls the compiler inserts before every load and store
// land here. Accesses to this block's shared memory (the static __shared__ variables and the
// dynamic buffer) are tracked per byte: which thread last wrote it, and which read it, in which
// barrier epoch. A thread reading or writing a byte that another thread wrote (or writing one
// another read) in the same epoch, with no __syncthreads between and no whole-warp collective
// between two lanes of one warp, is a race: the launch fails naming both threads, the shared
// variable and the source line.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "internal.h"

namespace emu::detail {
namespace {

constexpr uint16_t kMany = 0xffff;

struct Cell {
  uint32_t serial;  // block serial this cell belongs to; anything else reads as untouched
  uint32_t epoch_w, wsync_w;
  uint16_t writer;  // thread + 1, 0 = none
  uint16_t reader;  // thread + 1, kMany = several, 0 = none
  uint32_t epoch_r, wsync_r;
  int16_t reader_warp;  // warp of the readers, -1 if several warps
};

struct Shadow {
  std::vector<Cell> tls, dyn;
  bool reported = false;
};
thread_local Shadow t_shadow;
bool g_enabled = false;  // set by __tsan_init: the kernels were instrumented

bool synced(const Worker& w, int other, uint32_t wsync_then, int my_warp) {
  return other / 32 == my_warp && w.warp_sync[my_warp] > wsync_then;
}

void report(Worker& w, const Thr& t, bool is_write, const void* addr, size_t size, const char* prev_kind, int prev,
            const void* pc) {
  if (t_shadow.reported) return;
  t_shadow.reported = true;
  std::string where;
  const auto a = reinterpret_cast<uintptr_t>(addr);
  if (w.tls_lo && a >= reinterpret_cast<uintptr_t>(w.tls_lo) && a < reinterpret_cast<uintptr_t>(w.tls_lo) + w.tls_size) {
    where = shared_variable_at(a - reinterpret_cast<uintptr_t>(w.tls_lo));
  } else {
    where = "dynamic shared memory + " + std::to_string(a - reinterpret_cast<uintptr_t>(w.dyn.data()));
  }
  char buf[256];
  std::snprintf(buf, sizeof buf, "shared-memory race: thread %d %s %zu byte(s) at ", t.linear, is_write ? "writes" : "reads",
                size);
  std::string msg = buf + where + " (" + symbolize(pc) + ") that thread ";
  msg += prev < 0 ? std::string("s of several warps") : std::to_string(prev);
  msg += std::string(" ") + prev_kind + " since their last common barrier (epoch " + std::to_string(w.epoch) + ")";
  fail(w, msg);
}

inline void access(const void* addr, size_t size, bool is_write, const void* pc) {
  Worker* w = current_worker();
  if (!w || !w->cur) return;
  const auto a = reinterpret_cast<uintptr_t>(addr);
  Cell* cells;
  const auto lo = reinterpret_cast<uintptr_t>(w->tls_lo);
  const auto dlo = reinterpret_cast<uintptr_t>(w->dyn.data());
  if (w->tls_lo && a >= lo && a < lo + w->tls_size) {
    cells = t_shadow.tls.data() + (a - lo);
    if (a + size > lo + w->tls_size) size = lo + w->tls_size - a;
  } else if (!w->dyn.empty() && a >= dlo && a < dlo + w->dyn.size()) {
    cells = t_shadow.dyn.data() + (a - dlo);
    if (a + size > dlo + w->dyn.size()) size = dlo + w->dyn.size() - a;
  } else {
    return;
  }
  const Thr& t = *w->cur;
  const uint16_t me = uint16_t(t.linear + 1);
  const uint32_t ws = w->warp_sync[t.warp];
  for (size_t i = 0; i < size; ++i) {
    Cell& c = cells[i];
    if (c.serial != w->serial) c = Cell{w->serial, 0, 0, 0, 0, 0, 0, -1};
    if (c.writer && c.writer != me && c.epoch_w == w->epoch && !synced(*w, c.writer - 1, c.wsync_w, t.warp)) {
      report(*w, t, is_write, addr, size, "wrote", c.writer - 1, pc);
      return;
    }
    if (is_write) {
      if (c.reader && c.epoch_r == w->epoch) {
        const bool ok = c.reader == me ||
                        (c.reader == kMany ? (c.reader_warp == t.warp && w->warp_sync[t.warp] > c.wsync_r)
                                           : synced(*w, c.reader - 1, c.wsync_r, t.warp));
        if (!ok) {
          report(*w, t, true, addr, size, "read", c.reader == kMany ? -1 : c.reader - 1, pc);
          return;
        }
      }
      c.writer = me;
      c.epoch_w = w->epoch;
      c.wsync_w = ws;
    } else {
      if (!c.reader || c.epoch_r != w->epoch) {
        c.reader = me;
        c.epoch_r = w->epoch;
        c.wsync_r = ws;
        c.reader_warp = int16_t(t.warp);
      } else if (c.reader != me) {
        c.reader = kMany;
        if (c.reader_warp != t.warp) c.reader_warp = -1;
        if (ws > c.wsync_r) c.wsync_r = ws;
      }
    }
  }
}

}  // namespace

bool race_enabled() { return g_enabled; }

void race_begin_block(Worker& w) {
  if (!g_enabled) return;
  if (t_shadow.tls.size() < w.tls_size) t_shadow.tls.resize(w.tls_size, Cell{0, 0, 0, 0, 0, 0, 0, -1});
  if (t_shadow.dyn.size() < w.dyn.size()) t_shadow.dyn.resize(w.dyn.size(), Cell{0, 0, 0, 0, 0, 0, 0, -1});
  t_shadow.reported = false;
}

}  // namespace emu::detail

// ---- the entry points GCC's -fsanitize=thread instrumentation calls ---------------------------
#define TK_PC __builtin_return_address(0)
#define TK_RW(N)                                                                                      \
  void __tsan_read##N(void* a) { emu::detail::access(a, N, false, TK_PC); }                          \
  void __tsan_write##N(void* a) { emu::detail::access(a, N, true, TK_PC); }                          \
  void __tsan_unaligned_read##N(void* a) { emu::detail::access(a, N, false, TK_PC); }                \
  void __tsan_unaligned_write##N(void* a) { emu::detail::access(a, N, true, TK_PC); }                \
  void __tsan_volatile_read##N(void* a) { emu::detail::access(a, N, false, TK_PC); }                 \
  void __tsan_volatile_write##N(void* a) { emu::detail::access(a, N, true, TK_PC); }                 \
  void __tsan_unaligned_volatile_read##N(void* a) { emu::detail::access(a, N, false, TK_PC); }       \
  void __tsan_unaligned_volatile_write##N(void* a) { emu::detail::access(a, N, true, TK_PC); }

#define TK_ATOMIC(N, T)                                                                              \
  T __tsan_atomic##N##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
  void __tsan_atomic##N##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
  T __tsan_atomic##N##_exchange(volatile T* a, T v, int) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); } \
  T __tsan_atomic##N##_fetch_add(volatile T* a, T v, int) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); } \
  T __tsan_atomic##N##_fetch_sub(volatile T* a, T v, int) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); } \
  T __tsan_atomic##N##_fetch_and(volatile T* a, T v, int) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); } \
  T __tsan_atomic##N##_fetch_or(volatile T* a, T v, int) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); } \
  T __tsan_atomic##N##_fetch_xor(volatile T* a, T v, int) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); } \
  T __tsan_atomic##N##_fetch_nand(volatile T* a, T v, int) { return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST); } \
  int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {               \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);          \
  }                                                                                                  \
  int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                 \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);           \
  }                                                                                                  \
  T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                     \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                \
    return c;                                                                                        \
  }

extern "C" {
__attribute__((visibility("default"))) void __tsan_init() { emu::detail::g_enabled = true; }
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
void __tsan_read_range(void* a, unsigned long size) { emu::detail::access(a, size, false, TK_PC); }
void __tsan_write_range(void* a, unsigned long size) { emu::detail::access(a, size, true, TK_PC); }
TK_RW(1)
TK_RW(2)
TK_RW(4)
TK_RW(8)
TK_RW(16)
TK_ATOMIC(8, unsigned char)
TK_ATOMIC(16, unsigned short)
TK_ATOMIC(32, unsigned int)
TK_ATOMIC(64, unsigned long long)
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) {}
}
