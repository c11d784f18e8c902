#!/usr/bin/env bash
# test_gpu_check.sh - the GPU check's dry run, as a lent GPU machine would run it, on every
# `make test`: stage the dependencies (scripts/stage_gpu_deps.sh), clone the committed tree
# afresh (no build/, as the device copy travels), carry .device into it, and run
# `GPU_CHECK_STAGED=1 scripts/gpu_check.sh --dry-run` with the staged Open MPI and OpenBLAS.
# Checks: the staging and its carry size, the build, every binary loading, the staged mpirun,
# the host op tests, the stop at the first part that needs a GPU, and what $OUT holds (what the
# device tool can return: at most 8 plain files of at most 16 MiB). Needs the CUDA toolkit (a
# skip line without it), git and apt-get. Prints "N passed, N failed" last.
# usage: tests/test_gpu_check.sh
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tests/check.sh"
done_() { summary; exit; }
nvcc=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
command -v nvcc > /dev/null 2>&1 && nvcc=$(command -v nvcc)
if ! [ -x "$nvcc" ]; then
  echo "skip gpu_check dry run (no CUDA toolkit: nvcc not found)"
  done_
fi
T=$(mktemp -d /tmp/vgg_gpu_dry_XXXXXX)
trap 'rm -rf "$T"' EXIT

stage=$("$ROOT/scripts/stage_gpu_deps.sh" 2>&1)
check "stage_gpu_deps.sh stages the .deb files and prints the carry list" \
  grep -q 'carry \[".device"\]: .* MiB' <<< "$stage"
echo "   $(tail -n 1 <<< "$stage")"
git clone -q "$ROOT" "$T/clone" || { bad "git clone of the committed tree"; done_; }
cp -r "$ROOT/.device" "$T/clone/.device" # what the device tool's carry does
t0=$(date +%s)
(cd "$T/clone" && OUT=$T/out GPU_CHECK_STAGED=1 GPU_CHECK_ROOT=$T/root scripts/gpu_check.sh --dry-run) \
  > "$T/dry.log" 2>&1
rc=$?
echo "   dry run: exit $rc in $(($(date +%s) - t0)) s"
sed 's/^/   | /' "$T/out/gpu_check.txt" 2> /dev/null
S=$T/out/gpu_check.txt
check "dry run exits 0" test $rc -eq 0
check "dry run builds (WERROR=0)" grep -q "^build: ok at .* WERROR=0" "$S"
check "every built binary loads (ldd)" test "$(grep -c '^ldd .*: every library found$' "$S")" -eq 4
check "the staged mpirun starts 2 ranks" grep -q "^mpi: 2 CPU ranks through mpirun: ok" "$S"
check "the host op tests pass, each in its own process" grep -qE "^unit: [1-9][0-9]* passed, 0 failed" "$S"
check "stops at the first GPU part with a 'no CUDA device' line" grep -q "^gpu_check: no CUDA device: " "$S"
check "the summary ends with the finish line" grep -q "^gpu_check: finished in [0-9]* s" "$S"
out_ok() { # what the device tool returns: <= 8 plain files, <= 16 MiB, plain names, <= 2 deep
  local n
  n=$(find "$T/out" -mindepth 1 | wc -l)
  [ "$n" -ge 4 ] && [ "$n" -le 8 ] && [ -z "$(find "$T/out" -mindepth 1 ! -type f)" ] &&
    [ -z "$(find "$T/out" -type f -size +16M)" ] &&
    [ -z "$(find "$T/out" -mindepth 1 -printf '%f\n' | grep -v '^[A-Za-z0-9._-]*$')" ]
}
check "\$OUT holds 4..8 plain files of at most 16 MiB (summary and logs)" out_ok
check "\$OUT has the build, unit and parity logs" test -s "$T/out/build.log" -a -s "$T/out/unit.log" -a -s "$T/out/parity.log"
carry_ok() { # the carried folder is left as staged (unpacking went to /tmp), under 48 MiB
  [ ! -e "$T/clone/.device/root" ] && [ -e "$T/root/.unpacked" ] &&
    [ "$(du -sk "$T/clone/.device" | cut -f1)" -lt $((48 * 1024)) ]
}
check "the carry (.device) stays under 48 MiB: nothing unpacked into it" carry_ok
check "the check writes only into ignored folders of the checkout" \
  test -z "$(git -C "$T/clone" status --porcelain)"
done_
