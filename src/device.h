// device.h - where a rank computes and what it may use there: the backend and its thread
// policy (which device, how many OpenMP threads per rank), the check that the net's buffers fit
// in the GPU's free memory, and the GPU's memory report. Policy about the machine lives here,
// apart from the training loop (train.c) and from the backends themselves (kernels/), which
// only do what they are told.
#ifndef VGG_DEVICE_H
#define VGG_DEVICE_H

#include "backend.h"
#include "comm.h"
#include "config.h"
#include "model.h"

// The backend this rank runs on, per --device (auto: CUDA when a GPU is visible), --precision,
// --autotune and --threads; says which on rank 0. A usage error (exit 2) when the node has
// more ranks than GPUs, or a precision other than fp32 without CUDA.
backend *device_backend_create(const config *cfg, comm *c);

// Says what the net's buffers for max_n images take (rank 0), and on a GPU where they would
// not fit, stops with a usage error giving the figures and what to change, instead of a
// failed allocation later. Library workspaces (cuDNN plans, cuBLAS, NCCL) come on top.
void device_memory_check(backend *b, const model *m, const config *cfg, int max_n, int world);

// Rank 0's GPU memory in use (a device backend only; a no-op otherwise).
void device_memory_report(backend *b);

#endif
