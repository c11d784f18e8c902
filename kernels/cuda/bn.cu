// bn.cu - BatchNorm2d (bn_fwd, bn_bwd; backend.h says what each computes) on NHWC activations,
// seen as (rows = N * H * W, C) with the channel fastest. Our own kernels, not cuDNN's: the
// legacy cudnnBatchNormalization* calls are CUDNN_DEPRECATED in cuDNN 9 (and the build is
// -Werror), and these are simple, deterministic (fixed reduction order, so graphs-on and
// graphs-off runs agree bit for bit) and follow PyTorch's arithmetic where it matters.
//
// Statistics (fp32 inputs of either activation type, fp32 results):
//   train  pass 1: per-channel sums of x (cuda_colsum_partial, COLSUM_PLAIN, elementwise.cu),
//                  the chunks added in order in double -> mean into save[0, C);
//          pass 2: sums of (x - mean)^2 around that fp32 mean (COLSUM_SQDEV) -> the biased
//                  variance, invstd = 1 / sqrt(var + eps) into save[C, 2C); running becomes
//                  (1 - momentum) running + momentum (mean, var * count / (count - 1)).
//   then   y = act(gamma (x - mean) invstd + beta), one thread per (row, channel).
//   eval   the same normalisation from running (mean, var); save and running are not touched.
// Backward from save: the sums of dy and dy (x - mean) in one pass (COLSUM_DY_XC), so
//   dbeta = sum dy, dgamma = invstd sum dy (x - mean)  (written, not accumulated), and
//   dx = gamma invstd (dy - dbeta / count - xhat dgamma / count), xhat = (x - mean) invstd.
// dy and x are only read. The partial sums live in the scratch buffer, which the eager step
// before a capture has sized; nothing here allocates, copies or synchronises otherwise, so a
// captured step replays these kernels as they are (no step variables: eps and momentum are
// hyper-parameters, fixed for the run).
#include <math.h>

#include "cuda_common.h"
#include "rowwise.h"

// 1 / sqrt(var + eps), in double and rounded once: the one formula for batch and running stats.
__device__ __forceinline__ float bn_invstd(double var, float eps) {
  return (float)(1.0 / sqrt(var + (double)eps));
}

// ---- statistics: the second pass of the column sums, per channel ----------------------------

// mean[k] = sum / count (the chunks of COLSUM_PLAIN added in order, in double); running's mean
// moves towards it unless running is NULL.
__global__ void bn_mean_kernel(float *mean, float *running, const float *partial, int chunks,
                               int C, double count, float momentum) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= C) return;
  double acc = 0.0;
  for (int ch = 0; ch < chunks; ch++) acc += partial[(size_t)ch * C + k];
  const double m = acc / count;
  mean[k] = (float)m;
  if (running)
    running[k] = (float)((1.0 - (double)momentum) * running[k] + (double)momentum * m);
}

// invstd[k] from the biased variance (the chunks of COLSUM_SQDEV / count); running's variance
// (running + C) moves towards the unbiased one (count >= 2, checked by the launcher).
__global__ void bn_var_kernel(float *invstd, float *running_var, const float *partial, int chunks,
                              int C, double count, float eps, float momentum) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= C) return;
  double acc = 0.0;
  for (int ch = 0; ch < chunks; ch++) acc += partial[(size_t)ch * C + k];
  invstd[k] = bn_invstd(acc / count, eps);
  if (running_var)
    running_var[k] = (float)((1.0 - (double)momentum) * running_var[k] +
                             (double)momentum * (acc / (count - 1.0)));
}

// dbeta[k] = sum dy, dgamma[k] = invstd sum dy (x - mean) (the chunks of COLSUM_DY_XC: two
// terms per chunk, added in order in double).
__global__ void bn_grad_kernel(float *dgamma, float *dbeta, const float *invstd,
                               const float *partial, int chunks, int C) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= C) return;
  double s_dy = 0.0, s_dyxc = 0.0;
  for (int ch = 0; ch < chunks; ch++) {
    s_dy += partial[(size_t)(2 * ch) * C + k];
    s_dyxc += partial[(size_t)(2 * ch + 1) * C + k];
  }
  dbeta[k] = (float)s_dy;
  dgamma[k] = (float)(s_dyxc * (double)invstd[k]);
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

