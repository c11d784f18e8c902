// winograd.c - the CPU backend's 3x3 pad-1 convolution by Winograd's minimal filtering,
// F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//
// Each 2x2 block of output pixels (a tile) comes from the 4x4 input patch around it:
//   y (2x2) = A^T [ (G g G^T) .* (B^T d B) ] A      for one (input, output) channel pair,
// and summed over input channels the elementwise product becomes 16 independent gemms, one
// per position xi of the 4x4 transformed tile:
//   M[xi] (tiles, K) = U[xi] (tiles, C) * V[xi]^T (C, K),   U = B^T d B,  V = G g G^T.
// That is 16 multiply-adds per (tile, c, k) instead of the direct method's 36 (9 per output
// pixel, 4 pixels): 2.25x fewer, in the same single-threaded OpenBLAS sgemm that im2col uses.
// The transforms' coefficients are 0, +-1 and 1/2, so the rounding stays near the direct
// sum's (conv.c's tests compare both algorithms with the direct double reference).
//
// Threads and memory follow conv.c: the tiles are split across OpenMP threads, each
// transforming, multiplying and writing back its own range in chunks that keep U and M
// within cpu_ctx.conv_budget floats; a tile's outputs belong to that tile alone, so no two
// threads write one pixel. The transformed weights V are shared (computed once per call).
#include "cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

// Tiles per chunk: U (16 x T x C) and M (16 x T x K) within the per-thread budget.
static long wino_chunk(const cpu_ctx *ctx, int C, int K) {
  long t = (long)(ctx->conv_budget / (16 * (size_t)(C + K)));
  return t < 1 ? 1 : t;
}

size_t cpu_wino_floats(const cpu_ctx *ctx, int threads, int C, int K) {
  const size_t wide = (size_t)(C > K ? C : K);
  return (size_t)16 * K * C + wide +
         (size_t)threads * ((size_t)wino_chunk(ctx, C, K) * 16 * (size_t)(C + K) + wide);
}

// Every transform loops over channels innermost, where the data is contiguous, and is built
// for AVX2 where the CPU has it (the build targets baseline x86-64); the gemms are OpenBLAS's.
#define VEC_CLONES __attribute__((target_clones("avx2", "default")))

// V[xi][k][c] = (G g G^T)[xi] for k in [k0, k1) and every c, g the 3x3 kernel w[k][.][.][c];
// G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1].
VEC_CLONES static void weight_transform(float *V, const float *w, int C, int K,
                                        int k0, int k1) {
  const size_t KC = (size_t)K * C;
  for (int k = k0; k < k1; k++) {
    const float *g[9]; // the kernel's taps (r, s), each C floats
    float *v[16];      // V[xi][k]
    for (int i = 0; i < 9; i++) g[i] = w + ((size_t)k * 9 + i) * C;
    for (int i = 0; i < 16; i++) v[i] = V + (size_t)i * KC + (size_t)k * C;
#pragma GCC ivdep
    for (int c = 0; c < C; c++) {
      // G g, row by row (kernel rows r0, r1, r2; taps 0..2 of each)
      const float r00 = g[0][c], r01 = g[1][c], r02 = g[2][c];
      const float r10 = g[3][c], r11 = g[4][c], r12 = g[5][c];
      const float r20 = g[6][c], r21 = g[7][c], r22 = g[8][c];
      const float a[4][3] = {{r00, r01, r02},
                             {0.5f * (r00 + r10 + r20), 0.5f * (r01 + r11 + r21),
                              0.5f * (r02 + r12 + r22)},
                             {0.5f * (r00 - r10 + r20), 0.5f * (r01 - r11 + r21),
                              0.5f * (r02 - r12 + r22)},
                             {r20, r21, r22}};
      for (int i = 0; i < 4; i++) { // (G g) G^T: the columns
        v[i * 4 + 0][c] = a[i][0];
        v[i * 4 + 1][c] = 0.5f * (a[i][0] + a[i][1] + a[i][2]);
        v[i * 4 + 2][c] = 0.5f * (a[i][0] - a[i][1] + a[i][2]);
        v[i * 4 + 3][c] = a[i][2];
      }
    }
  }
}

