// device.c - the backend choice, the thread policy and the GPU memory check (see device.h).
#include "device.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "log.h"
#include "net.h"

int device_pick(int local_rank, int local_size, int visible) {
  if (local_rank < 0 || local_rank >= local_size) return -1; // not a rank of this node
  // Never refused for local_size > visible: per-rank visibility (srun --gpus-per-task=1,
  // --gpu-bind, a wrapper setting CUDA_VISIBLE_DEVICES) shows each rank one GPU as device 0
  // while the node has several ranks. Two ranks on one physical GPU are told from that case
  // only by the PCI bus ids (comm_check_gpu_per_rank, right after the backend is made).
  return visible > 0 ? local_rank % visible : -1;
}

int device_bus_id_clash(const char *ids, int n, size_t stride, int *first, int *second) {
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++)
      if (strncmp(ids + (size_t)i * stride, ids + (size_t)j * stride, stride) == 0) {
        *first = i;
        *second = j;
        return 1;
      }
  return 0;
}

// One line per node, printed by its local rank 0 (the one output of a rank other than 0 that is
// not an error): its host, and of each rank there the world rank, the local rank and local size
// as that rank sees them (they choose its GPU), and the GPU it drives (-1: the CPU backend).
// Printed on each node rather than gathered to rank 0: the line is that node's own view of its
// ranks and GPUs, and a node that never gets as far as printing it is itself the clue.
static void node_line(comm *c, int dev) {
  const int n = comm_local_size(c), mine[4] = {comm_rank(c), comm_local_rank(c), n, dev};
  int *all = comm_local_rank(c) == 0 ? xmalloc(sizeof(int) * 4 * (size_t)n) : NULL;
  comm_node_gather_ints(c, all, mine, 4);
  if (!all) return;
  char host[HOST_NAME_MAX + 1] = "", line[2048]; // a Linux host name (64) and its NUL
  CHECK_ZERO(gethostname(host, sizeof(host)));
  size_t at =
      (size_t)snprintf(line, sizeof(line), "node %s: %d rank%s:", host, n, n > 1 ? "s" : "");
  for (int i = 0; i < n && at < sizeof(line); i++) {
    const int *r = all + 4 * i;
    at += (size_t)snprintf(line + at, sizeof(line) - at, "%s rank %d local %d/%d", i ? "," : "",
                           r[0], r[1], r[2]);
    if (r[3] >= 0 && at < sizeof(line))
      at += (size_t)snprintf(line + at, sizeof(line) - at, " GPU %d", r[3]);
  }
  printf("%s\n", line);
  fflush(stdout);
  free(all);
}

// A CUDA backend: one rank per GPU, bound to GPU local rank % the GPUs this rank sees.
static backend *cuda_create(const config *cfg, comm *c, int gpus) {
  int dev = device_pick(comm_local_rank(c), comm_local_size(c), gpus);
  // None visible: backend_cuda_create says why (no device, the driver's reason, or a build
  // without CUDA) and exits.
  if (dev < 0) return backend_cuda_create(0, cfg->precision);
  LOG0("device: cuda (%d GPUs visible to rank 0, %d ranks on its node), precision %s, "
       "CUDA graphs %s, conv autotune %s, MPI threads %s\n", gpus, comm_local_size(c),
       config_precision_name(cfg->precision), cfg->cuda_graphs ? "on (full batches)" : "off",
       cfg->autotune == AUTOTUNE_FIRST ? "first (untimed)" : "fastest", comm_thread_level(c));
  node_line(c, dev);
  backend *b = backend_cuda_create(dev, cfg->precision);
  backend_cuda_set_autotune(b, cfg->autotune);
  comm_check_gpu_per_rank(c, b); // before anything allocates: two ranks on one GPU refused
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
  LOG0("device: cpu (%s), %d ranks, %d threads each, MPI threads %s\n",
       cfg->device == DEVICE_CPU ? "requested" : "no CUDA device visible", comm_world(c),
       threads ? threads : atoi(omp), comm_thread_level(c));
  node_line(c, -1);
  return backend_cpu_create(threads);
}

size_t device_mixture_message(char *out, size_t len, const char *hosts, int world,
                              size_t stride) {
  int cpu = 0;
  size_t at = (size_t)snprintf(out, len, "the ranks chose different backends: the CPU on");
  for (int r = 0; r < world; r++) {
    const char *h = hosts + (size_t)r * stride;
    if (!h[0]) continue; // a CUDA rank
    int seen = 0; // each host once, in rank order
    for (int q = 0; q < r && !seen; q++) seen = strncmp(hosts + (size_t)q * stride, h, stride) == 0;
    if (!seen && at < len)
      at += (size_t)snprintf(out + at, len - at, "%s %.*s", cpu ? "," : "", (int)stride, h);
    cpu++;
  }
  if (at < len)
    at += (size_t)snprintf(out + at, len - at, " (%d of %d ranks: no GPU visible, or --device "
                           "cpu), CUDA on the other %d: every rank must use the same backend "
                           "(give --device cpu, or run only on nodes with GPUs)", cpu, world,
                           world - cpu);
  return at < len ? at : len - 1;
}

// The ranks' backends must agree: the CPU backend reduces with MPI, CUDA with NCCL, and a mix
// hangs in (or dies misleadingly from) the first collective one side makes alone. So this runs
// before any backend's collective (the node's bus-id gather, the NCCL id broadcast): a mixture
// is one line from rank 0 naming the hosts without a GPU, and exit 2 on every rank.
static void backend_agree(comm *c, int cuda) {
  double n = cuda;
  comm_allreduce_sum_f64(c, &n, 1);
  const int world = comm_world(c);
  if (n == 0 || n == world) return;
  enum { HOST = 64 };
  char mine[HOST] = "", *all = comm_rank(c) == 0 ? xcalloc((size_t)world, HOST) : NULL;
  if (!cuda) CHECK_ZERO(gethostname(mine, HOST - 1));
  comm_gather_bytes(c, all, (size_t)world * HOST, mine, HOST, 0);
  char msg[1024] = "another rank chose a different backend";
  if (all) device_mixture_message(msg, sizeof(msg), all, world, HOST);
  free(all);
  comm_agree_begin(c); // every rank stops here; the lowest (rank 0) prints its message
  DIE_USAGE("%s", msg);
}

backend *device_backend_create(const config *cfg, comm *c) {
  int gpus = cfg->device == DEVICE_CPU ? 0 : backend_cuda_device_count();
  // --device cuda wants CUDA even without a GPU here: the agreement comes first, and only then
  // does such a rank die with the driver's reason (cuda_create).
  int cuda = cfg->device == DEVICE_CUDA || (cfg->device == DEVICE_AUTO && gpus > 0);
  backend_agree(c, cuda);
  return cuda ? cuda_create(cfg, c, gpus) : cpu_create(cfg, c);
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
