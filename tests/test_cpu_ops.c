// test_cpu_ops.c - the CPU backend's compute ops against independent references.
//
// Every backward op is checked against central finite differences of the scalar loss
// L = sum(y * r) for a fixed random r (so dL/dy = r), evaluated in float by the forward op
// and summed in double. Probes whose +-eps perturbation flips a ReLU (a kink of L) are
// skipped and counted. conv is also compared with a direct 7-loop convolution in double, and
// run with tiny im2col sub-chunks and on 1-3 threads so range and chunk boundaries are hit.
// Adam/AdamW, xent, dropout masks and max-pool ties are checked against hand-computed values.
#include <malloc.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "check.h"
#include "cpu/cpu_backend.h"
#include "model.h"
#include "net.h"
#include "rng.h"
#include "test.h"

#define TSEED 0x5eedc0deull

// Deterministic test data: uniform in [lo, hi) from a counter-based stream.
static void fill(float *a, size_t n, uint32_t stream, float lo, float hi) {
  for (size_t i = 0; i < n; i++)
    a[i] = lo + (hi - lo) * rng_uniform(TSEED, stream, 0, 0, (uint32_t)i);
}

static float *fvec(size_t n) { return xcalloc(n ? n : 1, sizeof(float)); }

static double dot(const float *a, const float *b, size_t n) {
  double s = 0.0;
  for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}

// ---- finite-difference driver --------------------------------------------------------------

// A forward evaluation of L with the current inputs; sets *kink when a ReLU/argmax pattern
// differs from the one of the unperturbed inputs (the probe is then meaningless).
typedef double (*loss_fn)(void *ctx, int *kink);

// Compares grad[i] with (L(a[i] + eps) - L(a[i] - eps)) / 2eps for every i; returns the
// number of mismatches, adds skipped probes to *skipped.
static int fd_check(const char *what, loss_fn f, void *ctx, float *a, const float *grad, size_t n,
                    float eps, double atol, double rtol, int *skipped) {
  int bad = 0;
  for (size_t i = 0; i < n; i++) {
    float a0 = a[i];
    int k1 = 0, k2 = 0;
    a[i] = a0 + eps;
    double lp = f(ctx, &k1);
    a[i] = a0 - eps;
    double lm = f(ctx, &k2);
    a[i] = a0;
    if (k1 || k2) {
      (*skipped)++;
      continue;
    }
    // The step actually taken in float, not the nominal one.
    double h = (double)(a0 + eps) - (double)(a0 - eps);
    double fd = (lp - lm) / h;
    if (!(fabs(fd - grad[i]) <= atol + rtol * fabs(fd))) {
      if (bad < 5)
        test_fail(__FILE__, __LINE__, "%s[%zu]: analytic %.7g, finite difference %.7g", what, i,
                  grad[i], fd);
      bad++;
    }
  }
  return bad;
}

// Backward through an op with a fused activation, as the walker runs it: act_bwd from the
// op's output y into a buffer of its own, then the op's backward from that (which reads it
// only). dy is never written.
static const float *act_grad(backend *b, float *tmp, const float *dy, const float *y, op_shape s,
                             activation act) {
  if (act == ACT_NONE) return dy;
  b->ops->act_bwd(b, tmp, dy, y, s, act);
  return tmp;
}

// ---- convolution ---------------------------------------------------------------------------

// Direct convolution in double: y[n,h,w,k] = b[k] + sum_{r,s,c} x[n,h+r-1,w+s-1,c] w[k,r,s,c].
static void conv_ref(double *y, const float *x, const float *w, const float *b, int N, int H,
                     int W, int C, int K, int relu) {
  for (int n = 0; n < N; n++)
    for (int h = 0; h < H; h++)
      for (int ww = 0; ww < W; ww++)
        for (int k = 0; k < K; k++) {
          double s = b ? b[k] : 0.0;
          for (int r = 0; r < 3; r++)
            for (int q = 0; q < 3; q++)
              for (int c = 0; c < C; c++) {
                int hh = h + r - 1, wq = ww + q - 1;
                if (hh < 0 || hh >= H || wq < 0 || wq >= W) continue;
                s += (double)x[((n * H + hh) * W + wq) * C + c] * w[((k * 3 + r) * 3 + q) * C + c];
              }
          y[((n * H + h) * W + ww) * K + k] = relu && s < 0 ? 0.0 : s;
        }
}

typedef struct conv_case {
  backend *b;
  op_shape s;
  activation act;
  float *x, *w, *bias, *y, *r, *ybase;
} conv_case;

static double conv_loss(void *p, int *kink) {
  conv_case *t = p;
  size_t ny = (size_t)t->s.N * t->s.H * t->s.W * t->s.K;
  t->b->ops->conv_fwd(t->b, t->y, t->x, t->w, t->bias, t->s, t->act);
  if (t->act == ACT_RELU)
    for (size_t i = 0; i < ny; i++)
      if ((t->y[i] > 0) != (t->ybase[i] > 0)) *kink = 1;
  return dot(t->y, t->r, ny);
}

// The algorithm conv_check's backends use (the backend's default: by layer shape).
static cpu_conv_algo conv_algo = CPU_CONV_AUTO;

// Gradient check of conv_bwd (and conv_fwd against the direct reference) for one shape, with
// the given chunk budget (floats; 0 = the backend's default).
static void conv_check(int N, int H, int W, int C, int K, int relu, int with_dx, size_t budget) {
  backend *b = backend_cpu_create(0);
  cpu_ctx *ctx = b->impl;
  if (budget) ctx->conv_budget = budget;
  ctx->conv_algo = conv_algo;
  size_t nx = (size_t)N * H * W * C, nw = (size_t)K * 9 * C, ny = (size_t)N * H * W * K;
  const op_shape s = {N, H, W, C, K};
  const activation act = relu ? ACT_RELU : ACT_NONE;
  conv_case t = {b, s, act, fvec(nx), fvec(nw), fvec(K), fvec(ny), fvec(ny), fvec(ny)};
  fill(t.x, nx, 1, -1, 1);
  fill(t.w, nw, 2, -0.5f, 0.5f);
  fill(t.bias, K, 3, -0.2f, 0.2f);
  fill(t.r, ny, 4, -1, 1);

  // Forward against the direct convolution in double.
  double *yref = xmalloc(ny * sizeof(double));
  conv_ref(yref, t.x, t.w, t.bias, N, H, W, C, K, relu);
  b->ops->conv_fwd(b, t.ybase, t.x, t.w, t.bias, s, act);
  double maxerr = 0.0;
  for (size_t i = 0; i < ny; i++) maxerr = fmax(maxerr, fabs(t.ybase[i] - yref[i]));
  EXPECT(maxerr < 1e-5);

  // Backward with dy = r: the activation's gradient, then the convolution's; neither writes
  // what it reads.
  float *dy = fvec(ny), *dz = fvec(ny), *dx = with_dx ? fvec(nx) : NULL, *dw = fvec(nw), *db = fvec(K);
  memcpy(dy, t.r, ny * sizeof(float));
  const float *g = act_grad(b, dz, dy, t.ybase, (op_shape){N, H, W, K, K}, act);
  b->ops->conv_bwd(b, dx, dw, db, g, t.x, t.w, s);
  EXPECT(memcmp(dy, t.r, ny * sizeof(float)) == 0);
  if (relu)
    for (size_t i = 0; i < ny; i++) EXPECT(dz[i] == (t.ybase[i] > 0 ? t.r[i] : 0.0f));

  // L is linear between ReLU kinks: a small step meets fewer kinks; float rounding of y
  // (~1e-7 relative, summed in double) stays well under the tolerance at either step.
  const float eps = relu ? 1e-3f : 1e-2f;
  int skipped = 0, bad = 0;
  if (with_dx) bad += fd_check("conv dx", conv_loss, &t, t.x, dx, nx, eps, 2e-3, 2e-3, &skipped);
  bad += fd_check("conv dw", conv_loss, &t, t.w, dw, nw, eps, 2e-3, 2e-3, &skipped);
  bad += fd_check("conv db", conv_loss, &t, t.bias, db, K, eps, 2e-3, 2e-3, &skipped);
  EXPECT_EQ_INT(bad, 0);
  size_t probes = (with_dx ? nx : 0) + nw + K;
  EXPECT(skipped * 4 < (int)probes); // a kink skips a probe; most must be checked
  if (!relu) EXPECT_EQ_INT(skipped, 0);

  free(dy); free(dz); free(dx); free(dw); free(db); free(yref);
  free(t.x); free(t.w); free(t.bias); free(t.y); free(t.r); free(t.ybase);
  b->ops->destroy(b);
}

