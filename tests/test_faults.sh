#!/usr/bin/env bash
# test_faults.sh - the binary facing faults and hostile input around its checkpoints (issue 13):
# stale temp files of interrupted writes, an unusable best.bin, a resume under options that move
# the data position, and checkpoints whose values (CRC intact) are out of range. One process
# (no mpirun: every case is rank 0's), a tiny model on generated data: seconds in all.
# usage: tests/test_faults.sh ./vgg_dist     (BUILD names the build dir holding gen_cifar)
# Prints "N passed, N failed" last.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tests/check.sh"
suite_tools "${1:-}"
export OMP_NUM_THREADS=1
T=$(mktemp -d /tmp/vgg_faults_XXXXXX)
trap 'rm -rf "$T"' EXIT

"$GEN" "$T/data" 100 200 3 || { echo "cannot generate data"; echo "0 passed, 1 failed"; exit 1; }
# 300 train / 100 validation images at batch 32: 10 steps an epoch (the last one of 12 images).
SMALL=(--data "$T/data" --model vgg11 --width 0.125 --image-size 32 --batch 32 --val-size 100
       --train-limit 400 --test-limit 50 --eval-batch 50 --log-every 5 --device cpu --seed 5
       --batchnorm 0 --warmup-epochs 0)

# ---- stale temp files: only "<checkpoint name>.tmp.<pid of no process>" files are removed ----
dead=$(sh -c 'echo $$') # a process that has exited
mkdir -p "$T/tmpc"
stale=("best.bin.tmp.$dead" "ckpt_e0002.bin.tmp.$dead" "ckpt_e0001_b000003.bin.tmp.$dead" "RESUMABLE.tmp.$dead")
kept=("best.bin.tmp.${dead}x" "best.bin.tmp.$dead.bak" "best.bin.tmp$dead" "xbest.bin.tmp.$dead"
      "notes.txt.tmp.$dead" "best.bin.tmp." "best.bin.tmp.$$") # near misses, and a live pid's
for f in "${stale[@]}" "${kept[@]}"; do printf 'partial' > "$T/tmpc/$f"; done
mkdir "$T/tmpc/ckpt_e0009.bin.tmp.$dead" # a directory of the pattern's name
"$BIN" "${SMALL[@]}" --epochs 1 --checkpoint-dir "$T/tmpc" > "$T/tmpc.log" 2>&1
rc=$?
stale_ok() { # the run succeeded; exactly the stale files are gone, each said once
  [ $rc -eq 0 ] || { echo "   exit $rc"; return 1; }
  for f in "${stale[@]}"; do [ ! -e "$T/tmpc/$f" ] || { echo "   $f left"; return 1; }; done
  for f in "${kept[@]}"; do [ -f "$T/tmpc/$f" ] || { echo "   $f removed"; return 1; }; done
  [ -d "$T/tmpc/ckpt_e0009.bin.tmp.$dead" ] && [ "$(grep -c '^checkpoint: removed stale ' "$T/tmpc.log")" -eq 4 ]
}
check "start-up removes the 4 stale temp files (one line each), keeps near misses, a live pid's and a directory" stale_ok

summary
