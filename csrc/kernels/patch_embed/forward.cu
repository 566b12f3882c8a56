// Patch embedding forward: one implicit GEMM (patches x weight^T) whose epilogue adds the bias
// and the position embedding and also writes the [CLS] rows, so the output is written once.
#include "kernels/patch_embed/patch_embed.cuh"

namespace taskkernels::cuda {
namespace {

template <class T>
struct ForwardEpilogue {
  T* out;
  const T* bias;
  const T* cls;
  const T* pos;
  int64_t np, R, off, D;

  template <class Acc>
  __device__ __forceinline__ void operator()(int64_t m, int64_t n, Acc v, int) const {
    const int64_t b = m / np, i = m - b * np;
    Acc x = v;
    if (bias) x += Num<T>::to_acc(bias[n]);
    if (pos) x += Num<T>::to_acc(pos[(off + i) * D + n]);
    out[(b * R + off + i) * D + n] = Num<T>::from_acc(x);
    if (off && i == 0) {  // the block that owns image b's first patch writes its [CLS] row
      Acc c = Num<T>::to_acc(cls[n]);
      if (pos) c += Num<T>::to_acc(pos[n]);
      out[b * R * D + n] = Num<T>::from_acc(c);
    }
  }
};

struct LaunchForward {
  const PatchEmbedForward& p;
  cudaStream_t stream;

  template <class T, bool TC>
  cudaError_t operator()() const {
    const PatchEmbedShape& s = p.s;
    const int64_t M = s.B * s.num_patches(), N = s.D, K = s.patch_len();
    const auto a = PatchOperand<T>::make(s, p.pixels);
    // B(k, n) = weight[n][k]: rows of the (D, K) weight, read along k.
    const RowsOperand<T> w{static_cast<const T*>(p.weight), N, K, N, 0, 0, K};
    const ForwardEpilogue<T> epi{static_cast<T*>(p.out), static_cast<const T*>(p.bias),
                                 static_cast<const T*>(p.cls), static_cast<const T*>(p.pos),
                                 s.num_patches(), s.rows(), s.has_cls ? 1 : 0, s.D};
    return launch_tile_gemm<T, TC, /*A_K=*/true, /*B_K=*/true>(
        M, N, K, k_chunk_for<T, TC>(K, 1), 1, a, w, epi, stream);
  }
};

}  // namespace

cudaError_t patch_embed_forward(const PatchEmbedForward& p, cudaStream_t stream) {
  if (p.s.B == 0 || p.s.D == 0) return cudaSuccess;
  return dispatch_dtype(p.s, LaunchForward{p, stream});
}

}  // namespace taskkernels::cuda
