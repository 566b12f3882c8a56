// The taskkernels op namespace. Each op adds its schemas in csrc/ops/<op>.cpp with
// STABLE_TORCH_LIBRARY_FRAGMENT and its CPU/CUDA kernels with STABLE_TORCH_LIBRARY_IMPL.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(taskkernels, m) {}
