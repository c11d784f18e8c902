// elementwise.cu - small kernels the layer ops share, and the activation ops: the bias +
// activation epilogue (conv_fwd's fused ReLU, linear_fwd's when cuBLASLt's epilogue cannot take
// it, act_fwd), the activation backward (act_bwd), the deterministic per-channel column sums
// (bias gradients, reading dy only; the first pass of bn.cu's statistics), fp32 <-> bf16.
// Each is one template over the activation type (float or bf16, chosen by dispatch_act). The
// three row-wise kernels are also templates over the vector width (dispatch_vec): rowwise.h
// says when a tensor takes ROW_VEC-wide accesses and how the threads cover it (pure host logic,
// tested on the host). An activation op sees its (N, H, W, C) tensor as (N * H * W, C) rows.
#include <type_traits>

#include "cuda_common.h"
#include "cuda_wire.h"
#include "rowwise.h"

// V consecutive activations moved as one aligned access: a float4 (fp32, V = 4), 8 bytes of bf16
// (V = 4), or one element (V = 1, the scalar path). Elements are read and written with
// act_load/act_store on the array, so each element sees exactly the conversions it had when the
// kernels worked element by element.
template <typename T, int V>
struct alignas(sizeof(T) * V) act_vec {
  T v[V];
};

// The vector width as a compile-time constant: f(integral_constant<int, ROW_VEC>) or f(... 1>),
// so that a launcher names its kernel once.
template <typename F> static void dispatch_vec(int vec, F &&f) {
  if (vec == ROW_VEC)
    f(std::integral_constant<int, ROW_VEC>());
  else
    f(std::integral_constant<int, 1>());
}

void cuda_act_check(activation act, const char *who) {
  switch (act) {
  case ACT_NONE:
  case ACT_RELU: return;
  }
  FATAL("%s: unknown activation %d", who, (int)act);
}

// ---- bias + activation, activation backward: (row, column chunk) threads ---------------------

// The launch of a row-wise kernel over (rows, K) tensors a, b and d (d may be NULL): the vector
// width all of them allow, the chunks per row and the (row, chunk) grid (row_shape_plan).
struct row_launch {
  int vec;
  unsigned chunks;
  dim3 grid, block;
};

static row_launch row_launch_plan(const cuda_ctx *c, size_t rows, int K, size_t elem_bytes,
                                  const void *a, const void *b, const void *d) {
  row_launch L;
  L.vec = row_vec_width(K, elem_bytes, a, b);
  if (d && row_vec_width(K, elem_bytes, d, NULL) != ROW_VEC) L.vec = 1;
  L.chunks = (unsigned)(K / L.vec);
  const row_shape s = row_shape_plan(rows, L.chunks, CUDA_THREADS, cuda_grid_cap(c));
  L.grid = dim3(s.gx, s.gy);
  L.block = dim3(s.bx, s.by);
  return L;
}

// y (rows, K) = act(x + bias), x may be y; chunk c = V channels of a row per thread (see
// row_shape_plan). Per element: v = x (+ bias[k]), then for ReLU v < 0 ? 0 : v (a NaN
// propagates, as torch.relu), rounded to the activation type once.
template <typename T, int V>
__global__ void bias_act_kernel(T *y, const T *x, const float *bias, size_t rows,
                                unsigned chunks, activation act) {
  const unsigned c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= chunks) return;
  float b[V];
#pragma unroll
  for (int j = 0; j < V; j++) b[j] = bias ? bias[(size_t)c * V + j] : 0.0f;
  const act_vec<T, V> *x_col = reinterpret_cast<const act_vec<T, V> *>(x) + c; // row 0, chunk c
  act_vec<T, V> *y_col = reinterpret_cast<act_vec<T, V> *>(y) + c;
  for (size_t r = (size_t)blockIdx.y * blockDim.y + threadIdx.y; r < rows;
       r += (size_t)gridDim.y * blockDim.y) {
    act_vec<T, V> a = x_col[r * chunks];
#pragma unroll
    for (int j = 0; j < V; j++) {
      float v = act_load(a.v, j);
      if (bias) v += b[j];
      if (act == ACT_RELU) v = v < 0.0f ? 0.0f : v;
      act_store(a.v, j, v);
    }
    y_col[r * chunks] = a;
  }
}

