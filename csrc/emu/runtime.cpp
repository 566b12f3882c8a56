// The emulated GPU's runtime (libtkemu): fibers, the block scheduler, launch checks, shared
// memory, and the CUDA runtime calls our kernels make. See emu/runtime.h.
#include "emu/cudart.h"  // first: the runtime calls defined below are the renamed ones

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "internal.h"

extern "C" {
// AddressSanitizer's fiber hooks: present only when the ASan runtime is loaded.
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size) __attribute__((weak));
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old)
    __attribute__((weak));
void __asan_unpoison_memory_region(void const volatile* addr, size_t size) __attribute__((weak));
void* __tls_get_addr(void*);
}

// ---- context switch (x86-64 System V) ----------------------------------------------------------
extern "C" void tkemu_ctx_switch(void** save_sp, void* load_sp);
extern "C" void tkemu_ctx_entry();
#if defined(__x86_64__)
asm(R"(
.text
.p2align 4
.globl tkemu_ctx_switch
.hidden tkemu_ctx_switch
.type tkemu_ctx_switch,@function
tkemu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size tkemu_ctx_switch,.-tkemu_ctx_switch
.globl tkemu_ctx_entry
.hidden tkemu_ctx_entry
.type tkemu_ctx_entry,@function
tkemu_ctx_entry:
  movq %r12, %rdi
  callq *%r13
  ud2
.size tkemu_ctx_entry,.-tkemu_ctx_entry
)");
#else
#error "the emulated GPU's fibers are written for x86-64"
#endif

namespace emu {
namespace detail {
namespace {

constexpr size_t kDefaultSmem = 48 * 1024;
constexpr size_t kMaxSmemOptin = 232448;  // H100 / H200: 227 KB per block
constexpr int kSmCount = 132;
constexpr unsigned char kPoison = 0xff;  // NaN in every float format, -1 in every integer

size_t env_size(const char* name, size_t dflt) {
  const char* v = std::getenv(name);
  return v && *v ? static_cast<size_t>(std::strtoull(v, nullptr, 0)) : dflt;
}

struct Settings {
  uint64_t seed;
  int workers;
  size_t stack_size;
  bool verbose;  // EMU_VERBOSE: print kernels' symbols, shared-memory ranges and every failure
  Settings() {
    verbose = std::getenv("EMU_VERBOSE") != nullptr;
    const char* s = std::getenv("EMU_SEED");
    seed = s && *s ? std::strtoull(s, nullptr, 0) : std::random_device{}() * 0x9E3779B97F4A7C15ull ^ uint64_t(::getpid());
    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    workers = int(env_size("EMU_WORKERS", std::min(hw, 4u)));
    if (workers < 1) workers = 1;
    stack_size = env_size("EMU_STACK_KB", 512) * 1024;
  }
};
const Settings& settings() {
  static const Settings s;
  return s;
}

uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// ---- the kernels library: kernel names, static shared memory, TLS block ------------------------
struct Symbol {
  uint64_t value, size;
  std::string name;
};
struct Module {
  std::string path;
  uintptr_t base = 0;
  std::vector<Symbol> funcs;  // sorted by value
  std::vector<Symbol> tls;    // TLS objects (static __shared__ variables), sorted by value
  size_t modid = 0, tls_memsz = 0, tls_align = 1;
  void* handle = nullptr;
};

std::string demangle(const std::string& name) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status), std::free);
  return status == 0 && d ? std::string(d.get()) : name;
}

void read_symbols(Module& m) {
  const int fd = ::open(m.path.c_str(), O_RDONLY);
  if (fd < 0) return;
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return;
  }
  void* map = ::mmap(nullptr, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return;
  const auto* base = static_cast<const unsigned char*>(map);
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(base);
  const auto* sh = reinterpret_cast<const Elf64_Shdr*>(base + eh->e_shoff);
  for (int i = 0; i < eh->e_shnum; ++i) {
    if (sh[i].sh_type != SHT_SYMTAB) continue;
    const auto* syms = reinterpret_cast<const Elf64_Sym*>(base + sh[i].sh_offset);
    const char* strtab = reinterpret_cast<const char*>(base + sh[sh[i].sh_link].sh_offset);
    const size_t count = sh[i].sh_size / sizeof(Elf64_Sym);
    for (size_t k = 0; k < count; ++k) {
      const int type = ELF64_ST_TYPE(syms[k].st_info);
      if (type == STT_FUNC && syms[k].st_value) m.funcs.push_back({syms[k].st_value, syms[k].st_size, strtab + syms[k].st_name});
      if (type == STT_TLS) m.tls.push_back({syms[k].st_value, syms[k].st_size, strtab + syms[k].st_name});
    }
  }
  ::munmap(map, st.st_size);
  auto by_value = [](const Symbol& a, const Symbol& b) { return a.value < b.value; };
  std::sort(m.funcs.begin(), m.funcs.end(), by_value);
  std::sort(m.tls.begin(), m.tls.end(), by_value);
}

