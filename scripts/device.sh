#!/usr/bin/env bash
# For the GPU machine (the device tool; Python 3.12 and torch 2.11 already there, nothing to
# download): build the package from this tree, run the CUDA tests, run compute-sanitizer on a
# small subset, run the benchmark suite. Everything worth keeping lands in $OUT (at most 8 files).
#   device run:  bash scripts/device.sh
# The whole suite at GPU sizes takes longer than one 10-minute device call; split it:
#   BENCH_OPS="patch_embed attention masked_attention ctc_loss depthwise_conv2d" bash scripts/device.sh
#   SKIP_TESTS=1 BENCH_OPS="models generation linear_sum_assignment hungarian_match" bash scripts/device.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/taskkernels-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

echo "== build"
start=$(date +%s)
if ! TASKKERNELS_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0a"} \
    "$PY" -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
"$PY" -m taskkernels.info | tee -a "$OUT/gpu.txt"

if [ -z "${SKIP_TESTS:-}" ]; then
echo "== tests (CUDA and CPU)"
"$PY" -m pytest tests -q -p no:cacheprovider --maxfail=60 -rf 2>&1 | tee "$OUT/tests.log" | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== compute-sanitizer (memcheck, then racecheck) on a subset"
SUBSET="cuda and (test_kernel_sizes_and_layouts or test_gradients_are_deterministic or test_matches_f_ctc_loss or test_edge_lengths_and_repeats or test_infeasible or test_extreme_logits or test_from_logits_dtypes or test_cuda_device_lengths or test_forward_options or test_cuda_matches_cpu or test_cuda_backward_is_deterministic or (test_tensor_core_backward and (64 or 128)) or (test_backward_matches_reference and bfloat16 and strided) or test_padding_and_bias or test_rows_with_nothing_visible or test_gradcheck_float64 or (test_structured_masks and bfloat16) or test_gradients_with_skipped_tiles or test_fully_blocked_rows_attend_everywhere or test_packed_bits or (test_cuda_equals_cpu and float32) or test_cuda_integer_ties_and_maximize or test_cuda_unsolved_problems or (test_fused_front_on_cuda and float32))"
for tool in memcheck racecheck; do
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool $tool --error-exitcode 7 \
    "$PY" -m pytest tests/test_patch_embed.py tests/test_attention.py tests/test_ctc_loss.py tests/test_depthwise_conv2d.py tests/test_masked_attention.py tests/test_linear_sum_assignment.py -q -x -p no:cacheprovider -k "$SUBSET" > "$OUT/sanitizer-$tool.log" 2>&1
  rc=$?
  echo "$tool: exit $rc; $(grep -E 'ERROR SUMMARY|passed|failed' "$OUT/sanitizer-$tool.log" | tail -2 | tr '\n' ' ')"
  [ $rc -eq 0 ] || status=1
done

fi  # SKIP_TESTS

echo "== benchmarks"
# shellcheck disable=SC2086  # BENCH_OPS is a list of op names
"$PY" -m benchmarks.run --device cuda --all --record ${BENCH_OPS:+--ops $BENCH_OPS} 2>"$OUT/bench.err" | tee "$OUT/bench.log"
cp benchmarks/results/*.json benchmarks/results/*-cuda.png "$OUT/" 2>/dev/null
exit $status
