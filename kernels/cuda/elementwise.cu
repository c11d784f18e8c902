// elementwise.cu - small kernels the layer ops share: bias + ReLU epilogue, ReLU backward
// mask, the deterministic per-channel column sum (bias gradients, with the ReLU mask applied
// in the same pass), fp32 <-> bf16 conversion.
// Each is one template over the activation type (float or bf16) and a launcher that picks the
// type from the context's precision.
#include "cuda_common.h"
#include "cuda_wire.h"

template <typename T>
__global__ void bias_act_kernel(T *y, const float *bias, size_t count, int K, int relu) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (size_t)gridDim.x * blockDim.x) {
    float v = act_load(y, i);
    if (bias) v += bias[i % (size_t)K];
    if (relu) v = v < 0.0f ? 0.0f : v; // NaN propagates, as torch.relu
    act_store(y, i, v);
  }
}

void cuda_bias_act(cuda_ctx *c, void *y, const float *bias, size_t rows, int K, int relu) {
  size_t n = rows * (size_t)K;
  if (n == 0 || (!bias && !relu)) return;
  if (c->precision == 2)
    bias_act_kernel<bf16><<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>((bf16 *)y, bias, n, K, relu);
  else
    bias_act_kernel<float><<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>((float *)y, bias, n, K, relu);
  KERNEL_CHECK();
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

// Column sums in two deterministic passes. Pass 1: block (32, 8) owns 32 channels of one chunk
// of rows; lanes read 32 consecutive channels (coalesced), the 8 rows of threads stride the
// chunk, a shared-memory tree sums them into partial[chunk][k]. Pass 2 sums the chunks in order.
#define COLSUM_TX 32
#define COLSUM_TY 8
// With y, the same pass applies the ReLU-backward mask to dy first (as relu_mask_kernel), so
// the masked gradient is written and summed in one read of dy.
template <typename T>
__global__ void colsum_partial_kernel(float *partial, T *dy, const T *y, size_t rows, int K,
                                      size_t rows_per_chunk) {
  __shared__ float s[COLSUM_TY][COLSUM_TX];
  int k = blockIdx.x * COLSUM_TX + threadIdx.x;
  size_t r0 = (size_t)blockIdx.y * rows_per_chunk;
  size_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  float acc = 0.0f;
  if (k < K)
    for (size_t r = r0 + threadIdx.y; r < r1; r += COLSUM_TY) {
      size_t i = r * (size_t)K + k;
      float g = act_load(dy, i);
      if (y && act_load(y, i) <= 0.0f) {
        g = 0.0f;
        act_store(dy, i, 0.0f);
      }
      acc += g;
    }
  s[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  for (int h = COLSUM_TY / 2; h > 0; h /= 2) {
    if ((int)threadIdx.y < h) s[threadIdx.y][threadIdx.x] += s[threadIdx.y + h][threadIdx.x];
    __syncthreads();
  }
  if (threadIdx.y == 0 && k < K) partial[(size_t)blockIdx.y * K + k] = s[0][threadIdx.x];
}

__global__ void colsum_final_kernel(float *out, const float *partial, int chunks, int K) {
  int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= K) return;
  float acc = 0.0f;
  for (int ch = 0; ch < chunks; ch++) acc += partial[(size_t)ch * K + k];
  out[k] = acc;
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
  unsigned tiles = (unsigned)((K + COLSUM_TX - 1) / COLSUM_TX);
  // Enough chunks to fill the GPU, each at least 64 rows long, at most 65535 (grid y limit).
  size_t want = ((size_t)(c->sm_count > 0 ? c->sm_count : 64) * 4 + tiles - 1) / tiles;
  size_t max_chunks = (rows + 63) / 64;
  size_t chunks = want < max_chunks ? want : max_chunks;
  if (chunks < 1) chunks = 1;
  if (chunks > 65535) chunks = 65535;
  size_t per = (rows + chunks - 1) / chunks;
  chunks = (rows + per - 1) / per;
  float *partial = (float *)cuda_scratch(c, chunks * (size_t)K * sizeof(float));
  dim3 grid(tiles, (unsigned)chunks), block(COLSUM_TX, COLSUM_TY);
  if (c->precision == 2)
    colsum_partial_kernel<bf16><<<grid, block, 0, c->stream>>>(partial, (bf16 *)dy, (const bf16 *)y,
                                                                rows, K, per);
  else
    colsum_partial_kernel<float><<<grid, block, 0, c->stream>>>(partial, (float *)dy, (const float *)y,
                                                                 rows, K, per);
  KERNEL_CHECK();
  colsum_final_kernel<<<(unsigned)((K + 255) / 256), 256, 0, c->stream>>>(db, partial, (int)chunks, K);
  KERNEL_CHECK();
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
