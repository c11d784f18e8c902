// comm_nccl.c - the device gradient reducer: NCCL all-reduce (sum, in place) of ranges of the
// flat fp32 gradient buffer on a communication stream of its own, gated by events so that the
// host never waits: start() makes the comm stream wait for the compute stream's work so far,
// wait() makes the compute stream wait for every reduction started.
//
// The communicator is non-blocking (ncclConfig_t.blocking = 0) so that init and collectives can
// be abandoned: every NCCL call is followed by a poll of ncclCommGetAsyncError until it settles,
// bounded by timeout_s. A watchdog thread watches the last wait()'s event: a reduction still
// unfinished timeout_s after wait() was called, or an asynchronous NCCL error (a peer died, a
// network failure), aborts the communicator and ends the job with the rank and the reason,
// instead of leaving every rank hanging in a device synchronisation. Every NCCL call after
// init is made under the watchdog's lock, so the two threads never use the communicator at once.
//
// Optional bf16 wire format (bf16_wire): a range is converted into a bf16 scratch buffer,
// reduced as ncclBfloat16 and converted back, halving the bytes moved.
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nccl.h>

#include "comm_internal.h"
#include "log.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_wire.h"

#define ncclCheck(expr)                                                                    \
  do {                                                                                     \
    ncclResult_t nccl_r_ = (expr);                                                         \
    if (nccl_r_ != ncclSuccess && nccl_r_ != ncclInProgress)                               \
      FATAL("%s: NCCL error %d: %s (%s)", #expr, (int)nccl_r_, ncclGetErrorString(nccl_r_), \
            ncclGetLastError(NULL));                                                       \
  } while (0)

typedef struct nccl_sync {
  grad_sync base;
  ncclComm_t comm;
  int device;
  double timeout_s;            // <= 0: no deadline (async errors are still caught)
  cudaStream_t compute, stream; // the backend's stream; ours
  cudaEvent_t ready, done;
  uint16_t *wire; // bf16 copy of the gradient buffer (bf16_wire only)
  int started;    // reductions started since the last wait()
  // Watchdog state, shared with the thread under `lock`.
  pthread_t thread;
  pthread_mutex_t lock;
  int armed, quit;
  double armed_at;
  cudaEvent_t watch; // recorded on our stream at wait()
} nccl_sync;

static VGG_NORETURN void nccl_fail(nccl_sync *s, const char *what, const char *reason) {
  // Abort first: frees the GPU from a collective that will never complete.
  ncclCommAbort(s->comm);
  FATAL("rank %d: NCCL %s failed: %s", s->base.c ? s->base.c->rank : check_rank(), what, reason);
}

// Poll the communicator until the last (non-blocking) call settles; abort past the deadline.
static void nccl_settle(nccl_sync *s, const char *what, double timeout_s) {
  double t0 = now_s();
  for (;;) {
    ncclResult_t st = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(s->comm, &st);
    if (r != ncclSuccess) nccl_fail(s, what, ncclGetErrorString(r));
    if (st == ncclSuccess) return;
    if (st != ncclInProgress) {
      char msg[512];
      snprintf(msg, sizeof(msg), "%s (%s)", ncclGetErrorString(st), ncclGetLastError(s->comm));
      nccl_fail(s, what, msg);
    }
    if (timeout_s > 0 && now_s() - t0 > timeout_s) {
      char msg[128];
      snprintf(msg, sizeof(msg), "still in progress after %.0f s", timeout_s);
      nccl_fail(s, what, msg);
    }
    sched_yield();
  }
}

