// CTC loss on the CPU: forward-backward over the extended label sequence (blank, l1, blank, l2,
// ..., blank), one sequence per task, parallel over the batch.
//
// Fast path: probabilities, not logs. Each frame's emissions are scaled so that the largest is 1
// (its log kept aside), and each frame's forward (and backward) variables are renormalized to sum
// to 1 (the log of the factor kept aside). That needs no exp or log per cell, only per frame and
// class, and the recursions vectorize. The scaled values stay within double's range unless a
// frame's surviving mass drops below 1e-280 of what it was; then, and when the forward and
// backward passes disagree about log p at some frame (the sign that a path that mattered was
// lost to underflow), the sequence is redone with log-space recursions, as F.ctc_loss does.
#include "cpu/ctc_loss.h"

#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

namespace taskkernels::cpu {
namespace {

std::atomic<int64_t> g_fallbacks{0};

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// A frame whose scaled mass falls below this is not trusted to the fast path.
constexpr double kTiny = 1e-280;

// One sequence: T frames used, C classes, L labels, S = 2L + 1 extended states.
struct Seq {
  int64_t T, C, L, S, blank;
  const int64_t* labels;
  // Class of extended state s: blank for even s, labels[(s - 1) / 2] for odd s.
  int64_t state_class(int64_t s) const { return (s & 1) ? labels[s >> 1] : blank; }
  // Whether state s may be entered from s - 2 (a label different from the previous label).
  bool can_skip(int64_t s) const { return (s & 1) && s >= 3 && labels[s >> 1] != labels[(s >> 1) - 1]; }
};

// Per-task scratch, reused across the sequences of one chunk.
struct Work {
  std::vector<double> y;      // (T, C): exp(lp - m[t]) on the fast path, lp on the log path
  std::vector<double> m;      // (T): log scale of each frame's emissions
  std::vector<double> alpha;  // (T, S): forward variables, normalized per frame (or logs)
  std::vector<double> log_a;  // (T): log of the forward normalizers up to frame t
  std::vector<double> beta, beta_next, z, yrow, skip, post;
  void reserve(const Seq& q) {
    y.resize(q.T * q.C);
    m.resize(q.T);
    alpha.resize(q.T * q.S);
    log_a.resize(q.T);
    for (auto* v : {&beta, &beta_next, &z, &yrow, &skip}) v->assign(q.S, 0.0);
    post.resize(q.C);
  }
};

template <class In>
const In* frame_ptr(const CtcParams& p, int64_t b, int64_t t) {
  return static_cast<const In*>(p.input) + b * p.sB + t * p.sT;
}

// Exact log-probabilities of one frame into lp (log_softmax first for logits).
template <class In>
void frame_logprobs(const In* x, int64_t sC, int64_t C, CtcInput kind, double* lp) {
  for (int64_t c = 0; c < C; ++c) lp[c] = static_cast<double>(x[c * sC]);
  if (kind != CtcInput::kLogits) return;
  double mx = lp[0];
  for (int64_t c = 1; c < C; ++c) mx = std::max(mx, lp[c]);
  double sum = 0.0;
  for (int64_t c = 0; c < C; ++c) sum += std::exp(lp[c] - mx);
  const double lse = mx + std::log(sum);
  for (int64_t c = 0; c < C; ++c) lp[c] -= lse;
}

// Scaled emissions of one frame: y[c] = p(c) / exp(m) with the largest y equal to 1.
template <class In>
void frame_scaled(const In* x, int64_t sC, int64_t C, CtcInput kind, double* y, double* m) {
  double mx = -kInf;
  for (int64_t c = 0; c < C; ++c) {
    y[c] = static_cast<double>(x[c * sC]);
    mx = std::max(mx, y[c]);
  }
  if (mx == -kInf) {  // nothing can be emitted here: the fast path sees zero mass and gives up
    std::fill(y, y + C, 0.0);
    *m = 0.0;
    return;
  }
  double sum = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    y[c] = std::exp(y[c] - mx);
    sum += y[c];
  }
  // Logits: p = y / sum, so m = -log(sum). Log-probabilities: p = exp(lp) = y * exp(mx).
  *m = kind == CtcInput::kLogits ? -std::log(sum) : mx;
}

void fill_yrow(const Seq& q, const double* y_t, double* yrow) {
  const double yb = y_t[q.blank];
  for (int64_t k = 0; k < q.L; ++k) {
    yrow[2 * k] = yb;
    yrow[2 * k + 1] = y_t[q.labels[k]];
  }
  yrow[q.S - 1] = yb;
}

double sum_of(const double* v, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += v[i];
  return s;
}

void scale_by(double* v, int64_t n, double f) {
  for (int64_t i = 0; i < n; ++i) v[i] *= f;
}

// Fast path. Returns false when its result cannot be trusted (see the top of the file).
template <class Out>
bool scaled_path(const Seq& q, Work& w, double* nll, Out* grad, int64_t gT, int64_t gC) {
  const int64_t T = q.T, S = q.S, C = q.C;
  const double* y = w.y.data();
  double* __restrict yrow = w.yrow.data();
  const double* __restrict skip = w.skip.data();

  // Forward: alpha_t(s) = (alpha_{t-1}(s) + alpha_{t-1}(s-1) + [skip] alpha_{t-1}(s-2)) y_t(s).
  for (int64_t t = 0; t < T; ++t) {
    double* __restrict cur = w.alpha.data() + t * S;
    fill_yrow(q, y + t * C, yrow);
    if (t == 0) {
      std::fill(cur, cur + S, 0.0);
      cur[0] = yrow[0];
      if (S > 1) cur[1] = yrow[1];
    } else {
      const double* __restrict prev = cur - S;
      cur[0] = prev[0] * yrow[0];
      if (S > 1) cur[1] = (prev[1] + prev[0]) * yrow[1];
      for (int64_t s = 2; s < S; ++s) cur[s] = (prev[s] + prev[s - 1] + skip[s] * prev[s - 2]) * yrow[s];
    }
    const double mass = sum_of(cur, S);
    if (!(mass >= kTiny) || !std::isfinite(mass)) return false;
    scale_by(cur, S, 1.0 / mass);
    w.log_a[t] = (t ? w.log_a[t - 1] : 0.0) + std::log(mass) + w.m[t];
  }
  const double* last = w.alpha.data() + (T - 1) * S;
  const double end = last[S - 1] + (S > 1 ? last[S - 2] : 0.0);
  if (!(end >= kTiny)) return false;
  const double log_p = w.log_a[T - 1] + std::log(end);
  *nll = -log_p;
  if (grad == nullptr) return true;

  // Backward: beta_t(s) = probability of the rest given state s at frame t (frame t excluded),
  // normalized per frame like alpha. gamma_t(s) = alpha_t(s) beta_t(s) is then proportional to
  // the posterior of state s at frame t, and the per-frame factor cancels in the ratio.
  double* __restrict b = w.beta.data();
  double* __restrict bn = w.beta_next.data();
  double* __restrict z = w.z.data();
  std::fill(b, b + S, 0.0);
  b[S - 1] = 1.0;
  if (S > 1) b[S - 2] = 1.0;
  double log_b = 0.0;
  const double tol = 1e-8 * (1.0 + std::abs(log_p));
  for (int64_t t = T - 1; t >= 0; --t) {
    if (t < T - 1) {
      std::swap(b, bn);  // bn = beta_{t+1}
      fill_yrow(q, y + (t + 1) * C, yrow);
      for (int64_t s = 0; s < S; ++s) z[s] = bn[s] * yrow[s];
      for (int64_t s = 0; s < S - 2; ++s) b[s] = z[s] + z[s + 1] + skip[s + 2] * z[s + 2];
      if (S > 1) b[S - 2] = z[S - 2] + z[S - 1];
      b[S - 1] = z[S - 1];
      const double mass = sum_of(b, S);
      if (!(mass >= kTiny) || !std::isfinite(mass)) return false;
      scale_by(b, S, 1.0 / mass);
      log_b += std::log(mass) + w.m[t + 1];
    }
    const double* a = w.alpha.data() + t * S;
    double zsum = 0.0, blank_sum = 0.0;
    double* post = w.post.data();
    std::fill(post, post + C, 0.0);
    for (int64_t k = 0; k < q.L; ++k) {
      const double g_blank = a[2 * k] * b[2 * k], g_label = a[2 * k + 1] * b[2 * k + 1];
      blank_sum += g_blank;
      zsum += g_blank + g_label;
      post[q.labels[k]] += g_label;
    }
    const double g_last = a[S - 1] * b[S - 1];
    blank_sum += g_last;
    zsum += g_last;
    post[q.blank] += blank_sum;
    // Every frame must give the same log p; a mismatch means the scaled values lost a path.
    if (!(zsum >= kTiny) || !(std::abs(std::log(zsum) + w.log_a[t] + log_b - log_p) <= tol)) return false;
    const double inv = 1.0 / zsum, pscale = std::exp(w.m[t]);
    const double* y_t = y + t * C;
    for (int64_t c = 0; c < C; ++c) grad[t * gT + c * gC] = static_cast<Out>(y_t[c] * pscale - post[c] * inv);
  }
  return true;
}

double log_add(double a, double b) {
  const double mx = std::max(a, b);
  if (mx == -kInf) return -kInf;
  return mx + std::log(std::exp(a - mx) + std::exp(b - mx));
}

double log_add3(double a, double b, double c) {
  const double mx = std::max(a, std::max(b, c));
  if (mx == -kInf) return -kInf;
  return mx + std::log(std::exp(a - mx) + std::exp(b - mx) + std::exp(c - mx));
}

// Log-space path, F.ctc_loss's recursions. w.y must hold the exact log-probabilities. Returns
// false for an infeasible sequence (p = 0).
template <class Out>
bool log_path(const Seq& q, Work& w, double* nll, Out* grad, int64_t gT, int64_t gC) {
  const int64_t T = q.T, S = q.S, C = q.C;
  const double* lp = w.y.data();
  double* la = w.alpha.data();
  for (int64_t t = 0; t < T; ++t) {
    double* cur = la + t * S;
    const double* lp_t = lp + t * C;
    if (t == 0) {
      std::fill(cur, cur + S, -kInf);
      cur[0] = lp_t[q.blank];
      if (S > 1) cur[1] = lp_t[q.labels[0]];
      continue;
    }
    const double* prev = cur - S;
    for (int64_t s = 0; s < S; ++s) {
      const double a1 = s >= 1 ? prev[s - 1] : -kInf, a2 = q.can_skip(s) ? prev[s - 2] : -kInf;
      cur[s] = log_add3(prev[s], a1, a2) + lp_t[q.state_class(s)];
    }
  }
  const double* last = la + (T - 1) * S;
  const double log_p = log_add(last[S - 1], S > 1 ? last[S - 2] : -kInf);
  *nll = -log_p;
  if (log_p == -kInf) return false;
  if (grad == nullptr) return true;

  std::vector<double>& lb = w.beta;
  std::vector<double>& lbn = w.beta_next;
  std::fill(lb.begin(), lb.end(), -kInf);
  lb[S - 1] = 0.0;
  if (S > 1) lb[S - 2] = 0.0;
  for (int64_t t = T - 1; t >= 0; --t) {
    if (t < T - 1) {
      std::swap(lb, lbn);
      const double* lp_n = lp + (t + 1) * C;
      for (int64_t s = 0; s < S; ++s) {
        const double b0 = lbn[s] + lp_n[q.state_class(s)];
        const double b1 = s + 1 < S ? lbn[s + 1] + lp_n[q.state_class(s + 1)] : -kInf;
        const double b2 = s + 2 < S && q.can_skip(s + 2) ? lbn[s + 2] + lp_n[q.state_class(s + 2)] : -kInf;
        lb[s] = log_add3(b0, b1, b2);
      }
    }
    double* post = w.post.data();
    std::fill(post, post + C, -kInf);
    const double* a = la + t * S;
    for (int64_t s = 0; s < S; ++s) {
      const int64_t c = q.state_class(s);
      post[c] = log_add(post[c], a[s] + lb[s]);
    }
    const double* lp_t = lp + t * C;
    for (int64_t c = 0; c < C; ++c)
      grad[t * gT + c * gC] = static_cast<Out>(std::exp(lp_t[c]) - std::exp(post[c] - log_p));
  }
  return true;
}

template <class In, class Out>
void solve(const CtcParams& p, int64_t b, Work& w) {
  const int64_t T = p.input_lengths[b], L = p.target_lengths[b];
  const Seq q{T, p.C, L, 2 * L + 1, p.blank, p.labels + p.label_offsets[b]};
  Out* grad = p.grad ? static_cast<Out*>(p.grad) + b * p.gB : nullptr;
  double nll = kInf;
  int64_t repeats = 0;
  for (int64_t k = 1; k < L; ++k) repeats += q.labels[k] == q.labels[k - 1];
  bool feasible = T >= L + repeats;
  if (T == 0) {
    nll = feasible ? 0.0 : kInf;  // the empty alignment of an empty target
  } else if (feasible) {
    w.reserve(q);
    for (int64_t s = 0; s < q.S; ++s) w.skip[s] = q.can_skip(s) ? 1.0 : 0.0;
    for (int64_t t = 0; t < T; ++t)
      frame_scaled(frame_ptr<In>(p, b, t), p.sC, p.C, p.kind, w.y.data() + t * p.C, w.m.data() + t);
    if (!scaled_path(q, w, &nll, grad, p.gT, p.gC)) {
      g_fallbacks.fetch_add(1, std::memory_order_relaxed);
      for (int64_t t = 0; t < T; ++t)
        frame_logprobs(frame_ptr<In>(p, b, t), p.sC, p.C, p.kind, w.y.data() + t * p.C);
      feasible = log_path(q, w, &nll, grad, p.gT, p.gC);
    }
  }
  if (!feasible && p.zero_infinity) nll = 0.0;
  static_cast<Out*>(p.nll)[b] = static_cast<Out>(nll);
  if (grad == nullptr) return;
  // Frames past the input length get no gradient; an infeasible sequence gets NaN (F.ctc_loss's
  // 0 * inf), or zero with zero_infinity.
  for (int64_t t = 0; t < p.T; ++t) {
    if (t < T && feasible) continue;
    const double v = (t < T && !p.zero_infinity) ? kNaN : 0.0;
    for (int64_t c = 0; c < p.C; ++c) grad[t * p.gT + c * p.gC] = static_cast<Out>(v);
  }
}

}  // namespace

template <class In, class Out>
void ctc_loss(const CtcParams& p) {
  torch::stable::parallel_for(0, p.B, 1, [&](int64_t begin, int64_t end) {
    Work w;
    for (int64_t b = begin; b < end; ++b) solve<In, Out>(p, b, w);
  });
}

int64_t ctc_log_space_fallbacks() { return g_fallbacks.load(); }

template void ctc_loss<float, float>(const CtcParams&);
template void ctc_loss<double, double>(const CtcParams&);
template void ctc_loss<c10::Half, float>(const CtcParams&);
template void ctc_loss<c10::BFloat16, float>(const CtcParams&);

}  // namespace taskkernels::cpu