std::mutex g_modules_mutex;
std::map<uintptr_t, std::unique_ptr<Module>> g_modules;  // by load base
Module* g_kernels_module = nullptr;  // the module of the kernels launched (one library)

Module* module_of(const void* addr) {
  Dl_info info{};
  if (!dladdr(addr, &info) || !info.dli_fname) return nullptr;
  std::lock_guard<std::mutex> lock(g_modules_mutex);
  auto& slot = g_modules[reinterpret_cast<uintptr_t>(info.dli_fbase)];
  if (!slot) {
    slot = std::make_unique<Module>();
    slot->path = info.dli_fname;
    slot->base = reinterpret_cast<uintptr_t>(info.dli_fbase);
    read_symbols(*slot);
    slot->handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (slot->handle) dlinfo(slot->handle, RTLD_DI_TLS_MODID, &slot->modid);
    dl_iterate_phdr(
        [](dl_phdr_info* p, size_t, void* data) {
          auto* mod = static_cast<Module*>(data);
          if (p->dlpi_addr != mod->base) return 0;
          for (int i = 0; i < p->dlpi_phnum; ++i)
            if (p->dlpi_phdr[i].p_type == PT_TLS) {
              mod->tls_memsz = p->dlpi_phdr[i].p_memsz;
              mod->tls_align = p->dlpi_phdr[i].p_align;
            }
          return 1;
        },
        slot.get());
  }
  return slot.get();
}

struct KernelInfo {
  std::string mangled, pretty;
  size_t static_smem = 0;
  int max_dynamic_smem = -1;  // cudaFuncAttributeMaxDynamicSharedMemorySize, -1 = default
};
std::mutex g_kernels_mutex;
std::unordered_map<const void*, KernelInfo> g_kernels;

KernelInfo& kernel_info(const void* fn) {
  std::lock_guard<std::mutex> lock(g_kernels_mutex);
  auto it = g_kernels.find(fn);
  if (it != g_kernels.end()) return it->second;
  KernelInfo k;
  if (Module* m = module_of(fn)) {
    const uintptr_t off = reinterpret_cast<uintptr_t>(fn) - m->base;
    for (const Symbol& s : m->funcs)
      if (s.value == off) {
        k.mangled = s.name;
        break;
      }
    if (!k.mangled.empty()) {
      // A static local of function _Z<enc> is _ZZ<enc>E<name>: the kernel's __shared__ variables.
      const std::string prefix = "_ZZ" + k.mangled.substr(2) + "E";
      for (const Symbol& s : m->tls)
        if (s.name.compare(0, prefix.size(), prefix) == 0) k.static_smem += s.size;
    }
    if (settings().verbose) std::fprintf(stderr, "emulated GPU: kernel %s in %s, tls %zu, static smem %zu\n", k.mangled.c_str(), m->path.c_str(), m->tls_memsz, k.static_smem);
    if (m->tls_memsz) g_kernels_module = m;
  }
  k.pretty = k.mangled.empty() ? "<unnamed kernel>" : demangle(k.mangled);
  return g_kernels.emplace(fn, std::move(k)).first->second;
}

// ---- fibers -----------------------------------------------------------------------------------
void* init_stack(char* lo, size_t size, void (*fn)(void*), void* arg) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(lo) + size) & ~uintptr_t(15);
  auto* sp = reinterpret_cast<uint64_t*>(top - 16 - 64);
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  sp[0] = uint64_t(mxcsr) | (uint64_t(fpcw) << 32);
  sp[1] = 0;                                        // r15
  sp[2] = 0;                                        // r14
  sp[3] = reinterpret_cast<uint64_t>(fn);           // r13
  sp[4] = reinterpret_cast<uint64_t>(arg);          // r12
  sp[5] = 0;                                        // rbx
  sp[6] = 0;                                        // rbp
  sp[7] = reinterpret_cast<uint64_t>(&tkemu_ctx_entry);
  return sp;
}

