#!/usr/bin/env python3
"""Mutation testing of the CUDA kernels on the emulated GPU.

Each mutation below is one small, plausible bug put into a kernel (a barrier removed, a bound off
by one, a fragment row or a stride swapped, a shuffle offset or mask wrong, a dropout or mask test
inverted, an accumulator started at 1, a cudaFuncSetAttribute opt-in dropped, ...). For each, the
script builds the emulated module with the bug and runs a small pytest selection that reaches the
mutated code, under the checker that should notice it: `plain` (wrong results, barrier divergence,
launch limits such as > 48 KB of dynamic shared memory without the opt-in, shuffle masks, reads
of poisoned shared memory) or `race` (the shared-memory race detector). The result is how many of
the bugs the emulated suite catches.

The working tree is never touched: CMakeLists.txt, pyproject.toml and csrc/ are copied into a
scratch directory (default /tmp/tk-mutate/src, --work), which gets its own CMake build
(<work>/build, checks plain and race). Per mutation: the snippet is replaced in the copy (it must
occur exactly once, or the script stops), `cmake --build <build> --target _C_<check>` rebuilds
what depends on it, the selection runs from the repository's tests/ with
TASKKERNELS_EMULATOR=<build>/<check>, and the file is restored. Mutations run grouped by check
(plain first, then race) so that restoring a file costs one extra recompile per check, not one
per mutation.

Outcomes: caught (pytest failed, the process crashed, or it ran past --timeout, as a hung kernel
would on a device), survived (the selection passed), n/a (the mutated kernel did not build:
reported apart, not counted in the catch rate), error (pytest could not run the selection: no
test selected, a usage error; fix the mutation's selection).

Usage (from the repository root):

    .venv/bin/python scripts/emu_mutate.py --list             # the mutations (snippets checked)
    .venv/bin/python scripts/emu_mutate.py                    # all of them (tens of minutes)
    .venv/bin/python scripts/emu_mutate.py --only simt-causal-shift,mma-a-frag-row
    .venv/bin/python scripts/emu_mutate.py --only bwd-sync-query-tile --json /tmp/mut.json
    .venv/bin/python scripts/emu_mutate.py --baseline --only ...  # selections on the unmutated build

--baseline runs each selection once on the unmutated build first; a mutation whose selection
already fails there is reported as `baseline-fails` and not mutated (its "caught" would mean
nothing). EMU_SEED and EMU_WORKERS pass through to the emulator; -v shows pytest's output.

Standard library only.
"""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHECKS = ("plain", "race")
PYTEST_FLAGS = ["-m", "cuda", "-x", "-q", "-p", "no:cacheprovider"]

ATT = "csrc/kernels/attention/"
T_ATT = ["tests/test_attention.py"]
T_MASKED = ["tests/test_masked_attention.py"]
T_CTC = ["tests/test_ctc_loss.py"]
T_LSA = ["tests/test_linear_sum_assignment.py"]
T_DW = ["tests/test_depthwise_conv2d.py"]
T_PE = ["tests/test_patch_embed.py"]


@dataclasses.dataclass(frozen=True)
class Mutation:
    id: str
    file: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    replacement: str
    bug: str  # one line: the class of bug
    check: str  # plain | race
    k: str  # pytest -k expression
    tests: list  # test files

    def pytest_args(self) -> list:
        return [*self.tests, "-k", self.k, *PYTEST_FLAGS]


