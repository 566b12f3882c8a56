#!/usr/bin/env bash
# Runs the CUDA tests on the emulated GPU (csrc/emu): the kernels of csrc/kernels compiled as host
# C++ and run on the CPU, under the same test functions as on a device (tests/emulated_cuda.py).
#
#   bash scripts/emulate.sh [pytest args]          the plain emulated build
#   EMU_CHECK=address bash scripts/emulate.sh ...  AddressSanitizer + UBSan on the kernels
#   EMU_CHECK=race bash scripts/emulate.sh ...     the shared-memory race detector
#   EMU_CHECK=coverage bash scripts/emulate.sh ... gcov line coverage (scripts/emu_coverage.py)
#
# Builds incrementally into build/emu (sets up .venv first if needed). EMU_SEED replays a run's
# block order, thread order and fragment layouts (the pytest header prints it); EMU_WORKERS sets
# the OS threads that run blocks. It runs the tests marked cuda (all of them without pytest args).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CHECK=${EMU_CHECK:-plain}
case "$CHECK" in plain | address | race | coverage) ;; *)
  echo "emulate: EMU_CHECK must be plain, address, race or coverage, got '$CHECK'" >&2
  exit 2
  ;;
esac
[ -x .venv/bin/python ] || bash scripts/setup.sh
BUILD="$ROOT/build/emu"
mkdir -p "$BUILD"
# Every checker this build dir has been asked for stays configured (incremental across checkers).
checks=$( (cat "$BUILD/checks" 2>/dev/null; echo "$CHECK") | sort -u | paste -sd';')
echo "$checks" | tr ';' '\n' > "$BUILD/checks"
start=$(date +%s)
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTASKKERNELS_EMULATE=ON \
  -DTASKKERNELS_EMULATE_CHECKS="$checks" -DPython_EXECUTABLE="$ROOT/.venv/bin/python" > "$BUILD/configure.log" 2>&1 ||
  { tail -30 "$BUILD/configure.log" >&2; exit 1; }
cmake --build "$BUILD" --target "_C_$CHECK" > "$BUILD/build-$CHECK.log" 2>&1 ||
  { grep -E "error|Error" "$BUILD/build-$CHECK.log" | head -40 >&2; exit 1; }
echo "emulate: $CHECK build ready in $(( $(date +%s) - start )) s"

export TASKKERNELS_EMULATOR="$BUILD/$CHECK"
if [ "$CHECK" = address ]; then
  # The kernels are instrumented, Python is not: the ASan runtime must be loaded first (and
  # libstdc++ with it, or ASan's __cxa_throw interceptor finds no real one when triton throws).
  export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
  export ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=0:halt_on_error=1:abort_on_error=1:${ASAN_OPTIONS:-}"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
fi
if [ "$CHECK" = coverage ]; then
  find "$BUILD" -name '*.gcda' -delete
fi
status=0
# Only the CUDA tests (marker `cuda`): the CPU ones have nothing to emulate. A later -m wins.
.venv/bin/python -m pytest -p no:cacheprovider -m cuda "$@" || status=$?  # testpaths: tests
if [ "$CHECK" = coverage ]; then
  .venv/bin/python scripts/emu_coverage.py "$BUILD" || status=$?
fi
exit $status
