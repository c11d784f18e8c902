#!/usr/bin/env bash
# bench_cpu.sh - `make bench`: vgg_dist's CPU backend beside PyTorch on this machine, same model,
# batch and thread count (OMP_NUM_THREADS, default 2), measured in the same run.
#   scripts/bench_cpu.sh [BUILD_DIR=build] [VGG_DIST=./vgg_dist]   (the PyTorch peer builds its
#   network from `vgg_dist --print-model`)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
export VGG_DIST=$(realpath "${2:-${VGG_DIST:-./vgg_dist}}")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OPENBLAS_NUM_THREADS=${OMP_NUM_THREADS:-2}
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), OMP_NUM_THREADS=$OMP_NUM_THREADS"
for w in 1 0.25; do
  "$BUILD/bench_step" --model vgg16 --width $w --size 32 --batch 64 --steps ${STEPS:-5} --threads "$OMP_NUM_THREADS"
  if /usr/bin/python3 -c "import torch" 2> /dev/null; then
    /usr/bin/python3 scripts/torch_cpu_vgg.py vgg16 $w 32 64 ${STEPS:-5}
  else
    echo "pytorch: not installed (apt-get install python3-torch) - no peer figure"
  fi
done
