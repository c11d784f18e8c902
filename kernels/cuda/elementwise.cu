// elementwise.cu - small kernels the layer ops share: bias + ReLU epilogue, ReLU backward
// mask, the deterministic per-channel column sum (bias gradients, with the ReLU mask applied
// in the same pass), fp32 <-> bf16 conversion.
// Each is one template over the activation type (float or bf16) and a launcher that picks the
// type from the context's precision. The two row-wise kernels (bias + ReLU, mask + column sums)
// are also templates over the vector width: rowwise.h says when a tensor takes ROW_VEC-wide
// accesses and how the threads cover it (pure host logic, tested on the host).
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

// The most blocks a launch asks for (as cuda_blocks): grid-stride loops cover the rest.
static unsigned grid_cap(const cuda_ctx *c) {
  return (unsigned)(c->sm_count > 0 ? c->sm_count * 32 : 4096);
}

// y (rows, K) in place, chunk c = V channels of a row per thread (see row_shape_plan); the
// per-element arithmetic is unchanged: v = y (+ bias[k]), then v < 0 ? 0 : v (a NaN propagates,
// as torch.relu), rounded to the activation type once.
template <typename T, int V>
__global__ void bias_act_kernel(T *y, const float *bias, size_t rows, unsigned chunks, int relu) {
  const unsigned c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= chunks) return;
  float b[V];
#pragma unroll
  for (int j = 0; j < V; j++) b[j] = bias ? bias[(size_t)c * V + j] : 0.0f;
  act_vec<T, V> *col = reinterpret_cast<act_vec<T, V> *>(y) + c; // row 0, chunk c
  for (size_t r = (size_t)blockIdx.y * blockDim.y + threadIdx.y; r < rows;
       r += (size_t)gridDim.y * blockDim.y) {
    act_vec<T, V> a = col[r * chunks];
#pragma unroll
    for (int j = 0; j < V; j++) {
      float v = act_load(a.v, j);
      if (bias) v += b[j];
      if (relu) v = v < 0.0f ? 0.0f : v;
      act_store(a.v, j, v);
    }
    col[r * chunks] = a;
  }
}

template <typename T>
static void bias_act_launch(cuda_ctx *c, T *y, const float *bias, size_t rows, int K, int relu) {
  const int vec = row_vec_width(K, sizeof(T), y, NULL);
  const unsigned chunks = (unsigned)(K / vec);
  const row_shape s = row_shape_plan(rows, chunks, CUDA_THREADS, grid_cap(c));
  const dim3 grid(s.gx, s.gy), block(s.bx, s.by);
  if (vec == ROW_VEC)
    bias_act_kernel<T, ROW_VEC><<<grid, block, 0, c->stream>>>(y, bias, rows, chunks, relu);
  else
    bias_act_kernel<T, 1><<<grid, block, 0, c->stream>>>(y, bias, rows, chunks, relu);
  KERNEL_CHECK();
}

void cuda_bias_act(cuda_ctx *c, void *y, const float *bias, size_t rows, int K, int relu) {
  if (rows == 0 || K <= 0 || (!bias && !relu)) return;
  if (c->precision == 2)
    bias_act_launch(c, (bf16 *)y, bias, rows, K, relu);
  else
    bias_act_launch(c, (float *)y, bias, rows, K, relu);
}

// ReLU backward from the output: y = relu(z) > 0 exactly where z > 0. `y <= 0`, not
// `!(y > 0)`: a NaN output passes dy through, as the CPU backend (torch threshold_backward).
template <typename T>
__global__ void relu_mask_kernel(T *dy, const T *y, size_t count) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (size_t)gridDim.x * blockDim.x)
    if (act_load(y, i) <= 0.0f) act_store(dy, i, 0.0f);
}

void cuda_relu_mask(cuda_ctx *c, void *dy, const void *y, size_t count) {
  if (count == 0) return;
  if (c->precision == 2)
    relu_mask_kernel<bf16><<<cuda_blocks(c, count), CUDA_THREADS, 0, c->stream>>>((bf16 *)dy, (const bf16 *)y, count);
  else
    relu_mask_kernel<float><<<cuda_blocks(c, count), CUDA_THREADS, 0, c->stream>>>((float *)dy, (const float *)y, count);
  KERNEL_CHECK();
}

