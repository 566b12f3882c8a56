// Attention dropout's mask: a counter-based hash of (seed, element index), so the forward, the
// backward, the CPU and the CUDA kernels all draw the same mask from one seed with no state and
// nothing stored. The mixer is splitmix64's finalizer over seed + (index + 1) * golden ratio.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace taskkernels {

TK_HOST_DEVICE uint64_t dropout_hash(uint64_t seed, uint64_t index) {
  uint64_t z = seed + (index + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Keep threshold for drop probability p: an element is kept when its 24-bit uniform draw
// (the hash's top bits) is >= threshold, i.e. with probability 1 - threshold / 2^24.
TK_HOST_DEVICE uint32_t dropout_threshold(double p) { return static_cast<uint32_t>(p * 16777216.0 + 0.5); }

// Whether element (b, h, i, j) of the (B, H, Nq, Nk) probabilities is kept.
TK_HOST_DEVICE bool dropout_keep(uint64_t seed, uint32_t threshold, uint64_t index) {
  return static_cast<uint32_t>(dropout_hash(seed, index) >> 40) >= threshold;
}

}  // namespace taskkernels
