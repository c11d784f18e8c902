#!/usr/bin/env bash
# test_launch.sh - launch/common.sh's gpu_count, the GPU count the launch scripts and
# scripts/run.sh size a job by: CUDA_VISIBLE_DEVICES when set (empty: none; a list: its entries
# up to the first invalid one), else the lines of nvidia-smi -L. A fake nvidia-smi on PATH prints
# N GPU lines: this tests our counting, not the driver. Also the mpirun binding flags
# (none by default, VGG_MPI_BIND replaces them). Prints "N passed, N failed" last.
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
summary
