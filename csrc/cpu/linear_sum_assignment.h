// Exact linear sum assignment (the rectangular assignment problem), torch-free.
#pragma once

#include <cstdint>

namespace taskkernels::cpu {

enum class LsaStatus { kOk = 0, kInfeasible = 1, kInvalid = 2 };

// Minimizes (or maximizes) sum cost[i][col_for_row[i]] over assignments that give every row a
// distinct column when rows <= cols (every column a distinct row otherwise). cost[i][j] is at
// cost + i * row_stride + j * col_stride; +inf (-inf when maximizing) forbids the pair.
// col_for_row (rows entries) receives the column of each row, or -1 for an unassigned row.
// kInvalid: NaN, or -inf (+inf when maximizing). kInfeasible: no complete assignment avoids the
// forbidden pairs. Shortest augmenting paths with dual potentials (Jonker-Volgenant style),
// O(n^2 m) for n = min(rows, cols), m = max(rows, cols).
LsaStatus linear_sum_assignment(const double* cost, int64_t rows, int64_t cols, int64_t row_stride,
                                int64_t col_stride, bool maximize, int64_t* col_for_row);

}  // namespace taskkernels::cpu
