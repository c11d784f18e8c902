// loss.cu - dropout (forward and backward, one kernel: the mask is recomputed from the
// counter-based key, never stored) and softmax cross-entropy with accuracy.
//
// Dropout masks are the CPU backend's bit for bit: unit j of sample ids[n] is kept iff
// rng_dropout_keep(seed, layer, step, ids[n], j, p) (rng.h is VGG_HD: host and device), and
// kept units are multiplied by the float 1 / (1 - p) computed on the host. The step is read
// from the device's step variables (c->d_vars) in every mode (cuda_common.h).
// Cross-entropy runs one thread per sample in double (classes is 10), then one block sums the
// per-sample losses and hits in sample order, so stats are deterministic run to run.
// A label outside [0, classes) stops the CPU backend at once; a kernel cannot stop the host, so
// here the sample gets a NaN loss and a zero gradient row, the summing block records the first
// such sample of the batch in page-locked host memory (xent_bad_label, mapped into the device's
// address space), and the host FATALs with the same message when it next looks: at the next
// cross-entropy launch or graph replay, and after the synchronisation of a download, a sync or
// a graph's release.
// Looking is a read of host memory, so it needs no synchronisation and works the same whether
// the kernel ran eagerly or inside a replayed graph.
#include <atomic>
#include <string.h>

#include "cuda_common.h"
#include "rng.h"

// mode 0: apply the mask; 1: copy (p <= 0); 2: zero (p >= 1). The step is the step
// variable in device memory (cuda_common.h), the same read eager or replayed; seed and layer
// are fixed per layer.
template <typename T>
__global__ void dropout_kernel(T *out, const T *in, const int32_t *ids, int N, int D, float p,
                               float scale, uint64_t seed, uint32_t layer, int mode,
                               const dev_vars *gv) {
  const uint32_t step = gv->step;
  size_t count = (size_t)N * D;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (size_t)gridDim.x * blockDim.x) {
    float v = 0.0f;
    if (mode == 1) {
      v = act_load(in, i);
    } else if (mode == 0) {
      uint32_t n = (uint32_t)(i / D), j = (uint32_t)(i % D);
      if (rng_dropout_keep(seed, layer, step, (uint32_t)ids[n], j, p))
        v = __fmul_rn(act_load(in, i), scale);
    }
    act_store(out, i, v);
  }
}

// out (N, D) with D = H * W * C features per sample (backend.h).
static void dropout_apply(backend *b, void *out, const void *in, const int32_t *ids, op_shape s,
                          float p, dropout_key key) {
  cuda_ctx *c = ctx_of(b);
  const int D = s.H * s.W * s.C;
  size_t count = (size_t)s.N * D;
  if (count == 0) return;
  int mode = p <= 0.0f ? 1 : p >= 1.0f ? 2 : 0;
  if (mode == 1 && out == in) return;
  float scale = mode == 0 ? 1.0f / (1.0f - p) : 1.0f;
  cuda_stage(c, &c->d_vars->step, key.step);
  dispatch_act(c, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dropout_kernel<T><<<cuda_blocks(c, count), CUDA_THREADS, 0, c->stream>>>(
        (T *)out, (const T *)in, ids, s.N, D, p, scale, key.seed, key.layer, mode, c->d_vars);
  });
  KERNEL_CHECK();
}

void cuda_dropout_fwd(backend *b, void *y, const void *x, const int32_t *ids, op_shape s,
                      float p, dropout_key key) {
  dropout_apply(b, y, x, ids, s, p, key);
}

void cuda_dropout_bwd(backend *b, void *dx, const void *dy, const int32_t *ids, op_shape s,
                      float p, dropout_key key) {
  dropout_apply(b, dx, dy, ids, s, p, key);
}

// ---- softmax cross-entropy -----------------------------------------------------------------

// The first invalid label met (see the top of the file). Written once by the device: the details
// first, then found = 1 behind a system-wide fence, so a host that sees found sees the details.
struct xent_bad_label {
  int32_t found;
  int32_t label, sample, classes;
};

// Per sample: loss = log(sum exp(z - max)) + max - z[label] in double; hit = (first argmax ==
// label). A label outside [0, classes) gets a NaN loss (so the stats show it too), no hit and, in
// place of a gradient, a row of zeros: nothing downstream reads an unwritten dlogits row.
template <typename T>
__global__ void xent_kernel(T *dlogits, double *loss, double *hit, const T *logits,
                            const int32_t *labels, int N, int classes, float grad_scale) {
  int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  size_t base = (size_t)n * classes;
  int label = labels[n];
  if (label < 0 || label >= classes) {
    loss[n] = __longlong_as_double(0x7ff8000000000000LL);
    hit[n] = 0.0;
    if (dlogits)
      for (int j = 0; j < classes; j++) act_store(dlogits, base + j, 0.0f);
    return;
  }
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
  loss[n] = log(s) + mx - (double)act_load(logits, base + label);
  hit[n] = am == label ? 1.0 : 0.0;
  if (dlogits)
    for (int j = 0; j < classes; j++)
      act_store(dlogits, base + j,
                (float)((exp((double)act_load(logits, base + j) - mx) / s - (j == label ? 1.0 : 0.0)) *
                        grad_scale));
}

