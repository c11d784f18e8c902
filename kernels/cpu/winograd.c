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

// Floats from one xi block of U, M or Z to the next: T tiles of `ch` channels, plus one cache
// line so that the 16 blocks a tile's transform writes (or reads) at once do not all fall in
// the same L1 sets, as they would T * ch * 4 bytes apart whenever that is a multiple of 4 KiB.
static size_t wino_block(long T, int ch) { return (size_t)T * ch + 16; }

size_t cpu_wino_floats(const cpu_ctx *ctx, int threads, int C, int K) {
  const size_t wide = (size_t)(C > K ? C : K);
  const long T = wino_chunk(ctx, C, K);
  return (size_t)16 * K * C + wide +
         (size_t)threads * (16 * (wino_block(T, C) + wino_block(T, K)) + 16 * wide);
}

// Every transform loops over channels innermost, where the data is contiguous, and is built
// for AVX2 where the CPU has it (the build targets baseline x86-64); the gemms are OpenBLAS's.
#define VEC_CLONES __attribute__((target_clones("avx2", "default")))

// 8 floats (GCC's vector extension: one AVX register, or two SSE ones in the default build),
// loaded and stored at any float alignment. The per-tile transforms use them explicitly: with
// 16 strided streams per tile the compiler's own vectorisation kept the stream pointers in
// memory. Lanes do the scalar code's operations in its order: the same results.
typedef float v8f __attribute__((vector_size(32), aligned(4), may_alias));
typedef int v8i __attribute__((vector_size(32), aligned(4), may_alias));
#define LD8(p) (*(const v8f *)(p))
#define ST8(p, v) (*(v8f *)(p) = (v))

// max(v, 0) lane by lane, NaN kept (torch.relu): zero where v < 0. (Macros, not functions:
// a function taking or returning v8f would change the ABI between the clones.)
#define RELU8(v) ((v8f)((v8i)(v) & ~(v8i)((v) < (v8f){0})))

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

// The next tile's position after (n, ti, tj), in tile order.
static inline void tile_next(int th, int tw, long *n, int *ti, int *tj) {
  if (++*tj == tw) {
    *tj = 0;
    if (++*ti == th) {
      *ti = 0;
      ++*n;
    }
  }
}

// Row r of U from row r of B^T d: (B^T d) B, 8 channels at q (blocks `stride` apart).
#define INPUT_COLS8(q, stride, t0, t1, t2, t3)                                                   \
  do {                                                                                             \
    const v8f t0_ = (t0), t1_ = (t1), t2_ = (t2), t3_ = (t3);                                      \
    ST8((q), t0_ - t2_);                                                                           \
    ST8((q) + (stride), t1_ + t2_);                                                                \
    ST8((q) + 2 * (stride), t2_ - t1_);                                                            \
    ST8((q) + 3 * (stride), t1_ - t3_);                                                            \
  } while (0)

// One tile's U[xi][c] = (B^T d B)[xi], d the 4x4 patch whose rows r0..r3 each hold 4 pixels
// of C floats; B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. u's blocks are `stride` apart.
static inline __attribute__((always_inline)) void input_tile(float *u, size_t stride,
                                                             const float *r0, const float *r1,
                                                             const float *r2, const float *r3,
                                                             int C) {
  const size_t C1 = (size_t)C, C2 = 2 * C1, C3 = 3 * C1;
  size_t c = 0;
  for (; c + 8 <= C1; c += 8) { // B^T d's rows 1 and 2 from d's rows 1, 2; then 0 and 3
    const v8f a0 = LD8(r1 + c), a1 = LD8(r1 + C1 + c), a2 = LD8(r1 + C2 + c),
              a3 = LD8(r1 + C3 + c);
    const v8f b0 = LD8(r2 + c), b1 = LD8(r2 + C1 + c), b2 = LD8(r2 + C2 + c),
              b3 = LD8(r2 + C3 + c);
    INPUT_COLS8(u + 4 * stride + c, stride, a0 + b0, a1 + b1, a2 + b2, a3 + b3);
    INPUT_COLS8(u + 8 * stride + c, stride, b0 - a0, b1 - a1, b2 - a2, b3 - a3);
    const v8f z0 = LD8(r0 + c), z1 = LD8(r0 + C1 + c), z2 = LD8(r0 + C2 + c),
              z3 = LD8(r0 + C3 + c);
    INPUT_COLS8(u + c, stride, z0 - b0, z1 - b1, z2 - b2, z3 - b3);
    const v8f w0 = LD8(r3 + c), w1 = LD8(r3 + C1 + c), w2 = LD8(r3 + C2 + c),
              w3 = LD8(r3 + C3 + c);
    INPUT_COLS8(u + 12 * stride + c, stride, a0 - w0, a1 - w1, a2 - w2, a3 - w3);
  }
  for (; c < C1; c++) {
    const float d[4][4] = {{r0[c], r0[C1 + c], r0[C2 + c], r0[C3 + c]},
                           {r1[c], r1[C1 + c], r1[C2 + c], r1[C3 + c]},
                           {r2[c], r2[C1 + c], r2[C2 + c], r2[C3 + c]},
                           {r3[c], r3[C1 + c], r3[C2 + c], r3[C3 + c]}};
    float t[4][4];
    for (int s = 0; s < 4; s++) { // B^T d: the rows
      t[0][s] = d[0][s] - d[2][s];
      t[1][s] = d[1][s] + d[2][s];
      t[2][s] = d[2][s] - d[1][s];
      t[3][s] = d[1][s] - d[3][s];
    }
    for (int r = 0; r < 4; r++) { // (B^T d) B: the columns
      u[(r * 4 + 0) * stride + c] = t[r][0] - t[r][2];
      u[(r * 4 + 1) * stride + c] = t[r][1] + t[r][2];
      u[(r * 4 + 2) * stride + c] = t[r][2] - t[r][1];
      u[(r * 4 + 3) * stride + c] = t[r][1] - t[r][3];
    }
  }
}

