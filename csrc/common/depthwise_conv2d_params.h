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

namespace taskkernels {

// LayerNorm over the channels of each pixel (ConvNeXt's channels-last LayerNorm), reading
// y (B, C, H, W) at any strides and writing out (B, H, W, C) contiguous, both of dtype; mean and
// rstd (B * H * W) in the accumulation type (float, double for double).
struct ChannelNormParams {
  DwDType dtype;
  int64_t B, C, H, W;
  const void* y;
  int64_t sB, sC, sH, sW;
  const void* gamma;  // (C,) or null
  const void* beta;   // (C,) or null
  double eps;
  void* out;
  void* mean;
  void* rstd;
};

// Its backward: grad_out (B, H, W, C) contiguous -> dy (B, H, W, C) contiguous (dtype), and
// ggamma / gbeta (C,) (dtype; null when not wanted), summed over pixels in fixed chunks and then
// in chunk order: bitwise reproducible. y, gamma, mean, rstd as in the forward.
struct ChannelNormBackwardParams {
  ChannelNormParams fwd;  // out unused
  const void* grad_out;
  void* dy;
  void* ggamma;
  void* gbeta;
};

}  // namespace taskkernels
