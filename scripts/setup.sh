#!/usr/bin/env bash
# setup.sh - installs the Debian packages that `make run` (run) or `make test` (test) needs,
# only those missing: the build (gcc, make, Open MPI, OpenBLAS, pkg-config) and, for the tests,
# Debian's PyTorch and numpy for the golden comparisons, git for the GPU check's dry run, and
# Slurm with munge for the batch script's test under a real one-node cluster.
# Installing needs root and apt-get; without them it names what is missing and the command to
# run, and exits 1. usage: scripts/setup.sh run|test
set -euo pipefail
case "${1:-}" in
  run) pkgs=(build-essential pkg-config openmpi-bin libopenmpi-dev libopenblas-dev) ;;
  test) pkgs=(build-essential pkg-config openmpi-bin libopenmpi-dev libopenblas-dev
              python3 python3-numpy python3-torch git munge slurmctld slurmd slurm-client) ;;
  *) echo "usage: scripts/setup.sh run|test" >&2; exit 2 ;;
esac
if ! command -v dpkg-query > /dev/null 2>&1; then # not Debian: check the tools themselves
  missing=()
  for t in gcc make mpicc; do command -v $t > /dev/null 2>&1 || missing+=("$t"); done
  pkg-config --exists openblas 2> /dev/null || missing+=(openblas)
  [ "$1" = run ] || /usr/bin/python3 -c 'import torch, numpy' 2> /dev/null || missing+=("python3 torch numpy")
  [ ${#missing[@]} -eq 0 ] && exit 0
  echo "setup: missing ${missing[*]}: install them with your package manager (on Debian: scripts/setup.sh $1 as root)" >&2
  exit 1
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2> /dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null 2>&1; then
  echo "setup: missing Debian packages; run: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
