// Per-query mask (masked attention) helpers shared by the attention backward kernels: the bits of
// a key tile for one query, and whether a (query tile, key tile) pair is blocked outright.
#pragma once

#include <cstdint>

#include "common/attention_params.h"

namespace taskkernels::cuda {

// The blocked-key bits of keys [n0, n0 + nvalid) for query i (a tile within one 64-key word:
// its size divides 64 and n0 is a multiple of it); 0 without a per-query mask.
__device__ __forceinline__ uint64_t tile_blocked_bits(const AttentionParams& p, int64_t b, int64_t i, int64_t n0,
                                                      int64_t nvalid) {
  if (!p.mask_bits) return 0;
  const uint64_t word = p.mask_bits[b * p.mb_stride[0] + i * p.mb_stride[1] + n0 / 64];
  const uint64_t bits = word >> (n0 % 64);
  return nvalid >= 64 ? bits : bits & ((uint64_t(1) << nvalid) - 1);
}

// Whether every query of [m0, m0 + mvalid) blocks every key of [n0, n0 + nvalid) through the
// per-query mask: the pair contributes nothing. Block-uniform (ends with a barrier).
__device__ __forceinline__ bool pair_blocked(const AttentionParams& p, int64_t b, int64_t m0, int64_t mvalid,
                                             int64_t n0, int64_t nvalid) {
  if (!p.mask_bits) return false;
  bool mine = true;
  const uint64_t want = nvalid >= 64 ? ~uint64_t(0) : (uint64_t(1) << nvalid) - 1;
  for (int r = threadIdx.x; r < mvalid; r += blockDim.x) mine = mine && tile_blocked_bits(p, b, m0 + r, n0, nvalid) == want;
  return __syncthreads_and(mine);
}

}  // namespace taskkernels::cuda