static void *watchdog_main(void *arg) {
  nccl_sync *s = arg;
  cudaCheck(cudaSetDevice(s->device)); // event queries need this thread's device
  for (;;) {
    struct timespec nap = {0, 50 * 1000 * 1000};
    nanosleep(&nap, NULL);
    pthread_mutex_lock(&s->lock);
    if (s->quit) {
      pthread_mutex_unlock(&s->lock);
      return NULL;
    }
    ncclResult_t st = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(s->comm, &st);
    if (r != ncclSuccess || (st != ncclSuccess && st != ncclInProgress)) {
      char msg[512];
      snprintf(msg, sizeof(msg), "asynchronous error: %s (%s)",
               ncclGetErrorString(r != ncclSuccess ? r : st), ncclGetLastError(s->comm));
      nccl_fail(s, "all-reduce", msg);
    }
    if (s->armed) {
      cudaError_t q = cudaEventQuery(s->watch);
      if (q == cudaSuccess) {
        s->armed = 0;
      } else if (q != cudaErrorNotReady) {
        nccl_fail(s, "all-reduce", cudaGetErrorString(q));
      } else if (s->timeout_s > 0 && now_s() - s->armed_at > s->timeout_s) {
        char msg[160];
        snprintf(msg, sizeof(msg), "gradient all-reduce unfinished %.0f s after the step waited "
                 "for it (a peer rank died or hangs?)", s->timeout_s);
        nccl_fail(s, "all-reduce", msg);
      }
    }
    pthread_mutex_unlock(&s->lock);
  }
}

static void nccl_start(grad_sync *g, size_t offset, size_t count) {
  nccl_sync *s = (nccl_sync *)g;
  if (offset > g->count || count > g->count - offset)
    FATAL("gradient bucket [%zu, %zu) outside the %zu-element buffer", offset, offset + count,
          g->count);
  // One rank is reduced too (NCCL copies in place): the same path runs at every world size,
  // so a one-GPU check exercises it.
  if (count == 0) return;
  cudaCheck(cudaEventRecord(s->ready, s->compute));
  cudaCheck(cudaStreamWaitEvent(s->stream, s->ready, 0));
  float *range = g->grads + offset;
  void *buf = range;
  ncclDataType_t type = ncclFloat;
  if (s->wire) {
    buf = s->wire + offset;
    type = ncclBfloat16;
    cuda_wire_pack(buf, range, count, s->stream);
  }
  // Under the watchdog's lock: NCCL gives no thread-safety guarantee for ncclCommGetAsyncError
  // (the watchdog's poll) concurrent with a call on the same communicator, and non-blocking
  // mode polls it inside every call (PyTorch hit hangs this way: pytorch#154055, #169484).
  pthread_mutex_lock(&s->lock);
  ncclCheck(ncclAllReduce(buf, buf, count, type, ncclSum, s->comm, s->stream));
  nccl_settle(s, "all-reduce (enqueue)", s->timeout_s);
  pthread_mutex_unlock(&s->lock);
  if (s->wire) cuda_wire_unpack(range, buf, count, s->stream);
  s->started++;
}

static void nccl_poll(grad_sync *g) { (void)g; } // NCCL progresses on the GPU by itself

static void nccl_wait(grad_sync *g) {
  nccl_sync *s = (nccl_sync *)g;
  if (s->started) {
    cudaCheck(cudaEventRecord(s->done, s->stream));
    cudaCheck(cudaStreamWaitEvent(s->compute, s->done, 0));
    s->started = 0;
  }
  // Arm the watchdog on the compute stream, behind the reductions it now waits for, or, with
  // nothing started here, behind a replayed CUDA graph that holds them. Not while a graph is
  // being captured: nothing runs then.
  enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  cudaCheck(cudaStreamIsCapturing(s->compute, &cs));
  if (cs != cudaStreamCaptureStatusNone) return;
  pthread_mutex_lock(&s->lock);
  cudaError_t e = cudaEventRecord(s->watch, s->compute);
  s->armed = e == cudaSuccess;
  s->armed_at = now_s();
  pthread_mutex_unlock(&s->lock);
  cudaCheck(e);
}