TEST(cpu_conv_grad_small) {
  conv_check(2, 5, 3, 3, 4, 0, 1, 0);
  conv_check(2, 5, 3, 3, 4, 1, 1, 0);
  conv_check(2, 5, 3, 3, 4, 1, 0, 0); // dx == NULL (first layer)
}

TEST(cpu_conv_grad_square) {
  conv_check(2, 6, 6, 5, 7, 1, 1, 0);
  conv_check(1, 6, 6, 5, 7, 0, 1, 0);
}

// Sub-chunks of 4, 7 and 1 pixels: boundaries fall mid-row, and each patch crosses them.
TEST(cpu_conv_grad_chunked) {
  conv_check(2, 5, 3, 3, 4, 1, 1, 4 * 36); // patch rows of 9 max(C, K) floats
  conv_check(2, 6, 6, 5, 7, 1, 1, 7 * 63);
  conv_check(2, 6, 6, 5, 7, 0, 1, 63); // one pixel per chunk
}

// Winograd F(2x2, 3x3) for the forward and dx, forced on small layers: even and odd sizes
// (tiles hanging over the right and bottom edges), 1x1 and 2x2 images, one tile per chunk.
TEST(cpu_conv_winograd_grad) {
  conv_algo = CPU_CONV_WINOGRAD;
  conv_check(2, 5, 3, 3, 4, 1, 1, 0);
  conv_check(2, 6, 6, 5, 7, 0, 1, 0);
  conv_check(1, 7, 5, 4, 3, 1, 1, 0);
  conv_check(3, 1, 1, 4, 5, 0, 1, 0);
  conv_check(2, 2, 2, 6, 3, 1, 1, 0);
  conv_check(2, 6, 6, 5, 7, 1, 1, 16 * 12); // one tile per chunk
  conv_check(2, 5, 3, 3, 4, 1, 0, 0);       // dx == NULL
  conv_check(2, 6, 5, 8, 9, 1, 1, 0);       // 8 channels in vectors, 9 = 8 + a scalar tail
  conv_check(1, 4, 4, 17, 16, 0, 1, 0);
  conv_algo = CPU_CONV_AUTO;
}

// The im2col path on a layer the shape rule gives to Winograd.
TEST(cpu_conv_im2col_grad) {
  conv_algo = CPU_CONV_IM2COL;
  conv_check(2, 4, 4, 16, 16, 1, 1, 0);
  conv_algo = CPU_CONV_AUTO;
}

// Both algorithms on a VGG-like layer (64 channels, 8x8, odd 7x7): each within 1e-5 of the
// direct double sum (relative to the output's scale), and the shape rule picks Winograd here.
TEST(cpu_conv_algorithms_agree) {
  const int N = 2, C = 64, K = 64;
  for (int H = 7; H <= 8; H++) {
    const int W = H;
    size_t nx = (size_t)N * H * W * C, nw = (size_t)K * 9 * C, ny = (size_t)N * H * W * K;
    float *x = fvec(nx), *w = fvec(nw), *bias = fvec(K), *y = fvec(ny);
    fill(x, nx, 31, -1, 1);
    fill(w, nw, 32, -0.05f, 0.05f);
    fill(bias, K, 33, -0.1f, 0.1f);
    double *yref = xmalloc(ny * sizeof(double));
    conv_ref(yref, x, w, bias, N, H, W, C, K, 0);
    double scale = 0;
    for (size_t i = 0; i < ny; i++) scale = fmax(scale, fabs(yref[i]));
    const cpu_conv_algo algo[2] = {CPU_CONV_IM2COL, CPU_CONV_WINOGRAD};
    for (int a = 0; a < 2; a++) {
      backend *b = backend_cpu_create(2);
      cpu_ctx *ctx = b->impl;
      ctx->conv_algo = algo[a];
      b->ops->conv_fwd(b, y, x, w, bias, (op_shape){N, H, W, C, K}, ACT_NONE);
      double err = 0;
      for (size_t i = 0; i < ny; i++) err = fmax(err, fabs(y[i] - yref[i]));
      EXPECT(err < 1e-5 * scale);
      b->ops->destroy(b);
    }
    free(x); free(w); free(bias); free(y); free(yref);
  }
  backend *b = backend_cpu_create(1);
  EXPECT(cpu_conv_winograd(b->impl, 64, 64));
  EXPECT(!cpu_conv_winograd(b->impl, 3, 64));
  EXPECT(cpu_conv_winograd(b->impl, 16, 16));
  for (int C = 1; C <= 600; C += 7) // symmetric in C and K
    for (int K = 1; K <= 20; K++)
      EXPECT(cpu_conv_winograd(b->impl, C, K) == cpu_conv_winograd(b->impl, K, C));
  b->ops->destroy(b);
}

// A bigger layer on 1, 2 and 3 threads with whole and tiny sub-chunks: the per-thread pixel
// ranges, sub-chunk boundaries and the sum of per-thread filter gradients agree with the
// single-threaded pass, and forward matches the direct reference.
static void threads_and_chunks(cpu_conv_algo algo) {
  const int N = 3, H = 8, W = 10, C = 16, K = 24;
  size_t nx = (size_t)N * H * W * C, nw = (size_t)K * 9 * C, ny = (size_t)N * H * W * K;
  float *x = fvec(nx), *w = fvec(nw), *bias = fvec(K), *r = fvec(ny);
  fill(x, nx, 11, -1, 1);
  fill(w, nw, 12, -0.3f, 0.3f);
  fill(bias, K, 13, -0.1f, 0.1f);
  fill(r, ny, 14, -1, 1);
  enum { V = 3 };
  const int threads[V] = {1, 2, 3};
  const size_t budget[V] = {0, 37 * 9 * K, 5 * 9 * K}; // per thread; 0 = default
  float *y[V], *dx[V], *dw[V], *db[V], *dy[V], *dz = fvec(ny);
  const op_shape s = {N, H, W, C, K};
  for (int v = 0; v < V; v++) {
    backend *b = backend_cpu_create(threads[v]);
    ((cpu_ctx *)b->impl)->conv_algo = algo;
    if (budget[v]) ((cpu_ctx *)b->impl)->conv_budget = budget[v];
    y[v] = fvec(ny); dy[v] = fvec(ny); dx[v] = fvec(nx); dw[v] = fvec(nw); db[v] = fvec(K);
    b->ops->conv_fwd(b, y[v], x, w, bias, s, ACT_RELU);
    memcpy(dy[v], r, ny * 4);
    const float *g = act_grad(b, dz, dy[v], y[v], (op_shape){N, H, W, K, K}, ACT_RELU);
    b->ops->conv_bwd(b, dx[v], dw[v], db[v], g, x, w, s);
    b->ops->destroy(b);
  }
  double *yref = xmalloc(ny * sizeof(double));
  conv_ref(yref, x, w, bias, N, H, W, C, K, 1);
  double e_ref = 0;
  for (size_t i = 0; i < ny; i++) e_ref = fmax(e_ref, fabs(y[0][i] - yref[i]));
  EXPECT(e_ref < 1e-5);
  for (int v = 1; v < V; v++) {
    double e_y = 0, e_dx = 0, e_dw = 0, e_db = 0;
    for (size_t i = 0; i < ny; i++) e_y = fmax(e_y, fabs(y[0][i] - y[v][i]));
    for (size_t i = 0; i < nx; i++) e_dx = fmax(e_dx, fabs(dx[0][i] - dx[v][i]));
    for (size_t i = 0; i < nw; i++) e_dw = fmax(e_dw, fabs(dw[0][i] - dw[v][i]));
    for (int i = 0; i < K; i++) e_db = fmax(e_db, fabs(db[0][i] - db[v][i]));
    EXPECT(e_y < 1e-5);
    EXPECT(e_dx < 1e-5);
    EXPECT(e_dw < 1e-4); // sums over 240 pixels in different groupings
    EXPECT(e_db < 1e-5);
  }
  // dx against finite differences is covered above; here check it is not trivially zero.
  double dxmax = 0, dwmax = 0;
  for (size_t i = 0; i < nx; i++) dxmax = fmax(dxmax, fabs(dx[0][i]));
  for (size_t i = 0; i < nw; i++) dwmax = fmax(dwmax, fabs(dw[0][i]));
  EXPECT(dxmax > 0.1 && dwmax > 1.0);
  for (int v = 0; v < V; v++) {
    free(y[v]); free(dy[v]); free(dx[v]); free(dw[v]); free(db[v]);
  }
  free(yref); free(x); free(w); free(bias); free(r); free(dz);
}

