// CPU patch embedding: patchify (a strided copy that also converts to the accumulation type),
// one GEMM through torch's BLAS, and an epilogue that adds bias and position embeddings and
// places the [CLS] rows. fp16/bf16 compute in fp32 and round once.
#include "cpu/patch_embed.h"

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <vector>

#include "cpu/dispatch.h"

namespace taskkernels::cpu {
namespace {

using torch::headeronly::ScalarType;
namespace ts = torch::stable;

struct Geometry {
  int64_t B, C, H, W, P, D, pw, np, K, M;
  int64_t sB, sC, sH, sW;

  Geometry(const Tensor& pixels, const Tensor& weight)
      : B(pixels.size(0)), C(pixels.size(1)), H(pixels.size(2)), W(pixels.size(3)),
        P(weight.size(2)), D(weight.size(0)), pw(W / P), np((H / P) * (W / P)), K(C * P * P),
        M(B * np), sB(pixels.stride(0)), sC(pixels.stride(1)), sH(pixels.stride(2)),
        sW(pixels.stride(3)) {}
};

ScalarType acc_dtype(ScalarType t) {
  return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// Rows per parallel task so that each task touches ~32k elements.
int64_t grain(int64_t row_len) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row_len, 1)); }

// patches[m, (c, ky, kx)] = pixels[b, c, py * P + ky, px * P + kx], m = (b, py, px).
template <class T, class A>
void patchify(const T* x, const Geometry& g, A* patches) {
  ts::parallel_for(0, g.M, grain(g.K), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const int64_t b = m / g.np, i = m % g.np, py = i / g.pw, px = i % g.pw;
      A* row = patches + m * g.K;
      for (int64_t c = 0; c < g.C; ++c) {
        for (int64_t ky = 0; ky < g.P; ++ky) {
          const T* src = x + b * g.sB + c * g.sC + (py * g.P + ky) * g.sH + px * g.P * g.sW;
          A* dst = row + (c * g.P + ky) * g.P;
          for (int64_t kx = 0; kx < g.P; ++kx) dst[kx] = static_cast<A>(src[kx * g.sW]);
        }
      }
    }
  });
}

// The inverse of patchify into a contiguous (B, C, H, W) tensor (each pixel once).
template <class T, class A>
void unpatchify(const A* patches, const Geometry& g, T* x) {
  ts::parallel_for(0, g.M, grain(g.K), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const int64_t b = m / g.np, i = m % g.np, py = i / g.pw, px = i % g.pw;
      const A* row = patches + m * g.K;
      for (int64_t c = 0; c < g.C; ++c) {
        for (int64_t ky = 0; ky < g.P; ++ky) {
          T* dst = x + ((b * g.C + c) * g.H + py * g.P + ky) * g.W + px * g.P;
          const A* src = row + (c * g.P + ky) * g.P;
          for (int64_t kx = 0; kx < g.P; ++kx) dst[kx] = static_cast<T>(src[kx]);
        }
      }
    }
  });
}

template <class T>
const T* ptr_or_null(const std::optional<Tensor>& t) {
  return t.has_value() ? static_cast<const T*>(t->const_data_ptr()) : nullptr;
}

Tensor empty_like_shape(const Tensor& like, std::vector<int64_t> sizes, ScalarType dtype) {
  return ts::new_empty(like, sizes, dtype);
}

// A new tensor (never a view or the input itself): op outputs must not alias each other.
Tensor cast_copy(const Tensor& t, ScalarType dtype) {
  return ts::to(t, dtype, std::nullopt, std::nullopt, std::nullopt, /*non_blocking=*/false,
                /*copy=*/true);
}

}  // namespace

