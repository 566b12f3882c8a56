"""Writes kernel_emu.h / kernel_emu_global.h: the device code of linear_sum_assignment.cu behind a
host shim (see run_lsa.sh)."""
import pathlib
import sys

src = pathlib.Path(sys.argv[1]).read_text()
out = pathlib.Path(sys.argv[2])
body = src[src.index("namespace taskkernels::cuda {"):src.index("template <class T>\nint launch")]
body = body.replace("extern __shared__ __align__(16) unsigned char smem[];", "unsigned char* smem = g_smem;")
body = body.replace("__shared__ Reduce red;", "static Reduce red;").replace("__shared__ int invalid;", "static int invalid;")
body += "\n}  // namespace\n}  // namespace taskkernels::cuda\n"
shim = (pathlib.Path(__file__).parent / "shim.h").read_text()
shim += "unsigned char* g_smem;\n#include \"kernels/linear_sum_assignment/linear_sum_assignment.h\"\n"
(out / "kernel_emu.h").write_text(shim + body)
glob = body.replace("constexpr size_t kMaxSmem = 96 * 1024;", "constexpr size_t kMaxSmem = 0;")
assert glob != body, "kMaxSmem not found"
(out / "kernel_emu_global.h").write_text(shim + glob)
