// pool.cu - 2x2 / stride 2 max-pool on NHWC activations, our own kernels rather than cuDNN's
// legacy pooling: one thread per output element, channels innermost so a warp reads 32
// consecutive channels. Semantics are the CPU backend's (and PyTorch's): the first maximum in
// the scan order (0,0), (0,1), (1,0), (1,1) wins ties, a NaN wins; argmax holds h * W + w, the
// index into the sample's (H, W) plane. Windows tile x exactly, so backward writes every dx
// element once (no memset).
#include "cuda_common.h"

// Output element i of (N, H/2, W/2, C): its window's taps t = 0..3 in scan order.
struct pool_window {
  size_t base; // element offset of tap (0,0) in x
  int plane;   // its plane index h * W + w
};

__device__ __forceinline__ pool_window pool_locate(size_t i, int H, int W, int C) {
  const int Ho = H / 2, Wo = W / 2;
  int c = (int)(i % C);
  size_t r = i / C;
  int wo = (int)(r % Wo);
  r /= Wo;
  int ho = (int)(r % Ho);
  size_t n = r / Ho;
  pool_window p;
  p.plane = 2 * ho * W + 2 * wo;
  p.base = ((n * H + 2 * ho) * W + 2 * wo) * C + c;
  return p;
}

// Offset from the window's base and plane-index step of tap t.
__device__ __forceinline__ size_t pool_tap(int t, int W, int C) { return ((size_t)(t / 2) * W + t % 2) * C; }
__device__ __forceinline__ int pool_tap_plane(int t, int W) { return (t / 2) * W + t % 2; }

// The winner of a window (first maximum in scan order, NaN wins); its value in *best.
template <typename T>
__device__ __forceinline__ int32_t pool_argmax(const T *x, pool_window p, int W, int C, float *best) {
  int32_t bi = p.plane;
  float m = act_load(x, p.base);
  for (int t = 1; t < 4; t++) {
    float v = act_load(x, p.base + pool_tap(t, W, C));
    if (v > m || isnan(v)) {
      m = v;
      bi = p.plane + pool_tap_plane(t, W);
    }
  }
  *best = m;
  return bi;
}

template <typename T>
__global__ void maxpool_fwd_kernel(T *y, int32_t *argmax, const T *x, size_t count, int H, int W,
                                   int C) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (size_t)gridDim.x * blockDim.x) {
    float best;
    int32_t bi = pool_argmax(x, pool_locate(i, H, W, C), W, C, &best);
    act_store(y, i, best);
    if (argmax) argmax[i] = bi;
  }
}

// Without argmax the winner is recomputed from x by the same scan.
template <typename T>
__global__ void maxpool_bwd_kernel(T *dx, const T *dy, const int32_t *argmax, const T *x,
                                   size_t count, int H, int W, int C) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (size_t)gridDim.x * blockDim.x) {
    pool_window p = pool_locate(i, H, W, C);
    float unused;
    int32_t bi = argmax ? argmax[i] : pool_argmax(x, p, W, C, &unused);
    float g = act_load(dy, i);
    for (int t = 0; t < 4; t++)
      act_store(dx, p.base + pool_tap(t, W, C), bi == p.plane + pool_tap_plane(t, W) ? g : 0.0f);
  }
}

// The output's element count, after checking the shape (H and W even).
static size_t pool_count(op_shape s, const char *who) {
  if (s.H % 2 || s.W % 2) FATAL("%s: H = %d and W = %d must be even", who, s.H, s.W);
  return (size_t)s.N * (s.H / 2) * (s.W / 2) * s.C;
}

void cuda_maxpool_fwd(backend *b, void *y, int32_t *argmax, const void *x, op_shape s) {
  cuda_ctx *c = ctx_of(b);
  size_t count = pool_count(s, "maxpool_fwd");
  if (count == 0) return;
  dispatch_act(c, [&](auto tag) {
    using T = typename decltype(tag)::type;
    maxpool_fwd_kernel<T><<<cuda_blocks(c, count), CUDA_THREADS, 0, c->stream>>>(
        (T *)y, argmax, (const T *)x, count, s.H, s.W, s.C);
  });
  KERNEL_CHECK();
}

void cuda_maxpool_bwd(backend *b, void *dx, const void *dy, const int32_t *argmax, const void *x,
                      const void *y, op_shape s) {
  cuda_ctx *c = ctx_of(b);
  size_t count = pool_count(s, "maxpool_bwd");
  if (!argmax && !x) FATAL("maxpool_bwd: needs argmax or x");
  if (count == 0) return;
  dispatch_act(c, [&](auto tag) {
    using T = typename decltype(tag)::type;
    maxpool_bwd_kernel<T><<<cuda_blocks(c, count), CUDA_THREADS, 0, c->stream>>>(
        (T *)dx, (const T *)dy, argmax, (const T *)x, count, s.H, s.W, s.C);
  });
  KERNEL_CHECK();
}
