// profile.cu - the CUDA backend's per-op profiler (bench_step --profile): CUDA events around
// every op of eager steps, read at each step's synchronisation and averaged by prof_table.c,
// which also holds the conv plans' engine choices (filled by conv.cu) and prints the table.
//
// Off unless backend_cuda_profile_enable: ctx->prof is NULL, the ops table is the plain one and
// the conv regions cost one NULL test. On: b->ops points at the profiler's copy of the CUDA
// ops table, whose op-level entries (prep, pool, FC, activation, batch norm, dropout, loss,
// Adam) open a region around the real op and whose capture entries are NULL, so net_train_step
// runs every step eagerly; convolutions open a region per part themselves (conv.cu). Profiling
// and graph capture are exclusive: enable refuses once a graph exists, capture_begin refuses
// while profiling.
// Every event is created at enable (a fixed pool of PROF_CAP pairs), none during a step.
#include <stdarg.h>
#include <string.h>

#include "cuda_common.h"

#define PROF_CAP 1024 // regions per step with events (VGG19 at full width needs about 140)

struct cuda_prof {
  backend_ops ops;          // the CUDA ops, op-level entries wrapped in regions
  const backend_ops *base;  // the plain CUDA ops (restored by cuda_prof_free)
  cudaEvent_t *ev;          // 2 * PROF_CAP: region i starts at ev[2i], ends at ev[2i + 1]
  prof_sample *s;           // this step's regions (kind, shape; ms once read)
  int n, open, dropped;     // regions this step; one is open; regions without events
  prof_table table;
};

// ---- regions -------------------------------------------------------------------------------

void cuda_prof_begin(cuda_ctx *c, prof_kind kind, const char *fmt, ...) {
  cuda_prof *p = c->prof;
  if (p->open) FATAL("profiler: a %s region opened inside another one", prof_kind_name(kind));
  p->open = 1;
  if (p->n == PROF_CAP) { // counted and reported; the step's other regions stay timed
    p->dropped++;
    return;
  }
  prof_sample *s = &p->s[p->n];
  s->kind = kind;
  s->ms = 0.0f;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->shape, sizeof(s->shape), fmt, ap);
  va_end(ap);
  cudaCheck(cudaEventRecord(p->ev[2 * p->n], c->stream));
}

void cuda_prof_end(cuda_ctx *c) {
  cuda_prof *p = c->prof;
  if (!p->open) FATAL("profiler: a region closed that was not open");
  p->open = 0;
  if (p->n == PROF_CAP) return; // a dropped region
  cudaCheck(cudaEventRecord(p->ev[2 * p->n + 1], c->stream));
  p->n++;
}

prof_conv *cuda_prof_conv(cuda_ctx *c) { return prof_table_conv(&c->prof->table); }

// ---- the op-level regions: the plain op between two events --------------------------------

static const backend_ops *base_of(backend *b) { return ctx_of(b)->prof->base; }

static void prof_prep_batch(backend *b, void *x, int32_t *labels, int32_t *ids,
                            const uint8_t *images, const uint8_t *image_labels,
                            const int32_t *h_ids, int n, const prep_params *pp) {
  cuda_prof_begin(ctx_of(b), PROF_PREP, "%d images %dx%d", n, pp->size, pp->size);
  base_of(b)->prep_batch(b, x, labels, ids, images, image_labels, h_ids, n, pp);
  cuda_prof_end(ctx_of(b));
}

static void prof_maxpool_fwd(backend *b, void *y, int32_t *argmax, const void *x, op_shape s) {
  cuda_prof_begin(ctx_of(b), PROF_POOL_FWD, "%dx%dx%d", s.H, s.W, s.C);
  base_of(b)->maxpool_fwd(b, y, argmax, x, s);
  cuda_prof_end(ctx_of(b));
}

static void prof_maxpool_bwd(backend *b, void *dx, const void *dy, const int32_t *argmax,
                             const void *x, const void *y, op_shape s) {
  cuda_prof_begin(ctx_of(b), PROF_POOL_BWD, "%dx%dx%d", s.H, s.W, s.C);
  base_of(b)->maxpool_bwd(b, dx, dy, argmax, x, y, s);
  cuda_prof_end(ctx_of(b));
}

