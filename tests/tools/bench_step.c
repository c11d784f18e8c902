// bench_step.c - images/s of one full training step (batch assembly, forward, loss, backward,
// Adam) of a VGG on one backend, for `make bench` (scripts/bench.py) and the GPU check.
//   bench_step [--model vgg16] [--width 1] [--size 32] [--batch 64] [--steps 10] [--warmup 2]
//              [--device cpu|cuda] [--precision fp32|tf32|bf16] [--threads N] [--graphs 0|1]
//              [--autotune fastest|first] [--batchnorm 0|1] [--windows 1] [--json] [--profile]
// Prints one line: model, size, batch, device, img/s, ms/step, GFLOP/s, memory; with --json, one
// JSON object instead (the keys scripts/bench.py reads). --windows W splits the timed steps into
// W windows and reports the median window's img/s (a stray stall in one window does not move it).
// On CUDA the steps are CUDA graph replays unless --graphs 0 (the first two warm-up steps build
// and capture them).
// Over MPI (build/bench_step_mpi: the same source linked with comm/comm_mpi.c, run under mpirun,
// CPU backend): --batch is the GLOBAL batch, split evenly over the ranks, and the gradients are
// summed in vgg_dist's buckets (--bucket-mb, 25 as vgg_dist) started during backward as the
// trainer does. Two more figures then (rank 0 prints them, maxima over the ranks):
//   allreduce_ms: the same bucket reductions alone, all started then waited for, after the timed
//     steps (median of `--steps` repetitions): what the all-reduce costs when nothing overlaps it;
//   wait_ms: the time a step spends blocked in grad_sync_wait after backward (mean over timed
//     steps): the part of the all-reduce backward did not hide. overlap = 1 - wait / allreduce.
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
#include "comm.h"
#include "log.h"
#include "model.h"
#include "net.h"
#include "rng.h"

typedef struct bench_opts {
  const char *name, *device, *precision, *autotune;
  float width, bucket_mb;
  int size, batch, steps, warmup, threads, graphs, profile, batchnorm, windows, json;
  int device_given, graphs_given;
} bench_opts;