// The tile's position: image n, tile row ti, tile column tj.
static inline void tile_pos(long t, int th, int tw, long *n, int *ti, int *tj) {
  *tj = (int)(t % tw);
  *ti = (int)(t / tw % th);
  *n = t / tw / th;
}

// U[xi][i][c] = (B^T d B)[xi] for tiles t0 + i, i < nq, d the 4x4 patch of channel c
// (zero outside the image); B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. U's blocks are
// `stride` floats apart.
VEC_CLONES static void input_transform(float *U, size_t stride, const float *x,
                                       const float *zero, long t0, long nq, int H, int W, int C,
                                       int th, int tw) {
  for (long i = 0; i < nq; i++) {
    long n;
    int ti, tj;
    tile_pos(t0 + i, th, tw, &n, &ti, &tj);
    const float *p[16];
    for (int r = 0; r < 4; r++)
      for (int s = 0; s < 4; s++) {
        const int h = 2 * ti - 1 + r, w = 2 * tj - 1 + s;
        p[r * 4 + s] = h >= 0 && h < H && w >= 0 && w < W ? x + ((size_t)(n * H + h) * W + w) * C
                                                         : zero;
      }
    float *u = U + (size_t)i * C;
#pragma GCC ivdep
    for (int c = 0; c < C; c++) {
      float t[4][4];
      for (int s = 0; s < 4; s++) { // B^T d: the rows
        const float d0 = p[s][c], d1 = p[4 + s][c], d2 = p[8 + s][c], d3 = p[12 + s][c];
        t[0][s] = d0 - d2;
        t[1][s] = d1 + d2;
        t[2][s] = d2 - d1;
        t[3][s] = d1 - d3;
      }
      for (int r = 0; r < 4; r++) { // (B^T d) B: the columns
        u[(size_t)(r * 4 + 0) * stride + c] = t[r][0] - t[r][2];
        u[(size_t)(r * 4 + 1) * stride + c] = t[r][1] + t[r][2];
        u[(size_t)(r * 4 + 2) * stride + c] = t[r][2] - t[r][1];
        u[(size_t)(r * 4 + 3) * stride + c] = t[r][1] - t[r][3];
      }
    }
  }
}

// One tile's 2x2 outputs o[0..3] = act(A^T m A + bias) over k, m the 16 products M[xi][k]
// (blocks `stride` apart); A^T = [1 1 1 0; 0 1 -1 -1]. Inlined with relu constant.
static inline void output_tile(float *const o[4], const float *m, size_t stride,
                               const float *bias, int relu, int K) {
  float *restrict o0 = o[0], *restrict o1 = o[1], *restrict o2 = o[2], *restrict o3 = o[3];
#pragma GCC ivdep
  for (int k = 0; k < K; k++) {
    float t[2][4];
    for (int s = 0; s < 4; s++) { // A^T m: the rows
      const float m0 = m[(size_t)s * stride + k], m1 = m[(size_t)(4 + s) * stride + k],
                  m2 = m[(size_t)(8 + s) * stride + k], m3 = m[(size_t)(12 + s) * stride + k];
      t[0][s] = m0 + m1 + m2;
      t[1][s] = m1 - m2 - m3;
    }
    const float bk = bias[k]; // (A^T m) A: the columns
    float v0 = t[0][0] + t[0][1] + t[0][2] + bk, v1 = t[0][1] - t[0][2] - t[0][3] + bk;
    float v2 = t[1][0] + t[1][1] + t[1][2] + bk, v3 = t[1][1] - t[1][2] - t[1][3] + bk;
    if (relu) { // NaN propagates, as torch.relu
      v0 = v0 < 0.0f ? 0.0f : v0;
      v1 = v1 < 0.0f ? 0.0f : v1;
      v2 = v2 < 0.0f ? 0.0f : v2;
      v3 = v3 < 0.0f ? 0.0f : v3;
    }
    o0[k] = v0;
    o1[k] = v1;
    o2[k] = v2;
    o3[k] = v3;
  }
}

