// Run-time choice of the CPU instruction set: CPU code written once as <op>_impl.h is compiled
// for any x86-64 and again with AVX2 + FMA (csrc/cpu/<op>_avx2.cpp, CMakeLists.txt).
#pragma once

#include <cstdlib>
#include <string>

namespace taskkernels::cpu {

// Whether the AVX2 + FMA copies are in this module and the CPU runs them.
// TASKKERNELS_CPU_ISA=generic forces the portable copies (tests use it to cover them).
inline bool use_avx2() {
#if defined(__x86_64__) && defined(TASKKERNELS_HAVE_AVX2_BUILD)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           !(std::getenv("TASKKERNELS_CPU_ISA") &&
                             std::string(std::getenv("TASKKERNELS_CPU_ISA")) == "generic");
  return avx2;
#else
  return false;
#endif
}

}  // namespace taskkernels::cpu
