// CUDA batched linear sum assignment: host-side interface (torch-free).
#pragma once

#include <cstddef>
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace taskkernels::cuda {

enum class LsaDType { kHalf, kBFloat16, kFloat, kDouble };

// Problem b minimizes (maximizes) over cost[b][:, :count_b] with the element (b, i, j) at
// cost[b * s0 + i * s1 + j * s2]; count_b = num_targets[b] (int64 or int32, on the device), or M
// when num_targets is null. out (B, N) contiguous receives the column of each row or -1, as
// cpu/linear_sum_assignment.h. Nothing is copied to the host, so a problem that cannot be solved
// is reported in out: every entry of its row of out is set to one of the codes below.
struct LsaParams {
  LsaDType dtype;
  const void* cost;
  int64_t B, N, M, s0, s1, s2;
  const void* num_targets;
  bool num_targets_int64;
  bool maximize;
  int64_t* out;
  void* workspace;  // lsa_workspace(p) bytes, 16-byte aligned
};

constexpr int64_t kLsaInvalidEntries = -2;  // NaN, or -inf (+inf when maximizing)
constexpr int64_t kLsaInfeasible = -3;      // no complete assignment avoids the inf entries
constexpr int64_t kLsaBadCount = -4;        // num_targets[b] outside [0, M]

size_t lsa_workspace(const LsaParams& p);
// Returns a cudaError_t.
int batched_linear_sum_assignment(const LsaParams& p, cudaStream_t stream);

}  // namespace taskkernels::cuda
