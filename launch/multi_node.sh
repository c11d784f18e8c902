#!/usr/bin/env bash
# multi_node.sh - several nodes from an Open MPI hostfile (see hostfile.example: one line per
# node, "host slots=GPUS"). NP defaults to the sum of the slots. The binary, the data and the
# checkpoint directory must be at the same paths on every node (rank 0 writes checkpoints).
# Ctrl-C, SIGTERM or SIGHUP to this script: the ranks stop with a checkpoint and it exits 0
# (launch_mpirun in common.sh); a second one aborts.
# IFACE=NAME[,NAME] names the network between the nodes (e.g. ib0, eth1): Open MPI's TCP
# transport and its out-of-band channel (btl_tcp_if_include, oob_tcp_if_include) and NCCL's
# bootstrap and socket transport (NCCL_SOCKET_IFNAME, as "=NAME": exactly) use it and nothing
# else. Unset, each picks for itself, which on a node with a docker bridge or a management
# network can be the wrong one.
# Ranks on other nodes get, of this shell's environment, only what they read: OMP_NUM_THREADS,
# CIFAR10_DIR, LD_LIBRARY_PATH and NCCL_* when set (mpirun passes its OMPI_MCA_* on itself).
# A node that dies or stops answering ends the job, naming the node and its ranks (below);
# LAUNCH_GRACE=S (5) is how long mpirun gets to end after its first abort or lost-node line.
# usage: HOSTFILE=hosts [NP=8] [IFACE=ib0] [LAUNCH_GRACE=5] launch/multi_node.sh [vgg_dist options]
set -euo pipefail
source "$(dirname "$0")/common.sh"
HOSTFILE=${HOSTFILE:?set HOSTFILE to an Open MPI hostfile (see hostfile.example)}
[ -r "$HOSTFILE" ] || { echo "launch: cannot read hostfile $HOSTFILE" >&2; exit 1; }
slots=$(awk '!/^[[:space:]]*(#|$)/ { n = 1; for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { split($i, a, "="); n = a[2] } s += n } END { print s + 0 }' "$HOSTFILE")
NP=${NP:-$slots}
[ "$(gpu_count)" -eq 0 ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ -n "${IFACE:-}" ]; then
  [[ $IFACE =~ ^[A-Za-z0-9_.:-]+(,[A-Za-z0-9_.:-]+)*$ ]] ||
    { echo "launch: IFACE=$IFACE: interface names, comma-separated (e.g. ib0 or eth1,eth2)" >&2; exit 2; }
  MPI_FLAGS+=(--mca btl_tcp_if_include "$IFACE" --mca oob_tcp_if_include "$IFACE")
  export NCCL_SOCKET_IFNAME="=$IFACE" # "=": exactly these (NCCL matches a prefix otherwise)
fi
# -x only what is set (Open MPI 4.1 warns for an unset name and has no NCCL_* pattern).
for v in OMP_NUM_THREADS CIFAR10_DIR LD_LIBRARY_PATH $(compgen -e | grep '^NCCL_' || true); do
  [ -n "${!v+set}" ] && MPI_FLAGS+=(-x "$v")
done
# A node that stops answering (dead, or cut off): mpirun notices through TCP keepalive on its
# connection to the node's daemon, after about 10 + 5 x 4 = 30 s of silence (Open MPI's default:
# 300 + 20 x 9 s), and ends the job naming the node. OMPI_MCA_oob_tcp_keepalive_* in the
# environment take precedence.
for kv in time=10 intvl=5 probes=4; do
  [ -n "$(printenv "OMPI_MCA_oob_tcp_keepalive_${kv%=*}")" ] ||
    MPI_FLAGS+=(--mca "oob_tcp_keepalive_${kv%=*}" "${kv#*=}")
done
# After its first abort or lost-node line mpirun gets LAUNCH_GRACE seconds to end (launch_watch in
# common.sh), and its message on a lost node is followed by the ranks that ran there: which
# ranks run where, from mpirun's own mapper (a dry run with the same flags, no daemon started).
LAUNCH_GRACE=${LAUNCH_GRACE:-5}
LAUNCH_MAP=$(mpirun "${MPI_FLAGS[@]}" --hostfile "$HOSTFILE" -np "$NP" --do-not-launch --display-map \
  true 2> /dev/null | awk '/Data for node:/ { node = $4 } /Process rank:/ { r[node] = r[node] " " $9 }
  END { for (n in r) print n r[n] }') || true
launch_mpirun "${MPI_FLAGS[@]}" --hostfile "$HOSTFILE" -np "$NP" "$VGG_BIN" "$@"