void enter_fiber(Worker& w, Thr& t) {
  if (__sanitizer_start_switch_fiber) __sanitizer_start_switch_fiber(&w.sched.fake_stack, t.fiber.stack_lo, t.fiber.stack_size);
  tkemu_ctx_switch(&w.sched.sp, t.fiber.sp);
  if (__sanitizer_finish_switch_fiber) __sanitizer_finish_switch_fiber(w.sched.fake_stack, nullptr, nullptr);
}

void leave_fiber(Worker& w, Thr& t, bool exiting) {
  if (__sanitizer_start_switch_fiber)
    __sanitizer_start_switch_fiber(exiting ? nullptr : &t.fiber.fake_stack, w.sched_bottom, w.sched_size);
  tkemu_ctx_switch(&t.fiber.sp, w.sched.sp);
  if (__sanitizer_finish_switch_fiber) __sanitizer_finish_switch_fiber(t.fiber.fake_stack, &w.sched_bottom, &w.sched_size);
}

char* new_stack(size_t size) {
  const size_t guard = 4096;
  void* p = ::mmap(nullptr, size + guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    std::fprintf(stderr, "emulated GPU: cannot map a fiber stack\n");
    std::abort();
  }
  ::mprotect(p, guard, PROT_NONE);  // an overflowing fiber faults instead of corrupting memory
  return static_cast<char*>(p) + guard;
}

// ---- launches ---------------------------------------------------------------------------------
}  // namespace

struct Launch {
  const KernelInfo* info;
  dim3 grid, block;
  size_t smem;
  Body body;
  const void* ctx;
  uint64_t seed;
  std::vector<uint32_t> order;  // block visiting order (shuffled)
  std::atomic<size_t> next{0};
  std::mutex mutex;
  std::string error;
  cudaError_t code = cudaSuccess;
};

namespace {

thread_local Worker* t_worker = nullptr;
Worker& this_worker() {
  if (!t_worker) t_worker = new Worker();  // one per OS thread, kept for the process
  return *t_worker;
}

std::string ranges(const std::vector<int>& ids) {
  std::ostringstream o;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (i) o << ",";
    o << ids[i];
    if (j > i) o << "-" << ids[j];
    i = j + 1;
  }
  return o.str();
}

std::string site(const char* file, int line) {
  if (!file) return "?";
  const char* slash = std::strrchr(file, '/');
  return std::string(slash ? slash + 1 : file) + ":" + std::to_string(line);
}

std::string block_name(const Worker& w) {
  std::ostringstream o;
  o << w.L->info->pretty << " block (" << w.bidx.x << "," << w.bidx.y << "," << w.bidx.z << ") of grid ("
    << w.L->grid.x << "," << w.L->grid.y << "," << w.L->grid.z << "), " << w.n << " threads";
  return o.str();
}

// Where every thread stands, grouped: for deadlocks and divergence.
std::string thread_states(const Worker& w) {
  std::map<std::string, std::vector<int>> groups;
  for (const Thr& t : w.thr) {
    std::string k;
    switch (t.st) {
      case St::kExited: k = "exited"; break;
      case St::kReady: k = "running"; break;
      case St::kBarrier: k = std::string("wait at ") + t.what + " (" + site(t.file, t.line) + ")"; break;
      case St::kWarp: {
        char mask[16];
        std::snprintf(mask, sizeof mask, "0x%08x", t.mask);
        k = std::string("wait at ") + t.what + " mask " + mask + " (" + site(t.file, t.line) + ")";
        break;
      }
    }
    groups[k].push_back(t.linear);
  }
  std::ostringstream o;
  bool first = true;
  for (auto& [k, ids] : groups) {
    o << (first ? "" : "; ") << "threads " << ranges(ids) << " " << k;
    first = false;
  }
  return o.str();
}

void fiber_main(void* arg);

void finish_exit(Worker& w, Thr& t);

