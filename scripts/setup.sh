#!/usr/bin/env bash
# setup.sh - installs what `make run` (run) or `make test` (test) needs and this machine lacks.
# What is checked is the capability, not a package name, so tools from elsewhere (modules, an
# OpenBLAS in OPENBLAS_INC/OPENBLAS_LIB) count:
#   run:  gcc, make, mpicc, OpenBLAS (pkg-config openblas, or OPENBLAS_INC's cblas.h)
#   test: the same, /usr/bin/python3 with torch and numpy (the golden comparisons), torchvision
#         and onnx (the export suite), git (the GPU check's dry run), clang with libFuzzer (the
#         fuzz suite), and a venv over that Python with tensorboard and onnxruntime from PyPI
#         ($VGG_DIST_VENV, default .venv: Debian's Python is externally managed and packages
#         neither); and, optional (their suite prints a skip line without them), Slurm and
#         munge for the batch script's test under a real one-node cluster.
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
# What Debian does not package, from PyPI, in one venv (the repository's .venv, or
# $VGG_DIST_VENV), created with --system-site-packages so that its Python also sees Debian's
# torch, torchvision, onnx and numpy: tensorboard (tests/test_tensorboard.sh's writer and
# reader) and onnxruntime (tests/test_export.sh). Installed after the Debian packages, so that
# pip finds their numpy and does not pull another one beside Debian's torch; it needs no root,
# only the package index that pip uses.
venv=${VGG_DIST_VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv}
pypi=(tensorboard==2.21.0 onnxruntime==1.32.0)
pypi_check() {
  "$venv/bin/python" -c 'import tensorboard, torch.utils.tensorboard, onnxruntime' 2> /dev/null
}
pypi_install() {
  pypi_check && return 0
  echo "setup: installing ${pypi[*]} into $venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv" && "$venv/bin/pip" install -q "${pypi[@]}" &&
    pypi_check
}
pypi_missing=0
if [ "$what" = test ] && ! pypi_check; then
  pypi_missing=1
  /usr/bin/python3 -c 'import ensurepip' 2> /dev/null || need+=(python3-venv)
fi
# --check installs nothing: it reports everything missing at once, and exits 1 if a required
# piece is (the optional Slurm packages only get a note).
if [ "$check_only" = 1 ]; then
  [ ${#want[@]} -gt 0 ] && echo "setup: optional, for the Slurm suite: ${want[*]}" >&2
  [ ${#need[@]} -gt 0 ] && echo "setup: missing Debian packages: ${need[*]}" >&2
  [ "$pypi_missing" = 1 ] && echo "setup: missing from PyPI in $venv: ${pypi[*]}" >&2
  if [ ${#need[@]} -gt 0 ] || [ "$pypi_missing" = 1 ]; then
    echo "setup: run scripts/setup.sh $what (as root for the Debian packages)" >&2
    exit 1
  fi
  exit 0
fi
if [ ${#need[@]} -eq 0 ] && [ ${#want[@]} -eq 0 ]; then
  [ "$what" = test ] && pypi_install
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null 2>&1; then
  [ ${#want[@]} -gt 0 ] && echo "setup: optional, for the Slurm suite: ${want[*]}" >&2
  if [ ${#need[@]} -eq 0 ]; then # the venv needs no root
    [ "$what" = test ] && pypi_install
    exit 0
  fi
  echo "setup: missing Debian packages; run: sudo apt-get update && sudo apt-get install ${need[*]}" >&2
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
[ "$what" = test ] && pypi_install
exit 0
