// cuda_wire.h - C-callable helpers for the NCCL gradient reducer (comm/comm_nccl.c, plain C):
// converting a gradient range to and from the bf16 wire format on a given stream.
#ifndef VGG_CUDA_WIRE_H
#define VGG_CUDA_WIRE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// dst (count) bf16 = round-to-nearest-even(src (count) fp32), queued on `stream` (a
// cudaStream_t). No launch when count == 0.
void cuda_wire_pack(uint16_t *dst, const float *src, size_t count, void *stream);
// dst (count) fp32 = src (count) bf16.
void cuda_wire_unpack(float *dst, const uint16_t *src, size_t count, void *stream);

#ifdef __cplusplus
}
#endif

#endif
