// conv.c - the CPU backend's 3x3, stride-1, pad-1 convolution (NHWC, weight (K,3,3,C)).
//
// Forward: im2col + one sgemm per chunk. With NHWC a row of the im2col matrix (one output
// pixel) is the (3,3,C) patch around it, the same order as a weight row (K,3,3,C), so
//   y (P, K) = col (P, 9C) * w^T (9C, K)
// Backward, per chunk of output pixels:
//   dw (K, 9C) += dy^T (K, P) * col (P, 9C)      (filter gradient)
//   dcol (P, 9C) = dy (P, K) * w (K, 9C)          (data gradient in patch form), then col2im
// Pixels are flattened over the whole batch (p = (n*H + h)*W + w) and processed in chunks so
// that the workspace is bounded (cpu_ctx.conv_budget) however large the batch; the gemms
// still see thousands of rows. col2im is a gather (each input pixel sums the <= 9 patch
// entries that read it) so it parallelises without atomics; the chunks run in order and each
// input pixel is assigned the first time a chunk reaches it and accumulated afterwards, so dx
// needs no separate zeroing pass.
#include "cpu/cpu_backend.h"

#include <cblas.h>
#include <string.h>

#include "check.h"

// Pixels per chunk for a patch row of `row` floats (at least one pixel).
static long conv_chunk_pixels(const cpu_ctx *ctx, long P, int row) {
  long np = (long)(ctx->conv_budget / (size_t)row);
  if (np < 1) np = 1;
  return np < P ? np : P;
}

// col (np, 9C): the (3,3,C) patches of output pixels [p0, p0 + np), zero outside the image.
// Each kernel row r is one contiguous run of 3C floats of x when the pixel is not on the
// left/right border, so most of the copy is one memcpy per (pixel, r).
static void im2col(cpu_ctx *ctx, float *col, const float *x, long p0, long np, int H, int W,
                   int C) {
  const size_t run = (size_t)C * sizeof(float);
#pragma omp parallel for schedule(static) num_threads(ctx->threads) if (np * C > 8192)
  for (long i = 0; i < np; i++) {
    long p = p0 + i;
    int w = (int)(p % W);
    long t = p / W;
    int h = (int)(t % H);
    long n = t / H;
    float *row = col + (size_t)i * 9 * C;
    for (int r = 0; r < 3; r++) {
      int hh = h + r - 1;
      float *dst = row + (size_t)r * 3 * C;
      if (hh < 0 || hh >= H) {
        memset(dst, 0, 3 * run);
        continue;
      }
      const float *src = x + ((size_t)(n * H + hh) * W + w) * C; // centre pixel of this row
      if (w > 0 && w < W - 1) {
        memcpy(dst, src - C, 3 * run);
      } else {
        if (w > 0) memcpy(dst, src - C, run); else memset(dst, 0, run);
        memcpy(dst + C, src, run);
        if (w < W - 1) memcpy(dst + 2 * C, src + C, run); else memset(dst + 2 * C, 0, run);
      }
    }
  }
}

// dx[q] (=|+=) sum of the dcol entries that read input pixel q, for the output pixels
// [p0, p1) that dcol (p1 - p0, 9C) holds. Input pixels [qlo, qfresh) already hold the sum from
// earlier chunks and are accumulated; [qfresh, qhi) are reached for the first time and set.
static void col2im(cpu_ctx *ctx, float *dx, const float *dcol, long p0, long p1, long qlo,
                   long qfresh, long qhi, int H, int W, int C) {
#pragma omp parallel for schedule(static) num_threads(ctx->threads) if ((qhi - qlo) * C > 8192)
  for (long q = qlo; q < qhi; q++) {
    int wq = (int)(q % W);
    long t = q / W;
    int hq = (int)(t % H);
    long n = t / H;
    float *out = dx + (size_t)q * C;
    if (q >= qfresh) memset(out, 0, (size_t)C * sizeof(float));
    // Output pixel (h, w) reads input (h + r - 1, w + s - 1) at kernel tap (r, s).
    for (int r = 0; r < 3; r++) {
      int h = hq - r + 1;
      if (h < 0 || h >= H) continue;
      for (int s = 0; s < 3; s++) {
        int w = wq - s + 1;
        if (w < 0 || w >= W) continue;
        long p = (n * H + h) * W + w;
        if (p < p0 || p >= p1) continue;
        const float *src = dcol + (size_t)(p - p0) * 9 * C + (size_t)(r * 3 + s) * C;
        for (int c = 0; c < C; c++) out[c] += src[c];
      }
    }
  }
}

