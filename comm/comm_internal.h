// comm_internal.h - what the communicator implementations in comm/ share (never included
// outside comm/). comm_mpi.c owns the MPI state; comm_nccl.c builds a device gradient reducer
// on top of it (the ncclUniqueId travels over MPI).
#ifndef VGG_COMM_INTERNAL_H
#define VGG_COMM_INTERNAL_H

#include <limits.h>
#include <mpi.h>

#include "check.h"
#include "comm.h"

struct comm {
  MPI_Comm world;
  MPI_Comm node; // ranks on this node (MPI_Comm_split_type SHARED)
  int rank, size, local_rank, local_size;
  int thread_level; // what MPI_Init_thread provided (MPI_THREAD_*)
  double timeout_s; // --comm-timeout for the MPI waits (comm_set_timeout); 0: none
  // Who stopped answering (comm_mpi.c): every rank's host name (COMM_HOST bytes each, in rank
  // order), and a duplicate of world on which every comm_wait answers other ranks' pings.
  char *hosts;
  MPI_Comm ping;
  MPI_Request ping_req; // the posted receive of a ping from any rank
  int ping_buf;
};
#define COMM_HOST (HOST_NAME_MAX + 1) // a Linux host name (64) and its NUL

// Check an MPI call; on failure print file:line, rank and MPI's message, then abort all ranks.
#define MPI_CHECK(expr)                                                                    \
  do {                                                                                     \
    int mpi_rc_ = (expr);                                                                  \
    if (mpi_rc_ != MPI_SUCCESS) {                                                          \
      char mpi_msg_[MPI_MAX_ERROR_STRING];                                                 \
      int mpi_len_ = 0;                                                                    \
      MPI_Error_string(mpi_rc_, mpi_msg_, &mpi_len_);                                      \
      FATAL("%s: MPI error: %s", #expr, mpi_msg_);                                         \
    }                                                                                      \
  } while (0)

// A gradient reducer is an ops table so that MPI (host) and NCCL (device) share the trainer's
// calls in comm.h.
typedef struct grad_sync_ops {
  void (*start)(grad_sync *g, size_t offset, size_t count);
  void (*poll)(grad_sync *g);
  void (*wait)(grad_sync *g);
  void (*destroy)(grad_sync *g);
  void (*rank_sum_init)(grad_sync *g); // fills g->sum (grad_sync_rank_sum's first call)
} grad_sync_ops;

struct grad_sync {
  const grad_sync_ops *ops;
  comm *c;
  backend *b;
  float *grads;
  size_t count;
  rank_sum sum; // grad_sync_rank_sum's; sum.sum NULL until its first call
  double wait_s; // host seconds spent in grad_sync_wait (grad_sync_wait_seconds)
};

#ifdef VGG_HAVE_CUDA
// comm_nccl.c: bind-checked NCCL communicator over all ranks of c, device grads of b.
grad_sync *grad_sync_nccl_create(comm *c, backend *b, float *grads, size_t count, int bf16_wire,
                                 double timeout_s);
#endif

#endif
