// cuda_common.h - what the CUDA backend's .cu files share: the check macros, the context
// struct (b->impl) holding handles, the stream and workspaces, the activation element types and
// the one dispatch on them, the device copy of the step variables, and the entry points of each
// op family (one .cu per family, kernels beside their launchers).
//
// Invariants: every library call goes through a check macro; every kernel launch is followed by
// KERNEL_CHECK(); all work is queued on ctx->stream; nothing here is global.
//
// The step-variable rule: a kernel that uses a value which changes from one training step to
// the next (prep's epoch, dropout's step, Adam's learning rate and step, i.e. its coefficients;
// prep's sample ids are a device buffer already) reads it from device memory, c->d_vars, in
// every mode; no launcher passes such a value as a kernel argument of the kernel that uses it.
// Who writes d_vars:
//   eager   the launcher, right before its kernel, with cuda_stage(): a one-thread kernel on
//           the compute stream that stores the one field its kernel reads (see cuda_stage for
//           why this needs no page-locked slot and no wait);
//   capture nobody: cuda_stage records nothing, and replay copies the whole dev_vars from a
//           page-locked slot ahead of each launch of the graph (graph.cu).
// So the kernels of an eager step and of a replayed graph are the same code reading the same
// place, and stream order alone gives each kernel the value meant for it.
#ifndef VGG_CUDA_COMMON_H
#define VGG_CUDA_COMMON_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "adam.h"
#include "backend.h"
#include "check.h"
#include "cuda_check.h"
#include "cuda_plan.h"
#include "prof_table.h"

// ---- check macros (file:line, the expression and the library's own message) ---------------
#define cudnnCheck(expr)                                                                   \
  do {                                                                                     \
    cudnnStatus_t cudnn_s_ = (expr);                                                       \
    if (cudnn_s_ != CUDNN_STATUS_SUCCESS) {                                                \
      char cudnn_m_[512];                                                                  \
      cudnnGetLastErrorString(cudnn_m_, sizeof(cudnn_m_));                                 \
      FATAL("%s: cuDNN error %d: %s (%s)", #expr, (int)cudnn_s_, cudnnGetErrorString(cudnn_s_), \
            cudnn_m_);                                                                     \
    }                                                                                      \
  } while (0)
