// Patch embedding backward. With G the (B * Np, D) patch rows of grad_out:
//   grad_pixels = col2im(G @ W)           one GEMM; each pixel written once (kernel = stride)
//   grad_weight = G^T @ patches(pixels)   split-K GEMM into fp32 partials, summed in a fixed order
//   grad_pos[j] = sum_b grad_out[b, j]    grad_cls = grad_pos[0], grad_bias = sum of patch rows
// No atomics anywhere: two runs give the same bits.
#include <algorithm>

#include "kernels/patch_embed/patch_embed.cuh"

namespace taskkernels::cuda {
namespace {

constexpr int kThreads = 256;

inline size_t align256(size_t x) { return (x + 255) & ~size_t(255); }

// sums[j, d] = sum_b g[b, j, d]; also writes grad_pos and grad_cls when asked.
template <class T, class Acc>
__global__ void column_sum_kernel(const T* __restrict__ g, int64_t B, int64_t RD, int64_t D,
                                  Acc* __restrict__ sums, T* __restrict__ grad_pos,
                                  T* __restrict__ grad_cls, bool has_cls) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= RD) return;
  Acc s = Acc(0);
  for (int64_t b = 0; b < B; ++b) s += Num<T>::to_acc(g[b * RD + e]);
  sums[e] = s;
  if (grad_pos) grad_pos[e] = Num<T>::from_acc(s);
  if (grad_cls && has_cls && e < D) grad_cls[e] = Num<T>::from_acc(s);
}

// grad_bias[d] = sum over the patch rows j >= off of sums[j, d].
template <class T, class Acc>
__global__ void bias_sum_kernel(const Acc* __restrict__ sums, int64_t R, int64_t off, int64_t D,
                                T* __restrict__ grad_bias) {
  const int64_t d = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  Acc s = Acc(0);
  for (int64_t j = off; j < R; ++j) s += sums[j * D + d];
  grad_bias[d] = Num<T>::from_acc(s);
}

// out[e] = sum_z partial[z][e], z in order.
template <class T, class Acc>
__global__ void split_sum_kernel(const Acc* __restrict__ partial, int64_t splits, int64_t count,
                                 T* __restrict__ out) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= count) return;
  Acc s = Acc(0);
  for (int64_t z = 0; z < splits; ++z) s += partial[z * count + e];
  out[e] = Num<T>::from_acc(s);
}

inline unsigned blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

// Writes G @ W straight into the pixel layout: row (b, py, px), column (ch, ky, kx).
template <class T>
struct PixelScatterEpilogue {
  T* grad;  // (B, C, H, W) contiguous
  int64_t np, pw, P, PP, C, H, W;

  template <class Acc>
  __device__ __forceinline__ void operator()(int64_t m, int64_t n, Acc v, int) const {
    const int64_t b = m / np, i = m - b * np, py = i / pw, px = i - py * pw;
    const int64_t ch = n / PP, rem = n - ch * PP, ky = rem / P, kx = rem - ky * P;
    grad[((b * C + ch) * H + py * P + ky) * W + px * P + kx] = Num<T>::from_acc(v);
  }
};

template <class Acc>
struct PartialEpilogue {
  Acc* partial;  // (splits, M, N)
  int64_t M, N;
  template <class V>
  __device__ __forceinline__ void operator()(int64_t m, int64_t n, V v, int z) const {
    partial[(int64_t(z) * M + m) * N + n] = Acc(v);
  }
};

int sm_count() {
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) == cudaSuccess) {
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  }
  return std::max(sms, 1);
}

// How many K chunks grad_weight's GEMM uses: enough blocks for two waves, each chunk at least
// 8 tiles of K deep.
template <class T, bool TC>
int64_t weight_splits(const PatchEmbedShape& s) {
  using Cfg = TileConfig<T, TC>;
  const int64_t K = s.B * s.num_patches();
  if (K == 0) return 0;
  const int64_t tiles = ((s.D + Cfg::BM - 1) / Cfg::BM) * ((s.patch_len() + Cfg::BN - 1) / Cfg::BN);
  const int64_t want = (2 * int64_t(sm_count()) + tiles - 1) / tiles;
  const int64_t most = std::max<int64_t>(1, K / (8 * Cfg::BK));
  const int64_t splits = std::clamp<int64_t>(want, 1, std::min<int64_t>(most, 65535));
  // Recount after rounding the chunk up to whole tiles, so that no chunk is empty.
  const int64_t chunk = k_chunk_for<T, TC>(K, splits);
  return (K + chunk - 1) / chunk;
}

struct Workspace {
  size_t sums_offset, sums_bytes, partial_offset, partial_bytes;
  size_t total() const { return partial_offset + partial_bytes; }
};