// y's 2x2 pixels of tiles t0 + i, i < nq, from M (blocks `stride` apart); bias is K floats
// (zeros when the layer has none). Pixels outside the image (odd H or W) go to `sink`.
VEC_CLONES static void output_transform(float *y, const float *M, size_t stride,
                                        const float *bias, activation act, float *sink, long t0,
                                        long nq, int H, int W, int K, int th, int tw) {
  for (long i = 0; i < nq; i++) {
    long n;
    int ti, tj;
    tile_pos(t0 + i, th, tw, &n, &ti, &tj);
    float *o[4];
    for (int a = 0; a < 2; a++)
      for (int b = 0; b < 2; b++) {
        const int h = 2 * ti + a, w = 2 * tj + b;
        o[a * 2 + b] = h < H && w < W ? y + ((size_t)(n * H + h) * W + w) * K : sink;
      }
    if (act == ACT_RELU)
      output_tile(o, M + (size_t)i * K, stride, bias, 1, K);
    else
      output_tile(o, M + (size_t)i * K, stride, bias, 0, K);
  }
}

// The forward (dgrad = 0): y (N,H,W,K) from x (N,H,W,C); or the data gradient (dgrad = 1):
// dx (N,H,W,C) from dy (N,H,W,K), the convolution of dy with w flipped in (r, s) and
// transposed in (k, c). Flipping the kernel swaps rows 0 and 3 of G (G J = P G), so its
// transform is V with xi's rows and columns 0 and 3 swapped, and the (k, c) transpose is the
// gemm's: M[xi] = U[xi] (tiles, K) * V[p(xi)] (K, C). No flipped copy of w is made.
static void wino_conv(cpu_ctx *ctx, int nt, int dgrad, float *y, const float *x, const float *w,
                      const float *bias, activation act, int N, int H, int W, int C, int K,
                      float *ws) {
  static const int swap03[4] = {3, 1, 2, 0};
  const int Ci = dgrad ? K : C, Co = dgrad ? C : K; // channels in and out of this convolution
  const int th = (H + 1) / 2, tw = (W + 1) / 2;
  const long tiles = (long)N * th * tw;
  if (tiles < nt) nt = (int)tiles;
  const long T = wino_chunk(ctx, C, K);
  const size_t each = (size_t)T * 16 * (C + K) + (size_t)Co; // U, M and a sink row per thread
  const int wide = C > K ? C : K;
  // V | zeros (the padding's input rows, and the bias of a layer without one) | per thread
  float *V = ws, *zero = V + (size_t)16 * K * C, *per = zero + wide;
  memset(zero, 0, (size_t)wide * sizeof(float));
  if (!bias) bias = zero;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), Tn = omp_get_num_threads();
    weight_transform(V, w, C, K, K * t / Tn, K * (t + 1) / Tn);
#pragma omp barrier
    const long lo = tiles * t / Tn, hi = tiles * (t + 1) / Tn;
    float *U = per + (size_t)t * each, *M = U + (size_t)16 * T * Ci;
    float *sink = M + (size_t)16 * T * Co;
    for (long q0 = lo; q0 < hi; q0 += T) {
      const long nq = hi - q0 < T ? hi - q0 : T;
      input_transform(U, (size_t)T * Ci, x, zero, q0, nq, H, W, Ci, th, tw);
      for (int xi = 0; xi < 16; xi++) {
        const float *Ux = U + (size_t)xi * T * Ci;
        float *Mx = M + (size_t)xi * T * Co;
        if (dgrad)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, C, K, 1.0f, Ux, K,
                      V + (size_t)(swap03[xi / 4] * 4 + swap03[xi % 4]) * K * C, C, 0.0f, Mx, C);
        else
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, K, C, 1.0f, Ux, C,
                      V + (size_t)xi * K * C, C, 0.0f, Mx, K);
      }
      output_transform(y, M, (size_t)T * Co, bias, act, sink, q0, nq, H, W, Co, th, tw);
    }
  }
}

