#include "kernel_emu.h"
#include "cpu/linear_sum_assignment.h"
#include <cstdio>
#include <random>
using namespace taskkernels;
// Runs the CUDA kernel's code with std::threads standing in for a block's threads.
std::vector<int64_t> run_gpu(const std::vector<double>& cost, int64_t B, int64_t N, int64_t M, const std::vector<int64_t>* counts, bool maximize, bool transposed_strides=false) {
  cuda::LsaParams p{cuda::LsaDType::kDouble, cost.data(), B, N, M, N * M, M, 1, counts ? counts->data() : nullptr, true, maximize, nullptr, nullptr};
  if (transposed_strides) { p.s1 = 1; p.s2 = N; }  // cost stored (B, M, N), viewed as (B, N, M)
  std::vector<int64_t> out(B * N, 12345);
  p.out = out.data();
  cuda::Layout lay = cuda::make_layout(p);
  std::vector<unsigned char> ws(B * (lay.dense + (lay.state_in_smem ? 0 : lay.state)) + 16);
  std::vector<unsigned char> smem(lay.state + 16);
  g_smem = smem.data();
  blockDim.x = lay.threads;
  for (int w = 0; w < 32; ++w) g_warp_barriers.emplace_back(new std::barrier<>(32));
  for (int64_t b = 0; b < B; ++b) {
    std::barrier<> bar(lay.threads); g_block_barrier = &bar;
    std::vector<std::thread> ts;
    for (int t = 0; t < lay.threads; ++t) ts.emplace_back([&, t] { threadIdx.x = t; blockIdx.x = b; cuda::lsa_kernel<double>(p, lay, ws.data()); });
    for (auto& t : ts) t.join();
  }
  g_warp_barriers.clear();
  return out;
}
std::vector<int64_t> run_cpu(const std::vector<double>& cost, int64_t B, int64_t N, int64_t M, const std::vector<int64_t>* counts, bool maximize, int* status) {
  std::vector<int64_t> out(B * N);
  for (int64_t b = 0; b < B; ++b) {
    int64_t m = counts ? (*counts)[b] : M;
    status[b] = (int)cpu::linear_sum_assignment(cost.data() + b * N * M, N, m, M, 1, maximize, out.data() + b * N);
  }
  return out;
}
double total(const std::vector<double>& c, const std::vector<int64_t>& a, int64_t b, int64_t N, int64_t M) {
  double s = 0; for (int64_t i = 0; i < N; ++i) if (a[b*N+i] >= 0) s += c[b*N*M + i*M + a[b*N+i]]; return s;
}
int main() {
  std::mt19937_64 rng(7);
  int fails = 0, cases = 0, identical = 0;
  struct S { int64_t B, N, M; int kind; };  // kind 0 normal, 1 integer ties, 2 forbidden
  std::vector<S> shapes = {{6,100,50,0},{6,100,1,0},{4,30,30,0},{4,20,45,0},{4,45,20,0},{2,300,60,0},{1,300,300,0},{5,30,30,1},{5,20,45,1},{5,45,20,1},{4,40,40,2},{3,1,1,0},{3,1,5,0},{3,5,1,0}};
  for (auto s : shapes) for (int maximize = 0; maximize < 2; ++maximize) {
    std::vector<double> c(s.B * s.N * s.M);
    std::normal_distribution<double> nd; std::uniform_int_distribution<int> ud(0, 4); std::uniform_real_distribution<double> ur;
    for (auto& x : c) x = s.kind == 1 ? ud(rng) : nd(rng);
    if (s.kind == 2) for (int64_t b = 0; b < s.B; ++b) for (int64_t i = 0; i < s.N; ++i) for (int64_t j = 0; j < s.M; ++j) { if (i != j && ur(rng) < 0.5) c[b*s.N*s.M+i*s.M+j] = maximize ? -INFINITY : INFINITY; }
    std::vector<int64_t> counts(s.B); std::uniform_int_distribution<int64_t> cd(0, s.M);
    for (auto& x : counts) x = cd(rng); counts[0] = s.M;
    const bool use_counts = s.kind != 2;
    std::vector<int> st(s.B);
    auto want = run_cpu(c, s.B, s.N, s.M, use_counts ? &counts : nullptr, maximize, st.data());
    auto got = run_gpu(c, s.B, s.N, s.M, use_counts ? &counts : nullptr, maximize);
    for (int64_t b = 0; b < s.B; ++b) {
      ++cases;
      if (st[b] != 0) { printf("cpu status %d\n", st[b]); continue; }
      double tw = total(c, want, b, s.N, s.M), tg = total(c, got, b, s.N, s.M);
      bool same = true; for (int64_t i = 0; i < s.N; ++i) same &= want[b*s.N+i] == got[b*s.N+i];
      // validity
      std::vector<int> used(s.M, 0); int64_t assigned = 0; bool valid = true;
      for (int64_t i = 0; i < s.N; ++i) { int64_t j = got[b*s.N+i]; if (j < -1 || j >= (use_counts ? counts[b] : s.M)) valid = false; else if (j >= 0) { if (used[j]++) valid = false; ++assigned; } }
      int64_t m = use_counts ? counts[b] : s.M;
      valid &= assigned == std::min(s.N, m);
      identical += same;
      if (!valid || std::fabs(tw - tg) > 1e-9 * std::max(1.0, std::fabs(tw)) || (s.kind == 0 && !same)) {
        ++fails; printf("FAIL B%ld N%ld M%ld kind%d max%d b%ld valid%d tw %.12g tg %.12g same %d\n", s.B, s.N, s.M, s.kind, maximize, b, valid, tw, tg, same);
      }
    }
  }
  // non-contiguous strides: cost stored as (B, M, N)
  {
    int64_t B = 3, N = 100, M = 40; std::vector<double> stored(B*M*N), dense(B*N*M); std::normal_distribution<double> nd;
    for (auto& x : stored) x = nd(rng);
    for (int64_t b = 0; b < B; ++b) for (int64_t i = 0; i < N; ++i) for (int64_t j = 0; j < M; ++j) dense[b*N*M+i*M+j] = stored[b*M*N + j*N + i];
    std::vector<int> st(B);
    auto want = run_cpu(dense, B, N, M, nullptr, false, st.data());
    auto got = run_gpu(stored, B, N, M, nullptr, false, true);
    ++cases; if (want != got) { ++fails; printf("FAIL strided\n"); }
  }
  // error codes
  {
    int64_t B = 4, N = 5, M = 5; std::vector<double> c(B*N*M); std::normal_distribution<double> nd; for (auto& x : c) x = nd(rng);
    c[1*25 + 2*5 + 3] = NAN; for (int i = 0; i < 5; ++i) c[2*25 + i*5 + 0] = INFINITY;
    std::vector<int64_t> counts = {5, 5, 5, 6};
    auto got = run_gpu(c, B, N, M, &counts, false);
    for (int b = 0; b < 4; ++b) { printf("problem %d:", b); for (int i = 0; i < 5; ++i) printf(" %ld", got[b*5+i]); printf("\n"); }
  }
  printf("%d cases, %d failures, %d identical to the CPU\n", cases, fails, identical);
  return fails != 0;
}
