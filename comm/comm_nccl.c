// comm_nccl.c - the device gradient reducer: NCCL all-reduce (sum, in place) of ranges of the
// flat fp32 gradient buffer on a communication stream of its own, gated by events so that the
// host never waits: start() makes the comm stream wait for the compute stream's work so far,
// wait() makes the compute stream wait for every reduction started.
//
// The communicator is non-blocking (ncclConfig_t.blocking = 0) so that init and collectives can
// be abandoned: every NCCL call is followed by a poll of ncclCommGetAsyncError until it settles,
// bounded by timeout_s. A watchdog thread ends the job with the rank and the reason, instead of
// leaving every rank hanging in a device synchronisation, when
//   - the communicator reports an asynchronous error (a peer died, a network failure);
//   - a step's reductions are unfinished timeout_s after its wait(): each wait() records an
//     event in a ring of WATCH_RING, and the oldest pending one is the clock (the host runs at
//     most WATCH_RING steps ahead: wait() blocks on the oldest when the ring is full);
//   - the main thread has been inside one NCCL call for timeout_s (blocked on a full queue).
// Every NCCL call after init is made under the watchdog's lock, so the two threads never use
// the communicator at once; the watchdog only tries the lock, so a blocked call cannot stop it.
// Once a CUDA graph has captured a reduction, failures skip ncclCommAbort: NCCL's teardown waits
// for such graphs to be destroyed, so the abort could hang where it should end the job.
//
// Batch norm's sums over the ranks (grad_sync_rank_sum, --sync-bn) go over the same
// communicator and stream as the buckets, gated by events both ways (the comm stream waits for
// the compute stream's work so far, the compute stream for the sums): one communicator used
// from one stream runs its collectives in the order the host issued them, the same on every
// rank. A second communicator on the compute stream would not queue the sums behind the
// buckets in flight, but NCCL gives no order between two communicators' kernels, and one that
// blocks a device synchronisation (a lazy connection's allocation) while the other waits for a
// peer deadlocks (NCCL's user guide, "Using multiple NCCL communicators concurrently"). The
// price: in backward, a layer's sums wait for the buckets started before them.
//
// Optional bf16 wire format (bf16_wire): a range is converted into a bf16 scratch buffer,
// reduced as ncclBfloat16 and converted back, halving the bytes moved.
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nccl.h>

#include "comm_internal.h"
#include "device.h"
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

#define WATCH_RING 4 // steps the host may run ahead of the watched reductions

typedef struct nccl_sync {
  grad_sync base;
  ncclComm_t comm;
  int device;
  double timeout_s;            // <= 0: no deadline (async errors are still caught)
  cudaStream_t compute, stream; // the backend's stream; ours
  cudaEvent_t ready, done;
  cudaEvent_t sum_done; // a batch-norm sum on the comm stream, for the compute stream to wait on
  uint16_t *wire; // bf16 copy of the gradient buffer (bf16_wire only)
  int started;    // reductions started since the last wait()
  atomic_int captured;     // a CUDA graph holds reductions of this communicator
  atomic_long call_since;  // ms clock at which the main thread entered an NCCL call; 0: none
  atomic_int failing;      // nccl_fail has begun
  // Watchdog state, shared with the thread under `lock`.
  pthread_t thread;
  pthread_mutex_t lock;
  int quit;
  cudaEvent_t watch[WATCH_RING]; // recorded on the compute stream at wait(), oldest at tail
  double watch_at[WATCH_RING];
  int watch_tail, watch_count;
} nccl_sync;

// may_abort: 0 where the main thread may be inside an NCCL call on the communicator.
static VGG_NORETURN void nccl_fail(nccl_sync *s, int may_abort, const char *what, const char *reason) {
  // One report: the watchdog and the main thread may see the same failure at once.
  if (atomic_exchange(&s->failing, 1))
    for (;;) pause(); // the first caller ends the process
  // Abort first: frees the GPU from a collective that will never complete (not with a graph
  // holding reductions: see the top of the file; the job's end frees the GPU as well).
  if (may_abort && !atomic_load(&s->captured)) ncclCommAbort(s->comm);
  FATAL("rank %d: NCCL %s failed: %s", s->base.c ? s->base.c->rank : check_current_rank(), what, reason);
}

