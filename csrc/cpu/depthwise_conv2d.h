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

}  // namespace taskkernels::cpu
