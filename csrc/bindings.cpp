// The pybind11 module taskkernels._C. Importing it runs the op registrations of csrc/ops/*.cpp
// (static initializers); the functions here describe the build.
#include <pybind11/pybind11.h>

#include <string>

namespace py = pybind11;

#ifndef TASKKERNELS_WITH_CUDA
#define TASKKERNELS_CUDA_ARCHS ""
#define TASKKERNELS_CUDA_COMPILER_VERSION ""
#endif

namespace {

py::list split_archs(const std::string& csv) {
  py::list out;
  size_t start = 0;
  while (start < csv.size()) {
    const size_t end = csv.find(',', start);
    out.append(csv.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

py::dict build_info() {
  py::dict d;
  d["torch_version"] = TASKKERNELS_TORCH_VERSION;        // the torch the module was built against
  d["torch_cuda_version"] = TASKKERNELS_TORCH_CUDA_VERSION;  // that torch's CUDA ("" for CPU)
#ifdef TASKKERNELS_WITH_CUDA
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
  d["cuda_compiler_version"] = TASKKERNELS_CUDA_COMPILER_VERSION;
  d["cuda_archs"] = split_archs(TASKKERNELS_CUDA_ARCHS);
  d["stable_abi_target"] = "2.11";
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "taskkernels native module: op registrations (torch.ops.taskkernels) and build info";
  m.def("build_info", &build_info,
        "What this build contains: torch version built against, CUDA version, GPU architectures, "
        "whether CUDA kernels are compiled in.");
}
