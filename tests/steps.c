// steps.c - see steps.h.
#include "steps.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "net.h"
#include "rng.h"

static void record_branches(steps_result *r, net *nt, const model *m, int n, int t) {
  backend *b = nt->b;
  if (b->act_bytes != sizeof(float)) FATAL("record_branches needs fp32 activations");
  for (int i = 0; i < m->n_layers; i++) {
    const layer *l = &m->layers[i];
    size_t count = (size_t)n * l->oH * l->oW * l->K;
    if (l->kind == LAYER_POOL) {
      r->argmax[t][i] = xmalloc(count * sizeof(int32_t));
      b->ops->download(b, r->argmax[t][i], nt->argmax[i], count * sizeof(int32_t));
    }
    if (l->act == ACT_RELU) {
      float *y = xmalloc(count * sizeof(float));
      b->ops->download(b, y, nt->out[i], count * sizeof(float));
      r->relu_mask[t][i] = xmalloc(count);
      for (size_t j = 0; j < count; j++) r->relu_mask[t][i][j] = y[j] > 0;
      free(y);
    }
  }
}

// The assembled input batch as fp32 (bf16 activations are widened on the host).
static void download_input(steps_result *r, net *nt, const steps_spec *s) {
  backend *b = nt->b;
  size_t xin = (size_t)s->n * s->size * s->size * 3;
  r->x = xmalloc(xin * sizeof(float));
  if (b->act_bytes == sizeof(float)) {
    b->ops->download(b, r->x, nt->act[0], xin * sizeof(float));
    return;
  }
  uint16_t *h = xmalloc(xin * 2);
  b->ops->download(b, h, nt->act[0], xin * 2);
  for (size_t i = 0; i < xin; i++) {
    uint32_t u = (uint32_t)h[i] << 16;
    memcpy(&r->x[i], &u, 4);
  }
  free(h);
}

// Step t's batch: the same n images every step, or (vary) a window moving by n/2 over 2n.
static void step_ids(int32_t *ids, const steps_spec *s, int t) {
  for (int i = 0; i < s->n; i++) ids[i] = s->vary ? (i + t * (s->n / 2)) % (2 * s->n) : i;
}

void steps_run(steps_result *r, backend *b, const model *m, const steps_spec *s) {
  memset(r, 0, sizeof(*r));
  if (s->n > 256 || s->steps > 8) FATAL("steps_run: at most 256 images and 8 steps");
  size_t P = m->n_params;
  net nt;
  net_init(&nt, m, b, s->n, (size_t)1 << 30);
  nt.graphs = s->graphs;
  r->init_params = xmalloc(P * sizeof(float));
  model_init_params(m, r->init_params, INIT_PYTORCH, s->seed); // non-zero biases: every term
  net_upload_params(&nt, r->init_params);
  if (m->n_buffers) { // running statistics start as the trainer's do
    float *h_buffers = xmalloc(m->n_buffers * sizeof(float));
    model_init_buffers(m, h_buffers);
    net_upload_buffers(&nt, h_buffers);
    free(h_buffers);
  }

  int images = 2 * s->n;
  size_t bytes = (size_t)images * 3072;
  uint8_t *img = xmalloc(bytes), lab[512];
  for (size_t i = 0; i < bytes; i++) img[i] = (uint8_t)(rng_bits(s->seed, 7, 0, 0, (uint32_t)i) & 255);
  for (int i = 0; i < images; i++) lab[i] = (uint8_t)(rng_bits(s->seed, 8, 0, 0, (uint32_t)i) % 10);
  step_ids(r->ids, s, 0);
  for (int i = 0; i < s->n; i++) r->labels[i] = lab[r->ids[i]];
  uint8_t *d_img = b->ops->alloc(b, bytes), *d_lab = b->ops->alloc(b, images);
  b->ops->upload(b, d_img, img, bytes);
  b->ops->upload(b, d_lab, lab, images);
  prep_params pp = {.size = s->size, .augment = 1, .flip_p = 0.5f, .seed = s->seed, .epoch = 0,
                    .mean = {0.49f, 0.48f, 0.45f}, .std = {0.25f, 0.24f, 0.26f}};

  r->grads = xmalloc(P * sizeof(float));
  r->params = xmalloc(P * sizeof(float));
  int32_t ids[256];
  for (int t = 0; t < s->steps; t++) {
    step_ids(ids, s, t);
    pp.epoch = s->vary ? (uint32_t)t : 0;
    train_step ts = {.d_images = d_img, .d_labels = d_lab, .h_ids = ids, .n = s->n,
                     .grad_scale = 1.0f / s->n, .pp = &pp, .seed = s->seed, .step = (uint32_t)t,
                     .adam = {s->lr, s->beta1, s->beta2, s->eps, s->weight_decay, t + 1, s->adamw},
                     .full = 1};
    net_reset_stats(&nt);
    net_train_step(&nt, &ts, NULL);
    // Backward and Adam leave the forward's outputs, argmaxes and input batch in place.
    if (s->record_branches) record_branches(r, &nt, m, s->n, t);
    if (t == 0) {
      download_input(r, &nt, s);
      b->ops->download(b, r->grads, nt.grads, P * sizeof(float)); // Adam reads, never writes them
    }
    double sum, correct;
    net_read_stats(&nt, &sum, &correct);
    r->loss[t] = sum / s->n;
  }
  net_download_params(&nt, r->params);
  if (m->n_buffers) {
    r->buffers = xmalloc(m->n_buffers * sizeof(float));
    net_download_buffers(&nt, r->buffers);
  }
  if (b->act_bytes == sizeof(float)) { // the input batch is still in place after the step
    const layer *last = &m->layers[m->n_layers - 1];
    net_forward(&nt, s->n, 0, 0, 0);
    r->eval_logits = xmalloc((size_t)s->n * last->K * sizeof(float));
    b->ops->download(b, r->eval_logits, nt.out[m->n_layers - 1], (size_t)s->n * last->K * sizeof(float));
  }
  b->ops->release(b, d_lab);
  b->ops->release(b, d_img);
  free(img);
  net_free(&nt);
}