// dx = gamma invstd (dy - dbeta / count - xhat dgamma / count), from the already written
// dgamma and dbeta (stream order: bn_grad_kernel ran before).
template <typename T>
__global__ void bn_dx_kernel(T *dx, const T *dy, const T *x, const float *gamma, const float *save,
                             const float *dgamma, const float *dbeta, size_t rows, int C,
                             double count) {
  const unsigned k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= (unsigned)C) return;
  const float m = save[k], is = save[C + k], scale = gamma[k] * is;
  const float mean_dy = (float)((double)dbeta[k] / count);
  const float mean_dy_xhat = (float)((double)dgamma[k] / count);
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

// Batch statistics into save (mean, invstd) and running (pass 1, then pass 2 around the mean).
static void bn_batch_stats(cuda_ctx *c, float *save, float *running, const void *x, size_t rows,
                           int C, bn_params p) {
  const double count = (double)rows;
  float *partial;
  size_t chunks = cuda_colsum_partial(c, &partial, COLSUM_PLAIN, x, NULL, NULL, rows, C);
  bn_mean_kernel<<<bn_channel_blocks(C), 256, 0, c->stream>>>(save, running, partial, (int)chunks,
                                                              C, count, p.momentum);
  KERNEL_CHECK();
  chunks = cuda_colsum_partial(c, &partial, COLSUM_SQDEV, x, NULL, save, rows, C);
  bn_var_kernel<<<bn_channel_blocks(C), 256, 0, c->stream>>>(
      save + C, running ? running + C : NULL, partial, (int)chunks, C, count, p.eps, p.momentum);
  KERNEL_CHECK();
}

void cuda_bn_fwd(backend *b, void *y, float *save, const void *x, const float *gamma,
                 const float *beta, float *running, op_shape s, bn_params p, int train,
                 activation act) {
  cuda_ctx *c = ctx_of(b);
  cuda_act_check(act, "bn_fwd");
  const size_t rows = bn_rows(s, "bn_fwd");
  if (rows == 0) return; // N = 0: nothing written, running untouched
  if (!gamma || !beta) FATAL("bn_fwd: gamma and beta are required");
  if (train && !save) FATAL("bn_fwd: training needs save (the batch mean and invstd)");
  if (!running) FATAL("bn_fwd: the running statistics are required");
  if (train && rows < 2)
    FATAL("bn_fwd: training needs more than one value per channel (N * H * W = %zu)", rows);
  if (train) bn_batch_stats(c, save, running, x, rows, s.C, p);
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
                 const float *gamma, const float *save, op_shape s) {
  cuda_ctx *c = ctx_of(b);
  const size_t rows = bn_rows(s, "bn_bwd");
  if (!dgamma || !dbeta || !save || !gamma)
    FATAL("bn_bwd: dgamma, dbeta, save and gamma are required");
  if (rows == 0) { // N = 0: the weight gradients are zero, dx (empty) untouched
    cuda_zero(c, dgamma, (size_t)s.C * sizeof(float));
    cuda_zero(c, dbeta, (size_t)s.C * sizeof(float));
    return;
  }
  if (dx && dx == dy) FATAL("bn_bwd: dx and dy are one buffer (the backward reads dy only)");
  float *partial;
  const size_t chunks = cuda_colsum_partial(c, &partial, COLSUM_DY_XC, dy, x, save, rows, s.C);
  bn_grad_kernel<<<bn_channel_blocks(s.C), 256, 0, c->stream>>>(dgamma, dbeta, save + s.C,
                                                                partial, (int)chunks, s.C);
  KERNEL_CHECK();
  if (!dx) return;
  dim3 grid, block;
  bn_row_grid(c, rows, s.C, &grid, &block);
  dispatch_act(c, [&](auto tag) {
    using T = typename decltype(tag)::type;
    bn_dx_kernel<T><<<grid, block, 0, c->stream>>>((T *)dx, (const T *)dy, (const T *)x, gamma,
                                                   save, dgamma, dbeta, rows, s.C, (double)rows);
  });
  KERNEL_CHECK();
}
