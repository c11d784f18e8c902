// model.h - the VGG family as one table, the layer list both backends walk, the flat parameter
// layout, initialisation, and the gradient-bucket plan.
//
// Layer list for configuration X at input S: for each entry of the paper's table a 3x3 conv
// (pad 1) followed by a ReLU (its activation attribute), or a 2x2 max-pool; with batch norm
// (torchvision's vgg*_bn) every conv is followed by a BatchNorm2d layer, which carries the
// ReLU instead; then dropout -> FC 4096 -> ReLU -> dropout -> FC 4096 ->
// ReLU -> FC classes (the notebook's classifier). The first FC's input is 512 x (S/32)^2
// (times the width) in (h, w, c) order. `width` scales every channel count and the FC width.
//
// Parameters: ONE flat buffer, tensors in layer order, each layer's weight then its bias:
//   conv  w (K, 3, 3, C), b (K)        linear  w (out, in), b (out)
//   bn    w = gamma (C), b = beta (C); its buffers: running mean (C), then running variance (C)
// Gradients, Adam m and v use the same layout.
// Non-trainable state (a BatchNorm's running mean and variance): a second flat fp32 buffer of
// n_buffers elements beside the parameters, tensors in layer order at buf_off (buf_count
// each); never reduced or stepped, but carried wherever the parameters go (checkpoints, the
// resume broadcast, the best model). PyTorch calls these tensors buffers.
#ifndef VGG_MODEL_H
#define VGG_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

typedef enum { LAYER_CONV, LAYER_POOL, LAYER_DROPOUT, LAYER_LINEAR, LAYER_BN } layer_kind;

// A layer is one op (its kind) and the activation that follows it (act, applied by the walker:
// net.c fuses it into the op where the backend does, else runs it as an op of its own).
typedef struct layer {
  layer_kind kind;
  activation act;
  int H, W, C;   // input (N, H, W, C); for dropout/linear H = W = 1 and C = features; bn K = C
  int oH, oW, K; // output
  size_t w_off, w_count, b_off, b_count; // into the flat parameter buffer (0 counts: none)
  size_t buf_off, buf_count;             // into the flat buffer of non-trainable state
  int dropout_index; // which dropout layer (keys its mask)
} layer;

#define MODEL_MAX_LAYERS 48
#define MODEL_MAX_BUCKETS 64

typedef struct model {
  char name[16];
  float width;
  int image_size, classes;
  float dropout;
  int batchnorm;   // a BatchNorm2d after every conv
  bn_params bn;    // its eps and momentum (PyTorch's defaults)
  int n_layers;
  layer layers[MODEL_MAX_LAYERS];
  size_t n_params;
  size_t n_buffers; // non-trainable state elements (0 for the plain VGG table)
  size_t max_act; // largest per-sample activation element count, input included
} model;

// Builds the layer list; name is vgg11|vgg13|vgg16|vgg19, batchnorm 0 or 1. Fatal on an
// unknown name or a size that is not a multiple of 32.
void model_build(model *m, const char *name, float width, int image_size, int classes,
                 float dropout, int batchnorm);
// Fills the flat host parameter buffer deterministically from the seed (a bn layer's gamma 1
// and beta 0 whatever the scheme, as PyTorch).
void model_init_params(const model *m, float *h_params, init_kind init, uint64_t seed);
// Fills the flat host buffer of non-trainable state (n_buffers floats) with its initial values
// (running mean 0, running variance 1).
void model_init_buffers(const model *m, float *h_buffers);
// Training FLOPs per image (forward + backward = 3x the forward multiply-adds x 2).
double model_train_flops(const model *m);
void model_print(const model *m, FILE *f);
// The model as one JSON object (`vgg_dist --print-model`; what the PyTorch scripts build their
// nn.Module from): name, width, image_size, classes, dropout, n_params and the layers in order,
// each with its kind, act, input and output shapes (NHWC; C = features for dropout/linear),
// and its weight/bias offsets and counts in the flat buffer. See model.c for the keys.
void model_print_json(const model *m, FILE *f);

// Gradient buckets for overlapping the all-reduce with backward. Backward finishes layers
// from last to first, so a bucket is a contiguous range [begin, end) of the flat buffer that
// becomes final when backward has finished layer `ready_layer`. Buckets hold at least
// bucket_count elements (the last one may hold fewer); they tile [0, n_params).
typedef struct bucket_plan {
  int n;
  size_t begin[MODEL_MAX_BUCKETS], end[MODEL_MAX_BUCKETS];
  int ready_layer[MODEL_MAX_BUCKETS];
} bucket_plan;
void model_plan_buckets(bucket_plan *p, const model *m, size_t bucket_count);

#endif
