// bn.c - the CPU backend's BatchNorm2d (see bn_fwd / bn_bwd in backend.h), NHWC: a tensor is
// (rows, C) with rows = N * H * W pixels and the channel fastest.
//
// Per-channel statistics are sums over the rows in double: each thread sums a fixed range of
// rows and the partials are added in thread order, so results are deterministic for a given
// thread count. The variance takes two passes (the mean, then the squared deviations from it),
// never E[x^2] - E[x]^2, which cancels catastrophically when the mean is large beside the
// spread. The output is x * scale + shift per channel (scale = gamma / std, shift = beta -
// mean * scale), as PyTorch's CPU kernel computes it.
#include "cpu/cpu_backend.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "check.h"

typedef enum {
  SUM_X,    // s1 = sum x
  SUM_DEV2, // s1 = sum (x - mean)^2
  SUM_GRAD, // s1 = sum dy, s2 = sum dy (x - mean)
} sum_kind;

// Per-channel sums over all rows of x (rows, C) (and dy for SUM_GRAD) into s1 (and s2).
static void channel_sums(cpu_ctx *ctx, double *s1, double *s2, sum_kind k, const float *x,
                         const float *dy, const double *mean, size_t rows, int C) {
  const int nt = rows * (size_t)C >= 65536 ? ctx->threads : 1, per = k == SUM_GRAD ? 2 : 1;
  double *part = cpu_reduction(ctx, (size_t)nt * per * C);
  memset(part, 0, (size_t)nt * per * C * sizeof(double));
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), T = omp_get_num_threads();
    double *a = part + (size_t)t * per * C, *a2 = a + C;
    size_t lo = rows * t / T, hi = rows * (t + 1) / T;
    for (size_t i = lo; i < hi; i++) {
      const float *xi = x + i * C;
      if (k == SUM_X) {
        for (int c = 0; c < C; c++) a[c] += xi[c];
      } else if (k == SUM_DEV2) {
        for (int c = 0; c < C; c++) {
          double d = xi[c] - mean[c];
          a[c] += d * d;
        }
      } else {
        const float *gi = dy + i * C;
        for (int c = 0; c < C; c++) {
          a[c] += gi[c];
          a2[c] += (double)gi[c] * (xi[c] - mean[c]);
        }
      }
    }
  }
  for (int c = 0; c < C; c++) {
    double v = 0.0, v2 = 0.0;
    for (int t = 0; t < nt; t++) {
      v += part[(size_t)t * per * C + c];
      if (per == 2) v2 += part[(size_t)t * per * C + C + c];
    }
    s1[c] = v;
    if (per == 2) s2[c] = v2;
  }
}

// Adds sums (count doubles) over the ranks when p.sync says so; a no-op for this rank alone.
static void sum_over_ranks(bn_params p, double *sums, size_t count) {
  if (p.sync) p.sync->sum(p.sync->ctx, sums, count);
}

// Training statistics: save = (mean, 1 / sqrt(var + eps)) of the batch (the global batch with
// p.sync: the sums, and the count beside them, are added over the ranks before they are used,
// so every rank gets the same numbers), running updated; returns them in mean / invstd (C + 1
// doubles, then C).
static void batch_stats(cpu_ctx *ctx, double *mean, double *invstd, float *save, float *running,
                        const float *x, size_t rows, int C, bn_params p) {
  channel_sums(ctx, mean, NULL, SUM_X, x, NULL, NULL, rows, C);
  mean[C] = (double)rows;
  sum_over_ranks(p, mean, (size_t)C + 1);
  const double n = mean[C];
  if (n < 2)
    FATAL("bn_fwd: training batch norm needs more than one value per channel (N*H*W = %.0f)", n);
  for (int c = 0; c < C; c++) mean[c] /= n;
  double *var = invstd; // the squared deviations first, then turned into invstd in place
  channel_sums(ctx, var, NULL, SUM_DEV2, x, NULL, mean, rows, C);
  sum_over_ranks(p, var, (size_t)C);
  const double unbias = n / (n - 1.0);
  for (int c = 0; c < C; c++) {
    double v = var[c] / n;
    running[c] = (1.0f - p.momentum) * running[c] + p.momentum * (float)mean[c];
    running[C + c] = (1.0f - p.momentum) * running[C + c] + p.momentum * (float)(v * unbias);
    invstd[c] = 1.0 / sqrt(v + p.eps);
    save[c] = (float)mean[c];
    save[C + c] = (float)invstd[c];
  }
}