Tensor patch_embed_forward(const Tensor& pixels, const Tensor& weight,
                           const std::optional<Tensor>& bias, const std::optional<Tensor>& cls,
                           const std::optional<Tensor>& pos) {
  const Geometry g(pixels, weight);
  const int64_t off = cls.has_value() ? 1 : 0, R = g.np + off;
  const ScalarType acc = acc_dtype(pixels.scalar_type());
  Tensor out = empty_like_shape(pixels, {g.B, R, g.D}, pixels.scalar_type());
  if (g.B == 0 || g.D == 0) return out;

  Tensor patches = empty_like_shape(pixels, {g.M, g.K}, acc);
  const Tensor w = ts::to(ts::reshape(weight, {g.D, g.K}), acc);
  dispatch_floating(pixels.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    patchify(static_cast<const T*>(pixels.const_data_ptr()), g, static_cast<A*>(patches.mutable_data_ptr()));
  });
  const Tensor y = ts::matmul(patches, ts::transpose(w, 0, 1));  // (M, D)

  dispatch_floating(pixels.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const A* yp = static_cast<const A*>(y.const_data_ptr());
    const T* bp = ptr_or_null<T>(bias);
    const T* cp = ptr_or_null<T>(cls);
    const T* pp = ptr_or_null<T>(pos);
    T* op = static_cast<T*>(out.mutable_data_ptr());
    const int64_t D = g.D, np = g.np;
    ts::parallel_for(0, g.B * R, grain(D), [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const int64_t b = e / R, j = e % R;
        const T* pj = pp ? pp + j * D : nullptr;
        T* o = op + e * D;
        if (off && j == 0) {
          for (int64_t d = 0; d < D; ++d) {
            A v = static_cast<A>(cp[d]);
            if (pj) v += static_cast<A>(pj[d]);
            o[d] = static_cast<T>(v);
          }
          continue;
        }
        const A* yr = yp + (b * np + j - off) * D;
        for (int64_t d = 0; d < D; ++d) {
          A v = yr[d];
          if (bp) v += static_cast<A>(bp[d]);
          if (pj) v += static_cast<A>(pj[d]);
          o[d] = static_cast<T>(v);
        }
      }
    });
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> patch_embed_backward(
    const Tensor& grad_out, const Tensor& pixels, const Tensor& weight, bool has_cls,
    bool need_pixels, bool need_weight, bool need_bias, bool need_cls, bool need_pos) {
  const Geometry g(pixels, weight);
  const int64_t off = has_cls ? 1 : 0, R = g.np + off, D = g.D;
  const ScalarType dtype = pixels.scalar_type(), acc = acc_dtype(dtype);
  // Outputs not asked for are distinct empty tensors (outputs must not alias each other).
  auto none = [&]() { return empty_like_shape(pixels, {0}, dtype); };
  Tensor grad_pixels = none(), grad_weight = none(), grad_bias = none(), grad_cls = none(),
         grad_pos = none();

  dispatch_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const T* gp = static_cast<const T*>(grad_out.const_data_ptr());

    if (need_bias || need_cls || need_pos) {
      // sums[j, d] = sum_b grad_out[b, j, d], summed in batch order.
      Tensor sums = empty_like_shape(pixels, {R, D}, acc);
      A* s = static_cast<A*>(sums.mutable_data_ptr());
      ts::parallel_for(0, R, grain(D * std::max<int64_t>(g.B, 1)), [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) {
          A* sj = s + j * D;
          std::fill(sj, sj + D, A(0));
          for (int64_t b = 0; b < g.B; ++b) {
            const T* src = gp + (b * R + j) * D;
            for (int64_t d = 0; d < D; ++d) sj[d] += static_cast<A>(src[d]);
          }
        }
      });
      if (need_pos) grad_pos = cast_copy(sums, dtype);
      if (need_cls && has_cls) grad_cls = cast_copy(ts::select(sums, 0, 0), dtype);
      if (need_bias) {
        Tensor bias_sum = empty_like_shape(pixels, {D}, acc);
        A* bs = static_cast<A*>(bias_sum.mutable_data_ptr());
        std::fill(bs, bs + D, A(0));
        for (int64_t j = off; j < R; ++j) {
          for (int64_t d = 0; d < D; ++d) bs[d] += s[j * D + d];
        }
        grad_bias = cast_copy(bias_sum, dtype);
      }
    }
    if (!need_pixels && !need_weight) return;

    // G: the patch rows of grad_out as an (M, D) matrix in the accumulation type.
    Tensor G = empty_like_shape(pixels, {g.M, D}, acc);
    A* Gp = static_cast<A*>(G.mutable_data_ptr());
    ts::parallel_for(0, g.M, grain(D), [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const int64_t b = m / g.np, i = m % g.np;
        const T* src = gp + (b * R + off + i) * D;
        for (int64_t d = 0; d < D; ++d) Gp[m * D + d] = static_cast<A>(src[d]);
      }
    });

    if (need_pixels) {
      grad_pixels = empty_like_shape(pixels, {g.B, g.C, g.H, g.W}, dtype);
      const Tensor w = ts::to(ts::reshape(weight, {D, g.K}), acc);
      const Tensor gpatch = ts::matmul(G, w);  // (M, K)
      unpatchify(static_cast<const A*>(gpatch.const_data_ptr()), g,
                 static_cast<T*>(grad_pixels.mutable_data_ptr()));
    }
    if (need_weight) {
      Tensor patches = empty_like_shape(pixels, {g.M, g.K}, acc);
      patchify(static_cast<const T*>(pixels.const_data_ptr()), g,
               static_cast<A*>(patches.mutable_data_ptr()));
      const Tensor gw = ts::matmul(ts::transpose(G, 0, 1), patches);  // (D, K)
      grad_weight = ts::reshape(cast_copy(gw, dtype), {D, g.C, g.P, g.P});
    }
  });
  return {grad_pixels, grad_weight, grad_bias, grad_cls, grad_pos};
}

}  // namespace taskkernels::cpu
