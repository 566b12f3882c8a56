// CTC loss on CUDA: one thread block per sequence walks the frames; the extended states
// (blank, l1, blank, ..., blank) are spread over its threads.
//
// The same kernel runs in two arithmetics (cpu/ctc_loss.cpp explains why): scaled probabilities
// (ProbSpace: one multiply-add per state and frame) for every sequence, then log space
// (LogSpace, F.ctc_loss's recursions) only for the sequences the first launch flagged as
// under-/overflowing. Both in double. Per frame: one __syncthreads; the state rows are
// double-buffered in shared memory (global memory when they do not fit) and the block sums are
// folded in a fixed order, so results are bitwise reproducible. The gradient needs no atomics:
// each frame's posterior of a class is summed by one warp over that class's list of states.
//
// Workspace: B flags, then per sequence the normalized forward rows of every frame (float, or
// double for double input; only when the gradient is wanted), the frame emissions, labels and
// the class lists.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/ctc_loss/ctc_loss.h"
#include "kernels/common/launch.cuh"

namespace taskkernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr size_t kMaxSmem = 96 * 1024;
// A frame whose scaled mass falls below this is not trusted to ProbSpace.
constexpr double kTiny = 1e-280;
constexpr int kSkipBit = 1 << 30;

struct ProbSpace {
  static constexpr bool kLog = false;
  __device__ static double zero() { return 0.0; }
  __device__ static double one() { return 1.0; }
  __device__ static double add(double a, double b) { return a + b; }
  __device__ static double mul(double a, double b) { return a * b; }
  __device__ static double div(double a, double b) { return a / b; }
  __device__ static double log_of(double a) { return log(a); }
  __device__ static double prob_of(double a) { return a; }
};

struct LogSpace {
  static constexpr bool kLog = true;
  __device__ static double zero() { return -INFINITY; }
  __device__ static double one() { return 0.0; }
  __device__ static double add(double a, double b) {
    const double mx = fmax(a, b);
    return mx == -INFINITY ? mx : mx + log(exp(a - mx) + exp(b - mx));
  }
  __device__ static double mul(double a, double b) { return a + b; }
  __device__ static double div(double a, double b) { return a - b; }
  __device__ static double log_of(double a) { return a; }
  __device__ static double prob_of(double a) { return exp(a); }
};

__device__ __forceinline__ double to_double(float v) { return v; }
__device__ __forceinline__ double to_double(double v) { return v; }
__device__ __forceinline__ double to_double(__half v) { return __half2float(v); }
__device__ __forceinline__ double to_double(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ int64_t read_index(const void* p, bool is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(p)[i] : static_cast<const int32_t*>(p)[i];
}

size_t align16(size_t n) { return (n + 15) & ~size_t(15); }

// Byte offsets inside one sequence's slice of the workspace.
struct Layout {
  int64_t S;  // 2 * max_target_length + 1
  size_t hist, y, m, log_a, labels, starts, items, used, rows, info, per_seq, flags;
  bool smem_rows;
  size_t smem;
};

Layout make_layout(const CtcLossParams& p) {
  Layout l{};
  l.S = 2 * p.max_target_length + 1;
  const size_t store = p.dtype == CtcDType::kDouble ? sizeof(double) : sizeof(float);
  const size_t rows_bytes = 4 * l.S * sizeof(double), info_bytes = l.S * sizeof(int32_t);
  l.smem_rows = rows_bytes + info_bytes <= kMaxSmem;
  l.smem = l.smem_rows ? rows_bytes + info_bytes : 0;
  size_t o = 0;
  l.hist = o, o += align16(p.grad ? p.T * l.S * store : 0);
  l.y = o, o += align16(p.T * p.C * sizeof(double));
  l.m = o, o += align16(p.T * sizeof(double));
  l.log_a = o, o += align16(p.T * sizeof(double));
  l.labels = o, o += align16(p.max_target_length * sizeof(int32_t));
  l.starts = o, o += align16((p.C + 1) * sizeof(int32_t));
  l.items = o, o += align16(p.max_target_length * sizeof(int32_t));
  l.used = o, o += align16(p.max_target_length * sizeof(int32_t));
  l.rows = o, o += l.smem_rows ? 0 : align16(rows_bytes);
  l.info = o, o += l.smem_rows ? 0 : align16(info_bytes);
  l.per_seq = o;
  l.flags = align16(p.B * sizeof(int32_t));
  return l;
}

// Fixed-order block reduction of N values per thread: xor-shuffle within warps, then every
// thread folds the warp results in warp order (so every thread holds the same totals).
template <class SR, int N>
__device__ void block_fold(double (&v)[N], double* partial /* [N][kWarps] */) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v[i] = SR::add(v[i], __shfl_xor_sync(0xffffffffu, v[i], off));
    if (lane == 0) partial[i * kWarps + warp] = v[i];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < N; ++i) {
    v[i] = partial[i * kWarps];
    for (int w = 1; w < kWarps; ++w) v[i] = SR::add(v[i], partial[i * kWarps + w]);
  }
}

