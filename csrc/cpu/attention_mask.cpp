// Packing a per-query attention mask (bool or logits) into 64-bit words, one bit per key, with
// rows that block every key cleared. Parameters: common/attention_params.h (MaskPackParams).
#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "cpu/attention.h"

namespace taskkernels::cpu {
namespace {

template <class T>
inline bool blocked(const T& x) {
  return static_cast<double>(x) < 0.0;  // sigmoid(x) < 0.5; NaN compares false
}
template <>
inline bool blocked<bool>(const bool& x) {
  return x;
}

template <class T>
void pack(const MaskPackParams& p) {
  const int64_t W = (p.N + 63) / 64;
  const T* src = static_cast<const T*>(p.src);
  torch::stable::parallel_for(0, p.B * p.Q, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / p.Q, i = row % p.Q;
      const T* x = src + b * p.src_stride[0] + i * p.src_stride[1];
      uint64_t* out = p.bits + row * W;
      int64_t n_blocked = 0;
      for (int64_t w = 0; w < W; ++w) {
        uint64_t word = 0;
        const int64_t j0 = w * 64, n = p.N - j0 < 64 ? p.N - j0 : 64;
        for (int64_t c = 0; c < n; ++c)
          word |= static_cast<uint64_t>(blocked(x[(j0 + c) * p.src_stride[2]])) << c;
        n_blocked += __builtin_popcountll(word);
        out[w] = word;
      }
      if (n_blocked == p.N)  // every key blocked: Mask2Former lets such a query attend everywhere
        for (int64_t w = 0; w < W; ++w) out[w] = 0;
    }
  });
}

}  // namespace

void pack_attention_mask(const MaskPackParams& p) {
  switch (p.source) {
    case MaskSource::kBool: return pack<bool>(p);
    case MaskSource::kHalf: return pack<c10::Half>(p);
    case MaskSource::kBFloat16: return pack<c10::BFloat16>(p);
    case MaskSource::kFloat: return pack<float>(p);
    case MaskSource::kDouble: return pack<double>(p);
  }
}

}  // namespace taskkernels::cpu
