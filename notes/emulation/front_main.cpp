// The ConvNeXt front's CUDA kernels (layernorm.cu) run by emulation against a direct float64
// computation: fused forward (K 3/5/7, C with and without idle threads, edges), the unfused
// LayerNorm forward, the backward's dy and the LayerNorm parameter gradients.
#include "front_emu.h"
#include <cstdio>
#include <random>
using namespace taskkernels;
using A = double;
int fails = 0;
void check(const char* what, double got, double want, double tol) {
  if (!(std::fabs(got - want) <= tol * std::max(1.0, std::fabs(want)))) {
    if (fails < 10) printf("FAIL %s: %.15g vs %.15g\n", what, got, want);
    ++fails;
  }
}
int main() {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> nd;
  struct S { int B, C, H, W, K; };
  for (S s : {S{2, 12, 9, 14, 7}, S{1, 96, 7, 7, 7}, S{1, 40, 5, 11, 5}, S{2, 3, 4, 9, 3}, S{1, 1, 3, 3, 3}, S{1, 33, 1, 17, 7}}) {
    const int B = s.B, C = s.C, H = s.H, W = s.W, K = s.K, pad = K / 2;
    std::vector<double> x(B * H * W * C), w(C * K * K), bias(C), g(C), bt(C);
    for (auto* v : {&x, &w, &bias, &g, &bt}) for (auto& e : *v) e = nd(rng);
    // reference conv (B, H, W, C) and LayerNorm
    std::vector<double> conv(B * H * W * C, 0), out(x.size()), mean(B * H * W), rstd(B * H * W);
    for (int b = 0; b < B; ++b) for (int oy = 0; oy < H; ++oy) for (int ox = 0; ox < W; ++ox) for (int c = 0; c < C; ++c) {
      double a = bias[c];
      for (int ky = 0; ky < K; ++ky) for (int kx = 0; kx < K; ++kx) {
        int iy = oy + ky - pad, ix = ox + kx - pad;
        if (iy >= 0 && iy < H && ix >= 0 && ix < W) a += w[c * K * K + ky * K + kx] * x[((b * H + iy) * W + ix) * C + c];
      }
      conv[((b * H + oy) * W + ox) * C + c] = a;
    }
    for (int i = 0; i < B * H * W; ++i) {
      double m = 0, v = 0;
      for (int c = 0; c < C; ++c) m += conv[i * C + c];
      m /= C;
      for (int c = 0; c < C; ++c) v += (conv[i * C + c] - m) * (conv[i * C + c] - m);
      v /= C;
      mean[i] = m; rstd[i] = 1 / std::sqrt(v + 1e-6);
      for (int c = 0; c < C; ++c) out[i * C + c] = (conv[i * C + c] - m) * rstd[i] * g[c] + bt[c];
    }
    // fused forward
    DwConvParams p{DwDType::kDouble, B, C, H, W, H, W, K, pad, x.data(), H * W * C, 1, W * C, C, w.data(), bias.data(), nullptr, true, false};
    std::vector<double> gconv(x.size(), NAN), gout(x.size(), NAN), gmean(B * H * W, NAN), grstd(B * H * W, NAN);
    p.y = gconv.data();
    ChannelNormParams n{DwDType::kDouble, B, C, H, W, gconv.data(), H * W * C, 1, W * C, C, g.data(), bt.data(), 1e-6, gout.data(), gmean.data(), grstd.data()};
    const unsigned blocks = B * H * ((W + cuda::kPix - 1) / cuda::kPix), threads = (C + 31) / 32 * 32;
    auto run = [&](auto kernel) { emulate(blocks, 1, threads, [&] { kernel(p, n); }); };
    if (K == 3) run(cuda::fused_front<double, 3>); else if (K == 5) run(cuda::fused_front<double, 5>); else run(cuda::fused_front<double, 7>);
    for (size_t i = 0; i < x.size(); ++i) { check("conv", gconv[i], conv[i], 1e-12); check("out", gout[i], out[i], 1e-10); }
    for (int i = 0; i < B * H * W; ++i) { check("mean", gmean[i], mean[i], 1e-12); check("rstd", grstd[i], rstd[i], 1e-10); }
    // unfused LayerNorm forward, reading conv through NCHW-permuted strides of the (B, H, W, C) buffer
    std::fill(gout.begin(), gout.end(), NAN);
    emulate((B * H * W + cuda::kWarpsPerBlock - 1) / cuda::kWarpsPerBlock, 1, cuda::kWarpsPerBlock * 32, [&] { cuda::layernorm_forward<double>(n); });
    for (size_t i = 0; i < x.size(); ++i) check("ln out", gout[i], out[i], 1e-10);
    // backward: dy and parameter gradients against the direct formulas
    std::vector<double> go(x.size()), dy(x.size(), NAN), ggamma(C, NAN), gbeta(C, NAN);
    for (auto& e : go) e = nd(rng);
    ChannelNormBackwardParams gb{n, go.data(), dy.data(), ggamma.data(), gbeta.data()};
    emulate((B * H * W + cuda::kWarpsPerBlock - 1) / cuda::kWarpsPerBlock, 1, cuda::kWarpsPerBlock * 32, [&] { cuda::layernorm_backward_input<double>(gb); });
    const cuda::ParamSplit split = cuda::param_split(n);
    std::vector<double> partial(split.slices * C * 2, NAN);
    emulate((C + cuda::kParamThreads - 1) / cuda::kParamThreads, split.slices, cuda::kParamThreads, [&] { cuda::layernorm_param_partial<double>(gb, split, partial.data()); });
    emulate((C + 255) / 256, 1, 256, [&] { cuda::layernorm_param_finish<double>(gb, split, partial.data()); });
    std::vector<double> wg(C, 0), wb(C, 0);
    for (int i = 0; i < B * H * W; ++i) {
      double c1 = 0, c2 = 0;
      for (int c = 0; c < C; ++c) { double xh = (conv[i * C + c] - mean[i]) * rstd[i]; c1 += go[i * C + c] * g[c] * xh; c2 += go[i * C + c] * g[c]; wg[c] += go[i * C + c] * xh; wb[c] += go[i * C + c]; }
      c1 /= C; c2 /= C;
      for (int c = 0; c < C; ++c) { double xh = (conv[i * C + c] - mean[i]) * rstd[i]; check("dy", dy[i * C + c], rstd[i] * (go[i * C + c] * g[c] - c2 - xh * c1), 1e-9); }
    }
    for (int c = 0; c < C; ++c) { check("ggamma", ggamma[c], wg[c], 1e-10); check("gbeta", gbeta[c], wb[c], 1e-10); }
    printf("B%d C%d %dx%d K%d: %s\n", B, C, H, W, K, fails ? "failures so far" : "ok");
  }
  printf("%d failures\n", fails);
  return fails != 0;
}
