#!/usr/bin/env bash
# README command 1: set everything up, then benchmark on the default device (the GPU where there is
# one, else the CPU). With no arguments it times the headline set (one case per op, one per model
# family; about 3 minutes on a 2-core CPU after setup) and ends with one summary table and
# benchmarks/local/summary-<device>.png (benchmarks/local/ is ignored by git). --all runs every
# case; --record appends to the tracked benchmarks/results/ instead. Extra arguments go to
# python -m benchmarks.run (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m benchmarks.run "$@"
