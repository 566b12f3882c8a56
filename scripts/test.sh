#!/usr/bin/env bash
# README command 2: set everything up, then run the test suite (CPU here; CUDA tests too where a
# GPU is present). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest tests "$@"
