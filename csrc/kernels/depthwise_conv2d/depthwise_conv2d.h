// CUDA depthwise convolution: host-side interface (torch-free). Parameters and semantics:
// common/depthwise_conv2d_params.h.
#pragma once

#include <cstddef>

#include "common/depthwise_conv2d_params.h"

typedef struct CUstream_st* cudaStream_t;

namespace taskkernels::cuda {

// Each returns a cudaError_t.
int depthwise_conv2d_forward(const DwConvParams& p, cudaStream_t stream);
size_t depthwise_conv2d_weight_grad_workspace(const DwConvWeightGradParams& p);
int depthwise_conv2d_weight_grad(const DwConvWeightGradParams& p, void* workspace, cudaStream_t stream);

// The ConvNeXt front (layernorm.cu). The fused kernel takes a channels-last x (conv.sC == 1),
// K = 3, 5 or 7 and C <= 1024; it writes the convolution to conv.y (B, Ho, Wo, C, rounded to the
// dtype) and norm.out / mean / rstd, with norm.y unused. Otherwise: depthwise_conv2d_forward,
// then channel_layernorm_forward on its output.
bool fused_front_supported(const DwConvParams& conv);
int depthwise_conv2d_layernorm_forward(const DwConvParams& conv, const ChannelNormParams& norm, cudaStream_t stream);
int channel_layernorm_forward(const ChannelNormParams& p, cudaStream_t stream);
size_t channel_layernorm_backward_workspace(const ChannelNormBackwardParams& p);
int channel_layernorm_backward(const ChannelNormBackwardParams& p, void* workspace, cudaStream_t stream);

}  // namespace taskkernels::cuda
