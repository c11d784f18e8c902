// steps.h - a reproducible few-step training run of one model on one backend, the common
// part of the PyTorch golden test (tests/test_golden.c) and the CPU-vs-GPU parity check
// (tests/tools/parity_step.c): same parameters, same uint8 batch through the real batch
// assembly, dropout keyed as in training; records every step's loss, the gradients of the
// first step and the parameters after the last Adam step.
#ifndef VGG_STEPS_H
#define VGG_STEPS_H

#include "backend.h"
#include "model.h"

typedef struct steps_spec {
  const char *model;
  float width, dropout, lr, weight_decay, beta1, beta2, eps;
  int size, n, steps, adamw;
  uint64_t seed;
  int record_branches; // keep every step's ReLU masks and max-pool argmaxes (fp32 backends)
  int vary;            // step t: another batch (a window moving by n/2 over 2n images), epoch t
  int graphs;          // through CUDA graphs where the backend has them (see net_train_step)
} steps_spec;

typedef struct steps_result {
  double loss[8];
  float *x;            // the first step's assembled input batch (n, size, size, 3), fp32
  float *init_params;  // the parameters before the first step
  float *grads;        // gradients of the first step
  float *params;       // parameters after the last step
  float *buffers;      // the non-trainable state after the last step (NULL when there is none)
  float *eval_logits;  // fp32 backends: logits (n, classes) of the last step's batch in
                       // evaluation mode with the final parameters and running statistics
  int32_t labels[256], ids[256]; // the first step's
  // With record_branches, per step and layer: the max-pool argmaxes and the ReLU decisions
  // (out > 0) of layers whose activation is a ReLU, in the backend's (N, H, W, C) order.
  uint8_t *relu_mask[8][MODEL_MAX_LAYERS];
  int32_t *argmax[8][MODEL_MAX_LAYERS];
} steps_result;

// Runs spec on backend b (model m already built from spec); fills r (free with steps_free).
void steps_run(steps_result *r, backend *b, const model *m, const steps_spec *spec);
void steps_free(steps_result *r);
// max |a - b| / max |b| over one tensor.
double steps_tensor_err(const float *a, const float *b, size_t n);
// The gradients' worst relative error per tensor, as steps_model_err, except the bias of a
// conv followed by batch norm: the normalisation subtracts the channel mean, so that gradient
// is zero in exact arithmetic and both sides hold rounding noise (relative errors of O(1)).
// Those are checked to be noise instead: *cancelled is the largest of max |bias gradient|
// (either side) / max |that conv's weight gradient|.
double steps_grads_err(const model *m, const float *a, const float *b, char *worst, size_t len,
                       double *cancelled);
// Worst per-tensor error over the model's flat buffers; names the worst tensor in worst.
double steps_model_err(const model *m, const float *a, const float *b, char *worst, size_t len);

#endif