void run_block(Worker& w, Launch& L, uint32_t linear_block) {
  const dim3 g = L.grid, b = L.block;
  w.L = &L;
  w.bidx = uint3{linear_block % g.x, (linear_block / g.x) % g.y, linear_block / (g.x * g.y)};
  w.n = int(b.x * b.y * b.z);
  w.exited = w.at_barrier = 0;
  w.epoch = 0;
  static std::atomic<uint32_t> serial{0};
  w.serial = ++serial;
  w.failed = false;
  w.error.clear();
  w.warp_sync.assign((w.n + 31) / 32, 0);
  w.rng = L.seed ^ (uint64_t(linear_block) * 0xD1B54A32D192ED03ull);

  // Shared memory: static (this thread's TLS block of the kernels library) and dynamic, both
  // poisoned so that reading what no thread of this block wrote shows.
  Module* km = g_kernels_module;
  if (km && km->tls_memsz) {
    struct {
      size_t module, offset;
    } ti{km->modid, 0};
    w.tls_lo = static_cast<unsigned char*>(__tls_get_addr(&ti));
    w.tls_size = km->tls_memsz;
    if (settings().verbose) std::fprintf(stderr, "emulated GPU: shared TLS %p + %zu (module %zu)\n", (void*)w.tls_lo, w.tls_size, km->modid);
    std::memset(w.tls_lo, kPoison, w.tls_size);
  } else {
    w.tls_lo = nullptr;
    w.tls_size = 0;
  }
  w.dyn.assign(L.smem, kPoison);
  if (w.async_used) {  // copies a previous block left pending never land in this one
    for (AsyncQueue& q : w.async) q.clear();
    w.async_used = false;
  }
  race_begin_block(w);

  if (w.thr.size() < size_t(w.n)) w.thr.resize(w.n);
  while (w.stacks.size() < size_t(w.n)) w.stacks.push_back(new_stack(settings().stack_size));
  for (int i = 0; i < w.n; ++i) {
    Thr& t = w.thr[i];
    t = Thr{};
    t.tid = uint3{unsigned(i) % b.x, (unsigned(i) / b.x) % b.y, unsigned(i) / (b.x * b.y)};
    t.linear = i;
    t.warp = i / 32;
    t.lane = i % 32;
    t.st = St::kReady;
    t.fiber.stack_lo = w.stacks[i];
    t.fiber.stack_size = settings().stack_size;
    t.fiber.sp = init_stack(t.fiber.stack_lo, t.fiber.stack_size, fiber_main, &t);
  }
  w.thr.resize(w.n);
  // Threads of a block run in a shuffled order, each until it waits or exits.
  std::vector<int> order(w.n);
  for (int i = 0; i < w.n; ++i) order[i] = i;
  for (int i = w.n - 1; i > 0; --i) std::swap(order[i], order[splitmix(w.rng) % uint64_t(i + 1)]);

  while (!w.failed) {
    bool progress = false;
    for (int i : order) {
      Thr& t = w.thr[i];
      if (t.st != St::kReady) continue;
      w.cur = &t;
      enter_fiber(w, t);
      w.cur = nullptr;
      progress = true;
      if (w.failed) break;
    }
    if (w.failed || w.exited == w.n) break;
    if (!progress) fail(w, "deadlock: " + thread_states(w));
  }
  if (w.failed) {
    // The block's fibers stay where they stopped, their frames never unwound: ASan's shadow of
    // those stacks still marks the frames' redzones, and the next block's fibers on the same
    // stacks would trip over them (__asan_handle_no_return did, before a later fault()).
    if (__asan_unpoison_memory_region)
      for (int i = 0; i < w.n; ++i) __asan_unpoison_memory_region(w.stacks[i], settings().stack_size);
    std::lock_guard<std::mutex> lock(L.mutex);
    if (L.error.empty()) {
      L.error = block_name(w) + ": " + w.error;
      L.code = cudaErrorLaunchFailure;
    }
  }
  w.cur = nullptr;
}

void fiber_main(void* arg) {
  Thr& t = *static_cast<Thr*>(arg);
  Worker& w = this_worker();
  if (__sanitizer_finish_switch_fiber) __sanitizer_finish_switch_fiber(nullptr, &w.sched_bottom, &w.sched_size);
  w.L->body(w.L->ctx);
  finish_exit(w, t);
  leave_fiber(w, t, true);
  __builtin_unreachable();
}

void check_barrier_release(Worker& w);