// Both algorithms: im2col still serves the first layer with every thread of the backend.
TEST(cpu_conv_threads_and_chunks_agree) {
  threads_and_chunks(CPU_CONV_IM2COL);
  threads_and_chunks(CPU_CONV_WINOGRAD);
}

// ---- max-pool ------------------------------------------------------------------------------

typedef struct pool_case {
  backend *b;
  int N, H, W, C;
  float *x, *y, *r;
  int32_t *am, *ambase;
} pool_case;

static double pool_loss(void *p, int *kink) {
  pool_case *t = p;
  size_t ny = (size_t)t->N * (t->H / 2) * (t->W / 2) * t->C;
  t->b->ops->maxpool_fwd(t->b, t->y, t->am, t->x, (op_shape){t->N, t->H, t->W, t->C, t->C});
  if (memcmp(t->am, t->ambase, ny * sizeof(int32_t))) *kink = 1;
  return dot(t->y, t->r, ny);
}

TEST(cpu_maxpool_grad) {
  const int N = 2, H = 6, W = 4, C = 3;
  size_t nx = (size_t)N * H * W * C, ny = nx / 4;
  backend *b = backend_cpu_create(0);
  pool_case t = {b, N, H, W, C, fvec(nx), fvec(ny), fvec(ny), xcalloc(ny, 4), xcalloc(ny, 4)};
  // Distinct values 0.05 apart in a scrambled order: no ties, no argmax flip at eps = 1e-2.
  for (size_t i = 0; i < nx; i++) t.x[i] = (float)((i * 37) % nx) * 0.05f - 3.0f;
  fill(t.r, ny, 21, -1, 1);
  const op_shape s = {N, H, W, C, C};
  b->ops->maxpool_fwd(b, t.y, t.ambase, t.x, s);
  // Forward: max of each window, argmax pointing at it.
  for (int n = 0; n < N; n++)
    for (int ho = 0; ho < H / 2; ho++)
      for (int wo = 0; wo < W / 2; wo++)
        for (int c = 0; c < C; c++) {
          float m = -1e30f;
          for (int dh = 0; dh < 2; dh++)
            for (int dw = 0; dw < 2; dw++)
              m = fmaxf(m, t.x[((n * H + 2 * ho + dh) * W + 2 * wo + dw) * C + c]);
          size_t o = ((n * (H / 2) + ho) * (W / 2) + wo) * C + c;
          EXPECT(t.y[o] == m);
          int32_t a = t.ambase[o];
          EXPECT(t.x[((size_t)n * H * W + a) * C + c] == m);
        }
  float *dx = fvec(nx);
  for (size_t i = 0; i < nx; i++) dx[i] = 123.0f; // bwd must overwrite every element
  b->ops->maxpool_bwd(b, dx, t.r, t.ambase, t.x, t.y, s);
  int skipped = 0;
  EXPECT_EQ_INT(fd_check("maxpool dx", pool_loss, &t, t.x, dx, nx, 1e-2f, 1e-3, 1e-3, &skipped), 0);
  EXPECT_EQ_INT(skipped, 0);
  free(dx); free(t.x); free(t.y); free(t.r); free(t.am); free(t.ambase);
  b->ops->destroy(b);
}

TEST(cpu_maxpool_ties) {
  // One sample, 4x4, C = 1: four windows with ties in different positions.
  const float x[16] = {
      1, 1, 0, 2, //
      1, 1, 2, 2, //
      0, 3, -1, -1, //
      3, 3, -1, -2,
  };
  float y[4], dx[16];
  int32_t am[4];
  backend *b = backend_cpu_create(1);
  const op_shape s = {1, 4, 4, 1, 1};
  b->ops->maxpool_fwd(b, y, am, x, s);
  // Window (0,0): all equal -> (0,0) = index 0. (0,1): 2 at (0,1),(1,0),(1,1) -> index 3.
  // (1,0): 3 at (0,1),(1,0),(1,1) -> index 9. (1,1): -1 at (0,0),(0,1),(1,0) -> index 10.
  EXPECT(y[0] == 1 && y[1] == 2 && y[2] == 3 && y[3] == -1);
  EXPECT_EQ_INT(am[0], 0);
  EXPECT_EQ_INT(am[1], 3);
  EXPECT_EQ_INT(am[2], 9);
  EXPECT_EQ_INT(am[3], 10);
  const float dy[4] = {10, 20, 30, 40};
  b->ops->maxpool_bwd(b, dx, dy, am, x, y, s);
  for (int i = 0; i < 16; i++) {
    float want = i == 0 ? 10 : i == 3 ? 20 : i == 9 ? 30 : i == 10 ? 40 : 0;
    EXPECT(dx[i] == want);
  }
  // A NaN wins its window (PyTorch propagates it).
  float xn[16];
  memcpy(xn, x, sizeof(xn));
  xn[5] = NAN;
  b->ops->maxpool_fwd(b, y, am, xn, s);
  EXPECT(isnan(y[0]));
  EXPECT_EQ_INT(am[0], 5);
  b->ops->destroy(b);
}

// ---- linear --------------------------------------------------------------------------------

typedef struct lin_case {
  backend *b;
  int N, in, out;
  activation act;
  float *x, *w, *bias, *y, *r, *ybase;
} lin_case;

static double lin_loss(void *p, int *kink) {
  lin_case *t = p;
  size_t ny = (size_t)t->N * t->out;
  t->b->ops->linear_fwd(t->b, t->y, t->x, t->w, t->bias, (op_shape){t->N, 1, 1, t->in, t->out},
                        t->act);
  if (t->act == ACT_RELU)
    for (size_t i = 0; i < ny; i++)
      if ((t->y[i] > 0) != (t->ybase[i] > 0)) *kink = 1;
  return dot(t->y, t->r, ny);
}

static void linear_check(int N, int in, int out, int relu) {
  backend *b = backend_cpu_create(0);
  size_t nx = (size_t)N * in, nw = (size_t)out * in, ny = (size_t)N * out;
  const op_shape s = {N, 1, 1, in, out};
  const activation act = relu ? ACT_RELU : ACT_NONE;
  lin_case t = {b, N, in, out, act, fvec(nx), fvec(nw), fvec(out), fvec(ny), fvec(ny), fvec(ny)};
  fill(t.x, nx, 31, -1, 1);
  fill(t.w, nw, 32, -0.5f, 0.5f);
  fill(t.bias, out, 33, -0.2f, 0.2f);
  fill(t.r, ny, 34, -1, 1);
  b->ops->linear_fwd(b, t.ybase, t.x, t.w, t.bias, s, act);
  for (int n = 0; n < N; n++)
    for (int o = 0; o < out; o++) {
      double s = t.bias[o];
      for (int i = 0; i < in; i++) s += (double)t.x[n * in + i] * t.w[o * in + i];
      if (relu && s < 0) s = 0;
      EXPECT_NEAR(t.ybase[n * out + o], s, 1e-5);
    }
  float *dy = fvec(ny), *dz = fvec(ny), *dx = fvec(nx), *dw = fvec(nw), *db = fvec(out);
  memcpy(dy, t.r, ny * sizeof(float));
  const float *g = act_grad(b, dz, dy, t.ybase, (op_shape){N, 1, 1, out, out}, act);
  b->ops->linear_bwd(b, dx, dw, db, g, t.x, t.w, s);
  EXPECT(memcmp(dy, t.r, ny * sizeof(float)) == 0);
  const float eps = relu ? 1e-3f : 1e-2f;
  int skipped = 0, bad = 0;
  bad += fd_check("linear dx", lin_loss, &t, t.x, dx, nx, eps, 2e-3, 2e-3, &skipped);
  bad += fd_check("linear dw", lin_loss, &t, t.w, dw, nw, eps, 2e-3, 2e-3, &skipped);
  bad += fd_check("linear db", lin_loss, &t, t.bias, db, out, eps, 2e-3, 2e-3, &skipped);
  EXPECT_EQ_INT(bad, 0);
  EXPECT(skipped * 4 < (int)(nx + nw + out));
  if (!relu) EXPECT_EQ_INT(skipped, 0);
  free(dy); free(dz); free(dx); free(dw); free(db);
  free(t.x); free(t.w); free(t.bias); free(t.y); free(t.r); free(t.ybase);
  b->ops->destroy(b);
}

TEST(cpu_linear_grad) {
  linear_check(3, 7, 5, 0);
  linear_check(4, 9, 6, 1);
}

