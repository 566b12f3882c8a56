// Depthwise 2-D convolution parameters, shared by the CPU and CUDA implementations (torch-free).
#pragma once

#include <cstdint>

namespace taskkernels {

enum class DwDType { kHalf, kBFloat16, kFloat, kDouble };

// y[b, c, oy, ox] = bias[c] + sum_{ky, kx} w[c, ky, kx] * x[b, c, oy + ky - pad, ox + kx - pad]
// (zero outside), for an input Hi x Wi and output Ho x Wo = Hi + 2 pad - K + 1 (same for W).
// x at x[b * sB + c * sC + h * sH + w * sW] (any strides; the channels-last kernel wants
// sC == 1). w: (C, K, K) contiguous, bias: (C,) or null, both of x's dtype. y: contiguous
// NCHW, or NHWC when channels_last. Accumulates in float (double for double).
struct DwConvParams {
  DwDType dtype;
  int64_t B, C, Hi, Wi, Ho, Wo, K, pad;
  const void* x;
  int64_t sB, sC, sH, sW;
  const void* w;
  const void* bias;
  void* y;
  bool channels_last;
  bool flip;  // use the filter rotated by 180 degrees (the input gradient)
};
// Weight (and bias) gradients: gw[c, ky, kx] = sum_{b, oy, ox} go[b, c, oy, ox] *
// x[b, c, oy + ky - pad, ox + kx - pad]; gb[c] = sum go. go at the strides of DwConvParams'
// y (contiguous NCHW, or NHWC when channels_last), x as above. gw (C, K, K) and gb (C,) in x's
// dtype; gb may be null. Summed in a fixed order: bitwise reproducible.
struct DwConvWeightGradParams {
  DwConvParams shape;  // x, strides, sizes, layout; y = grad_out
  void* gw;
  void* gb;
};

}  // namespace taskkernels
