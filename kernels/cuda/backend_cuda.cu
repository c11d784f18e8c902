// backend_cuda.cu - the CUDA backend's context (device, stream, cuDNN/cuBLAS handles,
// workspaces, the device step variables), its memory ops, the bf16 parameter shadow, the fused
// Adam/AdamW kernel and the ops table (filled by name). The op families live in conv.cu,
// linear.cu, pool.cu, bn.cu, loss.cu, prep.cu and elementwise.cu; graph capture and replay in
// graph.cu.
//
// Invariants: every op is queued on the one compute stream (ctx->stream); upload/download/sync
// are the only calls that block the host. Parameters, gradients and Adam state are fp32; in
// bf16 precision a bf16 copy of the flat parameters (params_bf16) is what convs and GEMMs read,
// refreshed by set_params and by every Adam step.
#include <stdlib.h>
#include <string.h>

#include "adam.h"
#include "cuda_common.h"

// ---- workspaces ----------------------------------------------------------------------------

// Plans are built in the first step (start-up), so growth is rare; freeing needs the stream
// idle because queued work may still read the old buffer. A captured graph holds the buffer's
// address for good, so while one exists an outgrown buffer is retired, not freed: evaluation's
// larger batch or the short last batch may grow it after the capture.
static void *grow(cuda_ctx *c, void **buf, size_t *have, size_t need, const char *what) {
  size_t want = plan_workspace_grow(*have, need);
  if (want == *have) return *buf;
  if (c->capturing) // the eager step before a capture sizes every buffer; this is a bug
    FATAL("the %s must grow to %zu bytes during a CUDA graph capture (run with --cuda-graphs 0 "
          "and report this)", what, want);
  cudaCheck(cudaStreamSynchronize(c->stream));
  if (*buf && c->graphs_live > 0) {
    c->retired = (void **)xrealloc(c->retired, (size_t)(c->n_retired + 1) * sizeof(void *));
    c->retired[c->n_retired++] = *buf;
  } else if (*buf) {
    cudaCheck(cudaFree(*buf));
  }
  *buf = NULL;
  *have = 0;
  cudaError_t e = cudaMalloc(buf, want);
  if (e != cudaSuccess)
    FATAL("out of GPU memory allocating the %s of %zu bytes on device %d (%s): try a smaller "
          "--batch per GPU", what, want, c->device, cudaGetErrorString(e));
  *have = want;
  return *buf;
}

void cuda_free_retired(cuda_ctx *c) {
  if (!c->n_retired) return;
  cudaCheck(cudaStreamSynchronize(c->stream));
  for (int i = c->n_retired - 1; i >= 0; i--) cudaCheck(cudaFree(c->retired[i]));
  free(c->retired);
  c->retired = NULL;
  c->n_retired = 0;
}

void *cuda_workspace(cuda_ctx *c, size_t bytes) {
  return grow(c, &c->ws, &c->ws_bytes, bytes, "cuDNN workspace");
}

void *cuda_scratch(cuda_ctx *c, size_t bytes) {
  return grow(c, &c->scratch, &c->scratch_bytes, bytes, "scratch buffer");
}

double *cuda_sums(cuda_ctx *c, size_t count) {
  return (double *)grow(c, &c->sums, &c->sums_bytes, count * sizeof(double), "batch-norm sums");
}

const bf16 *cuda_shadow(cuda_ctx *c, const float *p, size_t count) {
  if (!c->params_bf16)
    FATAL("bf16 precision: set_params was not called before the first layer");
  if (p < c->params || p + count > c->params + c->param_count)
    FATAL("bf16 precision: a weight tensor lies outside the flat parameter buffer given to "
          "set_params");
  return c->params_bf16 + (p - c->params);
}

// ---- memory ops ----------------------------------------------------------------------------

// Memory ops allocate or synchronise, which a stream capture forbids; the trainer calls them
// only between steps, and this says so if that ever changes.
static void not_capturing(const cuda_ctx *c, const char *what) {
  if (c->capturing) FATAL("%s during a CUDA graph capture", what);
}

