// comm_mpi.c - MPI start-up, control collectives, the job-wide abort hook, and the host-memory
// gradient reducer (non-blocking MPI_Iallreduce per bucket) used with the CPU backend.
//
// --comm-timeout on the MPI path: every collective here is non-blocking and completed by
// comm_wait, a test loop with a deadline. A blocking MPI call would spin on one core forever when
// a peer stops (a SIGSTOP, a hung file system, a dead node whose link stays up); comm_wait naps
// between tests instead (backing off to 1 ms: each test still drives MPI's progress) and past the
// deadline ends the job with one line naming this rank, the collective and the wait, and the
// ranks (and their hosts) that did not answer a ping within PING_S: the peers that stopped.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm_internal.h"
#include "log.h"

// MPI_Abort asks this node's daemon to have mpirun end every rank. Cut off from mpirun (a
// network partition: the daemon cannot forward the request), nothing says when it returns:
// in one partition run here the cut-off node's ranks were alive 22 s after it, in later ones
// they ended at once. So a thread ends this process ABORT_GRACE_S later in any case;
// mpirun, which may never hear of it, is the launcher's to end (launch/multi_node.sh).
#define ABORT_GRACE_S 5
static int abort_code;

static void *abort_fallback(void *arg) {
  struct timespec t = {ABORT_GRACE_S, 0};
  while (nanosleep(&t, &t) != 0) {} // the rest of the time after a signal
  fprintf(stderr, "vgg_dist: [rank %d] MPI_Abort did not end this rank within %d s (mpirun out "
          "of reach?): exiting\n", check_current_rank(), ABORT_GRACE_S);
  _exit(abort_code);
}

void comm_abort(comm *c, int code) {
  int up = 0, down = 0, size = 0;
  MPI_Initialized(&up);
  MPI_Finalized(&down);
  // A world of one rank has no one else to end: exiting spares the user Open MPI's 7-line
  // MPI_ABORT banner after the one-line error.
  if (up && !down && (MPI_Comm_size(MPI_COMM_WORLD, &size) != MPI_SUCCESS || size > 1)) {
    pthread_t t;
    abort_code = code;
    if (pthread_create(&t, NULL, abort_fallback, NULL) != 0) // unchecked MPI_Abort otherwise
      fprintf(stderr, "vgg_dist: [rank %d] no thread to bound MPI_Abort's wait\n",
              check_current_rank());
    MPI_Abort(c ? c->world : MPI_COMM_WORLD, code);
  }
  exit(code);
}

// Installed into check.c: any fatal error on any rank ends every rank (never a hang).
static void comm_abort_hook(int code) { comm_abort(NULL, code); }

// ---- who stopped answering --------------------------------------------------------------------
// A rank whose wait passed its deadline pings every other rank on a communicator of their own
// (c->ping), and every rank answers from inside any comm_wait, which is where every healthy
// rank of a stuck collective is. So the ranks that give no answer within PING_S are the ones
// stopped, dead, cut off from this rank by the network, or stuck outside MPI: the message
// names them and their hosts. (Which rank a collective waits for, MPI does not say.)
enum { PING_TAG = 1, PONG_TAG = 2 };
#define PING_S 2.0

static double mono_s(void);

// Answers every ping that has come (a pong each), then posts the receive again.
static void ping_serve(comm *c) {
  static const int pong = 1; // never written: safe as the buffer of sends still in flight
  for (;;) {
    int got = 0;
    MPI_Status st;
    MPI_CHECK(MPI_Test(&c->ping_req, &got, &st));
    if (!got) return;
    MPI_Request r;
    MPI_CHECK(MPI_Isend(&pong, 1, MPI_INT, st.MPI_SOURCE, PONG_TAG, c->ping, &r));
    MPI_CHECK(MPI_Request_free(&r)); // a small message: it completes on its own
    MPI_CHECK(MPI_Irecv(&c->ping_buf, 1, MPI_INT, MPI_ANY_SOURCE, PING_TAG, c->ping,
                        &c->ping_req));
  }
}