void finish_exit(Worker& w, Thr& t) {
  t.st = St::kExited;
  ++w.exited;
  // A warp collective waiting for this lane can never complete.
  for (int l = 0; l < 32; ++l) {
    const int id = t.warp * 32 + l;
    if (id >= w.n) break;
    const Thr& o = w.thr[id];
    if (o.st == St::kWarp && ((o.mask >> t.lane) & 1u)) {
      fail(w, "thread " + std::to_string(t.linear) + " exited while lane " + std::to_string(l) + " waits for it at " +
                  o.what + " (" + site(o.file, o.line) + ")");
      return;
    }
  }
  check_barrier_release(w);
}

void check_barrier_release(Worker& w) {
  if (w.at_barrier == 0 || w.at_barrier != w.n - w.exited) return;
  if (w.exited > 0) {
    fail(w, "__syncthreads reached by only some threads (the others exited): " + thread_states(w));
    return;
  }
  const Thr* first = nullptr;
  int red_and = 1, red_or = 0, count = 0;
  for (const Thr& t : w.thr) {
    if (!first) first = &t;
    if (t.file != first->file || t.line != first->line || t.what != first->what) {
      fail(w, "threads wait at different barriers: " + thread_states(w));
      return;
    }
    red_and &= t.pred != 0;
    red_or |= t.pred != 0;
    count += t.pred != 0;
  }
  // Every thread waits at the same barrier (checked above), so one reduction serves them all.
  const int result = std::strcmp(first->what, "__syncthreads_and") == 0     ? red_and
                     : std::strcmp(first->what, "__syncthreads_or") == 0    ? red_or
                     : std::strcmp(first->what, "__syncthreads_count") == 0 ? count
                                                                            : 0;
  for (Thr& t : w.thr) {
    t.st = St::kReady;
    t.result = result;
  }
  w.at_barrier = 0;
  ++w.epoch;
}

std::mutex g_launch_mutex;  // launches run one at a time (one stream, as on the device)

struct Pool {
  std::mutex m;
  std::condition_variable cv, done_cv;
  Launch* job = nullptr;
  uint64_t generation = 0;
  int running = 0;
  std::vector<std::thread> threads;

  static void run_blocks(Launch& L) {
    Worker& w = this_worker();
    const size_t total = L.order.size();
    for (size_t i; (i = L.next.fetch_add(1)) < total;) {
      run_block(w, L, L.order[i]);
      if (w.failed) L.next.store(total);  // stop the launch at its first failing block
    }
  }

  void start(int helpers) {
    for (int i = 0; i < helpers; ++i)
      threads.emplace_back([this] {
        uint64_t seen = 0;
        for (;;) {
          Launch* L;
          {
            std::unique_lock<std::mutex> lock(m);
            cv.wait(lock, [&] { return generation != seen; });
            seen = generation;
            L = job;
          }
          run_blocks(*L);
          std::lock_guard<std::mutex> lock(m);
          if (--running == 0) done_cv.notify_all();
        }
      });
    for (auto& t : threads) t.detach();
  }

  void run(Launch& L) {
    const int helpers = int(threads.size());
    if (helpers > 0 && L.order.size() > 1) {
      {
        std::lock_guard<std::mutex> lock(m);
        job = &L;
        running = helpers;
        ++generation;
      }
      cv.notify_all();
      run_blocks(L);
      std::unique_lock<std::mutex> lock(m);
      done_cv.wait(lock, [&] { return running == 0; });
    } else {
      run_blocks(L);
    }
  }
};

Pool& pool() {
  static Pool* p = [] {
    auto* q = new Pool();
    q->start(settings().workers - 1);
    return q;
  }();
  return *p;
}

thread_local cudaError_t t_last_error = cudaSuccess;
thread_local std::string t_last_detail;
std::atomic<uint64_t> g_launches{0};
std::atomic<uint64_t> g_stream{0};

cudaError_t set_error(cudaError_t code, const std::string& detail) {
  t_last_error = code;
  t_last_detail = detail;
  if (settings().verbose) std::fprintf(stderr, "emulated GPU: %s\n", detail.c_str());
  return code;
}

}  // namespace

Worker* current_worker() { return t_worker; }

void fail(Worker& w, const std::string& msg) {
  if (w.failed) return;
  w.failed = true;
  w.error = msg;
}

std::string shared_variable_at(size_t off) {
  Module* m = g_kernels_module;
  if (!m) return "";
  for (const Symbol& s : m->tls)
    if (off >= s.value && off < s.value + std::max<uint64_t>(s.size, 1)) {
      std::string name = demangle(s.name);
      return name + " + " + std::to_string(off - s.value);
    }
  return "";
}

