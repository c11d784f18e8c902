// conv.c - the CPU backend's 3x3, stride-1, pad-1 convolution (NHWC, weight (K,3,3,C)).
//
// Layers from 8 channels up go to Winograd's F(2x2, 3x3) (winograd.c, cpu_conv_winograd); the
// first layer (3 input channels) and any layer a test forces take im2col + sgemm, here.
//
// im2col + sgemm. With NHWC a row of the im2col matrix (one output pixel) is the (3,3,C)
// patch around it, the same order as a weight row (K,3,3,C), so for pixels p = (n*H + h)*W + w
//   forward        y (P, K)  = col(x) (P, 9C) * w^T (9C, K)
//   filter grad    dw (K, 9C) = dy^T (K, P) * col(x) (P, 9C)
//   data grad      dx (P, C)  = col(dy) (P, 9K) * wt^T (9K, C),  wt (C,3,3,K) = w flipped in
//                  (r, s) and transposed in (k, c): dx is the forward conv of dy with wt.
// Computing dx as a convolution (instead of dcol = dy * w and a col2im scatter) makes every
// pixel range independent, so the work is split by pixels across OpenMP threads, each
// running im2col, a single-threaded sgemm and the epilogue on its own range with its own
// slice of the workspace: no barriers, no atomics, the patch rows stay in that core's cache.
// (OpenBLAS's own thread pool is not used: its spinning workers starved the OpenMP loops
// around every gemm.) Each thread accumulates its filter gradient privately (thread 0 in dw,
// the others in the workspace) and the partials are summed in a fixed order: deterministic
// for a given thread count. Each thread walks its range in sub-chunks so the workspace is
// bounded by threads * cpu_ctx.conv_budget whatever the batch (Winograd's: see cpu_backend.h).
#include "cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

#include "check.h"

// The shape rule, from per-layer timings of VGG16 at widths 1 and 0.25 on one Zen 4 core
// (build/conv_bench; BENCHMARKS.md, "CPU convolutions"): Winograd was 1.25x to 2.2x faster
// on every layer from 16 channels up (the narrowest measured), 2x2 images included. On the
// first layer (3 input channels: Winograd's gemms have only C as their inner dimension,
// im2col's 9C = 27) it was mixed, the forward slower at width 1, so that layer stays with
// im2col; the line is drawn at 8, between the two.
int cpu_conv_winograd(const cpu_ctx *ctx, int C, int K) {
  if (ctx->conv_algo != CPU_CONV_AUTO) return ctx->conv_algo == CPU_CONV_WINOGRAD;
  return C >= 8 && K >= 8;
}

// Threads for a layer: one for tiny problems (the fork costs more than the work), and never
// more than there are pixels.
static int conv_threads(const cpu_ctx *ctx, long P, int C, int K) {
  if ((double)P * 9 * C * K < 2e5) return 1;
  return P < ctx->threads ? (int)P : ctx->threads;
}

// Pixels per sub-chunk of one thread whose patch rows are `row` floats (at least one).
static long conv_sub_pixels(const cpu_ctx *ctx, int row) {
  long np = (long)(ctx->conv_budget / (size_t)row);
  return np < 1 ? 1 : np;
}

// col (np, 9C): the (3,3,C) patches of pixels [p0, p0 + np) of x (N,H,W,C), zero outside the
// image. Kernel row r of a patch is one contiguous run of 3C floats of x unless the pixel is
// on the left/right border, so most of the copy is one memcpy per (pixel, r).
static void im2col(float *col, const float *x, long p0, long np, int H, int W, int C) {
  const size_t run = (size_t)C * sizeof(float);
  long p = p0;
  int w = (int)(p % W), h = (int)(p / W % H);
  long n = p / W / H;
  for (long i = 0; i < np; i++) {
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
    if (++w == W) {
      w = 0;
      if (++h == H) {
        h = 0;
        n++;
      }
    }
  }
}

// out (np, K) = col(in) * wk^T for pixels [p0, p0 + np): in (N,H,W,C), wk (K, 9C); then
// + bias and the activation when asked. col is this thread's workspace slice of `sub` patch rows.
static void conv_rows(float *out, const float *in, const float *wk, const float *bias,
                      activation act, float *col, long sub, long p0, long np, int H, int W, int C,
                      int K) {
  const int row = 9 * C;
  for (long q0 = p0; q0 < p0 + np; q0 += sub) {
    long nq = p0 + np - q0 < sub ? p0 + np - q0 : sub;
    im2col(col, in, q0, nq, H, W, C);
    float *oc = out + (size_t)q0 * K;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, K, row, 1.0f, col, row, wk, row,
                0.0f, oc, K);
    if (!bias && act == ACT_NONE) continue;
    for (long i = 0; i < nq; i++) {
      float *r = oc + (size_t)i * K;
      cpu_bias_act_row(r, r, bias, K, act);
    }
  }
}

