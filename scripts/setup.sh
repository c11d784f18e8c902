#!/usr/bin/env bash
# setup.sh - installs what `make run` (run) or `make test` (test) needs and this machine lacks.
# What is checked is the capability, not a package name, so tools from elsewhere (modules, an
# OpenBLAS in OPENBLAS_INC/OPENBLAS_LIB) count:
#   run:  gcc, make, mpicc, OpenBLAS (pkg-config openblas, or OPENBLAS_INC's cblas.h)
#   test: the same, /usr/bin/python3 with torch and numpy (the golden comparisons), torchvision
#         and onnx (the export suite), a venv over it with onnxruntime ($VGG_DIST_VENV, default
#         ~/.cache/vgg_dist/venv: Debian's Python is externally managed and has no package for
#         it; --system-site-packages so that it sees Debian's torch and numpy), git (the GPU
#         check's dry run), clang with libFuzzer (the fuzz suite); and, optional (their suite prints a skip line without them), Slurm
#         and munge for the batch script's test under a real one-node cluster.
# What is missing is installed from Debian's packages when this is root with apt-get, with
# services kept from starting (a policy-rc.d for the install: Slurm and munge are started by
# their test alone, under its own configuration). Otherwise it names the command to run and
# exits 1 when something required is missing (optional ones: a note, exit 0).
# usage: scripts/setup.sh run|test [--check]    (--check: report only, install nothing)
set -euo pipefail
what=${1:-}
check_only=0
[ "${2:-}" = --check ] && check_only=1
case "$what" in run | test) ;; *) echo "usage: scripts/setup.sh run|test [--check]" >&2; exit 2 ;; esac

need=() want=() # Debian packages for what is missing: required, optional
command -v gcc > /dev/null 2>&1 && command -v make > /dev/null 2>&1 || need+=(build-essential)
command -v mpicc > /dev/null 2>&1 && command -v mpirun > /dev/null 2>&1 || need+=(openmpi-bin libopenmpi-dev)
if ! pkg-config --exists openblas 2> /dev/null &&
   ! grep -qs openblas_set_num_threads "${OPENBLAS_INC:-/nonexistent}/cblas.h"; then
  need+=(pkg-config libopenblas-dev)
fi
if [ "$what" = test ]; then
  /usr/bin/python3 -c 'import torch, numpy' 2> /dev/null || need+=(python3 python3-numpy python3-torch)
  /usr/bin/python3 -c 'import torchvision' 2> /dev/null || need+=(python3-torchvision)
  /usr/bin/python3 -c 'import onnx' 2> /dev/null || need+=(python3-onnx)
  /usr/bin/python3 -c 'import ensurepip' 2> /dev/null || need+=(python3-venv)
  command -v git > /dev/null 2>&1 || need+=(git)
  # The fuzz suite: clang with its libFuzzer and sanitizer runtimes.
  echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' |
    clang -fsanitize=fuzzer,address -x c - -o /dev/null > /dev/null 2>&1 || need+=(clang libclang-rt-dev)
  for t in munged slurmctld slurmd sbatch; do
    command -v $t > /dev/null 2>&1 || { want+=(munge slurmctld slurmd slurm-client); break; }
  done
fi
venv=${VGG_DIST_VENV:-$HOME/.cache/vgg_dist/venv}
# The venv with ONNX Runtime (the export suite), made after the Debian packages it builds on;
# it needs no root, only the package index that pip uses.
make_venv() {
  [ "$what" = test ] || return 0
  "$venv/bin/python" -c 'import onnxruntime' 2> /dev/null && return 0
  if [ "$check_only" = 1 ]; then
    echo "setup: no onnxruntime in $venv; run: scripts/setup.sh test" >&2
    return 1
  fi
  echo "setup: making $venv with onnxruntime"
  /usr/bin/python3 -m venv --system-site-packages "$venv" &&
    "$venv/bin/pip" install -q onnxruntime && "$venv/bin/python" -c 'import onnxruntime'
}
if [ ${#need[@]} -eq 0 ] && [ ${#want[@]} -eq 0 ]; then
  make_venv
  exit
fi

if [ "$check_only" = 1 ] || [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null 2>&1; then
  [ ${#want[@]} -gt 0 ] && echo "setup: optional, for the Slurm suite: ${want[*]}" >&2
  [ ${#need[@]} -eq 0 ] && { make_venv; exit; }
  echo "setup: missing Debian packages; run: sudo apt-get update && sudo apt-get install ${need[*]}" >&2
  make_venv || true
  exit 1
fi
echo "setup: installing ${need[*]} ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
fi
trap 'if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
apt-get update -q
[ ${#need[@]} -eq 0 ] || apt-get install -y -q --no-install-recommends "${need[@]}"
if [ ${#want[@]} -gt 0 ] && ! apt-get install -y -q --no-install-recommends "${want[@]}"; then
  echo "setup: the optional ${want[*]} could not be installed: the Slurm suite will say why it skips" >&2
fi
make_venv