void cpu_conv_fwd(backend *b, void *y_, const void *x_, const float *w, const float *bias, int N,
                  int H, int W, int C, int K, int relu) {
  cpu_ctx *ctx = b->impl;
  float *y = y_;
  const float *x = x_;
  const long P = (long)N * H * W;
  if (P == 0) return;
  const int row = 9 * C;
  const long chunk = conv_chunk_pixels(ctx, P, row);
  float *col = cpu_workspace(ctx, (size_t)chunk * row);
  for (long p0 = 0; p0 < P; p0 += chunk) {
    long np = P - p0 < chunk ? P - p0 : chunk;
    im2col(ctx, col, x, p0, np, H, W, C);
    float *yc = y + (size_t)p0 * K;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)np, K, row, 1.0f, col, row, w, row,
                0.0f, yc, K);
    if (bias || relu) {
#pragma omp parallel for schedule(static) num_threads(ctx->threads) if (np * K > 16384)
      for (long i = 0; i < np; i++) {
        float *yi = yc + (size_t)i * K;
        for (int k = 0; k < K; k++) {
          float v = yi[k] + (bias ? bias[k] : 0.0f);
          yi[k] = relu && v < 0.0f ? 0.0f : v; // NaN propagates, as torch.relu
        }
      }
    }
  }
}

void cpu_conv_bwd(backend *b, void *dx_, float *dw, float *db, void *dy_, const void *x_,
                  const float *w, const void *y_, int N, int H, int W, int C, int K, int relu) {
  cpu_ctx *ctx = b->impl;
  float *dx = dx_, *dy = dy_;
  const float *x = x_, *y = y_;
  const long P = (long)N * H * W;
  const int row = 9 * C;
  if (P == 0) {
    memset(dw, 0, (size_t)K * row * sizeof(float));
    memset(db, 0, (size_t)K * sizeof(float));
    return;
  }
  // Bias gradient (and the ReLU mask, in place) over the whole batch in one pass.
  cpu_bias_grad(ctx, db, dy, y, (size_t)P, K, relu);

  const long chunk = conv_chunk_pixels(ctx, P, row);
  float *col = cpu_workspace(ctx, (size_t)chunk * row);
  long qdone = 0; // input pixels [0, qdone) of dx have been written at least once
  for (long p0 = 0; p0 < P; p0 += chunk) {
    long np = P - p0 < chunk ? P - p0 : chunk;
    const float *dyc = dy + (size_t)p0 * K;
    im2col(ctx, col, x, p0, np, H, W, C);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, row, (int)np, 1.0f, dyc, K, col, row,
                p0 == 0 ? 0.0f : 1.0f, dw, row);
    if (!dx) continue;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)np, row, K, 1.0f, dyc, K, w, row,
                0.0f, col, row);
    // Output pixels [p0, p0+np) read input pixels within W + 1 of them (flattened).
    long qlo = p0 - W - 1 > 0 ? p0 - W - 1 : 0;
    long qhi = p0 + np + W + 1 < P ? p0 + np + W + 1 : P;
    col2im(ctx, dx, col, p0, p0 + np, qlo, qdone, qhi, H, W, C);
    qdone = qhi;
  }
}