M = Mutation
MUTATIONS = [
    # ---- attention_simt.cu: one warp per query row (fp32/fp64, and fp16/bf16 with Nq < 16) -----
    M("simt-warp-max-offset", ATT + "attention_simt.cu",
      "  for (int o = 16; o > 0; o >>= 1) x = fmax(x, __shfl_xor_sync(0xffffffffu, x, o));",
      "  for (int o = 8; o > 0; o >>= 1) x = fmax(x, __shfl_xor_sync(0xffffffffu, x, o));",
      "wrong shuffle offset: the warp max starts at xor 8 and never crosses the half warps",
      "plain", "test_matches_reference and float32 and 17", T_ATT),
    M("simt-warp-sum-mask", ATT + "attention_simt.cu",
      "  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);",
      "  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0x0000ffffu, x, o);",
      "wrong shuffle member mask: half the warp named, all of it calling",
      "plain", "test_matches_reference and float32 and 17", T_ATT),
    M("simt-causal-shift", ATT + "attention_simt.cu",
      "  const int64_t shift = p.Nk - p.Nq;",
      "  const int64_t shift = p.Nq - p.Nk;",
      "causal shift sign flipped (end-aligned mask becomes start-aligned the wrong way)",
      "plain", "test_matches_reference and causal and float32 and 130 and 80", T_ATT),
    M("simt-kend-check", ATT + "attention_simt.cu",
      "    if (j < kend && !((chunk_blocked >> lane) & 1u)) {",
      "    if (!((chunk_blocked >> lane) & 1u)) {",
      "bounds check `j < kend` dropped: lanes past the causal limit / Nk take part",
      "plain", "test_matches_reference and causal and float32 and 17", T_ATT),
    M("simt-mask-bit-inverted", ATT + "attention_simt.cu",
      "    if (j < kend && !((chunk_blocked >> lane) & 1u)) {",
      "    if (j < kend && ((chunk_blocked >> lane) & 1u)) {",
      "per-query mask bit inverted (blocked keys attended, visible ones hidden)",
      "plain", "test_matches_reference and 0.5 and float32 and 37", T_MASKED),
    M("simt-dropout-inverted", ATT + "attention_simt.cu",
      "               ? pj * keep_scale\n               : A(0);",
      "               ? A(0)\n               : pj * keep_scale;",
      "dropout keep logic inverted in the forward",
      "plain", "test_dropout_matches_reference_given_the_mask and plain and dtype1", T_ATT),
    M("simt-online-rescale", ATT + "attention_simt.cu",
      "    l = l * alpha + warp_sum(pj);",
      "    l = l + warp_sum(pj);",
      "online softmax: the running normalizer is not rescaled when the max grows",
      "plain", "test_matches_reference and full and float32 and 130 and 80", T_ATT),
    M("simt-early-return", ATT + "attention_simt.cu",
      "  if (i >= p.Nq) return;  // the whole warp leaves",
      "  if (i > p.Nq) return;  // the whole warp leaves",
      "early return off by one: the warp of row Nq computes and writes into the next head",
      "plain", "test_matches_reference and full and float32 and 17", T_ATT),
    # ---- attention_mma.cu: tensor-core forward (fp16/bf16, Nq >= 16, D <= 128) ---------------
    M("mma-a-frag-row", ATT + "attention_mma.cu",
      "      qa[ks][1] = ld_pair(q0 + 8 * LD + ks * 16);",
      "      qa[ks][1] = ld_pair(q0 + ks * 16);",
      "mma A fragment: register a1 loaded from row g instead of g + 8",
      "plain", "test_matches_reference and full and float16 and not bfloat16 and 17", T_ATT),
    M("mma-b-frag-lane", ATT + "attention_mma.cu",
      "      const T* k0 = Ks + (nt * 8 + g) * LD + 2 * t;",
      "      const T* k0 = Ks + (nt * 8 + g) * LD + 2 * t + 1;",
      "mma B fragment: k pair read from column 2t + 1 instead of 2t",
      "plain", "test_matches_reference and full and float16 and not bfloat16 and 17", T_ATT),
    M("mma-pv-col-swap", ATT + "attention_mma.cu",
      "ld_col_pair(vp, vp + LD), ld_col_pair(vp + 8 * LD, vp + 9 * LD));",
      "ld_col_pair(vp + LD, vp), ld_col_pair(vp + 8 * LD, vp + 9 * LD));",
      "mma B fragment of P V: the two k rows of register b0 swapped",
      "plain", "test_matches_reference and full and bfloat16 and 17", T_ATT),
    M("mma-quad-max-offset", ATT + "attention_mma.cu",
      "      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));",
      "      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));",
      "wrong shuffle offset: the row max mixes lane g's quad with row g ^ 1's",
      "plain", "test_matches_reference and full and float16 and not bfloat16 and 17", T_ATT),
    M("mma-causal-diagonal", ATT + "attention_mma.cu",
      "(p.causal && j > i + shift) || (kpm && kpm[j * p.kp_stride[1]])",
      "(p.causal && j >= i + shift) || (kpm && kpm[j * p.kp_stride[1]])",
      "causal mask off by one: each query's own (diagonal) key hidden",
      "plain", "test_matches_reference and causal and float16 and not bfloat16 and 17", T_ATT),
    M("mma-causal-kend", ATT + "attention_mma.cu",
      "min(Nk, last_row + shift + 1)) : Nk;",
      "min(Nk, last_row + shift)) : Nk;",
      "edge off by one: the causal key limit drops the last row's diagonal key",
      "plain", "test_matches_reference and causal and float16 and not bfloat16 and 17", T_ATT),
    M("mma-need-mask-row", ATT + "attention_mma.cu",
      "(p.causal && n0 + kBlockN - 1 > m0 + shift);",
      "(p.causal && n0 + kBlockN - 1 > m0 + kBlockM - 1 + shift);",
      "causal tile test against the tile's last query row instead of its first: diagonal tiles unmasked",
      "plain", "test_matches_reference and causal and float16 and not bfloat16 and 197", T_ATT),
    M("mma-load-tail", ATT + "attention_mma.cu",
      "      for (int e = 0; e < V; ++e) out[e] = (c + e < D) ? in[e * s_d] : zero;",
      "      for (int e = 0; e < V; ++e) out[e] = (c + e <= D) ? in[e * s_d] : zero;",
      "head-dimension tail check `<` -> `<=`: column D loaded (D = 80 in a 96 tile)",
      "plain", "test_matches_reference and full and float16 and not bfloat16 and 130 and 80", T_ATT),
    M("mma-dropout-inverted", ATT + "attention_mma.cu",
      "s[nt][2 * r + e] = keep ? s[nt][2 * r + e] * keep_scale : 0.f;",
      "s[nt][2 * r + e] = keep ? 0.f : s[nt][2 * r + e] * keep_scale;",
      "dropout keep logic inverted in the tensor-core forward",
      "plain", "test_dropout_on_cuda_matches_cpu and float16 and not bfloat16", T_ATT),
    M("mma-sync-kv-reuse", ATT + "attention_mma.cu",
      "      __syncthreads();  // everyone is done with the previous K/V tile\n",
      "",
      "__syncthreads removed: the next K/V tile overwrites the one other warps still read",
      "race", "test_matches_reference and full and float16 and not bfloat16 and 130 and 80", T_ATT),
    M("mma-sync-after-load", ATT + "attention_mma.cu",
      "    load_tile<T, HD, LD>(Vs, vg, n0, kend, D, p.v_stride[2], p.v_stride[3]);\n    __syncthreads();\n",
      "    load_tile<T, HD, LD>(Vs, vg, n0, kend, D, p.v_stride[2], p.v_stride[3]);\n",
      "__syncthreads removed between loading the K/V tile and reading it",
      "race", "test_matches_reference and full and float16 and not bfloat16 and 17", T_ATT),
    M("mma-tile-skip-or", ATT + "attention_mma.cu",
      "      if (__syncthreads_and(mine)) continue;",
      "      if (__syncthreads_or(mine)) continue;",
      "block vote with OR instead of AND: a tile skipped when any query blocks all of it",
      "plain", "test_matches_reference and 0.05 and bfloat16 and 37", T_MASKED),
    M("mma-mask-row-swap", ATT + "attention_mma.cu",
      "((blocked[e / 2] >> (j - n0)) & 1)",
      "((blocked[e % 2] >> (j - n0)) & 1)",
      "fragment row mix-up: an accumulator's mask bits taken from the thread's other row",
      "plain", "test_matches_reference and 0.5 and bfloat16 and 37", T_MASKED),
    # ---- backward.cu: delta, dK/dV and dQ passes (SIMT, every dtype) -----------------------------
    M("bwd-delta-acc-init", ATT + "backward.cu",
      "  A sum = A(0);",
      "  A sum = A(1);",
      "accumulator initialised to 1 (delta = rowsum(dO * O) off by 32)",
      "plain", "test_gradients_match_reference and float32 and 17 and full and plain", T_ATT),
    M("bwd-sync-query-tile", ATT + "backward.cu",
      "    __syncthreads();  // before the next query tile overwrites Q, dO, P, dS\n",
      "",
      "__syncthreads removed: the next query tile overwrites Q/dO/P/dS still being read (dK/dV pass)",
      "race", "test_gradients_match_reference and float32 and 130 and 80 and full and plain", T_ATT),
    M("bwd-sync-recompute", ATT + "backward.cu",
      "      static_cast<A*>(bp.dbias)[((b * p.H + h) * p.Nq + i) * p.Nk + j] = dsv;\n  }\n  __syncthreads();\n}",
      "      static_cast<A*>(bp.dbias)[((b * p.H + h) * p.Nq + i) * p.Nk + j] = dsv;\n  }\n}",
      "__syncthreads removed after recomputing P and dS into shared memory",
      "race", "test_gradients_match_reference and float32 and 17 and full and plain", T_ATT),
    M("bwd-causal-qfirst", ATT + "backward.cu",
      "  const int64_t q_first = p.causal ? max(int64_t(0), n0 - shift) : 0;",
      "  const int64_t q_first = p.causal ? max(int64_t(0), n0 + shift) : 0;",
      "causal shift sign flipped: the dK/dV pass starts at the wrong query tile",
      "plain", "test_gradients_match_reference and float32 and 130 and 80 and causal and plain", T_ATT),
    M("bwd-causal-diagonal", ATT + "backward.cu",
      "!(p.causal && j > i + shift) &&",
      "!(p.causal && j >= i + shift) &&",
      "causal mask off by one in the recomputed probabilities",
      "plain", "test_gradients_match_reference and float32 and 17 and causal and plain", T_ATT),
    M("bwd-dropout-inverted", ATT + "backward.cu",
      "        const A z = keep ? A(1.0 / (1.0 - p.dropout_p)) : A(0);",
      "        const A z = keep ? A(0) : A(1.0 / (1.0 - p.dropout_p));",
      "dropout keep logic inverted in the backward replay",
      "plain", "test_dropout_matches_reference_given_the_mask and plain and dtype1", T_ATT),
    M("bwd-grad-out-stride-swap", ATT + "backward.cu",
      "t.go, gg, m0, p.Nq, p.D, bp.grad_out_stride[2], bp.grad_out_stride[3]);",
      "t.go, gg, m0, p.Nq, p.D, bp.grad_out_stride[3], bp.grad_out_stride[2]);",
      "row and column strides of grad_out swapped",
      "plain", "test_gradients_match_reference and float32 and 17 and full and plain", T_ATT),
    M("bwd-smem-optin", ATT + "backward.cu",
      "  if (smem <= 48 * 1024) return cudaSuccess;\n"
      "  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));",
      "  return cudaSuccess;",
      "cudaFuncSetAttribute opt-in removed (Tiles<double, 32, 32, 64> is 84 KB of dynamic smem)",
      "plain", "test_gradients_match_reference and float64 and 17 and full and plain", T_ATT),
    M("bwd-pair-blocked-or", ATT + "backward.cu",
      "  return __syncthreads_and(mine);",
      "  return __syncthreads_or(mine);",
      "block vote with OR instead of AND: (query tile, key tile) pairs wrongly skipped",
      "plain", "test_gradients_match_reference and 0.05 and float32 and 37", T_MASKED),
    # ---- mask.cu: packing a per-query mask into bits ---------------------------------------------
    M("mask-halves-swapped", ATT + "mask.cu",
      "out[w] = uint64_t(lo) | (uint64_t(hi) << 32);",
      "out[w] = uint64_t(hi) | (uint64_t(lo) << 32);",
      "the two ballots packed into the 64-bit word in the wrong order",
      "plain", "test_packed_bits", T_MASKED),
    M("mask-bounds-dropped", ATT + "mask.cu",
      "__ballot_sync(0xffffffffu, j1 < p.N && blocked(x[j1 * p.src_stride[2]]));",
      "__ballot_sync(0xffffffffu, blocked(x[j1 * p.src_stride[2]]));",
      "bounds check `j1 < N` dropped: keys past the row end counted as blocked",
      "plain", "test_packed_bits", T_MASKED),
    M("mask-nan-blocked", ATT + "mask.cu",
      "bool blocked(float x) { return x < 0.f; }",
      "bool blocked(float x) { return !(x >= 0.f); }",
      "NaN logits treated as blocked (sigmoid(NaN) < 0.5 is False)",
      "plain", "test_mask_logits_agree_with_the_mask and float32", T_MASKED),
    # ---- ctc_loss.cu ------------------------------------------------------------------------------
    M("ctc-fold-sync", "csrc/kernels/ctc_loss/ctc_loss.cu",
      "    if (lane == 0) partial[i * kWarps + warp] = v[i];\n  }\n  __syncthreads();\n",
      "    if (lane == 0) partial[i * kWarps + warp] = v[i];\n  }\n",
      "__syncthreads removed between the warps' partial sums and their fold",
      "race", "test_matches_f_ctc_loss and 0-none", T_CTC),
    M("ctc-skip-repeats", "csrc/kernels/ctc_loss/ctc_loss.cu",
      "    const bool skip = (s & 1) && s >= 3 && labels[k] != labels[k - 1];",
      "    const bool skip = (s & 1) && s >= 3;",
      "CTC skip transition allowed between two equal labels",
      "plain", "test_edge_lengths_and_repeats", T_CTC),
    M("ctc-beta-bound", "csrc/kernels/ctc_loss/ctc_loss.cu",
      "        if (s + 2 < S && (info[s + 2] & kSkipBit))",
      "        if (s + 2 <= S && (info[s + 2] & kSkipBit))",
      "edge check `<` -> `<=` in the beta recursion: reads the state past the last",
      "plain", "test_matches_f_ctc_loss and 0-none", T_CTC),
    M("ctc-logspace-early-return", "csrc/kernels/ctc_loss/ctc_loss.cu",
      "  if (SR::kLog && flags[b] == 0) return;",
      "  if (SR::kLog && flags[b] != 0) return;",
      "early return inverted: the log-space pass skips exactly the sequences it must redo",
      "plain", "test_extreme_logits_take_the_log_space_path", T_CTC),
    M("ctc-fold-order", "csrc/kernels/ctc_loss/ctc_loss.cu",
      "    for (int w = 1; w < kWarps; ++w) v[i] = SR::add(v[i], partial[i * kWarps + w]);",
      "    for (int w = 0; w < kWarps; ++w) v[i] = SR::add(v[i], partial[i * kWarps + w]);",
      "reduction fold starts at warp 0 on top of warp 0's value (counted twice)",
      "plain", "test_matches_f_ctc_loss and 0-none", T_CTC),
    M("ctc-target-offset", "csrc/kernels/ctc_loss/ctc_loss.cu",
      "for (int64_t i = tid; i < b; i += blockDim.x) part +=",
      "for (int64_t i = tid; i <= b; i += blockDim.x) part +=",
      "edge off by one: a sequence's own length counted in its concatenated-target offset",
      "plain", "test_concatenated_targets_and_index_dtypes and tensor and index_dtype0", T_CTC),
    M("ctc-smem-optin", "csrc/kernels/ctc_loss/ctc_loss.cu",
      "    if (cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lay.smem));\n"
      "        e != cudaSuccess)\n      return e;\n",
      "",
      "cudaFuncSetAttribute opt-in removed (1000 labels: 2001 states, 72 KB of rows in smem)",
      "plain", "test_long_sequences", T_CTC),
    # ---- linear_sum_assignment.cu -----------------------------------------------------------------
    M("lsa-argmin-sync", "csrc/kernels/linear_sum_assignment/linear_sum_assignment.cu",
      "  if (lane == 0) r.val[warp] = val, r.key[warp] = key;\n  __syncthreads();\n",
      "  if (lane == 0) r.val[warp] = val, r.key[warp] = key;\n",
      "__syncthreads removed between the warps' argmins and warp 0's fold",
      "race", "test_cuda_equals_cpu and 30 and float64", T_LSA),
    M("lsa-warp-argmin-offset", "csrc/kernels/linear_sum_assignment/linear_sum_assignment.cu",
      "  for (int off = 16; off > 0; off >>= 1) {\n    const double v2",
      "  for (int off = 16; off > 1; off >>= 1) {\n    const double v2",
      "wrong shuffle offsets: the warp argmin stops before xor 1",
      "plain", "test_cuda_equals_cpu and 16 and float64", T_LSA),
    M("lsa-dual-sign", "csrc/kernels/linear_sum_assignment/linear_sum_assignment.cu",
      "      if (s.seen_col[j]) s.v[j] -= min_val - s.shortest[j];",
      "      if (s.seen_col[j]) s.v[j] += min_val - s.shortest[j];",
      "sign flipped in the column dual update",
      "plain", "test_cuda_equals_cpu and 16 and float64", T_LSA),
    M("lsa-cost-stride-swap", "csrc/kernels/linear_sum_assignment/linear_sum_assignment.cu",
      "cost[(transpose ? j : a) * p.s1 + (transpose ? a : j) * p.s2]",
      "cost[(transpose ? j : a) * p.s2 + (transpose ? a : j) * p.s1]",
      "row and column strides of the cost matrix swapped",
      "plain", "test_cuda_equals_cpu and 30 and float64", T_LSA),
    M("lsa-row-min-bound", "csrc/kernels/linear_sum_assignment/linear_sum_assignment.cu",
      "      for (int j = lane; j < m; j += 32) {\n        if (ca[j] < best)",
      "      for (int j = lane; j <= m; j += 32) {\n        if (ca[j] < best)",
      "edge check `<` -> `<=` in the warm start's row minima (column m read)",
      "plain", "test_cuda_equals_cpu and 16 and float64", T_LSA),
    # ---- depthwise_conv2d.cu ------------------------------------------------------------------------
    M("dw-tile-sync", "csrc/kernels/depthwise_conv2d/depthwise_conv2d.cu",
      "  __syncthreads();\n  const A bias = p.bias ? to_acc(static_cast<const T*>(p.bias)[c]) : A(0);\n  const int col",
      "  const A bias = p.bias ? to_acc(static_cast<const T*>(p.bias)[c]) : A(0);\n  const int col",
      "__syncthreads removed between loading the input tile and convolving it (NCHW forward)",
      "race", "test_kernel_sizes_and_layouts and 3-nchw", T_DW),
    M("dw-halo-bound", "csrc/kernels/depthwise_conv2d/depthwise_conv2d.cu",
      "(iy >= 0 && iy < p.Hi && ix >= 0 && ix < p.Wi) ? to_acc(x[iy * p.sH + ix * p.sW]) : A(0);",
      "(iy >= 0 && iy < p.Hi && ix >= 0 && ix <= p.Wi) ? to_acc(x[iy * p.sH + ix * p.sW]) : A(0);",
      "halo bound `<` -> `<=`: column Wi (the next row's first) loaded instead of padding",
      "plain", "test_kernel_sizes_and_layouts and 3-nchw", T_DW),
    M("dw-nhwc-stride-swap", "csrc/kernels/depthwise_conv2d/depthwise_conv2d.cu",
      "      const A v = to_acc(x[iy * p.sH + ix * p.sW]);",
      "      const A v = to_acc(x[iy * p.sW + ix * p.sH]);",
      "height and width strides swapped (channels-last forward)",
      "plain", "test_kernel_sizes_and_layouts and 3-channels_last", T_DW),
    M("dw-acc-init", "csrc/kernels/depthwise_conv2d/depthwise_conv2d.cu",
      "    A acc = 0;",
      "    A acc = 1;",
      "accumulator initialised to 1 (weight-gradient partial sums)",
      "plain", "test_kernel_sizes_and_layouts and 3-nchw", T_DW),
    M("dw-fold-sync", "csrc/kernels/depthwise_conv2d/depthwise_conv2d.cu",
      "    fold[threadIdx.x] = acc;\n    __syncthreads();\n",
      "    fold[threadIdx.x] = acc;\n",
      "__syncthreads removed between the thread groups' partial sums and their fold",
      "race", "test_kernel_sizes_and_layouts and 3-nchw", T_DW),
    M("dw-smem-optin", "csrc/kernels/depthwise_conv2d/depthwise_conv2d.cu",
      "      if (cudaError_t e = cudaFuncSetAttribute(forward_nchw<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));\n"
      "          e != cudaSuccess)\n        return e;\n",
      "",
      "cudaFuncSetAttribute opt-in removed (K = 31 float64 tile + filter: 53 KB of dynamic smem)",
      "plain", "test_kernel_sizes_and_layouts and 31-nchw", T_DW),
    M("dw-finish-bound", "csrc/kernels/depthwise_conv2d/depthwise_conv2d.cu",
      "  if (t < taps - 1) {",
      "  if (t <= taps - 1) {",
      "edge check `<` -> `<=`: the bias tap written into the next channel's weight gradient",
      "plain", "test_kernel_sizes_and_layouts and 3-nchw", T_DW),
    # ---- layernorm.cu: fused ConvNeXt front, channel LayerNorm and its backward -------------------
    M("ln-block-sum-sync", "csrc/kernels/depthwise_conv2d/layernorm.cu",
      "    for (int r = 0; r < kPix; ++r) red[warp][r] = v[r];\n  }\n  __syncthreads();\n",
      "    for (int r = 0; r < kPix; ++r) red[warp][r] = v[r];\n  }\n",
      "__syncthreads removed between the warps' partial sums and their fold (fused front)",
      "race", "test_fused_front_on_cuda and 7-96-channels_last and float32", T_DW),
    M("ln-var-edge", "csrc/kernels/depthwise_conv2d/layernorm.cu",
      "    const A dev = active && ox0 + r < p.Wo ? v[r] - mean[r] : A(0);",
      "    const A dev = v[r] - mean[r];",
      "edge mask dropped: idle channel threads and pixels past Wo counted in the variance",
      "plain", "test_fused_front_on_cuda and 7-12-channels_last and float32", T_DW),
    M("ln-warp-sum-offset", "csrc/kernels/depthwise_conv2d/layernorm.cu",
      "  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);",
      "  for (int off = 16; off > 1; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);",
      "wrong shuffle offsets: the warp sum stops before xor 1",
      "plain", "test_fused_front_on_cuda and 7-96-channels_last and float32", T_DW),
    M("ln-backward-swap", "csrc/kernels/depthwise_conv2d/layernorm.cu",
      "    dy[c] = from_acc<T>(r * (gc - c2 - xhat * c1));",
      "    dy[c] = from_acc<T>(r * (gc - c1 - xhat * c2));",
      "the two LayerNorm backward reductions swapped",
      "plain", "test_fused_front_on_cuda and 7-96-channels_last and float32", T_DW),
    M("ln-unbiased-var", "csrc/kernels/depthwise_conv2d/layernorm.cu",
      "    const A rstd = inv_std(sum2[r] / static_cast<A>(p.C), n.eps);",
      "    const A rstd = inv_std(sum2[r] / static_cast<A>(p.C - 1), n.eps);",
      "variance divided by C - 1 (unbiased) instead of C",
      "plain", "test_fused_front_on_cuda and 7-12-channels_last and float32", T_DW),
    M("ln-pixel-stride-swap", "csrc/kernels/depthwise_conv2d/layernorm.cu",
      "  return static_cast<const T*>(n.y) + b * n.sB + h * n.sH + w * n.sW;",
      "  return static_cast<const T*>(n.y) + b * n.sB + h * n.sW + w * n.sH;",
      "height and width strides swapped (two-kernel LayerNorm path, K = 9)",
      "plain", "test_fused_front_on_cuda and 9-16-nchw and float32", T_DW),
    # ---- patch_embed: forward.cu, backward.cu, patch_embed.cuh --------------------------------------
    M("pe-fwd-cls-offset", "csrc/kernels/patch_embed/forward.cu",
      "    out[(b * R + off + i) * D + n] = Num<T>::from_acc(x);",
      "    out[(b * R + i) * D + n] = Num<T>::from_acc(x);",
      "output row offset of the [CLS] row forgotten (patch 0 written over [CLS])",
      "plain", "test_forward_matches_reference and 12 and contiguous and float32", T_PE),
    M("pe-im2col-vector-edge", "csrc/kernels/patch_embed/patch_embed.cuh",
      "    if (sW == 1 && kx + V <= P && aligned16(p)) return load16(p, dst);",
      "    if (sW == 1 && aligned16(p)) return load16(p, dst);",
      "edge check dropped: a 16-byte im2col load runs past the end of the patch row",
      "plain", "test_forward_matches_reference and contiguous and float16 and not bfloat16", T_PE),
    M("pe-im2col-stride-swap", "csrc/kernels/patch_embed/patch_embed.cuh",
      "(py * P + ky) * sH + (px * P + *kx) * sW;",
      "(py * P + ky) * sW + (px * P + *kx) * sH;",
      "height and width strides of the pixels swapped in the im2col view",
      "plain", "test_forward_matches_reference and 12 and contiguous and float32", T_PE),
    M("pe-bwd-scatter-swap", "csrc/kernels/patch_embed/backward.cu",
      "grad[((b * C + ch) * H + py * P + ky) * W + px * P + kx]",
      "grad[((b * C + ch) * H + py * P + kx) * W + px * P + ky]",
      "col2im scatter with ky and kx swapped (each patch written transposed)",
      "plain", "test_backward_matches_reference and cls and 12 and contiguous and float32", T_PE),
    M("pe-bwd-bias-cls", "csrc/kernels/patch_embed/backward.cu",
      "  for (int64_t j = off; j < R; ++j) s += sums[j * D + d];",
      "  for (int64_t j = 0; j < R; ++j) s += sums[j * D + d];",
      "reduction range: the [CLS] row summed into the bias gradient",
      "plain", "test_backward_matches_reference and cls and 12 and contiguous and float32", T_PE),
    # ---- common/tile_gemm.cuh: the tiled GEMM (WMMA and exact FMA paths) ----------------------------
    M("gemm-tc-sync", "csrc/kernels/common/tile_gemm.cuh",
      "      shared_store();\n      __syncthreads();\n      if (k0 + BK < ke) global_load(k0 + BK);\n"
      "#pragma unroll\n      for (int kk = 0; kk < BK; kk += FK) {",
      "      shared_store();\n      if (k0 + BK < ke) global_load(k0 + BK);\n"
      "#pragma unroll\n      for (int kk = 0; kk < BK; kk += FK) {",
      "__syncthreads removed between storing a K tile and the WMMA loads (tensor-core path)",
      "race", "test_forward_matches_reference and 12 and contiguous and float16 and not bfloat16", T_PE),
    M("gemm-fma-tail-sync", "csrc/kernels/common/tile_gemm.cuh",
      "          for (int j = 0; j < 8; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);\n      }\n      __syncthreads();\n",
      "          for (int j = 0; j < 8; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);\n      }\n",
      "__syncthreads removed before the next K tile overwrites the current one (FMA path)",
      "race", "test_forward_matches_reference and 12 and contiguous and float64", T_PE),
    M("gemm-wmma-store-layout", "csrc/kernels/common/tile_gemm.cuh",
      "Cfg::LDC, wmma::mem_row_major);",
      "Cfg::LDC, wmma::mem_col_major);",
      "WMMA misuse: accumulator fragments stored column-major into a row-major staging tile",
      "plain", "test_forward_matches_reference and 12 and contiguous and float16 and not bfloat16", T_PE),
    M("gemm-fma-b-index", "csrc/kernels/common/tile_gemm.cuh",
      "b[j] = Num<T>::to_acc(Bs[k * LDB + tn + 8 * j]);",
      "b[j] = Num<T>::to_acc(Bs[k * LDB + tn * 8 + j]);",
      "thread-to-column mapping of the B tile disagrees with the epilogue's (tn + 8j vs 8tn + j)",
      "plain", "test_forward_matches_reference and 12 and contiguous and float64", T_PE),
    # ---- common/ptx.cuh and common/launch.cuh (their emulated branches mirror the device ones) ------
    M("ptx-mma-b-swap", "csrc/kernels/common/ptx.cuh",
      "::emu::ptx::mma_m16n8k16<::emu::ptx::Elem::kF16>(c, a, b0, b1,",
      "::emu::ptx::mma_m16n8k16<::emu::ptx::Elem::kF16>(c, a, b1, b0,",
      "mma.sync operand registers b0 and b1 swapped in the fp16 wrapper",
      "plain", "test_matches_reference and full and float16 and not bfloat16 and 17", T_ATT),
    M("ptx-bf16-as-f16", "csrc/kernels/common/ptx.cuh",
      "::emu::ptx::mma_m16n8k16<::emu::ptx::Elem::kBF16>(c, a, b0, b1,",
      "::emu::ptx::mma_m16n8k16<::emu::ptx::Elem::kF16>(c, a, b0, b1,",
      "wrong instruction type: the bf16 wrapper issues the f16 mma",
      "plain", "test_matches_reference and full and bfloat16 and 17", T_ATT),
    M("launch-default-stream", "csrc/kernels/common/launch.cuh",
      "return ::emu::launch(kernel, grid, block, smem, stream, std::forward<Args>(args)...);",
      "return ::emu::launch(kernel, grid, block, smem, cudaStream_t(0), std::forward<Args>(args)...);",
      "kernel launched on the default stream instead of torch's current one",
      "plain", "test_cuda_respects_current_stream", T_PE),
]


