// bn.cu - BatchNorm2d (bn_fwd, bn_bwd; backend.h says what each computes) on NHWC activations,
// seen as (rows = N * H * W, C) with the channel fastest. Our own kernels, not cuDNN's: the
// legacy cudnnBatchNormalization* calls are CUDNN_DEPRECATED in cuDNN 9 (and the build is
// -Werror), and these are simple, deterministic (fixed reduction order, so graphs-on and
// graphs-off runs agree bit for bit) and follow PyTorch's arithmetic where it matters.
//
// Statistics (fp32 inputs of either activation type, fp32 results). Each pass turns the chunk
// sums of cuda_colsum_partial into per-channel sums in double (bn_sums_kernel, with this rank's
// count beside them) in the sums buffer; under p.sync the rank_sum adds every rank's into them
// on the stream (an NCCL all-reduce), so what follows reads the global batch's sums and count.
//   train  pass 1: sums of x (COLSUM_PLAIN) -> mean into save[0, C);
//          pass 2: sums of (x - mean)^2 around that fp32 mean (COLSUM_SQDEV) -> the biased
//                  variance, invstd = 1 / sqrt(var + eps) into save[C, 2C); running becomes
//                  (1 - momentum) running + momentum (mean, var * count / (count - 1)).
//   then   y = act(gamma (x - mean) invstd + beta), one thread per (row, channel).
//   eval   the same normalisation from running (mean, var); save and running are not touched.
// Backward from save: the sums of dy and dy (x - mean) in one pass (COLSUM_DY_XC); this rank's
//   give dbeta = sum dy, dgamma = invstd sum dy (x - mean) (written, not accumulated: the
//   gradient all-reduce adds the ranks'); then, summed over the ranks under p.sync,
//   dx = gamma invstd (dy - sum dy / count - xhat invstd sum dy (x - mean) / count).
// dy and x are only read. A rank with no rows (N = 0) still takes part in every sum under
// p.sync (zeros), so the collectives match. The partial sums live in the scratch buffer and the
// per-channel sums in their own, which the eager step before a capture has sized; nothing here
// allocates, copies or synchronises otherwise, so a captured step replays these kernels (and
// the all-reduces between them) as they are (no step variables: eps and momentum are
// hyper-parameters, fixed for the run).
#include <math.h>

#include "cuda_common.h"
#include "rowwise.h"

// 1 / sqrt(var + eps), in double and rounded once: the one formula for batch and running stats.
__device__ __forceinline__ float bn_invstd(double var, float eps) {
  return (float)(1.0 / sqrt(var + (double)eps));
}

// ---- statistics: the second pass of the column sums, per channel ----------------------------

// sums[t * C + k] = the chunks of term t added in order, in double (chunks 0: no rows, zeros);
// sums[terms * C] = count, this rank's number of values per channel.
__global__ void bn_sums_kernel(double *sums, const float *partial, int chunks, int terms, int C,
                               double count) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= C) return;
  for (int t = 0; t < terms; t++) {
    double acc = 0.0;
    for (int ch = 0; ch < chunks; ch++) acc += partial[(size_t)(ch * terms + t) * C + k];
    sums[(size_t)t * C + k] = acc;
  }
  if (k == 0) sums[(size_t)terms * C] = count;
}

// The batch's count from the sums' last slot: fewer than 2 values give NaN statistics. Without
// sync the host refuses that before the launch; with sync only the global count says, which
// the host does not wait for: at the image sizes the trainer takes (32 and up, the last conv
// block 2x2) a global batch of one image still has 4 values per channel, so it cannot happen
// there. (The CPU backend, whose sums are on the host, refuses it with a message.)
__device__ __forceinline__ double bn_count(const double *count) {
  return *count >= 2.0 ? *count : nan("");
}

// mean[k] = sums[k] / count (sums[C]); running's mean moves towards it.
__global__ void bn_mean_kernel(float *mean, float *running, const double *sums, int C,
                               float momentum) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= C) return;
  const double m = sums[k] / bn_count(sums + C);
  mean[k] = (float)m;
  running[k] = (float)((1.0 - (double)momentum) * running[k] + (double)momentum * m);
}

// invstd[k] from the biased variance dev2[k] / count; running's variance (running + C) moves
// towards the unbiased one.
__global__ void bn_var_kernel(float *invstd, float *running_var, const double *dev2,
                              const double *count, int C, float eps, float momentum) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= C) return;
  const double n = bn_count(count);
  invstd[k] = bn_invstd(dev2[k] / n, eps);
  running_var[k] = (float)((1.0 - (double)momentum) * running_var[k] +
                           (double)momentum * (dev2[k] / (n - 1.0)));
}

