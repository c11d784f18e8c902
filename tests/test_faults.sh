#!/usr/bin/env bash
# test_faults.sh - faults and hostile inputs (issue 13): a stalled rank ends the job within
# --comm-timeout on the MPI path; a FIFO in place of a data file or a checkpoint is refused
# instead of blocking; a diverging run stops with an error and no checkpoint of its broken state;
# the messages of a stop, of bad options and of bad files say what happened, once, in one line.
# Every run is bounded (timeout, or a watched background job), so a regression fails, never hangs.
# usage: tests/test_faults.sh ./vgg_dist     (BUILD names the build dir holding gen_cifar)
# Prints "N passed, N failed" last.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tests/check.sh"
suite_tools "${1:-}"
suite_mpi
T=$(mktemp -d /tmp/vgg_faults_XXXXXX)
STOPPED= # pids held by SIGSTOP: continued and killed on exit, whatever happened
cleanup() {
  [ -n "$STOPPED" ] && { kill -CONT $STOPPED; kill -9 $STOPPED; } 2> /dev/null
  local left
  left=$(pgrep -f -- "^$BIN .*$T/") && kill -9 $left 2> /dev/null # a killed mpirun's ranks
  rm -rf "$T"
}
trap cleanup EXIT

"$GEN" "$T/data" 100 200 3 || { echo "cannot generate data"; echo "0 passed, 1 failed"; exit 1; }
SMALL=(--data "$T/data" --model vgg11 --width 0.125 --image-size 32 --batch 30 --val-size 100
       --eval-batch 50 --log-every 1 --device cpu --seed 5 --batchnorm 0 --warmup-epochs 0)

wait_step() { # wait_step METRICS: until the run has logged a step (at most 20 s)
  for _ in $(seq 1 200); do grep -q '"step"' "$1" 2> /dev/null && return 0; sleep 0.1; done
  return 1
}
wait_bounded() { # wait_bounded PID SECONDS: its status, or 124 (and it is killed) when it runs longer
  for _ in $(seq 1 $(($2 * 10))); do kill -0 "$1" 2> /dev/null || break; sleep 0.1; done
  if kill -0 "$1" 2> /dev/null; then kill -9 "$1"; wait "$1"; return 124; fi
  wait "$1"
}

# ---- a stalled rank (SIGSTOP) ends the job after --comm-timeout, naming the rank and the wait ----
"${MPIRUN[@]}" -np 3 "$BIN" "${SMALL[@]}" --epochs 50 --comm-timeout 5 --metrics "$T/stall.jsonl" \
  > "$T/stall.log" 2>&1 &
mpid=$!
wait_step "$T/stall.jsonl"
victim=$(pgrep -f -- "^$BIN .*$T/stall.jsonl" | tail -n 1)
STOPPED=$victim
victim_rank=$(tr '\0' '\n' < "/proc/$victim/environ" | sed -n 's/^OMPI_COMM_WORLD_RANK=//p')
t0=$(date +%s)
kill -STOP "$victim"
# The others wait with naps, not spinning: their CPU time over 2 s of the wait, in clock ticks
# (100 a second; a spinning rank takes about 200 here).
others=$(pgrep -f -- "^$BIN .*$T/stall.jsonl" | grep -vx "$victim" | tr '\n' ' ')
ticks() { cat $(printf '/proc/%s/stat ' $others) 2> /dev/null | awk '{s += $14 + $15} END {print s + 0}'; }
sleep 1
c0=$(ticks)
sleep 2
cpu=$(($(ticks) - c0))
wait_bounded $mpid 40
rc=$?
took=$(($(date +%s) - t0))
echo "   job ended ${took} s after the SIGSTOP (--comm-timeout 5), exit $rc"
check "a stopped rank of 3 ends the job within --comm-timeout + 10 s, non-zero" \
  bash -c "[ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $took -le 15 ]"
check "the message names the waiting rank, the collective, the time and the stopped rank ($victim_rank)" \
  grep -qE "error \[rank [0-9] .*waited [0-9]+ s for .* \(--comm-timeout 5\): no answer within 2 s from rank\(s\) $victim_rank on $(hostname): stopped" "$T/stall.log"
check "--help says where --comm-timeout applies" bash -c "'$BIN' --help | grep -q -- '--comm-timeout S .*gradient all-reduce over NCCL or MPI, MPI control messages'"
check "the 2 waiting ranks do not spin: $cpu CPU ticks in 2 s (< 40)" \
  bash -c "[ -n '$others' ] && [ $cpu -lt 40 ]"
