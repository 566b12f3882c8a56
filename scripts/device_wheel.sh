#!/usr/bin/env bash
# For the GPU machine (Python 3.12, torch 2.11 already installed, nothing to download): the CUDA
# half of the wheel check. Builds the CUDA wheel there (the wheel.sh targets), installs it into a
# fresh venv that sees the machine's torch (the wheel shadows any other taskkernels), and runs the test suite
# (CUDA tests included) against the installed wheel. Logs land in $OUT.
#   device run:  bash scripts/device_wheel.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/taskkernels-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
VENV=/tmp/taskkernels-wheel-venv

echo "== wheel build"
rm -rf build/wheel-device-raw
if ! TASKKERNELS_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0a;9.0+PTX" "$PY" -m pip wheel --no-build-isolation \
    --no-deps -v -C build-dir=build/wheel-device -w build/wheel-device-raw . > "$OUT/wheel-build.log" 2>&1; then
  tail -60 "$OUT/wheel-build.log"; exit 1
fi
ls build/wheel-device-raw | tee "$OUT/wheel.txt"

echo "== clean venv (the machine's torch, this wheel)"
"$PY" -m venv --clear --system-site-packages "$VENV"
"$VENV/bin/python" -m pip install --no-deps --no-index build/wheel-device-raw/*.whl >> "$OUT/wheel-build.log" 2>&1 || exit 1
"$VENV/bin/python" -m taskkernels.info | tee -a "$OUT/wheel.txt"
"$VENV/bin/python" -c "import taskkernels, sys; assert taskkernels.__file__.startswith('$VENV'), taskkernels.__file__"
"$VENV/bin/python" -m pytest tests -q -p no:cacheprovider --maxfail=60 -rf 2>&1 | tee "$OUT/wheel-tests.log" | tail -30
