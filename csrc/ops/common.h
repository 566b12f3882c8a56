// Shared helpers for the torch glue in csrc/ops/: argument checks with messages a user can act
// on, dtype names, and the current CUDA stream. Glue only; kernels never include this.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace taskkernels {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

// TK_CHECK(cond, "patch_embed", "pixel_values must be ...", value, ...): throws a
// std::runtime_error (RuntimeError in Python) whose text starts with the op's name.
template <typename... Args>
[[noreturn]] inline void fail(const char* op, const Args&... args) {
  std::ostringstream oss;
  oss << "taskkernels." << op << ": ";
  ((oss << args), ...);
  throw std::runtime_error(oss.str());
}
#define TK_CHECK(cond, op, ...)                 \
  do {                                          \
    if (!(cond)) {                              \
      ::taskkernels::fail(op, ##__VA_ARGS__);   \
    }                                           \
  } while (0)

inline const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Half: return "float16";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::Long: return "int64";
    case ScalarType::Int: return "int32";
    case ScalarType::Bool: return "bool";
    default: return "an unsupported dtype";
  }
}

inline std::string shape_str(const Tensor& t) {
  std::ostringstream oss;
  oss << "(";
  for (int64_t i = 0; i < t.dim(); ++i) {
    oss << (i ? ", " : "") << t.size(i);
  }
  oss << (t.dim() == 1 ? ",)" : ")");
  return oss.str();
}

inline std::string device_str(const Tensor& t) {
  if (t.is_cpu()) return "cpu";
  if (t.is_cuda()) return "cuda:" + std::to_string(t.get_device_index());
  return "another device";
}

inline bool is_floating(ScalarType t) {
  return t == ScalarType::Half || t == ScalarType::BFloat16 || t == ScalarType::Float ||
         t == ScalarType::Double;
}

// Same dtype and device as `ref` (named ref_name), with a message naming both arguments.
inline void check_same(const char* op, const Tensor& t, const char* name, const Tensor& ref,
                       const char* ref_name) {
  TK_CHECK(t.scalar_type() == ref.scalar_type(), op, name, " must have the dtype of ", ref_name,
           " (", dtype_name(ref.scalar_type()), "), got ", dtype_name(t.scalar_type()));
  TK_CHECK(t.is_cpu() == ref.is_cpu() && t.get_device_index() == ref.get_device_index(), op,
           name, " must be on the device of ", ref_name, " (", device_str(ref), "), got ",
           device_str(t));
}

// Set from Python at import when the compiled CUDA kernels must not run (torch uses another
// CUDA major); every CUDA op then raises with this reason. Empty: enabled.
void disable_cuda(const std::string& reason);

#ifdef TASKKERNELS_WITH_CUDA
// The current CUDA stream of `device`, as torch sees it, for `op`'s launch. Resolved at run time
// from torch's own CUDA library, so the module itself does not link against libtorch_cuda.
// Raises, naming the op, when the CUDA kernels are disabled.
void* current_cuda_stream(int32_t device, const char* op);
// Throws with the CUDA error's text when `err` (a cudaError_t) is not success.
void check_cuda(int err, const char* op, const char* what);
#endif

}  // namespace taskkernels
