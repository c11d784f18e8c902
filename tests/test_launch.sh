#!/usr/bin/env bash
# test_launch.sh - launch/common.sh's gpu_count, the GPU count the launch scripts and
# scripts/run.sh size a job by: CUDA_VISIBLE_DEVICES when set (empty: none; a list: its entries
# up to the first invalid one), else the lines of nvidia-smi -L. A fake nvidia-smi on PATH prints
# N GPU lines: this tests our counting, not the driver. Also the mpirun binding flags
# (none by default, VGG_MPI_BIND replaces them), and multi_node.sh's mpirun command line (IFACE,
# the variables forwarded, the keepalive; a fake mpirun). Prints "N passed, N failed" last.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tests/check.sh"
T=$(mktemp -d /tmp/vgg_launch_XXXXXX)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/bin" "$T/empty"
cat > "$T/bin/nvidia-smi" <<'SH'
#!/bin/sh
[ "$1" = -L ] || exit 9
i=0
while [ "$i" -lt "${FAKE_GPUS:-0}" ]; do echo "GPU $i: Fake H200 (UUID: GPU-$i)"; i=$((i + 1)); done
SH
chmod +x "$T/bin/nvidia-smi"
count() { # count FAKE_GPUS [CUDA_VISIBLE_DEVICES]: gpu_count's answer (unset when one argument)
  local path="$T/bin:$PATH"
  [ "$1" = none ] && path="$T/empty:/usr/bin:/bin"
  if [ $# -gt 1 ]; then
    env PATH="$path" FAKE_GPUS="$1" CUDA_VISIBLE_DEVICES="$2" VGG_BIN=/bin/true \
      bash -c 'source "$0" && gpu_count' "$ROOT/launch/common.sh"
  else
    env -u CUDA_VISIBLE_DEVICES PATH="$path" FAKE_GPUS="$1" VGG_BIN=/bin/true \
      bash -c 'source "$0" && gpu_count' "$ROOT/launch/common.sh"
  fi
}
is() { [ "$1" = "$2" ] || { echo "   got '$1', want '$2'"; return 1; }; }
check "unset: nvidia-smi -L's 4 GPUs" is "$(count 4)" 4
check "unset: nvidia-smi -L lists none: 0" is "$(count 0)" 0
check "unset, no nvidia-smi: 0" is "$(count none)" 0
check "CUDA_VISIBLE_DEVICES=2 on a 4-GPU node (srun --gpus-per-task=1): 1" is "$(count 4 2)" 1
check "CUDA_VISIBLE_DEVICES=0,1 of 4: 2" is "$(count 4 0,1)" 2
check "CUDA_VISIBLE_DEVICES empty: 0 (nvidia-smi's 4 are hidden)" is "$(count 4 '')" 0
check "CUDA_VISIBLE_DEVICES=NoDevFiles (Slurm without GPUs): 0" is "$(count 4 NoDevFiles)" 0
check "CUDA_VISIBLE_DEVICES=0,-1,2: 1 (CUDA stops at the invalid entry)" is "$(count 4 0,-1,2)" 1
check "CUDA_VISIBLE_DEVICES of UUIDs: 2" is "$(count 4 GPU-aa,GPU-bb)" 2
flags() { env "$@" VGG_BIN=/bin/true bash -c 'source "$0" && echo "${MPI_FLAGS[*]}"' "$ROOT/launch/common.sh"; }
check "mpirun binding: none by default (OpenMP threads stay free)" \
  bash -c "[[ '$(flags -u VGG_MPI_BIND)' == '--bind-to none --map-by slot'* ]]"
check "mpirun binding: VGG_MPI_BIND replaces it, word by word" \
  bash -c "[[ '$(flags VGG_MPI_BIND='--map-by ppr:4:socket:PE=8 --bind-to core')' == '--map-by ppr:4:socket:PE=8 --bind-to core'* ]]"

# multi_node.sh's mpirun command line, from a fake mpirun that prints it (and NCCL_SOCKET_IFNAME
# as the ranks would get it): IFACE, what is forwarded, the keepalive. The real launches are in
# tests/test_multinode.sh.
mkdir -p "$T/mpi"
cat > "$T/mpi/mpirun" <<'SH'
#!/bin/sh
case " $* " in *" --do-not-launch "*) exit 1 ;; esac # the mapping's dry run: no map here
echo "ARGS $* NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME-unset}"
SH
chmod +x "$T/mpi/mpirun"
printf 'node01 slots=2\nnode02 slots=2\n' > "$T/hosts"
mn() { env -u CIFAR10_DIR -u NCCL_IB_HCA -u NCCL_DEBUG -u IFACE PATH="$T/mpi:$T/empty:/usr/bin:/bin" \
  HOSTFILE="$T/hosts" VGG_BIN=/bin/true "$@" "$ROOT/launch/multi_node.sh" --epochs 1 2>&1; }
out=$(mn IFACE=ib0 NCCL_IB_HCA=mlx5_0)
echo "   $out"
check "multi_node.sh IFACE=ib0: Open MPI's TCP and out-of-band interface, NCCL's socket one" bash -c \
  "[[ '$out' == *'--mca btl_tcp_if_include ib0 --mca oob_tcp_if_include ib0'* &&
     '$out' == *'-x NCCL_SOCKET_IFNAME'* && '$out' == *'NCCL_SOCKET_IFNAME==ib0' ]]"
check "multi_node.sh forwards what is set (NCCL_IB_HCA, OMP_NUM_THREADS), not what is not (CIFAR10_DIR)" \
  bash -c "[[ '$out' == *'-x NCCL_IB_HCA'* && '$out' == *'-x OMP_NUM_THREADS'* && '$out' != *CIFAR10_DIR* ]]"
check "multi_node.sh: mpirun's keepalive to the nodes' daemons (10 s, 5 s x 4)" bash -c \
  "[[ '$out' == *'--mca oob_tcp_keepalive_time 10 --mca oob_tcp_keepalive_intvl 5 --mca oob_tcp_keepalive_probes 4'* ]]"
out=$(mn)
check "multi_node.sh without IFACE: no interface chosen" bash -c \
  "[[ '$out' != *if_include* && '$out' == *'NCCL_SOCKET_IFNAME=unset' ]]"
out=$(mn OMPI_MCA_oob_tcp_keepalive_time=60)
check "multi_node.sh: OMPI_MCA_oob_tcp_keepalive_time in the environment wins" bash -c \
  "[[ '$out' != *'oob_tcp_keepalive_time 10'* && '$out' == *'oob_tcp_keepalive_intvl 5'* ]]"
out=$(mn IFACE='eth0 eth1')
rc=$?
check "multi_node.sh IFACE='eth0 eth1': refused in one line, exit 2" bash -c \
  "[ $rc -eq 2 ] && [ \$(echo '$out' | wc -l) -eq 1 ] && [[ '$out' == 'launch: IFACE=eth0 eth1: '* ]]"
summary
