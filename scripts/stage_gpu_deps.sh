#!/usr/bin/env bash
# stage_gpu_deps.sh - run HERE (a machine with apt-get and the data) before a GPU check: puts
# into .device/ (git-ignored; name it in the device tool's `carry`) what the bare GPU machine
# lacks: Open MPI and OpenBLAS with their libraries as Debian .deb files (unpacked there by
# gpu_check.sh), and
# the real CIFAR-10 subset for the short training run.   usage: scripts/stage_gpu_deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device/debs .device/data
pkgs=(openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libpmix2 libhwloc15
      libevent-core-2.1-7 libevent-pthreads-2.1-7 libevent-2.1-7 libfabric1 libucx0 libibverbs1
      librdmacm1 libpsm2-2 libpsm-infinipath1 libnl-3-200 libnl-route-3-200 libnuma1 libmunge2
      libxnvctrl0 libpciaccess0 libltdl7 libgfortran5 libx11-6 libxext6 libxcb1 libxau6
      libxdmcp6 libbsd0 libmd0 libx11-data libopenblas0-pthread libopenblas-pthread-dev)
(cd .device/debs && apt-get download "${pkgs[@]}")
src=../shared/data/cifar-10-subset-bin
if [ -r "$src/data_batch_1.bin" ]; then cp "$src"/*.bin "$src"/batches.meta.txt .device/data/; fi
du -sh .device
