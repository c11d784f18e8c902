// resize.h - the bilinear resize taps shared by both backends' batch assembly (kernels/cpu/prep.c
// and kernels/cuda/prep.cu), host and device, so both produce the same floats. They reproduce
// PyTorch 1.13's CPU upsample_bilinear2d (align_corners=False, no antialias: torchvision's
// Resize on a float tensor when upscaling) bit for bit, checked by tests/test_data.c.
//
// For output index o of `out_size` from `in_size` source pixels: the two source indices and the
// weight of the second (the first weighs 1 - l1):
//   scale = (float)in / out;  src = (double)scale * (o + 0.5) - 0.5 in double, clamped at 0;
//   i0 = floor(src), i1 = min(i0 + 1, in - 1), l1 = (float)(src - i0).
// A pixel is then  a = fmaf(l0x, p[i0y][i0x], l1x * p[i0y][i1x]),  b likewise on row i1y,
// out = fmaf(l0y, a, l1y * b). Computing src in float instead moves the weights by up to ~1e-6
// at size 224; plain multiply-adds instead of the fmaf differ in the last bit. On the device the
// arithmetic is rounded explicitly (_rn) so that nvcc cannot contract it differently.
#ifndef VGG_RESIZE_H
#define VGG_RESIZE_H

#include "hostdev.h"

VGG_HD void resize_coef(int o, int in_size, int out_size, int *i0, int *i1, float *l1) {
  float scale = (float)in_size / (float)out_size;
#ifdef __CUDA_ARCH__
  double src = __dsub_rn(__dmul_rn((double)scale, __dadd_rn((double)o, 0.5)), 0.5);
#else
  volatile double prod = (double)scale * ((double)o + 0.5); // volatile: never contracted
  double src = prod - 0.5;
#endif
  if (src < 0.0) src = 0.0;
  int a = (int)src; // src >= 0: truncation is floor
  if (a > in_size - 1) a = in_size - 1;
  double frac = src - (double)a;
  *i0 = a;
  *i1 = a < in_size - 1 ? a + 1 : a;
  *l1 = (float)(frac < 1.0 ? frac : 1.0);
}

#endif