// Column sums in two deterministic passes (the shapes and the order: colsum_plan in rowwise.h).
// Pass 1: block (COLSUM_TX, COLSUM_TY) owns COLSUM_TX column chunks of one chunk of rows; lanes
// read consecutive chunks of a row (coalesced), the COLSUM_TY rows of threads stride the row
// chunk, a shared-memory tree sums them into partial[chunk][k]. Pass 2 sums the chunks in order.
// With y, the same pass applies the ReLU-backward mask to dy first (as relu_mask_kernel), so
// the masked gradient is written and summed in one read of dy.
// Same order, same bits: a thread with V channels keeps V separate accumulators, and channel k
// gets exactly the additions the scalar kernel (V = 1, one channel per thread) does: rows
// r0 + ty, r0 + ty + COLSUM_TY, ... < r1 in increasing order from 0.0f, then the same tree over ty,
// then the chunks in order. Only the loads and stores are V wide. A masked element is stored as
// act_store(0.0f) and summed as 0.0f, as before; an element the mask keeps is stored back with the
// bits it was loaded with (the vector is written whole when any of its elements was masked).
template <typename T, int V>
__global__ void colsum_partial_kernel(float *partial, T *dy, const T *y, size_t rows, int K,
                                      size_t rows_per_chunk) {
  __shared__ float s[COLSUM_TY][V][COLSUM_TX]; // [ty][j][tx]: lanes hit consecutive words
  const unsigned tx = threadIdx.x, ty = threadIdx.y;
  const size_t c = (size_t)blockIdx.x * COLSUM_TX + tx; // column chunk: channels k0 .. k0 + V - 1
  const size_t k0 = c * V, chunks = (size_t)K / V;        // K % V == 0 (row_vec_width)
  const size_t r0 = (size_t)blockIdx.y * rows_per_chunk;
  const size_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  float acc[V];
#pragma unroll
  for (int j = 0; j < V; j++) acc[j] = 0.0f;
  if (k0 < (size_t)K) {
    act_vec<T, V> *g_col = reinterpret_cast<act_vec<T, V> *>(dy) + c; // row 0, chunk c
    const act_vec<T, V> *y_col = y ? reinterpret_cast<const act_vec<T, V> *>(y) + c : NULL;
    for (size_t r = r0 + ty; r < r1; r += COLSUM_TY) {
      act_vec<T, V> g = g_col[r * chunks];
      if (y_col) {
        const act_vec<T, V> a = y_col[r * chunks];
        bool masked = false;
#pragma unroll
        for (int j = 0; j < V; j++)
          if (act_load(a.v, j) <= 0.0f) { // not !(y > 0): a NaN output passes dy (see above)
            act_store(g.v, j, 0.0f);
            masked = true;
          }
        if (masked) g_col[r * chunks] = g;
      }
#pragma unroll
      for (int j = 0; j < V; j++) acc[j] += act_load(g.v, j);
    }
  }
#pragma unroll
  for (int j = 0; j < V; j++) s[ty][j][tx] = acc[j];
  __syncthreads();
  for (unsigned h = COLSUM_TY / 2; h > 0; h /= 2) {
    if (ty < h) {
#pragma unroll
      for (int j = 0; j < V; j++) s[ty][j][tx] += s[ty + h][j][tx];
    }
    __syncthreads();
  }
  if (ty == 0 && k0 < (size_t)K) {
#pragma unroll
    for (int j = 0; j < V; j++) partial[(size_t)blockIdx.y * K + k0 + j] = s[0][j][tx];
  }
}

__global__ void colsum_final_kernel(float *out, const float *partial, int chunks, int K) {
  int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= K) return;
  float acc = 0.0f;
  for (int ch = 0; ch < chunks; ch++) acc += partial[(size_t)ch * K + k];
  out[k] = acc;
}

// Both passes for dy (rows, K), rows >= 1: the vector width from the pointers, the chunks from
// colsum_plan (independent of the width), the partial sums in the scratch buffer.
template <typename T>
static void colsum_launch(cuda_ctx *c, float *db, T *dy, const T *y, size_t rows, int K) {
  const int vec = row_vec_width(K, sizeof(T), dy, y);
  const colsum_shape s = colsum_plan(rows, K, vec, c->sm_count);
  float *partial = (float *)cuda_scratch(c, s.chunks * (size_t)K * sizeof(float));
  const dim3 grid(s.gx, (unsigned)s.chunks), block(COLSUM_TX, COLSUM_TY);
  if (vec == ROW_VEC)
    colsum_partial_kernel<T, ROW_VEC><<<grid, block, 0, c->stream>>>(partial, dy, y, rows, K, s.per);
  else
    colsum_partial_kernel<T, 1><<<grid, block, 0, c->stream>>>(partial, dy, y, rows, K, s.per);
  KERNEL_CHECK();
  colsum_final_kernel<<<(unsigned)((K + 255) / 256), 256, 0, c->stream>>>(db, partial, (int)s.chunks, K);
  KERNEL_CHECK();
}

void cuda_relu_bias_grad(cuda_ctx *c, float *db, void *dy, const void *y, size_t rows, int K) {
  if (K <= 0) return;
  if (!db) {
    if (y) cuda_relu_mask(c, dy, y, rows * (size_t)K);
    return;
  }
  if (rows == 0) {
    cuda_zero(c, db, (size_t)K * sizeof(float));
    return;
  }
  if (c->precision == 2)
    colsum_launch(c, db, (bf16 *)dy, (const bf16 *)y, rows, K);
  else
    colsum_launch(c, db, (float *)dy, (const float *)y, rows, K);
}

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
