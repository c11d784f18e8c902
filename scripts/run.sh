#!/usr/bin/env bash
# run.sh - `make run`: from a fresh machine to a training run.
#  1. installs missing Debian packages (scripts/setup.sh run: Open MPI, OpenBLAS, the compiler);
#  2. builds vgg_dist;
#  3. finds CIFAR-10 ($CIFAR10_DIR, data/cifar-10-batches-bin), else tries to download it,
#     else trains on the small real sample bundled in data/sample (and says so);
#  4. trains: on all local GPUs (one rank each, the paper's recipe) when there are any, else
#     the cpu-demo preset on 2 CPU ranks. Extra arguments go to vgg_dist, e.g.
#     make run ARGS="--epochs 5"   or   scripts/run.sh --epochs 5
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh run

make -j"$(nproc)" vgg_dist

data=${CIFAR10_DIR:-data/cifar-10-batches-bin}
if [ ! -r "$data/data_batch_1.bin" ]; then
  if scripts/get_cifar10.sh "$data"; then
    :
  else
    data=data/sample
    echo "run: CIFAR-10 is not here and could not be downloaded: training on the bundled SAMPLE"
    echo "run: (data/sample: 3,000 real train and 600 test images; for the full set run"
    echo "run:  scripts/get_cifar10.sh, or scripts/get_cifar10.sh DEST /path/to/cifar-10-binary.tar.gz)"
  fi
fi

gpus=$(source launch/common.sh && gpu_count) # the GPUs this job sees (CUDA_VISIBLE_DEVICES)
mkdir -p runs
if [ "$gpus" -gt 0 ]; then
  echo "run: $gpus GPUs: VGG16 with the paper's recipe, one rank per GPU"
  NP=$gpus exec launch/single_node.sh --data "$data" --checkpoint-dir runs/checkpoints \
    --resume auto --metrics runs/metrics.jsonl "$@"
fi
echo "run: no GPU: the cpu-demo preset on 2 CPU ranks"
NP=2 exec launch/single_node.sh --preset cpu-demo --data "$data" --metrics runs/metrics.jsonl "$@"