void steps_free(steps_result *r) {
  for (int t = 0; t < 8; t++)
    for (int i = 0; i < MODEL_MAX_LAYERS; i++) {
      free(r->relu_mask[t][i]);
      free(r->argmax[t][i]);
    }
  free(r->x);
  free(r->init_params);
  free(r->grads);
  free(r->params);
  free(r->buffers);
  free(r->eval_logits);
  memset(r, 0, sizeof(*r));
}

double steps_tensor_err(const float *a, const float *b, size_t n) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < n; i++) {
    diff = fmax(diff, fabs((double)a[i] - b[i]));
    scale = fmax(scale, fabs((double)b[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

double steps_model_err(const model *m, const float *a, const float *b, char *worst, size_t len) {
  double w = 0;
  for (int i = 0; i < m->n_layers; i++) {
    const layer *l = &m->layers[i];
    if (!l->w_count) continue;
    double ew = steps_tensor_err(a + l->w_off, b + l->w_off, l->w_count);
    double eb = steps_tensor_err(a + l->b_off, b + l->b_off, l->b_count);
    if (fmax(ew, eb) >= w) {
      w = fmax(ew, eb);
      snprintf(worst, len, "layer %d %s", i, ew >= eb ? "weight" : "bias");
    }
  }
  return w;
}

static double max_abs(const float *a, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
  return m;
}

double steps_grads_err(const model *m, const float *a, const float *b, char *worst, size_t len,
                        double *cancelled) {
  double w = 0;
  *cancelled = 0;
  for (int i = 0; i < m->n_layers; i++) {
    const layer *l = &m->layers[i];
    if (!l->w_count) continue;
    int bn_next = i + 1 < m->n_layers && m->layers[i + 1].kind == LAYER_BN;
    double ew = steps_tensor_err(a + l->w_off, b + l->w_off, l->w_count), eb = 0;
    if (bn_next) {
      double noise = fmax(max_abs(a + l->b_off, l->b_count), max_abs(b + l->b_off, l->b_count));
      *cancelled = fmax(*cancelled, noise / max_abs(b + l->w_off, l->w_count));
    } else {
      eb = steps_tensor_err(a + l->b_off, b + l->b_off, l->b_count);
    }
    if (fmax(ew, eb) >= w) {
      w = fmax(ew, eb);
      snprintf(worst, len, "layer %d %s", i, ew >= eb ? "weight" : "bias");
    }
  }
  return w;
}
