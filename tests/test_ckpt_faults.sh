#!/usr/bin/env bash
# test_ckpt_faults.sh - the binary facing faults and hostile input around its checkpoints:
# stale temp files of interrupted writes, an unusable best.bin, a resume under options that move
# the data position, checkpoints whose values (CRC intact) are out of range, and a background
# checkpoint write that fails (a full file system) at each point where the run waits for it. One process
# (no mpirun: every case is rank 0's), a tiny model on generated data: seconds in all.
# usage: tests/test_ckpt_faults.sh ./vgg_dist     (BUILD names the build dir holding gen_cifar)
# Prints "N passed, N failed" last.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tests/check.sh"
suite_tools "${1:-}"
export OMP_NUM_THREADS=1
T=$(mktemp -d /tmp/vgg_ckpt_faults_XXXXXX)
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

# ---- one epoch's checkpoints and a mid-epoch one, the material of the cases below ----
"$BIN" "${SMALL[@]}" --epochs 1 --checkpoint-dir "$T/e1" > "$T/e1.log" 2>&1 || bad "the 1-epoch run (see $T/e1.log)"
"$BIN" "${SMALL[@]}" --epochs 1 --checkpoint-dir "$T/mid" --max-steps 3 > /dev/null 2>&1
MID="$T/mid/ckpt_e0000_b000003.bin"
[ -f "$MID" ] && [ -f "$T/e1/best.bin" ] || bad "the checkpoints to work on were not written"
expect_refused() { # expect_refused NAME PATTERN ARGS...: exit 1, one line on stderr matching PATTERN
  local name=$1 pat=$2
  shift 2
  "$BIN" "${SMALL[@]}" "$@" > "$T/out.log" 2> "$T/err.log"
  local rc=$?
  if [ $rc -eq 1 ] && grep -q -- "$pat" "$T/err.log" && ! grep -q 'img/s' "$T/out.log"; then ok "$name"
  else bad "$name (exit $rc, stderr: $(head -c 300 "$T/err.log"))"; fi
}

# ---- the sample order: a mid-epoch position is only valid in the batches and split it was
# counted in; at an epoch's start another batch is fine (and said), another split is not ----
expect_refused "mid-epoch resume with a larger --batch refused" \
  "--batch 64: the checkpoint is at batch 3 of an epoch in batches of 32" --epochs 2 --batch 64 --resume "$MID"
expect_refused "mid-epoch resume with a smaller --batch refused" "--batch 16:" --epochs 2 --batch 16 --resume "$MID"
expect_refused "mid-epoch resume with another --val-size refused" "--val-size 120:" --epochs 2 --val-size 120 --resume "$MID"
expect_refused "mid-epoch resume with another --train-limit refused" \
  "--train-limit 380: this run has 380 training images, the checkpoint's run had 400" --epochs 2 --train-limit 380 --resume "$MID"
expect_refused "epoch-start resume with another --val-size refused" "--val-size 90:" --epochs 2 --val-size 90 --resume "$T/e1/ckpt_e0001.bin"
mkdir -p "$T/b64" && cp "$T/e1/ckpt_e0001.bin" "$T/e1/best.bin" "$T/b64/"
"$BIN" "${SMALL[@]}" --epochs 2 --batch 64 --checkpoint-dir "$T/b64" --resume auto > "$T/b64.log" 2>&1
rc=$?
check "epoch-start resume with --batch 64: says so, trains the 5 steps of 64 (step 15), records 64" bash -c \
  "[ $rc -eq 0 ] && grep -q \"note: --batch 64 (the checkpoint's run used 32): from epoch 2 on\" '$T/b64.log' && '$PY' '$TOOL' state '$T/b64/ckpt_e0002.bin' | tr '\n' ' ' | grep -q '^step 15 .*order_batch 64 '"
"$BIN" "${SMALL[@]}" --epochs 2 --checkpoint-dir "$T/mid" --resume auto > "$T/mid2.log" 2>&1
check "mid-epoch resume with the same options continues" grep -q 'resumed from .*ckpt_e0000_b000003.bin' "$T/mid2.log"

# ---- values with a valid CRC: each field out of range is refused, naming it and its value ----
# (the mid-epoch file: epoch 0, batch 3 of 10, step 3, lr 1e-3, no best yet)
while read -r set want; do
  "$PY" "$TOOL" set "$MID" "$T/hostile.bin" "$set" || { bad "ckpt_tool.py set $set"; continue; }
  expect_refused "STATE $set refused" "$want" --epochs 2 --resume "$T/hostile.bin"