// Products big enough to be split across threads (by columns and by rows), against sums in
// double: the split offsets of every operand layout are exercised.
TEST(cpu_linear_threaded) {
  // N, in, out: >= 1e6 multiply-adds per product so that each one is split; the first splits
  // columns (B plain and transposed), the second rows of a plain A, the third rows of A^T (dw).
  const int shapes[3][3] = {{16, 300, 260}, {400, 60, 50}, {64, 100, 400}};
  for (int sh = 0; sh < 3; sh++) {
    const int N = shapes[sh][0], in = shapes[sh][1], out = shapes[sh][2];
    backend *b = backend_cpu_create(3);
    float *x = fvec((size_t)N * in), *w = fvec((size_t)out * in), *bias = fvec(out);
    float *y = fvec((size_t)N * out), *dy = fvec((size_t)N * out), *dx = fvec((size_t)N * in);
    float *dw = fvec((size_t)out * in), *db = fvec(out);
    fill(x, (size_t)N * in, 61, -1, 1);
    fill(w, (size_t)out * in, 62, -0.2f, 0.2f);
    fill(bias, out, 63, -0.1f, 0.1f);
    fill(dy, (size_t)N * out, 64, -1, 1);
    const op_shape s = {N, 1, 1, in, out};
    b->ops->linear_fwd(b, y, x, w, bias, s, ACT_NONE);
    b->ops->linear_bwd(b, dx, dw, db, dy, x, w, s);
    double ey = 0, edx = 0, edw = 0, edb = 0;
    for (int n = 0; n < N; n++)
      for (int o = 0; o < out; o++) {
        double s = bias[o];
        for (int i = 0; i < in; i++) s += (double)x[n * in + i] * w[o * in + i];
        ey = fmax(ey, fabs(y[n * out + o] - s));
      }
    for (int n = 0; n < N; n++)
      for (int i = 0; i < in; i++) {
        double s = 0;
        for (int o = 0; o < out; o++) s += (double)dy[n * out + o] * w[o * in + i];
        edx = fmax(edx, fabs(dx[n * in + i] - s));
      }
    for (int o = 0; o < out; o++) {
      double sb = 0;
      for (int n = 0; n < N; n++) sb += dy[n * out + o];
      edb = fmax(edb, fabs(db[o] - sb));
      for (int i = 0; i < in; i++) {
        double s = 0;
        for (int n = 0; n < N; n++) s += (double)dy[n * out + o] * x[n * in + i];
        edw = fmax(edw, fabs(dw[o * in + i] - s));
      }
    }
    EXPECT(ey < 1e-4);
    EXPECT(edx < 1e-4);
    EXPECT(edw < 1e-4);
    EXPECT(edb < 1e-5);
    free(x); free(w); free(bias); free(y); free(dy); free(dx); free(dw); free(db);
    b->ops->destroy(b);
  }
}

// ---- dropout -------------------------------------------------------------------------------

typedef struct drop_case {
  backend *b;
  int N, D;
  float p;
  dropout_key key;
  const int32_t *ids;
  float *x, *y, *r;
} drop_case;

static double drop_loss(void *q, int *kink) {
  drop_case *t = q;
  t->b->ops->dropout_fwd(t->b, t->y, t->x, t->ids, (op_shape){t->N, 1, 1, t->D, t->D}, t->p, t->key);
  return dot(t->y, t->r, (size_t)t->N * t->D);
}

TEST(cpu_dropout) {
  backend *b = backend_cpu_create(0);
  dropout_key key = {TSEED, 2, 17};
  // Gradient.
  {
    const int N = 3, D = 40;
    const int32_t ids[3] = {5, 900, 12};
    drop_case t = {b, N, D, 0.3f, key, ids, fvec(N * D), fvec(N * D), fvec(N * D)};
    fill(t.x, N * D, 41, -1, 1);
    fill(t.r, N * D, 42, -1, 1);
    float *dx = fvec(N * D);
    b->ops->dropout_bwd(b, dx, t.r, ids, (op_shape){N, 1, 1, D, D}, t.p, key);
    int skipped = 0;
    int bad = fd_check("dropout dx", drop_loss, &t, t.x, dx, N * D, 1e-2f, 1e-3, 1e-3, &skipped);
    EXPECT_EQ_INT(bad, 0);
    // Forward: each unit either dropped or scaled by 1 / (1 - p), as the documented key says.
    b->ops->dropout_fwd(b, t.y, t.x, ids, (op_shape){N, 1, 1, D, D}, t.p, key);
    for (int n = 0; n < N; n++)
      for (int j = 0; j < D; j++) {
        int keep = rng_dropout_keep(key.seed, key.layer, key.step, (uint32_t)ids[n], j, t.p);
        EXPECT(t.y[n * D + j] == (keep ? t.x[n * D + j] * (1.0f / (1.0f - t.p)) : 0.0f));
      }
    free(dx); free(t.x); free(t.y); free(t.r);
  }
  // Kept fraction ~ 1 - p over many units; the mask depends on the id, not on the row.
  {
    const int N = 8, D = 4096;
    const float p = 0.4f;
    int32_t ids[8] = {3, 1, 4, 1000000, 5, 9, 2, 3};
    float *x = fvec((size_t)N * D), *y = fvec((size_t)N * D), *y2 = fvec((size_t)N * D);
    for (size_t i = 0; i < (size_t)N * D; i++) x[i] = 1.0f;
    b->ops->dropout_fwd(b, y, x, ids, (op_shape){N, 1, 1, D, D}, p, key);
    long kept = 0;
    for (size_t i = 0; i < (size_t)N * D; i++) kept += y[i] != 0.0f;
    double frac = (double)kept / (N * D); // sd of frac ~ sqrt(.24 / 32768) = 0.0027
    EXPECT_NEAR(frac, 1.0 - p, 0.015);
    // Same sample id at row 0 and row 5: identical masks (swap rows 0 and 5).
    int32_t ids2[8];
    memcpy(ids2, ids, sizeof(ids));
    ids2[0] = ids[5];
    ids2[5] = ids[0];
    b->ops->dropout_fwd(b, y2, x, ids2, (op_shape){N, 1, 1, D, D}, p, key);
    EXPECT(memcmp(y2, y + 5 * D, D * sizeof(float)) == 0);
    EXPECT(memcmp(y2 + 5 * D, y, D * sizeof(float)) == 0);
    EXPECT(memcmp(y2 + D, y + D, D * sizeof(float)) == 0);
    // Duplicate ids in one batch get the same mask; different ids do not.
    EXPECT(memcmp(y + 7 * D, y, D * sizeof(float)) == 0);
    EXPECT(memcmp(y + 1 * D, y + 3 * D, D * sizeof(float)) != 0);
    // A different step (or layer) gives a different mask for the same sample.
    dropout_key k2 = key;
    k2.step++;
    b->ops->dropout_fwd(b, y2, x, ids, (op_shape){N, 1, 1, D, D}, p, k2);
    long same = 0;
    for (int j = 0; j < D; j++) same += (y2[j] != 0) == (y[j] != 0);
    EXPECT(same < D * 0.7); // independent masks agree on ~p^2 + (1-p)^2 = 52%
    k2 = key;
    k2.layer++;
    b->ops->dropout_fwd(b, y2, x, ids, (op_shape){N, 1, 1, D, D}, p, k2);
    EXPECT(memcmp(y2, y, D * sizeof(float)) != 0);
    // p = 0 is the identity.
    b->ops->dropout_fwd(b, y2, x, ids, (op_shape){N, 1, 1, D, D}, 0.0f, key);
    EXPECT(memcmp(y2, x, (size_t)N * D * sizeof(float)) == 0);
    free(x); free(y); free(y2);
  }
  b->ops->destroy(b);
}

// ---- activations on their own -------------------------------------------------------------

typedef struct act_case {
  backend *b;
  op_shape s;
  float *x, *y, *r, *ybase;
} act_case;

static double act_loss(void *p, int *kink) {
  act_case *t = p;
  size_t n = (size_t)t->s.N * t->s.H * t->s.W * t->s.C;
  t->b->ops->act_fwd(t->b, t->y, t->x, t->s, ACT_RELU);
  for (size_t i = 0; i < n; i++)
    if ((t->y[i] > 0) != (t->ybase[i] > 0)) *kink = 1;
  return dot(t->y, t->r, n);
}

