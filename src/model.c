// model.c - the VGG table (Simonyan & Zisserman, Table 1) and everything derived from it.
#include "model.h"

#include <math.h>
#include <string.h>

#include "check.h"
#include "rng.h"

// Channel counts of the conv layers, 0 = max-pool. Adding a configuration is a row here.
static const struct {
  const char *name, *paper;
  int cfg[24];
} vgg_table[] = {
    {"vgg11", "A", {64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0, -1}},
    {"vgg13", "B", {64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0, -1}},
    {"vgg16", "D", {64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0, -1}},
    {"vgg19", "E", {64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512, 512, 0, -1}},
};

static int scaled(int channels, float width) {
  int c = (int)lround(channels * (double)width);
  return c < 1 ? 1 : c;
}

static layer *push(model *m) {
  if (m->n_layers == MODEL_MAX_LAYERS) FATAL("too many layers");
  layer *l = &m->layers[m->n_layers++];
  memset(l, 0, sizeof(*l));
  return l;
}

static void add_params(model *m, layer *l, size_t w_count, size_t b_count) {
  l->w_off = m->n_params;
  l->w_count = w_count;
  l->b_off = l->w_off + w_count;
  l->b_count = b_count;
  m->n_params += w_count + b_count;
}

static void add_linear(model *m, int in, int out, activation act) {
  layer *l = push(m);
  l->kind = LAYER_LINEAR;
  l->H = l->W = l->oH = l->oW = 1;
  l->C = in;
  l->K = out;
  l->act = act;
  add_params(m, l, (size_t)out * in, out);
}

// A BatchNorm2d over C channels at H x H, followed by `act`: gamma and beta are its
// parameters, the running mean and variance its buffers.
static void add_bn(model *m, int H, int C, activation act) {
  layer *l = push(m);
  l->kind = LAYER_BN;
  l->act = act;
  l->H = l->W = l->oH = l->oW = H;
  l->C = l->K = C;
  add_params(m, l, C, C);
  l->buf_off = m->n_buffers;
  l->buf_count = 2 * (size_t)C;
  m->n_buffers += l->buf_count;
}

static void add_dropout(model *m, int features, int index) {
  layer *l = push(m);
  l->kind = LAYER_DROPOUT;
  l->H = l->W = l->oH = l->oW = 1;
  l->C = l->K = features;
  l->dropout_index = index;
}

void model_build(model *m, const char *name, float width, int image_size, int classes,
                 float dropout, int batchnorm) {
  memset(m, 0, sizeof(*m));
  int row = -1;
  for (size_t i = 0; i < sizeof(vgg_table) / sizeof(vgg_table[0]); i++)
    if (strcmp(vgg_table[i].name, name) == 0) row = (int)i;
  if (row < 0) DIE_USAGE("--model: unknown model '%s' (vgg11 | vgg13 | vgg16 | vgg19)", name);
  if (image_size < 32 || image_size % 32) DIE_USAGE("--image-size: %d is not a multiple of 32", image_size);
  snprintf(m->name, sizeof(m->name), "%s", name);
  m->width = width;
  m->image_size = image_size;
  m->classes = classes;
  m->dropout = dropout;
  m->batchnorm = batchnorm;
  m->bn = (bn_params){1e-5f, 0.1f, NULL}; // each rank's statistics unless the trainer syncs them

  int H = image_size, C = 3;
  m->max_act = (size_t)H * H * C;
  for (const int *c = vgg_table[row].cfg; *c >= 0; c++) {
    layer *l = push(m);
    l->H = l->W = H;
    l->C = C;
    if (*c == 0) {
      l->kind = LAYER_POOL;
      H /= 2;
      l->K = C;
    } else {
      l->kind = LAYER_CONV;
      l->act = batchnorm ? ACT_NONE : ACT_RELU;
      l->K = scaled(*c, width);
      add_params(m, l, (size_t)l->K * 9 * C, l->K);
      C = l->K;
    }
    l->oH = l->oW = H;
    if (l->kind == LAYER_CONV && batchnorm) add_bn(m, H, C, ACT_RELU); // l is no longer the last
    size_t out = (size_t)H * H * C;
    if (out > m->max_act) m->max_act = out;
  }
  int fc = scaled(4096, width), flat = H * H * C;
  add_dropout(m, flat, 0);
  add_linear(m, flat, fc, ACT_RELU);
  add_dropout(m, fc, 1);
  add_linear(m, fc, fc, ACT_RELU);
  add_linear(m, fc, classes, ACT_NONE);
  if ((size_t)fc > m->max_act) m->max_act = fc;
}

