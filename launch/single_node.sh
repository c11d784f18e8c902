#!/usr/bin/env bash
# single_node.sh - all GPUs of this machine, one rank each (or NP ranks; on a machine without
# GPUs, NP CPU ranks, default 2).   usage: [NP=4] launch/single_node.sh [vgg_dist options]
set -euo pipefail
source "$(dirname "$0")/common.sh"
gpus=$(gpu_count)
NP=${NP:-$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 2)}
[ "$gpus" -eq 0 ] && MPI_FLAGS+=(--oversubscribe) && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
launch_mpirun "${MPI_FLAGS[@]}" -np "$NP" "$VGG_BIN" "$@"