# ---- running ---------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(msg, flush=True)


def snippet_problem(m: Mutation, root: Path) -> str | None:
    """Why m cannot be applied to root/m.file (None when its snippet occurs exactly once)."""
    path = root / m.file
    if not path.is_file():
        return f"{m.file}: no such file"
    n = path.read_text().count(m.original)
    if n != 1:
        return f"{m.file}: the original snippet occurs {n} times (must be exactly once)"
    return None


def sync_tree(work: Path) -> None:
    """Makes <work> hold the repository's CMakeLists.txt, pyproject.toml and csrc/ (copying only
    what differs, so that the build there stays incremental)."""
    work.mkdir(parents=True, exist_ok=True)
    for name in ("CMakeLists.txt", "pyproject.toml"):
        src, dst = REPO / name, work / name
        if not dst.is_file() or not filecmp.cmp(src, dst, shallow=False):
            shutil.copyfile(src, dst)
    src_root, dst_root = REPO / "csrc", work / "csrc"
    wanted = set()
    for src in src_root.rglob("*"):
        rel = src.relative_to(src_root)
        dst = dst_root / rel
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
            continue
        wanted.add(rel)
        if not dst.is_file() or not filecmp.cmp(src, dst, shallow=False):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    for dst in sorted(dst_root.rglob("*"), reverse=True):
        rel = dst.relative_to(dst_root)
        if dst.is_file() and rel not in wanted:
            dst.unlink()
        elif dst.is_dir() and not (src_root / rel).is_dir():
            shutil.rmtree(dst)