template <class Out>
__device__ void fill_grad(const CtcLossParams& p, int64_t b, int64_t t0, int64_t t1, double value) {
  Out* g = static_cast<Out*>(p.grad) + b * p.gB;
  const int64_t n = (t1 - t0) * p.C;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t t = t0 + i / p.C, c = i % p.C;
    g[t * p.gT + c * p.gC] = static_cast<Out>(value);
  }
}

template <class In, class Out, class Store, class SR>
__global__ void __launch_bounds__(kThreads) ctc_kernel(CtcLossParams p, Layout lay) {
  const int64_t b = blockIdx.x;
  int32_t* flags = static_cast<int32_t*>(p.workspace);
  if (SR::kLog && flags[b] == 0) return;  // second launch: only the flagged sequences
  unsigned char* ws = static_cast<unsigned char*>(p.workspace) + lay.flags + b * lay.per_seq;
  unsigned char* smem = dynamic_smem();
  __shared__ double partial[2][3 * kWarps];
  __shared__ int64_t offset_parts[kWarps];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t T = read_index(p.input_lengths, p.input_lengths_int64, b);
  const int64_t L = read_index(p.target_lengths, p.target_lengths_int64, b);
  const int64_t C = p.C, blank = p.blank;
  Out* nll = static_cast<Out*>(p.nll);

  // Where this sequence's labels start: b * stride when padded, else the sum of earlier lengths.
  int64_t offset = 0;
  if (p.targets_padded) {
    offset = b * p.target_stride;
  } else {
    int64_t part = 0;
    for (int64_t i = tid; i < b; i += blockDim.x) part += read_index(p.target_lengths, p.target_lengths_int64, i);
    for (int off = 16; off > 0; off >>= 1) part += __shfl_xor_sync(0xffffffffu, part, off);
    if (lane == 0) offset_parts[warp] = part;
    __syncthreads();
    for (int w = 0; w < kWarps; ++w) offset += offset_parts[w];
  }
  const int64_t limit = p.targets_padded ? p.target_stride : p.target_stride - offset;
  bool bad = T < 0 || T > p.T || L < 0 || L > p.max_target_length || L > limit;
  int32_t* labels = reinterpret_cast<int32_t*>(ws + lay.labels);
  int64_t repeats = 0;
  if (!__syncthreads_or(bad)) {
    for (int64_t k0 = 0; k0 < L; k0 += blockDim.x) {
      const int64_t k = k0 + tid;
      bool my_bad = false, my_repeat = false;
      if (k < L) {
        const int64_t label = read_index(p.targets, p.targets_int64, offset + k);
        my_bad = label < 0 || label >= C || label == blank;
        labels[k] = static_cast<int32_t>(label);
        if (k > 0) my_repeat = label == read_index(p.targets, p.targets_int64, offset + k - 1);
      }
      bad = __syncthreads_or(my_bad) || bad;
      repeats += __syncthreads_count(my_repeat);
    }
  } else {
    bad = true;
  }
  if (bad) {  // malformed lengths or labels: NaN, since a kernel cannot raise
    if (tid == 0) nll[b] = static_cast<Out>(NAN);
    if (p.grad) fill_grad<Out>(p, b, 0, p.T, NAN);
    return;
  }
  if (p.grad && T < p.T) fill_grad<Out>(p, b, T, p.T, 0.0);
  const bool feasible = T >= L + repeats;
  if (T == 0 || !feasible) {
    if (tid == 0) nll[b] = static_cast<Out>(feasible ? 0.0 : (p.zero_infinity ? 0.0 : INFINITY));
    if (p.grad) fill_grad<Out>(p, b, 0, T, p.zero_infinity ? 0.0 : NAN);
    return;
  }

  // Emissions, one warp per frame. ProbSpace: y = p / exp(m) with the largest y = 1; LogSpace:
  // y = exact log-probabilities, m = 0.
  double* ybuf = reinterpret_cast<double*>(ws + lay.y);
  double* mbuf = reinterpret_cast<double*>(ws + lay.m);
  double* log_a = reinterpret_cast<double*>(ws + lay.log_a);
  const In* x = static_cast<const In*>(p.input) + b * p.sB;
  for (int64_t t = warp; t < T; t += kWarps) {
    const In* xt = x + t * p.sT;
    double mx = -INFINITY;
    for (int64_t c = lane; c < C; c += 32) mx = fmax(mx, to_double(xt[c * p.sC]));
    for (int off = 16; off > 0; off >>= 1) mx = fmax(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    const bool dead = mx == -INFINITY;
    double sum = 0.0;
    for (int64_t c = lane; c < C; c += 32) {
      const double e = dead ? 0.0 : exp(to_double(xt[c * p.sC]) - mx);
      sum += e;
      if (!SR::kLog) ybuf[t * C + c] = e;
    }
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    const double lse = p.from_logits ? mx + log(sum) : 0.0;
    if (SR::kLog) {
      for (int64_t c = lane; c < C; c += 32) ybuf[t * C + c] = to_double(xt[c * p.sC]) - lse;
    }
    if (lane == 0) mbuf[t] = SR::kLog || dead ? 0.0 : (p.from_logits ? -log(sum) : mx);
  }

  // State table: class | skip bit, and (for the gradient) each class's list of label positions.
  const int64_t S = 2 * L + 1;
  double* rows = lay.smem_rows ? reinterpret_cast<double*>(smem) : reinterpret_cast<double*>(ws + lay.rows);
  int32_t* info = lay.smem_rows ? reinterpret_cast<int32_t*>(smem + 4 * lay.S * sizeof(double))
                                : reinterpret_cast<int32_t*>(ws + lay.info);
  int32_t* starts = reinterpret_cast<int32_t*>(ws + lay.starts);
  int32_t* items = reinterpret_cast<int32_t*>(ws + lay.items);
  int32_t* used = reinterpret_cast<int32_t*>(ws + lay.used);
  __shared__ int32_t n_used;
  __syncthreads();  // labels and emissions written
  for (int64_t s = tid; s < S; s += blockDim.x) {
    const int64_t k = s >> 1;
    const bool skip = (s & 1) && s >= 3 && labels[k] != labels[k - 1];
    info[s] = ((s & 1) ? labels[k] : static_cast<int32_t>(blank)) | (skip ? kSkipBit : 0);
  }
  if (p.grad && tid == 0) {  // counting sort of label positions by class: O(L + C), once
    for (int64_t c = 0; c <= C; ++c) starts[c] = 0;
    for (int64_t k = 0; k < L; ++k) ++starts[labels[k] + 1];
    int32_t u = 0;
    for (int64_t c = 0; c < C; ++c) {
      if (starts[c + 1] > 0) used[u++] = static_cast<int32_t>(c);
      starts[c + 1] += starts[c];
    }
    n_used = u;
    for (int64_t k = 0; k < L; ++k) items[starts[labels[k]]++] = static_cast<int32_t>(k);
    for (int64_t c = C; c > 0; --c) starts[c] = starts[c - 1];  // undo the fill's advance
    starts[0] = 0;
  }
  __syncthreads();

  // Forward. Row t is kept unnormalized in shared memory; the previous row's mass divides lazily.
  Store* hist = reinterpret_cast<Store*>(ws + lay.hist);
  double prev_mass = SR::one(), log_scale = 0.0;
  bool failed = false, dead = false;
  for (int64_t t = 0; t < T; ++t) {
    double* cur = rows + (t & 1) * lay.S;
    const double* prev = rows + ((t + 1) & 1) * lay.S;
    const double* y_t = ybuf + t * C;
    double part[1] = {SR::zero()};
    for (int64_t s = tid; s < S; s += blockDim.x) {
      const int32_t in = info[s];
      const double e = y_t[in & (kSkipBit - 1)];
      double v;
      if (t == 0) {
        v = s < 2 ? e : SR::zero();
      } else {
        v = prev[s];
        if (s >= 1) v = SR::add(v, prev[s - 1]);
        if (in & kSkipBit) v = SR::add(v, prev[s - 2]);
        v = SR::mul(SR::div(v, prev_mass), e);
      }
      cur[s] = v;
      part[0] = SR::add(part[0], v);
    }
    block_fold<SR, 1>(part, partial[t & 1]);
    const double mass = part[0];
    if (!SR::kLog && !(mass >= kTiny && isfinite(mass))) {
      failed = true;
      break;
    }
    if (SR::kLog && mass == -INFINITY) {  // infeasible given the zero probabilities
      dead = true;
      break;
    }
    if (p.grad)
      for (int64_t s = tid; s < S; s += blockDim.x) hist[t * S + s] = static_cast<Store>(SR::div(cur[s], mass));
    log_scale += SR::log_of(mass) + mbuf[t];
    if (tid == 0) log_a[t] = log_scale;
    prev_mass = mass;
  }
  double log_p = -INFINITY;
  if (!failed && !dead) {
    const double* last = rows + ((T - 1) & 1) * lay.S;
    const double end = SR::div(S > 1 ? SR::add(last[S - 1], last[S - 2]) : last[S - 1], prev_mass);
    if (!SR::kLog && !(end >= kTiny)) failed = true;
    log_p = log_scale + SR::log_of(end);
  }
  if (SR::kLog && log_p == -INFINITY) {  // infeasible
    if (tid == 0) nll[b] = static_cast<Out>(p.zero_infinity ? 0.0 : INFINITY);
    if (p.grad) fill_grad<Out>(p, b, 0, T, p.zero_infinity ? 0.0 : NAN);
    return;
  }
  if (failed) {
    if (tid == 0) flags[b] = 1;
    return;
  }
  if (tid == 0) nll[b] = static_cast<Out>(-log_p);
  if (!p.grad) return;

  // Backward, frame by frame from the end: beta (frame t excluded) in rows 0/1, the posteriors
  // gamma = alpha * beta in rows 2/3. Per frame: the block sums of beta, gamma and gamma on
  // blank states, then one warp per used class sums that class's states in a fixed order.
  __syncthreads();  // every thread is done with the forward rows
  const double tol = (sizeof(Store) == sizeof(double) ? 1e-8 : 1e-5) * (1.0 + fabs(log_p));
  Out* g = static_cast<Out*>(p.grad) + b * p.gB;
  double prev_mass_b = SR::one(), log_b = 0.0;
  for (int64_t t = T - 1; t >= 0; --t) {
    double* bc = rows + (t & 1) * lay.S;
    const double* bn = rows + ((t + 1) & 1) * lay.S;
    double* gam = rows + (2 + (t & 1)) * lay.S;
    const double* y_n = ybuf + (t + 1) * C;
    if (t < T - 1) log_b += mbuf[t + 1] + SR::log_of(prev_mass_b);
    double part[3] = {SR::zero(), SR::zero(), SR::zero()};  // beta mass, Z, blank posterior
    for (int64_t s = tid; s < S; s += blockDim.x) {
      double bv;
      if (t == T - 1) {
        bv = s >= S - 2 ? SR::one() : SR::zero();
      } else {
        bv = SR::mul(bn[s], y_n[info[s] & (kSkipBit - 1)]);
        if (s + 1 < S) bv = SR::add(bv, SR::mul(bn[s + 1], y_n[info[s + 1] & (kSkipBit - 1)]));
        if (s + 2 < S && (info[s + 2] & kSkipBit)) bv = SR::add(bv, SR::mul(bn[s + 2], y_n[info[s + 2] & (kSkipBit - 1)]));
        bv = SR::div(bv, prev_mass_b);
      }
      bc[s] = bv;
      const double gv = SR::mul(static_cast<double>(hist[t * S + s]), bv);
      gam[s] = gv;
      part[0] = SR::add(part[0], bv);
      part[1] = SR::add(part[1], gv);
      if (!(s & 1)) part[2] = SR::add(part[2], gv);
    }
    block_fold<SR, 3>(part, partial[t & 1]);
    const double mass_b = part[0], z = part[1], z_blank = part[2];
    if (!SR::kLog && !(mass_b >= kTiny && isfinite(mass_b) && z >= kTiny &&
                       fabs(log(z) + log_a[t] + log_b - log_p) <= tol)) {
      if (tid == 0) flags[b] = 1;
      return;
    }
    // p_t(c) = y * exp(m) (ProbSpace) or exp(y) (LogSpace).
    const double* y_t = ybuf + t * C;
    const double pscale = SR::kLog ? 1.0 : exp(mbuf[t]);
    auto prob = [&](int64_t c) { return SR::kLog ? exp(y_t[c]) : y_t[c] * pscale; };
    for (int64_t c = tid; c < C; c += blockDim.x) {
      if (starts[c + 1] > starts[c]) continue;  // a label class: its warp writes it below
      const double post = c == blank ? SR::prob_of(SR::div(z_blank, z)) : 0.0;
      g[t * p.gT + c * p.gC] = static_cast<Out>(prob(c) - post);
    }
    for (int32_t u = warp; u < n_used; u += kWarps) {
      const int32_t c = used[u];
      double acc = SR::zero();
      for (int32_t i = starts[c] + lane; i < starts[c + 1]; i += 32) acc = SR::add(acc, gam[2 * items[i] + 1]);
      for (int off = 16; off > 0; off >>= 1) acc = SR::add(acc, __shfl_xor_sync(0xffffffffu, acc, off));
      if (lane == 0) g[t * p.gT + c * p.gC] = static_cast<Out>(prob(c) - SR::prob_of(SR::div(acc, z)));
    }
    prev_mass_b = mass_b;
  }
}

template <class In, class Out, class Store>
int launch(const CtcLossParams& p, const Layout& lay, cudaStream_t stream) {
  if (cudaError_t e = cudaMemsetAsync(p.workspace, 0, p.B * sizeof(int32_t), stream); e != cudaSuccess) return e;
  auto prob = ctc_kernel<In, Out, Store, ProbSpace>;
  auto logs = ctc_kernel<In, Out, Store, LogSpace>;
  for (auto k : {prob, logs}) {
    if (cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lay.smem));
        e != cudaSuccess)
      return e;
    if (cudaError_t e = launch_kernel(k, static_cast<unsigned>(p.B), kThreads, lay.smem, stream, p, lay); e != cudaSuccess)
      return e;
  }
  return cudaSuccess;
}

}  // namespace

size_t ctc_loss_workspace(const CtcLossParams& p) {
  const Layout l = make_layout(p);
  return l.flags + p.B * l.per_seq;
}

int ctc_loss(const CtcLossParams& p, cudaStream_t stream) {
  if (p.B == 0) return cudaSuccess;
  const Layout lay = make_layout(p);
  switch (p.dtype) {
    case CtcDType::kHalf: return launch<__half, float, float>(p, lay, stream);
    case CtcDType::kBFloat16: return launch<__nv_bfloat16, float, float>(p, lay, stream);
    case CtcDType::kFloat: return launch<float, float, float>(p, lay, stream);
    case CtcDType::kDouble: return launch<double, double, double>(p, lay, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace taskkernels::cuda