void cpu_bn_fwd(backend *b, void *y_, float *save, const void *x_, const float *gamma,
                const float *beta, float *running, op_shape s, bn_params p, int train,
                activation act) {
  cpu_ctx *ctx = b->impl;
  const size_t rows = (size_t)s.N * s.H * s.W;
  const int C = s.C;
  if (rows == 0 && !(train && p.sync)) return; // with sync, an empty share still adds its zeros
  if (!gamma || !beta || !running || (train && !save))
    FATAL("bn_fwd: gamma, beta and the running statistics are required, and save in training");
  float *y = y_;
  const float *x = x_;
  // Per channel: mean (and the count), invstd (doubles), then scale and shift (floats, in the
  // next C doubles).
  double *mean = cpu_channel_scratch(ctx, 3 * (size_t)C + 1), *invstd = mean + C + 1;
  float *scale = (float *)(invstd + C), *shift = scale + C;
  if (train) {
    batch_stats(ctx, mean, invstd, save, running, x, rows, C, p);
  } else {
    for (int c = 0; c < C; c++) {
      mean[c] = running[c];
      invstd[c] = 1.0 / sqrt((double)running[C + c] + p.eps);
    }
  }
  for (int c = 0; c < C; c++) {
    scale[c] = (float)(gamma[c] * invstd[c]);
    shift[c] = (float)(beta[c] - mean[c] * scale[c]);
  }
  const int relu = act == ACT_RELU;
#pragma omp parallel for schedule(static) num_threads(ctx->threads) if (rows * C > 16384)
  for (size_t i = 0; i < rows; i++) {
    const float *xi = x + i * C;
    float *yi = y + i * C;
    for (int c = 0; c < C; c++) {
      float v = xi[c] * scale[c] + shift[c];
      yi[c] = relu && v < 0.0f ? 0.0f : v; // NaN propagates, as torch.relu
    }
  }
}

// dx = gamma invstd (dy - mean(dy) - xhat mean(dy xhat)), xhat = (x - mean) invstd, written
// per element as k1 dy + k2 (x - mean) + k3; dgamma = sum dy xhat, dbeta = sum dy. With p.sync
// the means in dx are over the global batch (the sums and the count added over the ranks), the
// sums in dgamma and dbeta this rank's own.
void cpu_bn_bwd(backend *b, void *dx_, float *dgamma, float *dbeta, const void *dy_,
                const void *x_, const float *gamma, const float *save, op_shape s, bn_params p) {
  cpu_ctx *ctx = b->impl;
  const size_t rows = (size_t)s.N * s.H * s.W;
  const int C = s.C;
  if (rows == 0 && !p.sync) {
    memset(dgamma, 0, (size_t)C * sizeof(float));
    memset(dbeta, 0, (size_t)C * sizeof(float));
    return;
  }
  const float *dy = dy_, *x = x_, *invstd = save + C;
  // Per channel: mean, the two sums and the count (doubles), then k1, k2, k3 (floats, in the
  // next 2C doubles).
  double *mean = cpu_channel_scratch(ctx, 5 * (size_t)C + 1), *sdy = mean + C, *sdyx = sdy + C;
  for (int c = 0; c < C; c++) mean[c] = save[c];
  channel_sums(ctx, sdy, sdyx, SUM_GRAD, x, dy, mean, rows, C);
  for (int c = 0; c < C; c++) {
    dgamma[c] = (float)(sdyx[c] * invstd[c]);
    dbeta[c] = (float)sdy[c];
  }
  sdyx[C] = (double)rows;
  sum_over_ranks(p, sdy, 2 * (size_t)C + 1); // sdy, sdyx and the count are contiguous
  const double n = sdyx[C];
  float *k1 = (float *)(sdyx + C + 1), *k2 = k1 + C, *k3 = k2 + C;
  for (int c = 0; c < C; c++) {
    double is = invstd[c], g = gamma[c];
    k1[c] = (float)(g * is);
    k2[c] = (float)(-g * is * is * is * sdyx[c] / n);
    k3[c] = (float)(-g * is * sdy[c] / n);
  }
  if (dx_ && rows) {
    float *dx = dx_;
#pragma omp parallel for schedule(static) num_threads(ctx->threads) if (rows * C > 16384)
    for (size_t i = 0; i < rows; i++) {
      const float *gi = dy + i * C, *xi = x + i * C;
      float *di = dx + i * C;
      for (int c = 0; c < C; c++) di[c] = k1[c] * gi[c] + k2[c] * (xi[c] - save[c]) + k3[c];
    }
  }
}
