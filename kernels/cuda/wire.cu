// wire.cu - fp32 <-> bf16 conversion of gradient ranges for the NCCL reducer's bf16 wire
// format (see cuda_wire.h), on the reducer's communication stream.
#include "cuda_common.h"
#include "cuda_wire.h"

__global__ void wire_pack_kernel(bf16 *dst, const float *src, size_t count) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (size_t)gridDim.x * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void wire_unpack_kernel(float *dst, const bf16 *src, size_t count) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (size_t)gridDim.x * blockDim.x)
    dst[i] = __bfloat162float(src[i]);
}

extern "C" void cuda_wire_pack(uint16_t *dst, const float *src, size_t count, void *stream) {
  if (count == 0) return;
  wire_pack_kernel<<<plan_blocks(count, CUDA_THREADS, 4096), CUDA_THREADS, 0, (cudaStream_t)stream>>>(
      (bf16 *)dst, src, count);
  KERNEL_CHECK();
}

extern "C" void cuda_wire_unpack(float *dst, const uint16_t *src, size_t count, void *stream) {
  if (count == 0) return;
  wire_unpack_kernel<<<plan_blocks(count, CUDA_THREADS, 4096), CUDA_THREADS, 0, (cudaStream_t)stream>>>(
      dst, (const bf16 *)src, count);
  KERNEL_CHECK();
}