static void prof_linear_fwd(backend *b, void *y, const void *x, const float *w, const float *bias,
                            op_shape s, activation act) {
  cuda_prof_begin(ctx_of(b), PROF_FC_FWD, "%d->%d%s", s.C, s.K, act == ACT_RELU ? " +relu" : "");
  base_of(b)->linear_fwd(b, y, x, w, bias, s, act);
  cuda_prof_end(ctx_of(b));
}

static void prof_linear_bwd(backend *b, void *dx, float *dw, float *db, const void *dy,
                            const void *x, const float *w, op_shape s) {
  cuda_prof_begin(ctx_of(b), PROF_FC_BWD, "%d->%d", s.C, s.K);
  base_of(b)->linear_bwd(b, dx, dw, db, dy, x, w, s);
  cuda_prof_end(ctx_of(b));
}

// An activation's label: its name and the (H, W, C) it runs on ("relu 32x32x64").
static const char *act_name(activation act) { return act == ACT_RELU ? "relu" : "none"; }

static void prof_act_fwd(backend *b, void *y, const void *x, op_shape s, activation act) {
  cuda_prof_begin(ctx_of(b), PROF_ACT_FWD, "%s %dx%dx%d", act_name(act), s.H, s.W, s.C);
  base_of(b)->act_fwd(b, y, x, s, act);
  cuda_prof_end(ctx_of(b));
}

static void prof_act_bwd(backend *b, void *dx, const void *dy, const void *y, op_shape s,
                         activation act) {
  cuda_prof_begin(ctx_of(b), PROF_ACT_BWD, "%s %dx%dx%d", act_name(act), s.H, s.W, s.C);
  base_of(b)->act_bwd(b, dx, dy, y, s, act);
  cuda_prof_end(ctx_of(b));
}

static void prof_bn_fwd(backend *b, void *y, float *save, const void *x, const float *gamma,
                        const float *beta, float *running, op_shape s, bn_params p, int train,
                        activation act) {
  cuda_prof_begin(ctx_of(b), PROF_BN_FWD, "%dx%dx%d %s%s", s.H, s.W, s.C, train ? "train" : "eval",
                  act == ACT_RELU ? " +relu" : "");
  base_of(b)->bn_fwd(b, y, save, x, gamma, beta, running, s, p, train, act);
  cuda_prof_end(ctx_of(b));
}

static void prof_bn_bwd(backend *b, void *dx, float *dgamma, float *dbeta, const void *dy,
                        const void *x, const float *gamma, const float *save, op_shape s,
                        bn_params p) {
  cuda_prof_begin(ctx_of(b), PROF_BN_BWD, "%dx%dx%d%s", s.H, s.W, s.C, dx ? "" : " no dx");
  base_of(b)->bn_bwd(b, dx, dgamma, dbeta, dy, x, gamma, save, s, p);
  cuda_prof_end(ctx_of(b));
}

static void prof_dropout_fwd(backend *b, void *y, const void *x, const int32_t *ids, op_shape s,
                             float p, dropout_key key) {
  cuda_prof_begin(ctx_of(b), PROF_DROPOUT_FWD, "%d units p %g", s.H * s.W * s.C, p);
  base_of(b)->dropout_fwd(b, y, x, ids, s, p, key);
  cuda_prof_end(ctx_of(b));
}

static void prof_dropout_bwd(backend *b, void *dx, const void *dy, const int32_t *ids,
                             op_shape s, float p, dropout_key key) {
  cuda_prof_begin(ctx_of(b), PROF_DROPOUT_BWD, "%d units p %g", s.H * s.W * s.C, p);
  base_of(b)->dropout_bwd(b, dx, dy, ids, s, p, key);
  cuda_prof_end(ctx_of(b));
}

static void prof_xent(backend *b, void *dlogits, double *stats, const void *logits,
                      const int32_t *labels, int N, int classes, float grad_scale) {
  cuda_prof_begin(ctx_of(b), PROF_LOSS, "%d classes%s", classes, dlogits ? " +grad" : "");
  base_of(b)->xent(b, dlogits, stats, logits, labels, N, classes, grad_scale);
  cuda_prof_end(ctx_of(b));
}