std::string symbolize(const void* pc) {
  Dl_info info{};
  if (!dladdr(pc, &info) || !info.dli_fname) return "";
  char cmd[1024];
  std::snprintf(cmd, sizeof cmd, "addr2line -C -f -i -e '%s' 0x%lx 2>/dev/null", info.dli_fname,
                static_cast<unsigned long>(reinterpret_cast<uintptr_t>(pc) - reinterpret_cast<uintptr_t>(info.dli_fbase) - 1));
  FILE* f = popen(cmd, "r");
  if (!f) return "";
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, f)) out += buf;
  pclose(f);
  std::string lines;  // "function (file:line)" innermost first
  std::istringstream in(out);
  std::string fn, loc;
  while (std::getline(in, fn) && std::getline(in, loc)) {
    const size_t slash = loc.rfind('/');
    if (!lines.empty()) lines += " <- ";
    lines += (slash == std::string::npos ? loc : loc.substr(slash + 1));
  }
  return lines;
}

}  // namespace detail

using namespace detail;

// ---- the running thread ---------------------------------------------------------------------
static Thr& me() {
  Worker* w = t_worker;
  if (!w || !w->cur) {
    std::fprintf(stderr, "emulated GPU: a device built-in was used outside a kernel\n");
    std::abort();
  }
  return *w->cur;
}
const uint3& thread_idx() { return me().tid; }
const uint3& block_idx() { return t_worker->bidx; }
const dim3& block_dim() { return t_worker->L->block; }
const dim3& grid_dim() { return t_worker->L->grid; }
int lane_id() { return me().lane; }

// Yields to the scheduler until the barrier or collective releases this thread (a failed block's
// threads are never resumed).
static void wait_here(Worker& w, Thr& t) { leave_fiber(w, t, false); }

int block_barrier(BarrierKind kind, int pred, const char* file, int line) {
  Worker& w = *t_worker;
  Thr& t = me();
  static const char* const names[] = {"__syncthreads", "__syncthreads_and", "__syncthreads_or", "__syncthreads_count"};
  t.st = St::kBarrier;
  t.what = names[int(kind)];
  t.file = file;
  t.line = line;
  t.pred = pred;
  ++w.at_barrier;
  check_barrier_release(w);
  if (w.failed) {
    leave_fiber(w, t, false);
    __builtin_unreachable();
  }
  if (t.st != St::kReady) wait_here(w, t);
  return t.result;
}

void warp_collective(unsigned mask, const char* what, void* mine, Combine combine, const void* user, const char* file,
                     int line) {
  Worker& w = *t_worker;
  Thr& t = me();
  auto stop = [&](const std::string& msg) {
    fail(w, msg);
    leave_fiber(w, t, false);
    __builtin_unreachable();
  };
  if (!((mask >> t.lane) & 1u)) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "thread %d calls %s (%s) with mask 0x%08x, which does not include its lane %d",
                  t.linear, what, site(file, line).c_str(), mask, t.lane);
    stop(buf);
  }
  const int base = t.warp * 32;
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    if (base + l >= w.n) {
      char buf[200];
      std::snprintf(buf, sizeof buf, "%s (%s) with mask 0x%08x names lane %d, but the block has %d threads", what,
                    site(file, line).c_str(), mask, l, w.n);
      stop(buf);
    }
    if (w.thr[base + l].st == St::kExited)
      stop(std::string(what) + " (" + site(file, line) + ") waits for lane " + std::to_string(l) + " of warp " +
           std::to_string(t.warp) + ", which exited");
  }
  t.st = St::kWarp;
  t.mask = mask;
  t.what = what;
  t.file = file;
  t.line = line;
  t.mine = mine;
  t.combine = combine;
  t.user = user;
  bool complete = true;
  for (int l = 0; l < 32 && complete; ++l) {
    if (!((mask >> l) & 1u)) continue;
    const Thr& o = w.thr[base + l];
    if (o.st != St::kWarp) complete = false;
    else if (o.mask != mask || std::strcmp(o.what, what) != 0) {
      stop("lanes of warp " + std::to_string(t.warp) + " disagree: " + thread_states(w));
    }
  }
  if (complete) {
    void* lanes[32] = {};
    for (int l = 0; l < 32; ++l)
      if ((mask >> l) & 1u) lanes[l] = w.thr[base + l].mine;
    if (combine) combine(lanes, mask, user);
    for (int l = 0; l < 32; ++l)
      if ((mask >> l) & 1u) w.thr[base + l].st = St::kReady;
    // A collective of every lane of the warp orders their shared-memory accesses (race build).
    const unsigned whole = (w.n - base >= 32) ? 0xffffffffu : ((1u << (w.n - base)) - 1);
    if ((mask & whole) == whole) ++w.warp_sync[t.warp];
    return;
  }
  wait_here(w, t);
}