void cpu_wino_conv(cpu_ctx *ctx, int nt, float *y, const float *x, const float *w,
                   const float *bias, activation act, int N, int H, int W, int C, int K,
                   float *ws) {
  wino_conv(ctx, nt, 0, y, x, w, bias, act, N, H, W, C, K, ws);
}

void cpu_wino_data_grad(cpu_ctx *ctx, int nt, float *dx, const float *dy, const float *w, int N,
                        int H, int W, int C, int K, float *ws) {
  wino_conv(ctx, nt, 1, dx, dy, w, NULL, ACT_NONE, N, H, W, C, K, ws);
}

// ---- the filter gradient -------------------------------------------------------------------
//
// By linearity of y = A^T [(G g G^T) .* (B^T d B)] A in g, a tile's share of the filter
// gradient is G^T [(A dY A^T) .* (B^T d B)] G, dY its 2x2 output gradient; summed over tiles
// the elementwise products become 16 gemms again, now reducing over tiles:
//   S[xi] (K, C) = Z[xi]^T (K, tiles) * U[xi] (tiles, C),   Z = A dY A^T,  U = B^T d B,
// and dw = G^T S G per (k, c): 2.25x fewer multiply-adds than im2col's dy^T * col(x). Each
// thread sums its tiles into its own S; the threads' S are added in a fixed order.

// Z[xi][i][k] = (A dY A^T)[xi] for tiles t0 + i, dY the tile's 2x2 of dy (zero outside the
// image); A = [1 0; 1 1; 1 -1; 0 -1].
VEC_CLONES static void grad_transform(float *Z, size_t stride, const float *dy,
                                      const float *zero, long t0, long nq, int H, int W, int K,
                                      int th, int tw) {
  for (long i = 0; i < nq; i++) {
    long n;
    int ti, tj;
    tile_pos(t0 + i, th, tw, &n, &ti, &tj);
    const float *p[4];
    for (int a = 0; a < 2; a++)
      for (int b = 0; b < 2; b++) {
        const int h = 2 * ti + a, w = 2 * tj + b;
        p[a * 2 + b] = h < H && w < W ? dy + ((size_t)(n * H + h) * W + w) * K : zero;
      }
    float *z = Z + (size_t)i * K;
#pragma GCC ivdep
    for (int k = 0; k < K; k++) {
      const float d00 = p[0][k], d01 = p[1][k], d10 = p[2][k], d11 = p[3][k];
      const float r[4][2] = {{d00, d01}, {d00 + d10, d01 + d11}, {d00 - d10, d01 - d11},
                             {-d10, -d11}}; // A dY: the rows
      for (int a = 0; a < 4; a++) { // (A dY) A^T: the columns
        z[(size_t)(a * 4 + 0) * stride + k] = r[a][0];
        z[(size_t)(a * 4 + 1) * stride + k] = r[a][0] + r[a][1];
        z[(size_t)(a * 4 + 2) * stride + k] = r[a][0] - r[a][1];
        z[(size_t)(a * 4 + 3) * stride + k] = -r[a][1];
      }
    }
  }
}

