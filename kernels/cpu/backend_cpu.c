// backend_cpu.c - the CPU reference backend: fp32 on the host, OpenBLAS for every matrix
// product, OpenMP for the elementwise loops. It is the numerical reference the CUDA backend
// and the PyTorch golden tests are compared against, so each op follows PyTorch's formula
// (and its order of floating-point operations where that is cheap to match). The exception is
// the convolutions: most layers use Winograd's F(2x2, 3x3) (winograd.c), exact in exact
// arithmetic and in float within 1e-5 of the direct sum relative to the output's scale
// (tests/test_cpu_ops.c), as cuDNN's Winograd engines are.
//
// Owns: the backend struct and its cpu_ctx (thread count, conv workspace, reduction buffer).
// Convolutions live in conv.c, batch norm in bn.c, batch assembly in prep.c. All memory is
// plain host memory: upload/download are memcpy and sync is a no-op.
//
// Threads: all parallelism is OpenMP (ctx->threads); OpenBLAS is set to one thread and every
// product is split by rows or columns across the OpenMP threads (cpu_sgemm, conv.c). With
// OpenBLAS's own pool, its workers kept spinning after each gemm and the OpenMP loops between
// gemms ran up to 30x slower on 2 cores; one pool also avoids oversubscription.
#include "cpu/cpu_backend.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adam.h"
#include "check.h"
#include "rng.h"

// ---- context and memory --------------------------------------------------------------------

float *cpu_workspace(cpu_ctx *ctx, size_t floats) {
  if (floats > ctx->ws_floats) {
    free(ctx->ws);
    ctx->ws = NULL;
    if (posix_memalign((void **)&ctx->ws, 64, floats * sizeof(float)) != 0)
      FATAL("out of memory allocating a %zu-byte conv workspace", floats * sizeof(float));
    ctx->ws_floats = floats;
  }
  return ctx->ws;
}

// A host buffer of doubles that only grows (its old contents are not kept).
static double *grow_doubles(double **buf, size_t *have, size_t doubles) {
  if (doubles > *have) {
    free(*buf);
    *buf = xmalloc(doubles * sizeof(double));
    *have = doubles;
  }
  return *buf;
}

double *cpu_reduction(cpu_ctx *ctx, size_t doubles) {
  return grow_doubles(&ctx->red, &ctx->red_doubles, doubles);
}

double *cpu_channel_scratch(cpu_ctx *ctx, size_t doubles) {
  return grow_doubles(&ctx->chan, &ctx->chan_doubles, doubles);
}

static void cpu_destroy(backend *b) {
  if (!b) return;
  cpu_ctx *ctx = b->impl;
  if (ctx) {
    free(ctx->chan);
    free(ctx->red);
    free(ctx->ws);
    free(ctx);
  }
  free(b);
}

static void *cpu_alloc(backend *b, size_t bytes) {
  // 64-byte alignment (a cache line, an AVX-512 vector); rounded so the size is a multiple.
  size_t padded = (bytes + 63) & ~(size_t)63;
  void *p = NULL;
  if (posix_memalign(&p, 64, padded ? padded : 64) != 0)
    FATAL("out of host memory allocating %zu bytes", bytes);
  memset(p, 0, padded);
  return p;
}

static void cpu_release(backend *b, void *p) { free(p); }

static void cpu_upload(backend *b, void *dst, const void *h_src, size_t bytes) {
  if (bytes) memcpy(dst, h_src, bytes);
}

static void cpu_download(backend *b, void *h_dst, const void *src, size_t bytes) {
  if (bytes) memcpy(h_dst, src, bytes);
}

static void cpu_zero(backend *b, void *p, size_t bytes) {
  if (bytes) memset(p, 0, bytes);
}

static void cpu_sync(backend *b) {}

// The CPU backend computes in fp32 directly on the trainer's parameter buffer: no shadow copy.
static void cpu_set_params(backend *b, const float *params, size_t count) {}

static void *cpu_stream(backend *b) { return NULL; }

// ---- shared helpers ------------------------------------------------------------------------

