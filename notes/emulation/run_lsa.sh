#!/usr/bin/env bash
# Runs the CUDA batched assignment kernel's source on the CPU: each thread of a block is a
# std::thread, __syncthreads a std::barrier, __shfl_xor_sync a per-warp exchange. The block's
# result is compared with the CPU solver on random, tied, forbidden, ragged, strided and invalid
# problems, with the solver state in "shared memory" and (second build) in the workspace.
# Catches logic and barrier-placement errors; not races the hardware would show (that is what
# compute-sanitizer racecheck on a device is for), not timing. About 6 minutes on 2 cores. Shim: shim.h.
#   bash notes/emulation/run_lsa.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 "$here/make_lsa_emu.py" "$root/csrc/kernels/linear_sum_assignment/linear_sum_assignment.cu" "$tmp"
for variant in kernel_emu kernel_emu_global; do
  sed "s/#include \"kernel_emu.h\"/#include \"$variant.h\"/" "$here/lsa_main.cpp" > "$tmp/main.cpp"
  g++ -std=c++20 -O2 -pthread -I"$root/csrc" -I"$tmp" "$tmp/main.cpp" "$root/csrc/cpu/linear_sum_assignment.cpp" -o "$tmp/emu"
  echo "== $variant"
  "$tmp/emu" | tail -5
done