template <class T, bool TC>
Workspace workspace_layout(const PatchEmbedBackward& p) {
  using Acc = typename Num<T>::acc;
  const PatchEmbedShape& s = p.s;
  Workspace w{};
  if (p.grad_bias || p.grad_cls || p.grad_pos) w.sums_bytes = align256(sizeof(Acc) * s.rows() * s.D);
  w.partial_offset = w.sums_bytes;
  if (p.grad_weight) {
    w.partial_bytes = align256(sizeof(Acc) * weight_splits<T, TC>(s) * s.D * s.patch_len());
  }
  return w;
}

struct WorkspaceSize {
  const PatchEmbedBackward& p;
  size_t* bytes;
  template <class T, bool TC>
  cudaError_t operator()() const {
    *bytes = workspace_layout<T, TC>(p).total();
    return cudaSuccess;
  }
};

struct LaunchBackward {
  const PatchEmbedBackward& p;
  cudaStream_t stream;

  template <class T, bool TC>
  cudaError_t operator()() const {
    using Acc = typename Num<T>::acc;
    const PatchEmbedShape& s = p.s;
    const Workspace ws = workspace_layout<T, TC>(p);
    char* base = static_cast<char*>(p.workspace);
    const int64_t np = s.num_patches(), R = s.rows(), D = s.D, K = s.patch_len();
    const int64_t M = s.B * np, off = s.has_cls ? 1 : 0;
    const T* g = static_cast<const T*>(p.grad_out);
    cudaError_t err = cudaSuccess;

    if (p.grad_bias || p.grad_cls || p.grad_pos) {
      Acc* sums = reinterpret_cast<Acc*>(base + ws.sums_offset);
      if (R * D > 0) {
        if ((err = launch_kernel(column_sum_kernel<T, Acc>, blocks_for(R * D), kThreads, 0, stream, g, s.B, R * D, D, sums, static_cast<T*>(p.grad_pos), static_cast<T*>(p.grad_cls), s.has_cls)) != cudaSuccess) return err;
      }
      if (p.grad_bias && D > 0) {
        if ((err = launch_kernel(bias_sum_kernel<T, Acc>, blocks_for(D), kThreads, 0, stream, sums, R, off, D, static_cast<T*>(p.grad_bias))) != cudaSuccess) return err;
      }
    }

    // G: the patch rows of grad_out, (M, D) through a row remap that skips [CLS].
    const RowsOperand<T> G{g, M, D, np, R * D, off, D};

    if (p.grad_pixels && M > 0) {
      // (M, K) = G (M, D) @ W (D, K); W read along its rows (n).
      const RowsOperand<T> w{static_cast<const T*>(p.weight), D, K, D, 0, 0, K};
      const PixelScatterEpilogue<T> epi{static_cast<T*>(p.grad_pixels), np, s.W / s.P, s.P,
                                        s.P * s.P, s.C, s.H, s.W};
      err = launch_tile_gemm<T, TC, /*A_K=*/true, /*B_K=*/false>(
          M, K, D, k_chunk_for<T, TC>(D, 1), 1, G, w, epi, stream);
      if (err != cudaSuccess) return err;
    }

    if (p.grad_weight && D * K > 0) {
      const int64_t splits = weight_splits<T, TC>(s);
      if (splits == 0) {  // empty batch: nothing to reduce
        return cudaMemsetAsync(p.grad_weight, 0, sizeof(T) * D * K, stream);
      }
      // (D, K) = G^T (D, M) @ patches (M, K): G is read along d (= m here), patches along K.
      Acc* partial = reinterpret_cast<Acc*>(base + ws.partial_offset);
      const auto patches = PatchOperand<T>::make(s, p.pixels);
      err = launch_tile_gemm<T, TC, /*A_K=*/false, /*B_K=*/false>(
          D, K, M, k_chunk_for<T, TC>(M, splits), splits, G, patches,
          PartialEpilogue<Acc>{partial, D, K}, stream);
      if (err != cudaSuccess) return err;
      if ((err = launch_kernel(split_sum_kernel<T, Acc>, blocks_for(D * K), kThreads, 0, stream, partial, splits, D * K, static_cast<T*>(p.grad_weight))) != cudaSuccess) return err;
    }
    return cudaSuccess;
  }
};

}  // namespace

size_t patch_embed_backward_workspace(const PatchEmbedBackward& p) {
  size_t bytes = 0;
  dispatch_dtype(p.s, WorkspaceSize{p, &bytes});
  return bytes;
}

cudaError_t patch_embed_backward(const PatchEmbedBackward& p, cudaStream_t stream) {
  return dispatch_dtype(p.s, LaunchBackward{p, stream});
}

}  // namespace taskkernels::cuda