def run_logged(cmd: list, logfile: Path, cwd: Path | None = None) -> int:
    with open(logfile, "w") as out:
        return subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def configure(work: Path, build: Path, python: str) -> None:
    cmd = ["cmake", "-S", str(work), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
           "-DTASKKERNELS_EMULATE=ON", "-DTASKKERNELS_EMULATE_CHECKS=plain;race", f"-DPython_EXECUTABLE={python}"]
    logfile = work / "configure.log"
    if run_logged(cmd, logfile) != 0:
        sys.exit(f"emu_mutate: configuring {build} failed:\n{tail(logfile)}")


def build_target(build: Path, check: str, logfile: Path) -> bool:
    return run_logged(["cmake", "--build", str(build), "--target", f"_C_{check}"], logfile) == 0


def run_pytest(args: list, emulator: Path, python: str, timeout: float, verbose: bool) -> dict:
    """Runs pytest in its own process group; returns rc (None on timeout), seconds, the summary."""
    env = dict(os.environ, TASKKERNELS_EMULATOR=str(emulator))
    start = time.monotonic()
    proc = subprocess.Popen([python, "-m", "pytest", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        rc = None
    except BaseException:  # Ctrl-C: the run has its own session and would outlive us
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    seconds = time.monotonic() - start
    if verbose:
        log(out)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if re.search(r"\b(passed|failed|error|no tests ran|deselected)\b", ln)),
                   lines[-1] if lines else "")
    # The first line naming what went wrong: the emulator's own message if there is one.
    emu = next((ln[ln.index("emulated GPU:"):] for ln in lines if "emulated GPU:" in ln), "")
    failure = emu or next((ln[1:].strip() for ln in lines if ln.startswith("E ")), "")
    return {"rc": rc, "seconds": seconds, "summary": summary.strip("= "), "detail": failure[:300],
            "output_tail": "\n".join(lines[-40:])}


