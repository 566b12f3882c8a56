"""Writes front_emu.h: the device code of depthwise_conv2d/layernorm.cu behind a host shim (see
run_front.sh)."""
import pathlib
import re
import sys

src = pathlib.Path(sys.argv[1]).read_text()
out = pathlib.Path(sys.argv[2])
body = src[src.index("namespace taskkernels::cuda {"):src.index("}  // namespace\n\nbool fused_front_supported")]
body = re.sub(r"__shared__ ", "static ", body)
body = body.replace("__launch_bounds__(kMaxFusedC)", "").replace("__launch_bounds__(kWarpsPerBlock * 32)", "")
body = body.replace("__launch_bounds__(kParamThreads)", "")
body += "\n}  // namespace\n}  // namespace taskkernels::cuda\n"
dtype = (pathlib.Path(sys.argv[1]).parent / "dtype.cuh").read_text()
dtype = dtype[dtype.index("namespace taskkernels::cuda::dw {"):]
shim = (pathlib.Path(__file__).parent / "shim.h").read_text()
(out / "front_emu.h").write_text(shim + "constexpr int cudaErrorInvalidValue = 1;\n"
                                 '#include "kernels/depthwise_conv2d/depthwise_conv2d.h"\n' + dtype + body)
