#!/usr/bin/env bash
# README command 1: set everything up, then run the benchmark suite on the default device (the GPU
# where there is one, else the CPU): prints a table, appends to benchmarks/results/<op>.json and
# draws benchmarks/results/<op>-<device>.png. Extra arguments go to python -m benchmarks.run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m benchmarks.run "$@"