kill -CONT "$victim" 2> /dev/null; kill -9 "$victim" 2> /dev/null
STOPPED=

# ---- a FIFO in place of a file that is read: refused in one line, never waited on ----
# (Without the check fopen blocks until a writer comes: here never, so `timeout` says 124.)
bounded_fail() { # bounded_fail NAME PATTERN ARGS...: exit non-zero (not 124) within 20 s, PATTERN in stderr
  local name=$1 pat=$2
  shift 2
  timeout 20 "$@" > "$T/out.log" 2> "$T/err.log"
  local rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q -- "$pat" "$T/err.log"; then ok "$name"
  else bad "$name (exit $rc, stderr: $(head -c 300 "$T/err.log"))"; fi
}
mkdir -p "$T/fifo" && cp "$T/data"/* "$T/fifo/" && rm "$T/fifo/data_batch_1.bin" && mkfifo "$T/fifo/data_batch_1.bin"
bounded_fail "a FIFO as data_batch_1.bin: one line naming it, 'not a regular file'" \
  "^vgg_dist: error: cannot open .*fifo/data_batch_1.bin: not a regular file$" "$BIN" "${SMALL[@]}" --data "$T/fifo"
mkdir -p "$T/fifometa" && cp "$T/data"/* "$T/fifometa/" && rm "$T/fifometa/batches.meta.txt" && mkfifo "$T/fifometa/batches.meta.txt"
bounded_fail "a FIFO as batches.meta.txt: refused, not waited on" \
  "batches.meta.txt: not a regular file" "$BIN" "${SMALL[@]}" --data "$T/fifometa"
mkfifo "$T/ckpt_fifo.bin"
bounded_fail "a FIFO as the --resume checkpoint: one line naming it, 'not a regular file'" \
  "cannot open checkpoint .*ckpt_fifo.bin: not a regular file" "$BIN" "${SMALL[@]}" --resume "$T/ckpt_fifo.bin"
mkdir -p "$T/fifodir" && mkfifo "$T/fifodir/ckpt_e0001.bin"
bounded_fail "a FIFO as the newest checkpoint (--resume auto): refused, not waited on" \
  "ckpt_e0001.bin: not a regular file" "$BIN" "${SMALL[@]}" --checkpoint-dir "$T/fifodir" --resume auto

# ---- divergence: the run stops with an error, and no checkpoint of the broken state ----
# --lr 10 reaches a mean loss of about 1e16 by step 5 here; --std 1e-30 (inputs of 1e30) at once.
"${MPIRUN[@]}" -np 2 "$BIN" "${SMALL[@]}" --epochs 1 --checkpoint-dir "$T/dv" > /dev/null 2>&1
good=$(md5sum "$T/dv"/*.bin)
timeout 120 "${MPIRUN[@]}" -np 2 "$BIN" "${SMALL[@]}" --epochs 3 --lr 10 --log-every 5 --max-steps 5 \
  --checkpoint-dir "$T/dv" --metrics "$T/dv.jsonl" > "$T/dv.log" 2> "$T/dv.err"
rc=$?
echo "   --lr 10: exit $rc: $(grep vgg_dist "$T/dv.err")"
# (mpirun adds its own lines about a rank's non-zero exit.)
check "--lr 10 diverges: exit 1, one error line (rank 0's) naming the epoch and the step" \
  bash -c "[ $rc -eq 1 ] && [ \$(grep -c vgg_dist '$T/dv.err') -eq 1 ] && grep -q '^vgg_dist: error: training diverged at epoch 1, step 5: mean training loss' '$T/dv.err'"
check "--lr 10: no checkpoint of the diverged state (--max-steps 5 came with it), no RESUMABLE, the good ones untouched" \
  bash -c "[ \"\$(md5sum '$T/dv'/*.bin)\" = '$good' ] && [ ! -e '$T/dv/RESUMABLE' ]"
check "--lr 10: the metrics file holds valid JSON only (no nan or inf)" \
  "$PY" -c "import json, sys; [json.loads(l, parse_constant=lambda c: sys.exit(1)) for l in open(sys.argv[1])]" "$T/dv.jsonl"
timeout 120 "$BIN" "${SMALL[@]}" --epochs 2 --mean 0,0,0 --std 1e-30,1,1 > "$T/std.log" 2> "$T/std.err"
rc=$?
check "--std 1e-30,1,1 diverges at the first progress line: exit 1, one line" \
  bash -c "[ $rc -eq 1 ] && [ \$(wc -l < '$T/std.err') -eq 1 ] && grep -q 'training diverged at epoch 1, step 1:' '$T/std.err'"
"${MPIRUN[@]}" -np 2 "$BIN" "${SMALL[@]}" --epochs 2 --lr 0.003 > "$T/fine.log" 2>&1
check "a run that learns is not stopped by the guard" grep -q '^test (best model' "$T/fine.log"

# ---- messages: what stopped a run; bad unsigned values; a file as the checkpoint dir; --metrics ----
"$GEN" "$T/sigdata" 400 200 3 > /dev/null
"${MPIRUN[@]}" -np 2 "$BIN" "${SMALL[@]}" --data "$T/sigdata" --epochs 50 --metrics "$T/sig.jsonl" > "$T/sig.log" 2>&1 &
mpid=$!
wait_step "$T/sig.jsonl"
kill -TERM "$(pgrep -f -- "^$BIN .*$T/sig.jsonl" | tail -n 1)"
wait_bounded $mpid 60
rc=$?
check "SIGTERM to one rank: the stop says SIGTERM, not --max-steps (exit $rc)" \
  bash -c "[ $rc -eq 0 ] && grep -q '^stopping after step [0-9]* (SIGTERM (signal 15) received)' '$T/sig.log' && ! grep '^stopping' '$T/sig.log' | grep -q 'max-steps'"
# A SIGTERM pending as vgg_dist starts (blocked and sent to itself before exec) reaches its
# handler before MPI_Init: a one-process run without --checkpoint-dir stops before its first step,
# says so and that nothing was saved, and exits 0 (before, it died by the signal, silently).
printf '%s\n' 'import os, signal, sys' 'signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})' \
  'os.kill(os.getpid(), signal.SIGTERM)' 'os.execv(sys.argv[1], sys.argv[1:])' > "$T/pending.py"
timeout 60 "$PY" "$T/pending.py" "$BIN" "${SMALL[@]}" --epochs 1 > "$T/early.log" 2> "$T/early.err"
rc=$?
check "SIGTERM during start-up, one process: exit 0, 'stopping before the first step', nothing to resume, no step, nothing on stderr" bash -c \
  "[ $rc -eq 0 ] && grep -q '^stopping before the first step (SIGTERM (signal 15) received during start-up)$' '$T/early.log' && grep -q 'nothing to resume' '$T/early.log' && ! grep -q 'img/s' '$T/early.log' && [ ! -s '$T/early.err' ]"
"$BIN" "${SMALL[@]}" --epochs 1 --max-steps 3 > "$T/ms.log" 2>&1
check "--max-steps 3: the stop says --max-steps" grep -q '^stopping after step 3 (--max-steps 3 reached)' "$T/ms.log"
expect_fail() { # expect_fail NAME STATUS PATTERN ARGS...: that exit status, one stderr line matching
  local name=$1 want=$2 pat=$3
  shift 3
  timeout 60 "$@" > "$T/out.log" 2> "$T/err.log"
  local rc=$?
  if [ $rc -eq "$want" ] && [ "$(wc -l < "$T/err.log")" -eq 1 ] && grep -q -- "$pat" "$T/err.log"; then ok "$name"
  else bad "$name (exit $rc, stderr: $(head -c 400 "$T/err.log"))"; fi
}
expect_fail "--seed ' -1' refused" 2 "^vgg_dist: error: --seed: ' -1' is not a non-negative integer" "$BIN" --seed " -1"
expect_fail "--seed -1 refused" 2 "--seed: '-1' is not a non-negative integer" "$BIN" --seed -1
expect_fail "--seed +1 refused" 2 "--seed: '+1' is not a non-negative integer" "$BIN" --seed +1
touch "$T/afile"
expect_fail "a file as --checkpoint-dir: 'exists and is not a directory'" 2 \
  "^vgg_dist: error: --checkpoint-dir: cannot create .*afile: it exists and is not a directory$" "$BIN" "${SMALL[@]}" --checkpoint-dir "$T/afile"
# Before the data: with a missing data directory as well, the metrics error must come first.
expect_fail "an unwritable --metrics is refused before the data is read" 2 \
  "^vgg_dist: error: --metrics: cannot open $T/no/such/m.jsonl for writing: No such file or directory$" \
  "$BIN" "${SMALL[@]}" --data "$T/nodata" --metrics "$T/no/such/m.jsonl"
printf '{"event": "old"}\n' > "$T/keep.jsonl"
"$BIN" "${SMALL[@]}" --epochs 1 --max-steps 2 --checkpoint-dir "$T/mk" --metrics "$T/keep.jsonl" > /dev/null 2>&1
n1=$(grep -c '"step"' "$T/keep.jsonl")
"$BIN" "${SMALL[@]}" --epochs 1 --max-steps 4 --checkpoint-dir "$T/mk" --resume auto --metrics "$T/keep.jsonl" > /dev/null 2>&1
check "--metrics: a fresh run starts the file afresh, a resumed one appends ($n1 then $(grep -c '"step"' "$T/keep.jsonl") step lines)" \
  bash -c "! grep -q old '$T/keep.jsonl' && [ $n1 -eq 2 ] && [ \$(grep -c '\"step\"' '$T/keep.jsonl') -eq 4 ]"

# ---- rank 0's background checkpoint write fails (its temp file is /dev/full: ENOSPC) at -np 2:
# every rank learns it between steps or at the next checkpoint, and each exits 1; one line (rank
# 0's: file:line, the message), no MPI_ABORT banner, no hang. Rank 0's wrapper links the temp
# file under its own pid, which the run keeps (exec); the outer wrapper records each rank's exit.
printf '#!/bin/sh\n[ "$OMPI_COMM_WORLD_RANK" = 0 ] && ln -s /dev/full "$FULL_TMP.$$"\nexec "$@"\n' > "$T/full.sh"
printf '#!/bin/sh\n"$@"\ns=$?\necho "exit $s" >> "$RANK_EXITS"\nexit $s\n' > "$T/exits.sh"
chmod +x "$T/full.sh" "$T/exits.sh"
mkdir -p "$T/full"
FULL_TMP="$T/full/ckpt_e0002.bin.tmp" RANK_EXITS="$T/full.exits" timeout 120 "${MPIRUN[@]}" -np 2 \
  -x FULL_TMP -x RANK_EXITS "$T/exits.sh" "$T/full.sh" "$BIN" "${SMALL[@]}" --epochs 3 \
  --checkpoint-dir "$T/full" > "$T/full.log" 2> "$T/full.err"
rc=$?
echo "   a failed background write at -np 2: mpirun exit $rc, ranks: $(tr '\n' ' ' < "$T/full.exits" 2> /dev/null)"
check "a failed background write at -np 2: every rank exits 1, rank 0's one line, no MPI_ABORT banner, epoch 1's checkpoint kept" bash -c \
  "[ $rc -eq 1 ] && [ \"\$(cat '$T/full.exits')\" = \"\$(printf 'exit 1\nexit 1')\" ] && [ \$(grep -c 'vgg_dist' '$T/full.err') -eq 1 ] && grep -qE '^vgg_dist: error \[rank 0 [^]]*\] src/checkpoint.c:[0-9]+: write of [0-9]+ bytes to .*/ckpt_e0002.bin.tmp.[0-9]+ failed: No space left on device$' '$T/full.err' && ! grep -q MPI_ABORT '$T/full.err' && [ -f '$T/full/ckpt_e0001.bin' ] && [ ! -e '$T/full/ckpt_e0002.bin' ]"

