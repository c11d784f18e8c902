#!/usr/bin/env bash
# bench_cpu.sh - `make bench`: vgg_dist's CPU backend beside PyTorch on this machine, same model,
# batch and thread count (OMP_NUM_THREADS, default 2), measured in the same run; then the cost of
# batch norm's sums over 2 ranks (--sync-bn).
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

# Batch norm over ranks (--sync-bn): one training epoch of VGG16-BN (width 0.25, 32x32, global
# batch 256: 12 steps on 3,072 generated images) on 2 ranks of one thread, with the statistics
# summed over the ranks (39 small all-reduces a step) and without, alternated ROUNDS times; the
# medians of the epoch's images/s.
if command -v mpirun > /dev/null && [ -x "$BUILD/gen_cifar" ]; then
  T=$(mktemp -d /tmp/vgg_bench_XXXXXX)
  trap 'rm -rf "$T"' EXIT
  "$BUILD/gen_cifar" "$T/data" 660 100 > /dev/null
  RUN=(mpirun --allow-run-as-root --oversubscribe -np 2 -x OMP_NUM_THREADS=1 "$VGG_DIST"
       --data "$T/data" --model vgg16 --width 0.25 --image-size 32 --batch 256 --epochs 1
       --val-size 228 --eval-batch 128 --device cpu --threads 1 --log-every 1000)
  for r in $(seq "${ROUNDS:-3}"); do
    for s in 1 0; do
      "${RUN[@]}" --sync-bn $s 2>&1 | sed -n "s/^epoch 1\/1: .*s, \([0-9]*\) img\/s.*/\1/p" >> "$T/sync$s"
    done
  done
  median() { sort -n "$1" | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
  echo "batch norm over 2 ranks (VGG16-BN w0.25 32x32, global batch 256, 1 thread each, ${ROUNDS:-3} rounds):" \
       "--sync-bn 1 $(median "$T/sync1") img/s (runs: $(tr '\n' ' ' < "$T/sync1")), --sync-bn 0 $(median "$T/sync0") img/s (runs: $(tr '\n' ' ' < "$T/sync0"))"
else
  echo "batch norm over ranks: skipped (needs mpirun and $BUILD/gen_cifar)"
fi