done <<'CASES'
batch=-5 STATE batch = -5 is out of range
batch=10 STATE batch = 10 is out of range
batch=2147483647 STATE batch = 2147483647
epoch=2147483647 STATE epoch = 2147483647 is out of range
epoch=-1 STATE epoch = -1 is out of range
step=-1 STATE step = -1 is out of range
step=2 STATE step = 2 is out of range
step=100000 STATE step = 100000 is out of range
lr=nan STATE lr = nan is out of range
lr=inf STATE lr = inf is out of range
lr=-0.001 STATE lr = -0.001 is out of range
lr=0 STATE lr = 0 is out of range
mean.0=inf STATE mean\[0\] = inf is out of range
mean.2=nan STATE mean\[2\] = nan is out of range
std.1=0 STATE std\[1\] = 0 is out of range
std.2=-1 STATE std\[2\] = -1 is out of range
best_epoch=1000000 STATE best_epoch = 1000000 is out of range
best_epoch=-2 STATE best_epoch = -2 is out of range
best_val_loss=nan STATE best_val_loss = nan is out of range
best_val_loss=0.5 STATE best_val_loss = 0.5 is out of range
best_val_acc=2 STATE best_val_acc = 2 is out of range
sched_best=-1 STATE sched_best = -1 is out of range
sched_best=nan STATE sched_best = nan is out of range
sched_bad_epochs=3 STATE sched_bad_epochs = 3 is out of range
sched_cooldown=-1 STATE sched_cooldown = -1 is out of range
es_bad_epochs=1 STATE es_bad_epochs = 1 is out of range
epoch_loss_sum=-1 STATE epoch_loss_sum = -1 is out of range
epoch_loss_sum=inf STATE epoch_loss_sum = inf is out of range
epoch_correct=97 STATE epoch_correct = 97 is out of range
epoch_correct=2.5 STATE epoch_correct = 2.5 is out of range
epoch_time_s=nan STATE epoch_time_s = nan is out of range
warmup_steps=-1 STATE warmup_steps = -1 is out of range
order_batch=0 STATE order.batch = 0 is out of range
order_val_size=0 STATE order.val_size = 0 is out of range
order_train_limit=-1 STATE order.train_limit = -1 is out of range
order_train_images=500 STATE order.train_images = 500 is out of range
CASES

# ---- best.bin: verified like any checkpoint; when it cannot be used (corrupt, another model's,
# missing) the run says so and the final test names the model it tests ----
good_test=$(grep -o '^test (best model, epoch 1): loss [0-9.]* acc [0-9.]*' "$T/e1.log")
"$BIN" "${SMALL[@]}" --width 0.25 --epochs 1 --checkpoint-dir "$T/wide" > /dev/null 2>&1
for case in intact corrupt other missing; do
  rm -rf "$T/b_$case" && mkdir -p "$T/b_$case" && cp "$T/e1/ckpt_e0001.bin" "$T/e1/best.bin" "$T/b_$case/"
  case $case in
    corrupt) printf '\x55' | dd of="$T/b_$case/best.bin" bs=1 seek=3000 conv=notrunc 2> /dev/null; why="CRC mismatch" ;;
    other) cp "$T/wide/best.bin" "$T/b_$case/best.bin"; why="width differs" ;;
    missing) rm "$T/b_$case/best.bin"; why="cannot open" ;;
  esac
  # --epochs 1: nothing left to train, so only the final test runs, on the model resumed.
  "$BIN" "${SMALL[@]}" --epochs 1 --checkpoint-dir "$T/b_$case" --resume auto \
    --metrics "$T/b_$case.jsonl" > "$T/b_$case.log" 2>&1
  rc=$?
  if [ $case = intact ]; then
    check "intact best.bin: the final test is the best model's, as in the uninterrupted run" bash -c \
      "[ $rc -eq 0 ] && [ -n '$good_test' ] && grep -q '^$good_test' '$T/b_$case.log' && ! grep -q unusable '$T/b_$case.log' && grep -q '\"event\": \"test\".*\"model\": \"best\"' '$T/b_$case.jsonl'"
  else
    check "$case best.bin: one warning, the final test (and its metrics event) says it is the last model's and why" bash -c \
      "[ $rc -eq 0 ] && [ \$(grep -c \"^warning: .*best.bin unusable: .*$why.*: the final test will use the last model\" '$T/b_$case.log') -eq 1 ] && grep -q \"^test (last model, epoch 1): loss .*(.*best.bin unusable: .*$why\" '$T/b_$case.log' && ! grep -q '^test (best model' '$T/b_$case.log' && grep -q '\"event\": \"test\".*\"model\": \"last\"' '$T/b_$case.jsonl'"
  fi
done

# ---- best.bin is the improving epoch's checkpoint written once: a hard link to it. Deleting the
# periodic name (as --keep prunes it) leaves best.bin whole, and a run resumes from it ----
check "best.bin and ckpt_e0001.bin are one file (same inode, 2 links), and the log says linked" bash -c \
  "[ \"\$(stat -c %i '$T/e1/best.bin')\" = \"\$(stat -c %i '$T/e1/ckpt_e0001.bin')\" ] && [ \"\$(stat -c %h '$T/e1/best.bin')\" -eq 2 ] && grep -q '^checkpoint: .*ckpt_e0001.bin (best.bin: linked)' '$T/e1.log'"
