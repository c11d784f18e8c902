// hostdev.h - VGG_HD: a small function that the CPU backend and CUDA kernels share (the counter
// RNG, the Adam arithmetic, the resize taps): __host__ __device__ under nvcc, static inline in C.
#ifndef VGG_HOSTDEV_H
#define VGG_HOSTDEV_H

#ifdef __CUDACC__
#define VGG_HD __host__ __device__ __forceinline__
#else
#define VGG_HD static inline
#endif

#endif
