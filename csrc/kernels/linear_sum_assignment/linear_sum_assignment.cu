// Batched linear sum assignment on CUDA: one thread block per problem runs the algorithm of
// cpu/linear_sum_assignment.cpp (Jonker-Volgenant's warm start, then one shortest augmenting
// path per row left free, over reduced costs kept >= 0 by dual potentials), with every scan over
// the columns spread over the block's threads.
//
// Column j is always handled by thread j % blockDim.x, so its search state (shortest distance,
// predecessor row, reached flag) is only ever touched by that thread; the block meets once per
// Dijkstra step, in the argmin over the columns not yet reached (two __syncthreads). The short
// sequential pieces (the greedy part of the warm start, flipping the augmenting path) run on
// thread 0. Arithmetic is the CPU solver's, in double, on the same values, so both give the same
// assignment wherever the optimum is unique; among equal distances this one prefers a free
// column, then the lowest index.
//
// Workspace, per problem: the cost converted to double in the solver's orientation (rows <= cols;
// the problem is transposed when it has more rows than used columns), then the solver state when
// it does not fit in shared memory. Nothing goes back to the host: a problem that cannot be
// solved gets one of the codes of linear_sum_assignment.h in every entry of its row of out.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/linear_sum_assignment/linear_sum_assignment.h"
#include "kernels/common/launch.cuh"

