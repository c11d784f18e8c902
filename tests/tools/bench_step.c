// bench_step.c - images/s of one full training step (batch assembly, forward, loss, backward,
// Adam) of a VGG on one backend, for `make bench` and the GPU check.
//   bench_step [--model vgg16] [--width 1] [--size 32] [--batch 64] [--steps 10] [--warmup 2]
//              [--device cpu|cuda] [--precision fp32|tf32|bf16] [--threads N] [--graphs 0|1]
//              [--autotune fastest|first] [--profile]
// Prints one line: model, size, batch, device, img/s, ms/step, GFLOP/s. On CUDA the steps are
// CUDA graph replays unless --graphs 0 (the first two warm-up steps build and capture them).
// --profile (CUDA only; --device defaults to cuda): eager steps with CUDA events around every
// op and a synchronisation after each step, then the per-op table (kernels/cuda/prof_table.h)
// before the line: ms and % of the step per op in step order, the conv engines and their
// candidates, the plan building time. Without a visible GPU it stops with one line (exit 2).
// Included by tests/test_cuda_host.c (main renamed) to test those refusals.
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "backend.h"
#include "check.h"
#include "log.h"
#include "model.h"
#include "net.h"
#include "rng.h"

typedef struct bench_opts {
  const char *name, *device, *precision, *autotune;
  float width;
  int size, batch, steps, warmup, threads, graphs, profile;
  int device_given, graphs_given;
} bench_opts;

static void bench_parse(bench_opts *o, int argc, char **argv) {
  *o = (bench_opts){.name = "vgg16", .device = "cpu", .precision = "fp32", .autotune = "fastest",
                    .width = 1, .size = 32, .batch = 64, .steps = 10, .warmup = 2, .graphs = 1};
  for (int i = 1; i < argc; i++) {
    const char *k = argv[i];
    if (!strcmp(k, "--profile")) {
      o->profile = 1;
      continue;
    }
    if (i + 1 == argc) DIE_USAGE("bench_step: %s needs a value", k);
    const char *v = argv[++i];
    if (!strcmp(k, "--model")) o->name = v;
    else if (!strcmp(k, "--width")) o->width = (float)atof(v);
    else if (!strcmp(k, "--size")) o->size = atoi(v);
    else if (!strcmp(k, "--batch")) o->batch = atoi(v);
    else if (!strcmp(k, "--steps")) o->steps = atoi(v);
    else if (!strcmp(k, "--warmup")) o->warmup = atoi(v);
    else if (!strcmp(k, "--device")) o->device = v, o->device_given = 1;
    else if (!strcmp(k, "--precision")) o->precision = v;
    else if (!strcmp(k, "--threads")) o->threads = atoi(v);
    else if (!strcmp(k, "--graphs")) o->graphs = atoi(v), o->graphs_given = 1;
    else if (!strcmp(k, "--autotune")) o->autotune = v;
    else DIE_USAGE("bench_step: unknown option %s", k);
  }
  if (o->batch < 1 || o->steps < 1 || o->warmup < 0) DIE_USAGE("bench_step: bad --batch/--steps/--warmup");
  if (strcmp(o->autotune, "fastest") && strcmp(o->autotune, "first"))
    DIE_USAGE("bench_step: --autotune: '%s' is not one of fastest|first", o->autotune);
  if (!o->profile) return;
  // Profiling: events around each op of eager steps, on a GPU.
  if (o->device_given && strcmp(o->device, "cuda"))
    DIE_USAGE("bench_step: --profile times CUDA ops with events: it needs --device cuda, not %s", o->device);
  if (o->graphs_given && o->graphs)
    DIE_USAGE("bench_step: --profile times the ops of eager steps; it cannot run with --graphs 1 "
              "(a captured graph has no per-op events)");
  if (o->warmup < 1)
    DIE_USAGE("bench_step: --profile needs --warmup 1 or more (the first step builds the plans)");
  if (backend_cuda_device_count() <= 0)
    DIE_USAGE("bench_step: --profile needs a CUDA GPU and none is visible here (per-op times "
              "come from CUDA events)");
  o->device = "cuda";
  o->graphs = 0;
}

