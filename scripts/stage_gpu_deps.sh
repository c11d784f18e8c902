#!/usr/bin/env bash
# stage_gpu_deps.sh - run HERE (a Debian machine with apt-get and the data) before a GPU check:
# puts into .device/ (git-ignored) what a bare GPU machine lacks, for the device tool's `carry`:
#   .device/debs  Open MPI and OpenBLAS with their libraries as Debian .deb files (gpu_check.sh
#                 unpacks them under /tmp there, never into the carried folder);
#   .device/data  the real CIFAR-10 subset for the short training run (when ../shared has it).
# Ends by printing the exact carry list and its size, which must stay under 48 MiB (the device
# call sends at most 64 MiB: the checkout plus what is carried); exits 1 when it does not.
# usage: scripts/stage_gpu_deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT_MIB=48
mkdir -p .device/debs .device/data
pkgs=(openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libpmix2 libhwloc15
      libevent-core-2.1-7 libevent-pthreads-2.1-7 libevent-2.1-7 libfabric1 libucx0 libibverbs1
      librdmacm1 libpsm2-2 libpsm-infinipath1 libnl-3-200 libnl-route-3-200 libnuma1 libmunge2
      libxnvctrl0 libpciaccess0 libltdl7 libgfortran5 libx11-6 libxext6 libxcb1 libxau6
      libxdmcp6 libbsd0 libmd0 libx11-data libopenblas0-pthread libopenblas-pthread-dev)
# Only what is not staged yet is downloaded (a rerun needs no network). apt-get download needs
# the package lists: a fresh machine may have none yet.
missing=()
for p in "${pkgs[@]}"; do
  ls .device/debs/"${p}"_*.deb > /dev/null 2>&1 || missing+=("$p")
done
download() { (cd .device/debs && apt-get download -qq "${missing[@]}") 2>&1 | { grep -v "unsandboxed as root" || true; }; }
if [ ${#missing[@]} -gt 0 ]; then
  download || { apt-get update -q > /dev/null && download; } ||
    { echo "stage_gpu_deps: apt-get download of ${missing[*]} failed" >&2; exit 1; }
fi
src=../shared/data/cifar-10-subset-bin
if [ -r "$src/data_batch_1.bin" ]; then cp "$src"/*.bin "$src"/batches.meta.txt .device/data/; fi
for stray in .device/root .device/lib .device/bin .device/x; do # older gpu_check.sh unpacked here
  [ -e "$stray" ] && rm -rf "$stray"
done
kib=$(du -sk .device | cut -f1)
checkout_kib=$(git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- 2> /dev/null | tail -n 1 | cut -f1)
echo "stage_gpu_deps: carry [\".device\"]: $((kib / 1024)) MiB ($kib KiB; limit $LIMIT_MIB MiB);" \
     "with the checkout's $((checkout_kib / 1024)) MiB the call sends $(((kib + checkout_kib) / 1024)) of 64 MiB"
[ "$kib" -lt $((LIMIT_MIB * 1024)) ] || { echo "stage_gpu_deps: .device is over $LIMIT_MIB MiB" >&2; exit 1; }
