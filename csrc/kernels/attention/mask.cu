// Packing a per-query attention mask into bits (MaskPackParams, common/attention_params.h): one
// warp per (b, query) row, 32 keys per ballot, two ballots per 64-bit word; a row that blocks
// every key is cleared (it attends everywhere).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/attention/attention.h"
#include "kernels/common/launch.cuh"

namespace taskkernels::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ bool blocked(bool x) { return x; }
__device__ __forceinline__ bool blocked(__half x) { return __half2float(x) < 0.f; }  // NaN: false
__device__ __forceinline__ bool blocked(__nv_bfloat16 x) { return __bfloat162float(x) < 0.f; }
__device__ __forceinline__ bool blocked(float x) { return x < 0.f; }
__device__ __forceinline__ bool blocked(double x) { return x < 0.0; }

template <class T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) pack_mask_kernel(MaskPackParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= p.B * p.Q) return;  // whole warp
  const int64_t b = row / p.Q, i = row % p.Q, W = (p.N + 63) / 64;
  const T* x = static_cast<const T*>(p.src) + b * p.src_stride[0] + i * p.src_stride[1];
  uint64_t* out = p.bits + row * W;
  int64_t n_blocked = 0;
  for (int64_t w = 0; w < W; ++w) {
    const int64_t j0 = w * 64 + lane, j1 = j0 + 32;
    const uint32_t lo = __ballot_sync(0xffffffffu, j0 < p.N && blocked(x[j0 * p.src_stride[2]]));
    const uint32_t hi = __ballot_sync(0xffffffffu, j1 < p.N && blocked(x[j1 * p.src_stride[2]]));
    n_blocked += __popc(lo) + __popc(hi);
    if (lane == 0) out[w] = uint64_t(lo) | (uint64_t(hi) << 32);
  }
  if (n_blocked == p.N && lane == 0)  // same thread as the writes above: program order
    for (int64_t w = 0; w < W; ++w) out[w] = 0;
}

template <class T>
cudaError_t launch(const MaskPackParams& p, cudaStream_t stream) {
  const int64_t rows = p.B * p.Q;
  const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  return launch_kernel(pack_mask_kernel<T>, unsigned(blocks), kWarpsPerBlock * 32, 0, stream, p);
}

}  // namespace

cudaError_t pack_attention_mask(const MaskPackParams& p, cudaStream_t stream) {
  if (p.B * p.Q * p.N == 0) return cudaSuccess;
  switch (p.source) {
    case MaskSource::kBool: return launch<bool>(p, stream);
    case MaskSource::kHalf: return launch<__half>(p, stream);
    case MaskSource::kBFloat16: return launch<__nv_bfloat16>(p, stream);
    case MaskSource::kFloat: return launch<float>(p, stream);
    case MaskSource::kDouble: return launch<double>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace taskkernels::cuda