TEST(cpu_activation) {
  backend *b = backend_cpu_create(0);
  const op_shape s = {2, 3, 5, 4, 4};
  const size_t n = 2 * 3 * 5 * 4;
  act_case t = {b, s, fvec(n), fvec(n), fvec(n), fvec(n)};
  fill(t.x, n, 51, -1, 1);
  fill(t.r, n, 52, -1, 1);
  b->ops->act_fwd(b, t.ybase, t.x, s, ACT_RELU);
  for (size_t i = 0; i < n; i++) EXPECT(t.ybase[i] == (t.x[i] < 0 ? 0.0f : t.x[i]));
  float *dy = fvec(n), *dx = fvec(n);
  memcpy(dy, t.r, n * sizeof(float));
  b->ops->act_bwd(b, dx, dy, t.ybase, s, ACT_RELU);
  EXPECT(memcmp(dy, t.r, n * sizeof(float)) == 0); // reads dy only
  int skipped = 0;
  EXPECT_EQ_INT(fd_check("relu dx", act_loss, &t, t.x, dx, n, 1e-3f, 1e-4, 1e-4, &skipped), 0);
  EXPECT(skipped * 4 < (int)n);
  // NaN propagates forward and passes the gradient backward (as PyTorch's threshold_backward);
  // 0 and -0 stop it; in place is allowed forward.
  float x[4] = {NAN, 0.0f, -0.0f, 2.0f}, g[4] = {1, 2, 3, 4}, d[4];
  const op_shape s4 = {1, 1, 1, 4, 4};
  b->ops->act_fwd(b, x, x, s4, ACT_RELU);
  EXPECT(isnan(x[0]) && x[1] == 0.0f && x[2] == 0.0f && x[3] == 2.0f);
  b->ops->act_bwd(b, d, g, x, s4, ACT_RELU);
  EXPECT(d[0] == 1 && d[1] == 0 && d[2] == 0 && d[3] == 4);
  // ACT_NONE: the identity both ways.
  b->ops->act_fwd(b, t.y, t.x, s, ACT_NONE);
  b->ops->act_bwd(b, dx, dy, t.y, s, ACT_NONE);
  EXPECT(memcmp(t.y, t.x, n * sizeof(float)) == 0 && memcmp(dx, dy, n * sizeof(float)) == 0);
  free(dy); free(dx); free(t.x); free(t.y); free(t.r); free(t.ybase);
  b->ops->destroy(b);
}

// ---- batch norm ----------------------------------------------------------------------------

typedef struct bn_case {
  backend *b;
  op_shape s;
  activation act;
  float *x, *gamma, *beta, *y, *r, *ybase, *save, *running;
} bn_case;

static double bn_loss(void *p, int *kink) {
  bn_case *t = p;
  size_t n = (size_t)t->s.N * t->s.H * t->s.W * t->s.C;
  t->b->ops->bn_fwd(t->b, t->y, t->save, t->x, t->gamma, t->beta, t->running, t->s,
                    (bn_params){1e-5f, 0.1f, NULL}, 1, t->act);
  if (t->act == ACT_RELU)
    for (size_t i = 0; i < n; i++)
      if ((t->y[i] > 0) != (t->ybase[i] > 0)) *kink = 1;
  return dot(t->y, t->r, n);
}

// Training forward against the formula in double, the running statistics' update, evaluation
// with them, and the backward (after the activation's) against finite differences.
static void bn_check(int N, int H, int W, int C, activation act) {
  backend *b = backend_cpu_create(0);
  const op_shape s = {N, H, W, C, C};
  const size_t rows = (size_t)N * H * W, n = rows * C;
  bn_case t = {b, s, act, fvec(n), fvec(C), fvec(C), fvec(n), fvec(n), fvec(n), fvec(2 * C), fvec(2 * C)};
  fill(t.x, n, 81, -1, 3); // a mean well off 0
  fill(t.gamma, C, 82, 0.5f, 1.5f);
  fill(t.beta, C, 83, -0.5f, 0.5f);
  fill(t.r, n, 84, -1, 1);
  float running[8], save[8];
  for (int c = 0; c < C; c++) running[c] = 0.2f, running[C + c] = 1.5f;
  b->ops->bn_fwd(b, t.ybase, save, t.x, t.gamma, t.beta, running, s, (bn_params){1e-5f, 0.1f, NULL}, 1, act);
  double err = 0, err_stats = 0;
  for (int c = 0; c < C; c++) {
    double m = 0, v = 0;
    for (size_t i = 0; i < rows; i++) m += t.x[i * C + c];
    m /= rows;
    for (size_t i = 0; i < rows; i++) v += (t.x[i * C + c] - m) * (t.x[i * C + c] - m);
    v /= rows;
    for (size_t i = 0; i < rows; i++) {
      double want = t.gamma[c] * (t.x[i * C + c] - m) / sqrt(v + 1e-5) + t.beta[c];
      if (act == ACT_RELU && want < 0) want = 0;
      err = fmax(err, fabs(t.ybase[i * C + c] - want));
    }
    err_stats = fmax(err_stats, fabs(save[c] - m) + fabs(save[C + c] - 1 / sqrt(v + 1e-5)));
    err_stats = fmax(err_stats, fabs(running[c] - (0.9 * 0.2 + 0.1 * m)));
    err_stats = fmax(err_stats, fabs(running[C + c] - (0.9 * 1.5 + 0.1 * v * rows / (rows - 1))));
  }
  EXPECT(err < 1e-5);
  EXPECT(err_stats < 1e-6);
  // Evaluation: the running statistics, nothing updated.
  float run2[8], save2[8] = {0};
  memcpy(run2, running, sizeof(run2));
  b->ops->bn_fwd(b, t.y, save2, t.x, t.gamma, t.beta, run2, s, (bn_params){1e-5f, 0.1f, NULL}, 0, act);
  double err_eval = 0;
  for (size_t i = 0; i < rows; i++)
    for (int c = 0; c < C; c++) {
      double want = t.gamma[c] * (t.x[i * C + c] - running[c]) / sqrt(running[C + c] + 1e-5) + t.beta[c];
      if (act == ACT_RELU && want < 0) want = 0;
      err_eval = fmax(err_eval, fabs(t.y[i * C + c] - want));
    }
  EXPECT(err_eval < 1e-5);
  EXPECT(memcmp(run2, running, sizeof(run2)) == 0 && save2[0] == 0 && save2[C] == 0);
  // Backward through the activation, then batch norm; neither writes what it reads.
  float *dy = fvec(n), *dz = fvec(n), *dx = fvec(n), *dg = fvec(C), *dbeta = fvec(C);
  memcpy(dy, t.r, n * sizeof(float));
  const float *g = act_grad(b, dz, dy, t.ybase, s, act);
  b->ops->bn_bwd(b, dx, dg, dbeta, g, t.x, t.gamma, save, s, (bn_params){1e-5f, 0.1f, NULL});
  EXPECT(memcmp(dy, t.r, n * sizeof(float)) == 0);
  memcpy(t.save, save, 2 * C * sizeof(float));
  for (int c = 0; c < 2 * C; c++) t.running[c] = running[c];
  const float eps = act == ACT_RELU ? 1e-3f : 1e-2f;
  int skipped = 0, bad = 0;
  bad += fd_check("bn dx", bn_loss, &t, t.x, dx, n, eps, 2e-3, 2e-3, &skipped);
  bad += fd_check("bn dgamma", bn_loss, &t, t.gamma, dg, C, eps, 2e-3, 2e-3, &skipped);
  bad += fd_check("bn dbeta", bn_loss, &t, t.beta, dbeta, C, eps, 2e-3, 2e-3, &skipped);
  EXPECT_EQ_INT(bad, 0);
  EXPECT(skipped * 4 < (int)(n + 2 * C));
  if (act == ACT_NONE) EXPECT_EQ_INT(skipped, 0);
  // dx == NULL (a first layer) still gives the parameter gradients.
  float *dg2 = fvec(C), *db2 = fvec(C);
  b->ops->bn_bwd(b, NULL, dg2, db2, g, t.x, t.gamma, save, s, (bn_params){1e-5f, 0.1f, NULL});
  EXPECT(memcmp(dg2, dg, C * sizeof(float)) == 0 && memcmp(db2, dbeta, C * sizeof(float)) == 0);
  free(dg2); free(db2); free(dy); free(dz); free(dx); free(dg); free(dbeta);
  free(t.x); free(t.gamma); free(t.beta); free(t.y); free(t.r); free(t.ybase); free(t.save);
  free(t.running);
  b->ops->destroy(b);
}

TEST(cpu_bn_grad) {
  bn_check(2, 3, 2, 4, ACT_NONE);
  bn_check(3, 2, 2, 3, ACT_RELU);
  bn_check(1, 1, 2, 4, ACT_NONE); // two values per channel: the smallest batch there is
}