void cpu_bias_grad(cpu_ctx *ctx, float *db, const float *dy, size_t rows, int cols) {
  int nt = rows * (size_t)cols >= 65536 ? ctx->threads : 1;
  double *part = cpu_reduction(ctx, (size_t)nt * cols);
  memset(part, 0, (size_t)nt * cols * sizeof(double));
#pragma omp parallel num_threads(nt)
  {
    // Fixed row ranges per thread id and a fixed order of the final sum: deterministic.
    int t = omp_get_thread_num(), T = omp_get_num_threads();
    double *acc = part + (size_t)t * cols;
    size_t lo = rows * t / T, hi = rows * (t + 1) / T;
    for (size_t i = lo; i < hi; i++) {
      const float *g = dy + i * cols;
      for (int k = 0; k < cols; k++) acc[k] += g[k];
    }
  }
  for (int k = 0; k < cols; k++) {
    double s = 0.0;
    for (int t = 0; t < nt; t++) s += part[(size_t)t * cols + k];
    db[k] = (float)s;
  }
}

void cpu_sgemm(cpu_ctx *ctx, int trans_a, int trans_b, int M, int N, int K, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc) {
  int nt = (double)M * N * K < 1e6 ? 1 : ctx->threads;
  const int split_n = N >= M; // split the longer side of C
  const int len = split_n ? N : M;
  if (nt > len / 8) nt = len / 8 > 0 ? len / 8 : 1;
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), T = omp_get_num_threads();
    // Boundaries on multiples of 8 (whole vectors), the last thread takes the remainder.
    int lo = (int)((long)len * t / T) & ~7;
    int hi = t == T - 1 ? len : (int)((long)len * (t + 1) / T) & ~7;
    if (hi > lo) {
      const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
      const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
      if (split_n) // columns lo..hi of op(B) and C
        cblas_sgemm(CblasRowMajor, ta, tb, M, hi - lo, K, 1.0f, A, lda,
                    trans_b ? B + (size_t)lo * ldb : B + lo, ldb, beta, C + lo, ldc);
      else // rows lo..hi of op(A) and C
        cblas_sgemm(CblasRowMajor, ta, tb, hi - lo, N, K, 1.0f,
                    trans_a ? A + lo : A + (size_t)lo * lda, lda, B, ldb, beta,
                    C + (size_t)lo * ldc, ldc);
    }
  }
}

// y (rows, cols) = act(x + bias); bias may be NULL, y may be x.
static void bias_act(cpu_ctx *ctx, float *y, const float *x, const float *bias, size_t rows,
                     int cols, activation act) {
  if (!bias && act == ACT_NONE && y == x) return;
#pragma omp parallel for schedule(static) num_threads(ctx->threads) if (rows * cols > 16384)
  for (size_t i = 0; i < rows; i++) cpu_bias_act_row(y + i * cols, x + i * cols, bias, cols, act);
}

// ---- activations on their own --------------------------------------------------------------

static void cpu_act_fwd(backend *b, void *y, const void *x, op_shape s, activation act) {
  bias_act(b->impl, y, x, NULL, (size_t)s.N * s.H * s.W, s.C, act);
}

// ReLU's backward from its output y: dy passes where y > 0 and where y is NaN (PyTorch's
// threshold_backward tests y <= 0), 0 elsewhere.
static void cpu_act_bwd(backend *b, void *dx_, const void *dy_, const void *y_, op_shape s,
                        activation act) {
  cpu_ctx *ctx = b->impl;
  float *dx = dx_;
  const float *dy = dy_, *y = y_;
  const size_t count = (size_t)s.N * s.H * s.W * s.C;
  if (count && dx_ == dy_) FATAL("act_bwd: dx and dy are the same buffer");
  if (act == ACT_NONE) {
    if (count) memcpy(dx, dy, count * sizeof(float));
    return;
  }
  // Both loads unconditional: a select the compiler vectorises, not a branch on the sign of y
  // (mispredicted half the time, it made this pass 13% of a narrow VGG16's step).
#pragma omp parallel for schedule(static) num_threads(ctx->threads) if (count > 16384)
  for (size_t i = 0; i < count; i++) {
    const float g = dy[i];
    dx[i] = y[i] <= 0.0f ? 0.0f : g;
  }
}

