// prep.c - batch assembly on the host: uint8 CIFAR images -> flipped, resized, normalised
// float NHWC (see prep_params in backend.h). This is the reference the CUDA batch kernel is
// tested against, and tests/test_data.c checks it against PyTorch's interpolate.
//
// The resize taps and their arithmetic are kernels/resize.h's (shared with the CUDA kernel),
// with p = byte / 255.0f (ToTensor). A horizontal flip mirrors the source column (x -> 31 - x),
// i.e. flip-then-resize as RandomHorizontalFlip before Resize; by the symmetry of the
// half-pixel grid this equals resize-then-flip up to rounding.
#include <math.h>

#include "check.h"
#include "cifar10.h"
#include "cpu_backend.h"
#include "resize.h"
#include "rng.h"

#define PREP_MAX_SIZE 512 // bounds the per-plane scratch on the stack (64 KiB)

// Source index pair and weights of one output coordinate (same for rows and columns).
typedef struct axis_tap {
  int i0, i1;
  float l0, l1;
} axis_tap;

static void axis_taps(axis_tap *t, int size) {
  for (int d = 0; d < size; d++) {
    resize_coef(d, CIFAR_SIDE, size, &t[d].i0, &t[d].i1, &t[d].l1);
    t[d].l0 = 1.0f - t[d].l1;
  }
}

void cpu_resize_plane(float *dst, int stride, const uint8_t *src, int size, int flip) {
  if (size < 1 || size > PREP_MAX_SIZE) FATAL("resize to %d pixels is out of range", size);
  // The plane in [0, 1] as ToTensor makes it (byte / 255 in float), columns mirrored if flipped.
  float p[CIFAR_SIDE][CIFAR_SIDE];
  for (int y = 0; y < CIFAR_SIDE; y++)
    for (int x = 0; x < CIFAR_SIDE; x++)
      p[y][x] = (float)src[y * CIFAR_SIDE + (flip ? CIFAR_SIDE - 1 - x : x)] / 255.0f;
  if (size == CIFAR_SIDE) { // identity: half-pixel grid lands on source centres exactly
    for (int y = 0; y < CIFAR_SIDE; y++)
      for (int x = 0; x < CIFAR_SIDE; x++) dst[(size_t)(y * size + x) * stride] = p[y][x];
    return;
  }
  axis_tap taps[PREP_MAX_SIZE];
  axis_taps(taps, size);
  // Separable: the horizontal pass of each source row is shared by every output row that reads
  // it, and it is the same value the two-level formula computes, so the result is unchanged.
  float h[CIFAR_SIDE][PREP_MAX_SIZE];
  for (int r = 0; r < CIFAR_SIDE; r++)
    for (int x = 0; x < size; x++) {
      const axis_tap tx = taps[x];
      h[r][x] = fmaf(tx.l0, p[r][tx.i0], tx.l1 * p[r][tx.i1]);
    }
  for (int y = 0; y < size; y++) {
    const axis_tap ty = taps[y];
    const float *a = h[ty.i0], *b = h[ty.i1];
    float *out = dst + (size_t)y * size * stride;
    for (int x = 0; x < size; x++) out[(size_t)x * stride] = fmaf(ty.l0, a[x], ty.l1 * b[x]);
  }
}

void cpu_prep_batch(backend *b, void *x, int32_t *labels, int32_t *ids, const uint8_t *images,
                    const uint8_t *image_labels, const int32_t *h_ids, int n,
                    const prep_params *p) {
  const int size = p->size;
  if (size < 1 || size > PREP_MAX_SIZE) FATAL("batch image size %d is out of range", size);
  for (int c = 0; c < 3; c++)
    if (!(p->std[c] > 0.0f)) FATAL("normalisation std[%d] = %g must be positive", c, p->std[c]);
  const size_t image_floats = (size_t)size * size * 3;
  float *xf = (float *)x;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++) {
    const int32_t id = h_ids[i];
    labels[i] = image_labels[id];
    ids[i] = id;
    // Keyed by sample id and epoch only: the same image flips the same way on any rank.
    int flip = p->augment &&
               rng_uniform(p->seed, RNG_STREAM_FLIP, p->epoch, (uint32_t)id, 0) < p->flip_p;
    float *out = xf + (size_t)i * image_floats;
    const uint8_t *img = images + (size_t)id * CIFAR_PIXELS;
    for (int c = 0; c < 3; c++) cpu_resize_plane(out + c, 3, img + (size_t)c * 1024, size, flip);
    const float mean[3] = {p->mean[0], p->mean[1], p->mean[2]};
    const float sd[3] = {p->std[0], p->std[1], p->std[2]};
    for (size_t k = 0; k < (size_t)size * size; k++)
      for (int c = 0; c < 3; c++) out[k * 3 + c] = (out[k * 3 + c] - mean[c]) / sd[c];
  }
}