static void bench_parse(bench_opts *o, int argc, char **argv) {
  *o = (bench_opts){.name = "vgg16", .device = "cpu", .precision = "fp32", .autotune = "fastest",
                    .width = 1, .size = 32, .batch = 64, .steps = 10, .warmup = 2, .graphs = 1,
                    .bucket_mb = 25, .windows = 1};
  for (int i = 1; i < argc; i++) {
    const char *k = argv[i];
    if (!strcmp(k, "--profile") || !strcmp(k, "--json")) {
      *(!strcmp(k, "--json") ? &o->json : &o->profile) = 1;
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
    else if (!strcmp(k, "--batchnorm")) o->batchnorm = atoi(v);
    else if (!strcmp(k, "--windows")) o->windows = atoi(v);
    else if (!strcmp(k, "--bucket-mb")) o->bucket_mb = (float)atof(v);
    else DIE_USAGE("bench_step: unknown option %s", k);
  }
  if (o->batch < 1 || o->steps < 1 || o->warmup < 0) DIE_USAGE("bench_step: bad --batch/--steps/--warmup");
  if (o->windows < 1 || o->windows > o->steps)
    DIE_USAGE("bench_step: --windows %d: needs 1 to --steps (%d)", o->windows, o->steps);
  if ((o->batchnorm != 0 && o->batchnorm != 1) || !(o->bucket_mb > 0))
    DIE_USAGE("bench_step: --batchnorm is 0 or 1, --bucket-mb above 0");
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

// What one rank needs to run a step; n is this rank's share of the global batch.
typedef struct bench_ctx {
  backend *b;
  net *nt;
  const bench_opts *o;
  comm *c;
  grad_sync *gs; // NULL on one rank
  const uint8_t *d_img, *d_lab;
  int n_img, n;
  int32_t *ids;
  prep_params pp;
} bench_ctx;

static int bench_cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double bench_median(double *v, int n) { // sorts v
  qsort(v, n, sizeof(double), bench_cmp);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Step s, the trainer's own (net_train_step); returns the seconds it waited in grad_sync_wait
// (the reducer counts them; 0 on one rank).
static double bench_one(bench_ctx *x, int s, int timed) {
  const bench_opts *o = x->o;
  int base = s * o->batch + comm_rank(x->c) * x->n; // distinct samples on every rank
  for (int i = 0; i < x->n; i++) x->ids[i] = (base + i) % x->n_img;
  train_step ts = {.d_images = x->d_img, .d_labels = x->d_lab, .h_ids = x->ids, .n = x->n,
                   .grad_scale = 1.0f / o->batch, .pp = &x->pp, .seed = 1, .step = (uint32_t)s,
                   .adam = {1e-4f, 0.9f, 0.999f, 1e-8f, 1e-4f, s + 1, 0}, .full = 1};
  double t0 = o->profile ? (x->b->ops->sync(x->b), now_s()) : 0;
  const double w0 = x->gs ? grad_sync_wait_seconds(x->gs) : 0;
  net_train_step(x->nt, &ts, x->gs);
  const double wait = x->gs ? grad_sync_wait_seconds(x->gs) - w0 : 0;
  if (o->profile) {
    x->b->ops->sync(x->b);
    backend_cuda_profile_step(x->b, (now_s() - t0) * 1e3, timed);
  }
  return wait;
}

// Warm-up, then the timed steps in o->windows windows. win[w]: seconds per step of window w
// (the slowest rank's); returns the mean seconds per timed step spent in grad_sync_wait.
static double bench_run(bench_ctx *x, double *win) {
  const bench_opts *o = x->o;
  for (int s = 0; s < o->warmup; s++) bench_one(x, s, 0);
  double wait = 0;
  for (int w = 0; w < o->windows; w++) {
    int first = w * o->steps / o->windows, last = (w + 1) * o->steps / o->windows;
    x->b->ops->sync(x->b);
    double t0 = now_s();
    for (int s = first; s < last; s++) wait += bench_one(x, o->warmup + s, 1);
    x->b->ops->sync(x->b);
    win[w] = (now_s() - t0) / (last - first);
  }
  comm_allreduce_max_f64(x->c, win, o->windows);
  wait /= o->steps;
  comm_allreduce_max_f64(x->c, &wait, 1);
  return wait;
}

// The step's bucket reductions alone (all started, then one wait), `reps` times after a
// barrier, on zeroed gradients (sums of zeros: the values never grow). The median of the
// slowest rank's times: the all-reduce's cost with no backward to hide it.
static double bench_allreduce(bench_ctx *x, int reps) {
  const bucket_plan *p = &x->nt->buckets;
  x->b->ops->zero(x->b, x->nt->grads, x->nt->m->n_params * sizeof(float));
  double *t = xmalloc(sizeof(double) * reps);
  for (int r = 0; r < reps; r++) {
    comm_barrier(x->c);
    double t0 = now_s();
    for (int k = 0; k < p->n; k++) grad_sync_start(x->gs, p->begin[k], p->end[k] - p->begin[k]);
    grad_sync_wait(x->gs);
    t[r] = now_s() - t0;
  }
  comm_allreduce_max_f64(x->c, t, reps);
  double med = bench_median(t, reps);
  free(t);
  return med;
}

static void bench_print(const bench_opts *o, const model *m, backend *b, comm *c, double *win,
                        double wait_s, double allreduce_s, double mem_mib) {
  int cuda = !strcmp(o->device, "cuda"), world = comm_world(c);
  double dt = bench_median(win, o->windows), ips = o->batch / dt;
  const char *how = o->profile ? " eager, profiled" : !cuda ? "" : o->graphs ? " graphs" : " eager";
  const char *tune = cuda && !strcmp(o->autotune, "first") ? " autotune-first" : "";
  const char *mem = b->is_device ? "device memory" : "peak RSS"; // a device backend: its memory
  if (o->json) {
    printf("{\"tool\": \"vgg_dist bench_step\", \"model\": \"%s\", \"width\": %g, \"size\": %d, "
           "\"batchnorm\": %d, \"batch\": %d, \"ranks\": %d, \"threads\": %d, \"device\": \"%s\", "
           "\"precision\": \"%s\", \"mode\": \"%s%s\", \"img_s\": %.2f, \"ms_step\": %.3f, "
           "\"train_gflop_per_image\": %.4f, \"gflop_s\": %.2f, \"mem_kind\": \"%s\", "
           "\"mem_mib\": %.1f, \"n_params\": %zu, \"windows_img_s\": [",
           o->name, o->width, o->size, o->batchnorm, o->batch, world, o->threads, b->ops->name,
           o->precision, how[0] ? how + 1 : "eager", tune, ips, dt * 1e3,
           model_train_flops(m) * 1e-9, ips * model_train_flops(m) * 1e-9, mem, mem_mib,
           m->n_params);
    for (int w = 0; w < o->windows; w++) printf("%s%.2f", w ? ", " : "", o->batch / win[w]);
    printf("]");
    if (world > 1) printf(", \"allreduce_ms\": %.3f, \"wait_ms\": %.3f", allreduce_s * 1e3, wait_s * 1e3);
    printf("}\n");
    return;
  }
  printf("vgg_dist %s width %g %dx%d batch %d %s %s%s%s: %.1f img/s, %.1f ms/step, %.1f GFLOP/s, %s %.0f MiB",
         o->name, o->width, o->size, o->size, o->batch, b->ops->name, o->precision, how, tune, ips,
         dt * 1e3, ips * model_train_flops(m) * 1e-9, mem, mem_mib);
  if (world > 1)
    printf(", %d ranks: all-reduce %.1f ms alone, %.1f ms waited per step", world,
           allreduce_s * 1e3, wait_s * 1e3);
  printf("\n");
}

int main(int argc, char **argv) {
  bench_opts o;
  bench_parse(&o, argc, argv);
  comm *c = comm_init(&argc, &argv);
  int world = comm_world(c);
  if (world > 1 && !strcmp(o.device, "cuda"))
    DIE_USAGE("bench_step: over MPI it times the CPU backend's host reducer; a GPU runs one rank");
  if (o.batch % world)
    DIE_USAGE("bench_step: --batch %d (global) does not split evenly over %d ranks", o.batch, world);
  precision_kind prec = !strcmp(o.precision, "tf32")   ? PREC_TF32
                        : !strcmp(o.precision, "bf16") ? PREC_BF16
                                                       : PREC_FP32;
  int cuda = !strcmp(o.device, "cuda");
  backend *b = cuda ? backend_cuda_create(0, prec) : backend_cpu_create(o.threads);
  if (cuda) backend_cuda_set_autotune(b, !strcmp(o.autotune, "first") ? AUTOTUNE_FIRST : AUTOTUNE_FASTEST);
  if (o.profile) backend_cuda_profile_enable(b);
  model m;
  model_build(&m, o.name, o.width, o.size, 10, 0.5f, o.batchnorm);
  net nt;
  int n = o.batch / world;
  net_init(&nt, &m, b, n, world > 1 ? (size_t)(o.bucket_mb * 1e6 / sizeof(float)) + 1 : (size_t)1 << 30);
  nt.graphs = o.graphs;
  grad_sync *gs = world > 1 ? grad_sync_create(c, b, GRAD_SYNC_MPI, nt.grads, m.n_params, 0, 0) : NULL;
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
  bench_ctx x = {b, &nt, &o, c, gs, d_img, d_lab, n_img, n, xmalloc(sizeof(int32_t) * n),
                 {.size = o.size, .augment = 1, .flip_p = 0.5f, .seed = 1,
                  .mean = {0.49f, 0.48f, 0.45f}, .std = {0.25f, 0.24f, 0.26f}}};
  double *win = xmalloc(sizeof(double) * o.windows);
  double wait = bench_run(&x, win), allreduce = gs ? bench_allreduce(&x, o.steps) : 0;
  struct rusage ru;
  CHECK_POSIX(getrusage(RUSAGE_SELF, &ru));
  double mem = b->is_device ? backend_cuda_memory_used(b) / 1048576.0 : ru.ru_maxrss / 1024.0;
  comm_allreduce_max_f64(c, &mem, 1); // the largest process's
  if (o.profile) backend_cuda_profile_print(b, stdout);
  if (comm_rank(c) == 0) bench_print(&o, &m, b, c, win, wait, allreduce, mem);
  free(win);
  free(x.ids);
  b->ops->release(b, d_lab);
  b->ops->release(b, d_img);
  free(lab);
  free(img);
  free(params);
  net_release_graph(&nt);
  grad_sync_free(gs);
  net_free(&nt);
  b->ops->destroy(b);
  comm_finalize(c);
  return 0;
}