// ---- max-pool 2x2, stride 2 ----------------------------------------------------------------
// argmax holds h * W + w, the index into the sample's (H, W) plane as PyTorch's
// max_pool2d_with_indices. Ties keep the first maximum in the scan order (0,0), (0,1), (1,0),
// (1,1); a NaN wins (PyTorch's `val > max || isnan(val)`).

// Window (row r = n * Ho + ho, column wo): the element offsets of its 4 taps in an (N,H,W,C)
// tensor (channel 0) and their plane indices h * W + w, in scan order.
static void pool_window(size_t off[4], int32_t idx[4], long r, int wo, int H, int W, int C) {
  const int Ho = H / 2;
  const long n = r / Ho;
  const int ho = (int)(r % Ho);
  for (int t = 0; t < 4; t++) {
    int h = 2 * ho + t / 2, w = 2 * wo + t % 2;
    off[t] = ((size_t)(n * H + h) * W + w) * C;
    idx[t] = h * W + w;
  }
}

static void cpu_maxpool_fwd(backend *b, void *y_, int32_t *argmax, const void *x_, op_shape s) {
  cpu_ctx *ctx = b->impl;
  const int N = s.N, H = s.H, W = s.W, C = s.C;
  float *y = y_;
  const float *x = x_;
  if (H % 2 || W % 2) FATAL("maxpool_fwd: H = %d and W = %d must be even", H, W);
  const int Ho = H / 2, Wo = W / 2;
  const long rows = (long)N * Ho;
#pragma omp parallel for schedule(static) num_threads(ctx->threads) if (rows * W * C > 16384)
  for (long r = 0; r < rows; r++) {
    for (int wo = 0; wo < Wo; wo++) {
      size_t off[4];
      int32_t idx[4];
      pool_window(off, idx, r, wo, H, W, C);
      const float *tap[4] = {x + off[0], x + off[1], x + off[2], x + off[3]};
      float *yo = y + ((size_t)r * Wo + wo) * C;
      int32_t *ao = argmax + ((size_t)r * Wo + wo) * C;
      for (int c = 0; c < C; c++) {
        float best = tap[0][c];
        int32_t bi = idx[0];
        for (int t = 1; t < 4; t++) {
          float v = tap[t][c];
          if (v > best || isnan(v)) {
            best = v;
            bi = idx[t];
          }
        }
        yo[c] = best;
        ao[c] = bi;
      }
    }
  }
}

static void cpu_maxpool_bwd(backend *b, void *dx_, const void *dy_, const int32_t *argmax,
                            const void *x, const void *y, op_shape s) {
  cpu_ctx *ctx = b->impl;
  const int N = s.N, H = s.H, W = s.W, C = s.C;
  float *dx = dx_;
  const float *dy = dy_;
  if (H % 2 || W % 2) FATAL("maxpool_bwd: H = %d and W = %d must be even", H, W);
  const int Ho = H / 2, Wo = W / 2;
  const long rows = (long)N * Ho;
  // Windows do not overlap and tile x exactly, so every dx element is written once: no memset.
#pragma omp parallel for schedule(static) num_threads(ctx->threads) if (rows * W * C > 16384)
  for (long r = 0; r < rows; r++) {
    for (int wo = 0; wo < Wo; wo++) {
      size_t off[4];
      int32_t idx[4];
      pool_window(off, idx, r, wo, H, W, C);
      float *tap[4] = {dx + off[0], dx + off[1], dx + off[2], dx + off[3]};
      const float *go = dy + ((size_t)r * Wo + wo) * C;
      const int32_t *ao = argmax + ((size_t)r * Wo + wo) * C;
      for (int t = 0; t < 4; t++) { // per tap, a select over channels (vectorised)
        float *d = tap[t];
        const int32_t it = idx[t];
        for (int c = 0; c < C; c++) {
          const float g = go[c];
          d[c] = ao[c] == it ? g : 0.0f;
        }
      }
    }
  }
}

