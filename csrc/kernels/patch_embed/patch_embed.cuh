// Pieces shared by the patch embedding kernels: the im2col view of the pixels, and the dtype /
// compute-path dispatch.
#pragma once

#include "kernels/common/tile_gemm.cuh"
#include "kernels/patch_embed/patch_embed.h"

namespace taskkernels::cuda {

// The (B * Np, C * P * P) patch matrix, read straight from the pixels (any strides):
// row r = (b, py, px), column c = (ch, ky, kx). Nothing is materialized; a 16-byte vector is
// read when a run of pixels within one patch row is contiguous and aligned.
//
// The tile GEMM copies it with cp.async (vectorizable()) when every 16-byte run it asks for is
// contiguous and aligned: unit stride along W, the patch width a multiple of the vector (so a run
// of V columns that starts at a multiple of V stays inside one patch row), and every other
// stride and the base 16-byte aligned. That holds for contiguous NCHW images with P % 8 == 0
// (fp16/bf16; P % 4 for fp32, P % 2 for fp64) and W a multiple of the vector, e.g. ViT's
// 224 x 224 / 16. Channels-last or W-strided pixels, odd patch sizes or unaligned views take the
// element gather (through registers, still overlapped with the math).
template <class T>
struct PatchOperand {
  const T* ptr;
  int64_t rows, cols;
  int64_t np, pw, P, PP;
  int64_t sB, sC, sH, sW;

  __device__ __forceinline__ const T* address(int64_t r, int64_t c, int64_t* kx) const {
    const int64_t b = r / np, i = r - b * np;
    const int64_t py = i / pw, px = i - py * pw;
    const int64_t ch = c / PP, rem = c - ch * PP;
    const int64_t ky = rem / P;
    *kx = rem - ky * P;
    return ptr + b * sB + ch * sC + (py * P + ky) * sH + (px * P + *kx) * sW;
  }

  // Element (r, c) is at ptr + row_part(r) + col_part(c): the patch's corner, the pixel in it.
  __device__ __forceinline__ int64_t row_part(int64_t r) const {
    const int64_t b = r / np, i = r - b * np;
    const int64_t py = i / pw, px = i - py * pw;
    return b * sB + py * P * sH + px * P * sW;
  }
  __device__ __forceinline__ int64_t col_part(int64_t c) const {
    const int64_t ch = c / PP, rem = c - ch * PP;
    const int64_t ky = rem / P, kx = rem - ky * P;
    return ch * sC + ky * sH + kx * sW;
  }
  __device__ __forceinline__ const T* at(int64_t r, int64_t c) const { return ptr + row_part(r) + col_part(c); }

  __device__ __forceinline__ bool vectorizable() const {
    constexpr int64_t V = 16 / sizeof(T);
    const int64_t B = np > 0 ? rows / np : 0, C = cols / PP;
    return sW == 1 && P % V == 0 && sH % V == 0 && (C <= 1 || sC % V == 0) && (B <= 1 || sB % V == 0) &&
           aligned16(ptr);
  }

  template <int V>
  __device__ __forceinline__ void load(int64_t r, int64_t c, T* dst) const {
    if (r >= rows || c >= cols) return fill_zero<V>(dst);
    int64_t kx;
    const T* p = address(r, c, &kx);
    if (sW == 1 && kx + V <= P && aligned16(p)) return load16(p, dst);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      int64_t unused;
      dst[j] = (c + j < cols) ? *address(r, c + j, &unused) : Num<T>::zero();
    }
  }

  static PatchOperand make(const PatchEmbedShape& s, const void* pixels) {
    return PatchOperand{static_cast<const T*>(pixels), s.B * s.num_patches(), s.patch_len(),
                        s.num_patches(), s.W / s.P, s.P, s.P * s.P, s.sB, s.sC, s.sH, s.sW};
  }
};

// Calls f.template operator()<T, TC>() with the storage type and compute path for s:
// fp16/bf16 and (allow_tf32) fp32 on tensor cores, otherwise exact FMAs.
template <class F>
cudaError_t dispatch_dtype(const PatchEmbedShape& s, F&& f) {
  switch (s.dtype) {
    case DType::kHalf: return f.template operator()<__half, true>();
    case DType::kBFloat16: return f.template operator()<__nv_bfloat16, true>();
    case DType::kFloat:
      return s.allow_tf32 ? f.template operator()<float, true>() : f.template operator()<float, false>();
    case DType::kDouble: return f.template operator()<double, false>();
  }
  return cudaErrorInvalidValue;
}

}  // namespace taskkernels::cuda