def classify(rc: int | None) -> str:
    """pytest's exit status -> outcome. 1: tests failed; < 0: killed by a signal (a crash, an
    abort); None: ran past the timeout. 0: passed. 2-5: interrupted, internal or usage error, or
    no test selected: the selection is broken, not the kernel."""
    if rc is None or rc == 1 or rc < 0 or rc > 5:
        return "caught"
    if rc == 0:
        return "survived"
    return "error"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="print the mutations (checking their snippets) and exit")
    ap.add_argument("--only", help="comma-separated mutation ids to run")
    ap.add_argument("--check", choices=CHECKS, help="run only the mutations of this checker")
    ap.add_argument("--work", default="/tmp/tk-mutate/src", help="scratch copy of the sources (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per pytest run; past it counts as caught")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--baseline", action="store_true", help="run each selection on the unmutated build first")
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"), help="the venv's python")
    ap.add_argument("-v", "--verbose", action="store_true", help="show pytest's output")
    args = ap.parse_args()

    ids = [m.id for m in MUTATIONS]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        sys.exit(f"emu_mutate: duplicate mutation ids: {sorted(dupes)}")
    bad = [m.id for m in MUTATIONS if m.check not in CHECKS]
    if bad:
        sys.exit(f"emu_mutate: unknown check in {bad}")

    if args.list:
        problems = 0
        for m in MUTATIONS:
            why = snippet_problem(m, REPO)
            problems += why is not None
            log(f"{m.id:28s} {m.check:5s} {m.file.removeprefix('csrc/kernels/')}")
            log(f"    bug:    {m.bug}")
            log(f"    pytest: {' '.join(m.tests)} -k '{m.k}'")
            if why:
                log(f"    !! {why}")
        files = sorted({m.file for m in MUTATIONS})
        log(f"\n{len(MUTATIONS)} mutations over {len(files)} files "
            f"({sum(m.check == 'plain' for m in MUTATIONS)} plain, {sum(m.check == 'race' for m in MUTATIONS)} race)"
            + (f"; {problems} snippet problem(s)" if problems else "; every snippet found exactly once"))
        return 1 if problems else 0

    selected = MUTATIONS
    if args.only:
        want = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [w for w in want if w not in ids]
        if unknown:
            sys.exit(f"emu_mutate: unknown mutation id(s): {', '.join(unknown)} (see --list)")
        selected = [m for m in MUTATIONS if m.id in want]
    if args.check:
        selected = [m for m in selected if m.check == args.check]
    if not selected:
        sys.exit("emu_mutate: nothing selected")
    # Grouped by check: a restored file is recompiled once per check, not once per mutation.
    selected = sorted(selected, key=lambda m: CHECKS.index(m.check))

    for m in selected:  # fail loudly before anything is built
        why = snippet_problem(m, REPO)
        if why:
            sys.exit(f"emu_mutate: mutation {m.id}: {why}")
    if not Path(args.python).is_file():
        sys.exit(f"emu_mutate: no python at {args.python} (run scripts/setup.sh)")

    work = Path(args.work).resolve()
    if work == REPO or REPO in work.parents:
        sys.exit("emu_mutate: --work must lie outside the repository")
    build = work / "build"
    logs = work.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    log(f"emu_mutate: {len(selected)} mutation(s); sources copied to {work}, build in {build}")
    sync_tree(work)
    configure(work, build, args.python)
    checks = [c for c in CHECKS if any(m.check == c for m in selected)]
    for check in checks:
        t0 = time.monotonic()
        logfile = logs / f"build-{check}-original.log"
        if not build_target(build, check, logfile):
            sys.exit(f"emu_mutate: the unmutated {check} build fails (a problem of the repository, not of a "
                     f"mutation):\n{tail(logfile)}")
        log(f"emu_mutate: unmutated {check} build ready in {time.monotonic() - t0:.0f} s")

    results = []
    interrupted = False
    try:
        for n, m in enumerate(selected, 1):
            emulator = build / m.check
            res = {"id": m.id, "file": m.file, "bug": m.bug, "check": m.check, "pytest": m.pytest_args()}
            if args.baseline:
                # The unmutated build may be stale if a previous mutation of this file ran under
                # the same check; rebuild first (cheap when nothing changed).
                build_target(build, m.check, logs / f"build-{m.check}-original.log")
                base = run_pytest(m.pytest_args(), emulator, args.python, args.timeout, args.verbose)
                res["baseline"] = {k: base[k] for k in ("rc", "seconds", "summary")}
                if base["rc"] != 0:
                    res.update(outcome="baseline-fails", seconds=base["seconds"], summary=base["summary"],
                               detail=base["detail"], build_seconds=0.0)
                    results.append(res)
                    log(f"[{n}/{len(selected)}] {m.id}: BASELINE FAILS ({base['summary']})\n{base['output_tail']}")
                    continue
            path = work / m.file
            text = path.read_text()
            if text.count(m.original) != 1:
                raise SystemExit(f"emu_mutate: mutation {m.id}: the snippet occurs {text.count(m.original)} times "
                                 f"in the scratch copy {path}")
            path.write_text(text.replace(m.original, m.replacement))
            try:
                t0 = time.monotonic()
                built = build_target(build, m.check, logs / f"build-{m.id}.log")
                res["build_seconds"] = round(time.monotonic() - t0, 1)
                if not built:
                    res.update(outcome="n/a", seconds=0.0, summary="the mutated kernel does not build",
                               detail=tail(logs / f"build-{m.id}.log", 3))
                else:
                    r = run_pytest(m.pytest_args(), emulator, args.python, args.timeout, args.verbose)
                    outcome = classify(r["rc"])
                    summary = r["summary"] if r["rc"] is not None else f"timed out after {args.timeout:.0f} s"
                    res.update(outcome=outcome, rc=r["rc"], seconds=round(r["seconds"], 1), summary=summary,
                               detail=r["detail"])
                    if outcome == "error":
                        log(r["output_tail"])
            finally:
                path.write_text(text)  # restored; the next build of this check recompiles it
            results.append(res)
            log(f"[{n}/{len(selected)}] {m.id:28s} {m.check:5s} {res['outcome'].upper():9s} "
                f"build {res['build_seconds']:5.1f} s, tests {res['seconds']:5.1f} s  {res['summary']}")
    except KeyboardInterrupt:
        interrupted = True
        log("\nemu_mutate: interrupted; the scratch copy is restored, results so far below")

    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "totals": totals(results)}, indent=2) + "\n")
        log(f"emu_mutate: results written to {args.json}")
    return 130 if interrupted else 0


