// allreduce_bench.c - times the gradient all-reduce vgg_dist uses on the CPU backend (the MPI
// reducer of comm/comm_mpi.c: MPI_Iallreduce of fp32 host memory, in place) for a range of
// message sizes, so scripts/scaling_model.py can fit the ring model's latency and bandwidth.
//   mpirun -np 2 build/allreduce_bench [--min-bytes 4096] [--max-bytes 67108864] [--iters 20]
//                                      [--bucket-mb 25 --total-bytes N]
// Prints one JSON line per size on rank 0: {"ranks", "bytes", "buckets", "median_s", "min_s"},
// where a time is the slowest rank's for one whole reduction (start, then wait). Sizes double
// from --min-bytes to --max-bytes; with --total-bytes, one more line times a buffer of that many
// bytes reduced in --bucket-mb buckets, all started before the one wait, as a training step does.
// Through comm.h, not MPI directly: only comm/ includes mpi.h, and the thing timed is the
// trainer's own path.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "check.h"
#include "comm.h"
#include "log.h"

static double bench_now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

// One timed size: `iters` reductions of `count` floats in buckets of `bucket` floats, after two
// untimed ones (connection set-up). Each iteration's time is the slowest rank's (max over ranks).
static void bench_size(comm *c, grad_sync *g, size_t count, size_t bucket, int iters) {
  double *t = xcalloc((size_t)iters, sizeof(double));
  for (int i = -2; i < iters; i++) {
    comm_barrier(c);
    double t0 = bench_now_s();
    for (size_t off = 0; off < count; off += bucket)
      grad_sync_start(g, off, count - off < bucket ? count - off : bucket);
    grad_sync_wait(g);
    double dt = bench_now_s() - t0;
    comm_allreduce_max_f64(c, &dt, 1);
    if (i >= 0) t[i] = dt;
  }
  qsort(t, (size_t)iters, sizeof(double), cmp_double);
  LOG0("{\"ranks\": %d, \"bytes\": %zu, \"buckets\": %zu, \"median_s\": %.9f, \"min_s\": %.9f}\n",
       comm_world(c), count * sizeof(float), (count + bucket - 1) / bucket, t[iters / 2], t[0]);
  free(t);
}

int main(int argc, char **argv) {
  comm *c = comm_init(&argc, &argv);
  log_init(comm_rank(c));
  double min_bytes = 4096, max_bytes = 64 << 20, total_bytes = 0, bucket_mb = 25;
  int iters = 20;
  for (int i = 1; i < argc; i++) {
    if (i + 1 == argc) DIE_USAGE("allreduce_bench: %s needs a value", argv[i]);
    const char *k = argv[i], *v = argv[++i];
    if (!strcmp(k, "--min-bytes")) min_bytes = atof(v);
    else if (!strcmp(k, "--max-bytes")) max_bytes = atof(v);
    else if (!strcmp(k, "--total-bytes")) total_bytes = atof(v);
    else if (!strcmp(k, "--bucket-mb")) bucket_mb = atof(v);
    else if (!strcmp(k, "--iters")) iters = atoi(v);
    else DIE_USAGE("allreduce_bench: unknown option %s", k);
  }
  if (min_bytes < 4 || max_bytes < min_bytes || total_bytes < 0 || bucket_mb <= 0 || iters < 1)
    DIE_USAGE("allreduce_bench: need 4 <= --min-bytes <= --max-bytes, --total-bytes >= 0, --bucket-mb > 0, --iters >= 1");
  if (comm_world(c) < 2) DIE_USAGE("allreduce_bench: run it under mpirun with 2 or more ranks");
  size_t max_count = (size_t)((total_bytes > max_bytes ? total_bytes : max_bytes) / sizeof(float));
  backend *b = backend_cpu_create(1);
  float *grads = xcalloc(max_count, sizeof(float));
  grad_sync *g = grad_sync_create(c, b, GRAD_SYNC_MPI, grads, max_count, 0, 0);
  for (double bytes = min_bytes; bytes <= max_bytes; bytes *= 2) {
    size_t count = (size_t)(bytes / sizeof(float));
    bench_size(c, g, count, count, iters); // one bucket: the ring's latency and bandwidth
  }
  if (total_bytes > 0)
    bench_size(c, g, (size_t)(total_bytes / sizeof(float)), (size_t)(bucket_mb * 1e6 / sizeof(float)), iters);
  grad_sync_free(g);
  free(grads);
  b->ops->destroy(b);
  comm_finalize(c);
  return 0;
}
