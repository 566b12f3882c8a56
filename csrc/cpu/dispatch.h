// dtype dispatch for the CPU implementations: calls f(T{}) with the C++ type of a floating dtype.
#pragma once

#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <stdexcept>

namespace taskkernels::cpu {

template <class F>
void dispatch_floating(torch::headeronly::ScalarType t, F&& f) {
  using torch::headeronly::ScalarType;
  switch (t) {
    case ScalarType::Half: return f(c10::Half{});
    case ScalarType::BFloat16: return f(c10::BFloat16{});
    case ScalarType::Float: return f(float{});
    case ScalarType::Double: return f(double{});
    default: throw std::runtime_error("taskkernels: unsupported dtype");
  }
}

// Accumulation type of T: double for double, float otherwise.
template <class T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

}  // namespace taskkernels::cpu