// dbeta[k] = sum dy, dgamma[k] = invstd sum dy (x - mean): this rank's sums (sums[k], sums[C + k]).
__global__ void bn_grad_kernel(float *dgamma, float *dbeta, const float *invstd,
                               const double *sums, int C) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= C) return;
  dbeta[k] = (float)sums[k];
  dgamma[k] = (float)(sums[C + k] * (double)invstd[k]);
}

// ---- elementwise: (row, channel) threads -----------------------------------------------------
// threadIdx.x walks the channels of a row (coalesced), threadIdx.y the rows (row_shape_plan with
// one channel per chunk); each thread loads its channel's constants once.

// y = act(gamma (x - mean) invstd + beta); invstd from `spread`, which holds invstd (train: save)
// or the variance (eval: running), as spread_is_var says. y may be x.
template <typename T>
__global__ void bn_norm_kernel(T *y, const T *x, const float *gamma, const float *beta,
                               const float *mean, const float *spread, int spread_is_var,
                               float eps, size_t rows, int C, activation act) {
  const unsigned k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= (unsigned)C) return;
  const float m = mean[k], g = gamma[k], bt = beta[k];
  const float is = spread_is_var ? bn_invstd((double)spread[k], eps) : spread[k];
  for (size_t r = (size_t)blockIdx.y * blockDim.y + threadIdx.y; r < rows;
       r += (size_t)gridDim.y * blockDim.y) {
    const size_t i = r * C + k;
    float v = (act_load(x, i) - m) * is * g + bt;
    if (act == ACT_RELU) v = v < 0.0f ? 0.0f : v; // a NaN propagates, as torch.relu
    act_store(y, i, v);
  }
}

// dx = gamma invstd (dy - sum dy / count - xhat invstd sum dy (x - mean) / count), from the sums
// (sums[k], sums[C + k], the count at sums[2C]: the global batch's under sync).
template <typename T>
__global__ void bn_dx_kernel(T *dx, const T *dy, const T *x, const float *gamma, const float *save,
                             const double *sums, size_t rows, int C) {
  const unsigned k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= (unsigned)C) return;
  const float m = save[k], is = save[C + k], scale = gamma[k] * is;
  const double n = sums[2 * C];
  const float mean_dy = (float)(sums[k] / n);
  const float mean_dy_xhat = (float)(sums[C + k] * (double)is / n);
  for (size_t r = (size_t)blockIdx.y * blockDim.y + threadIdx.y; r < rows;
       r += (size_t)gridDim.y * blockDim.y) {
    const size_t i = r * C + k;
    const float xhat = (act_load(x, i) - m) * is;
    act_store(dx, i, (act_load(dy, i) - mean_dy - xhat * mean_dy_xhat) * scale);
  }
}

// ---- launchers -------------------------------------------------------------------------------

// The (row, channel) launch of the elementwise kernels, and the per-channel one of the rest.
static void bn_row_grid(const cuda_ctx *c, size_t rows, int C, dim3 *grid, dim3 *block) {
  const row_shape s = row_shape_plan(rows, (unsigned)C, CUDA_THREADS, cuda_grid_cap(c));
  *grid = dim3(s.gx, s.gy);
  *block = dim3(s.bx, s.by);
}
static unsigned bn_channel_blocks(int C) { return (unsigned)((C + 255) / 256); }

// The shape as (rows, C), after checking it (FATAL naming `who`).
static size_t bn_rows(op_shape s, const char *who) {
  if (s.N < 0 || s.H <= 0 || s.W <= 0 || s.C <= 0)
    FATAL("%s: bad shape N %d H %d W %d C %d", who, s.N, s.H, s.W, s.C);
  return (size_t)s.N * s.H * s.W;
}

// The per-channel sums of one pass (terms of C, then this rank's count) into sums, from the
// column sums of `mode` over x (and b, around center), then over the ranks under p.sync.
static void bn_pass_sums(cuda_ctx *c, double *sums, colsum_mode mode, const void *x,
                         const void *b, const float *center, size_t rows, int C, bn_params p) {
  const int terms = colsum_terms(mode);
  float *partial = NULL;
  const size_t chunks = rows ? cuda_colsum_partial(c, &partial, mode, x, b, center, rows, C) : 0;
  bn_sums_kernel<<<bn_channel_blocks(C), 256, 0, c->stream>>>(sums, partial, (int)chunks, terms,
                                                              C, (double)rows);
  KERNEL_CHECK();
  if (p.sync) p.sync->sum(p.sync->ctx, sums, (size_t)terms * C + 1);
}