void cuda_bias_act(cuda_ctx *c, void *y, const void *x, const float *bias, size_t rows, int K,
                   activation act) {
  if (rows == 0 || K <= 0) return;
  if (!bias && act == ACT_NONE) { // the identity: at most a copy
    if (y != x)
      cudaCheck(cudaMemcpyAsync(y, x, rows * (size_t)K * cuda_act_bytes(c),
                                cudaMemcpyDeviceToDevice, c->stream));
    return;
  }
  dispatch_act(c, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const row_launch L = row_launch_plan(c, rows, K, sizeof(T), y, x, NULL);
    dispatch_vec(L.vec, [&](auto vec) {
      bias_act_kernel<T, decltype(vec)::value><<<L.grid, L.block, 0, c->stream>>>(
          (T *)y, (const T *)x, bias, rows, L.chunks, act);
    });
  });
  KERNEL_CHECK();
}

// ReLU backward from the output: y = relu(z) > 0 exactly where z > 0, so dx = y > 0 ? dy : 0.
// Tested as `y <= 0`, not `!(y > 0)`: a NaN output passes dy through, as the CPU backend (torch
// threshold_backward). A passed element is copied with its bits (an exact selection in either
// type); a masked one is stored as 0.
template <typename T, int V>
__global__ void relu_bwd_kernel(T *dx, const T *dy, const T *y, size_t rows, unsigned chunks) {
  const unsigned c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= chunks) return;
  const act_vec<T, V> *g_col = reinterpret_cast<const act_vec<T, V> *>(dy) + c; // row 0, chunk c
  const act_vec<T, V> *y_col = reinterpret_cast<const act_vec<T, V> *>(y) + c;
  act_vec<T, V> *d_col = reinterpret_cast<act_vec<T, V> *>(dx) + c;
  for (size_t r = (size_t)blockIdx.y * blockDim.y + threadIdx.y; r < rows;
       r += (size_t)gridDim.y * blockDim.y) {
    act_vec<T, V> g = g_col[r * chunks];
    const act_vec<T, V> a = y_col[r * chunks];
#pragma unroll
    for (int j = 0; j < V; j++)
      if (act_load(a.v, j) <= 0.0f) act_store(g.v, j, 0.0f);
    d_col[r * chunks] = g;
  }
}

// The activation ops: the tensor (N, H, W, C) as (N * H * W, C) rows, so that the row-wise
// kernels' vector path applies whenever C % ROW_VEC == 0 and the tensors are aligned.
void cuda_act_fwd(backend *b, void *y, const void *x, op_shape s, activation act) {
  cuda_ctx *c = ctx_of(b);
  cuda_act_check(act, "act_fwd");
  cuda_bias_act(c, y, x, NULL, (size_t)s.N * s.H * s.W, s.C, act);
}

void cuda_act_bwd(backend *b, void *dx, const void *dy, const void *y, op_shape s,
                  activation act) {
  cuda_ctx *c = ctx_of(b);
  cuda_act_check(act, "act_bwd");
  const size_t rows = (size_t)s.N * s.H * s.W;
  if (rows == 0 || s.C <= 0) return;
  if (dx == dy) FATAL("act_bwd: dx and dy are one buffer (the backward writes a buffer of its own)");
  if (act == ACT_NONE) {
    cudaCheck(cudaMemcpyAsync(dx, dy, rows * (size_t)s.C * cuda_act_bytes(c),
                              cudaMemcpyDeviceToDevice, c->stream));
    return;
  }
  dispatch_act(c, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const row_launch L = row_launch_plan(c, rows, s.C, sizeof(T), dx, dy, y);
    dispatch_vec(L.vec, [&](auto vec) {
      relu_bwd_kernel<T, decltype(vec)::value><<<L.grid, L.block, 0, c->stream>>>(
          (T *)dx, (const T *)dy, (const T *)y, rows, L.chunks);
    });
  });
  KERNEL_CHECK();
}

// ---- deterministic column sums: bias gradients, BatchNorm statistics -------------------------

