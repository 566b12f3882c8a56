// CPU fused attention (forward): the entry point. Parameters: common/attention_params.h.
#pragma once

#include <cstdint>

#include "common/attention_params.h"

namespace taskkernels::cpu {

using taskkernels::AttentionParams;
using taskkernels::AttentionBackwardParams;
using taskkernels::AttnDType;
using taskkernels::MaskPackParams;
using taskkernels::MaskSource;

void attention_forward(const AttentionParams& p);
void attention_backward(const AttentionBackwardParams& p);

// Packs a per-query mask into bits (cpu/attention_mask.cpp).
void pack_attention_mask(const MaskPackParams& p);

// One implementation (attention_impl.h) compiled twice: for any x86-64, and with AVX2 + FMA.
namespace isa_generic {
void attention_forward(const AttentionParams& p);
void attention_backward(const AttentionBackwardParams& p);
}  // namespace isa_generic
namespace isa_avx2 {
void attention_forward(const AttentionParams& p);
void attention_backward(const AttentionBackwardParams& p);
}  // namespace isa_avx2

}  // namespace taskkernels::cpu
