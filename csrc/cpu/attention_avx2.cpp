// attention_impl.h compiled with -mavx2 -mfma (CMakeLists.txt); chosen at run time when the CPU
// has both.
#define TK_ATTN_NS isa_avx2
#include "cpu/attention_impl.h"
