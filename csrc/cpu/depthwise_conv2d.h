// Depthwise 2-D convolution on the CPU (stride 1, one K x K filter per channel). Parameters and
// semantics: common/depthwise_conv2d_params.h.
#pragma once

#include "common/depthwise_conv2d_params.h"

namespace taskkernels::cpu {

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