static void *cuda_alloc(backend *b, size_t bytes) {
  cuda_ctx *c = ctx_of(b);
  not_capturing(c, "alloc");
  void *p = NULL;
  size_t n = bytes ? bytes : 256; // a distinct non-NULL pointer even for empty tensors
  cudaError_t e = cudaMalloc(&p, n);
  if (e != cudaSuccess) {
    size_t free_b = 0, total_b = 0;
    (void)cudaGetLastError();
    (void)cudaMemGetInfo(&free_b, &total_b);
    FATAL("out of GPU memory allocating %zu bytes on device %d (%s; %zu of %zu bytes free): try "
          "a smaller --batch per GPU", bytes, c->device, cudaGetErrorString(e), free_b, total_b);
  }
  cudaCheck(cudaMemsetAsync(p, 0, n, c->stream));
  return p;
}

static void cuda_release(backend *b, void *p) {
  not_capturing(ctx_of(b), "release");
  if (p) cudaCheck(cudaFree(p));
}

static void cuda_upload(backend *b, void *dst, const void *h_src, size_t bytes) {
  cuda_ctx *c = ctx_of(b);
  not_capturing(c, "upload");
  if (!bytes) return;
  cudaCheck(cudaMemcpyAsync(dst, h_src, bytes, cudaMemcpyHostToDevice, c->stream));
  cudaCheck(cudaStreamSynchronize(c->stream)); // h_src may be reused as soon as we return
}

