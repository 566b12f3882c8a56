// CPU attention forward: the portable build of attention_impl.h and the run-time choice between it
// and the AVX2 + FMA build (attention_avx2.cpp).
#include "cpu/attention.h"

#include <cstdlib>
#include <string>

#define TK_ATTN_NS isa_generic
#include "cpu/attention_impl.h"

namespace taskkernels::cpu {
namespace {

// Whether the AVX2 + FMA build is in this module and the CPU runs it.
// TASKKERNELS_CPU_ISA=generic forces the portable build (tests use it to cover that copy).
[[maybe_unused]] bool use_avx2() {
#if defined(__x86_64__) && defined(TASKKERNELS_HAVE_AVX2_BUILD)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           !(std::getenv("TASKKERNELS_CPU_ISA") &&
                             std::string(std::getenv("TASKKERNELS_CPU_ISA")) == "generic");
  return avx2;
#else
  return false;
#endif
}

}  // namespace

// (The AVX2 copy exists only in x86-64 builds, hence the guards around its calls.)
void attention_forward(const AttentionParams& p) {
#if defined(TASKKERNELS_HAVE_AVX2_BUILD)
  if (use_avx2()) return isa_avx2::attention_forward(p);
#endif
  isa_generic::attention_forward(p);
}

void attention_backward(const AttentionBackwardParams& p) {
#if defined(TASKKERNELS_HAVE_AVX2_BUILD)
  if (use_avx2()) return isa_avx2::attention_backward(p);
#endif
  isa_generic::attention_backward(p);
}

}  // namespace taskkernels::cpu
