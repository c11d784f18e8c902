// comm_single.c - comm.h for one process without MPI: what the single-process tools link
// (build/test_unit, bench_step, parity_step) instead of comm_mpi.c, so that they build and run
// where libmpi is absent or cannot load (the GPU check on a machine whose glibc is older than the
// staged Open MPI's). vgg_dist itself always links comm_mpi.c.
//
// A world of one rank: every collective is the identity (a sum or max over one rank, a broadcast
// from oneself), the host gradient reducer has nothing to add, and comm_abort ends this process.
// The device (NCCL) reducer needs a communicator built over MPI and is refused here.
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "comm.h"

struct comm {
  int unused;
};

struct grad_sync {
  size_t count;
  rank_sum sum;
};

static void single_rank_sum(void *ctx, double *buf, size_t count) {} // over one rank: as it is

comm *comm_init(int *argc, char ***argv) {
  check_set_rank(0);
  return xcalloc(1, sizeof(comm));
}

void comm_finalize(comm *c) { free(c); }
int comm_rank(const comm *c) { return 0; }
int comm_world(const comm *c) { return 1; }
int comm_local_rank(const comm *c) { return 0; }
int comm_local_size(const comm *c) { return 1; }
const char *comm_thread_level(const comm *c) { return "one process"; }
double comm_set_timeout(comm *c, double seconds) { return 0; } // nothing to wait for
void comm_barrier(comm *c) {}
void comm_bcast(comm *c, void *h_buf, size_t bytes, int root) {
  if (root != 0) FATAL("broadcast from rank %d in a world of one rank", root);
}
void comm_allreduce_sum_f64(comm *c, double *h_buf, size_t count) {}
void comm_allreduce_max_f64(comm *c, double *h_buf, size_t count) {}
// Over one rank: this rank's ints (bytes) are the whole result.
void comm_node_gather_ints(comm *c, int *h_out, const int *h_in, int count) {
  memcpy(h_out, h_in, sizeof(int) * (size_t)count);
}
void comm_gather_bytes(comm *c, void *h_out, size_t out_cap, const void *h_in, size_t bytes,
                       int root) {
  if (root != 0) FATAL("gather to rank %d in a world of one rank", root);
  if (bytes > out_cap) FATAL("gather of %zu bytes into a buffer of %zu", bytes, out_cap);
  if (bytes) memcpy(h_out, h_in, bytes);
}
void comm_abort(comm *c, int code) { exit(code); }
void comm_check_gpu_per_rank(comm *c, backend *b) {} // one process drives one GPU
void comm_agree_begin(comm *c) {} // one rank: its errors end it at once, printed once
void comm_agree_end(comm *c) {}

grad_sync *grad_sync_create(comm *c, backend *b, grad_sync_kind kind, float *grads, size_t count,
                            int bf16_wire, double timeout_s) {
  if (kind != GRAD_SYNC_MPI)
    FATAL("this single-process build has no NCCL gradient reducer (run vgg_dist under mpirun)");
  grad_sync *g = xcalloc(1, sizeof(grad_sync));
  g->count = count;
  g->sum = (rank_sum){single_rank_sum, g};
  return g;
}

void grad_sync_free(grad_sync *g) { free(g); }

void grad_sync_start(grad_sync *g, size_t offset, size_t count) {
  if (offset + count > g->count)
    FATAL("gradient bucket [%zu, %zu) outside the %zu-element buffer", offset, offset + count, g->count);
}

void grad_sync_poll(grad_sync *g) {}
void grad_sync_wait(grad_sync *g) {}
double grad_sync_wait_seconds(const grad_sync *g) { return 0; } // nothing to wait for
const rank_sum *grad_sync_rank_sum(grad_sync *g) { return &g->sum; }