static long clock_ms(void) { return (long)(now_s() * 1e3) + 1; } // never 0 (0: no call)

// Pops the watched steps that have finished; under the lock.
static void watch_pop_done(nccl_sync *s) {
  while (s->watch_count) {
    cudaError_t q = cudaEventQuery(s->watch[s->watch_tail]);
    if (q == cudaErrorNotReady) return;
    if (q != cudaSuccess) nccl_fail(s, 1, "all-reduce", cudaGetErrorString(q));
    s->watch_tail = (s->watch_tail + 1) % WATCH_RING;
    s->watch_count--;
  }
}

// Poll the communicator until the last (non-blocking) call settles; abort past the deadline.
static void nccl_settle(nccl_sync *s, const char *what, double timeout_s) {
  double t0 = now_s();
  for (;;) {
    ncclResult_t st = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(s->comm, &st);
    if (r != ncclSuccess) nccl_fail(s, 1, what, ncclGetErrorString(r));
    if (st == ncclSuccess) return;
    if (st != ncclInProgress) {
      char msg[512];
      snprintf(msg, sizeof(msg), "%s (%s)", ncclGetErrorString(st), ncclGetLastError(s->comm));
      nccl_fail(s, 1, what, msg);
    }
    if (timeout_s > 0 && now_s() - t0 > timeout_s) {
      char msg[128];
      snprintf(msg, sizeof(msg), "still in progress after %.0f s", timeout_s);
      nccl_fail(s, 1, what, msg);
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
    if (pthread_mutex_trylock(&s->lock) != 0) {
      // The main thread holds the lock: inside an NCCL call, or briefly between its calls.
      long since = atomic_load(&s->call_since);
      if (s->timeout_s > 0 && since && (clock_ms() - since) * 1e-3 > s->timeout_s) {
        nccl_fail(s, 0, "all-reduce", "an NCCL call has not returned for the --comm-timeout "
                  "(a peer rank died or hangs?)");
      }
      continue;
    }
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
      nccl_fail(s, 1, "all-reduce", msg);
    }
    watch_pop_done(s);
    if (s->watch_count && s->timeout_s > 0 && now_s() - s->watch_at[s->watch_tail] > s->timeout_s) {
      char msg[160];
      snprintf(msg, sizeof(msg), "gradient all-reduce unfinished %.0f s after the step waited "
               "for it (a peer rank died or hangs?)", s->timeout_s);
      nccl_fail(s, 1, "all-reduce", msg);
    }
    pthread_mutex_unlock(&s->lock);
  }
}

// Our stream waits for the compute stream's work so far (what it reduces was written there).
static void stream_after_compute(nccl_sync *s) {
  cudaCheck(cudaEventRecord(s->ready, s->compute));
  cudaCheck(cudaStreamWaitEvent(s->stream, s->ready, 0));
}

// Enqueues an all-reduce (sum, in place) of count elements of buf on our stream: under the
// watchdog's lock, since NCCL gives no thread-safety
// guarantee for ncclCommGetAsyncError (the watchdog's poll) concurrent with a call on the same
// communicator, and non-blocking mode polls it inside every call (PyTorch hit hangs this way:
// pytorch#154055, #169484). Notes when a CUDA graph captures it (see the top of the file).
static void nccl_all_reduce(nccl_sync *s, void *buf, size_t count, ncclDataType_t type,
                            const char *what) {
  enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  cudaCheck(cudaStreamIsCapturing(s->compute, &cs));
  if (cs != cudaStreamCaptureStatusNone) atomic_store(&s->captured, 1);
  pthread_mutex_lock(&s->lock);
  atomic_store(&s->call_since, clock_ms());
  ncclCheck(ncclAllReduce(buf, buf, count, type, ncclSum, s->comm, s->stream));
  nccl_settle(s, what, s->timeout_s);
  atomic_store(&s->call_since, 0);
  pthread_mutex_unlock(&s->lock);
}