void model_init_params(const model *m, float *p, init_kind init, uint64_t seed) {
  if (init == INIT_AUTO) FATAL("model_init_params: INIT_AUTO is resolved by config_parse first");
  for (int i = 0; i < m->n_layers; i++) {
    const layer *l = &m->layers[i];
    if (!l->w_count) continue;
    if (l->kind == LAYER_BN) { // affine weight 1, bias 0 whatever the scheme
      for (size_t j = 0; j < l->w_count; j++) p[l->w_off + j] = 1.0f;
      memset(p + l->b_off, 0, l->b_count * sizeof(float));
      continue;
    }
    int conv = l->kind == LAYER_CONV;
    double fan_in = conv ? 9.0 * l->C : l->C, fan_out = conv ? 9.0 * l->K : l->K;
    uint32_t stream = RNG_STREAM_INIT + (uint32_t)i;
    for (size_t j = 0; j < l->w_count; j++) {
      double v;
      if (init == INIT_PYTORCH) // kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        v = (2.0 * rng_uniform(seed, stream, 0, 0, (uint32_t)j) - 1.0) / sqrt(fan_in);
      else if (init == INIT_TORCHVISION && conv) // kaiming_normal_(fan_out, relu)
        v = rng_normal(seed, stream, 0, 0, (uint32_t)j) * sqrt(2.0 / fan_out);
      else // torchvision's linears and the paper: N(0, 0.01)
        v = rng_normal(seed, stream, 0, 0, (uint32_t)j) * 0.01;
      p[l->w_off + j] = (float)v;
    }
    for (size_t j = 0; j < l->b_count; j++)
      p[l->b_off + j] =
          init == INIT_PYTORCH
              ? (float)((2.0 * rng_uniform(seed, stream, 1, 0, (uint32_t)j) - 1.0) / sqrt(fan_in))
              : 0.0f;
  }
}

void model_init_buffers(const model *m, float *h_buffers) {
  for (int i = 0; i < m->n_layers; i++) {
    const layer *l = &m->layers[i];
    if (l->kind != LAYER_BN) continue;
    float *mean = h_buffers + l->buf_off, *var = mean + l->C;
    for (int c = 0; c < l->C; c++) {
      mean[c] = 0.0f;
      var[c] = 1.0f;
    }
  }
}

double model_train_flops(const model *m) {
  double macs = 0;
  for (int i = 0; i < m->n_layers; i++) {
    const layer *l = &m->layers[i];
    if (l->kind == LAYER_CONV) macs += (double)l->oH * l->oW * l->K * l->C * 9;
    if (l->kind == LAYER_LINEAR) macs += (double)l->C * l->K;
  }
  return 3 * 2 * macs;
}

void model_print(const model *m, FILE *f) {
  int convs = 0;
  for (int i = 0; i < m->n_layers; i++) convs += m->layers[i].kind == LAYER_CONV;
  fprintf(f, "model %s (%d conv + 3 FC%s), width %g, input %dx%d: %zu parameters, "
             "%.2f GFLOP/image for training\n",
          m->name, convs, m->batchnorm ? ", batch norm" : "", m->width, m->image_size,
          m->image_size, m->n_params, model_train_flops(m) * 1e-9);
}

static const char *layer_kind_name(layer_kind k) {
  switch (k) {
  case LAYER_CONV: return "conv";
  case LAYER_POOL: return "pool";
  case LAYER_DROPOUT: return "dropout";
  case LAYER_LINEAR: return "linear";
  case LAYER_BN: return "bn";
  }
  return "?";
}

static const char *activation_name(activation a) {
  switch (a) {
  case ACT_NONE: return "none";
  case ACT_RELU: return "relu";
  }
  return "?";
}

