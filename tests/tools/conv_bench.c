// conv_bench.c - the CPU backend's two convolution algorithms side by side, layer by layer:
// for every conv of a VGG (the trainer's layer table), the forward and the backward (dw, db and
// dx; no dx for the first layer, as in training) by im2col + sgemm and by Winograd F(2x2, 3x3)
// (kernels/cpu/conv.c, winograd.c), in ms (the median of --reps calls after one warm-up each),
// and which one the backend's shape rule picks. The evidence behind that rule (BENCHMARKS.md,
// "CPU convolutions"); measure on an idle machine.
//   conv_bench [--model vgg16] [--width 1] [--size 32] [--batch 64] [--threads 1] [--reps 5]
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu/cpu_backend.h"
#include "log.h"
#include "model.h"
#include "rng.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static float *random_floats(size_t n, uint64_t seed) {
  float *p = xmalloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++)
    p[i] = rng_uniform(seed, 0, (uint32_t)(i >> 32), (uint32_t)i, 0) - 0.5f;
  return p;
}

// Median ms of `reps` calls of the forward (bwd = 0) or backward of layer s with algorithm a.
static double time_conv(backend *b, cpu_conv_algo a, int bwd, op_shape s, int first, int reps,
                        float **buf) {
  ((cpu_ctx *)b->impl)->conv_algo = a;
  float *x = buf[0], *w = buf[1], *bias = buf[2], *y = buf[3], *dx = buf[4], *dw = buf[5],
        *db = buf[6];
  double *t = xmalloc((size_t)reps * sizeof(double));
  for (int r = -1; r < reps; r++) { // r = -1: the warm-up (grows the workspace)
    double t0 = now_s();
    if (bwd) b->ops->conv_bwd(b, first ? NULL : dx, dw, db, y, x, w, s);
    else b->ops->conv_fwd(b, y, x, w, bias, s, ACT_RELU);
    if (r >= 0) t[r] = (now_s() - t0) * 1e3;
  }
  qsort(t, (size_t)reps, sizeof(double), cmp_double);
  double med = t[reps / 2];
  free(t);
  return med;
}

int main(int argc, char **argv) {
  const char *name = "vgg16";
  float width = 1;
  int size = 32, batch = 64, threads = 1, reps = 5;
  for (int i = 1; i < argc; i++) {
    if (i + 1 == argc) DIE_USAGE("conv_bench: %s needs a value", argv[i]);
    const char *k = argv[i], *v = argv[++i];
    if (!strcmp(k, "--model")) name = v;
    else if (!strcmp(k, "--width")) width = (float)atof(v);
    else if (!strcmp(k, "--size")) size = atoi(v);
    else if (!strcmp(k, "--batch")) batch = atoi(v);
    else if (!strcmp(k, "--threads")) threads = atoi(v);
    else if (!strcmp(k, "--reps")) reps = atoi(v);
    else DIE_USAGE("conv_bench: unknown option %s", k);
  }
  if (batch < 1 || threads < 1 || reps < 1 || !(width > 0))
    DIE_USAGE("conv_bench: --batch, --threads and --reps are at least 1, --width above 0");
  model m;
  model_build(&m, name, width, size, 10, 0.5f, 0);
  backend *b = backend_cpu_create(threads);
  printf("%s width %g %dx%d batch %d, %d thread(s), ms (median of %d): im2col / winograd\n",
         name, width, size, size, batch, threads, reps);
  printf("%-9s %5s %5s  %17s  %17s  %s\n", "image", "C", "K", "forward", "backward", "rule");
  double sum[2][2] = {{0}};
  int first = 1;
  for (int l = 0; l < m.n_layers; l++) {
    const layer *L = &m.layers[l];
    if (L->kind != LAYER_CONV) continue;
    const op_shape s = {batch, L->H, L->W, L->C, L->K};
    const size_t nx = (size_t)batch * L->H * L->W * L->C, ny = (size_t)batch * L->H * L->W * L->K,
                 nw = (size_t)L->K * 9 * L->C;
    float *buf[7] = {random_floats(nx, 1), random_floats(nw, 2), random_floats(L->K, 3),
                     random_floats(ny, 4), random_floats(nx, 5), random_floats(nw, 6),
                     random_floats(L->K, 7)};
    double t[2][2];
    for (int a = 0; a < 2; a++)
      for (int bwd = 0; bwd < 2; bwd++) {
        t[a][bwd] = time_conv(b, a ? CPU_CONV_WINOGRAD : CPU_CONV_IM2COL, bwd, s, first, reps, buf);
        sum[a][bwd] += t[a][bwd];
      }
    ((cpu_ctx *)b->impl)->conv_algo = CPU_CONV_AUTO;
    printf("%4dx%-4d %5d %5d  %7.2f / %7.2f  %7.2f / %7.2f  %s\n", L->H, L->W, L->C, L->K,
           t[0][0], t[1][0], t[0][1], t[1][1],
           cpu_conv_winograd(b->impl, L->C, L->K) ? "winograd" : "im2col");
    for (int i = 0; i < 7; i++) free(buf[i]);
    first = 0;
  }
  printf("%-21s  %7.1f / %7.1f  %7.1f / %7.1f\n", "all convolutions", sum[0][0], sum[1][0],
         sum[0][1], sum[1][1]);
  b->ops->destroy(b);
  return 0;
}
