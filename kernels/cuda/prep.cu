// prep.cu - batch assembly on the device: one kernel per batch gathers the images named by ids
// from the uint8 dataset resident in device memory, flips, resizes bilinearly, normalises and
// writes NHWC activations; labels are gathered beside them.
//
// The arithmetic is kernels/cpu/prep.c's, operation for operation (byte / 255 in float, the
// source column mirrored when flipped, the taps and formula of kernels/resize.h, then
// (v - mean) / std), with _rn intrinsics so nvcc fuses exactly where the host does: both
// backends produce the same floats (tests/test_cuda_host.c checks this per-pixel evaluation
// against cpu_resize_plane's separable one).
// The step variables come from device memory in every mode (cuda_common.h): the ids from the
// `ids` buffer (copied there by prep_batch in an eager step, by replay for a graph), the epoch
// from c->d_vars (staged by prep_batch, or copied by replay).
#include "cifar10.h"
#include "cuda_common.h"
#include "resize.h"
#include "rng.h"

#define PREP_MAX_SIZE 512 // as kernels/cpu/prep.c

__device__ __forceinline__ float prep_pixel(const uint8_t *plane, int y, int x, int flip) {
  return __fdiv_rn((float)plane[y * CIFAR_SIDE + (flip ? CIFAR_SIDE - 1 - x : x)], 255.0f);
}

// a.epoch is not read: the step's epoch is gv->epoch.
template <typename T>
__global__ void prep_kernel(T *out, int32_t *labels, const int32_t *ids, const uint8_t *images,
                            const uint8_t *image_labels, int n, prep_params a,
                            const dev_vars *gv) {
  const uint32_t epoch = gv->epoch;
  const size_t pix = (size_t)a.size * a.size;
  const size_t count = (size_t)n * pix;
  for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < count;
       t += (size_t)gridDim.x * blockDim.x) {
    int i = (int)(t / pix);
    int oy = (int)((t % pix) / a.size), ox = (int)(t % a.size);
    int32_t id = ids[i];
    if (oy == 0 && ox == 0) labels[i] = image_labels[id];
    int flip = a.augment && rng_uniform(a.seed, RNG_STREAM_FLIP, epoch, (uint32_t)id, 0) < a.flip_p;
    const uint8_t *img = images + (size_t)id * CIFAR_PIXELS;
    int y0 = oy, y1 = oy, x0 = ox, x1 = ox;
    float ly = 0.0f, lx = 0.0f;
    if (a.size != CIFAR_SIDE) {
      resize_coef(oy, CIFAR_SIDE, a.size, &y0, &y1, &ly);
      resize_coef(ox, CIFAR_SIDE, a.size, &x0, &x1, &lx);
    }
    const float l0y = __fsub_rn(1.0f, ly), l0x = __fsub_rn(1.0f, lx);
    for (int c = 0; c < 3; c++) {
      const uint8_t *plane = img + (size_t)c * CIFAR_SIDE * CIFAR_SIDE;
      float v;
      if (a.size == CIFAR_SIDE) {
        v = prep_pixel(plane, oy, ox, flip);
      } else {
        float top = __fmaf_rn(l0x, prep_pixel(plane, y0, x0, flip),
                              __fmul_rn(lx, prep_pixel(plane, y0, x1, flip)));
        float bot = __fmaf_rn(l0x, prep_pixel(plane, y1, x0, flip),
                              __fmul_rn(lx, prep_pixel(plane, y1, x1, flip)));
        v = __fmaf_rn(l0y, top, __fmul_rn(ly, bot));
      }
      v = __fdiv_rn(__fsub_rn(v, a.mean[c]), a.std[c]);
      act_store(out, t * 3 + c, v);
    }
  }
}

static void ids_upload(cuda_ctx *c, int32_t *ids, const int32_t *h_ids, int n) {
  // The caller may overwrite h_ids as soon as we return (the trainer refills it for the next
  // batch while the GPU may still be a whole step behind). From pageable memory (the trainer's
  // malloc'd ids) cudaMemcpyAsync returns only after staging the bytes, so that is safe; from
  // page-locked memory the copy is truly asynchronous, so wait for it there.
  cudaCheck(cudaMemcpyAsync(ids, h_ids, (size_t)n * sizeof(int32_t), cudaMemcpyHostToDevice, c->stream));
  cudaPointerAttributes pa;
  if (cudaPointerGetAttributes(&pa, h_ids) == cudaSuccess) {
    if (pa.type == cudaMemoryTypeHost) cudaCheck(cudaStreamSynchronize(c->stream));
  } else {
    (void)cudaGetLastError(); // unknown pointer: treat as pageable (older runtimes error here)
  }
}

void cuda_prep_batch(backend *b, void *x, int32_t *labels, int32_t *ids, const uint8_t *images,
                     const uint8_t *image_labels, const int32_t *h_ids, int n,
                     const prep_params *p) {
  cuda_ctx *c = ctx_of(b);
  if (p->size < 1 || p->size > PREP_MAX_SIZE) FATAL("batch image size %d is out of range", p->size);
  for (int k = 0; k < 3; k++)
    if (!(p->std[k] > 0.0f)) FATAL("normalisation std[%d] = %g must be positive", k, p->std[k]);
  if (n <= 0) return;
  if (c->capturing) {
    // Each replay copies its step's ids to `ids` before the graph runs (graph.cu).
    if (c->cap_preps++) FATAL("a captured training step assembles one batch, not two");
    c->cap_ids = ids;
    c->cap_n = n;
  } else {
    ids_upload(c, ids, h_ids, n);
  }
  cuda_stage(c, &c->d_vars->epoch, p->epoch);
  prep_params a = *p;
  a.epoch = UINT32_MAX; // the kernel reads the step's epoch from d_vars only (see the top)
  size_t count = (size_t)n * p->size * p->size;
  dispatch_act(c, [&](auto tag) {
    using T = typename decltype(tag)::type;
    prep_kernel<T><<<cuda_blocks(c, count), CUDA_THREADS, 0, c->stream>>>(
        (T *)x, labels, ids, images, image_labels, n, a, c->d_vars);
  });
  KERNEL_CHECK();
}