# ---- an error every rank meets (bad data at -np 2): one line from one rank, no MPI_ABORT banner ----
# (mpirun still reports the ranks' non-zero exit in its own lines; its -q would hide that too.)
mkdir -p "$T/trunc" && cp "$T/data"/* "$T/trunc/" && truncate -s -5 "$T/trunc/data_batch_2.bin"
timeout 60 "${MPIRUN[@]}" -np 2 "$BIN" "${SMALL[@]}" --data "$T/trunc" > /dev/null 2> "$T/trunc.err"
rc=$?
check "a truncated data file at -np 2: exit 1, the error once (rank 0's), no MPI_ABORT banner" \
  bash -c "[ $rc -eq 1 ] && [ \$(grep -c 'vgg_dist: error' '$T/trunc.err') -eq 1 ] && grep -q '^vgg_dist: error: .*data_batch_2.bin: size' '$T/trunc.err' && ! grep -q MPI_ABORT '$T/trunc.err'"
timeout 60 "${MPIRUN[@]}" -q -np 2 "$BIN" "${SMALL[@]}" --data "$T/trunc" > /dev/null 2> "$T/truncq.err"
check "the same under mpirun -q: exactly one line on stderr" bash -c "[ \$(wc -l < '$T/truncq.err') -eq 1 ]"

summary
