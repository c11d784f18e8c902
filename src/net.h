// net.h - one model instance on one backend: the flat parameter/gradient/Adam buffers, the
// activations (allocated once for the largest per-rank batch), and the passes that walk the
// model's layer table through the backend's ops.
//
// A training step on a rank (net_train_step): net_prep (batch assembly) -> net_forward(train)
// -> net_loss (grad scale 1 / GLOBAL batch) -> net_backward (starts each gradient bucket's
// all-reduce as soon as its layers are done) -> grad_sync_wait -> net_adam. Evaluation: prep, forward(eval),
// loss without gradient. Loss and accuracy sums accumulate in backend memory (stats) and are
// read with net_read_stats, so a step needs no host synchronisation.
#ifndef VGG_NET_H
#define VGG_NET_H

#include "backend.h"
#include "comm.h"
#include "model.h"

typedef struct net {
  const model *m;
  backend *b;
  int max_n;
  size_t bytes;                            // backend memory of all the buffers below
  float *params, *grads, *adam_m, *adam_v; // n_params each, backend memory
  float *buffers;                          // non-trainable state, n_buffers, backend memory
  void *act[MODEL_MAX_LAYERS + 1];         // act[0]: input; act[i + 1]: output of layer i
  const void *in[MODEL_MAX_LAYERS];        // what layer i read and wrote in the last forward
  const void *out[MODEL_MAX_LAYERS];       // (eval-mode dropout passes its input through)
  void *pre[MODEL_MAX_LAYERS];             // an op's output before an activation it does not
                                           // fuse (act_fwd reads it; NULL where none)
  int32_t *argmax[MODEL_MAX_LAYERS];
  float *bn_save[MODEL_MAX_LAYERS];        // a bn layer's batch mean and 1/std (2C), for backward
  void *dbuf[2];                           // activation-gradient ping-pong
  int32_t *labels, *ids;
  double *stats;                           // [loss sum, correct] since the last reset
  bucket_plan buckets;
  // Batch norm's statistics over the global batch: the communicator's sum over the ranks
  // (grad_sync_rank_sum), or NULL for each rank's share alone. Set after net_init.
  const rank_sum *bn_sync;
  // Captured steps (net_train_step): on when `graphs` is set and the backend can capture.
  int graphs;
  int graph_warm;    // a full step has run eagerly (plans built, workspaces sized)
  void *graph;       // the captured full step
  int graph_n;       // its per-rank batch and gradient scale
  float graph_scale;
} net;

// One training step of this rank (see the top of this file).
typedef struct train_step {
  const uint8_t *d_images, *d_labels; // the dataset, backend memory
  const int32_t *h_ids;               // this rank's samples (host), n of them
  int n;
  float grad_scale;                   // 1 / GLOBAL batch
  const prep_params *pp;              // only its epoch may change between captured steps
  uint64_t seed;
  uint32_t step;                      // keys the dropout masks
  adam_params adam;                   // step t = step + 1 in a run
  int full;                           // a full global batch: the same shape on every rank
} train_step;

void net_init(net *nt, const model *m, backend *b, int max_n, size_t bucket_count);
// The backend memory net_init allocates (parameters, gradients, Adam state, activations for
// max_n images of act_bytes per element), without allocating it.
size_t net_memory_bytes(const model *m, int max_n, size_t act_bytes);
void net_free(net *nt); // accepts NULL fields

void net_upload_params(net *nt, const float *h_params);
void net_download_params(net *nt, float *h_params);
// The non-trainable state (m->n_buffers floats), to and from the host.
void net_upload_buffers(net *nt, const float *h_buffers);
void net_download_buffers(net *nt, float *h_buffers);

// Assemble batch rows 0..count-1 from the backend-resident dataset.
void net_prep(net *nt, const uint8_t *d_images, const uint8_t *d_labels, const int32_t *h_ids,
              int count, const prep_params *pp);
// Forward through every layer: its op, then its activation (fused into conv, linear and bn,
// an act_fwd of its own after other ops). train: dropout active with masks keyed by (seed,
// step, ids), and batch norm normalising with the batch's statistics and updating the running
// ones in nt->buffers (else with the running ones).
void net_forward(net *nt, int count, int train, uint64_t seed, uint32_t step);
// Adds loss sum / correct to stats; with grad_scale != 0 also leaves dlogits for backward.
void net_loss(net *nt, int count, float grad_scale);
// Backward into nt->grads, each layer's activation (act_bwd) then its op; the activation
// gradients ping-pong between dbuf[0] and dbuf[1], so no op overwrites the dy it reads. When
// gs is non-NULL each bucket's reduction starts when ready.
void net_backward(net *nt, int count, uint64_t seed, uint32_t step, grad_sync *gs);
void net_adam(net *nt, const adam_params *ap);
// prep, forward, loss, backward, wait for the reductions, Adam. With nt->graphs on a backend
// that captures, full steps become a CUDA graph: the first runs eagerly (it builds the plans
// and sizes the workspaces), the second is captured, and every full step from then on is one
// replay. Other steps (a short last batch) run eagerly. `full` must be the same on every rank,
// since whether a collective is captured must be.
void net_train_step(net *nt, const train_step *s, grad_sync *gs);
// Frees the captured step, if any (net_free does too). A graph holding NCCL work keeps its
// communicator from being destroyed (NCCL waits for such graphs to go), so this comes before
// grad_sync_free.
void net_release_graph(net *nt);

// The last forward's logits, rows 0..count-1 of (count, classes), into h_logits as fp32 (a
// backend with 2-byte activations holds bf16: widened exactly).
void net_download_logits(net *nt, float *h_logits, int count);

void net_reset_stats(net *nt);
void net_read_stats(net *nt, double *loss_sum, double *correct);

#endif