void cpu_conv_fwd(backend *b, void *y, const void *x, const float *w, const float *bias,
                  op_shape s, activation act) {
  cpu_ctx *ctx = b->impl;
  const int H = s.H, W = s.W, C = s.C, K = s.K;
  const long P = (long)s.N * H * W;
  if (P == 0) return;
  const int nt = conv_threads(ctx, P, C, K);
  if (cpu_conv_winograd(ctx, C, K)) {
    float *ws = cpu_workspace(ctx, cpu_wino_floats(ctx, nt, C, K));
    cpu_wino_conv(ctx, nt, y, x, w, bias, act, s.N, H, W, C, K, ws);
    return;
  }
  const long sub = conv_sub_pixels(ctx, 9 * C);
  float *ws = cpu_workspace(ctx, (size_t)nt * sub * 9 * C);
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), T = omp_get_num_threads();
    long lo = P * t / T, hi = P * (t + 1) / T;
    conv_rows(y, x, w, bias, act, ws + (size_t)t * sub * 9 * C, sub, lo, hi - lo, H, W, C, K);
  }
}

// wt (C,3,3,K): w (K,3,3,C) flipped in (r, s) and transposed in (k, c), the weights of dx's
// convolution.
static void flip_weights(float *wt, const float *w, int C, int K, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int k = 0; k < K; k++)
    for (int rs = 0; rs < 9; rs++) {
      const float *src = w + ((size_t)k * 9 + rs) * C;
      for (int c = 0; c < C; c++) wt[((size_t)c * 9 + (8 - rs)) * K + k] = src[c];
    }
}

void cpu_conv_bwd(backend *b, void *dx, float *dw, float *db, const void *dy_, const void *x_,
                  const float *w, op_shape s) {
  cpu_ctx *ctx = b->impl;
  const float *dy = dy_;
  const float *x = x_;
  const int H = s.H, W = s.W, C = s.C, K = s.K;
  const long P = (long)s.N * H * W;
  const size_t nw = (size_t)K * 9 * C;
  if (P == 0) {
    memset(dw, 0, nw * sizeof(float));
    memset(db, 0, (size_t)K * sizeof(float));
    return;
  }
  cpu_bias_grad(ctx, db, dy, (size_t)P, K);

  const int nt = conv_threads(ctx, P, C, K);
  if (cpu_conv_winograd(ctx, C, K)) {
    const size_t need = dx ? cpu_wino_floats(ctx, nt, C, K) : 0,
                 grad = cpu_wino_grad_floats(ctx, nt, C, K);
    float *ws = cpu_workspace(ctx, need > grad ? need : grad);
    cpu_wino_filter_grad(ctx, nt, dw, dy, x, s.N, H, W, C, K, ws);
    if (dx) cpu_wino_data_grad(ctx, nt, dx, dy, w, s.N, H, W, C, K, ws);
    return;
  }
  // dx is computed in the same pass as dw, each thread on its own pixels.
  const int maxrow = 9 * (C > K ? C : K);
  const long sub = conv_sub_pixels(ctx, maxrow);
  // Workspace: per-thread patch rows | wt (C,3,3,K) | nt - 1 partial filter gradients.
  const size_t cols = (size_t)nt * sub * maxrow;
  float *ws = cpu_workspace(ctx, cols + nw + (nt - 1) * nw);
  float *wt = ws + cols, *part = wt + nw;
  if (dx) flip_weights(wt, w, C, K, nt);
  int used = 1;
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), T = omp_get_num_threads();
    if (t == 0) used = T;
    long lo = P * t / T, hi = P * (t + 1) / T;
    float *col = ws + (size_t)t * sub * maxrow;
    float *dwt = t == 0 ? dw : part + (size_t)(t - 1) * nw;
    const int row = 9 * C;
    for (long q0 = lo; q0 < hi; q0 += sub) {
      long nq = hi - q0 < sub ? hi - q0 : sub;
      im2col(col, x, q0, nq, H, W, C);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, row, (int)nq, 1.0f,
                  dy + (size_t)q0 * K, K, col, row, q0 == lo ? 0.0f : 1.0f, dwt, row);
    }
    if (dx) conv_rows(dx, dy, wt, NULL, ACT_NONE, col, sub, lo, hi - lo, H, W, K, C);
  }
  if (used > 1) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (size_t i = 0; i < nw; i++) {
      float s = dw[i];
      for (int t = 1; t < used; t++) s += part[(size_t)(t - 1) * nw + i];
      dw[i] = s;
    }
  }
}
