// CPU depthwise convolution: the portable build of depthwise_conv2d_impl.h and the run-time
// choice between it and the AVX2 + FMA build (depthwise_conv2d_avx2.cpp).
#include "cpu/depthwise_conv2d.h"

#include "cpu/isa.h"

#define TK_DW_NS isa_generic
#include "cpu/depthwise_conv2d_impl.h"

namespace taskkernels::cpu {

void depthwise_conv2d_forward(const DwConvParams& p) {
#if defined(TASKKERNELS_HAVE_AVX2_BUILD)
  if (use_avx2()) return isa_avx2::depthwise_conv2d_forward(p);
#endif
  isa_generic::depthwise_conv2d_forward(p);
}

void depthwise_conv2d_weight_grad(const DwConvWeightGradParams& p) {
#if defined(TASKKERNELS_HAVE_AVX2_BUILD)
  if (use_avx2()) return isa_avx2::depthwise_conv2d_weight_grad(p);
#endif
  isa_generic::depthwise_conv2d_weight_grad(p);
}

}  // namespace taskkernels::cpu