static void nccl_start(grad_sync *g, size_t offset, size_t count) {
  nccl_sync *s = (nccl_sync *)g;
  if (offset > g->count || count > g->count - offset)
    FATAL("gradient bucket [%zu, %zu) outside the %zu-element buffer", offset, offset + count,
          g->count);
  // One rank is reduced too (NCCL copies in place): the same path runs at every world size,
  // so a one-GPU check exercises it.
  if (count == 0) return;
  stream_after_compute(s);
  float *range = g->grads + offset;
  void *buf = range;
  ncclDataType_t type = ncclFloat;
  if (s->wire) {
    buf = s->wire + offset;
    type = ncclBfloat16;
    cuda_wire_pack(buf, range, count, s->stream);
  }
  nccl_all_reduce(s, buf, count, type, "all-reduce (enqueue)");
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
  // Watch this step on the compute stream, behind the reductions it now waits for, or, with
  // nothing started here, behind a replayed CUDA graph that holds them. Not while a graph is
  // being captured: nothing runs then.
  enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  cudaCheck(cudaStreamIsCapturing(s->compute, &cs));
  if (cs != cudaStreamCaptureStatusNone) return;
  pthread_mutex_lock(&s->lock);
  watch_pop_done(s);
  if (s->watch_count == WATCH_RING) {
    // WATCH_RING steps ahead of the GPU: wait for the oldest (only this thread records the
    // ring's events, so it stays put while the watchdog keeps timing it).
    cudaEvent_t oldest = s->watch[s->watch_tail];
    pthread_mutex_unlock(&s->lock);
    cudaCheck(cudaEventSynchronize(oldest));
    pthread_mutex_lock(&s->lock);
    watch_pop_done(s);
  }
  // Slot i is free and only this thread records: the record itself (which may block on a full
  // launch queue) happens outside the lock, so the watchdog keeps watching meanwhile.
  int i = (s->watch_tail + s->watch_count) % WATCH_RING;
  pthread_mutex_unlock(&s->lock);
  cudaCheck(cudaEventRecord(s->watch[i], s->compute));
  pthread_mutex_lock(&s->lock);
  s->watch_at[i] = now_s();
  s->watch_count++;
  pthread_mutex_unlock(&s->lock);
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
  for (int i = WATCH_RING - 1; i >= 0; i--) cudaCheck(cudaEventDestroy(s->watch[i]));
  cudaCheck(cudaEventDestroy(s->sum_done));
  cudaCheck(cudaEventDestroy(s->done));
  cudaCheck(cudaEventDestroy(s->ready));
  cudaCheck(cudaStreamDestroy(s->stream));
  free(s);
}

// Batch norm's sums: count doubles of device memory, in place, on our stream between the
// compute stream's work before and after (the next kernel needs them; the host never waits).
// One rank too, as the buckets.
static void nccl_rank_sum(void *ctx, double *buf, size_t count) {
  nccl_sync *s = ctx;
  if (count == 0) return;
  stream_after_compute(s);
  nccl_all_reduce(s, buf, count, ncclDouble, "batch-norm all-reduce (enqueue)");
  cudaCheck(cudaEventRecord(s->sum_done, s->stream));
  cudaCheck(cudaStreamWaitEvent(s->compute, s->sum_done, 0));
}

static void nccl_rank_sum_init(grad_sync *g) { g->sum = (rank_sum){nccl_rank_sum, g}; }

static const grad_sync_ops nccl_sync_ops = {nccl_start, nccl_poll, nccl_wait, nccl_destroy,
                                            nccl_rank_sum_init};