// Column sums in two deterministic passes (the shapes and the order: colsum_plan in rowwise.h).
// Pass 1: block (COLSUM_TX, COLSUM_TY) owns COLSUM_TX column chunks of one chunk of rows; lanes
// read consecutive chunks of a row (coalesced), the COLSUM_TY rows of threads stride the row
// chunk, a shared-memory tree sums them into partial[chunk][term][k]. Pass 2 sums the chunks in
// order (colsum_final_kernel for the bias gradients, bn.cu's own for its statistics).
// The inputs are only read (dy is the gradient the walker owns; an activation's backward has run
// before). What a row adds per channel is the mode's terms (colsum_mode, cuda_common.h).
// Same order, same bits: a thread with V channels keeps V separate accumulators per term, and
// channel k gets exactly the additions the scalar kernel (V = 1, one channel per thread) does:
// rows r0 + ty, r0 + ty + COLSUM_TY, ... < r1 in increasing order from 0.0f, then the same tree
// over ty, then the chunks in order. Only the loads are V wide. COLSUM_PLAIN adds the plain
// value (no FMA involved), so the bias gradients are the bits they were before the modes.
template <typename T, int V, colsum_mode MODE>
__global__ void colsum_partial_kernel(float *partial, const T *a, const T *b, const float *center,
                                      size_t rows, int K, size_t rows_per_chunk) {
  constexpr int M = colsum_terms_of<MODE>::value;
  __shared__ float s[COLSUM_TY][M * V][COLSUM_TX]; // [ty][term, j][tx]: lanes, consecutive words
  const unsigned tx = threadIdx.x, ty = threadIdx.y;
  const size_t c = (size_t)blockIdx.x * COLSUM_TX + tx; // column chunk: channels k0 .. k0 + V - 1
  const size_t k0 = c * V, chunks = (size_t)K / V;        // K % V == 0 (row_vec_width)
  const size_t r0 = (size_t)blockIdx.y * rows_per_chunk;
  const size_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  float acc[M * V], m[V];
#pragma unroll
  for (int t = 0; t < M * V; t++) acc[t] = 0.0f;
#pragma unroll
  for (int j = 0; j < V; j++) m[j] = MODE != COLSUM_PLAIN && k0 < (size_t)K ? center[k0 + j] : 0.0f;
  if (k0 < (size_t)K) {
    const act_vec<T, V> *a_col = reinterpret_cast<const act_vec<T, V> *>(a) + c; // row 0, chunk c
    for (size_t r = r0 + ty; r < r1; r += COLSUM_TY) {
      const act_vec<T, V> va = a_col[r * chunks];
      if constexpr (MODE == COLSUM_PLAIN) {
#pragma unroll
        for (int j = 0; j < V; j++) acc[j] += act_load(va.v, j);
      } else if constexpr (MODE == COLSUM_SQDEV) {
#pragma unroll
        for (int j = 0; j < V; j++) {
          const float d = act_load(va.v, j) - m[j];
          acc[j] = __fmaf_rn(d, d, acc[j]); // one rounding, the same in every instantiation
        }
      } else { // COLSUM_DY_XC: a = dy, b = x
        const act_vec<T, V> vb = (reinterpret_cast<const act_vec<T, V> *>(b) + c)[r * chunks];
#pragma unroll
        for (int j = 0; j < V; j++) {
          const float g = act_load(va.v, j);
          acc[j] += g;
          acc[V + j] = __fmaf_rn(g, act_load(vb.v, j) - m[j], acc[V + j]);
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < M * V; t++) s[ty][t][tx] = acc[t];
  __syncthreads();
  for (unsigned h = COLSUM_TY / 2; h > 0; h /= 2) {
    if (ty < h) {
#pragma unroll
      for (int t = 0; t < M * V; t++) s[ty][t][tx] += s[ty + h][t][tx];
    }
    __syncthreads();
  }
  if (ty == 0 && k0 < (size_t)K) {
#pragma unroll
    for (int t = 0; t < M; t++)
#pragma unroll
      for (int j = 0; j < V; j++)
        partial[((size_t)blockIdx.y * M + t) * K + k0 + j] = s[0][t * V + j][tx];
  }
}

__global__ void colsum_final_kernel(float *out, const float *partial, int chunks, int K) {
  int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= K) return;
  float acc = 0.0f;
  for (int ch = 0; ch < chunks; ch++) acc += partial[(size_t)ch * K + k];
  out[k] = acc;
}

// The mode as a compile-time constant, so that the launcher names its kernel once.
template <typename F> static void dispatch_colsum(colsum_mode mode, F &&f) {
  switch (mode) {
  case COLSUM_PLAIN: f(std::integral_constant<colsum_mode, COLSUM_PLAIN>()); return;
  case COLSUM_SQDEV: f(std::integral_constant<colsum_mode, COLSUM_SQDEV>()); return;
  case COLSUM_DY_XC: f(std::integral_constant<colsum_mode, COLSUM_DY_XC>()); return;
  }
  FATAL("column sums: unknown mode %d", (int)mode);
}

// Pass 1 for (rows, K) tensors a (and b), rows >= 1: the vector width from the pointers, the
// chunks from colsum_plan (independent of the width), the partial sums in the scratch buffer.
size_t cuda_colsum_partial(cuda_ctx *c, float **partial, colsum_mode mode, const void *a,
                           const void *b, const float *center, size_t rows, int K) {
  if ((mode == COLSUM_DY_XC) != (b != NULL) || (mode != COLSUM_PLAIN) != (center != NULL))
    FATAL("column sums: mode %d given the wrong inputs", (int)mode);
  const int terms = colsum_terms(mode);
  size_t chunks = 0;
  dispatch_act(c, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int vec = row_vec_width(K, sizeof(T), a, b);
    const colsum_shape s = colsum_plan(rows, K, vec, c->sm_count);
    *partial = (float *)cuda_scratch(c, s.chunks * terms * (size_t)K * sizeof(float));
    chunks = s.chunks;
    const dim3 grid(s.gx, (unsigned)s.chunks), block(COLSUM_TX, COLSUM_TY);
    dispatch_vec(vec, [&](auto v) {
      dispatch_colsum(mode, [&](auto md) {
        colsum_partial_kernel<T, decltype(v)::value, decltype(md)::value>
            <<<grid, block, 0, c->stream>>>(*partial, (const T *)a, (const T *)b, center, rows, K,
                                            s.per);
      });
    });
  });
  KERNEL_CHECK();
  return chunks;
}

void cuda_bias_grad(cuda_ctx *c, float *db, const void *dy, size_t rows, int K) {
  if (!db || K <= 0) return;
  if (rows == 0) {
    cuda_zero(c, db, (size_t)K * sizeof(float));
    return;
  }
  float *partial;
  const size_t chunks = cuda_colsum_partial(c, &partial, COLSUM_PLAIN, dy, NULL, NULL, rows, K);
  colsum_final_kernel<<<(unsigned)((K + 255) / 256), 256, 0, c->stream>>>(db, partial,
                                                                          (int)chunks, K);
  KERNEL_CHECK();
}

// ---- fp32 <-> bf16 ---------------------------------------------------------------------------

__global__ void f32_to_bf16_kernel(bf16 *dst, const float *src, size_t count) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (size_t)gridDim.x * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void bf16_to_f32_kernel(float *dst, const bf16 *src, size_t count) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (size_t)gridDim.x * blockDim.x)
    dst[i] = __bfloat162float(src[i]);
}

