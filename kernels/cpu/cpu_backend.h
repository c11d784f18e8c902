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

// ---- internals of the CPU backend (backend_cpu.c, conv.c) ----------------------------------

#include <stddef.h>

// How the 3x3 convolutions are computed: im2col + sgemm (conv.c) for every layer, Winograd
// F(2x2, 3x3) (winograd.c) for every layer, or each layer by its shape (cpu_conv_winograd).
typedef enum { CPU_CONV_AUTO, CPU_CONV_IM2COL, CPU_CONV_WINOGRAD } cpu_conv_algo;

// The CPU backend's context (backend->impl). The conv workspace is grown on demand and only
// the first step of training ever grows it, so steady-state steps never allocate.
typedef struct cpu_ctx {
  int threads;      // OpenMP threads for every op (OpenBLAS itself runs single-threaded)
  float *ws;        // conv workspace: im2col rows or Winograd's tiles, filter-grad partials
  size_t ws_floats; // its capacity in floats
  size_t conv_budget; // per-thread chunk of im2col rows, or of Winograd's transformed tiles,
                      // in floats (CPU_CONV_BUDGET; tests shrink it)
  cpu_conv_algo conv_algo; // CPU_CONV_AUTO; tests force one algorithm
  double *red;      // per-thread partial sums for bias gradients (deterministic reduction)
  size_t red_doubles;
  double *chan;     // per-channel constants of batch norm (statistics, scale and shift)
  size_t chan_doubles;
} cpu_ctx;

// Default chunk budget per thread: 2^20 floats (4 MiB). im2col: gemms of >= 227 rows even at
// C = 512, small enough to stay in cache between im2col and the gemm that reads it (VGG16 on
// 2 cores: 1 to 8 MiB per thread measured alike within noise; 32 MiB was ~10% slower).
// Winograd: 64 tiles per gemm at C = K = 512 (smaller budgets, fewer rows per gemm, made those
// layers slower); its filter gradient adds a 16 K C-float sum per thread beyond the budget.
#define CPU_CONV_BUDGET ((size_t)1 << 20)

// Returns ctx->ws with room for at least `floats` floats (grows, never shrinks).
float *cpu_workspace(cpu_ctx *ctx, size_t floats);
// Returns ctx->red with room for at least `doubles` doubles.
double *cpu_reduction(cpu_ctx *ctx, size_t doubles);
// Returns ctx->chan with room for at least `doubles` doubles (grown by the first step only,
// like the workspace: steady-state steps never allocate).
double *cpu_channel_scratch(cpu_ctx *ctx, size_t doubles);

// Bias gradient db (cols) = column sums of dy (rows, cols), accumulated in double in a fixed
// order (deterministic for a given thread count).
void cpu_bias_grad(cpu_ctx *ctx, float *db, const float *dy, size_t rows, int cols);

// One row of y = act(x + bias) (bias may be NULL; y may be x); NaN propagates, as torch.relu.
static inline void cpu_bias_act_row(float *y, const float *x, const float *bias, int cols,
                                    activation act) {
  const int relu = act == ACT_RELU;
  for (int k = 0; k < cols; k++) {
    float v = x[k] + (bias ? bias[k] : 0.0f);
    y[k] = relu && v < 0.0f ? 0.0f : v;
  }
}

// C (M, N) = op(A) (M, K) * op(B) (K, N) + beta C, row-major, with the longer side of C split
// across ctx->threads OpenMP threads, each calling single-threaded OpenBLAS.
void cpu_sgemm(cpu_ctx *ctx, int trans_a, int trans_b, int M, int N, int K, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc);

// 3x3 pad-1 convolution, by im2col + sgemm in chunks of pixels or by Winograd (conv.c).
void cpu_conv_fwd(backend *b, void *y, const void *x, const float *w, const float *bias,
                  op_shape s, activation act);
void cpu_conv_bwd(backend *b, void *dx, float *dw, float *db, const void *dy, const void *x,
                  const float *w, op_shape s);

// Whether a layer with C input and K output channels takes Winograd under ctx->conv_algo
// (conv.c): the forward and the backward of a layer always take the same algorithm.
int cpu_conv_winograd(const cpu_ctx *ctx, int C, int K);
// y (N,H,W,K) = act(conv3x3(x (N,H,W,C), w (K,3,3,C)) + bias) by Winograd F(2x2, 3x3) on up to
// `threads` threads, in ws of cpu_wino_floats(ctx, threads, C, K) floats (winograd.c); and
// that convolution's dx (N,H,W,C) from dy (N,H,W,K), in as many.
size_t cpu_wino_floats(const cpu_ctx *ctx, int threads, int C, int K);
void cpu_wino_conv(cpu_ctx *ctx, int threads, float *y, const float *x, const float *w,
                   const float *bias, activation act, int N, int H, int W, int C, int K,
                   float *ws);
void cpu_wino_data_grad(cpu_ctx *ctx, int threads, float *dx, const float *dy, const float *w,
                        int N, int H, int W, int C, int K, float *ws);
// Its dw (K,3,3,C) from dy (N,H,W,K) and x, in ws of cpu_wino_grad_floats(ctx, threads, C, K)
// floats.
size_t cpu_wino_grad_floats(const cpu_ctx *ctx, int threads, int C, int K);
void cpu_wino_filter_grad(cpu_ctx *ctx, int threads, float *dw, const float *dy, const float *x,
                          int N, int H, int W, int C, int K, float *ws);

// BatchNorm2d (bn.c).
void cpu_bn_fwd(backend *b, void *y, float *save, const void *x, const float *gamma,
                const float *beta, float *running, op_shape s, bn_params p, int train,
                activation act);
void cpu_bn_bwd(backend *b, void *dx, float *dgamma, float *dbeta, const void *dy, const void *x,
                const float *gamma, const float *save, op_shape s, bn_params p);

#endif
