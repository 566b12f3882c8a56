// CPU attention forward: the portable build of attention_impl.h and the run-time choice between it
// and the AVX2 + FMA build (attention_avx2.cpp).
#include "cpu/attention.h"

#include "cpu/isa.h"

#define TK_ATTN_NS isa_generic
#include "cpu/attention_impl.h"

namespace taskkernels::cpu {

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