// ---- linear --------------------------------------------------------------------------------

static void cpu_linear_fwd(backend *b, void *y_, const void *x, const float *w, const float *bias,
                           op_shape s, activation act) {
  const int N = s.N, in = s.C, out = s.K;
  if (N == 0) return;
  float *y = y_;
  // y (N, out) = x (N, in) * w^T (in, out)
  cpu_sgemm(b->impl, 0, 1, N, out, in, x, in, w, in, 0.0f, y, out);
  bias_act(b->impl, y, y, bias, (size_t)N, out, act);
}

static void cpu_linear_bwd(backend *b, void *dx, float *dw, float *db, const void *dy_,
                           const void *x, const float *w, op_shape s) {
  const int N = s.N, in = s.C, out = s.K;
  const float *dy = dy_;
  if (N == 0) {
    memset(dw, 0, (size_t)out * in * sizeof(float));
    memset(db, 0, (size_t)out * sizeof(float));
    return;
  }
  cpu_bias_grad(b->impl, db, dy, (size_t)N, out);
  // dw (out, in) = dy^T (out, N) * x (N, in)
  cpu_sgemm(b->impl, 1, 0, out, in, N, dy, out, x, in, 0.0f, dw, in);
  // dx (N, in) = dy (N, out) * w (out, in)
  if (dx)
    cpu_sgemm(b->impl, 0, 0, N, in, out, dy, out, w, in, 0.0f, dx, in);
}

// ---- dropout -------------------------------------------------------------------------------
// One function for both directions: the mask is a pure function of (key, ids[n], unit), so
// backward recomputes it instead of storing it. Kept units are multiplied by 1 / (1 - p) (as
// PyTorch, which scales the mask by that float and multiplies).

static void dropout_apply(cpu_ctx *ctx, float *out, const float *in, const int32_t *ids, int N,
                          int D, float p, dropout_key key) {
  if (p <= 0.0f) {
    if (out != in) memcpy(out, in, (size_t)N * D * sizeof(float));
    return;
  }
  if (p >= 1.0f) {
    memset(out, 0, (size_t)N * D * sizeof(float));
    return;
  }
  const float scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) num_threads(ctx->threads) if ((long)N * D > 4096)
  for (int n = 0; n < N; n++) {
    const uint32_t id = (uint32_t)ids[n];
    const float *a = in + (size_t)n * D;
    float *o = out + (size_t)n * D;
    for (int j = 0; j < D; j++)
      o[j] = rng_dropout_keep(key.seed, key.layer, key.step, id, (uint32_t)j, p) ? a[j] * scale
                                                                                 : 0.0f;
  }
}

static void cpu_dropout_fwd(backend *b, void *y, const void *x, const int32_t *ids, op_shape s,
                            float p, dropout_key key) {
  dropout_apply(b->impl, y, x, ids, s.N, s.H * s.W * s.C, p, key);
}

static void cpu_dropout_bwd(backend *b, void *dx, const void *dy, const int32_t *ids, op_shape s,
                            float p, dropout_key key) {
  dropout_apply(b->impl, dx, dy, ids, s.N, s.H * s.W * s.C, p, key);
}

// ---- softmax cross-entropy -----------------------------------------------------------------
// loss_n = logsumexp(z_n) - z_n[label], with the maximum subtracted before exp; evaluated in
// double (N is a batch, classes is 10: the cost is nothing). Serial, so stats are
// deterministic.