rm -rf "$T/pr" && cp -a "$T/e1" "$T/pr" && rm "$T/pr/ckpt_e0001.bin" # cp -a keeps the link
"$BIN" "${SMALL[@]}" --epochs 1 --checkpoint-dir "$T/pr" --resume "$T/pr/best.bin" > "$T/pr.log" 2>&1
rc=$?
check "with its periodic name deleted, best.bin (1 link left) resumes and gives the best model's test" bash -c \
  "[ $rc -eq 0 ] && [ \"\$(stat -c %h '$T/pr/best.bin')\" -eq 1 ] && [ -n '$good_test' ] && grep -q '^$good_test' '$T/pr.log' && ! grep -q unusable '$T/pr.log'"

# ---- checkpoints are written in the background: a resume from one written while the next epoch
# trained continues the very same trajectory ----
mkdir -p "$T/bg" && cp "$T/e1/ckpt_e0001.bin" "$T/e1/best.bin" "$T/bg/" # e1 ended while it wrote
"$BIN" "${SMALL[@]}" --epochs 2 --checkpoint-dir "$T/bgfull" > "$T/bgfull.log" 2>&1
"$BIN" "${SMALL[@]}" --epochs 2 --checkpoint-dir "$T/bg" --resume auto > "$T/bg.log" 2>&1
check "the epoch checkpoints say the pause and the background write; a resume from one is bitwise the uninterrupted run" bash -c \
  "grep -q '^checkpoints: epoch 1: training paused [0-9.]* s (written in the background)' '$T/bgfull.log' && grep -q '^checkpoint: .*ckpt_e0001.bin (best.bin: linked), written in [0-9.]* s$' '$T/bgfull.log' && grep -q 'resumed from .*ckpt_e0001.bin' '$T/bg.log' && '$PY' '$TOOL' compare '$T/bg/ckpt_e0002.bin' '$T/bgfull/ckpt_e0002.bin' && '$PY' '$TOOL' compare '$T/bgfull/ckpt_e0001.bin' '$T/e1/ckpt_e0001.bin'"

# ---- a background write that fails (its temp file is /dev/full: ENOSPC, as a full file system
# gives) ends the run with its one line and exit 1: found between steps, at a stop's write, or
# at the end of the run. The process's pid names the temp file, so a wrapper that execs the run
# links it beforehand: no race. ----
full_run() { # full_run NAME CKPT ARGS...: the run with $T/NAME/CKPT's temp file on /dev/full
  local name=$1 ckpt=$2
  shift 2
  mkdir -p "$T/$name"
  timeout 120 sh -c 'ln -s /dev/full "$1.tmp.$$" && shift && exec "$@"' sh "$T/$name/$ckpt" \
    "$BIN" "${SMALL[@]}" --checkpoint-dir "$T/$name" "$@" > "$T/$name.log" 2> "$T/$name.err"
}
full_failed() { # full_failed RC NAME CKPT: exit 1 and one line: rank 0, file:line, the temp file, ENOSPC
  [ "$1" -eq 1 ] && [ "$(wc -l < "$T/$2.err")" -eq 1 ] &&
    grep -qE "^vgg_dist: error \[rank 0 [^]]*\] src/checkpoint.c:[0-9]+: write of [0-9]+ bytes to $T/$2/$3.tmp.[0-9]+ failed: No space left on device$" "$T/$2.err" &&
    [ ! -e "$T/$2/$3" ] && [ ! -e "$T/$2/RESUMABLE" ] && ! ls "$T/$2"/*.tmp.* > /dev/null 2>&1 ||
    { echo "   exit $1, stderr: $(head -c 400 "$T/$2.err")"; return 1; }
}
full_run fullmid ckpt_e0002.bin --epochs 3 --log-every 1
rc=$?
check "a failed write of epoch 2's checkpoint: one line, exit 1, epoch 1's intact, no test, no epoch 3 checkpoint" bash -c \
  "$(declare -f full_failed); T='$T'; full_failed $rc fullmid ckpt_e0002.bin && '$PY' '$TOOL' compare '$T/fullmid/ckpt_e0001.bin' '$T/e1/ckpt_e0001.bin' && ! grep -q '^test ' '$T/fullmid.log' && [ ! -e '$T/fullmid/ckpt_e0003.bin' ]"
full_run fullstop ckpt_e0000_b000003.bin --epochs 1 --max-steps 3
rc=$?
check "a failed write of a stop's checkpoint: one line, exit 1, no RESUMABLE (nothing whole to resume)" bash -c \
  "$(declare -f full_failed); T='$T'; full_failed $rc fullstop ckpt_e0000_b000003.bin && ! grep -q 'stopped, resumable' '$T/fullstop.log'"
full_run fullend ckpt_e0001.bin --epochs 1
rc=$?
check "a failed write of the last checkpoint (joined after the final test): one line, exit 1" bash -c \
  "$(declare -f full_failed); T='$T'; full_failed $rc fullend ckpt_e0001.bin && grep -q '^test (best model' '$T/fullend.log' && [ ! -e '$T/fullend/best.bin' ]"

summary