static void prof_adam(backend *b, float *params, const float *grads, float *m, float *v,
                      size_t count, const adam_params *p) {
  cuda_prof_begin(ctx_of(b), PROF_ADAM, "%.2fM params", count / 1e6);
  base_of(b)->adam(b, params, grads, m, v, count, p);
  cuda_prof_end(ctx_of(b));
}

// ---- enable / step / print / free ----------------------------------------------------------

extern "C" void backend_cuda_profile_enable(backend *b) {
  cuda_ctx *c = cuda_ctx_checked(b, "backend_cuda_profile_enable");
  if (c->prof) return;
  if (c->capturing || c->graphs_live)
    FATAL("the per-op profiler cannot start once a CUDA graph exists: profiling and graph "
          "capture are exclusive (profile eager steps)");
  if (c->convs.n || c->gemms.n)
    FATAL("backend_cuda_profile_enable after the first step: enable it before, so that it sees "
          "the plans being built");
  cuda_prof *p = (cuda_prof *)xcalloc(1, sizeof(cuda_prof));
  p->ev = (cudaEvent_t *)xcalloc(2 * PROF_CAP, sizeof(cudaEvent_t));
  for (int i = 0; i < 2 * PROF_CAP; i++) cudaCheck(cudaEventCreate(&p->ev[i])); // timing events
  p->s = (prof_sample *)xcalloc(PROF_CAP, sizeof(prof_sample));
  p->base = b->ops;
  p->ops = *b->ops;
  p->ops.prep_batch = prof_prep_batch;
  p->ops.maxpool_fwd = prof_maxpool_fwd;
  p->ops.maxpool_bwd = prof_maxpool_bwd;
  p->ops.linear_fwd = prof_linear_fwd;
  p->ops.linear_bwd = prof_linear_bwd;
  p->ops.act_fwd = prof_act_fwd;
  p->ops.act_bwd = prof_act_bwd;
  p->ops.bn_fwd = prof_bn_fwd;
  p->ops.bn_bwd = prof_bn_bwd;
  p->ops.dropout_fwd = prof_dropout_fwd;
  p->ops.dropout_bwd = prof_dropout_bwd;
  p->ops.xent = prof_xent;
  p->ops.adam = prof_adam;
  // No capture entries: net_train_step then runs every step eagerly.
  p->ops.capture_begin = NULL;
  p->ops.capture_end = NULL;
  p->ops.replay = NULL;
  p->ops.graph_free = NULL;
  c->prof = p;
  b->ops = &p->ops;
}

static cuda_prof *prof_of(backend *b, const char *who) {
  cuda_ctx *c = cuda_ctx_checked(b, who);
  if (!c->prof) FATAL("%s: the profiler is off (call backend_cuda_profile_enable first)", who);
  return c->prof;
}

extern "C" void backend_cuda_profile_step(backend *b, double wall_ms, int keep) {
  cuda_prof *p = prof_of(b, "backend_cuda_profile_step");
  cuda_ctx *c = ctx_of(b);
  if (p->open) FATAL("profiler: a step ended inside an open region");
  cudaCheck(cudaStreamSynchronize(c->stream)); // every event of the step has completed
  if (keep) {
    for (int i = 0; i < p->n; i++)
      cudaCheck(cudaEventElapsedTime(&p->s[i].ms, p->ev[2 * i], p->ev[2 * i + 1]));
    prof_table_step(&p->table, p->s, p->n, wall_ms);
    if (p->dropped > p->table.dropped) p->table.dropped = p->dropped;
  } else {
    prof_table_warmup(&p->table, wall_ms);
  }
  p->n = 0;
  p->dropped = 0;
}

extern "C" void backend_cuda_profile_print(backend *b, FILE *f) {
  cuda_prof *p = prof_of(b, "backend_cuda_profile_print");
  p->table.autotune_first = ctx_of(b)->autotune == AUTOTUNE_FIRST;
  prof_table_print(&p->table, f);
  fflush(f);
}

void cuda_prof_free(backend *b) {
  cuda_ctx *c = ctx_of(b);
  cuda_prof *p = c->prof;
  if (!p) return;
  b->ops = p->base;
  c->prof = NULL;
  for (int i = 2 * PROF_CAP - 1; i >= 0; i--) cudaCheck(cudaEventDestroy(p->ev[i]));
  prof_table_free(&p->table);
  free(p->s);
  free(p->ev);
  free(p);
}