// U[xi][i][c] for tiles t0 + i, i < nq, of x (N,H,W,C), zero outside the image. A tile inside
// the image reads its 4 rows in place; one on the border is first copied, padded, to `pad`
// (16 C floats).
VEC_CLONES static void input_transform(float *U, size_t stride, const float *x, float *pad,
                                       long t0, long nq, int H, int W, int C, int th, int tw) {
  long n = t0 / tw / th;
  int ti = (int)(t0 / tw % th), tj = (int)(t0 % tw);
  const size_t run = (size_t)C * sizeof(float);
  for (long i = 0; i < nq; i++, tile_next(th, tw, &n, &ti, &tj)) {
    const int h0 = 2 * ti - 1, w0 = 2 * tj - 1;
    float *u = U + (size_t)i * C;
    if (h0 >= 0 && h0 + 3 < H && w0 >= 0 && w0 + 3 < W) {
      const float *r0 = x + ((size_t)(n * H + h0) * W + w0) * C, *r1 = r0 + (size_t)W * C;
      input_tile(u, stride, r0, r1, r1 + (size_t)W * C, r1 + (size_t)2 * W * C, C);
      continue;
    }
    for (int r = 0; r < 4; r++)
      for (int s = 0; s < 4; s++) {
        const int h = h0 + r, w = w0 + s;
        float *dst = pad + (size_t)(r * 4 + s) * C;
        if (h >= 0 && h < H && w >= 0 && w < W)
          memcpy(dst, x + ((size_t)(n * H + h) * W + w) * C, run);
        else
          memset(dst, 0, run);
      }
    input_tile(u, stride, pad, pad + 4 * (size_t)C, pad + 8 * (size_t)C, pad + 12 * (size_t)C, C);
  }
}

