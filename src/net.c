// net.c - walks the model's layer table through the backend ops (see net.h).
#include "net.h"

#include <string.h>

#include "check.h"

// Every buffer of a net, in one place: allocated on b, or with b == NULL only counted.
static size_t net_buffers(net *n, const model *m, backend *b, size_t act_bytes, int max_n) {
  size_t total = 0;
#define TAKE(ptr, bytes)                                       \
  do {                                                         \
    size_t take_ = (bytes);                                    \
    total += take_;                                            \
    if (b) (ptr) = b->ops->alloc(b, take_);                    \
  } while (0)
  size_t pbytes = m->n_params * sizeof(float);
  TAKE(n->params, pbytes);
  TAKE(n->grads, pbytes);
  TAKE(n->adam_m, pbytes);
  TAKE(n->adam_v, pbytes);
  size_t S = m->image_size;
  TAKE(n->act[0], (size_t)max_n * S * S * 3 * act_bytes);
  for (int i = 0; i < m->n_layers; i++) {
    const layer *l = &m->layers[i];
    size_t out = (size_t)max_n * l->oH * l->oW * l->K;
    TAKE(n->act[i + 1], out * act_bytes);
    if (l->kind == LAYER_POOL) TAKE(n->argmax[i], out * sizeof(int32_t));
  }
  for (int k = 0; k < 2; k++) TAKE(n->dbuf[k], (size_t)max_n * m->max_act * act_bytes);
  TAKE(n->labels, (size_t)max_n * sizeof(int32_t));
  TAKE(n->ids, (size_t)max_n * sizeof(int32_t));
  TAKE(n->stats, 2 * sizeof(double));
#undef TAKE
  return total;
}

size_t net_memory_bytes(const model *m, int max_n, size_t act_bytes) {
  net scratch;
  memset(&scratch, 0, sizeof(scratch));
  return net_buffers(&scratch, m, NULL, act_bytes, max_n);
}

void net_init(net *n, const model *m, backend *b, int max_n, size_t bucket_count) {
  memset(n, 0, sizeof(*n));
  n->m = m;
  n->b = b;
  n->max_n = max_n;
  n->bytes = net_buffers(n, m, b, b->act_bytes, max_n);
  model_plan_buckets(&n->buckets, m, bucket_count);
}

void net_free(net *n) {
  if (!n || !n->b) return;
  backend *b = n->b;
  net_release_graph(n);
  void (*rel)(backend *, void *) = b->ops->release;
  rel(b, n->stats);
  rel(b, n->ids);
  rel(b, n->labels);
  for (int k = 1; k >= 0; k--) rel(b, n->dbuf[k]);
  for (int i = n->m->n_layers - 1; i >= 0; i--) {
    rel(b, n->argmax[i]);
    rel(b, n->act[i + 1]);
  }
  rel(b, n->act[0]);
  rel(b, n->adam_v);
  rel(b, n->adam_m);
  rel(b, n->grads);
  rel(b, n->params);
  memset(n, 0, sizeof(*n));
}

void net_upload_params(net *n, const float *h_params) {
  n->b->ops->upload(n->b, n->params, h_params, n->m->n_params * sizeof(float));
  n->b->ops->set_params(n->b, n->params, n->m->n_params);
}

void net_download_params(net *n, float *h_params) {
  n->b->ops->download(n->b, h_params, n->params, n->m->n_params * sizeof(float));
}

void net_prep(net *n, const uint8_t *d_images, const uint8_t *d_labels, const int32_t *h_ids,
              int count, const prep_params *pp) {
  if (count > n->max_n) FATAL("batch of %d exceeds the allocated %d", count, n->max_n);
  n->b->ops->prep_batch(n->b, n->act[0], n->labels, n->ids, d_images, d_labels, h_ids, count, pp);
}

void net_forward(net *n, int count, int train, uint64_t seed, uint32_t step) {
  backend *b = n->b;
  const backend_ops *o = b->ops;
  const float *P = n->params;
  const void *x = n->act[0];
  for (int i = 0; i < n->m->n_layers; i++) {
    const layer *l = &n->m->layers[i];
    void *y = n->act[i + 1];
    switch (l->kind) {
    case LAYER_CONV:
      o->conv_fwd(b, y, x, P + l->w_off, P + l->b_off, count, l->H, l->W, l->C, l->K, l->relu);
      break;
    case LAYER_POOL: o->maxpool_fwd(b, y, n->argmax[i], x, count, l->H, l->W, l->C); break;
    case LAYER_LINEAR:
      o->linear_fwd(b, y, x, P + l->w_off, P + l->b_off, count, l->C, l->K, l->relu);
      break;
    case LAYER_DROPOUT:
      if (train && n->m->dropout > 0)
        o->dropout_fwd(b, y, x, n->ids, count, l->C, n->m->dropout,
                       (dropout_key){seed, (uint32_t)l->dropout_index, step});
      else
        y = (void *)x; // identity at evaluation
      break;
    }
    n->in[i] = x;
    n->out[i] = y;
    x = y;
  }
}