// The conversions on any stream: the compute stream (the bf16 parameter shadow, bf16 weight
// gradients) and the NCCL reducer's stream (the bf16 wire format, declared in cuda_wire.h).
extern "C" void cuda_wire_pack(uint16_t *dst, const float *src, size_t count, void *stream) {
  if (count == 0) return;
  f32_to_bf16_kernel<<<plan_blocks(count, CUDA_THREADS, 4096), CUDA_THREADS, 0,
                       (cudaStream_t)stream>>>((bf16 *)dst, src, count);
  KERNEL_CHECK();
}

extern "C" void cuda_wire_unpack(float *dst, const uint16_t *src, size_t count, void *stream) {
  if (count == 0) return;
  bf16_to_f32_kernel<<<plan_blocks(count, CUDA_THREADS, 4096), CUDA_THREADS, 0,
                       (cudaStream_t)stream>>>(dst, (const bf16 *)src, count);
  KERNEL_CHECK();
}

void cuda_f32_to_bf16(cuda_ctx *c, bf16 *dst, const float *src, size_t count) {
  cuda_wire_pack((uint16_t *)dst, src, count, c->stream);
}

void cuda_bf16_to_f32(cuda_ctx *c, float *dst, const bf16 *src, size_t count) {
  cuda_wire_unpack(dst, (const uint16_t *)src, count, c->stream);
}
