#!/usr/bin/env bash
# Creates .venv (if needed), installs requirements-dev.txt, and builds + installs taskkernels from
# this source tree (CUDA kernels included when nvcc and a CUDA torch are present; see README).
# Idempotent: a second run only rebuilds what changed. Output goes to .venv/setup.log.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
LOG="$VENV/setup.log"

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
: > "$LOG"

run_logged() {  # run a step quietly; on failure show the end of its log
  if ! "$@" >> "$LOG" 2>&1; then
    echo "setup: failed: $*" >&2
    grep -v "^WARNING: Location" "$LOG" | tail -40 >&2
    exit 1
  fi
}

stamp="$VENV/.requirements.sha"
want=$(sha256sum requirements-dev.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing requirements-dev.txt (torch is a large CUDA build: a minute or two)"
  run_logged "$PY" -m pip install --upgrade pip
  run_logged "$PY" -m pip install -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

echo "setup: building taskkernels (log: $LOG)"
start=$(date +%s)
run_logged "$PY" -m pip install --no-build-isolation --no-deps -v .
echo "setup: built in $(( $(date +%s) - start )) s: $("$PY" -c 'import taskkernels, json; print(json.dumps(taskkernels.build_info()))')"