// Two ranks driving one GPU would deadlock NCCL (or be silently slow): compare the PCI bus ids
// of all ranks on this node. Bus ids, not device indices: under srun --gpus-per-task=1,
// --gpu-bind or a per-rank CUDA_VISIBLE_DEVICES every rank's GPU is its device 0 (device_pick
// binds local rank % visible without refusing), and only the bus ids tell distinct GPUs from
// one GPU shared. Agreed over all ranks (the other nodes must not go on to the NCCL id
// broadcast): the lowest rank of the clashing node prints one line, every rank exits 2.
void comm_check_gpu_per_rank(comm *c, backend *b) {
  enum { ID = 64 };
  char mine[ID];
  memset(mine, 0, sizeof(mine));
  if (!b->is_device) FATAL("comm_check_gpu_per_rank: not a CUDA backend");
  int device = 0;
  cudaCheck(cudaGetDevice(&device)); // the backend selected it
  cudaCheck(cudaDeviceGetPCIBusId(mine, ID, device));
  char *all = xcalloc((size_t)c->local_size, ID);
  MPI_CHECK(MPI_Allgather(mine, ID, MPI_CHAR, all, ID, MPI_CHAR, c->node));
  int i = 0, j = 0, clash = device_bus_id_clash(all, c->local_size, ID, &i, &j);
  char host[64] = "?";
  if (clash) gethostname(host, sizeof(host) - 1); // only for the message: a failure leaves "?"
  comm_agree_begin(c);
  if (clash)
    DIE_USAGE("local ranks %d and %d of the %d on %s both drive GPU %s: run at most one rank "
              "per GPU (more ranks on the node than GPUs, or CUDA_VISIBLE_DEVICES / --gpu-bind "
              "giving two ranks one GPU)", i, j, c->local_size, host, all + (size_t)i * ID);
  comm_agree_end(c);
  free(all);
}

// The watchdog thread ends the job (MPI_Abort, through FATAL's hook) while the main thread may
// be inside MPI: that needs MPI_THREAD_MULTIPLE. Every rank runs the same library, so every
// rank refuses alike (agreed: one line, exit 2).
static void check_thread_level(comm *c) {
  comm_agree_begin(c);
  if (c->thread_level < MPI_THREAD_MULTIPLE)
    DIE_USAGE("the MPI library gives thread level \"%s\", the NCCL reducer's watchdog needs "
              "\"multiple\" (it may abort the job while the main thread is inside MPI): use an "
              "MPI built with thread support, or --device cpu", comm_thread_level(c));
  comm_agree_end(c);
}

grad_sync *grad_sync_nccl_create(comm *c, backend *b, float *grads, size_t count, int bf16_wire,
                                 double timeout_s) {
  if (!b->is_device) FATAL("the NCCL gradient reducer needs a CUDA backend");
  nccl_sync *s = xcalloc(1, sizeof(nccl_sync));
  s->base.ops = &nccl_sync_ops;
  s->base.c = c;
  s->base.b = b;
  s->base.grads = grads;
  s->base.count = count;
  s->timeout_s = timeout_s;
  s->compute = (cudaStream_t)b->ops->stream(b);
  cudaCheck(cudaGetDevice(&s->device)); // the backend selected it
  check_thread_level(c); // (one rank per GPU: device.c checked it when the backend was made)

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

  // The highest priority there is (numerically the least): a bucket's reduction is on the
  // critical path once backward ends, so its kernels go before queued compute kernels.
  int least = 0, greatest = 0;
  cudaCheck(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  cudaCheck(cudaStreamCreateWithPriority(&s->stream, cudaStreamNonBlocking, greatest));
  cudaCheck(cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming));
  cudaCheck(cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming));
  cudaCheck(cudaEventCreateWithFlags(&s->sum_done, cudaEventDisableTiming));
  for (int i = 0; i < WATCH_RING; i++)
    cudaCheck(cudaEventCreateWithFlags(&s->watch[i], cudaEventDisableTiming));
  if (bf16_wire && count) s->wire = b->ops->alloc(b, count * sizeof(uint16_t));
  if (pthread_mutex_init(&s->lock, NULL) != 0) FATAL("pthread_mutex_init failed");
  if (pthread_create(&s->thread, NULL, watchdog_main, s) != 0)
    FATAL("starting the NCCL watchdog thread failed");
  return &s->base;
}
