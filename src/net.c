// net.c - walks the model's layer table through the backend ops (see net.h).
#include "net.h"

#include <stdlib.h>
#include <string.h>

#include "check.h"

// conv_fwd, linear_fwd and bn_fwd take the layer's activation as their epilogue (every backend
// fuses it); after any other op the walker runs act_fwd from the op's own output buffer (pre).
static int act_fused(layer_kind k) { return k == LAYER_CONV || k == LAYER_LINEAR || k == LAYER_BN; }

static int act_separate(const layer *l) { return l->act != ACT_NONE && !act_fused(l->kind); }

// The op's data shape for a batch of n: its input and K output channels / features.
static op_shape layer_shape(const layer *l, int n) { return (op_shape){n, l->H, l->W, l->C, l->K}; }

// The shape of the layer's output, for its activation (elementwise, K = C).
static op_shape output_shape(const layer *l, int n) {
  return (op_shape){n, l->oH, l->oW, l->K, l->K};
}

// Every buffer of a net, in one place: allocated on b, or with b == NULL only counted.
static size_t net_buffers(net *nt, const model *m, backend *b, size_t act_bytes, int max_n) {
  size_t total = 0;
#define TAKE(ptr, bytes)                                       \
  do {                                                         \
    size_t take_ = (bytes);                                    \
    total += take_;                                            \
    if (b) (ptr) = b->ops->alloc(b, take_);                    \
  } while (0)
  size_t pbytes = m->n_params * sizeof(float);
  TAKE(nt->params, pbytes);
  TAKE(nt->grads, pbytes);
  TAKE(nt->adam_m, pbytes);
  TAKE(nt->adam_v, pbytes);
  TAKE(nt->buffers, m->n_buffers * sizeof(float));
  size_t S = m->image_size;
  TAKE(nt->act[0], (size_t)max_n * S * S * 3 * act_bytes);
  for (int i = 0; i < m->n_layers; i++) {
    const layer *l = &m->layers[i];
    size_t out = (size_t)max_n * l->oH * l->oW * l->K;
    TAKE(nt->act[i + 1], out * act_bytes);
    if (act_separate(l)) TAKE(nt->pre[i], out * act_bytes);
    if (l->kind == LAYER_POOL) TAKE(nt->argmax[i], out * sizeof(int32_t));
    if (l->kind == LAYER_BN) TAKE(nt->bn_save[i], 2 * (size_t)l->C * sizeof(float));
  }
  for (int k = 0; k < 2; k++) TAKE(nt->dbuf[k], (size_t)max_n * m->max_act * act_bytes);
  TAKE(nt->labels, (size_t)max_n * sizeof(int32_t));
  TAKE(nt->ids, (size_t)max_n * sizeof(int32_t));
  TAKE(nt->stats, 2 * sizeof(double));
#undef TAKE
  return total;
}

size_t net_memory_bytes(const model *m, int max_n, size_t act_bytes) {
  net scratch;
  memset(&scratch, 0, sizeof(scratch));
  return net_buffers(&scratch, m, NULL, act_bytes, max_n);
}

void net_init(net *nt, const model *m, backend *b, int max_n, size_t bucket_count) {
  memset(nt, 0, sizeof(*nt));
  nt->m = m;
  nt->b = b;
  nt->max_n = max_n;
  nt->bytes = net_buffers(nt, m, b, b->act_bytes, max_n);
  model_plan_buckets(&nt->buckets, m, bucket_count);
}

void net_free(net *nt) {
  if (!nt || !nt->b) return;
  backend *b = nt->b;
  net_release_graph(nt);
  void (*rel)(backend *, void *) = b->ops->release;
  rel(b, nt->stats);
  rel(b, nt->ids);
  rel(b, nt->labels);
  for (int k = 1; k >= 0; k--) rel(b, nt->dbuf[k]);
  for (int i = nt->m->n_layers - 1; i >= 0; i--) {
    rel(b, nt->bn_save[i]);
    rel(b, nt->argmax[i]);
    rel(b, nt->pre[i]);
    rel(b, nt->act[i + 1]);
  }
  rel(b, nt->act[0]);
  rel(b, nt->buffers);
  rel(b, nt->adam_v);
  rel(b, nt->adam_m);
  rel(b, nt->grads);
  rel(b, nt->params);
  memset(nt, 0, sizeof(*nt));
}

void net_upload_params(net *nt, const float *h_params) {
  nt->b->ops->upload(nt->b, nt->params, h_params, nt->m->n_params * sizeof(float));
  nt->b->ops->set_params(nt->b, nt->params, nt->m->n_params);
}

void net_download_params(net *nt, float *h_params) {
  nt->b->ops->download(nt->b, h_params, nt->params, nt->m->n_params * sizeof(float));
}

void net_upload_buffers(net *nt, const float *h_buffers) {
  nt->b->ops->upload(nt->b, nt->buffers, h_buffers, nt->m->n_buffers * sizeof(float));
}

