// The pybind11 module taskkernels._C. Importing it runs the op registrations of csrc/ops/*.cpp
// (static initializers); the functions here describe the build and serve numpy callers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "common/dropout.h"
#include "cpu/ctc_loss.h"
#include "ops/common.h"
#include "cpu/linear_sum_assignment.h"

namespace py = pybind11;

#ifdef TASKKERNELS_EMULATE
namespace taskkernels {
void emulator_bindings(py::module_& m);  // csrc/emu/torch_device.cpp
}
#endif

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
#ifdef TASKKERNELS_EMULATE
  d["emulated"] = true;  // the CUDA kernels run on the emulated GPU (csrc/emu): a test build
#endif
  d["cuda_compiler_version"] = TASKKERNELS_CUDA_COMPILER_VERSION;
  d["cuda_archs"] = split_archs(TASKKERNELS_CUDA_ARCHS);
  d["stable_abi_target"] = "2.11";
  return d;
}

// scipy.optimize.linear_sum_assignment's contract on a float64 matrix: (row_ind, col_ind), rows
// ascending; ValueError for invalid entries or an infeasible matrix.
py::tuple linear_sum_assignment(py::array_t<double, py::array::forcecast> cost, bool maximize) {
  if (cost.ndim() != 2) {
    throw py::value_error("expected a matrix (2-D array), got a " + std::to_string(cost.ndim()) +
                          "-D array");
  }
  const int64_t rows = cost.shape(0), cols = cost.shape(1);
  const int64_t rs = cost.strides(0) / int64_t(sizeof(double));
  const int64_t cs = cost.strides(1) / int64_t(sizeof(double));
  std::vector<int64_t> col_for_row(rows);
  taskkernels::cpu::LsaStatus status;
  {
    py::gil_scoped_release release;
    status = taskkernels::cpu::linear_sum_assignment(cost.data(), rows, cols, rs, cs, maximize,
                                                     col_for_row.data());
  }
  if (status == taskkernels::cpu::LsaStatus::kInvalid) {
    throw py::value_error("matrix contains invalid numeric entries");
  }
  if (status == taskkernels::cpu::LsaStatus::kInfeasible) {
    throw py::value_error("cost matrix is infeasible");
  }
  std::vector<int64_t> r, c;
  for (int64_t i = 0; i < rows; ++i) {
    if (col_for_row[i] >= 0) {
      r.push_back(i);
      c.push_back(col_for_row[i]);
    }
  }
  return py::make_tuple(py::array_t<int64_t>(r.size(), r.data()), py::array_t<int64_t>(c.size(), c.data()));
}

// The attention dropout keep-mask (B, H, Nq, Nk) the kernels draw from `seed` (for tests).
py::array_t<bool> attention_dropout_keep(int64_t seed, int64_t B, int64_t H, int64_t Nq, int64_t Nk, double p) {
  py::array_t<bool> out({B, H, Nq, Nk});
  bool* o = out.mutable_data();
  const uint32_t threshold = taskkernels::dropout_threshold(p);
  const int64_t n = B * H * Nq * Nk;
  for (int64_t i = 0; i < n; ++i)
    o[i] = taskkernels::dropout_keep(static_cast<uint64_t>(seed), threshold, static_cast<uint64_t>(i));
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "taskkernels native module: op registrations (torch.ops.taskkernels) and build info";
  m.def("build_info", &build_info,
        "What this build contains: torch version built against, CUDA version, GPU architectures, "
        "whether CUDA kernels are compiled in.");
  m.def("linear_sum_assignment", &linear_sum_assignment, py::arg("cost"), py::arg("maximize") = false,
        "Exact linear sum assignment on a float64 matrix: scipy.optimize.linear_sum_assignment's "
        "contract. Use taskkernels.linear_sum_assignment.");
  m.def("_disable_cuda", &taskkernels::disable_cuda, py::arg("reason"),
        "Make every CUDA op raise with this reason (set at import when torch's CUDA major differs "
        "from the build's); an empty reason enables them again.");
  m.def("_attention_dropout_keep", &attention_dropout_keep, py::arg("seed"), py::arg("B"), py::arg("H"),
        py::arg("Nq"), py::arg("Nk"), py::arg("p"),
        "The keep-mask attention dropout draws from this seed, as a (B, H, Nq, Nk) bool array (tests).");
  m.def("_ctc_log_space_fallbacks", &taskkernels::cpu::ctc_log_space_fallbacks,
        "How many sequences the CPU CTC loss computed on its log-space path since import (tests).");
#ifdef TASKKERNELS_EMULATE
  taskkernels::emulator_bindings(m);
#endif
}
