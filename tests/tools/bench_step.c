// bench_step.c - images/s of one full training step (batch assembly, forward, loss, backward,
// Adam) of a VGG on one backend, for `make bench` and the GPU check.
//   bench_step [--model vgg16] [--width 1] [--size 32] [--batch 64] [--steps 10] [--warmup 2]
//              [--device cpu|cuda] [--precision fp32|tf32|bf16] [--threads N] [--graphs 0|1]
//              [--autotune fastest|first]
// Prints one line: model, size, batch, device, img/s, ms/step, GFLOP/s. On CUDA the steps are
// CUDA graph replays unless --graphs 0 (the first two warm-up steps build and capture them).
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "backend.h"
#include "check.h"
#include "log.h"
#include "model.h"
#include "net.h"
#include "rng.h"

int main(int argc, char **argv) {
  const char *name = "vgg16", *device = "cpu", *precision = "fp32", *autotune = "fastest";
  float width = 1;
  int size = 32, batch = 64, steps = 10, warmup = 2, threads = 0, graphs = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    if (!strcmp(k, "--model")) name = v;
    else if (!strcmp(k, "--width")) width = (float)atof(v);
    else if (!strcmp(k, "--size")) size = atoi(v);
    else if (!strcmp(k, "--batch")) batch = atoi(v);
    else if (!strcmp(k, "--steps")) steps = atoi(v);
    else if (!strcmp(k, "--warmup")) warmup = atoi(v);
    else if (!strcmp(k, "--device")) device = v;
    else if (!strcmp(k, "--precision")) precision = v;
    else if (!strcmp(k, "--threads")) threads = atoi(v);
    else if (!strcmp(k, "--graphs")) graphs = atoi(v);
    else if (!strcmp(k, "--autotune")) autotune = v;
    else DIE_USAGE("bench_step: unknown option %s", k);
  }
  if (argc % 2 == 0) DIE_USAGE("bench_step: options come in pairs");
  if (batch < 1 || steps < 1 || warmup < 0) DIE_USAGE("bench_step: bad --batch/--steps/--warmup");
  int prec = !strcmp(precision, "tf32") ? 1 : !strcmp(precision, "bf16") ? 2 : 0;
  if (strcmp(autotune, "fastest") && strcmp(autotune, "first"))
    DIE_USAGE("bench_step: --autotune: '%s' is not one of fastest|first", autotune);
  backend *b = !strcmp(device, "cuda") ? backend_cuda_create(0, prec) : backend_cpu_create(threads);
  if (!strcmp(device, "cuda"))
    backend_cuda_set_autotune(b, !strcmp(autotune, "first") ? AUTOTUNE_FIRST : AUTOTUNE_FASTEST);
  model m;
  model_build(&m, name, width, size, 10, 0.5f);
  net nt;
  net_init(&nt, &m, b, batch, 1 << 30);
  nt.graphs = graphs;
  float *params = xmalloc(m.n_params * sizeof(float));
  model_init_params(&m, params, INIT_TORCHVISION, 1);
  net_upload_params(&nt, params);
  int n_img = batch * 4;
  uint8_t *img = xmalloc((size_t)n_img * 3072), *lab = xmalloc(n_img);
  for (size_t i = 0; i < (size_t)n_img * 3072; i++) img[i] = (uint8_t)rng_bits(1, 9, 0, 0, (uint32_t)i);
  for (int i = 0; i < n_img; i++) lab[i] = (uint8_t)(i % 10);
  uint8_t *d_img = b->ops->alloc(b, (size_t)n_img * 3072), *d_lab = b->ops->alloc(b, n_img);
  b->ops->upload(b, d_img, img, (size_t)n_img * 3072);
  b->ops->upload(b, d_lab, lab, n_img);
  int32_t *ids = xmalloc(sizeof(int32_t) * batch);
  prep_params pp = {.size = size, .augment = 1, .flip_p = 0.5f, .seed = 1,
                    .mean = {0.49f, 0.48f, 0.45f}, .std = {0.25f, 0.24f, 0.26f}};
  double t0 = 0;
  for (int s = 0; s < warmup + steps; s++) {
    if (s == warmup) {
      b->ops->sync(b);
      t0 = now_s();
    }
    for (int i = 0; i < batch; i++) ids[i] = (s * batch + i) % n_img;
    train_step ts = {.d_images = d_img, .d_labels = d_lab, .h_ids = ids, .n = batch,
                     .grad_scale = 1.0f / batch, .pp = &pp, .seed = 1, .step = (uint32_t)s,
                     .adam = {1e-4f, 0.9f, 0.999f, 1e-8f, 1e-4f, s + 1, 0}, .full = 1};
    net_train_step(&nt, &ts, NULL);
  }
  b->ops->sync(b);
  double dt = (now_s() - t0) / steps;
  struct rusage ru;
  CHECK_POSIX(getrusage(RUSAGE_SELF, &ru));
  char mem[96];
  if (b->ops->stream(b)) // a device backend: its memory, not the host's
    snprintf(mem, sizeof(mem), "device memory %.0f MiB", backend_cuda_memory_used(b) / 1048576.0);
  else
    snprintf(mem, sizeof(mem), "peak RSS %.0f MiB", ru.ru_maxrss / 1024.0);
  const char *how = b->ops->capture_begin ? (graphs ? " graphs" : " eager") : "";
  const char *tune = b->ops->stream(b) && !strcmp(autotune, "first") ? " autotune-first" : "";
  printf("vgg_dist %s width %g %dx%d batch %d %s %s%s%s: %.1f img/s, %.1f ms/step, %.1f GFLOP/s, %s\n",
         name, width, size, size, batch, b->ops->name, precision, how, tune, batch / dt, dt * 1e3,
         batch / dt * model_train_flops(&m) * 1e-9, mem);
  free(ids);
  b->ops->release(b, d_lab);
  b->ops->release(b, d_img);
  free(lab);
  free(img);
  free(params);
  net_free(&nt);
  b->ops->destroy(b);
  return 0;
}