// Pings every other rank and writes into out the ones without an answer after PING_S, by host
// ("ranks 2 3 on node2; rank 5 on node3"); returns how many. Errors here count as no answer
// (unchecked on purpose: this runs on the way to ending the job, and a peer whose connection
// broke is exactly what it looks for).
static int ping_silent(comm *c, char *out, size_t len) {
  static const int ping = 1;
  const int n = c->size;
  MPI_Request *req = xmalloc(sizeof(MPI_Request) * n);
  int *pongs = xcalloc((size_t)n, sizeof(int));
  char *answered = xcalloc((size_t)n, 1);
  answered[c->rank] = 1;
  for (int r = 0; r < n; r++) {
    req[r] = MPI_REQUEST_NULL;
    if (r == c->rank) continue;
    MPI_Request s;
    if (MPI_Isend(&ping, 1, MPI_INT, r, PING_TAG, c->ping, &s) == MPI_SUCCESS)
      MPI_Request_free(&s);
    MPI_Irecv(&pongs[r], 1, MPI_INT, r, PONG_TAG, c->ping, &req[r]);
  }
  const double t0 = mono_s();
  int waiting = n - 1, abandoned = 0;
  while (waiting > 0 && mono_s() - t0 < PING_S) {
    ping_serve(c); // the others may be asking too
    for (int r = 0; r < n; r++) { // one by one: an error on one peer says nothing of the others
      if (req[r] == MPI_REQUEST_NULL) continue;
      int got = 0;
      if (MPI_Test(&req[r], &got, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
        req[r] = MPI_REQUEST_NULL; // a broken connection: no answer (the request is abandoned)
        waiting--;
        abandoned = 1;
      } else if (got) {
        answered[r] = 1;
        waiting--;
      }
    }
    struct timespec nap = {0, 1000000};
    nanosleep(&nap, NULL);
  }
  int silent = 0;
  size_t at = 0;
  out[0] = 0;
  for (int r = 0; r < n; r++) { // each host once, with its silent ranks
    if (answered[r]) continue;
    const char *h = c->hosts + (size_t)r * COMM_HOST;
    int first = 1;
    for (int q = r; q < n; q++) {
      if (answered[q] || strncmp(h, c->hosts + (size_t)q * COMM_HOST, COMM_HOST) != 0) continue;
      if (at < len) at += (size_t)snprintf(out + at, len - at, "%s%d", first ? "" : " ", q);
      answered[q] = 1; // listed
      first = 0;
      silent++;
    }
    if (at < len) at += (size_t)snprintf(out + at, len - at, " on %s; ", h);
  }
  if (at >= 2 && at < len) out[at - 2] = 0; // the last "; "
  for (int r = 0; r < n; r++) // the receives of silent ranks, before their buffers go
    if (req[r] != MPI_REQUEST_NULL && MPI_Cancel(&req[r]) == MPI_SUCCESS)
      MPI_Wait(&req[r], MPI_STATUS_IGNORE); // a cancelled receive completes at once
  free(answered);
  if (!abandoned) free(pongs); // else MPI may still own a slot of it: kept (the job is ending)
  free(req);
  return silent;
}

comm *comm_init(int *argc, char ***argv) {
  int provided = 0;
  MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  comm *c = xcalloc(1, sizeof(comm));
  c->world = MPI_COMM_WORLD;
  c->thread_level = provided; // less than asked is refused only where it matters (comm_nccl.c)
  check_set_abort_hook(comm_abort_hook);
  // Errors come back as codes (checked by MPI_CHECK) instead of MPI's default abort.
  MPI_CHECK(MPI_Comm_set_errhandler(c->world, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(c->world, &c->rank));
  MPI_CHECK(MPI_Comm_size(c->world, &c->size));
  check_set_rank(c->rank);
  MPI_CHECK(MPI_Comm_split_type(c->world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &c->node));
  MPI_CHECK(MPI_Comm_rank(c->node, &c->local_rank));
  MPI_CHECK(MPI_Comm_size(c->node, &c->local_size));
  // Every rank's host, for the message of a wait past its deadline (once, at start-up).
  char mine[COMM_HOST] = "";
  CHECK_ZERO(gethostname(mine, COMM_HOST));
  c->hosts = xcalloc((size_t)c->size, COMM_HOST);
  MPI_CHECK(MPI_Allgather(mine, COMM_HOST, MPI_CHAR, c->hosts, COMM_HOST, MPI_CHAR, c->world));
  MPI_CHECK(MPI_Comm_dup(c->world, &c->ping));
  MPI_CHECK(MPI_Irecv(&c->ping_buf, 1, MPI_INT, MPI_ANY_SOURCE, PING_TAG, c->ping, &c->ping_req));
  return c;
}

void comm_finalize(comm *c) {
  if (!c) return;
  MPI_CHECK(MPI_Cancel(&c->ping_req));
  MPI_CHECK(MPI_Wait(&c->ping_req, MPI_STATUS_IGNORE));
  MPI_CHECK(MPI_Comm_free(&c->ping));
  free(c->hosts);
  MPI_CHECK(MPI_Comm_free(&c->node));
  check_set_abort_hook(NULL);
  MPI_CHECK(MPI_Finalize());
  free(c);
}

int comm_rank(const comm *c) { return c->rank; }
int comm_world(const comm *c) { return c->size; }
int comm_local_rank(const comm *c) { return c->local_rank; }
int comm_local_size(const comm *c) { return c->local_size; }

const char *comm_thread_level(const comm *c) {
  if (c->thread_level >= MPI_THREAD_MULTIPLE) return "multiple";
  if (c->thread_level >= MPI_THREAD_SERIALIZED) return "serialized";
  return c->thread_level >= MPI_THREAD_FUNNELED ? "funneled" : "single";
}

double comm_set_timeout(comm *c, double seconds) {
  double before = c->timeout_s;
  c->timeout_s = seconds > 0 ? seconds : 0;
  return before;
}

static double mono_s(void) {
  struct timespec t;
  CHECK_ZERO(clock_gettime(CLOCK_MONOTONIC, &t));
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

// Completes the n requests, testing them with naps in between: the first millisecond without
// (a collective whose peers are there finishes at full speed), then from 10 us doubling to 1 ms.
// Past c->timeout_s (0: never) the job ends; `what` names the collective in that message.
static void comm_wait(comm *c, int n, MPI_Request *req, const char *what) {
  const double t0 = mono_s();
  long nap_ns = 0;
  for (;;) {
    int done = 0;
    MPI_CHECK(MPI_Testall(n, req, &done, MPI_STATUSES_IGNORE));
    if (done) return;
    ping_serve(c);
    const double waited = mono_s() - t0;
    if (c->timeout_s > 0 && waited > c->timeout_s) {
      char who[4096];
      const int silent = ping_silent(c, who, sizeof(who));
      MPI_CHECK(MPI_Testall(n, req, &done, MPI_STATUSES_IGNORE));
      if (done) return; // it completed during the ping: a slow peer, not a lost one
      if (silent)
        FATAL("waited %.0f s for %s (--comm-timeout %g): no answer within %.0f s from rank(s) "
              "%s: stopped, dead or cut off from this rank", waited, what, c->timeout_s, PING_S,
              who); // the prefix names this rank and its host
      FATAL("waited %.0f s for %s (--comm-timeout %g), yet every rank answers: a peer rank "
            "hangs in another collective?", waited, what, c->timeout_s);
    }
    if (waited < 1e-3) continue;
    nap_ns = nap_ns ? (nap_ns * 2 > 1000000 ? 1000000 : nap_ns * 2) : 10000;
    struct timespec nap = {0, nap_ns};
    nanosleep(&nap, NULL); // an early wake-up (a signal) only tests sooner
  }
}

void comm_barrier(comm *c) {
  MPI_Request req;
  MPI_CHECK(MPI_Ibarrier(c->world, &req));
  comm_wait(c, 1, &req, "a barrier");
}

void comm_bcast(comm *c, void *h_buf, size_t bytes, int root) {
  if (bytes > (size_t)INT32_MAX) FATAL("broadcast of %zu bytes is too large", bytes);
  MPI_Request req;
  MPI_CHECK(MPI_Ibcast(h_buf, (int)bytes, MPI_BYTE, root, c->world, &req));
  char what[96];
  snprintf(what, sizeof(what), "a broadcast of %zu bytes from rank %d", bytes, root);
  comm_wait(c, 1, &req, what);
}

static void allreduce_f64(comm *c, double *h_buf, size_t count, MPI_Op op, const char *name) {
  if (count > (size_t)INT32_MAX) FATAL("all-reduce of %zu doubles is too large", count);
  MPI_Request req;
  MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, h_buf, (int)count, MPI_DOUBLE, op, c->world, &req));
  char what[96];
  snprintf(what, sizeof(what), "an all-reduce (%s) of %zu doubles", name, count);
  comm_wait(c, 1, &req, what);
}

void comm_allreduce_sum_f64(comm *c, double *h_buf, size_t count) {
  allreduce_f64(c, h_buf, count, MPI_SUM, "sum");
}

void comm_allreduce_max_f64(comm *c, double *h_buf, size_t count) {
  allreduce_f64(c, h_buf, count, MPI_MAX, "max");
}

// The sizes first (every rank's, to the root), then the bytes at their offsets. Both are
// non-blocking and completed by comm_wait, so a peer that stops meanwhile ends the job at the
// deadline like any other collective.
void comm_gather_bytes(comm *c, void *h_out, size_t out_cap, const void *h_in, size_t bytes,
                       int root) {
  const int root_here = c->rank == root;
  long long mine = (long long)bytes, *sizes = root_here ? xmalloc(sizeof(long long) * c->size) : NULL;
  int *counts = NULL, *displs = NULL;
  MPI_Request req;
  MPI_CHECK(MPI_Igather(&mine, 1, MPI_LONG_LONG, sizes, 1, MPI_LONG_LONG, root, c->world, &req));
  comm_wait(c, 1, &req, "a gather of sizes");
  if (root_here) {
    counts = xmalloc(sizeof(int) * c->size);
    displs = xmalloc(sizeof(int) * c->size);
    long long total = 0;
    for (int r = 0; r < c->size; r++) {
      if (total + sizes[r] > INT32_MAX) FATAL("gather of more than %d bytes is too large", INT32_MAX);
      counts[r] = (int)sizes[r];
      displs[r] = (int)total;
      total += sizes[r];
    }
    if ((size_t)total > out_cap)
      FATAL("gather of %lld bytes into a buffer of %zu", total, out_cap);
  }
  MPI_CHECK(MPI_Igatherv(h_in, (int)mine, MPI_BYTE, h_out, counts, displs, MPI_BYTE, root,
                         c->world, &req));
  char what[96];
  snprintf(what, sizeof(what), "a gather of %zu bytes to rank %d", bytes, root);
  comm_wait(c, 1, &req, what);
  free(displs);
  free(counts);
  free(sizes);
}

void comm_node_gather_ints(comm *c, int *h_out, const int *h_in, int count) {
  MPI_Request req;
  MPI_CHECK(MPI_Igather(h_in, count, MPI_INT, h_out, count, MPI_INT, 0, c->node, &req));
  comm_wait(c, 1, &req, "a gather of the node's ranks");
}

// ---- agreed user errors ------------------------------------------------------------------

static comm *agreeing; // the communicator between comm_agree_begin and comm_agree_end

// Every rank reduces {its error code, world - its rank if it has one}: the largest code is the
// job's status and the lowest erring rank is the one that prints. Then all leave MPI together.
static VGG_NORETURN void agree_and_exit(comm *c, int code, const char *msg) {
  check_set_user_error_hook(NULL);
  agreeing = NULL;
  double v[2] = {code, code ? c->size - c->rank : 0};
  comm_allreduce_max_f64(c, v, 2);
  if (msg && c->size - c->rank == (int)v[1]) {
    if (c->rank == 0) fprintf(stderr, "vgg_dist: error: %s\n", msg);
    else fprintf(stderr, "vgg_dist: error [rank %d]: %s\n", c->rank, msg);
    fflush(stderr);
  }
  comm_finalize(c);
  exit((int)v[0]);
}

static void agree_user_error(int code, const char *msg) { agree_and_exit(agreeing, code, msg); }

void comm_agree_begin(comm *c) {
  agreeing = c;
  check_set_user_error_hook(agree_user_error);
}

void comm_agree_end(comm *c) {
  check_set_user_error_hook(NULL);
  agreeing = NULL;
  double v[2] = {0, 0};
  comm_allreduce_max_f64(c, v, 2);
  if (v[0] != 0) { // another rank met an error: it printed; leave with its status
    comm_finalize(c);
    exit((int)v[0]);
  }
}

#ifndef VGG_HAVE_CUDA
// A build without CUDA makes no CUDA backend, so no rank has a GPU to share (comm_nccl.c has
// the check otherwise).
void comm_check_gpu_per_rank(comm *c, backend *b) {}
#endif

// ---- host gradient reducer --------------------------------------------------------------------

#define MAX_PENDING 128

typedef struct mpi_sync {
  grad_sync base;
  MPI_Request req[MAX_PENDING];
  int n_req;
} mpi_sync;

static void mpi_start(grad_sync *g, size_t offset, size_t count) {
  mpi_sync *s = (mpi_sync *)g;
  if (offset + count > g->count)
    FATAL("gradient bucket [%zu, %zu) outside the %zu-element buffer", offset, offset + count, g->count);
  if (g->c->size == 1) return;
  // Chunks of at most 2^30 elements: MPI counts are int.
  for (size_t done = 0; done < count;) {
    size_t n = count - done < ((size_t)1 << 30) ? count - done : ((size_t)1 << 30);
    if (s->n_req == MAX_PENDING) FATAL("more than %d gradient reductions in flight", MAX_PENDING);
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, g->grads + offset + done, (int)n, MPI_FLOAT, MPI_SUM,
                             g->c->world, &s->req[s->n_req++]));
    done += n;
  }
}