// Many rows and threads: the same results as one thread, within the summation order.
TEST(cpu_bn_threads_agree) {
  enum { C = 32 };
  const op_shape s = {8, 16, 16, C, C}; // 65,536 elements: the statistics split over threads
  const size_t n = (size_t)8 * 16 * 16 * C;
  float *x = fvec(n), *dy = fvec(n), *g = fvec(C), *be = fvec(C);
  fill(x, n, 91, -2, 2);
  fill(dy, n, 92, -1, 1);
  fill(g, C, 93, 0.5f, 1.5f);
  float *y[2], *dx[2], dg[2][C], db[2][C], run[2][2 * C], save[2][2 * C];
  for (int v = 0; v < 2; v++) {
    backend *b = backend_cpu_create(v ? 3 : 1);
    y[v] = fvec(n);
    dx[v] = fvec(n);
    for (int c = 0; c < C; c++) run[v][c] = 0, run[v][C + c] = 1;
    b->ops->bn_fwd(b, y[v], save[v], x, g, be, run[v], s, (bn_params){1e-5f, 0.1f, NULL}, 1, ACT_RELU);
    b->ops->bn_bwd(b, dx[v], dg[v], db[v], dy, x, g, save[v], s, (bn_params){1e-5f, 0.1f, NULL});
    b->ops->destroy(b);
  }
  double e = 0;
  for (size_t i = 0; i < n; i++) e = fmax(e, fabs(y[0][i] - y[1][i]) + fabs(dx[0][i] - dx[1][i]));
  for (int c = 0; c < C; c++)
    e = fmax(e, fabs(dg[0][c] - dg[1][c]) / 100 + fabs(db[0][c] - db[1][c]) / 100 +
                    fabs(run[0][c] - run[1][c]) + fabs(run[0][C + c] - run[1][C + c]));
  EXPECT(e < 1e-5);
  free(x); free(dy); free(g); free(be);
  for (int v = 0; v < 2; v++) {
    free(y[v]);
    free(dx[v]);
  }
}

// ---- batch norm over ranks (--sync-bn) --------------------------------------------------------
// Two ranks as two OpenMP threads, each with its own CPU backend and its share of one batch,
// their statistics summed by an in-process rank_sum (both add the two buffers in rank order, as
// an all-reduce does): the same outputs, statistics and input gradient as one backend given
// the whole batch, and parameter gradients whose sum over the ranks is the whole batch's.

typedef struct two_ranks {
  double *part[2];
} two_ranks;

static void two_ranks_sum(void *ctx, double *buf, size_t count) {
  two_ranks *t = ctx;
  const int r = omp_get_thread_num();
  double sum[64];
  if (count > 64) FATAL("two_ranks_sum: %zu values", count);
  t->part[r] = buf;
#pragma omp barrier
  for (size_t i = 0; i < count; i++) sum[i] = t->part[0][i] + t->part[1][i];
#pragma omp barrier
  memcpy(buf, sum, count * sizeof(double));
}

typedef struct bn_run {
  float *y, *dx, save[16], running[16], dg[8], db[8];
} bn_run;

// Forward (training) and backward of the rows [n0, n0 + s.N) of x and dy, from running = (0, 1).
static void bn_run_share(bn_run *o, const float *x, const float *dy, const float *g,
                         const float *be, op_shape s, int n0, const rank_sum *sync) {
  backend *b = backend_cpu_create(1);
  const size_t off = (size_t)n0 * s.H * s.W * s.C;
  for (int c = 0; c < s.C; c++) o->running[c] = 0, o->running[s.C + c] = 1;
  const bn_params p = {1e-5f, 0.1f, sync};
  b->ops->bn_fwd(b, o->y + off, o->save, x + off, g, be, o->running, s, p, 1, ACT_NONE);
  b->ops->bn_bwd(b, o->dx + off, o->dg, o->db, dy + off, x + off, g, o->save, s, p);
  b->ops->destroy(b);
}

// The largest difference of rank r's results from the whole batch's (dg, db: the ranks' sum).
static double bn_share_err(const bn_run *r, const bn_run *other, const bn_run *whole, size_t n0,
                           size_t n1, int C) {
  double e = 0;
  for (size_t i = n0; i < n1; i++)
    e = fmax(e, fabs(r->y[i] - whole->y[i]) + fabs(r->dx[i] - whole->dx[i]));
  for (int c = 0; c < 2 * C; c++)
    e = fmax(e, fabs(r->save[c] - whole->save[c]) + fabs(r->running[c] - whole->running[c]));
  for (int c = 0; c < C; c++)
    e = fmax(e, fabs(r->dg[c] + other->dg[c] - whole->dg[c]) +
                    fabs(r->db[c] + other->db[c] - whole->db[c]));
  return e;
}

// The batch of N samples split as (n_first, N - n_first) over two ranks, with and without sync.
static void bn_sync_case(int N, int n_first) {
  enum { H = 3, W = 2, C = 5 };
  const size_t per = (size_t)H * W * C, n = N * per;
  float *x = fvec(n), *dy = fvec(n), g[C], be[C];
  fill(x, n, 95, -1, 3);
  fill(dy, n, 96, -1, 1);
  fill(g, C, 97, 0.5f, 1.5f);
  fill(be, C, 98, -0.5f, 0.5f);
  bn_run whole = {.y = fvec(n), .dx = fvec(n)};
  bn_run rk[2] = {{.y = fvec(n), .dx = fvec(n)}, {.y = fvec(n), .dx = fvec(n)}};
  bn_run_share(&whole, x, dy, g, be, (op_shape){N, H, W, C, C}, 0, NULL);
  double err[2][2] = {{0}};
  for (int sync = 0; sync < 2; sync++) {
    two_ranks t = {{NULL, NULL}};
    const rank_sum rs = {two_ranks_sum, &t};
#pragma omp parallel num_threads(2)
    {
      const int r = omp_get_thread_num(), n0 = r ? n_first : 0, nr = r ? N - n_first : n_first;
      bn_run_share(&rk[r], x, dy, g, be, (op_shape){nr, H, W, C, C}, n0, sync ? &rs : NULL);
    }
    for (int r = 0; r < 2; r++)
      err[sync][r] = bn_share_err(&rk[r], &rk[r ^ 1], &whole, r ? n_first * per : 0,
                                  r ? n : n_first * per, C);
  }
  EXPECT(err[1][0] < 1e-5 && err[1][1] < 1e-5);
  EXPECT(err[0][0] > 1e-3 || err[0][1] > 1e-3); // each rank's own statistics differ: sync acts
  printf("    N %d as %d + %d: worst difference from the whole batch %.1e with sync, %.1e without\n",
         N, n_first, N - n_first, fmax(err[1][0], err[1][1]), fmax(err[0][0], err[0][1]));
  free(x); free(dy); free(whole.y); free(whole.dx);
  for (int r = 0; r < 2; r++) free(rk[r].y), free(rk[r].dx);
}

TEST(cpu_bn_sync_over_ranks) {
  bn_sync_case(4, 3); // uneven shares
  bn_sync_case(3, 3); // a rank with no samples still takes part in every sum
}

// ---- the walker with an activation that is not fused -----------------------------------------
// A hand-made model: conv (no activation) -> max-pool + ReLU (an op that does not fuse it, so
// the walker runs act_fwd from the pool's own output) -> linear. The net's gradients of the
// summed loss against finite differences of the whole forward.

typedef struct walk_case {
  net nt;
  float *params;
  int N;
  uint8_t *base_mask, *mask;
  int32_t *base_am, *am;
  size_t n_pool;
} walk_case;

static double walk_loss(void *p, int *kink) {
  walk_case *t = p;
  net_upload_params(&t->nt, t->params);
  net_reset_stats(&t->nt);
  net_forward(&t->nt, t->N, 0, 0, 0);
  net_loss(&t->nt, t->N, 0);
  const float *pre = t->nt.pre[1];
  for (size_t i = 0; i < t->n_pool; i++)
    if ((pre[i] > 0) != t->base_mask[i] || t->nt.argmax[1][i] != t->base_am[i]) *kink = 1;
  double loss, correct;
  net_read_stats(&t->nt, &loss, &correct);
  return loss;
}

static void walk_model(model *m) {
  memset(m, 0, sizeof(*m));
  snprintf(m->name, sizeof(m->name), "walk");
  m->image_size = 4;
  m->classes = 3;
  m->n_layers = 3;
  m->layers[0] = (layer){.kind = LAYER_CONV, .act = ACT_NONE, .H = 4, .W = 4, .C = 3, .oH = 4,
                         .oW = 4, .K = 4, .w_off = 0, .w_count = 108, .b_off = 108, .b_count = 4};
  m->layers[1] = (layer){.kind = LAYER_POOL, .act = ACT_RELU, .H = 4, .W = 4, .C = 4, .oH = 2,
                         .oW = 2, .K = 4};
  m->layers[2] = (layer){.kind = LAYER_LINEAR, .act = ACT_NONE, .H = 1, .W = 1, .C = 16, .oH = 1,
                         .oW = 1, .K = 3, .w_off = 112, .w_count = 48, .b_off = 160, .b_count = 3};
  m->n_params = 163;
  m->max_act = 64;
}

