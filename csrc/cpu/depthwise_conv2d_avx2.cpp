// depthwise_conv2d_impl.h compiled with -mavx2 -mfma (CMakeLists.txt); chosen at run time when
// the CPU has both.
#define TK_DW_NS isa_avx2
#include "cpu/depthwise_conv2d_impl.h"