unsigned active_mask() {
  Worker& w = *t_worker;
  const Thr& t = me();
  unsigned m = 0;
  for (int l = 0; l < 32 && t.warp * 32 + l < w.n; ++l)
    if (w.thr[t.warp * 32 + l].st != St::kExited) m |= 1u << l;
  return m;
}

void fault(const char* file, int line, const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  Worker& w = *t_worker;
  Thr& t = me();
  fail(w, "thread " + std::to_string(t.linear) + " at " + site(file, line) + ": " + buf);
  leave_fiber(w, t, false);
  __builtin_unreachable();
}

unsigned char* dynamic_shared() {
  Worker& w = *t_worker;
  return w.dyn.empty() ? nullptr : w.dyn.data();
}

bool is_shared(const void* p, size_t bytes) {
  const Worker& w = *t_worker;
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto inside = [&](const unsigned char* lo, size_t size) {
    const auto l = reinterpret_cast<uintptr_t>(lo);
    return lo && a >= l && a - l <= size && bytes <= size - (a - l);
  };
  return inside(w.tls_lo, w.tls_size) || (!w.dyn.empty() && inside(w.dyn.data(), w.dyn.size()));
}

static AsyncQueue& async_queue() {
  Worker& w = *t_worker;
  const Thr& t = me();
  if (!w.async_used) {
    if (w.async.size() < size_t(w.n)) w.async.resize(w.n);
    w.async_used = true;
  }
  AsyncQueue& q = w.async[t.linear];
  q.done.clear();
  return q;
}

void async_issue(const AsyncCopy& c) { async_queue().copies.push_back(c); }

void async_commit() {
  AsyncQueue& q = async_queue();
  q.group_ends.push_back(q.copies.size());
}

size_t async_complete(int pending, const AsyncCopy** copies) {
  AsyncQueue& q = async_queue();
  const size_t groups = q.group_ends.size();
  const size_t finish = pending < 0 ? groups : groups - std::min(groups, size_t(pending));
  *copies = nullptr;
  if (finish == 0) return 0;
  const size_t n = q.group_ends[finish - 1];
  q.done.assign(q.copies.begin(), q.copies.begin() + n);
  q.copies.erase(q.copies.begin(), q.copies.begin() + n);
  q.group_ends.erase(q.group_ends.begin(), q.group_ends.begin() + finish);
  for (size_t& e : q.group_ends) e -= n;
  *copies = q.done.data();
  return n;
}

cudaError_t launch_raw(const void* kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Body body,
                       const void* ctx) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  ++g_launches;
  KernelInfo& info = kernel_info(kernel);
  auto refuse = [&](cudaError_t code, const std::string& why) {
    return set_error(code, "launch of " + info.pretty + " refused: " + why);
  };
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  std::ostringstream cfg;
  cfg << "grid (" << grid.x << "," << grid.y << "," << grid.z << "), block (" << block.x << "," << block.y << ","
      << block.z << ")";
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0)
    return refuse(cudaErrorInvalidConfiguration, cfg.str() + " has an empty dimension");
  if (grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    return refuse(cudaErrorInvalidConfiguration, cfg.str() + ": gridDim.x <= 2^31-1, .y and .z <= 65535");
  if (block.x > 1024 || block.y > 1024 || block.z > 64 || threads > 1024)
    return refuse(cudaErrorInvalidConfiguration, cfg.str() + ": at most 1024 threads per block (z <= 64)");
  const size_t limit = info.max_dynamic_smem >= 0 ? size_t(info.max_dynamic_smem)
                                                  : (info.static_smem < kDefaultSmem ? kDefaultSmem - info.static_smem : 0);
  if (smem > limit || info.static_smem + smem > kMaxSmemOptin) {
    return refuse(cudaErrorInvalidValue,
                  std::to_string(smem) + " bytes of dynamic shared memory (+ " + std::to_string(info.static_smem) +
                      " static) exceed the " + std::to_string(limit) + " allowed" +
                      (info.max_dynamic_smem >= 0 ? " by cudaFuncSetAttribute"
                                                  : " without cudaFuncSetAttribute(MaxDynamicSharedMemorySize)"));
  }
  if (stream != current_stream()) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "stream %p is not torch's current stream %p", static_cast<void*>(stream),
                  static_cast<void*>(current_stream()));
    return refuse(cudaErrorInvalidResourceHandle, buf);
  }
  Launch L;
  L.info = &info;
  L.grid = grid;
  L.block = block;
  L.smem = smem;
  L.body = body;
  L.ctx = ctx;
  uint64_t s = settings().seed ^ (g_launches.load() * 0xA24BAED4963EE407ull);
  L.seed = splitmix(s);
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  if (nblocks > (uint64_t(1) << 32)) return refuse(cudaErrorInvalidConfiguration, cfg.str() + ": too many blocks to emulate");
  L.order.resize(nblocks);
  for (uint64_t i = 0; i < nblocks; ++i) L.order[i] = uint32_t(i);
  for (uint64_t i = nblocks; i > 1; --i) std::swap(L.order[i - 1], L.order[splitmix(s) % i]);
  pool().run(L);
  if (L.code != cudaSuccess) return set_error(L.code, L.error);
  return cudaSuccess;
}

