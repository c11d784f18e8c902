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
// --autotune and --threads; says which on rank 0. Collective: every rank must take the same
// backend (CPU with the MPI reducer, or CUDA with NCCL), agreed before any backend's own
// collective; a mixture is a usage error (exit 2, every rank) naming the hosts without a GPU.
// Also a usage error: a precision other than fp32 without CUDA.
backend *device_backend_create(const config *cfg, comm *c);

// The GPU (index among those this rank sees) that local rank `local_rank` of `local_size` on
// its node drives: local_rank % visible; -1 when it sees none (or is not a rank of the node).
// More ranks than visible GPUs is not refused here: under srun --gpus-per-task=1, --gpu-bind or
// a per-rank CUDA_VISIBLE_DEVICES each rank sees only its own GPU, as device 0. Two ranks on
// one physical GPU are refused by the bus-id check (device_bus_id_clash). Pure.
int device_pick(int local_rank, int local_size, int visible);

// The first pair first < second of n ids (ids + i * stride, each NUL-terminated within stride
// bytes: PCI bus ids) that are equal: returns 1 and sets the pair; 0 when all differ. Pure.
int device_bus_id_clash(const char *ids, int n, size_t stride, int *first, int *second);

// The one line that refuses a mixture of backends, into out (len bytes; cut to fit): `hosts`
// holds world records of `stride` bytes in rank order, a CPU rank's host name or "" for a CUDA
// rank; each host is named once. Returns the length written. Pure.
size_t device_mixture_message(char *out, size_t len, const char *hosts, int world,
                              size_t stride);

// Says what the net's buffers for max_n images take (rank 0), and on a GPU where they would
// not fit, stops with a usage error giving the figures and what to change, instead of a
// failed allocation later. Library workspaces (cuDNN plans, cuBLAS, NCCL) come on top.
void device_memory_check(backend *b, const model *m, const config *cfg, int max_n, int world);

// Rank 0's GPU memory in use (a device backend only; a no-op otherwise).
void device_memory_report(backend *b);

#endif