// dw[k][.][.][c] = G^T S G for k in [k0, k1), S the sum of the `parts` threads' S blocks
// (`part` floats apart, added into the first in thread order).
VEC_CLONES static void filter_back(float *dw, float *S, size_t part, int parts,
                                   int C, int K, int k0, int k1) {
  const size_t KC = (size_t)K * C, n = (size_t)(k1 - k0) * C;
  for (int xi = 0; xi < 16; xi++) {
    float *s0 = S + (size_t)xi * KC + (size_t)k0 * C;
    for (int q = 1; q < parts; q++) {
      const float *sq = s0 + (size_t)q * part;
      for (size_t i = 0; i < n; i++) s0[i] += sq[i];
    }
  }
  for (int k = k0; k < k1; k++) {
    float *d[9]; // dw[k]'s taps (r, s), each C floats
    const float *p[16]; // S[xi][k]
    for (int i = 0; i < 9; i++) d[i] = dw + ((size_t)k * 9 + i) * C;
    for (int i = 0; i < 16; i++) p[i] = S + (size_t)i * KC + (size_t)k * C;
#pragma GCC ivdep
    for (int c = 0; c < C; c++) {
      float s[16];
      for (int xi = 0; xi < 16; xi++) s[xi] = p[xi][c];
      float g[3][4]; // G^T S: the rows
      for (int j = 0; j < 4; j++) {
        g[0][j] = s[j] + 0.5f * s[4 + j] + 0.5f * s[8 + j];
        g[1][j] = 0.5f * s[4 + j] - 0.5f * s[8 + j];
        g[2][j] = 0.5f * s[4 + j] + 0.5f * s[8 + j] + s[12 + j];
      }
      for (int r = 0; r < 3; r++) { // (G^T S) G: the columns
        d[r * 3 + 0][c] = g[r][0] + 0.5f * g[r][1] + 0.5f * g[r][2];
        d[r * 3 + 1][c] = 0.5f * g[r][1] - 0.5f * g[r][2];
        d[r * 3 + 2][c] = 0.5f * g[r][1] + 0.5f * g[r][2] + g[r][3];
      }
    }
  }
}

size_t cpu_wino_grad_floats(const cpu_ctx *ctx, int threads, int C, int K) {
  return (size_t)(C > K ? C : K) +
         (size_t)threads * ((size_t)16 * K * C + (size_t)wino_chunk(ctx, C, K) * 16 * (C + K));
}

void cpu_wino_filter_grad(cpu_ctx *ctx, int nt, float *dw, const float *dy, const float *x,
                          int N, int H, int W, int C, int K, float *ws) {
  const int th = (H + 1) / 2, tw = (W + 1) / 2;
  const long tiles = (long)N * th * tw;
  if (tiles < nt) nt = (int)tiles; // every thread sums at least one tile
  const long T = wino_chunk(ctx, C, K);
  const int wide = C > K ? C : K;
  const size_t part = (size_t)16 * K * C, each = part + (size_t)T * 16 * (C + K);
  // zeros | per thread: S, U, Z
  float *zero = ws, *per = zero + wide;
  memset(zero, 0, (size_t)wide * sizeof(float));
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), Tn = omp_get_num_threads();
    const long lo = tiles * t / Tn, hi = tiles * (t + 1) / Tn;
    float *S = per + (size_t)t * each, *U = S + part, *Z = U + (size_t)16 * T * C;
    for (long q0 = lo; q0 < hi; q0 += T) {
      const long nq = hi - q0 < T ? hi - q0 : T;
      input_transform(U, (size_t)T * C, x, zero, q0, nq, H, W, C, th, tw);
      grad_transform(Z, (size_t)T * K, dy, zero, q0, nq, H, W, K, th, tw);
      for (int xi = 0; xi < 16; xi++)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, C, (int)nq, 1.0f,
                    Z + (size_t)xi * T * K, K, U + (size_t)xi * T * C, C, q0 == lo ? 0.0f : 1.0f,
                    S + (size_t)xi * K * C, C);
    }
#pragma omp barrier
    filter_back(dw, per, each, Tn, C, K, K * t / Tn, K * (t + 1) / Tn);
  }
}