void net_loss(net *n, int count, float grad_scale) {
  const layer *last = &n->m->layers[n->m->n_layers - 1];
  n->b->ops->xent(n->b, grad_scale != 0 ? n->dbuf[0] : NULL, n->stats, n->out[n->m->n_layers - 1],
                  n->labels, count, last->K, grad_scale);
}

void net_backward(net *n, int count, uint64_t seed, uint32_t step, grad_sync *gs) {
  backend *b = n->b;
  const backend_ops *o = b->ops;
  const float *P = n->params;
  float *G = n->grads;
  int cur = 0, next_bucket = 0;
  for (int i = n->m->n_layers - 1; i >= 0; i--) {
    const layer *l = &n->m->layers[i];
    void *dy = n->dbuf[cur];
    // The first layer's input gradient is not needed.
    void *dx = i == 0 ? NULL : n->dbuf[cur ^ 1];
    switch (l->kind) {
    case LAYER_CONV:
      o->conv_bwd(b, dx, G + l->w_off, G + l->b_off, dy, n->in[i], P + l->w_off, n->out[i], count,
                  l->H, l->W, l->C, l->K, l->relu);
      break;
    case LAYER_POOL:
      if (dx) o->maxpool_bwd(b, dx, dy, n->argmax[i], n->in[i], n->out[i], count, l->H, l->W, l->C);
      break;
    case LAYER_LINEAR:
      o->linear_bwd(b, dx, G + l->w_off, G + l->b_off, dy, n->in[i], P + l->w_off, n->out[i],
                    count, l->C, l->K, l->relu);
      break;
    case LAYER_DROPOUT:
      if (dx) o->dropout_bwd(b, dx, dy, n->ids, count, l->C, n->m->dropout,
                             (dropout_key){seed, (uint32_t)l->dropout_index, step});
      break;
    }
    cur ^= 1;
    if (gs) {
      while (next_bucket < n->buckets.n && n->buckets.ready_layer[next_bucket] == i) {
        grad_sync_start(gs, n->buckets.begin[next_bucket],
                        n->buckets.end[next_bucket] - n->buckets.begin[next_bucket]);
        next_bucket++;
      }
      grad_sync_poll(gs);
    }
  }
}

void net_adam(net *n, const adam_params *ap) {
  n->b->ops->adam(n->b, n->params, n->grads, n->adam_m, n->adam_v, n->m->n_params, ap);
}

void net_release_graph(net *n) {
  if (!n->graph) return;
  n->b->ops->graph_free(n->b, n->graph);
  n->graph = NULL;
}

static void step_eager(net *n, const train_step *s, grad_sync *gs) {
  net_prep(n, s->d_images, s->d_labels, s->h_ids, s->n, s->pp);
  net_forward(n, s->n, 1, s->seed, s->step);
  net_loss(n, s->n, s->grad_scale);
  net_backward(n, s->n, s->seed, s->step, gs);
  if (gs) grad_sync_wait(gs);
  net_adam(n, &s->adam);
}

void net_train_step(net *n, const train_step *s, grad_sync *gs) {
  const backend_ops *o = n->b->ops;
  if (!n->graphs || !o->capture_begin || !s->full) {
    step_eager(n, s, gs);
    return;
  }
  if (!n->graph) {
    if (!n->graph_warm) {
      n->graph_warm = 1;
      step_eager(n, s, gs);
      return;
    }
    o->capture_begin(n->b);
    step_eager(n, s, gs); // recorded, not run: the replay below runs it
    n->graph = o->capture_end(n->b);
    n->graph_n = s->n;
    n->graph_scale = s->grad_scale;
  }
  if (s->n != n->graph_n || s->grad_scale != n->graph_scale)
    FATAL("a full training step of %d images (gradient scale %g) differs from the captured one "
          "(%d, %g)", s->n, s->grad_scale, n->graph_n, n->graph_scale);
  step_vars v = {s->h_ids, s->n, s->pp->epoch, s->step, s->adam};
  o->replay(n->b, n->graph, &v);
  // The reductions ran inside the graph; this arms a device communicator's watchdog on them.
  if (gs) grad_sync_wait(gs);
}

void net_reset_stats(net *n) { n->b->ops->zero(n->b, n->stats, 2 * sizeof(double)); }

void net_read_stats(net *n, double *loss_sum, double *correct) {
  double s[2];
  n->b->ops->download(n->b, s, n->stats, sizeof(s));
  *loss_sum = s[0];
  *correct = s[1];
}
