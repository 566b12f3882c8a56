// CPU attention forward: the portable build of attention_impl.h and the run-time choice between it
// and the AVX2 + FMA build (attention_avx2.cpp).
#include "cpu/attention.h"

#define TK_ATTN_NS isa_generic
#include "cpu/attention_impl.h"

namespace taskkernels::cpu {

void attention_forward(const AttentionParams& p) {
#if defined(__x86_64__) && defined(TASKKERNELS_HAVE_AVX2_BUILD)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return isa_avx2::attention_forward(p);
#endif
  isa_generic::attention_forward(p);
}

void attention_backward(const AttentionBackwardParams& p) {
#if defined(__x86_64__) && defined(TASKKERNELS_HAVE_AVX2_BUILD)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return isa_avx2::attention_backward(p);
#endif
  isa_generic::attention_backward(p);
}

}  // namespace taskkernels::cpu
