// backend.h - the compute interface both backends implement (an ops table).
//
// The model and the trainer (src/) call only these functions; they never dereference backend
// memory. Pointers returned by ops->alloc are "backend memory" (host memory on the CPU
// backend, device memory on CUDA); every tensor argument below is backend memory unless its
// name starts with h_.
//
// Layouts (fixed; checkpoints and the PyTorch golden tests depend on them):
//   activations          NHWC, (N, H, W, C); the flatten before the first FC is (h, w, c) order
//   conv weight          (K, 3, 3, C)   ("KRSC"; PyTorch's is (K, C, 3, 3))
//   linear weight        (out, in)      (as PyTorch)
//   biases               (K) / (out)
// Activations and activation gradients are elements of backend->act_bytes bytes each (4 for
// fp32; a bf16 backend uses 2). Parameters, gradients and Adam state are always fp32.
// Parameter gradients are written (not accumulated): each parameter is used once per step.
// Every op takes its sizes (an op_shape) after its tensors, then its settings; N may be 0 (a
// rank with no samples in a short final batch), in which case outputs of size 0 are untouched
// and weight gradients are set to zero.
#ifndef VGG_BACKEND_H
#define VGG_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct backend backend;

// Batch assembly from the uint8 dataset: for i < n, image h_ids[i] of `images` (records of
// 3072 bytes: R, G, B planes of 32x32) is converted to float in [0, 1], flipped horizontally
// when augment && rng_uniform(seed, RNG_STREAM_FLIP, epoch, h_ids[i], 0) < flip_p, resized
// bilinearly to size x size (torchvision Resize, antialias off, align_corners=False; a copy
// when size == 32), normalised per channel ((v - mean[c]) / std[c]) and written to x in NHWC.
typedef struct prep_params {
  int size;
  int augment;
  float flip_p;
  uint64_t seed;
  uint32_t epoch;
  float mean[3], std[3];
} prep_params;

// One Adam/AdamW step with PyTorch semantics over a flat buffer:
//   Adam:  g += wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//          p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//   AdamW: p *= 1 - lr * wd first, then the same update with g unmodified.
typedef struct adam_params {
  float lr, beta1, beta2, eps, weight_decay;
  int step; // t, 1-based
  int decoupled;
} adam_params;

// Dropout mask key: unit j of sample ids[n] is kept iff
// rng_dropout_keep(seed, layer, step, ids[n], j, p); kept units are scaled by 1 / (1 - p).
typedef struct dropout_key {
  uint64_t seed;
  uint32_t layer;
  uint32_t step;
} dropout_key;

// The shape of an op's data (see backend_ops): input (N, H, W, C) and K output channels.
typedef struct op_shape {
  int N, H, W, C, K;
} op_shape;

// An activation that follows an op. The model gives it as a layer's attribute (layer.act) and
// the walker (net.c) applies it: fused into conv_fwd / linear_fwd as their epilogue (where the
// backends fuse it: the CUDA bias+ReLU kernel, cuBLASLt's epilogue), or through act_fwd after
// any other op. Its backward is always act_bwd, into a buffer of its own, so no backward
// overwrites an input it does not own.
typedef enum { ACT_NONE = 0, ACT_RELU = 1 } activation;

// A sum over every rank of `count` doubles of backend memory, in place, in stream order (on a
// device: enqueued behind the ops before it, ahead of the ops after it; the host does not
// wait). The communicator provides it (grad_sync_rank_sum in comm.h): batch norm's statistics
// under --sync-bn. A collective: every rank makes the same calls in the same order.
typedef struct rank_sum {
  void (*sum)(void *ctx, double *buf, size_t count);
  void *ctx;
} rank_sum;

// BatchNorm2d's constants (torchvision's vgg*_bn: eps 1e-5, momentum 0.1), and where its batch
// statistics come from: sync NULL, this rank's share of the batch alone (PyTorch DDP's
// default); else the whole global batch, its sums added over the ranks by sync (PyTorch's
// SyncBatchNorm), so the result does not depend on how the batch is split.
typedef struct bn_params {
  float eps, momentum;
  const rank_sum *sync;
} bn_params;

// What changes from one otherwise identical training step to the next (see capture_begin).
typedef struct step_vars {
  const int32_t *h_ids; // the batch's sample ids (host memory, n of them: the captured count)
  int n;
  uint32_t epoch;       // prep_params.epoch (flips)
  uint32_t step;        // dropout_key.step
  adam_params adam;     // its lr and step are the variable part
} step_vars;

