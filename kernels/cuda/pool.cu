// pool.cu - 2x2 / stride 2 max-pool on NHWC activations, our own kernels rather than cuDNN's
// legacy pooling: one thread per output element, channels innermost so a warp reads 32
// consecutive channels. Semantics are the CPU backend's (and PyTorch's): the first maximum in
// the scan order (0,0), (0,1), (1,0), (1,1) wins ties, a NaN wins; argmax holds h * W + w, the
// index into the sample's (H, W) plane. Windows tile x exactly, so backward writes every dx
// element once (no memset).
#include "cuda_common.h"

template <typename T>
__global__ void maxpool_fwd_kernel(T *y, int32_t *argmax, const T *x, size_t count, int H, int W,
                                   int C) {
  const int Ho = H / 2, Wo = W / 2;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (size_t)gridDim.x * blockDim.x) {
    int c = (int)(i % C);
    size_t r = i / C;
    int wo = (int)(r % Wo);
    r /= Wo;
    int ho = (int)(r % Ho);
    size_t n = r / Ho;
    float best = 0.0f;
    int32_t bi = 0;
    for (int t = 0; t < 4; t++) {
      int h = 2 * ho + t / 2, w = 2 * wo + t % 2;
      float v = act_load(x, ((n * H + h) * W + w) * C + c);
      if (t == 0 || v > best || isnan(v)) {
        best = v;
        bi = h * W + w;
      }
    }
    act_store(y, i, best);
    if (argmax) argmax[i] = bi;
  }
}

// Without argmax the winner is recomputed from x by the same scan.
template <typename T>
__global__ void maxpool_bwd_kernel(T *dx, const T *dy, const int32_t *argmax, const T *x,
                                   size_t count, int H, int W, int C) {
  const int Ho = H / 2, Wo = W / 2;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (size_t)gridDim.x * blockDim.x) {
    int c = (int)(i % C);
    size_t r = i / C;
    int wo = (int)(r % Wo);
    r /= Wo;
    int ho = (int)(r % Ho);
    size_t n = r / Ho;
    int32_t bi;
    if (argmax) {
      bi = argmax[i];
    } else {
      float best = 0.0f;
      bi = 0;
      for (int t = 0; t < 4; t++) {
        int h = 2 * ho + t / 2, w = 2 * wo + t % 2;
        float v = act_load(x, ((n * H + h) * W + w) * C + c);
        if (t == 0 || v > best || isnan(v)) {
          best = v;
          bi = h * W + w;
        }
      }
    }
    float g = act_load(dy, i);
    for (int t = 0; t < 4; t++) {
      int h = 2 * ho + t / 2, w = 2 * wo + t % 2;
      act_store(dx, ((n * H + h) * W + w) * C + c, bi == h * W + w ? g : 0.0f);
    }
  }
}

void cuda_maxpool_fwd(backend *b, void *y, int32_t *argmax, const void *x, int N, int H, int W,
                      int C) {
  cuda_ctx *c = ctx_of(b);
  if (H % 2 || W % 2) FATAL("maxpool_fwd: H = %d and W = %d must be even", H, W);
  size_t count = (size_t)N * (H / 2) * (W / 2) * C;
  if (count == 0) return;
  if (c->precision == 2)
    maxpool_fwd_kernel<bf16><<<cuda_blocks(c, count), CUDA_THREADS, 0, c->stream>>>(
        (bf16 *)y, argmax, (const bf16 *)x, count, H, W, C);
  else
    maxpool_fwd_kernel<float><<<cuda_blocks(c, count), CUDA_THREADS, 0, c->stream>>>(
        (float *)y, argmax, (const float *)x, count, H, W, C);
  KERNEL_CHECK();
}

void cuda_maxpool_bwd(backend *b, void *dx, const void *dy, const int32_t *argmax, const void *x,
                      const void *y, int N, int H, int W, int C) {
  cuda_ctx *c = ctx_of(b);
  if (H % 2 || W % 2) FATAL("maxpool_bwd: H = %d and W = %d must be even", H, W);
  if (!argmax && !x) FATAL("maxpool_bwd: needs argmax or x");
  size_t count = (size_t)N * (H / 2) * (W / 2) * C;
  if (count == 0) return;
  if (c->precision == 2)
    maxpool_bwd_kernel<bf16><<<cuda_blocks(c, count), CUDA_THREADS, 0, c->stream>>>(
        (bf16 *)dx, (const bf16 *)dy, argmax, (const bf16 *)x, count, H, W, C);
  else
    maxpool_bwd_kernel<float><<<cuda_blocks(c, count), CUDA_THREADS, 0, c->stream>>>(
        (float *)dx, (const float *)dy, argmax, (const float *)x, count, H, W, C);
  KERNEL_CHECK();
}