def totals(results: list) -> dict:
    count = {k: sum(r["outcome"] == k for r in results) for k in ("caught", "survived", "n/a", "error", "baseline-fails")}
    scored = count["caught"] + count["survived"]
    count["catch_rate"] = round(count["caught"] / scored, 3) if scored else None
    return count


def report(results: list) -> None:
    if not results:
        return
    log("")
    head = f"{'id':28s} {'file':40s} {'check':5s} {'outcome':14s} {'seconds':>7s}  bug class"
    log(head)
    log("-" * len(head))
    for r in results:
        secs = r.get("seconds", 0.0) + r.get("build_seconds", 0.0)
        log(f"{r['id']:28s} {r['file'].removeprefix('csrc/kernels/'):40s} {r['check']:5s} {r['outcome']:14s} "
            f"{secs:7.1f}  {r['bug']}")
    t = totals(results)
    rate = f"{100 * t['catch_rate']:.0f}%" if t["catch_rate"] is not None else "-"
    log(f"\n{len(results)} run: {t['caught']} caught, {t['survived']} survived, {t['n/a']} not applicable "
        f"(did not build), {t['error']} selection errors, {t['baseline-fails']} baseline failures; "
        f"catch rate {rate} of caught + survived")
    for r in results:
        if r["outcome"] in ("survived", "error", "baseline-fails"):
            log(f"  {r['outcome']}: {r['id']} ({r.get('summary', '')})")


if __name__ == "__main__":
    sys.exit(main())