typedef struct backend_ops {
  const char *name;
  void (*destroy)(backend *b);

  // Memory. alloc returns zero-filled memory and aborts with a clear message when it cannot.
  void *(*alloc)(backend *b, size_t bytes);
  void (*release)(backend *b, void *p);
  void (*upload)(backend *b, void *dst, const void *h_src, size_t bytes);
  void (*download)(backend *b, void *h_dst, const void *src, size_t bytes);
  void (*zero)(backend *b, void *p, size_t bytes);
  void (*sync)(backend *b);
  // The flat fp32 parameter buffer (so a reduced-precision backend can keep a shadow copy;
  // refreshed by adam and by this call after parameters were uploaded).
  void (*set_params)(backend *b, const float *params, size_t count);

  // x (n, size, size, 3) act type; labels (n) int32; ids (n) int32 copy of h_ids.
  void (*prep_batch)(backend *b, void *x, int32_t *labels, int32_t *ids, const uint8_t *images,
                     const uint8_t *image_labels, const int32_t *h_ids, int n,
                     const prep_params *p);

  // The shape of an op's data: input (N, H, W, C), K output channels. conv: K filters, output
  // (N, H, W, K); pool: output (N, H/2, W/2, C), K = C; linear: H = W = 1, C the input and K
  // the output features; dropout and the activations: elementwise over N * H * W * C, K = C.

  // y = act(conv3x3_pad1(x, w) + bias); x (N,H,W,C), w (K,3,3,C), y (N,H,W,K). The activation
  // is a fused epilogue (see activation).
  void (*conv_fwd)(backend *b, void *y, const void *x, const float *w, const float *bias,
                   op_shape s, activation act);
  // dy (N,H,W,K) is the gradient of the convolution's output (an activation's backward has
  // already run). Writes dw, db, and dx (N,H,W,C) unless dx == NULL; reads dy only.
  void (*conv_bwd)(backend *b, void *dx, float *dw, float *db, const void *dy, const void *x,
                   const float *w, op_shape s);

  // 2x2 max-pool, stride 2 (H, W even). y (N,H/2,W/2,C); argmax (N,H/2,W/2,C) int32 index
  // into x's plane for the CPU backend (a backend may leave it unused and recompute from x, y).
  void (*maxpool_fwd)(backend *b, void *y, int32_t *argmax, const void *x, op_shape s);
  void (*maxpool_bwd)(backend *b, void *dx, const void *dy, const int32_t *argmax, const void *x,
                      const void *y, op_shape s);

  // y (N,K) = act(x (N,C) w^T + bias), w (K, C); the activation is a fused epilogue.
  void (*linear_fwd)(backend *b, void *y, const void *x, const float *w, const float *bias,
                     op_shape s, activation act);
  // dy (N,K) as conv_bwd's: reads dy only, writes dw, db and dx (N,C) unless dx == NULL.
  void (*linear_bwd)(backend *b, void *dx, float *dw, float *db, const void *dy, const void *x,
                     const float *w, op_shape s);

  // An activation on its own: y = act(x) (y may be x); and its backward from the activation's
  // output y: ReLU passes dy where y > 0 (or y is NaN, as PyTorch's threshold_backward) and
  // writes 0 elsewhere. dx != dy.
  void (*act_fwd)(backend *b, void *y, const void *x, op_shape s, activation act);
  void (*act_bwd)(backend *b, void *dx, const void *dy, const void *y, op_shape s,
                  activation act);

  // Batch normalisation (BatchNorm2d) of x (N,H,W,C) per channel over (N, H, W), then the
  // affine gamma, beta (C each) and the activation (a fused epilogue, as conv_fwd's):
  //   train: y = act(gamma (x - mean) / sqrt(var + eps) + beta) with the batch's mean and
  //          biased variance; save (2C floats: mean, then 1 / sqrt(var + eps)) keeps them for
  //          bn_bwd; running (2C floats: mean, then variance) becomes
  //          (1 - momentum) running + momentum * (mean, unbiased variance), as PyTorch.
  //          The batch is N * H * W values per channel, summed over the ranks with p.sync; it
  //          must be at least 2 (the unbiased variance). N = 0 writes nothing without p.sync;
  //          with it the rank still takes part in the sums (and updates running, as all do).
  //   eval:  the same with running's mean and variance; save and running untouched, p.sync
  //          unused.
  // gamma, beta and running are required in both modes, save in training.
  void (*bn_fwd)(backend *b, void *y, float *save, const void *x, const float *gamma,
                 const float *beta, float *running, op_shape s, bn_params p, int train,
                 activation act);
  // The backward of a training bn_fwd (before its activation: act_bwd ran first) from its
  // save, with the same p: writes dgamma, dbeta, and dx unless dx == NULL; reads dy only. With
  // p.sync, dx takes the sums of dy and dy xhat over the global batch (every rank's, as the
  // forward's statistics), while dgamma and dbeta stay this rank's share: the gradient
  // all-reduce adds the shares, as it does every other parameter's.
  void (*bn_bwd)(backend *b, void *dx, float *dgamma, float *dbeta, const void *dy, const void *x,
                 const float *gamma, const float *save, op_shape s, bn_params p);

  // y = x * mask / (1 - p) (see dropout_key) over D = H * W * C features per sample;
  // dx = dy * mask / (1 - p).
  void (*dropout_fwd)(backend *b, void *y, const void *x, const int32_t *ids, op_shape s,
                      float p, dropout_key key);
  void (*dropout_bwd)(backend *b, void *dx, const void *dy, const int32_t *ids, op_shape s,
                      float p, dropout_key key);

  // Softmax cross-entropy over logits (N, classes). stats[0] += sum of per-sample losses,
  // stats[1] += number of samples whose argmax (first maximum) equals the label.
  // Unless dlogits == NULL: dlogits = (softmax - onehot) * grad_scale.
  void (*xent)(backend *b, void *dlogits, double *stats, const void *logits,
               const int32_t *labels, int N, int classes, float grad_scale);

  void (*adam)(backend *b, float *params, const float *grads, float *m, float *v, size_t count,
               const adam_params *p);

  // The backend's compute stream (cudaStream_t) for a device communicator; NULL on the CPU
  // (whether memory is on a device is backend.is_device).
  void *(*stream)(backend *b);

  // Captured training steps (CUDA graphs); all four are NULL on a backend without them.
  // Between capture_begin and capture_end the ops (and a device communicator's work on the
  // stream) are recorded, not run; capture_end returns the recording. replay enqueues it once.
  // Recorded ops take these values from each replay's step_vars instead of freezing the ones
  // seen at capture: the ids given to prep_batch, prep_params.epoch, dropout_key.step, and the
  // Adam step and learning rate. Everything else an op was given (pointers, sizes, seeds,
  // other hyper-parameters) must hold at every replay as it did at the capture.
  void (*capture_begin)(backend *b);
  void *(*capture_end)(backend *b);
  void (*replay)(backend *b, void *graph, const step_vars *v);
  void (*graph_free)(backend *b, void *graph); // accepts NULL
} backend_ops;

