// Kernels that test the emulated GPU itself (tests/test_emulator.py): each breaks one rule a GPU
// enforces, or exercises one emulated instruction against a known answer. Built only into the
// emulated kernels library; written as ordinary CUDA, through the same launch and PTX helpers as
// the real kernels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "kernels/common/launch.cuh"
#include "kernels/common/ptx.cuh"

namespace taskkernels::cuda {
namespace {

// Thread 0 writes, the others read at once: a race (no __syncthreads between).
__global__ void missing_barrier(float* out) {
  __shared__ float x[32];
  if (threadIdx.x == 0) x[0] = 1.f;
  out[threadIdx.x] = x[0];
}

// The same with the barrier: no race, every thread reads 1.
__global__ void with_barrier(float* out) {
  __shared__ float x[32];
  if (threadIdx.x == 0) x[0] = 1.f;
  __syncthreads();
  out[threadIdx.x] = x[0];
}

// Half the block waits at one barrier, half at another.
__global__ void divergent_barrier(float* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

// Half the block leaves, the rest waits at a barrier.
__global__ void exit_before_barrier(float* out) {
  if (threadIdx.x >= 32) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

// Lane 0 leaves; the rest shuffles with a full mask.
__global__ void shuffle_missing_lane(float* out) {
  if (threadIdx.x == 0) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, float(threadIdx.x), 1);
}

// Shuffles and votes on a full warp: out[l] = value of lane l ^ 5, then the ballot of odd lanes,
// then the sum over the warp by xor-reduction.
__global__ void warp_ops(float* out) {
  const int l = threadIdx.x;
  out[l] = __shfl_xor_sync(0xffffffffu, float(l), 5);
  out[32 + l] = float(__ballot_sync(0xffffffffu, l & 1) == 0xaaaaaaaau);
  float s = float(l);
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  out[64 + l] = s;
  out[96 + l] = __shfl_sync(0xffffffffu, float(l), 31 - l);
  out[128 + l] = __shfl_down_sync(0xffffffffu, float(l), 3);
  out[160 + l] = float(__syncthreads_count(l < 10));
}

// Reads shared memory before any thread wrote it (the write comes after): the emulator's poison
// (NaN), where a device would give whatever the last block left there.
__global__ void read_unwritten(float* out) {
  __shared__ float x[32];
  out[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  x[threadIdx.x] = 0.f;
}

__global__ void uses_dynamic(float* out) {
  float* s = reinterpret_cast<float*>(dynamic_smem());
  s[threadIdx.x] = float(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// mma.sync m16n8k16 (f16): A 16x16 and B 16x8 from `in` (row-major A, then B k-major), D = A B.
__global__ void mma_f16(const float* in, float* out) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  auto pack = [](float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    uint32_t u;
    std::memcpy(&u, &h, 4);
    return u;
  };
  const float* A = in;
  const float* B = in + 256;
  uint32_t a[4];
  for (int r = 0; r < 4; ++r) {
    const int row = g + (r & 1) * 8, col = 2 * t + (r >> 1) * 8;
    a[r] = pack(A[row * 16 + col], A[row * 16 + col + 1]);
  }
  const uint32_t b0 = pack(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
  const uint32_t b1 = pack(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  ptx::SM80_16x8x16_F32F16F16F32_TN::fma(c, a, b0, b1);
  out[g * 8 + 2 * t] = c[0];
  out[g * 8 + 2 * t + 1] = c[1];
  out[(g + 8) * 8 + 2 * t] = c[2];
  out[(g + 8) * 8 + 2 * t + 1] = c[3];
}

// WMMA 16x16x16 f16: D = A B with A, B from `in` (row-major), stored row-major to out.
__global__ void wmma_f16(const float* in, float* out) {
  namespace wmma = nvcuda::wmma;
  __shared__ __align__(32) __half a[256], b[256];
  __shared__ __align__(32) float d[256];
  for (int i = threadIdx.x; i < 256; i += 32) a[i] = __float2half_rn(in[i]), b[i] = __float2half_rn(in[256 + i]);
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 0.f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(d, fc, 16, wmma::mem_row_major);
  __syncwarp();
  for (int i = threadIdx.x; i < 256; i += 32) out[i] = d[i];
}

// The same, but writing the accumulator as if lane l held row l / 2 (a layout WMMA never promises).
__global__ void wmma_assumed_layout(const float* in, float* out) {
  namespace wmma = nvcuda::wmma;
  __shared__ __align__(32) __half a[256], b[256];
  for (int i = threadIdx.x; i < 256; i += 32) a[i] = __float2half_rn(in[i]), b[i] = __float2half_rn(in[256 + i]);
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 0.f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(fc, fa, fb, fc);
  for (int e = 0; e < fc.num_elements; ++e) out[(threadIdx.x / 2) * 16 + (threadIdx.x % 2) * 8 + e] = fc.x[e];
}

// A WMMA load from a pointer that is not 256-bit aligned.
__global__ void wmma_misaligned(const float* in, float* out) {
  namespace wmma = nvcuda::wmma;
  __shared__ __align__(32) __half a[272];
  for (int i = threadIdx.x; i < 272; i += 32) a[i] = __float2half_rn(1.f);
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, a + 8, 16);
  out[threadIdx.x] = __half2float(fa.x[0]);
}

// ldmatrix: a 4 x 8 x 8 array of 16-bit values m[k][r][c] = 64k + 8r + c; lane 8i + j names row
// (3j + 1) % 8 of matrix 3 - i (so the layout must follow the addresses, not the lanes). Writes
// register i of lane l, as lo + 256 hi, to out[32 i + l]: x4 then x4.trans (Wide), or x2 then
// x2.trans, with the lanes the .x2 forms ignore passing a global address.
template <bool Wide>
__global__ void ldmatrix_layouts(const float* in, float* out) {
  __shared__ __align__(16) uint16_t m[4][8][8];
  const int l = threadIdx.x;
  for (int idx = l; idx < 256; idx += 32) m[idx / 64][(idx / 8) % 8][idx % 8] = uint16_t(idx);
  __syncwarp();
  const void* row = &m[3 - l / 8][(3 * (l % 8) + 1) % 8][0];
  auto put = [&](int reg, uint32_t v) { out[32 * reg + l] = float(v & 0xffffu) + 256.f * float(v >> 16); };
  if constexpr (Wide) {
    uint32_t d[4], t[4];
    ptx::SM75_U32x4_LDSM_N::copy(d, row);
    ptx::SM75_U16x8_LDSM_T::copy(t, row);
    for (int i = 0; i < 4; ++i) put(i, d[i]), put(4 + i, t[i]);
  } else {
    if (l >= 16) row = in;
    uint32_t d[2], t[2];
    ptx::SM75_U32x2_LDSM_N::copy(d, row);
    ptx::SM75_U16x4_LDSM_T::copy(t, row);
    for (int i = 0; i < 2; ++i) put(i, d[i]), put(2 + i, t[i]);
  }
}

// ldmatrix with lane 5's row 8 bytes off (Misaligned) or every row in global memory.
template <bool Misaligned>
__global__ void ldmatrix_bad_address(const float* in, float* out) {
  __shared__ __align__(16) uint16_t m[40][8];
  for (int idx = threadIdx.x; idx < 320; idx += 32) m[idx / 8][idx % 8] = 0;
  __syncwarp();
  const void* row = Misaligned ? static_cast<const void*>(&m[threadIdx.x][threadIdx.x == 5 ? 4 : 0])
                               : static_cast<const void*>(in + 4 * threadIdx.x);
  uint32_t d[4];
  ptx::SM75_U32x4_LDSM_N::copy(d, row);
  out[threadIdx.x] = float(d[0]);
}

__device__ __forceinline__ void copy_bits(float* dst, const float* src) { std::memcpy(dst, src, 16); }

// cp.async groups, 17 threads: thread l copies in[4l..4l+3] into a with source size l (0..16),
// commits, copies in[68 + 4l..] into b (16 bytes), commits, waits until one group is pending and
// writes a (out[0..68)) and b as it is then (out[68..136), still poisoned), then waits for all and
// writes b again (out[136..204)).
__global__ void cp_async_groups(const float* in, float* out) {
  __shared__ __align__(16) float a[17 * 4], b[17 * 4];
  const int l = threadIdx.x;
  ptx::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL::copy(a + 4 * l, in + 4 * l, l);
  ptx::cp_async_commit_group();
  ptx::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL::copy(b + 4 * l, in + 68 + 4 * l, 16);
  ptx::cp_async_commit_group();
  ptx::cp_async_wait_group<1>();
  copy_bits(out + 4 * l, a + 4 * l);
  copy_bits(out + 68 + 4 * l, b + 4 * l);
  ptx::cp_async_wait_group<0>();
  copy_bits(out + 136 + 4 * l, b + 4 * l);
}

// 64 threads each copy 16 bytes into s, wait for them, then read their neighbour's: with a barrier
// after the wait (Mode 0, correct), with none (1), with the barrier before the wait instead (2).
template <int Mode>
__global__ void cp_async_neighbour(const float* in, float* out) {
  __shared__ __align__(16) float s[64 * 4];
  const int l = threadIdx.x;
  ptx::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL::copy(s + 4 * l, in + 4 * l, 16);
  ptx::cp_async_commit_group();
  if (Mode == 2) __syncthreads();
  ptx::cp_async_wait_group<0>();
  if (Mode == 0) __syncthreads();
  const int n = (l + 33) % 64;
  out[l] = s[4 * n];
}

// cp.async operands a device refuses: a destination 8 bytes off, a global destination, a source
// size of 17.
template <int Mode>
__global__ void cp_async_bad(const float* in, float* out) {
  __shared__ __align__(16) float s[40 * 4];
  const int l = threadIdx.x;
  void* dst = Mode == 0 ? static_cast<void*>(s + 4 * l + 2) : Mode == 1 ? static_cast<void*>(out + 4 * l) : s + 4 * l;
  ptx::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL::copy(dst, in + 4 * l, Mode == 2 ? 17 : 16);
  ptx::cp_async_wait_group<0>();
}

__global__ void trivial(float* out) { out[threadIdx.x] = 1.f; }

}  // namespace
}  // namespace taskkernels::cuda

// Runs self-test `name` on `in` (512 floats) and `out` (256 floats); returns the launch's error.
cudaError_t tkemu_selftest(const char* name, const float* in, float* out, cudaStream_t stream) {
  using namespace taskkernels::cuda;
  const std::string n = name;
  if (n == "missing_barrier") return launch_kernel(missing_barrier, 1, 64, 0, stream, out);
  if (n == "with_barrier") return launch_kernel(with_barrier, 1, 64, 0, stream, out);
  if (n == "divergent_barrier") return launch_kernel(divergent_barrier, 1, 64, 0, stream, out);
  if (n == "exit_before_barrier") return launch_kernel(exit_before_barrier, 1, 64, 0, stream, out);
  if (n == "shuffle_missing_lane") return launch_kernel(shuffle_missing_lane, 1, 32, 0, stream, out);
  if (n == "warp_ops") return launch_kernel(warp_ops, 1, 32, 0, stream, out);
  if (n == "read_unwritten") return launch_kernel(read_unwritten, 1, 32, 0, stream, out);
  if (n == "dynamic_smem") return launch_kernel(uses_dynamic, 1, 64, 64 * sizeof(float), stream, out);
  if (n == "dynamic_smem_over_48k") return launch_kernel(uses_dynamic, 1, 64, 49 * 1024, stream, out);
  if (n == "dynamic_smem_opt_in") {
    if (cudaError_t e = cudaFuncSetAttribute(uses_dynamic, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
        e != cudaSuccess)
      return e;
    return launch_kernel(uses_dynamic, 1, 64, 64 * 1024, stream, out);
  }
  if (n == "opt_in_over_227k")
    return cudaFuncSetAttribute(uses_dynamic, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024);
  if (n == "threads_1025") return launch_kernel(trivial, 1, 1025, 0, stream, out);
  if (n == "grid_y_65536") return launch_kernel(trivial, dim3(1, 65536, 1), 32, 0, stream, out);
  if (n == "wrong_stream") return launch_kernel(trivial, 1, 32, 0, reinterpret_cast<cudaStream_t>(uintptr_t(0xbad)), out);
  if (n == "mma_f16") return launch_kernel(mma_f16, 1, 32, 0, stream, in, out);
  if (n == "wmma_f16") return launch_kernel(wmma_f16, 1, 32, 0, stream, in, out);
  if (n == "wmma_assumed_layout") return launch_kernel(wmma_assumed_layout, 1, 32, 0, stream, in, out);
  if (n == "wmma_misaligned") return launch_kernel(wmma_misaligned, 1, 32, 0, stream, in, out);
  if (n == "ldmatrix_x4") return launch_kernel(ldmatrix_layouts<true>, 1, 32, 0, stream, in, out);
  if (n == "ldmatrix_x2") return launch_kernel(ldmatrix_layouts<false>, 1, 32, 0, stream, in, out);
  if (n == "ldmatrix_misaligned") return launch_kernel(ldmatrix_bad_address<true>, 1, 32, 0, stream, in, out);
  if (n == "ldmatrix_global") return launch_kernel(ldmatrix_bad_address<false>, 1, 32, 0, stream, in, out);
  if (n == "cp_async_groups") return launch_kernel(cp_async_groups, 1, 17, 0, stream, in, out);
  if (n == "cp_async_barrier_after_wait") return launch_kernel(cp_async_neighbour<0>, 1, 64, 0, stream, in, out);
  if (n == "cp_async_no_barrier") return launch_kernel(cp_async_neighbour<1>, 1, 64, 0, stream, in, out);
  if (n == "cp_async_barrier_before_wait") return launch_kernel(cp_async_neighbour<2>, 1, 64, 0, stream, in, out);
  if (n == "cp_async_misaligned") return launch_kernel(cp_async_bad<0>, 1, 32, 0, stream, in, out);
  if (n == "cp_async_global_destination") return launch_kernel(cp_async_bad<1>, 1, 32, 0, stream, in, out);
  if (n == "cp_async_source_size_17") return launch_kernel(cp_async_bad<2>, 1, 32, 0, stream, in, out);
  return cudaErrorInvalidValue;
}