void net_download_buffers(net *nt, float *h_buffers) {
  nt->b->ops->download(nt->b, h_buffers, nt->buffers, nt->m->n_buffers * sizeof(float));
}

void net_prep(net *nt, const uint8_t *d_images, const uint8_t *d_labels, const int32_t *h_ids,
              int count, const prep_params *pp) {
  if (count > nt->max_n) FATAL("batch of %d exceeds the allocated %d", count, nt->max_n);
  nt->b->ops->prep_batch(nt->b, nt->act[0], nt->labels, nt->ids, d_images, d_labels, h_ids, count, pp);
}

// The model's batch-norm constants, with the statistics summed over the ranks under bn_sync.
static bn_params bn_settings(const net *nt) {
  bn_params p = nt->m->bn;
  p.sync = nt->bn_sync;
  return p;
}

// Runs layer i's op from x into y (for a layer whose activation is separate, y is its pre
// buffer); returns what the op's output is (evaluation-mode dropout passes x through).
static const void *op_forward(net *nt, int i, void *y, const void *x, int count, int train,
                              uint64_t seed, uint32_t step) {
  backend *b = nt->b;
  const backend_ops *o = b->ops;
  const layer *l = &nt->m->layers[i];
  const float *P = nt->params;
  op_shape s = layer_shape(l, count);
  switch (l->kind) {
  case LAYER_CONV: o->conv_fwd(b, y, x, P + l->w_off, P + l->b_off, s, l->act); return y;
  case LAYER_POOL: o->maxpool_fwd(b, y, nt->argmax[i], x, s); return y;
  case LAYER_LINEAR: o->linear_fwd(b, y, x, P + l->w_off, P + l->b_off, s, l->act); return y;
  case LAYER_BN:
    o->bn_fwd(b, y, nt->bn_save[i], x, P + l->w_off, P + l->b_off, nt->buffers + l->buf_off, s,
              bn_settings(nt), train, l->act);
    return y;
  case LAYER_DROPOUT:
    if (!train || nt->m->dropout <= 0) return x; // identity at evaluation
    o->dropout_fwd(b, y, x, nt->ids, s, nt->m->dropout,
                   (dropout_key){seed, (uint32_t)l->dropout_index, step});
    return y;
  }
  FATAL("layer %d: unknown kind %d", i, (int)l->kind);
}

void net_forward(net *nt, int count, int train, uint64_t seed, uint32_t step) {
  const void *x = nt->act[0];
  for (int i = 0; i < nt->m->n_layers; i++) {
    const layer *l = &nt->m->layers[i];
    const void *y;
    if (act_separate(l)) {
      const void *z = op_forward(nt, i, nt->pre[i], x, count, train, seed, step);
      nt->b->ops->act_fwd(nt->b, nt->act[i + 1], z, output_shape(l, count), l->act);
      y = nt->act[i + 1];
    } else {
      y = op_forward(nt, i, nt->act[i + 1], x, count, train, seed, step);
    }
    nt->in[i] = x;
    nt->out[i] = y;
    x = y;
  }
}

void net_loss(net *nt, int count, float grad_scale) {
  const layer *last = &nt->m->layers[nt->m->n_layers - 1];
  nt->b->ops->xent(nt->b, grad_scale != 0 ? nt->dbuf[0] : NULL, nt->stats, nt->out[nt->m->n_layers - 1],
                  nt->labels, count, last->K, grad_scale);
}

void net_download_logits(net *nt, float *h_logits, int count) {
  const int last = nt->m->n_layers - 1;
  const size_t n = (size_t)count * nt->m->layers[last].K, ab = nt->b->act_bytes;
  if (ab == sizeof(float)) {
    nt->b->ops->download(nt->b, h_logits, nt->out[last], n * sizeof(float));
    return;
  }
  if (ab != sizeof(uint16_t)) FATAL("activations of %zu bytes: neither fp32 nor bf16", ab);
  // bf16 is the top half of an fp32: widening is exact.
  uint16_t *half = xmalloc(n * sizeof(uint16_t));
  nt->b->ops->download(nt->b, half, nt->out[last], n * sizeof(uint16_t));
  for (size_t i = 0; i < n; i++) {
    uint32_t bits = (uint32_t)half[i] << 16;
    memcpy(&h_logits[i], &bits, sizeof(bits));
  }
  free(half);
}

