#!/usr/bin/env bash
# The stable-ABI promise, checked: installs dist/cpu's wheel (built against the torch in .venv,
# 2.14.1) into a fresh venv with an older torch (default 2.13.0, a CPU build on this machine's
# disk) and runs the CPU test suite there against the installed wheel.
#   bash scripts/check_wheel.sh [torch version]
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=${1:-2.13.0}
VENV="build/venv-torch-$TORCH"
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
wheel=$(ls dist/cpu/*.whl 2>/dev/null | head -1)
[ -n "$wheel" ] || { echo "check_wheel: no wheel in dist/cpu; run bash scripts/wheel.sh cpu" >&2; exit 1; }

# The venv holds a second torch (~1 GB installed with its test dependencies) beside .venv's; CI
# machines' disks are sometimes nearly full (one CI run died here with ENOSPC). Nothing here is
# installed twice, so pip keeps no cache, and the wheel build trees go first when space is short.
export PIP_NO_CACHE_DIR=1
NEED_MB=2500
free_mb() { df -Pm "$(dirname "$VENV")" | awk 'NR == 2 { print $4 }'; }
mkdir -p "$(dirname "$VENV")"
rm -rf "$VENV"
if [ "$(free_mb)" -lt "$NEED_MB" ]; then
  echo "check_wheel: $(free_mb) MB free; removing the wheel build trees and pip's cache"
  rm -rf build/wheel-cpu build/wheel-cpu-raw build/wheel-cuda build/wheel-cuda-raw
  "$PYTHON" -m pip cache purge > /dev/null 2>&1 || true
fi
if [ "$(free_mb)" -lt "$NEED_MB" ]; then
  # The machine, not the wheel: say so loudly and leave the verdict to the test run before this.
  echo "check_wheel: NOT RUN: $(free_mb) MB free under $(dirname "$VENV"), a venv with torch $TORCH needs ~$NEED_MB MB" >&2
  exit 0
fi

echo "check_wheel: fresh venv $VENV with torch $TORCH ($(free_mb) MB free)"
"$PYTHON" -m venv --clear "$VENV"
LOG="$VENV.log"
pip_install() {
  if ! "$VENV/bin/python" -m pip install "$@" > "$LOG" 2>&1; then
    grep -v "^WARNING: Location" "$LOG" | tail -30 >&2
    df -h "$(dirname "$VENV")" >&2
    exit 1
  fi
}
pip_install "torch==$TORCH" numpy scipy pytest hypothesis expecttest "transformers==5.23.0" accelerate "peft==0.21.2" matplotlib tqdm
pip_install --no-deps "$wheel"
# Run outside the source tree's python/ (never on sys.path) so the installed wheel is what loads.
"$VENV/bin/python" - "$TORCH" <<'PY'
import sys, torch, taskkernels
assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
assert "site-packages" in taskkernels.__file__, taskkernels.__file__
info = taskkernels.build_info()
print(f"check_wheel: taskkernels built against torch {info['torch_version']}, running on torch {torch.__version__}")
PY
"$VENV/bin/python" -m pytest tests -q -p no:cacheprovider