static void mpi_poll(grad_sync *g) {
  mpi_sync *s = (mpi_sync *)g;
  int flag = 0;
  // Drives MPI's progress engine so reductions advance while backward computes.
  if (s->n_req) MPI_CHECK(MPI_Testall(s->n_req, s->req, &flag, MPI_STATUSES_IGNORE));
}

static void mpi_wait(grad_sync *g) {
  mpi_sync *s = (mpi_sync *)g;
  if (s->n_req) comm_wait(g->c, s->n_req, s->req, "the gradient all-reduce");
  s->n_req = 0;
}

static void mpi_destroy(grad_sync *g) {
  mpi_wait(g);
  free(g);
}

// Batch norm's sums: host doubles, as the control collectives (a blocking all-reduce; the
// bucket reductions in flight meanwhile are other requests of the same communicator, issued in
// the same order on every rank, as MPI requires).
static void mpi_rank_sum(void *ctx, double *buf, size_t count) {
  grad_sync *g = ctx;
  if (g->c->size > 1) comm_allreduce_sum_f64(g->c, buf, count);
}

static void mpi_rank_sum_init(grad_sync *g) { g->sum = (rank_sum){mpi_rank_sum, g}; }

static const grad_sync_ops mpi_sync_ops = {mpi_start, mpi_poll, mpi_wait, mpi_destroy,
                                           mpi_rank_sum_init};

