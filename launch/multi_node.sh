#!/usr/bin/env bash
# multi_node.sh - several nodes from an Open MPI hostfile (see hostfile.example: one line per
# node, "host slots=GPUS"). NP defaults to the sum of the slots. The binary, the data and the
# checkpoint directory must be at the same paths on every node (rank 0 writes checkpoints).
# Ctrl-C, SIGTERM or SIGHUP to this script: the ranks stop with a checkpoint and it exits 0
# (launch_mpirun in common.sh); a second one aborts.
# usage: HOSTFILE=hosts [NP=8] launch/multi_node.sh [vgg_dist options]
set -euo pipefail
source "$(dirname "$0")/common.sh"
HOSTFILE=${HOSTFILE:?set HOSTFILE to an Open MPI hostfile (see hostfile.example)}
[ -r "$HOSTFILE" ] || { echo "launch: cannot read hostfile $HOSTFILE" >&2; exit 1; }
slots=$(awk '!/^[[:space:]]*(#|$)/ { n = 1; for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { split($i, a, "="); n = a[2] } s += n } END { print s + 0 }' "$HOSTFILE")
NP=${NP:-$slots}
[ "$(gpu_count)" -eq 0 ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Forward the variables the ranks need to remote nodes.
launch_mpirun "${MPI_FLAGS[@]}" --hostfile "$HOSTFILE" -np "$NP" \
  -x OMP_NUM_THREADS -x CIFAR10_DIR -x LD_LIBRARY_PATH "$VGG_BIN" "$@"