// One layer per line. Keys: kind (conv | pool | dropout | linear | bn), act (the activation
// that follows it: "relu" or "none"),
// in/out [H, W, C] (dropout and linear: [1, 1, features]); conv: kernel 3, pad 1; pool: 2x2
// max, stride 2; dropout: index (keys its mask), p; bn: eps, momentum; with parameters:
// w_offset, w_count, w_shape (conv (K, 3, 3, C), linear (out, in), bn (C)), b_offset, b_count;
// with non-trainable state,
// buf_offset, buf_count (into the buffer of n_buffers floats). A dropout or linear layer whose
// input is the flattened last feature map has flat_hwc [H, W, C]: its features are in (h, w, c)
// order (PyTorch flattens (c, h, w)).
static void layer_print_json(const model *m, const layer *l, const int flat_hwc[3], FILE *f) {
  fprintf(f, "{\"kind\": \"%s\", \"act\": \"%s\", \"in\": [%d, %d, %d], \"out\": [%d, %d, %d]",
          layer_kind_name(l->kind), activation_name(l->act), l->H, l->W, l->C, l->oH, l->oW, l->K);
  if (l->kind == LAYER_CONV) fprintf(f, ", \"kernel\": 3, \"pad\": 1");
  if (l->kind == LAYER_POOL) fprintf(f, ", \"kernel\": 2, \"stride\": 2");
  if (l->kind == LAYER_DROPOUT)
    fprintf(f, ", \"index\": %d, \"p\": %g", l->dropout_index, m->dropout);
  if (l->kind == LAYER_BN) fprintf(f, ", \"eps\": %g, \"momentum\": %g", m->bn.eps, m->bn.momentum);
  if (flat_hwc) fprintf(f, ", \"flat_hwc\": [%d, %d, %d]", flat_hwc[0], flat_hwc[1], flat_hwc[2]);
  if (l->w_count) {
    fprintf(f, ", \"w_offset\": %zu, \"w_count\": %zu, \"w_shape\": ", l->w_off, l->w_count);
    if (l->kind == LAYER_CONV) fprintf(f, "[%d, 3, 3, %d]", l->K, l->C);
    else if (l->kind == LAYER_BN) fprintf(f, "[%d]", l->C);
    else fprintf(f, "[%d, %d]", l->K, l->C);
    fprintf(f, ", \"b_offset\": %zu, \"b_count\": %zu", l->b_off, l->b_count);
  }
  if (l->buf_count)
    fprintf(f, ", \"buf_offset\": %zu, \"buf_count\": %zu", l->buf_off, l->buf_count);
  fprintf(f, "}");
}

void model_print_json(const model *m, FILE *f) {
  fprintf(f, "{\"name\": \"%s\", \"width\": %g, \"image_size\": %d, \"classes\": %d, "
             "\"dropout\": %g, \"batchnorm\": %s, \"n_params\": %zu, \"n_buffers\": %zu,\n"
             " \"layers\": [\n",
          m->name, m->width, m->image_size, m->classes, m->dropout,
          m->batchnorm ? "true" : "false", m->n_params, m->n_buffers);
  int hwc[3] = {m->image_size, m->image_size, 3}, from_map = 1; // the last feature map; input still its flattening?
  for (int i = 0; i < m->n_layers; i++) {
    const layer *l = &m->layers[i];
    int spatial = l->kind == LAYER_CONV || l->kind == LAYER_POOL || l->kind == LAYER_BN;
    if (spatial) hwc[0] = l->oH, hwc[1] = l->oW, hwc[2] = l->K;
    fprintf(f, "  ");
    layer_print_json(m, l, !spatial && from_map ? hwc : NULL, f);
    fprintf(f, "%s\n", i + 1 < m->n_layers ? "," : "");
    if (l->kind == LAYER_LINEAR) from_map = 0; // its output features are its own
  }
  fprintf(f, " ]}\n");
}

void model_plan_buckets(bucket_plan *p, const model *m, size_t bucket_count) {
  memset(p, 0, sizeof(*p));
  size_t end = m->n_params;
  for (int i = m->n_layers - 1; i >= 0; i--) {
    const layer *l = &m->layers[i];
    if (!l->w_count) continue;
    size_t begin = l->w_off;
    // Close the bucket here when it is big enough (the last free slot takes the rest), and
    // always at the first parameter tensor (offset 0).
    if (begin == 0 || (end - begin >= bucket_count && p->n < MODEL_MAX_BUCKETS - 1)) {
      p->begin[p->n] = begin;
      p->end[p->n] = end;
      p->ready_layer[p->n] = i;
      p->n++;
      end = begin;
    }
  }
}
