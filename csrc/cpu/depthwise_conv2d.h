// Depthwise 2-D convolution on the CPU (stride 1, one K x K filter per channel). Parameters and
// semantics: common/depthwise_conv2d_params.h.
#pragma once

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "common/depthwise_conv2d_params.h"

namespace taskkernels::cpu {

// Calls f(T{}, A{}): the element type of a DwDType and its accumulation type.
template <class F>
void dispatch_dw(DwDType t, F&& f) {
  switch (t) {
    case DwDType::kHalf: return f(c10::Half{}, float{});
    case DwDType::kBFloat16: return f(c10::BFloat16{}, float{});
    case DwDType::kFloat: return f(float{}, float{});
    case DwDType::kDouble: return f(double{}, double{});
  }
}

using taskkernels::DwConvParams;
using taskkernels::DwConvWeightGradParams;
using taskkernels::DwDType;

void depthwise_conv2d_forward(const DwConvParams& p);
void depthwise_conv2d_weight_grad(const DwConvWeightGradParams& p);

// One implementation (depthwise_conv2d_impl.h) compiled twice: for any x86-64, and with AVX2 +
// FMA.
namespace isa_generic {
void depthwise_conv2d_forward(const DwConvParams& p);
void depthwise_conv2d_weight_grad(const DwConvWeightGradParams& p);
}  // namespace isa_generic
namespace isa_avx2 {
void depthwise_conv2d_forward(const DwConvParams& p);
void depthwise_conv2d_weight_grad(const DwConvWeightGradParams& p);
}  // namespace isa_avx2

}  // namespace taskkernels::cpu

namespace taskkernels::cpu {

using taskkernels::ChannelNormBackwardParams;
using taskkernels::ChannelNormParams;

void channel_layernorm_forward(const ChannelNormParams& p);
void channel_layernorm_backward(const ChannelNormBackwardParams& p);

}  // namespace taskkernels::cpu