// One tile's 2x2 outputs o[0..3] = act(A^T m A + bias) over k, m the 16 products M[xi][k]
// (blocks `stride` apart); A^T = [1 1 1 0; 0 1 -1 -1]. Inlined with relu constant.
static inline __attribute__((always_inline)) void output_tile(float *const o[4], const float *m,
                                                              size_t stride, const float *bias,
                                                              int relu, int K) {
  float *o0 = o[0], *o1 = o[1], *o2 = o[2], *o3 = o[3];
  int k = 0;
  for (; k + 8 <= K; k += 8) {
    v8f t0[4], t1[4];
    for (int s = 0; s < 4; s++) { // A^T m: the rows
      const v8f m0 = LD8(m + (size_t)s * stride + k), m1 = LD8(m + (size_t)(4 + s) * stride + k),
                m2 = LD8(m + (size_t)(8 + s) * stride + k),
                m3 = LD8(m + (size_t)(12 + s) * stride + k);
      t0[s] = m0 + m1 + m2;
      t1[s] = m1 - m2 - m3;
    }
    const v8f bk = LD8(bias + k); // (A^T m) A: the columns
    v8f v0 = t0[0] + t0[1] + t0[2] + bk, v1 = t0[1] - t0[2] - t0[3] + bk;
    v8f v2 = t1[0] + t1[1] + t1[2] + bk, v3 = t1[1] - t1[2] - t1[3] + bk;
    if (relu) {
      v0 = RELU8(v0);
      v1 = RELU8(v1);
      v2 = RELU8(v2);
      v3 = RELU8(v3);
    }
    ST8(o0 + k, v0);
    ST8(o1 + k, v1);
    ST8(o2 + k, v2);
    ST8(o3 + k, v3);
  }
  for (; k < K; k++) {
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
  long n = t0 / tw / th;
  int ti = (int)(t0 / tw % th), tj = (int)(t0 % tw);
  for (long i = 0; i < nq; i++, tile_next(th, tw, &n, &ti, &tj)) {
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
  const int wide = C > K ? C : K;
  // Per thread: U, M, and a border tile's padded patch (also the sink of output_transform)
  const size_t bi = wino_block(T, Ci), bo = wino_block(T, Co);
  const size_t each = 16 * (bi + bo) + 16 * (size_t)wide;
  // V | zeros (the bias of a layer without one) | per thread
  float *V = ws, *zero = V + (size_t)16 * K * C, *per = zero + wide;
  memset(zero, 0, (size_t)wide * sizeof(float));
  if (!bias) bias = zero;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), Tn = omp_get_num_threads();
    weight_transform(V, w, C, K, K * t / Tn, K * (t + 1) / Tn);
#pragma omp barrier
    const long lo = tiles * t / Tn, hi = tiles * (t + 1) / Tn;
    float *U = per + (size_t)t * each, *M = U + 16 * bi, *pad = M + 16 * bo;
    for (long q0 = lo; q0 < hi; q0 += T) {
      const long nq = hi - q0 < T ? hi - q0 : T;
      input_transform(U, bi, x, pad, q0, nq, H, W, Ci, th, tw);
      for (int xi = 0; xi < 16; xi++) {
        const float *Ux = U + xi * bi;
        float *Mx = M + xi * bo;
        if (dgrad)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, C, K, 1.0f, Ux, K,
                      V + (size_t)(swap03[xi / 4] * 4 + swap03[xi % 4]) * K * C, C, 0.0f, Mx, C);
        else
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, K, C, 1.0f, Ux, C,
                      V + (size_t)xi * K * C, C, 0.0f, Mx, K);
      }
      output_transform(y, M, bo, bias, act, pad, q0, nq, H, W, Co, th, tw);
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
  long n = t0 / tw / th;
  int ti = (int)(t0 / tw % th), tj = (int)(t0 % tw);
  for (long i = 0; i < nq; i++, tile_next(th, tw, &n, &ti, &tj)) {
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
  const size_t wide = (size_t)(C > K ? C : K);
  const long T = wino_chunk(ctx, C, K);
  return wide + (size_t)threads * ((size_t)16 * K * C +
                                   16 * (wino_block(T, C) + wino_block(T, K)) + 16 * wide);
}

void cpu_wino_filter_grad(cpu_ctx *ctx, int nt, float *dw, const float *dy, const float *x,
                          int N, int H, int W, int C, int K, float *ws) {
  const int th = (H + 1) / 2, tw = (W + 1) / 2;
  const long tiles = (long)N * th * tw;
  if (tiles < nt) nt = (int)tiles; // every thread sums at least one tile
  const long T = wino_chunk(ctx, C, K);
  const int wide = C > K ? C : K;
  const size_t part = (size_t)16 * K * C, bu = wino_block(T, C), bz = wino_block(T, K);
  const size_t each = part + 16 * (bu + bz) + 16 * (size_t)wide;
  // zeros | per thread: S, U, Z, a border tile's padded patch
  float *zero = ws, *per = zero + wide;
  memset(zero, 0, (size_t)wide * sizeof(float));
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), Tn = omp_get_num_threads();
    const long lo = tiles * t / Tn, hi = tiles * (t + 1) / Tn;
    float *S = per + (size_t)t * each, *U = S + part, *Z = U + 16 * bu, *pad = Z + 16 * bz;
    for (long q0 = lo; q0 < hi; q0 += T) {
      const long nq = hi - q0 < T ? hi - q0 : T;
      input_transform(U, bu, x, pad, q0, nq, H, W, C, th, tw);
      grad_transform(Z, bz, dy, zero, q0, nq, H, W, K, th, tw);
      for (int xi = 0; xi < 16; xi++)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, C, (int)nq, 1.0f,
                    Z + xi * bz, K, U + xi * bu, C, q0 == lo ? 0.0f : 1.0f,
                    S + (size_t)xi * K * C, C);
    }
#pragma omp barrier
    filter_back(dw, per, each, Tn, C, K, K * t / Tn, K * (t + 1) / Tn);
  }
}
