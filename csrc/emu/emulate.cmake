# The emulated GPU build (TASKKERNELS_EMULATE=ON; scripts/emulate.sh): the CUDA kernels of
# csrc/kernels compiled a second time as host C++ over csrc/emu, with the package's torch glue and
# CPU code, into one copy of taskkernels._C per checker. Test tooling: never part of a wheel.
#
#   <build>/<check>/taskkernels/_C*.so      the module (glue, CPU code, emulator bindings)
#   <build>/<check>/libtk_kernels.so        the kernels, built for that checker
#   <build>/lib/libtkemu.so                 the runtime (fibers, scheduler, checks)
#
# Checkers: plain; address (AddressSanitizer + UBSan on the kernels); race (GCC's ThreadSanitizer
# instrumentation feeding the shared-memory race detector of racecheck.cpp); coverage (gcov).
set(TASKKERNELS_EMULATE_CHECKS "plain" CACHE STRING "Which emulated builds: plain;address;race;coverage")

find_path(TASKKERNELS_CUDA_INCLUDE cuda_runtime_api.h
          HINTS "$ENV{CUDA_HOME}/include" /usr/local/cuda/include /usr/include REQUIRED)
file(STRINGS "${TASKKERNELS_CUDA_INCLUDE}/cuda_runtime_api.h" _cudart_line REGEX "#define CUDART_VERSION +[0-9]+")
string(REGEX MATCH "[0-9]+" _cudart "${_cudart_line}")
math(EXPR _cuda_major "${_cudart} / 1000")
math(EXPR _cuda_minor "(${_cudart} % 1000) / 10")
message(STATUS "taskkernels: emulated GPU build (CUDA ${_cuda_major}.${_cuda_minor} headers at ${TASKKERNELS_CUDA_INCLUDE}), "
               "checks: ${TASKKERNELS_EMULATE_CHECKS}")

set(_emu_inc "${CMAKE_CURRENT_SOURCE_DIR}/csrc/emu/include")

add_library(tkemu SHARED csrc/emu/runtime.cpp csrc/emu/racecheck.cpp)
target_include_directories(tkemu PRIVATE csrc/emu "${_emu_inc}" "${TASKKERNELS_CUDA_INCLUDE}")
target_compile_options(tkemu PRIVATE -O2 -g -Wall -Wextra -Wno-unused-parameter)
target_link_libraries(tkemu PRIVATE ${CMAKE_DL_LIBS} pthread)
set_target_properties(tkemu PROPERTIES CXX_VISIBILITY_PRESET default LIBRARY_OUTPUT_DIRECTORY "${CMAKE_BINARY_DIR}/lib")

# Glue, CPU code and bindings: compiled once, linked into every checker's module.
add_library(tk_host OBJECT ${_sources})
target_include_directories(tk_host PRIVATE csrc "${TORCH_DIR}/include" "${_emu_inc}" "${TASKKERNELS_CUDA_INCLUDE}")
target_compile_definitions(tk_host PRIVATE
  TORCH_TARGET_VERSION=${TASKKERNELS_TORCH_TARGET}
  TASKKERNELS_TORCH_VERSION="${TORCH_VERSION}"
  TASKKERNELS_TORCH_CUDA_VERSION="${TORCH_CUDA_VERSION}"
  TASKKERNELS_WITH_CUDA=1
  TASKKERNELS_EMULATE=1
  TASKKERNELS_CUDA_ARCHS="emulated"
  TASKKERNELS_CUDA_COMPILER_VERSION="${_cuda_major}.${_cuda_minor}")
if(_have_avx2_build)
  target_compile_definitions(tk_host PRIVATE TASKKERNELS_HAVE_AVX2_BUILD=1)
endif()
target_link_libraries(tk_host PRIVATE pybind11::module)
target_compile_options(tk_host PRIVATE -O2 -Wall -Wextra -Wno-unused-parameter -include emu/cudart.h)
# The emulated device seen from torch: c10's device-guard interface, outside the stable ABI.
add_library(tk_emu_torch OBJECT csrc/emu/torch_device.cpp)
target_include_directories(tk_emu_torch PRIVATE "${TORCH_DIR}/include" "${_emu_inc}" "${TASKKERNELS_CUDA_INCLUDE}")
target_link_libraries(tk_emu_torch PRIVATE pybind11::module)
target_compile_options(tk_emu_torch PRIVATE -O2 -Wall -Wno-unused-parameter -include emu/cudart.h)
set_target_properties(tk_emu_torch PROPERTIES CXX_STANDARD 20)

file(GLOB _emu_cu CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/csrc/kernels/*/*.cu")
list(APPEND _emu_cu "${CMAKE_CURRENT_SOURCE_DIR}/csrc/emu/selftest.cu")
set_source_files_properties(${_emu_cu} PROPERTIES LANGUAGE CXX)

foreach(_check IN LISTS TASKKERNELS_EMULATE_CHECKS)
  if(_check STREQUAL "plain")
    set(_flags -O2)
    set(_link "")
  elseif(_check STREQUAL "address")
    set(_flags -O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
    set(_link -fsanitize=address,undefined)
  elseif(_check STREQUAL "race")
    # Instrumentation only: the __tsan_* entry points are the race detector in libtkemu.
    set(_flags -O1 -fsanitize=thread --param=tsan-instrument-func-entry-exit=0)
    set(_link "")
  elseif(_check STREQUAL "coverage")
    set(_flags -O0 --coverage)
    set(_link --coverage)
  else()
    message(FATAL_ERROR "taskkernels: unknown emulator check '${_check}' (plain, address, race, coverage)")
  endif()
  set(_dir "${CMAKE_BINARY_DIR}/${_check}")
  add_library(tk_kernels_${_check} SHARED ${_emu_cu})
  target_include_directories(tk_kernels_${_check} BEFORE PRIVATE "${_emu_inc}")
  target_include_directories(tk_kernels_${_check} PRIVATE csrc "${TASKKERNELS_CUDA_INCLUDE}")
  target_compile_definitions(tk_kernels_${_check} PRIVATE TASKKERNELS_EMULATE=1)
  target_compile_options(tk_kernels_${_check} PRIVATE -x c++ -include emu/device.h -g -Wall -Wno-unused-parameter
                         -Wno-unknown-pragmas -Wno-unused-variable -Wno-unused-but-set-variable -Wno-sign-compare
                         -Wno-class-memaccess -fno-strict-aliasing ${_flags})
  target_link_options(tk_kernels_${_check} PRIVATE ${_link})
  target_link_libraries(tk_kernels_${_check} PRIVATE tkemu)
  set_target_properties(tk_kernels_${_check} PROPERTIES OUTPUT_NAME tk_kernels LIBRARY_OUTPUT_DIRECTORY "${_dir}"
                        CXX_VISIBILITY_PRESET default)

  pybind11_add_module(_C_${_check} MODULE $<TARGET_OBJECTS:tk_host> $<TARGET_OBJECTS:tk_emu_torch>)
  target_link_libraries(_C_${_check} PRIVATE tk_kernels_${_check} tkemu "${TORCH_CPU_LIB}" "${C10_LIB}" ${CMAKE_DL_LIBS})
  target_link_options(_C_${_check} PRIVATE ${_link})
  set_target_properties(_C_${_check} PROPERTIES OUTPUT_NAME _C LIBRARY_OUTPUT_DIRECTORY "${_dir}/taskkernels")
endforeach()
