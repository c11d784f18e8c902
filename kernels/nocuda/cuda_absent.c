// cuda_absent.c - linked instead of kernels/cuda/ when the build has no CUDA toolkit
// (make CUDA=0): the binary then runs on the CPU backend only and says so if asked for CUDA.
#include "backend.h"
#include "check.h"

int backend_cuda_device_count(void) { return 0; }

backend *backend_cuda_create(int device, precision_kind precision) {
  DIE_USAGE("--device cuda: this vgg_dist was built without CUDA (rebuild with the CUDA toolkit)");
}

size_t backend_cuda_memory_used(backend *b) {
  FATAL("backend_cuda_memory_used without CUDA");
}

size_t backend_cuda_memory_free(backend *b) {
  FATAL("backend_cuda_memory_free without CUDA");
}

void backend_cuda_set_autotune(backend *b, autotune_mode mode) {
  FATAL("backend_cuda_set_autotune without CUDA");
}

void backend_cuda_profile_enable(backend *b) {
  DIE_USAGE("the per-op profile needs CUDA: this build has none (rebuild with the CUDA toolkit)");
}

void backend_cuda_profile_step(backend *b, double wall_ms, int keep) {
  FATAL("backend_cuda_profile_step without CUDA");
}

void backend_cuda_profile_print(backend *b, FILE *f) {
  FATAL("backend_cuda_profile_print without CUDA");
}
