// device.c - the backend choice, the thread policy and the GPU memory check (see device.h).
#include "device.h"

#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "log.h"
#include "net.h"

// A CUDA backend: one rank per GPU, bound to GPU local rank % visible GPUs.
static backend *cuda_create(const config *cfg, comm *c, int gpus) {
  // None visible: backend_cuda_create says why (no device, the driver's reason, or a build
  // without CUDA) and exits.
  if (gpus == 0) return backend_cuda_create(0, cfg->precision);
  if (comm_local_size(c) > gpus)
    DIE_USAGE("%d ranks on this node but only %d GPUs: one rank per GPU (use fewer ranks)",
              comm_local_size(c), gpus);
  LOG0("device: cuda (%d GPUs visible on rank 0's node, %d ranks there), precision %s, "
       "CUDA graphs %s, conv autotune %s\n", gpus, comm_local_size(c),
       config_precision_name(cfg->precision), cfg->cuda_graphs ? "on (full batches)" : "off",
       cfg->autotune == AUTOTUNE_FIRST ? "first (untimed)" : "fastest");
  backend *b = backend_cuda_create(comm_local_rank(c) % gpus, cfg->precision);
  backend_cuda_set_autotune(b, cfg->autotune);
  return b;
}

// The CPU backend. Threads per rank: --threads, else OMP_NUM_THREADS, else the node's cores
// shared by its ranks (more would oversubscribe the cores and stall OpenMP's barriers).
static backend *cpu_create(const config *cfg, comm *c) {
  if (cfg->precision != PREC_FP32)
    DIE_USAGE("--precision %s needs --device cuda", config_precision_name(cfg->precision));
  int threads = cfg->threads;
  const char *omp = getenv("OMP_NUM_THREADS");
  if (threads == 0 && !(omp && *omp)) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    threads = cores > comm_local_size(c) ? (int)(cores / comm_local_size(c)) : 1;
  }
  LOG0("device: cpu (%s), %d ranks, %d threads each\n",
       cfg->device == DEVICE_CPU ? "requested" : "no CUDA device visible", comm_world(c),
       threads ? threads : atoi(omp));
  return backend_cpu_create(threads);
}

backend *device_backend_create(const config *cfg, comm *c) {
  int gpus = cfg->device == DEVICE_CPU ? 0 : backend_cuda_device_count();
  if (cfg->device == DEVICE_CUDA || (cfg->device == DEVICE_AUTO && gpus > 0))
    return cuda_create(cfg, c, gpus);
  return cpu_create(cfg, c);
}

void device_memory_check(backend *b, const model *m, const config *cfg, int max_n, int world) {
  const double gib = 1024.0 * 1024.0 * 1024.0;
  size_t need = net_memory_bytes(m, max_n, b->act_bytes);
  size_t state = net_memory_bytes(m, 0, b->act_bytes); // what does not grow with the batch
  LOG0("memory per rank: %.2f GiB (parameters, gradients and Adam state %.2f GiB; activations "
       "for %d images %.2f GiB), plus library workspaces\n", need / gib, state / gib, max_n,
       (need - state) / gib);
  if (!b->is_device) return;
  size_t avail = backend_cuda_memory_free(b);
  if (need > avail)
    DIE_USAGE("the model's buffers need %.2f GiB but only %.2f GiB of GPU memory are free: use "
              "a smaller per-GPU batch (--batch %d over %d ranks is %d per GPU; --eval-batch %d) "
              "or more ranks", need / gib, avail / gib, cfg->batch, world, cfg->batch / world,
              cfg->eval_batch);
}

void device_memory_report(backend *b) {
  if (!b->is_device) return;
  LOG0("device memory: %.0f MiB in use on rank 0's GPU\n", backend_cuda_memory_used(b) / 1048576.0);
}