// One step per iteration; returns the mean wall seconds of the timed steps. Profiling adds a
// synchronisation before and after every step and hands each step's wall time to the profiler.
static double bench_run(backend *b, net *nt, const bench_opts *o, const uint8_t *d_img,
                        const uint8_t *d_lab, int n_img) {
  int32_t *ids = xmalloc(sizeof(int32_t) * o->batch);
  prep_params pp = {.size = o->size, .augment = 1, .flip_p = 0.5f, .seed = 1,
                    .mean = {0.49f, 0.48f, 0.45f}, .std = {0.25f, 0.24f, 0.26f}};
  double t0 = 0, timed = 0;
  for (int s = 0; s < o->warmup + o->steps; s++) {
    if (s == o->warmup || o->profile) {
      b->ops->sync(b);
      t0 = now_s();
    }
    for (int i = 0; i < o->batch; i++) ids[i] = (s * o->batch + i) % n_img;
    train_step ts = {.d_images = d_img, .d_labels = d_lab, .h_ids = ids, .n = o->batch,
                     .grad_scale = 1.0f / o->batch, .pp = &pp, .seed = 1, .step = (uint32_t)s,
                     .adam = {1e-4f, 0.9f, 0.999f, 1e-8f, 1e-4f, s + 1, 0}, .full = 1};
    net_train_step(nt, &ts, NULL);
    if (o->profile) {
      b->ops->sync(b);
      double wall = now_s() - t0;
      backend_cuda_profile_step(b, wall * 1e3, s >= o->warmup);
      if (s >= o->warmup) timed += wall;
    }
  }
  b->ops->sync(b);
  free(ids);
  return (o->profile ? timed : now_s() - t0) / o->steps;
}

int main(int argc, char **argv) {
  bench_opts o;
  bench_parse(&o, argc, argv);
  precision_kind prec = !strcmp(o.precision, "tf32")   ? PREC_TF32
                        : !strcmp(o.precision, "bf16") ? PREC_BF16
                                                       : PREC_FP32;
  int cuda = !strcmp(o.device, "cuda");
  backend *b = cuda ? backend_cuda_create(0, prec) : backend_cpu_create(o.threads);
  if (cuda) backend_cuda_set_autotune(b, !strcmp(o.autotune, "first") ? AUTOTUNE_FIRST : AUTOTUNE_FASTEST);
  if (o.profile) backend_cuda_profile_enable(b);
  model m;
  model_build(&m, o.name, o.width, o.size, 10, 0.5f, 0);
  net nt;
  net_init(&nt, &m, b, o.batch, 1 << 30);
  nt.graphs = o.graphs;
  float *params = xmalloc(m.n_params * sizeof(float));
  model_init_params(&m, params, INIT_TORCHVISION, 1);
  net_upload_params(&nt, params);
  int n_img = o.batch * 4;
  uint8_t *img = xmalloc((size_t)n_img * 3072), *lab = xmalloc(n_img);
  for (size_t i = 0; i < (size_t)n_img * 3072; i++) img[i] = (uint8_t)rng_bits(1, 9, 0, 0, (uint32_t)i);
  for (int i = 0; i < n_img; i++) lab[i] = (uint8_t)(i % 10);
  uint8_t *d_img = b->ops->alloc(b, (size_t)n_img * 3072), *d_lab = b->ops->alloc(b, n_img);
  b->ops->upload(b, d_img, img, (size_t)n_img * 3072);
  b->ops->upload(b, d_lab, lab, n_img);
  double dt = bench_run(b, &nt, &o, d_img, d_lab, n_img);
  struct rusage ru;
  CHECK_POSIX(getrusage(RUSAGE_SELF, &ru));
  char mem[96];
  if (b->is_device) // a device backend: its memory, not the host's
    snprintf(mem, sizeof(mem), "device memory %.0f MiB", backend_cuda_memory_used(b) / 1048576.0);
  else
    snprintf(mem, sizeof(mem), "peak RSS %.0f MiB", ru.ru_maxrss / 1024.0);
  const char *how = o.profile ? " eager, profiled" : !cuda ? "" : o.graphs ? " graphs" : " eager";
  const char *tune = cuda && !strcmp(o.autotune, "first") ? " autotune-first" : "";
  if (o.profile) backend_cuda_profile_print(b, stdout);
  printf("vgg_dist %s width %g %dx%d batch %d %s %s%s%s: %.1f img/s, %.1f ms/step, %.1f GFLOP/s, %s\n",
         o.name, o.width, o.size, o.size, o.batch, b->ops->name, o.precision, how, tune,
         o.batch / dt, dt * 1e3, o.batch / dt * model_train_flops(&m) * 1e-9, mem);
  b->ops->release(b, d_lab);
  b->ops->release(b, d_img);
  free(lab);
  free(img);
  free(params);
  net_free(&nt);
  b->ops->destroy(b);
  return 0;
}
