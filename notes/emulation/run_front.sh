#!/usr/bin/env bash
# Runs the ConvNeXt front's CUDA kernels (csrc/kernels/depthwise_conv2d/layernorm.cu) on the CPU
# by emulation (notes/emulation/shim.h) against a direct float64 computation. Logic and barrier
# placement only: no memory-model races, no timing, float64 only.   bash notes/emulation/run_front.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 "$here/make_front_emu.py" "$root/csrc/kernels/depthwise_conv2d/layernorm.cu" "$tmp"
g++ -std=c++20 -O1 -pthread -I"$root/csrc" -I"$tmp" "$here/front_main.cpp" -o "$tmp/emu"
"$tmp/emu"