#define cublasCheck(expr)                                                                  \
  do {                                                                                     \
    cublasStatus_t cublas_s_ = (expr);                                                     \
    if (cublas_s_ != CUBLAS_STATUS_SUCCESS)                                                \
      FATAL("%s: cuBLAS error %d: %s", #expr, (int)cublas_s_, cublasGetStatusString(cublas_s_)); \
  } while (0)
// After every launch: configuration errors surface here, at the launch that caused them.
#define KERNEL_CHECK() cudaCheck(cudaGetLastError())

// ---- context -------------------------------------------------------------------------------
typedef __nv_bfloat16 bf16;

// The variable part of a training step, in device memory (c->d_vars; see the rule at the top):
// written by cuda_stage in eager steps and by replay for a graph, read by the kernels.
typedef struct dev_vars {
  adam_coef adam; // planned on the host from the step's adam_params (adam_plan)
  uint32_t epoch; // prep_params.epoch
  uint32_t step;  // dropout_key.step
} dev_vars;

struct cuda_prof; // the per-op profiler (profile.cu)

typedef struct cuda_ctx {
  int device;
  precision_kind precision;
  int sm_count;
  cudaStream_t stream;
  cudnnHandle_t cudnn;
  cublasHandle_t cublas;
  cublasLtHandle_t lt;
  void *lt_ws; // cuBLASLt workspace (fixed size)
  size_t lt_ws_bytes;
  void *ws; // cuDNN workspace: one buffer, grown to the largest plan's need at start-up
  size_t ws_bytes;
  void *scratch; // small temporaries (bias-grad partials, bf16 conv dw, loss per sample)
  size_t scratch_bytes;
  void *sums; // batch norm's per-channel sums in double (what --sync-bn adds over the ranks)
  size_t sums_bytes;
  const float *params; // the flat fp32 parameters (set_params), and their bf16 shadow
  size_t param_count;
  bf16 *params_bf16;
  plan_cache convs, gemms;
  autotune_mode autotune; // how a conv plan's engine is chosen (backend_cuda_set_autotune)
  cudaEvent_t ev0, ev1;   // autotune timing
  dev_vars *d_vars; // the step variables the kernels read (see the top)
  // Graph capture (graph.cu): while capturing, nothing runs, nothing may allocate or
  // synchronise, and prep_batch notes where the batch's ids go (cap_ids, cap_n) so that each
  // replay copies that step's ids there.
  int capturing;
  int32_t *cap_ids;
  int cap_n, cap_preps;
  int graphs_live;  // captured graphs not yet freed: they hold the workspaces' addresses
  void **retired;   // workspaces outgrown while graphs were live, freed with the last graph
  int n_retired;
  // The per-op profiler: NULL unless backend_cuda_profile_enable (never with graphs: the two
  // are exclusive, so nothing below records events into a capture).
  struct cuda_prof *prof;
  // The first invalid label a cross-entropy kernel met (loss.cu): page-locked, mapped host
  // memory the kernel writes through d_xent_bad and the host reads without a copy.
  struct xent_bad_label *xent_bad, *d_xent_bad;
} cuda_ctx;

static inline cuda_ctx *ctx_of(backend *b) { return (cuda_ctx *)b->impl; }
// b's context, after checking that b is a CUDA backend (FATAL naming `who` otherwise): for the
// entry points of backend.h that take any backend.
cuda_ctx *cuda_ctx_checked(backend *b, const char *who);

// Ensure the workspaces hold `bytes` (synchronises and reallocates when they grow).
void *cuda_workspace(cuda_ctx *c, size_t bytes);
void *cuda_scratch(cuda_ctx *c, size_t bytes);
// The per-channel sums buffer (count doubles), apart from the scratch buffer: the column sums
// reuse that while these are still to be read.
double *cuda_sums(cuda_ctx *c, size_t count);
// Frees the retired workspaces (when no graph can use them any more).
void cuda_free_retired(cuda_ctx *c);
// The bf16 shadow of a parameter tensor inside the flat buffer (bf16 precision only).
const bf16 *cuda_shadow(cuda_ctx *c, const float *p, size_t count);

// ---- elementwise helpers (elementwise.cu) --------------------------------------------------
// y (rows, K) = act(x + bias[k]) in the activation type (x may be y; bias may be NULL).
void cuda_bias_act(cuda_ctx *c, void *y, const void *x, const float *bias, size_t rows, int K,
                   activation act);
// db[k] = sum over the rows of dy (rows, K): written, deterministic; reads dy only. No-op when
// db is NULL; zeroes db when rows == 0.
void cuda_bias_grad(cuda_ctx *c, float *db, const void *dy, size_t rows, int K);
// The first pass of the deterministic column sums over (rows, K) activation tensors, rows >= 1:
// what one element at (r, k) adds, with a = a[r][k], b = b[r][k] and m = center[k]:
//   COLSUM_PLAIN   a                          (bias gradients, BN mean; b and center NULL)
//   COLSUM_SQDEV   (a - m)^2                  (BN variance around the mean; b NULL)
//   COLSUM_DY_XC   a, then a (b - m)          (BN backward: sums of dy and dy (x - mean))
// Two passes, never E[x^2] - E[x]^2: the variance comes from deviations, so a large mean does
// not cancel it away in fp32. The inputs are only read.
typedef enum { COLSUM_PLAIN, COLSUM_SQDEV, COLSUM_DY_XC } colsum_mode;
template <colsum_mode MODE> struct colsum_terms_of {
  static constexpr int value = MODE == COLSUM_DY_XC ? 2 : 1;
};
static inline int colsum_terms(colsum_mode mode) { return mode == COLSUM_DY_XC ? 2 : 1; }
// Writes the sums of each row chunk (colsum_plan, in a fixed order: the result depends only on
// the shape, not on the vector width or the run) to the scratch buffer, *partial =
// partial[(chunk * colsum_terms(mode) + term) * K + k], and returns the chunk count; the caller's
// second pass adds the chunks in order. Valid until the next use of the scratch buffer.
size_t cuda_colsum_partial(cuda_ctx *c, float **partial, colsum_mode mode, const void *a,
                           const void *b, const float *center, size_t rows, int K);
void cuda_f32_to_bf16(cuda_ctx *c, bf16 *dst, const float *src, size_t count);
void cuda_bf16_to_f32(cuda_ctx *c, float *dst, const bf16 *src, size_t count);
void cuda_zero(cuda_ctx *c, void *p, size_t bytes);
// FATAL naming `who` unless act is one of the activation values.
void cuda_act_check(activation act, const char *who);

// ---- op families (backend.h says what each does) -------------------------------------------
void cuda_conv_fwd(backend *b, void *y, const void *x, const float *w, const float *bias,
                   op_shape s, activation act);
void cuda_conv_bwd(backend *b, void *dx, float *dw, float *db, const void *dy, const void *x,
                   const float *w, op_shape s);
void cuda_conv_plan_free(void *plan, void *arg);
void cuda_maxpool_fwd(backend *b, void *y, int32_t *argmax, const void *x, op_shape s);
void cuda_maxpool_bwd(backend *b, void *dx, const void *dy, const int32_t *argmax, const void *x,
                      const void *y, op_shape s);
void cuda_linear_fwd(backend *b, void *y, const void *x, const float *w, const float *bias,
                     op_shape s, activation act);
void cuda_linear_bwd(backend *b, void *dx, float *dw, float *db, const void *dy, const void *x,
                     const float *w, op_shape s);
void cuda_gemm_plan_free(void *plan, void *arg);
void cuda_act_fwd(backend *b, void *y, const void *x, op_shape s, activation act);
void cuda_act_bwd(backend *b, void *dx, const void *dy, const void *y, op_shape s,
                  activation act);
void cuda_bn_fwd(backend *b, void *y, float *save, const void *x, const float *gamma,
                 const float *beta, float *running, op_shape s, bn_params p, int train,
                 activation act);
void cuda_bn_bwd(backend *b, void *dx, float *dgamma, float *dbeta, const void *dy, const void *x,
                 const float *gamma, const float *save, op_shape s, bn_params p);
void cuda_dropout_fwd(backend *b, void *y, const void *x, const int32_t *ids, op_shape s,
                      float p, dropout_key key);
void cuda_dropout_bwd(backend *b, void *dx, const void *dy, const int32_t *ids, op_shape s,
                      float p, dropout_key key);
void cuda_xent(backend *b, void *dlogits, double *stats, const void *logits,
               const int32_t *labels, int N, int classes, float grad_scale);
// An invalid label cannot stop the host from a kernel: the kernel records it and these report it
// once the kernel has run. prepare allocates the record (before a capture: it cannot allocate
// during one); check FATALs with the label and sample if one was recorded (no CUDA call, no
// sync: it sees what finished kernels wrote); free releases the record (for cuda_destroy).
void cuda_xent_prepare(cuda_ctx *c);
void cuda_xent_check(const cuda_ctx *c);
void cuda_xent_free(cuda_ctx *c);
void cuda_adam(backend *b, float *params, const float *grads, float *m, float *v, size_t count,
               const adam_params *p);
void cuda_capture_begin(backend *b);
void *cuda_capture_end(backend *b);
void cuda_replay(backend *b, void *graph, const step_vars *v);
void cuda_graph_free(backend *b, void *graph);
void cuda_prep_batch(backend *b, void *x, int32_t *labels, int32_t *ids, const uint8_t *images,
                     const uint8_t *image_labels, const int32_t *h_ids, int n,
                     const prep_params *p);

// ---- per-op profiler (profile.cu) ----------------------------------------------------------
// A region times a part of an op with two CUDA events on the stream, read after the step's
// synchronisation. Only while profiling: the macros cost one NULL test otherwise. Regions do
// not nest. The op-level ones (prep, pool, FC, dropout, loss, Adam) are opened by profile.cu's
// wrappers; conv.cu opens one per part of a convolution.
void cuda_prof_begin(cuda_ctx *c, prof_kind kind, const char *fmt, ...) VGG_PRINTF(3, 4);
void cuda_prof_end(cuda_ctx *c);
#define PROF_BEGIN(c, ...)                        \
  do {                                            \
    if ((c)->prof) cuda_prof_begin((c), __VA_ARGS__); \
  } while (0)
#define PROF_END(c)                      \
  do {                                   \
    if ((c)->prof) cuda_prof_end(c);     \
  } while (0)
// A new conv plan record in the profile (only while profiling); valid until the next one.
prof_conv *cuda_prof_conv(cuda_ctx *c);
// Frees the profiler and gives b its plain ops table back (accepts a backend without one).
void cuda_prof_free(backend *b);

// ---- activation element types: one dispatch --------------------------------------------------
// Activations are float (fp32, tf32) or bf16 (bf16). A launcher writes its launch once, as a
// generic lambda over the element type, and dispatch_act calls it with the context's:
//   dispatch_act(c, [&](auto tag) {
//     using T = typename decltype(tag)::type;
//     kernel<T><<<grid, block, 0, c->stream>>>((T *)y, (const T *)x, ...);
//   });
//   KERNEL_CHECK();
template <typename T> struct act_tag {
  typedef T type;
};
template <typename F> inline void dispatch_act(const cuda_ctx *c, F &&f) {
  if (c->precision == PREC_BF16)
    f(act_tag<bf16>());
  else
    f(act_tag<float>());
}
// Bytes of one activation element (b->act_bytes).
static inline size_t cuda_act_bytes(const cuda_ctx *c) {
  return c->precision == PREC_BF16 ? sizeof(bf16) : sizeof(float);
}

__device__ __forceinline__ float act_load(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float act_load(const bf16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void act_store(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void act_store(bf16 *p, size_t i, float v) { p[i] = __float2bfloat16_rn(v); }

// ---- staging a step variable (eager steps; see the rule at the top) -------------------------
template <typename T> __global__ void stage_kernel(T *field, T v) { *field = v; }

// Stores v into *field (a member of c->d_vars) on the compute stream, for the kernel launched
// next; does nothing while capturing (replay writes d_vars). The value travels as the store
// kernel's argument, which CUDA copies when the launch is queued: no host memory has to outlive
// this call, so there is no page-locked slot to recycle and no event to wait on, and the host
// never blocks. Stream order does the rest: the store runs after every kernel queued before it
// (those read the field's previous value) and before the kernel queued after it, so a later
// stage can never overwrite a value a queued kernel has not read yet.
template <typename T> inline void cuda_stage(cuda_ctx *c, T *field, T v) {
  if (c->capturing) return;
  stage_kernel<T><<<1, 1, 0, c->stream>>>(field, v);
  KERNEL_CHECK();
}

#define CUDA_THREADS 256u
// The most blocks a launch asks for: grid-stride loops cover the rest.
static inline unsigned cuda_grid_cap(const cuda_ctx *c) {
  return (unsigned)(c->sm_count > 0 ? c->sm_count * 32 : 4096);
}
// Grid for n elements on this device.
static inline unsigned cuda_blocks(const cuda_ctx *c, size_t n) {
  return plan_blocks(n, CUDA_THREADS, cuda_grid_cap(c));
}

#endif