// Layer i's op backward from dy into dx (NULL: not needed) and its parameter gradients.
static void op_backward(net *nt, int i, void *dx, const void *dy, int count, uint64_t seed,
                        uint32_t step) {
  backend *b = nt->b;
  const backend_ops *o = b->ops;
  const layer *l = &nt->m->layers[i];
  const float *P = nt->params;
  float *G = nt->grads;
  op_shape s = layer_shape(l, count);
  switch (l->kind) {
  case LAYER_CONV:
    o->conv_bwd(b, dx, G + l->w_off, G + l->b_off, dy, nt->in[i], P + l->w_off, s);
    return;
  case LAYER_POOL: {
    const void *y = act_separate(l) ? nt->pre[i] : nt->out[i];
    if (dx) o->maxpool_bwd(b, dx, dy, nt->argmax[i], nt->in[i], y, s);
    return;
  }
  case LAYER_LINEAR:
    o->linear_bwd(b, dx, G + l->w_off, G + l->b_off, dy, nt->in[i], P + l->w_off, s);
    return;
  case LAYER_BN:
    o->bn_bwd(b, dx, G + l->w_off, G + l->b_off, dy, nt->in[i], P + l->w_off, nt->bn_save[i], s,
              bn_settings(nt));
    return;
  case LAYER_DROPOUT:
    if (dx) o->dropout_bwd(b, dx, dy, nt->ids, s, nt->m->dropout,
                           (dropout_key){seed, (uint32_t)l->dropout_index, step});
    return;
  }
  FATAL("layer %d: unknown kind %d", i, (int)l->kind);
}

// Starts the reduction of every bucket whose last layer (in backward order) is layer i.
static void buckets_ready(net *nt, int i, int *next, grad_sync *gs) {
  const bucket_plan *p = &nt->buckets;
  for (; *next < p->n && p->ready_layer[*next] == i; (*next)++)
    grad_sync_start(gs, p->begin[*next], p->end[*next] - p->begin[*next]);
  grad_sync_poll(gs);
}

void net_backward(net *nt, int count, uint64_t seed, uint32_t step, grad_sync *gs) {
  int cur = 0, next_bucket = 0; // dbuf[cur] holds the gradient of layer i's output
  for (int i = nt->m->n_layers - 1; i >= 0; i--) {
    const layer *l = &nt->m->layers[i];
    if (l->act != ACT_NONE) { // the activation's gradient first, into the other buffer
      nt->b->ops->act_bwd(nt->b, nt->dbuf[cur ^ 1], nt->dbuf[cur], nt->out[i],
                          output_shape(l, count), l->act);
      cur ^= 1;
    }
    // The first layer's input gradient is not needed.
    op_backward(nt, i, i == 0 ? NULL : nt->dbuf[cur ^ 1], nt->dbuf[cur], count, seed, step);
    cur ^= 1;
    if (gs) buckets_ready(nt, i, &next_bucket, gs);
  }
}

void net_adam(net *nt, const adam_params *ap) {
  nt->b->ops->adam(nt->b, nt->params, nt->grads, nt->adam_m, nt->adam_v, nt->m->n_params, ap);
}

void net_release_graph(net *nt) {
  if (!nt->graph) return;
  nt->b->ops->graph_free(nt->b, nt->graph);
  nt->graph = NULL;
}

static void step_eager(net *nt, const train_step *s, grad_sync *gs) {
  net_prep(nt, s->d_images, s->d_labels, s->h_ids, s->n, s->pp);
  net_forward(nt, s->n, 1, s->seed, s->step);
  net_loss(nt, s->n, s->grad_scale);
  net_backward(nt, s->n, s->seed, s->step, gs);
  if (gs) grad_sync_wait(gs);
  net_adam(nt, &s->adam);
}

void net_train_step(net *nt, const train_step *s, grad_sync *gs) {
  const backend_ops *o = nt->b->ops;
  if (!nt->graphs || !o->capture_begin || !s->full) {
    step_eager(nt, s, gs);
    return;
  }
  if (!nt->graph) {
    if (!nt->graph_warm) {
      nt->graph_warm = 1;
      step_eager(nt, s, gs);
      return;
    }
    o->capture_begin(nt->b);
    step_eager(nt, s, gs); // recorded, not run: the replay below runs it
    nt->graph = o->capture_end(nt->b);
    nt->graph_n = s->n;
    nt->graph_scale = s->grad_scale;
  }
  if (s->n != nt->graph_n || s->grad_scale != nt->graph_scale)
    FATAL("a full training step of %d images (gradient scale %g) differs from the captured one "
          "(%d, %g)", s->n, s->grad_scale, nt->graph_n, nt->graph_scale);
  step_vars v = {s->h_ids, s->n, s->pp->epoch, s->step, s->adam};
  o->replay(nt->b, nt->graph, &v);
  // The reductions ran inside the graph; this arms a device communicator's watchdog on them.
  if (gs) grad_sync_wait(gs);
}

void net_reset_stats(net *nt) { nt->b->ops->zero(nt->b, nt->stats, 2 * sizeof(double)); }

void net_read_stats(net *nt, double *loss_sum, double *correct) {
  double s[2];
  nt->b->ops->download(nt->b, s, nt->stats, sizeof(s));
  *loss_sum = s[0];
  *correct = s[1];
}