// One block of XENT_SUM_THREADS: thread t sums samples t, t + XENT_SUM_THREADS, ... in order,
// then a fixed-shape tree. The same tree takes the minimum over the threads' first invalid
// samples; thread 0 records that sample unless an earlier launch recorded one already.
#define XENT_SUM_THREADS 256
__global__ void xent_sum_kernel(double *stats, volatile xent_bad_label *bad, const double *loss,
                                const double *hit, const int32_t *labels, int N, int classes) {
  __shared__ double sl[XENT_SUM_THREADS], sh[XENT_SUM_THREADS];
  __shared__ int sb[XENT_SUM_THREADS];
  const int t = threadIdx.x;
  double a = 0.0, h = 0.0;
  int first_bad = N; // N: none
  for (int i = t; i < N; i += XENT_SUM_THREADS) {
    a += loss[i];
    h += hit[i];
    if (first_bad == N && (labels[i] < 0 || labels[i] >= classes)) first_bad = i;
  }
  sl[t] = a;
  sh[t] = h;
  sb[t] = first_bad;
  __syncthreads();
  for (int k = XENT_SUM_THREADS / 2; k > 0; k /= 2) {
    if (t < k) {
      sl[t] += sl[t + k];
      sh[t] += sh[t + k];
      sb[t] = min(sb[t], sb[t + k]);
    }
    __syncthreads();
  }
  if (t == 0) {
    stats[0] += sl[0];
    stats[1] += sh[0];
    if (sb[0] < N && !bad->found) { // the error path only: a read of host memory
      bad->label = labels[sb[0]];
      bad->sample = sb[0];
      bad->classes = classes;
      __threadfence_system();
      bad->found = 1;
    }
  }
}

void cuda_xent_prepare(cuda_ctx *c) {
  if (c->xent_bad) return;
  if (c->capturing) // capture_begin prepares it: an allocation here would break the capture
    FATAL("the cross-entropy error record was not allocated before a CUDA graph capture");
  void *h = NULL, *d = NULL;
  cudaCheck(cudaHostAlloc(&h, sizeof(xent_bad_label), cudaHostAllocMapped));
  memset(h, 0, sizeof(xent_bad_label));
  cudaCheck(cudaHostGetDevicePointer(&d, h, 0));
  c->xent_bad = (xent_bad_label *)h;
  c->d_xent_bad = (xent_bad_label *)d;
}

void cuda_xent_check(const cuda_ctx *c) {
  const volatile xent_bad_label *bad = c->xent_bad;
  if (!bad || !bad->found) return;
  std::atomic_thread_fence(std::memory_order_acquire); // the details were written before found
  FATAL("xent: label %d of sample %d outside [0, %d) (reported by the GPU after that batch's "
        "cross-entropy ran; its loss is NaN)", (int)bad->label, (int)bad->sample,
        (int)bad->classes);
}

void cuda_xent_free(cuda_ctx *c) {
  if (c->xent_bad) cudaCheck(cudaFreeHost(c->xent_bad));
  c->xent_bad = c->d_xent_bad = NULL;
}

void cuda_xent(backend *b, void *dlogits, double *stats, const void *logits,
               const int32_t *labels, int N, int classes, float grad_scale) {
  cuda_ctx *c = ctx_of(b);
  cuda_xent_check(c); // an earlier launch's invalid label, once that launch has run
  if (N == 0) return;
  if (classes < 1) FATAL("xent: %d classes", classes);
  cuda_xent_prepare(c);
  double *loss = (double *)cuda_scratch(c, 2 * (size_t)N * sizeof(double));
  double *hit = loss + N;
  unsigned blocks = (unsigned)((N + 127) / 128);
  dispatch_act(c, [&](auto tag) {
    using T = typename decltype(tag)::type;
    xent_kernel<T><<<blocks, 128, 0, c->stream>>>((T *)dlogits, loss, hit, (const T *)logits,
                                                  labels, N, classes, grad_scale);
  });
  KERNEL_CHECK();
  xent_sum_kernel<<<1, XENT_SUM_THREADS, 0, c->stream>>>(stats, c->d_xent_bad, loss, hit, labels,
                                                         N, classes);
  KERNEL_CHECK();
}
