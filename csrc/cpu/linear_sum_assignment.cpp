// Shortest augmenting path assignment. Rows are added one at a time; each addition runs a
// Dijkstra search over reduced costs cost[i][j] - u[i] - v[j] (kept >= 0 by the dual potentials
// u, v) from the new row to the nearest free column, then flips the path and updates the duals.
#include "cpu/linear_sum_assignment.h"

#include <cmath>
#include <limits>
#include <vector>

namespace taskkernels::cpu {
namespace {

// n <= m: assigns every one of the n rows of the dense row-major n x m matrix c.
LsaStatus solve(const std::vector<double>& c, int64_t n, int64_t m, std::vector<int64_t>& col4row) {
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> u(n, 0.0), v(m, 0.0), shortest(m);
  std::vector<int64_t> path(m), row4col(m, -1), remaining(m);
  std::vector<char> seen_row(n), seen_col(m);
  col4row.assign(n, -1);

  // A warm start (Jonker-Volgenant's reductions): dual-feasible potentials with some rows
  // already matched at zero reduced cost, so only the others need a search.
  if (n == m) {
    // Square: column reduction. v[j] = min_i c[i][j] keeps every reduced
    // cost >= 0, and each column's cheapest row takes it when that row is still free, so most rows
    // start matched and only the rest need a search. (Not for n < m: there a column left free
    // must keep v[j] = 0.)
    for (int64_t j = 0; j < m; ++j) {
      double best = inf;
      int64_t arg = -1;
      for (int64_t i = 0; i < n; ++i) {
        const double x = c[i * m + j];
        if (x < best) best = x, arg = i;
      }
      if (arg < 0) continue;  // a column of forbidden entries: the search will report it
      v[j] = best;
      if (col4row[arg] == -1) {
        col4row[arg] = j;
        row4col[j] = arg;
      }
    }
  } else {
    // Rectangular (n < m): row reduction. u[i] = min_j c[i][j] with v = 0 is dual feasible and
    // leaves free columns at v = 0; each row takes its cheapest column when that one is free.
    for (int64_t i = 0; i < n; ++i) {
      double best = inf;
      int64_t arg = -1;
      const double* ci = c.data() + i * m;
      for (int64_t j = 0; j < m; ++j) {
        if (ci[j] < best) best = ci[j], arg = j;
      }
      if (arg < 0) continue;  // a row of forbidden entries: the search will report it
      u[i] = best;
      if (row4col[arg] == -1) {
        col4row[i] = arg;
        row4col[arg] = i;
      }
    }
  }

  for (int64_t cur = 0; cur < n; ++cur) {
    if (col4row[cur] != -1) continue;
    std::fill(shortest.begin(), shortest.end(), inf);
    std::fill(seen_row.begin(), seen_row.end(), 0);
    std::fill(seen_col.begin(), seen_col.end(), 0);
    // Columns not yet reached, scanned in reverse so that ties go to the lowest index.
    int64_t n_remaining = m;
    for (int64_t j = 0; j < m; ++j) remaining[j] = m - 1 - j;

    double min_val = 0.0;
    int64_t i = cur, sink = -1;
    while (sink == -1) {
      seen_row[i] = 1;
      double lowest = inf;
      int64_t best = -1;
      const double* ci = c.data() + i * m;
      const double base = min_val - u[i];
      for (int64_t k = 0; k < n_remaining; ++k) {
        const int64_t j = remaining[k];
        const double r = base + ci[j] - v[j];
        if (r < shortest[j]) {
          path[j] = i;
          shortest[j] = r;
        }
        // Prefer a free column on ties: the path ends sooner.
        if (shortest[j] < lowest || (shortest[j] == lowest && row4col[j] == -1)) {
          lowest = shortest[j];
          best = k;
        }
      }
      min_val = lowest;
      if (min_val == inf) return LsaStatus::kInfeasible;  // only forbidden pairs are left
      const int64_t j = remaining[best];
      seen_col[j] = 1;
      remaining[best] = remaining[--n_remaining];
      if (row4col[j] == -1) {
        sink = j;
      } else {
        i = row4col[j];
      }
    }

    // Dual update keeps every reduced cost >= 0 and those on the matching at 0.
    u[cur] += min_val;
    for (int64_t r = 0; r < n; ++r) {
      if (seen_row[r] && r != cur) u[r] += min_val - shortest[col4row[r]];
    }
    for (int64_t j = 0; j < m; ++j) {
      if (seen_col[j]) v[j] -= min_val - shortest[j];
    }
    // Flip the augmenting path.
    for (int64_t j = sink;;) {
      const int64_t r = path[j];
      row4col[j] = r;
      const int64_t prev = col4row[r];
      col4row[r] = j;
      j = prev;
      if (r == cur) break;
    }
  }
  return LsaStatus::kOk;
}

}  // namespace

LsaStatus linear_sum_assignment(const double* cost, int64_t rows, int64_t cols, int64_t row_stride,
                                int64_t col_stride, bool maximize, int64_t* col_for_row) {
  for (int64_t i = 0; i < rows; ++i) col_for_row[i] = -1;
  if (rows == 0 || cols == 0) return LsaStatus::kOk;
  const bool transpose = rows > cols;  // the solver wants n <= m
  const int64_t n = transpose ? cols : rows, m = transpose ? rows : cols;
  std::vector<double> c(n * m);
  const double forbidden = maximize ? -INFINITY : INFINITY;
  for (int64_t a = 0; a < n; ++a) {
    for (int64_t b = 0; b < m; ++b) {
      const int64_t i = transpose ? b : a, j = transpose ? a : b;
      const double x = cost[i * row_stride + j * col_stride];
      if (std::isnan(x) || (std::isinf(x) && x != forbidden)) return LsaStatus::kInvalid;
      c[a * m + b] = maximize ? -x : x;
    }
  }
  std::vector<int64_t> col4row;
  const LsaStatus status = solve(c, n, m, col4row);
  if (status != LsaStatus::kOk) return status;
  for (int64_t a = 0; a < n; ++a) {
    if (transpose) {
      col_for_row[col4row[a]] = a;
    } else {
      col_for_row[a] = col4row[a];
    }
  }
  return LsaStatus::kOk;
}

}  // namespace taskkernels::cpu
