// cuda_check.h - the CUDA runtime check macro, usable from C (comm/comm_nccl.c) and from the
// .cu files: on failure it reports file:line, the expression and CUDA's message through FATAL
// (which aborts every rank once MPI is up).
#ifndef VGG_CUDA_CHECK_H
#define VGG_CUDA_CHECK_H

#include <cuda_runtime_api.h>

#include "check.h"

#define cudaCheck(expr)                                                                    \
  do {                                                                                     \
    cudaError_t cuda_e_ = (expr);                                                          \
    if (cuda_e_ != cudaSuccess)                                                            \
      FATAL("%s: CUDA error %d: %s", #expr, (int)cuda_e_, cudaGetErrorString(cuda_e_));    \
  } while (0)

#endif