TEST(net_walks_a_separate_activation) {
  model m;
  walk_model(&m);
  backend *b = backend_cpu_create(1);
  walk_case t = {.N = 2, .n_pool = 2 * 16};
  net_init(&t.nt, &m, b, t.N, (size_t)1 << 20);
  REQUIRE(t.nt.pre[0] == NULL && t.nt.pre[1] != NULL && t.nt.pre[2] == NULL);
  t.params = fvec(m.n_params);
  fill(t.params, m.n_params, 71, -0.4f, 0.4f);
  for (int k = 0; k < 4; k++) t.params[108 + k] = -0.7f; // about half the pooled maxima < 0
  float x[2 * 4 * 4 * 3];
  fill(x, 96, 72, -1, 1);
  const int32_t labels[2] = {2, 0};
  memcpy(t.nt.act[0], x, sizeof(x)); // CPU backend memory is host memory
  memcpy(t.nt.labels, labels, sizeof(labels));
  t.base_mask = xcalloc(t.n_pool, 1);
  t.base_am = xcalloc(t.n_pool, sizeof(int32_t));
  int unused = 0;
  walk_loss(&t, &unused);
  for (size_t i = 0; i < t.n_pool; i++) {
    t.base_mask[i] = ((const float *)t.nt.pre[1])[i] > 0;
    t.base_am[i] = t.nt.argmax[1][i];
  }
  int stopped = 0; // the ReLU must stop some gradients, or skipping it would go unseen
  for (size_t i = 0; i < t.n_pool; i++) stopped += !t.base_mask[i];
  printf("    ReLU stops %d of %zu pooled values\n", stopped, t.n_pool);
  EXPECT(stopped * 4 > (int)t.n_pool && stopped * 4 < 3 * (int)t.n_pool);
  // The activation's output is its own buffer, the pool's output stays what the pool wrote.
  const float *pooled = t.nt.pre[1], *relu = t.nt.out[1];
  int relu_ok = 1;
  for (size_t i = 0; i < t.n_pool; i++) relu_ok &= relu[i] == (pooled[i] < 0 ? 0.0f : pooled[i]);
  EXPECT(relu_ok && relu != pooled);
  net_loss(&t.nt, t.N, 1.0f); // dlogits of the summed loss
  net_backward(&t.nt, t.N, 0, 0, NULL);
  float *grads = fvec(m.n_params);
  memcpy(grads, t.nt.grads, m.n_params * sizeof(float));
  int skipped = 0;
  int bad = fd_check("walk params", walk_loss, &t, t.params, grads, m.n_params, 1e-3f, 2e-3, 2e-3,
                     &skipped);
  EXPECT_EQ_INT(bad, 0);
  EXPECT(skipped * 4 < (int)m.n_params);
  free(grads); free(t.params); free(t.base_mask); free(t.base_am);
  net_free(&t.nt);
  b->ops->destroy(b);
}

// ---- softmax cross-entropy -----------------------------------------------------------------

typedef struct xent_case {
  backend *b;
  int N, classes;
  float *z;
  const int32_t *labels;
} xent_case;

static double xent_loss(void *p, int *kink) {
  xent_case *t = p;
  double stats[2] = {0, 0};
  t->b->ops->xent(t->b, NULL, stats, t->z, t->labels, t->N, t->classes, 1.0f);
  return stats[0];
}

TEST(cpu_xent) {
  backend *b = backend_cpu_create(0);
  // Hand example: z = (1, 2, 3), label 2: loss = log(e + e^2 + e^3) - 3 = 0.4076059644;
  // softmax = (0.0900305732, 0.2447284711, 0.6652409558).
  // Second row (2, 2, 1): the first maximum (class 0) is the prediction.
  const float z[6] = {1, 2, 3, 2, 2, 1};
  const int32_t labels[2] = {2, 1};
  double stats[2] = {10.0, 5.0}; // accumulated into
  float d[6];
  b->ops->xent(b, d, stats, z, labels, 2, 3, 0.5f);
  double l2 = log(2 * exp(2.0) + exp(1.0)) - 2.0;
  EXPECT_NEAR(stats[0], 10.0 + 0.4076059644 + l2, 1e-9);
  EXPECT_NEAR(stats[1], 6.0, 0); // row 0 correct, row 1 predicts 0 != 1
  EXPECT_NEAR(d[0], 0.5 * 0.0900305732, 1e-7);
  EXPECT_NEAR(d[1], 0.5 * 0.2447284711, 1e-7);
  EXPECT_NEAR(d[2], 0.5 * (0.6652409558 - 1), 1e-7);
  EXPECT_NEAR(d[4], 0.5 * (exp(2.0) / (2 * exp(2.0) + exp(1.0)) - 1), 1e-7);
  // Stable for huge logits (a naive exp would overflow).
  const float big[3] = {1000, 0, -1000};
  const int32_t l0 = 0;
  double s2[2] = {0, 0};
  b->ops->xent(b, d, s2, big, &l0, 1, 3, 1.0f);
  EXPECT(s2[0] >= 0 && s2[0] < 1e-30);
  EXPECT(isfinite(d[0]) && d[0] == 0.0f);

  // Gradient against finite differences on random logits, 10 classes.
  const int N = 4, K = 10;
  float *zz = fvec(N * K), *dz = fvec(N * K);
  fill(zz, N * K, 51, -3, 3);
  const int32_t lab[4] = {0, 9, 3, 3};
  xent_case t = {b, N, K, zz, lab};
  double st[2] = {0, 0};
  b->ops->xent(b, dz, st, zz, lab, N, K, 1.0f);
  int skipped = 0;
  int bad = fd_check("xent dlogits", xent_loss, &t, zz, dz, N * K, 1e-2f, 1e-4, 1e-3, &skipped);
  EXPECT_EQ_INT(bad, 0);
  free(zz); free(dz);
  b->ops->destroy(b);
}

// ---- Adam / AdamW --------------------------------------------------------------------------

// The documented update in double, one scalar at a time, with the decimal hyperparameters
// the float ones stand for (as PyTorch receives them from Python).
typedef struct adam_hp {
  double lr, b1, b2, eps, wd;
} adam_hp;

static void adam_ref(double *p, double *m, double *v, double g, adam_hp h, int t, int decoupled) {
  if (decoupled) *p *= 1 - h.lr * h.wd;
  else g += h.wd * *p;
  *m = h.b1 * *m + (1 - h.b1) * g;
  *v = h.b2 * *v + (1 - h.b2) * g * g;
  double mhat = *m / (1 - pow(h.b1, t)), vhat = *v / (1 - pow(h.b2, t));
  *p -= h.lr * mhat / (sqrt(vhat) + h.eps);
}

