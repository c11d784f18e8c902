// comm.h - the communicator interface the trainer calls. Only comm/ includes mpi.h or nccl.h.
//
// comm_init starts MPI, learns rank / world / local rank (ranks on the same node, from
// MPI_Comm_split_type) and installs the abort hook, so any fatal error on any rank ends the
// whole job (MPI_Abort) instead of hanging it. Small control messages (decisions, metrics) go
// over MPI on host memory.
//
// Gradient averaging: the loss gradient is already scaled by 1 / global batch on every rank,
// so averaging over the global batch is a SUM of the ranks' flat gradient buffers. A grad_sync
// reduces that buffer in buckets (contiguous ranges), each started as soon as backward has
// finished its layers, non-blocking, and waited for once before the optimizer step.
// Implementations: MPI on host buffers (the CPU backend), NCCL on device buffers (CUDA).
#ifndef VGG_COMM_H
#define VGG_COMM_H

#include <stddef.h>

#include "backend.h"

typedef struct comm comm;

comm *comm_init(int *argc, char ***argv);
void comm_finalize(comm *c); // accepts NULL
int comm_rank(const comm *c);
int comm_world(const comm *c);
int comm_local_rank(const comm *c);
int comm_local_size(const comm *c);
// The thread support the MPI library gave ("multiple", "serialized", "funneled", "single"; "one
// process" without MPI), for the device line. comm_init asks for MPI_THREAD_MULTIPLE: the NCCL
// watchdog thread may end the job (MPI_Abort) while the main thread is inside MPI, so the
// NCCL reducer refuses to start with less; the CPU path calls MPI from one thread only and
// runs with any level.
const char *comm_thread_level(const comm *c);
// --comm-timeout on the MPI path: a control collective or a host gradient reduction that stays
// unfinished for `seconds` ends the job with a message naming the rank and the wait (0: never,
// which is also what a comm has before the first call; vgg_dist sets --comm-timeout's value). Returns the previous value, so that a wait known to cover another rank's file
// I/O can lift it for a while. (The NCCL reducer takes its own, in grad_sync_create.)
double comm_set_timeout(comm *c, double seconds);
void comm_barrier(comm *c);
// Host-memory collectives for control data.
void comm_bcast(comm *c, void *h_buf, size_t bytes, int root);
void comm_allreduce_sum_f64(comm *c, double *h_buf, size_t count);
void comm_allreduce_max_f64(comm *c, double *h_buf, size_t count);
// Every rank's `bytes` bytes of h_in (the sizes may differ between ranks), concatenated in rank
// order into h_out on `root`, which holds out_cap bytes (a sum above it is a fatal error);
// h_out and out_cap are ignored on the other ranks. Collective; MPI counts are ints, so the
// sum must stay under 2 GiB (larger is a fatal error, never a silent cut).
void comm_gather_bytes(comm *c, void *h_out, size_t out_cap, const void *h_in, size_t bytes,
                       int root);
// The `count` ints of h_in of every rank of this node, in local rank order, into h_out
// (local size x count ints) on the node's local rank 0; h_out is ignored elsewhere. A
// collective of the node's ranks (the start-up line per node).
void comm_node_gather_ints(comm *c, int *h_out, const int *h_in, int count);
// Around work where every rank may meet the same user error (each reads the same data files):
// such an error (DIE_DATA, DIE_USAGE) is agreed at comm_agree_end instead of aborting the job
// there: the lowest rank that met one prints it (one line, not one per rank, and no MPI_ABORT
// banner), and every rank leaves MPI cleanly and exits with its status. No collective may run
// between the two calls.
void comm_agree_begin(comm *c);
void comm_agree_end(comm *c);
// End every rank with `code` (never returns).
void comm_abort(comm *c, int code);

// Refuses, on every rank alike (one line, exit 2), two ranks of a node that drive one physical
// GPU: compares the PCI bus ids of b's device over the node's ranks (device indices would not
// do: CUDA_VISIBLE_DEVICES may differ per rank). Collective over the CUDA ranks, right after
// their backends are made and before they allocate, so training and --eval are both covered.
// Without CUDA in the build, and over one process, there is nothing to compare.
void comm_check_gpu_per_rank(comm *c, backend *b);

typedef struct grad_sync grad_sync;
typedef enum { GRAD_SYNC_MPI = 0, GRAD_SYNC_NCCL = 1 } grad_sync_kind;
// grads: the flat fp32 gradient buffer (backend memory) of `count` elements.
// timeout_s: NCCL only, how long a collective may stay unfinished before the job is aborted.
grad_sync *grad_sync_create(comm *c, backend *b, grad_sync_kind kind, float *grads, size_t count,
                            int bf16_wire, double timeout_s);
void grad_sync_free(grad_sync *g);
// Start summing grads[offset, offset + count) over all ranks (in place, non-blocking).
void grad_sync_start(grad_sync *g, size_t offset, size_t count);
// Let started reductions progress (called between backward layers); never blocks.
void grad_sync_poll(grad_sync *g);
// Block (host or, on a device, the compute stream) until every started reduction is done.
void grad_sync_wait(grad_sync *g);
// The host seconds spent in grad_sync_wait so far (the MPI reducer's exposed all-reduce time: on
// the CPU the wait blocks; a device reducer's only enqueues). For the benchmark.
double grad_sync_wait_seconds(const grad_sync *g);
// The sum over the ranks that batch norm's statistics take under --sync-bn (rank_sum in
// backend.h): an all-reduce of host doubles for the MPI reducer; for the NCCL one, of device
// doubles over the gradients' communicator and stream, between the compute stream's work before
// and after it (one communicator, one stream: one order of collectives on every rank; the
// sums of backward queue behind the buckets already started). Valid until grad_sync_free.
const rank_sum *grad_sync_rank_sum(grad_sync *g);

#endif