static void cuda_download(backend *b, void *h_dst, const void *src, size_t bytes) {
  cuda_ctx *c = ctx_of(b);
  not_capturing(c, "download");
  if (!bytes) return;
  cudaCheck(cudaMemcpyAsync(h_dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
  cudaCheck(cudaStreamSynchronize(c->stream));
  cuda_xent_check(c); // every loss kernel so far has run: a statistics download reports at once
}

void cuda_zero(cuda_ctx *c, void *p, size_t bytes) {
  if (bytes) cudaCheck(cudaMemsetAsync(p, 0, bytes, c->stream));
}

static void cuda_zero_op(backend *b, void *p, size_t bytes) { cuda_zero(ctx_of(b), p, bytes); }

static void cuda_sync(backend *b) {
  not_capturing(ctx_of(b), "sync");
  cudaCheck(cudaStreamSynchronize(ctx_of(b)->stream));
  cuda_xent_check(ctx_of(b));
}

static void *cuda_stream(backend *b) { return (void *)ctx_of(b)->stream; }

static void cuda_set_params(backend *b, const float *params, size_t count) {
  cuda_ctx *c = ctx_of(b);
  if (c->precision == PREC_BF16 && (c->params_bf16 == NULL || c->param_count != count)) {
    if (c->params_bf16) {
      cudaCheck(cudaStreamSynchronize(c->stream));
      cudaCheck(cudaFree(c->params_bf16));
    }
    c->params_bf16 = (bf16 *)cuda_alloc(b, count * sizeof(bf16));
  }
  c->params = params;
  c->param_count = count;
  if (c->precision == PREC_BF16) cuda_f32_to_bf16(c, c->params_bf16, params, count);
}

// ---- Adam / AdamW --------------------------------------------------------------------------

// One kernel over the flat buffer with kernels/adam.h's arithmetic, shared with the CPU
// backend: both produce bit-identical parameters from identical gradients. The coefficients
// (the step's learning rate and bias corrections) are the step variable in device memory
// (cuda_common.h), read the same way eager or replayed.
__global__ void adam_kernel(float *params, bf16 *shadow, const float *grads, float *m, float *v,
                            size_t count, const dev_vars *gv) {
  const adam_coef a = gv->adam;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (size_t)gridDim.x * blockDim.x) {
    adam_element(&params[i], grads[i], &m[i], &v[i], &a);
    if (shadow) shadow[i] = __float2bfloat16_rn(params[i]);
  }
}

void cuda_adam(backend *b, float *params, const float *grads, float *m, float *v, size_t count,
               const adam_params *p) {
  cuda_ctx *c = ctx_of(b);
  adam_coef a = adam_plan(p); // validates the step also while capturing (replay plans its own)
  if (count == 0) return;
  bf16 *shadow = NULL;
  if (c->precision == PREC_BF16 && c->params_bf16 && params >= c->params &&
      params + count <= c->params + c->param_count)
    shadow = c->params_bf16 + (params - c->params);
  cuda_stage(c, &c->d_vars->adam, a);
  adam_kernel<<<cuda_blocks(c, count), CUDA_THREADS, 0, c->stream>>>(params, shadow, grads, m, v,
                                                                      count, c->d_vars);
  KERNEL_CHECK();
}

// ---- create / destroy ----------------------------------------------------------------------

static void cuda_destroy(backend *b) {
  if (!b) return;
  cuda_ctx *c = ctx_of(b);
  cudaCheck(cudaStreamSynchronize(c->stream));
  cuda_prof_free(b);
  cuda_xent_free(c);
  plan_cache_free(&c->convs, cuda_conv_plan_free, c);
  plan_cache_free(&c->gemms, cuda_gemm_plan_free, c);
  if (c->params_bf16) cudaCheck(cudaFree(c->params_bf16));
  cuda_free_retired(c);
  cudaCheck(cudaFree(c->d_vars));
  if (c->sums) cudaCheck(cudaFree(c->sums));
  if (c->scratch) cudaCheck(cudaFree(c->scratch));
  if (c->ws) cudaCheck(cudaFree(c->ws));
  if (c->lt_ws) cudaCheck(cudaFree(c->lt_ws));
  cudaCheck(cudaEventDestroy(c->ev1));
  cudaCheck(cudaEventDestroy(c->ev0));
  cublasCheck(cublasLtDestroy(c->lt));
  cublasCheck(cublasDestroy(c->cublas));
  cudnnCheck(cudnnDestroy(c->cudnn));
  cudaCheck(cudaStreamDestroy(c->stream));
  free(c);
  free(b);
}

// The ops table, filled by name: a reordering of backend_ops cannot wire the wrong function.
// (Not C++20 designated initializers: the Makefile's nvcc builds C++17.) constexpr, so the
// table is built at compile time, as an initializer list would be.
static constexpr backend_ops cuda_ops_table(void) {
  backend_ops o{}; // every entry NULL until named below
  o.name = "cuda";
  o.destroy = cuda_destroy;
  o.alloc = cuda_alloc;
  o.release = cuda_release;
  o.upload = cuda_upload;
  o.download = cuda_download;
  o.zero = cuda_zero_op;
  o.sync = cuda_sync;
  o.set_params = cuda_set_params;
  o.prep_batch = cuda_prep_batch;
  o.conv_fwd = cuda_conv_fwd;
  o.conv_bwd = cuda_conv_bwd;
  o.maxpool_fwd = cuda_maxpool_fwd;
  o.maxpool_bwd = cuda_maxpool_bwd;
  o.linear_fwd = cuda_linear_fwd;
  o.linear_bwd = cuda_linear_bwd;
  o.act_fwd = cuda_act_fwd;
  o.act_bwd = cuda_act_bwd;
  o.bn_fwd = cuda_bn_fwd;
  o.bn_bwd = cuda_bn_bwd;
  o.dropout_fwd = cuda_dropout_fwd;
  o.dropout_bwd = cuda_dropout_bwd;
  o.xent = cuda_xent;
  o.adam = cuda_adam;
  o.stream = cuda_stream;
  o.capture_begin = cuda_capture_begin;
  o.capture_end = cuda_capture_end;
  o.replay = cuda_replay;
  o.graph_free = cuda_graph_free;
  return o;
}
static constexpr backend_ops cuda_ops = cuda_ops_table();

extern "C" int backend_cuda_device_count(void) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError(); // no driver / no device: not an error for a query
    return 0;
  }
  return n;
}

// The cuBLAS handle's math mode: fp32 allows no TF32 anywhere (pedantic also rules out
// reduced-precision reductions); tf32 allows TF32 tensor cores; bf16 the default.
static cublasMath_t cublas_math(precision_kind precision) {
  switch (precision) {
  case PREC_FP32: return CUBLAS_PEDANTIC_MATH;
  case PREC_TF32: return CUBLAS_TF32_TENSOR_OP_MATH;
  case PREC_BF16: return CUBLAS_DEFAULT_MATH;
  }
  FATAL("unknown precision %d", (int)precision);
}