struct backend {
  const backend_ops *ops;
  int is_device;    // backend memory is device memory, not host-addressable (CUDA)
  size_t act_bytes; // bytes per activation element
  void *impl;       // the implementation's context
};

// The CPU reference backend: OpenBLAS sgemm (single-threaded) inside OpenMP loops over
// `threads` threads (0 = the OpenMP default, e.g. OMP_NUM_THREADS).
backend *backend_cpu_create(int threads);
// Arithmetic of the CUDA backend: fp32 (no TF32 anywhere), TF32 tensor cores for convolutions
// and GEMMs, or bf16 activations (fp32 parameters, gradients and Adam state).
typedef enum { PREC_FP32, PREC_TF32, PREC_BF16 } precision_kind;
// The CUDA backend on device `device`.
backend *backend_cuda_create(int device, precision_kind precision);

// How the CUDA backend chooses a convolution's cuDNN engine among the allowed candidates the
// heuristics offer, at the convolution's first use:
//   AUTOTUNE_FASTEST  time each candidate on the live buffers and keep the fastest (timings
//                     vary, so two processes may keep different, each deterministic, engines
//                     and differ in the last bits);
//   AUTOTUNE_FIRST    the first candidate in the heuristics' fixed order that runs, untimed:
//                     every process on the same GPU model and library versions picks the same
//                     engine (the GPU check's graphs-on / graphs-off runs agree bit for bit).
typedef enum { AUTOTUNE_FASTEST = 0, AUTOTUNE_FIRST = 1 } autotune_mode;
// Sets the mode of a CUDA backend (default AUTOTUNE_FASTEST): right after backend_cuda_create,
// before the first convolution (aborts with a message otherwise, or when b is not CUDA).
void backend_cuda_set_autotune(backend *b, autotune_mode mode);
// Number of visible CUDA devices; 0 when there is no driver or no device (never aborts).
int backend_cuda_device_count(void);
// Per-op profile of a CUDA backend's eager steps (bench_step --profile): CUDA events around
// every op (convolutions split into forward, epilogue, bias gradient, backward-filter and
// backward-data), each conv plan's engine and candidates, the plan building time. Off unless
// enabled, and then free: nothing is recorded.
// enable: before the first op and before any graph capture; from then on b has no capture
//   entries (eager steps only: profiling and CUDA graphs are exclusive). Aborts with a message
//   when b is not CUDA, or is too late.
// step: after each step, with its host wall time (ms); synchronises, reads the step's events and
//   adds the step to the means when keep (0 for warm-up steps: the first one builds the plans).
// print: the table (see kernels/cuda/prof_table.h).
void backend_cuda_profile_enable(backend *b);
void backend_cuda_profile_step(backend *b, double wall_ms, int keep);
void backend_cuda_profile_print(backend *b, FILE *f);
// Device memory in use on b's GPU (all of it: this process's buffers, library workspaces and
// the CUDA context), for the benchmark's peak-memory figure; all buffers are allocated by the
// first step, so after it this is the peak.
size_t backend_cuda_memory_used(backend *b);
// Device memory free on b's GPU now (for the start-up check that the buffers will fit).
size_t backend_cuda_memory_free(backend *b);

#ifdef __cplusplus
}
#endif

#endif