// Batch statistics into save (mean, invstd) and running: pass 1, then pass 2 around the mean.
// The sums buffer holds pass 1's C sums and count, then pass 2's C sums (and a count unused).
static void bn_batch_stats(cuda_ctx *c, float *save, float *running, const void *x, size_t rows,
                           int C, bn_params p) {
  double *sums = cuda_sums(c, 2 * (size_t)C + 2), *dev2 = sums + C + 1;
  bn_pass_sums(c, sums, COLSUM_PLAIN, x, NULL, NULL, rows, C, p);
  bn_mean_kernel<<<bn_channel_blocks(C), 256, 0, c->stream>>>(save, running, sums, C, p.momentum);
  KERNEL_CHECK();
  bn_pass_sums(c, dev2, COLSUM_SQDEV, x, NULL, save, rows, C, p);
  bn_var_kernel<<<bn_channel_blocks(C), 256, 0, c->stream>>>(save + C, running + C, dev2,
                                                             sums + C, C, p.eps, p.momentum);
  KERNEL_CHECK();
}

void cuda_bn_fwd(backend *b, void *y, float *save, const void *x, const float *gamma,
                 const float *beta, float *running, op_shape s, bn_params p, int train,
                 activation act) {
  cuda_ctx *c = ctx_of(b);
  cuda_act_check(act, "bn_fwd");
  const size_t rows = bn_rows(s, "bn_fwd");
  // N = 0: nothing written, running untouched; under sync in training the sums still go on.
  if (rows == 0 && !(train && p.sync)) return;
  if (!gamma || !beta) FATAL("bn_fwd: gamma and beta are required");
  if (train && !save) FATAL("bn_fwd: training needs save (the batch mean and invstd)");
  if (!running) FATAL("bn_fwd: the running statistics are required");
  if (train && rows < 2 && !p.sync)
    FATAL("bn_fwd: training needs more than one value per channel (N * H * W = %zu)", rows);
  if (train) bn_batch_stats(c, save, running, x, rows, s.C, p);
  if (rows == 0) return;
  const float *mean = train ? save : running, *spread = train ? save + s.C : running + s.C;
  dim3 grid, block;
  bn_row_grid(c, rows, s.C, &grid, &block);
  dispatch_act(c, [&](auto tag) {
    using T = typename decltype(tag)::type;
    bn_norm_kernel<T><<<grid, block, 0, c->stream>>>((T *)y, (const T *)x, gamma, beta, mean,
                                                     spread, !train, p.eps, rows, s.C, act);
  });
  KERNEL_CHECK();
}

void cuda_bn_bwd(backend *b, void *dx, float *dgamma, float *dbeta, const void *dy, const void *x,
                 const float *gamma, const float *save, op_shape s, bn_params p) {
  cuda_ctx *c = ctx_of(b);
  const size_t rows = bn_rows(s, "bn_bwd");
  if (!dgamma || !dbeta || !save || !gamma)
    FATAL("bn_bwd: dgamma, dbeta, save and gamma are required");
  if (rows == 0 && !p.sync) { // N = 0: the weight gradients are zero, dx (empty) untouched
    cuda_zero(c, dgamma, (size_t)s.C * sizeof(float));
    cuda_zero(c, dbeta, (size_t)s.C * sizeof(float));
    return;
  }
  if (dx && dx == dy) FATAL("bn_bwd: dx and dy are one buffer (the backward reads dy only)");
  double *sums = cuda_sums(c, 2 * (size_t)s.C + 1);
  bn_params local = p;
  local.sync = NULL; // dgamma and dbeta from this rank's sums, dx from everyone's
  bn_pass_sums(c, sums, COLSUM_DY_XC, dy, x, save, rows, s.C, local);
  bn_grad_kernel<<<bn_channel_blocks(s.C), 256, 0, c->stream>>>(dgamma, dbeta, save + s.C, sums,
                                                                s.C);
  KERNEL_CHECK();
  if (p.sync) p.sync->sum(p.sync->ctx, sums, 2 * (size_t)s.C + 1);
  if (!dx || rows == 0) return;
  dim3 grid, block;
  bn_row_grid(c, rows, s.C, &grid, &block);
  dispatch_act(c, [&](auto tag) {
    using T = typename decltype(tag)::type;
    bn_dx_kernel<T><<<grid, block, 0, c->stream>>>((T *)dx, (const T *)dy, (const T *)x, gamma,
                                                   save, sums, rows, s.C);
  });
  KERNEL_CHECK();
}
