// loss.cu - dropout (forward and backward, one kernel: the mask is recomputed from the
// counter-based key, never stored) and softmax cross-entropy with accuracy.
//
// Dropout masks are the CPU backend's bit for bit: unit j of sample ids[n] is kept iff
// rng_dropout_keep(seed, layer, step, ids[n], j, p) (rng.h is __host__ __device__), and kept
// units are multiplied by the float 1 / (1 - p) computed on the host.
// Cross-entropy runs one thread per sample in double (classes is 10), then one block sums the
// per-sample losses and hits in sample order, so stats are deterministic run to run.
#include "cuda_common.h"
#include "rng.h"

// mode 0: apply the mask; 1: copy (p <= 0); 2: zero (p >= 1).
template <typename T>
__global__ void dropout_kernel(T *out, const T *in, const int32_t *ids, int N, int D, float p,
                               float scale, dropout_key key, int mode, const graph_vars *gv) {
  const uint32_t step = gv ? gv->step : key.step;
  size_t count = (size_t)N * D;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (size_t)gridDim.x * blockDim.x) {
    float v = 0.0f;
    if (mode == 1) {
      v = act_load(in, i);
    } else if (mode == 0) {
      uint32_t n = (uint32_t)(i / D), j = (uint32_t)(i % D);
      if (rng_dropout_keep(key.seed, key.layer, step, (uint32_t)ids[n], j, p))
        v = __fmul_rn(act_load(in, i), scale);
    }
    act_store(out, i, v);
  }
}

static void dropout_apply(backend *b, void *out, const void *in, const int32_t *ids, int N, int D,
                          float p, dropout_key key) {
  cuda_ctx *c = ctx_of(b);
  size_t count = (size_t)N * D;
  if (count == 0) return;
  int mode = p <= 0.0f ? 1 : p >= 1.0f ? 2 : 0;
  if (mode == 1 && out == in) return;
  float scale = mode == 0 ? 1.0f / (1.0f - p) : 1.0f;
  if (c->precision == 2)
    dropout_kernel<bf16><<<cuda_blocks(c, count), CUDA_THREADS, 0, c->stream>>>(
        (bf16 *)out, (const bf16 *)in, ids, N, D, p, scale, key, mode, cuda_vars(c));
  else
    dropout_kernel<float><<<cuda_blocks(c, count), CUDA_THREADS, 0, c->stream>>>(
        (float *)out, (const float *)in, ids, N, D, p, scale, key, mode, cuda_vars(c));
  KERNEL_CHECK();
}

void cuda_dropout_fwd(backend *b, void *y, const void *x, const int32_t *ids, int N, int D,
                      float p, dropout_key key) {
  dropout_apply(b, y, x, ids, N, D, p, key);
}

void cuda_dropout_bwd(backend *b, void *dx, const void *dy, const int32_t *ids, int N, int D,
                      float p, dropout_key key) {
  dropout_apply(b, dx, dy, ids, N, D, p, key);
}

// Per sample: loss = log(sum exp(z - max)) + max - z[label] in double; hit = (first argmax ==
// label); a label outside [0, classes) is recorded as a NaN loss so the host sees it.
template <typename T>
__global__ void xent_kernel(T *dlogits, double *loss, double *hit, const T *logits,
                            const int32_t *labels, int N, int classes, float grad_scale) {
  int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  size_t base = (size_t)n * classes;
  int label = labels[n];
  float mx = act_load(logits, base);
  int am = 0;
  for (int j = 1; j < classes; j++) {
    float z = act_load(logits, base + j);
    if (z > mx) {
      mx = z;
      am = j;
    }
  }
  double s = 0.0;
  for (int j = 0; j < classes; j++) s += exp((double)act_load(logits, base + j) - mx);
  if (label < 0 || label >= classes) {
    loss[n] = __longlong_as_double(0x7ff8000000000000LL);
    hit[n] = 0.0;
    return;
  }
  loss[n] = log(s) + mx - (double)act_load(logits, base + label);
  hit[n] = am == label ? 1.0 : 0.0;
  if (dlogits)
    for (int j = 0; j < classes; j++)
      act_store(dlogits, base + j,
                (float)((exp((double)act_load(logits, base + j) - mx) / s - (j == label ? 1.0 : 0.0)) *
                        grad_scale));
}

// One block: thread t sums samples t, t + 256, ... in order, then a fixed-shape tree.
__global__ void xent_sum_kernel(double *stats, const double *loss, const double *hit, int N) {
  __shared__ double sl[256], sh[256];
  double a = 0.0, h = 0.0;
  for (int i = threadIdx.x; i < N; i += blockDim.x) {
    a += loss[i];
    h += hit[i];
  }
  sl[threadIdx.x] = a;
  sh[threadIdx.x] = h;
  __syncthreads();
  for (int k = blockDim.x / 2; k > 0; k /= 2) {
    if ((int)threadIdx.x < k) {
      sl[threadIdx.x] += sl[threadIdx.x + k];
      sh[threadIdx.x] += sh[threadIdx.x + k];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    stats[0] += sl[0];
    stats[1] += sh[0];
  }
}

void cuda_xent(backend *b, void *dlogits, double *stats, const void *logits,
               const int32_t *labels, int N, int classes, float grad_scale) {
  cuda_ctx *c = ctx_of(b);
  if (N == 0) return;
  if (classes < 1) FATAL("xent: %d classes", classes);
  double *loss = (double *)cuda_scratch(c, 2 * (size_t)N * sizeof(double));
  double *hit = loss + N;
  unsigned blocks = (unsigned)((N + 127) / 128);
  if (c->precision == 2)
    xent_kernel<bf16><<<blocks, 128, 0, c->stream>>>((bf16 *)dlogits, loss, hit,
                                                     (const bf16 *)logits, labels, N, classes,
                                                     grad_scale);
  else
    xent_kernel<float><<<blocks, 128, 0, c->stream>>>((float *)dlogits, loss, hit,
                                                      (const float *)logits, labels, N, classes,
                                                      grad_scale);
  KERNEL_CHECK();
  xent_sum_kernel<<<1, 256, 0, c->stream>>>(stats, loss, hit, N);
  KERNEL_CHECK();
}