static void nccl_destroy(grad_sync *g) {
  nccl_sync *s = (nccl_sync *)g;
  nccl_wait(g);
  cudaCheck(cudaStreamSynchronize(s->stream));
  pthread_mutex_lock(&s->lock);
  s->quit = 1;
  pthread_mutex_unlock(&s->lock);
  if (pthread_join(s->thread, NULL) != 0) FATAL("joining the NCCL watchdog thread failed");
  pthread_mutex_destroy(&s->lock);
  ncclCheck(ncclCommFinalize(s->comm));
  nccl_settle(s, "finalize", s->timeout_s);
  ncclCheck(ncclCommDestroy(s->comm));
  if (s->wire) g->b->ops->release(g->b, s->wire);
  cudaCheck(cudaEventDestroy(s->watch));
  cudaCheck(cudaEventDestroy(s->done));
  cudaCheck(cudaEventDestroy(s->ready));
  cudaCheck(cudaStreamDestroy(s->stream));
  free(s);
}

static const grad_sync_ops nccl_sync_ops = {nccl_start, nccl_poll, nccl_wait, nccl_destroy};

// Two ranks driving one GPU would deadlock NCCL (or be silently slow): compare PCI bus ids of
// all ranks on this node. Bus ids, not device indices, because CUDA_VISIBLE_DEVICES may differ.
static void check_one_rank_per_gpu(comm *c, int device) {
  enum { ID = 64 };
  char mine[ID];
  memset(mine, 0, sizeof(mine));
  cudaCheck(cudaDeviceGetPCIBusId(mine, ID, device));
  char *all = xcalloc((size_t)c->local_size, ID);
  MPI_CHECK(MPI_Allgather(mine, ID, MPI_CHAR, all, ID, MPI_CHAR, c->node));
  for (int j = 0; j < c->local_size; j++)
    if (j != c->local_rank && strncmp(all + (size_t)j * ID, mine, ID) == 0)
      DIE_USAGE("local ranks %d and %d on this node both use GPU %s: run at most one rank per "
                "GPU (check CUDA_VISIBLE_DEVICES and the number of ranks per node)",
                c->local_rank < j ? c->local_rank : j, c->local_rank < j ? j : c->local_rank, mine);
  free(all);
}

grad_sync *grad_sync_nccl_create(comm *c, backend *b, float *grads, size_t count, int bf16_wire,
                                 double timeout_s) {
  if (b->ops->stream(b) == NULL) FATAL("the NCCL gradient reducer needs a CUDA backend");
  nccl_sync *s = xcalloc(1, sizeof(nccl_sync));
  s->base.ops = &nccl_sync_ops;
  s->base.c = c;
  s->base.b = b;
  s->base.grads = grads;
  s->base.count = count;
  s->timeout_s = timeout_s;
  s->compute = (cudaStream_t)b->ops->stream(b);
  cudaCheck(cudaGetDevice(&s->device)); // the backend selected it
  check_one_rank_per_gpu(c, s->device);

  ncclUniqueId id;
  memset(&id, 0, sizeof(id));
  if (c->rank == 0) ncclCheck(ncclGetUniqueId(&id));
  MPI_CHECK(MPI_Bcast(&id, (int)sizeof(id), MPI_BYTE, 0, c->world));
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;
  ncclResult_t r = ncclCommInitRankConfig(&s->comm, c->size, id, c->rank, &cfg);
  if (r != ncclSuccess && r != ncclInProgress)
    FATAL("rank %d: ncclCommInitRankConfig failed: %s (%s)", c->rank, ncclGetErrorString(r),
          ncclGetLastError(NULL));
  nccl_settle(s, "communicator init", timeout_s);

  cudaCheck(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
  cudaCheck(cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming));
  cudaCheck(cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming));
  cudaCheck(cudaEventCreateWithFlags(&s->watch, cudaEventDisableTiming));
  if (bf16_wire && count) s->wire = b->ops->alloc(b, count * sizeof(uint16_t));
  if (pthread_mutex_init(&s->lock, NULL) != 0) FATAL("pthread_mutex_init failed");
  if (pthread_create(&s->thread, NULL, watchdog_main, s) != 0)
    FATAL("starting the NCCL watchdog thread failed");
  return &s->base;
}
