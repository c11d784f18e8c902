#!/usr/bin/env bash
# common.sh - shared by the launch scripts: where the binary is, and mpirun's flags.
# Sourced, not run. The launch scripts are the only place that sets NCCL_*, CUDA_VISIBLE_DEVICES
# or mpirun binding flags; the binary binds each rank to GPU (local rank % visible GPUs).
VGG_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VGG_BIN=${VGG_BIN:-$VGG_ROOT/vgg_dist}
[ -x "$VGG_BIN" ] || { echo "launch: $VGG_BIN not built (run make)" >&2; exit 1; }
MPI_FLAGS=(--bind-to none --map-by slot)
# Root in containers and CI: Open MPI refuses root unless told.
[ "$(id -u)" -eq 0 ] && MPI_FLAGS+=(--allow-run-as-root)
gpu_count() {
  if command -v nvidia-smi > /dev/null 2>&1; then nvidia-smi -L 2> /dev/null | grep -c '^GPU'; else echo 0; fi
}
# NCCL: fail fast on errors instead of hanging; the binary also polls with --comm-timeout.
export NCCL_ASYNC_ERROR_HANDLING=${NCCL_ASYNC_ERROR_HANDLING:-1}