TEST(cpu_adam) {
  backend *b = backend_cpu_create(0);
  const adam_hp hp = {1e-2, 0.9, 0.999, 1e-8, 0.05};
  for (int decoupled = 0; decoupled < 2; decoupled++) {
    enum { n = 5 };
    float p[n] = {0.5f, -1.25f, 2.0f, 0.0f, -0.01f}, m[n] = {0}, v[n] = {0};
    double pr[n], mr[n] = {0}, vr[n] = {0};
    for (int i = 0; i < n; i++) pr[i] = p[i];
    adam_params a = {1e-2f, 0.9f, 0.999f, 1e-8f, 0.05f, 0, decoupled};
    for (int t = 1; t <= 3; t++) {
      float g[n] = {0.3f * t, -0.2f, 1.5f / t, 0.0f, 0.02f * (t - 2)};
      a.step = t;
      b->ops->adam(b, p, g, m, v, n, &a);
      for (int i = 0; i < n; i++) adam_ref(&pr[i], &mr[i], &vr[i], g[i], hp, t, decoupled);
    }
    for (int i = 0; i < n; i++) {
      EXPECT_NEAR(p[i], pr[i], 1e-6 * fabs(pr[i]) + 1e-9);
      EXPECT_NEAR(m[i], mr[i], 1e-6 * fabs(mr[i]) + 1e-12);
      EXPECT_NEAR(v[i], vr[i], 1e-6 * fabs(vr[i]) + 1e-15);
    }
    // Three steps move a parameter with a steady gradient by about 3 lr.
    EXPECT(fabs(pr[0] - 0.5) > 0.02 && fabs(pr[0] - 0.5) < 0.04);
  }
  // Hand-computed: one step of plain Adam from zero state moves p by lr * sign(g).
  float p1 = 1.0f, g1 = -4.0f, m1 = 0, v1 = 0;
  adam_params a1 = {0.1f, 0.9f, 0.999f, 1e-8f, 0.0f, 1, 0};
  b->ops->adam(b, &p1, &g1, &m1, &v1, 1, &a1);
  EXPECT_NEAR(p1, 1.1, 1e-6);
  EXPECT_NEAR(m1, -0.4, 1e-7);
  EXPECT_NEAR(v1, 0.016, 1e-8);
  // AdamW with a zero gradient only decays: p *= 1 - lr * wd.
  float p2 = 2.0f, g2 = 0.0f, m2 = 0, v2 = 0;
  adam_params a2 = {0.1f, 0.9f, 0.999f, 1e-8f, 0.5f, 1, 1};
  b->ops->adam(b, &p2, &g2, &m2, &v2, 1, &a2);
  EXPECT_NEAR(p2, 2.0 * 0.95, 1e-6);
  // The same with coupled Adam: the decay enters the gradient, so p moves by lr.
  p2 = 2.0f; m2 = v2 = 0; a2.decoupled = 0;
  b->ops->adam(b, &p2, &g2, &m2, &v2, 1, &a2);
  EXPECT_NEAR(p2, 1.9, 1e-6);
  b->ops->destroy(b);
}

// ---- N == 0, memory ------------------------------------------------------------------------

TEST(cpu_ops_empty_batch) {
  backend *b = backend_cpu_create(0);
  const int C = 3, K = 4, in = 6, out = 5;
  float dw[4 * 9 * 3], db[5], lw[5 * 6], y[1] = {7.0f}, w[4 * 9 * 3] = {0};
  for (int i = 0; i < 4 * 9 * 3; i++) dw[i] = 1.0f;
  for (int i = 0; i < 5; i++) db[i] = 1.0f;
  for (int i = 0; i < 30; i++) lw[i] = 1.0f;
  float dummy[1] = {7.0f};
  b->ops->conv_fwd(b, y, dummy, w, NULL, (op_shape){0, 4, 4, C, K}, ACT_RELU);
  b->ops->conv_bwd(b, dummy, dw, db, dummy, dummy, w, (op_shape){0, 4, 4, C, K});
  int zero = 1;
  for (int i = 0; i < 4 * 9 * 3; i++) zero &= dw[i] == 0.0f;
  for (int i = 0; i < K; i++) zero &= db[i] == 0.0f;
  EXPECT(zero);
  for (int i = 0; i < 5; i++) db[i] = 1.0f;
  b->ops->linear_fwd(b, y, dummy, lw, NULL, (op_shape){0, 1, 1, in, out}, ACT_RELU);
  b->ops->linear_bwd(b, dummy, lw, db, dummy, dummy, lw, (op_shape){0, 1, 1, in, out});
  zero = 1;
  for (int i = 0; i < 30; i++) zero &= lw[i] == 0.0f;
  for (int i = 0; i < out; i++) zero &= db[i] == 0.0f;
  EXPECT(zero);
  int32_t am[1] = {-1}, ids[1] = {0}, labels[1] = {0};
  b->ops->maxpool_fwd(b, y, am, dummy, (op_shape){0, 4, 4, C, C});
  b->ops->maxpool_bwd(b, dummy, dummy, am, dummy, dummy, (op_shape){0, 4, 4, C, C});
  dropout_key key = {1, 0, 0};
  b->ops->dropout_fwd(b, y, dummy, ids, (op_shape){0, 1, 1, 8, 8}, 0.5f, key);
  b->ops->dropout_bwd(b, y, dummy, ids, (op_shape){0, 1, 1, 8, 8}, 0.5f, key);
  b->ops->act_fwd(b, y, dummy, (op_shape){0, 4, 4, C, C}, ACT_RELU);
  float run[2] = {7.0f, 7.0f}, save[2] = {7.0f, 7.0f}, g1[1] = {1.0f}, b1[1] = {0.0f};
  b->ops->bn_fwd(b, y, save, dummy, g1, b1, run, (op_shape){0, 4, 4, 1, 1}, (bn_params){1e-5f, 0.1f, NULL}, 1, ACT_RELU);
  EXPECT(run[0] == 7.0f && run[1] == 7.0f && save[0] == 7.0f); // nothing updated
  b->ops->bn_bwd(b, dummy, g1, b1, dummy, dummy, g1, save, (op_shape){0, 4, 4, 1, 1}, (bn_params){1e-5f, 0.1f, NULL});
  EXPECT(g1[0] == 0.0f && b1[0] == 0.0f);
  b->ops->act_bwd(b, y, dummy, dummy, (op_shape){0, 4, 4, C, C}, ACT_RELU);
  double stats[2] = {1.5, 2.0};
  b->ops->xent(b, y, stats, dummy, labels, 0, 10, 1.0f);
  EXPECT(stats[0] == 1.5 && stats[1] == 2.0);
  EXPECT(y[0] == 7.0f && dummy[0] == 7.0f && am[0] == -1); // size-0 outputs untouched
  b->ops->destroy(b);
}

TEST(cpu_memory_ops) {
  backend *b = backend_cpu_create(0);
  EXPECT_EQ_INT(b->act_bytes, 4);
  EXPECT(!b->is_device && b->ops->stream(b) == NULL);
  unsigned char *p = b->ops->alloc(b, 1000);
  EXPECT(((uintptr_t)p & 63) == 0);
  int zero = 1;
  for (int i = 0; i < 1000; i++) zero &= p[i] == 0;
  EXPECT(zero);
  unsigned char h[1000], back[1000];
  for (int i = 0; i < 1000; i++) h[i] = (unsigned char)(i * 7);
  b->ops->upload(b, p, h, 1000);
  b->ops->sync(b);
  b->ops->download(b, back, p, 1000);
  EXPECT(memcmp(h, back, 1000) == 0);
  b->ops->zero(b, p + 10, 100);
  b->ops->download(b, back, p, 1000);
  EXPECT(back[9] == h[9] && back[10] == 0 && back[109] == 0 && back[110] == h[110]);
  b->ops->release(b, p);
  b->ops->release(b, NULL);
  b->ops->destroy(b);
}

// The start-up memory figure (net_memory_bytes, said before allocating, and checked against the
// free GPU memory) is what net_init really allocates: measured here through the C heap, which
// is where the CPU backend's buffers come from.
TEST(net_memory_estimate_is_what_net_init_allocates) {
  model m;
  model_build(&m, "vgg16", 0.25f, 64, 10, 0.5f, 0);
  backend *b = backend_cpu_create(1);
  const int n_images = 24;
  size_t est = net_memory_bytes(&m, n_images, sizeof(float));
  struct mallinfo2 before = mallinfo2();
  net nt;
  net_init(&nt, &m, b, n_images, (size_t)1 << 20);
  struct mallinfo2 after = mallinfo2();
  size_t got = (after.uordblks + after.hblkhd) - (before.uordblks + before.hblkhd);
  EXPECT(est > ((size_t)16 << 20)); // large beside the slack below
  // Slack: 64-byte padding and a heap header or page rounding per buffer, the bucket plan.
  EXPECT(got >= est && got - est < ((size_t)256 << 10));
  printf("    net_init allocated %zu bytes, estimate %zu\n", got, est);
  // bf16 activations shrink the activation part only (not the fp32 state, not the argmaxes).
  size_t state = 4 * m.n_params * sizeof(float);
  size_t est16 = net_memory_bytes(&m, n_images, 2);
  EXPECT(est16 > state && est16 < est);
  // One image more costs, from the layer table alone: its input, every layer's output (and a
  // pool's argmax), the two gradient buffers of the largest activation, its label and id.
  size_t per_image = (size_t)m.image_size * m.image_size * 3 * sizeof(float) +
                     2 * (size_t)m.max_act * sizeof(float) + 2 * sizeof(int32_t);
  for (int i = 0; i < m.n_layers; i++) {
    const layer *l = &m.layers[i];
    size_t out = (size_t)l->oH * l->oW * l->K;
    per_image += out * sizeof(float) + (l->kind == LAYER_POOL ? out * sizeof(int32_t) : 0);
  }
  EXPECT_EQ_INT(net_memory_bytes(&m, n_images + 1, sizeof(float)) - est, per_image);
  net_free(&nt);
  b->ops->destroy(b);
}