Config config() { return {settings().seed, settings().workers, race_enabled()}; }
cudaStream_t current_stream() { return reinterpret_cast<cudaStream_t>(g_stream.load()); }
void set_current_stream(cudaStream_t s) { g_stream.store(reinterpret_cast<uint64_t>(s)); }
uint64_t launches() { return g_launches.load(); }

const uint16_t* fragment_permutation(int kind, int rows, int cols) {
  static std::mutex m;
  static std::map<std::tuple<int, int, int>, std::vector<uint16_t>> perms;
  std::lock_guard<std::mutex> lock(m);
  auto& p = perms[{kind, rows, cols}];
  if (p.empty()) {
    const int n = rows * cols;
    p.resize(n);
    for (int i = 0; i < n; ++i) p[i] = uint16_t(i);
    uint64_t s = settings().seed ^ (uint64_t(kind) << 40) ^ (uint64_t(rows) << 20) ^ uint64_t(cols);
    for (int i = n - 1; i > 0; --i) std::swap(p[i], p[splitmix(s) % uint64_t(i + 1)]);
  }
  return p.data();
}

}  // namespace emu

// ---- the CUDA runtime calls the kernels' host code makes --------------------------------------
using emu::detail::KernelInfo;

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = emu::detail::t_last_error;
  emu::detail::t_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return emu::detail::t_last_error; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorMisalignedAddress: return "cudaErrorMisalignedAddress";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t e) {
  static thread_local std::string text;
  text = std::string("emulated GPU: ") + (emu::detail::t_last_detail.empty() ? cudaGetErrorName(e) : emu::detail::t_last_detail);
  return text.c_str();
}

cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  KernelInfo& k = emu::detail::kernel_info(func);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || size_t(value) + k.static_smem > emu::detail::kMaxSmemOptin)
      return emu::detail::set_error(cudaErrorInvalidValue, "cudaFuncSetAttribute(" + k.pretty + ", MaxDynamicSharedMemorySize, " +
                                                               std::to_string(value) + "): at most 232448 bytes minus " +
                                                               std::to_string(k.static_smem) + " static");
    k.max_dynamic_smem = value;
  }
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : emu::detail::set_error(cudaErrorInvalidDevice, "the emulated GPU is device 0");
}

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = emu::detail::kSmCount; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = int(emu::detail::kMaxSmemOptin); break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = int(emu::detail::kDefaultSmem); break;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    default: return emu::detail::set_error(cudaErrorInvalidValue, "device attribute " + std::to_string(int(attr)) + " is not emulated");
  }
  return device == 0 ? cudaSuccess : cudaErrorInvalidDevice;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  if (stream != emu::current_stream()) return emu::detail::set_error(cudaErrorInvalidResourceHandle, "cudaMemsetAsync on a stream other than torch's current one");
  std::memset(ptr, value, count);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind, cudaStream_t stream) {
  if (stream != emu::current_stream()) return emu::detail::set_error(cudaErrorInvalidResourceHandle, "cudaMemcpyAsync on a stream other than torch's current one");
  std::memmove(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

}  // extern "C"