extern "C" backend *backend_cuda_create(int device, precision_kind precision) {
  if (!plan_precision_valid(precision))
    DIE_USAGE("--precision: unknown precision %d (fp32, tf32 or bf16)", (int)precision);
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess)
    DIE_USAGE("--device cuda: no CUDA device visible (%s)", cudaGetErrorString(e));
  if (n <= 0) DIE_USAGE("--device cuda: no CUDA device visible (device count 0)");
  if (device < 0 || device >= n)
    DIE_USAGE("--device cuda: device %d does not exist (%d visible)", device, n);
  cudaCheck(cudaSetDevice(device));

  cuda_ctx *c = (cuda_ctx *)xcalloc(1, sizeof(cuda_ctx));
  c->device = device;
  c->precision = precision;
  c->autotune = AUTOTUNE_FASTEST;
  cudaCheck(cudaDeviceGetAttribute(&c->sm_count, cudaDevAttrMultiProcessorCount, device));
  cudaCheck(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
  cudnnCheck(cudnnCreate(&c->cudnn));
  cudnnCheck(cudnnSetStream(c->cudnn, c->stream));
  cublasCheck(cublasCreate(&c->cublas));
  cublasCheck(cublasSetStream(c->cublas, c->stream));
  cublasCheck(cublasSetMathMode(c->cublas, cublas_math(precision)));
  cublasCheck(cublasLtCreate(&c->lt));
  // One workspace for cuBLAS and cuBLASLt: both run in order on the one stream. A fixed
  // workspace also keeps cuBLAS from allocating during a CUDA graph capture.
  c->lt_ws_bytes = (size_t)32 << 20;
  e = cudaMalloc(&c->lt_ws, c->lt_ws_bytes);
  if (e != cudaSuccess)
    FATAL("out of GPU memory allocating the %zu-byte cuBLAS workspace on device %d (%s)",
          c->lt_ws_bytes, device, cudaGetErrorString(e));
  cublasCheck(cublasSetWorkspace(c->cublas, c->lt_ws, c->lt_ws_bytes));
  // The step variables: staged by the launchers (eager) or copied by replay before any kernel
  // reads them; zeroed so that no read can ever see uninitialised memory.
  cudaCheck(cudaMalloc((void **)&c->d_vars, sizeof(dev_vars)));
  cudaCheck(cudaMemsetAsync(c->d_vars, 0, sizeof(dev_vars), c->stream));
  cudaCheck(cudaEventCreate(&c->ev0));
  cudaCheck(cudaEventCreate(&c->ev1));

  backend *b = (backend *)xcalloc(1, sizeof(backend));
  b->ops = &cuda_ops;
  b->is_device = 1;
  b->act_bytes = cuda_act_bytes(c);
  b->impl = c;
  return b;
}

// The profiler swaps b->ops for a copy with wrapped entries, but destroy stays cuda_destroy.
cuda_ctx *cuda_ctx_checked(backend *b, const char *who) {
  if (!b || !b->ops || b->ops->destroy != cuda_destroy) FATAL("%s: not a CUDA backend", who);
  return ctx_of(b);
}

extern "C" void backend_cuda_set_autotune(backend *b, autotune_mode mode) {
  cuda_ctx *c = cuda_ctx_checked(b, "backend_cuda_set_autotune");
  if (mode != AUTOTUNE_FASTEST && mode != AUTOTUNE_FIRST) FATAL("unknown autotune mode %d", (int)mode);
  if (mode != c->autotune && c->convs.n > 0)
    FATAL("backend_cuda_set_autotune after the first convolution: its engines were already "
          "chosen the other way (set the mode right after backend_cuda_create)");
  c->autotune = mode;
}

static void memory_info(backend *b, size_t *free_bytes, size_t *total) {
  cudaCheck(cudaSetDevice(ctx_of(b)->device));
  cudaCheck(cudaMemGetInfo(free_bytes, total));
}

extern "C" size_t backend_cuda_memory_used(backend *b) {
  size_t free_bytes = 0, total = 0;
  memory_info(b, &free_bytes, &total);
  return total - free_bytes;
}

extern "C" size_t backend_cuda_memory_free(backend *b) {
  size_t free_bytes = 0, total = 0;
  memory_info(b, &free_bytes, &total);
  return free_bytes;
}