namespace taskkernels::cuda {
namespace {

constexpr size_t kMaxSmem = 96 * 1024;  // the solver state goes to shared memory up to this
constexpr int kNone = INT_MAX;          // argmin key of "no column"
constexpr int kTaken = 1 << 30;         // added to the key of a matched column: free ones win ties

__host__ __device__ size_t align16(size_t x) { return (x + 15) / 16 * 16; }

// Sizes for the largest problem of the batch (num_targets stays on the device).
struct Layout {
  int64_t n_max, m_max;
  size_t dense;  // bytes of one problem's double cost matrix
  size_t state;  // bytes of one problem's solver state
  bool state_in_smem;
  int threads;
};

Layout make_layout(const LsaParams& p) {
  Layout l;
  l.n_max = p.N < p.M ? p.N : p.M;
  l.m_max = p.N < p.M ? p.M : p.N;
  l.dense = align16(sizeof(double) * l.n_max * l.m_max);
  l.state = align16(sizeof(double) * (l.n_max + 2 * l.m_max)) + align16(sizeof(int) * (l.n_max + 2 * l.m_max)) +
            align16(l.n_max + l.m_max);
  l.state_in_smem = l.state <= kMaxSmem;
  l.threads = l.m_max > 512 ? 256 : 128;
  return l;
}

struct State {
  double *u, *v, *shortest;
  int *path, *row4col, *col4row;
  unsigned char *seen_row, *seen_col;
};

__device__ State carve(unsigned char* base, const Layout& l) {
  State s;
  s.u = reinterpret_cast<double*>(base);
  s.v = s.u + l.n_max;
  s.shortest = s.v + l.m_max;
  base += align16(sizeof(double) * (l.n_max + 2 * l.m_max));
  s.path = reinterpret_cast<int*>(base);
  s.row4col = s.path + l.m_max;
  s.col4row = s.row4col + l.m_max;
  base += align16(sizeof(int) * (l.n_max + 2 * l.m_max));
  s.seen_row = base;
  s.seen_col = base + l.n_max;
  return s;
}

__device__ double to_double(float x) { return x; }
__device__ double to_double(double x) { return x; }
__device__ double to_double(__half x) { return __half2float(x); }
__device__ double to_double(__nv_bfloat16 x) { return __bfloat162float(x); }

// (val, key) pairs ordered by value, then key; every lane ends with the warp's least.
__device__ void warp_argmin(double& val, int& key) {
  for (int off = 16; off > 0; off >>= 1) {
    const double v2 = __shfl_xor_sync(0xffffffffu, val, off);
    const int k2 = __shfl_xor_sync(0xffffffffu, key, off);
    if (v2 < val || (v2 == val && k2 < key)) val = v2, key = k2;
  }
}

struct Reduce {
  double val[32];
  int key[32];
  double res_val;
  int res_key;
};

// Every thread ends with the block's least (val, key). The next call may start at once: warp 0
// has read val/key before the second barrier, and res_* is rewritten only after the next
// call's first barrier, which every thread reaches after reading it.
__device__ void block_argmin(double& val, int& key, Reduce& r) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  warp_argmin(val, key);
  if (lane == 0) r.val[warp] = val, r.key[warp] = key;
  __syncthreads();
  if (warp == 0) {
    val = lane < nwarps ? r.val[lane] : INFINITY;
    key = lane < nwarps ? r.key[lane] : kNone;
    warp_argmin(val, key);
    if (lane == 0) r.res_val = val, r.res_key = key;
  }
  __syncthreads();
  val = r.res_val;
  key = r.res_key;
}

template <class T>
__global__ void lsa_kernel(LsaParams p, Layout lay, unsigned char* workspace) {
  unsigned char* smem = dynamic_smem();
  __shared__ Reduce red;
  __shared__ int invalid;
  const int tid = threadIdx.x, bd = blockDim.x, lane = tid & 31, warp = tid >> 5, nwarps = bd >> 5;
  const int64_t b = blockIdx.x;
  int64_t* out = p.out + b * p.N;
  auto fill = [&](int64_t code) {
    for (int64_t i = tid; i < p.N; i += bd) out[i] = code;
  };

  int64_t count = p.M;
  if (p.num_targets != nullptr) {
    count = p.num_targets_int64 ? static_cast<const int64_t*>(p.num_targets)[b]
                                : static_cast<const int32_t*>(p.num_targets)[b];
  }
  if (count < 0 || count > p.M) return fill(kLsaBadCount);
  const bool transpose = p.N > count;  // the solver wants rows <= cols
  const int n = static_cast<int>(transpose ? count : p.N), m = static_cast<int>(transpose ? p.N : count);
  if (n == 0) return fill(-1);

  unsigned char* mine = workspace + b * (lay.dense + (lay.state_in_smem ? 0 : lay.state));
  double* c = reinterpret_cast<double*>(mine);
  const State s = carve(lay.state_in_smem ? smem : mine + lay.dense, lay);

  // Dense copy in the solver's orientation, negated when maximizing; NaN and the wrong-signed inf
  // are refused as on the CPU.
  if (tid == 0) invalid = 0;
  __syncthreads();
  const T* cost = static_cast<const T*>(p.cost) + b * p.s0;
  const double forbidden = p.maximize ? -INFINITY : INFINITY;
  bool bad = false;
  for (int64_t k = tid; k < int64_t(n) * m; k += bd) {
    const int64_t a = k / m, j = k % m;
    const double x = to_double(cost[(transpose ? j : a) * p.s1 + (transpose ? a : j) * p.s2]);
    bad |= isnan(x) || (isinf(x) && x != forbidden);
    c[k] = p.maximize ? -x : x;
  }
  if (bad) atomicOr(&invalid, 1);
  for (int a = tid; a < n; a += bd) s.u[a] = 0.0, s.col4row[a] = -1;
  for (int j = tid; j < m; j += bd) s.v[j] = 0.0, s.row4col[j] = -1;
  __syncthreads();
  if (invalid) return fill(kLsaInvalidEntries);

  // Warm start (see the CPU solver): dual-feasible potentials, some rows matched at zero reduced
  // cost. The minima are found in parallel (lowest index on ties, as the CPU's strict < scan),
  // the greedy matching in the CPU's order on thread 0. path[] holds each minimum's index.
  if (n == m) {
    for (int j = tid; j < m; j += bd) {
      double best = INFINITY;
      int arg = -1;
      for (int i = 0; i < n; ++i) {
        const double x = c[int64_t(i) * m + j];
        if (x < best) best = x, arg = i;
      }
      if (arg >= 0) s.v[j] = best;
      s.path[j] = arg;
    }
    __syncthreads();
    if (tid == 0) {
      for (int j = 0; j < m; ++j) {
        const int arg = s.path[j];
        if (arg >= 0 && s.col4row[arg] == -1) s.col4row[arg] = j, s.row4col[j] = arg;
      }
    }
  } else {
    for (int a = warp; a < n; a += nwarps) {
      const double* ca = c + int64_t(a) * m;
      double best = INFINITY;
      int arg = kNone;
      for (int j = lane; j < m; j += 32) {
        if (ca[j] < best) best = ca[j], arg = j;
      }
      warp_argmin(best, arg);
      if (lane == 0) {
        if (arg != kNone) s.u[a] = best;
        s.path[a] = arg == kNone ? -1 : arg;
      }
    }
    __syncthreads();
    if (tid == 0) {
      for (int a = 0; a < n; ++a) {
        const int arg = s.path[a];
        if (arg >= 0 && s.row4col[arg] == -1) s.col4row[a] = arg, s.row4col[arg] = a;
      }
    }
  }
  __syncthreads();

  bool infeasible = false;
  for (int cur = 0; cur < n && !infeasible; ++cur) {
    if (s.col4row[cur] != -1) continue;
    for (int j = tid; j < m; j += bd) s.shortest[j] = INFINITY, s.seen_col[j] = 0;
    for (int a = tid; a < n; a += bd) s.seen_row[a] = 0;
    __syncthreads();

    // Dijkstra from row cur to the nearest free column. All threads carry min_val, i and sink.
    double min_val = 0.0;
    int i = cur, sink = -1;
    while (true) {
      if (tid == 0) s.seen_row[i] = 1;
      const double* ci = c + int64_t(i) * m;
      const double base = min_val - s.u[i];
      double best = INFINITY;
      int key = kNone;
      for (int j = tid; j < m; j += bd) {
        if (s.seen_col[j]) continue;
        const double r = base + ci[j] - s.v[j];
        if (r < s.shortest[j]) s.path[j] = i, s.shortest[j] = r;
        const int k = s.row4col[j] == -1 ? j : j + kTaken;
        if (s.shortest[j] < best || (s.shortest[j] == best && k < key)) best = s.shortest[j], key = k;
      }
      block_argmin(best, key, red);
      min_val = best;
      if (best == INFINITY) break;  // only forbidden pairs are left
      const int j = key & (kTaken - 1);
      if (tid == j % bd) s.seen_col[j] = 1;
      if (s.row4col[j] == -1) {
        sink = j;
        break;
      }
      i = s.row4col[j];
    }
    if (sink < 0) {
      infeasible = true;
      break;
    }

    // Dual update (reduced costs stay >= 0, those on the matching 0), then flip the path.
    if (tid == 0) s.u[cur] += min_val;
    for (int a = tid; a < n; a += bd) {
      if (s.seen_row[a] && a != cur) s.u[a] += min_val - s.shortest[s.col4row[a]];
    }
    for (int j = tid; j < m; j += bd) {
      if (s.seen_col[j]) s.v[j] -= min_val - s.shortest[j];
    }
    __syncthreads();
    if (tid == 0) {
      for (int j = sink;;) {
        const int r = s.path[j];
        s.row4col[j] = r;
        const int prev = s.col4row[r];
        s.col4row[r] = j;
        j = prev;
        if (r == cur) break;
      }
    }
    __syncthreads();
  }
  if (infeasible) return fill(kLsaInfeasible);
  // Transposed, the columns are the problem's rows: row4col holds their columns (or -1).
  for (int64_t q = tid; q < p.N; q += bd) out[q] = transpose ? s.row4col[q] : s.col4row[q];
}

template <class T>
int launch(const LsaParams& p, const Layout& lay, cudaStream_t stream) {
  const size_t smem = lay.state_in_smem ? lay.state : 0;
  if (smem > 48 * 1024) {
    if (cudaError_t e = cudaFuncSetAttribute(lsa_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
        e != cudaSuccess)
      return e;
  }
  return launch_kernel(lsa_kernel<T>, static_cast<unsigned>(p.B), lay.threads, smem, stream, p, lay, static_cast<unsigned char*>(p.workspace));
}

}  // namespace

size_t lsa_workspace(const LsaParams& p) {
  const Layout l = make_layout(p);
  return p.B * (l.dense + (l.state_in_smem ? 0 : l.state));
}

int batched_linear_sum_assignment(const LsaParams& p, cudaStream_t stream) {
  if (p.B == 0 || p.N == 0) return cudaSuccess;
  const Layout lay = make_layout(p);
  switch (p.dtype) {
    case LsaDType::kHalf: return launch<__half>(p, lay, stream);
    case LsaDType::kBFloat16: return launch<__nv_bfloat16>(p, lay, stream);
    case LsaDType::kFloat: return launch<float>(p, lay, stream);
    case LsaDType::kDouble: return launch<double>(p, lay, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace taskkernels::cuda
