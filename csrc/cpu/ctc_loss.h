// CTC loss (negative log-likelihood and its gradient), torch-free.
#pragma once

#include <cstdint>

namespace taskkernels::cpu {

enum class CtcInput { kLogProbs, kLogits };

// A batch of B sequences. Input element (b, t, c) is at input[b * sB + t * sT + c * sC], of type
// In (float, double, c10::Half or c10::BFloat16); frames t < input_lengths[b] are used. Labels of
// sequence b: labels[label_offsets[b] .. + target_lengths[b]), each in [0, C) and != blank
// (checked by the caller). Outputs, in Out (double for double input, float otherwise):
//   nll[b]        = -log p(labels | input), +inf when no alignment exists (0 with zero_infinity)
//   grad (b,t,c)  at grad[b * gB + t * gT + c * gC], when grad != nullptr: d nll[b] / d input
//                 for logits; for log-probabilities F.ctc_loss's convention, exp(lp) - posterior
//                 (the gradient once composed with log_softmax). Zero for t >= input_lengths[b];
//                 NaN for an infeasible sequence (zero with zero_infinity), as F.ctc_loss.
// Computed in double: scaled probabilities normalized every frame (fast), falling back per
// sequence to log-space recursions when the scaled ones under- or overflow.
struct CtcParams {
  CtcInput kind;
  const void* input;
  int64_t sB, sT, sC;
  int64_t B, T, C;
  const int64_t* input_lengths;
  const int64_t* labels;
  const int64_t* label_offsets;
  const int64_t* target_lengths;
  int64_t blank;
  bool zero_infinity;
  void* nll;
  void* grad;
  int64_t gB, gT, gC;
};

template <class In, class Out>
void ctc_loss(const CtcParams& p);

// How many sequences fell back to the log-space recursions since the module was loaded (lets
// the tests check that their extreme inputs take that path).
int64_t ctc_log_space_fallbacks();

}  // namespace taskkernels::cpu
