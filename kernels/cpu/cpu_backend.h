// cpu_backend.h - internals shared by the CPU backend's files (kernels/cpu/*.c).
#ifndef VGG_CPU_BACKEND_H
#define VGG_CPU_BACKEND_H

#include "backend.h"

// Batch assembly on the host (see prep_params in backend.h); also the reference the CUDA
// batch kernel is tested against. x is float NHWC (n, size, size, 3).
void cpu_prep_batch(backend *b, void *x, int32_t *labels, int32_t *ids, const uint8_t *images,
                    const uint8_t *image_labels, const int32_t *h_ids, int n,
                    const prep_params *p);

// Bilinear resize of one 32x32 uint8 plane to size x size floats in [0, 1], with optional
// horizontal flip, matching torchvision.transforms.Resize on a float tensor (antialias off,
// align_corners=False, half-pixel centres, edge clamped). dst is written with `stride`
// floats between consecutive pixels (3 for interleaved NHWC output).
void cpu_resize_plane(float *dst, int stride, const uint8_t *src, int size, int flip);

#endif