static void cpu_xent(backend *b, void *dlogits_, double *stats, const void *logits_,
                     const int32_t *labels, int N, int classes, float grad_scale) {
  float *dlogits = dlogits_;
  const float *logits = logits_;
  double loss = 0.0, correct = 0.0;
  for (int n = 0; n < N; n++) {
    const float *z = logits + (size_t)n * classes;
    int label = labels[n];
    if (label < 0 || label >= classes)
      FATAL("xent: label %d of sample %d outside [0, %d)", label, n, classes);
    float mx = z[0];
    int am = 0;
    for (int j = 1; j < classes; j++)
      if (z[j] > mx) {
        mx = z[j];
        am = j;
      }
    double s = 0.0;
    for (int j = 0; j < classes; j++) s += exp((double)z[j] - mx);
    loss += log(s) + mx - (double)z[label];
    correct += am == label;
    if (dlogits) {
      float *d = dlogits + (size_t)n * classes;
      for (int j = 0; j < classes; j++)
        d[j] = (float)((exp((double)z[j] - mx) / s - (j == label)) * grad_scale);
    }
  }
  stats[0] += loss;
  stats[1] += correct;
}

// ---- Adam / AdamW --------------------------------------------------------------------------
// The arithmetic is kernels/adam.h's, shared with the CUDA backend.

// Elements [lo, hi). Cloned for FMA hardware so fmaf is one instruction there (and the exact
// libm fmaf elsewhere): the same results either way. One loop per weight-decay mode, so each
// is free of branches and vectorises (with -fno-math-errno, sqrtf is the instruction alone);
// the lanes do the same IEEE operations as the scalar code, so the results are bit-identical.
__attribute__((target_clones("fma", "default"))) static void
adam_range(float *restrict params, const float *restrict grads, float *restrict m,
           float *restrict v, size_t lo, size_t hi, const adam_coef *k) {
  adam_coef c = *k;
  if (c.decoupled) {
    c.coupled_wd = 0;
    for (size_t i = lo; i < hi; i++) adam_element(&params[i], grads[i], &m[i], &v[i], &c);
  } else if (c.coupled_wd) {
    for (size_t i = lo; i < hi; i++) adam_element(&params[i], grads[i], &m[i], &v[i], &c);
  } else {
    for (size_t i = lo; i < hi; i++) adam_element(&params[i], grads[i], &m[i], &v[i], &c);
  }
}

static void cpu_adam(backend *b, float *params, const float *grads, float *m, float *v,
                     size_t count, const adam_params *ap) {
  cpu_ctx *ctx = b->impl;
  const adam_coef k = adam_plan(ap);
  int nt = count > 32768 ? ctx->threads : 1;
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), T = omp_get_num_threads();
    adam_range(params, grads, m, v, count * t / T, count * (t + 1) / T, &k);
  }
}

// ---- the ops table -------------------------------------------------------------------------

static const backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .upload = cpu_upload,
    .download = cpu_download,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .set_params = cpu_set_params,
    .prep_batch = cpu_prep_batch,
    .conv_fwd = cpu_conv_fwd,
    .conv_bwd = cpu_conv_bwd,
    .maxpool_fwd = cpu_maxpool_fwd,
    .maxpool_bwd = cpu_maxpool_bwd,
    .linear_fwd = cpu_linear_fwd,
    .linear_bwd = cpu_linear_bwd,
    .bn_fwd = cpu_bn_fwd,
    .bn_bwd = cpu_bn_bwd,
    .act_fwd = cpu_act_fwd,
    .act_bwd = cpu_act_bwd,
    .dropout_fwd = cpu_dropout_fwd,
    .dropout_bwd = cpu_dropout_bwd,
    .xent = cpu_xent,
    .adam = cpu_adam,
    .stream = cpu_stream,
    // No captured steps: the step's host work is small beside its compute here.
};

backend *backend_cpu_create(int threads) {
  // One OpenBLAS thread per caller; parallelism comes from our OpenMP split (see the top).
  openblas_set_num_threads(1);
  cpu_ctx *ctx = xcalloc(1, sizeof(cpu_ctx));
  ctx->threads = threads > 0 ? threads : omp_get_max_threads();
  ctx->conv_budget = CPU_CONV_BUDGET;
  backend *b = xcalloc(1, sizeof(backend));
  b->ops = &cpu_ops;
  b->is_device = 0;
  b->act_bytes = sizeof(float);
  b->impl = ctx;
  return b;
}