grad_sync *grad_sync_create(comm *c, backend *b, grad_sync_kind kind, float *grads, size_t count,
                            int bf16_wire, double timeout_s) {
  if (kind == GRAD_SYNC_NCCL) {
#ifdef VGG_HAVE_CUDA
    return grad_sync_nccl_create(c, b, grads, count, bf16_wire, timeout_s);
#else
    FATAL("this build has no CUDA/NCCL support");
#endif
  }
  if (b->is_device) FATAL("the MPI gradient reducer needs host memory (CPU backend)");
  grad_sync *g = xcalloc(1, sizeof(mpi_sync));
  g->ops = &mpi_sync_ops;
  g->c = c;
  g->b = b;
  g->grads = grads;
  g->count = count;
  return g;
}

void grad_sync_free(grad_sync *g) {
  if (g) g->ops->destroy(g);
}
void grad_sync_start(grad_sync *g, size_t offset, size_t count) { g->ops->start(g, offset, count); }
void grad_sync_poll(grad_sync *g) { g->ops->poll(g); }
void grad_sync_wait(grad_sync *g) {
  const double t0 = now_s();
  g->ops->wait(g);
  g->wait_s += now_s() - t0;
}
double grad_sync_wait_seconds(const grad_sync *g) { return g->wait_s; }
const rank_sum *grad_sync_rank_sum(grad_sync *g) {
  if (!g->sum.sum) g->ops->rank_sum_init(g);
  return &g->sum;
}
