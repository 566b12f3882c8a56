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

}  // namespace taskkernels::cuda
