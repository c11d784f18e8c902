#!/usr/bin/env bash
# test_mpi.sh - the multi-rank tests of the vgg_dist binary under mpirun (CPU backend):
# world-size independence, bitwise resume, the checkpoint format (version 3, and version-1 files
# from an earlier build), stopping by signal (to a rank, to mpirun, to the launch script) with the
# RESUMABLE marker, a dead rank, the hostfile launcher, bad input, metrics, and learning on real
# (or generated) CIFAR-10.
# usage: tests/test_mpi.sh ./vgg_dist     (BUILD names the build dir holding gen_cifar)
# Prints "N passed, N failed" last.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tests/check.sh"
suite_tools "${1:-}"
suite_mpi
T=$(mktemp -d /tmp/vgg_mpi_XXXXXX)
trap 'rm -rf "$T"' EXIT

"$GEN" "$T/data" 100 200 3 || { echo "cannot generate data"; echo "0 passed, 1 failed"; exit 1; }
# A small, fast model; 400 train / 100 validation images, global batch 32 (13 steps an epoch).
# Without batch norm, whose statistics make the trajectory more sensitive to summation order
# (its world-size test is below, with bounds of its own). No warmup either (the default for the
# plain network is an epoch's): the version-1 checkpoints below had none. lr 1e-4: see the
# world-size test.
SMALL=(--data "$T/data" --model vgg11 --width 0.125 --image-size 32 --batch 32 --val-size 100
       --eval-batch 50 --log-every 5 --device cpu --seed 5 --batchnorm 0 --warmup-epochs 0
       --lr 1e-4)

# ---- world-size independence: -np 1, 2, 4 follow the same trajectory ----
# At lr 1e-4 (SMALL). At the default 1e-3 this small plain network leaves chance within 26 steps,
# and there a difference of float summation order grows chaotically: Adam moves a parameter
# whose gradient is near zero by lr in the direction of the gradient's rounding, and the whole
# trajectory follows. Measured at 1e-3 after 26 steps, -np 4 against -np 1: 3e-3 of the largest
# parameter with im2col convolutions, 5.8e-2 with Winograd's (whose rounding differs, not its
# result: a conv over the whole batch and over 4 shards agree to 3e-6), so a bound there says
# little. At 1e-4: 7e-7 (parameters) and 8e-6 (Adam first moment) for -np 2 and 4; with the
# all-reduce's MPI_SUM made MPI_MAX, 1.1e-2 and 1.6.
WS_BOUNDS=(1e-4 ADAM_M=1e-3 ADAM_V=1e-3)
for np in 1 2 4; do
  "${MPIRUN[@]}" -np $np "$BIN" "${SMALL[@]}" --epochs 2 --checkpoint-dir "$T/ws$np" \
    --metrics "$T/ws$np.jsonl" > "$T/ws$np.log" 2>&1 || bad "world size $np run (see log)"
done
for np in 2 4; do
  check "np $np parameters and Adam state equal np 1 up to summation order" \
    "$PY" "$TOOL" compare "$T/ws$np/ckpt_e0002.bin" "$T/ws1/ckpt_e0002.bin" "${WS_BOUNDS[@]}"
  check "np $np validation losses equal np 1" "$PY" - "$T/ws1.jsonl" "$T/ws$np.jsonl" <<'PY'
import json, sys
def losses(p): return [json.loads(l)["val_loss"] for l in open(p) if '"epoch"' in l and json.loads(l)["event"] == "epoch"]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
print("   val losses", a, b)
sys.exit(0 if len(a) == 2 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)) else 1)
PY
done
# ---- the stop agreement is not taken after every step (--stop-check, default 0.25 s): the
# trajectory is the one of an agreement after every step (--stop-check 0), bitwise, per-step
# losses included ----
"${MPIRUN[@]}" -np 2 "$BIN" "${SMALL[@]}" --epochs 2 --stop-check 0 --log-every 1 --checkpoint-dir "$T/sc0" \
  --metrics "$T/sc0.jsonl" > "$T/sc0.log" 2>&1 || bad "--stop-check 0 run (see log)"
"${MPIRUN[@]}" -np 2 "$BIN" "${SMALL[@]}" --epochs 2 --log-every 1 --checkpoint-dir "$T/sc" \
  --metrics "$T/sc.jsonl" > "$T/sc.log" 2>&1 || bad "default --stop-check run (see log)"
check "--stop-check 0.25 (default) and 0 (every step): the same checkpoint, bitwise, and the same losses at every step" bash -c \
  "'$PY' '$TOOL' compare '$T/sc/ckpt_e0002.bin' '$T/sc0/ckpt_e0002.bin' && '$PY' '$TOOL' compare '$T/sc/ckpt_e0002.bin' '$T/ws2/ckpt_e0002.bin' && diff <(grep -o '\"step\": [0-9]*, \"train_loss\": [0-9.]*' '$T/sc0.jsonl') <(grep -o '\"step\": [0-9]*, \"train_loss\": [0-9.]*' '$T/sc.jsonl') && [ \$(grep -c '\"step\"' '$T/sc.jsonl') -eq 26 ]"

# ---- batch norm over ranks (--sync-bn): the global batch's statistics on every world size ----
# Compared after 4 steps: a batch-norm network's trajectory is more sensitive still to summation
# order. After a whole epoch even two -np 1 runs whose first layer's filter gradient is summed
# in different chunks (1e-6 apart) end 3e-2 apart in the Adam first moment (im2col everywhere),
# and np 2 against np 1 reached 0.15 there: no bound then tells the global statistics from each
# rank's own (0.98). After 4 steps, measured: np 2 and 4 against np 1 differ by up to 1.7e-5
# (parameters: Adam moves a near-zero gradient's weight by lr either way), 1.5e-6 (Adam state)
# and 2.5e-6 (running statistics) of the largest value; each rank's own statistics
# (--sync-bn 0) by 7.9e-4, 0.68 and 4.7e-2.
SBN=("${SMALL[@]}" --batchnorm 1 --epochs 1)
SBN_AT=ckpt_e0000_b000004.bin
SBN_BOUNDS=(2e-4 ADAM_M=1e-4 ADAM_V=1e-4 BUFFERS=1e-4)
for v in "1 1" "2 1" "4 1" "2 0"; do
  set -- $v
  timeout 120 "${MPIRUN[@]}" -np $1 "$BIN" "${SBN[@]}" --sync-bn $2 --max-steps 4 \
    --checkpoint-dir "$T/sbn$1_$2" > "$T/sbn$1_$2.log" 2>&1 || bad "batch norm, np $1, --sync-bn $2 (see log)"
done
for np in 2 4; do
  check "--sync-bn 1: np $np parameters, Adam state and running statistics equal np 1's" \
    "$PY" "$TOOL" compare "$T/sbn${np}_1/$SBN_AT" "$T/sbn1_1/$SBN_AT" "${SBN_BOUNDS[@]}"
done
differs() { # differs A B: ckpt_tool compared every section (exit 1 for an unreadable file, too)
  # and found one beyond the bounds
  local out rc
  out=$("$PY" "$TOOL" compare "$1" "$2" "${SBN_BOUNDS[@]}" 2>&1)
  rc=$?
  echo "$out" | grep -q '^BUFFERS: max' && [ $rc -eq 1 ]
}
check "--sync-bn 0: np 2 differs from np 1 beyond those bounds (each rank's own statistics)" \
  differs "$T/sbn2_0/$SBN_AT" "$T/sbn1_1/$SBN_AT"
# Stopped on 2 ranks mid-epoch, resumed on 4: the same trajectory as one process.
"${MPIRUN[@]}" -np 2 "$BIN" "${SBN[@]}" --sync-bn 1 --checkpoint-dir "$T/sbnrw" --max-steps 2 > /dev/null 2>&1
"${MPIRUN[@]}" -np 4 "$BIN" "${SBN[@]}" --sync-bn 1 --checkpoint-dir "$T/sbnrw" --resume auto \
  --max-steps 4 > "$T/sbnrw.log" 2>&1
check "--sync-bn 1: stopped on 2 ranks, resumed on 4, equal to np 1's run" bash -c \
  "grep -q 'resumed from .*ckpt_e0000_b000002.bin' '$T/sbnrw.log' && '$PY' '$TOOL' compare '$T/sbnrw/$SBN_AT' '$T/sbn1_1/$SBN_AT' ${SBN_BOUNDS[*]}"
# 133 train-set images, 100 for validation: the epoch ends with a batch of one image, so 3 of 4
# ranks have none and must still take part in every batch-norm sum (or the job would hang).
for np in 1 4; do
  timeout 120 "${MPIRUN[@]}" -np $np "$BIN" "${SBN[@]}" --sync-bn 1 --train-limit 133 --metrics "$T/sbnl$np.jsonl" \
    > "$T/sbnl$np.log" 2>&1 || bad "batch norm, a batch of one image over np $np (see log)"
done
check "--sync-bn 1: ranks without images take part; np 4 validation loss equals np 1's" "$PY" - \
  "$T/sbnl1.jsonl" "$T/sbnl4.jsonl" <<'PY'
import json, sys
def losses(p): return [e["val_loss"] for e in map(json.loads, open(p)) if e["event"] == "epoch"]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
print("   val losses", a, b)
sys.exit(0 if len(a) == 1 and len(b) == 1 and abs(a[0] - b[0]) <= 1e-4 * abs(a[0]) else 1)
PY

check "metrics file: step, epoch and test events with the documented keys" "$PY" - "$T/ws2.jsonl" <<'PY'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
kinds = [e["event"] for e in ev]
ep = [e for e in ev if e["event"] == "epoch"]
te = [e for e in ev if e["event"] == "test"]
need = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "time_s"}
ok = "step" in kinds and len(ep) == 2 and len(te) == 1 and all(need <= set(e) for e in ep)
ok = ok and {"test_loss", "test_acc"} <= set(te[0]) and all(0 <= e["val_acc"] <= 1 for e in ep)
sys.exit(0 if ok else 1)
PY

# ---- class names: from batches.meta.txt, else the official ones with a warning ----
# comm_init asks for MPI_THREAD_MULTIPLE (the NCCL watchdog may abort while the main thread is
# in MPI); the device line says what the library gave.
check "the device line names the MPI thread level (multiple)" \
  grep -q '^device: cpu .*, MPI threads multiple$' "$T/ws2.log"
check "class names logged once (rank 0 of 2)" bash -c "[ \$(grep -c '^classes: 0 airplane, 1 automobile, .*, 9 truck\$' '$T/ws2.log') -eq 1 ]"
mkdir -p "$T/nometa" && cp "$T/data"/*.bin "$T/nometa/"
"$BIN" "${SMALL[@]}" --data "$T/nometa" --epochs 1 --train-limit 132 --test-limit 50 > "$T/nometa.log" 2>&1
rc=$?
check "no batches.meta.txt: one warning line, the official names, the run goes on" bash -c \
  "[ $rc -eq 0 ] && [ \$(grep -c 'warning: no .*batches.meta.txt' '$T/nometa.log') -eq 1 ] && grep -q '^classes: 0 airplane' '$T/nometa.log' && grep -q '^test (best model' '$T/nometa.log'"

# ---- resume: stop mid-epoch, continue, and land on the very same bits ----
"${MPIRUN[@]}" -np 2 "$BIN" "${SMALL[@]}" --epochs 2 --checkpoint-dir "$T/rs" --max-steps 5 > "$T/rs1.log" 2>&1
check "--max-steps stops with a mid-epoch checkpoint" test -f "$T/rs/ckpt_e0000_b000005.bin"
check "--max-steps writes RESUMABLE: the checkpoint's name and 'max-steps'" \
  bash -c "[ \"\$(cat '$T/rs/RESUMABLE')\" = 'ckpt_e0000_b000005.bin max-steps' ]"
"${MPIRUN[@]}" -np 2 "$BIN" "${SMALL[@]}" --epochs 2 --checkpoint-dir "$T/rs" --resume auto > "$T/rs2.log" 2>&1
check "resume continues from the checkpoint" grep -q "resumed from .*ckpt_e0000_b000005.bin" "$T/rs2.log"
check "the resumed run finishes and removes RESUMABLE" \
  bash -c "grep -q '^test (best model' '$T/rs2.log' && [ ! -e '$T/rs/RESUMABLE' ]"
check "stop + resume is bitwise equal to an uninterrupted run" \
  "$PY" "$TOOL" compare "$T/rs/ckpt_e0002.bin" "$T/ws2/ckpt_e0002.bin"
# Batch norm: the running statistics (rank 0's: every rank takes them before they are used or
# saved) travel in the checkpoint's BUFFERS, so stop + resume still lands on the same bits.
BN=("${SMALL[@]}" --batchnorm 1)
"${MPIRUN[@]}" -np 2 "$BIN" "${BN[@]}" --epochs 2 --checkpoint-dir "$T/bn" > "$T/bn.log" 2>&1
"${MPIRUN[@]}" -np 2 "$BIN" "${BN[@]}" --epochs 2 --checkpoint-dir "$T/bnr" --max-steps 5 > /dev/null 2>&1
"${MPIRUN[@]}" -np 2 "$BIN" "${BN[@]}" --epochs 2 --checkpoint-dir "$T/bnr" --resume auto > "$T/bnr.log" 2>&1
check "batch norm: the checkpoint's BUFFERS hold the running statistics" \
  bash -c "'$PY' '$TOOL' info '$T/bn/ckpt_e0002.bin' | grep -q '^6 BUFFERS [1-9]' && grep -q '^test (best model' '$T/bn.log'"
check "batch norm: stop + resume is bitwise equal, running statistics included" bash -c \
  "grep -q 'resumed from .*ckpt_e0000_b000005.bin' '$T/bnr.log' && '$PY' '$TOOL' compare '$T/bnr/ckpt_e0002.bin' '$T/bn/ckpt_e0002.bin'"
check "batch norm: the resumed run's validation and test equal the uninterrupted run's" bash -c \
  "diff <(grep -oE '(val|test).*loss [0-9.]+ acc [0-9.]+' '$T/bn.log' | tail -2) <(grep -oE '(val|test).*loss [0-9.]+ acc [0-9.]+' '$T/bnr.log' | tail -2)"
# Resume on another world size.
"${MPIRUN[@]}" -np 2 "$BIN" "${SMALL[@]}" --epochs 1 --checkpoint-dir "$T/rw" --max-steps 7 > /dev/null 2>&1
"${MPIRUN[@]}" -np 4 "$BIN" "${SMALL[@]}" --epochs 2 --checkpoint-dir "$T/rw" --resume auto > "$T/rw.log" 2>&1
check "resume on another world size (2 -> 4) matches" \
  "$PY" "$TOOL" compare "$T/rw/ckpt_e0002.bin" "$T/ws2/ckpt_e0002.bin" "${WS_BOUNDS[@]}"
# The format: version 3 with every section of the table (the tool refuses a file that is not),
# and a version-1 file (an earlier build's: no buffer count, no BUFFERS section, no warmup length
# in STATE) still resumes a model without buffers, to the same bits. The mid-epoch checkpoint
# becomes version 1 here.
check "checkpoints are format version 3 with every section, BUFFERS empty for VGG" \
  bash -c "'$PY' '$TOOL' info '$T/rs/ckpt_e0002.bin' | tr '\n' ' ' | grep -q '^version 3 1 META 44 2 STATE 140 .* 6 BUFFERS 0 \$'"
mkdir -p "$T/v1"
"$PY" - "$T/rs/ckpt_e0000_b000005.bin" "$T/v1/ckpt_e0000_b000005.bin" <<'PY'
import struct, sys, zlib
raw = open(sys.argv[1], "rb").read()
hdr = struct.Struct("<IIQII")                           # id, reserved, bytes, crc32, reserved
meta = raw[16:16 + 36]                                  # version 3's meta without n_buffers
state_on = 16 + 44 + 24 + 44                            # version 3: header, META section
assert hdr.unpack_from(raw, state_on)[:3] == (2, 0, 140)
state = raw[state_on + 24:state_on + 24 + 116]          # version 3's STATE without warmup_steps,
assert raw[state_on + 24 + 116:state_on + 24 + 124] == bytes(8)  # which is 0: no warmup, and
tail = raw[state_on + 24 + 140:len(raw) - 24]           # the sample order; PARAMS .. ADAM_V; BUFFERS (empty) dropped
assert raw[len(raw) - 24:len(raw) - 20] == struct.pack("<I", 6)
meta_sec = hdr.pack(1, 0, 36, zlib.crc32(meta), 0) + meta
state_sec = hdr.pack(2, 0, 116, zlib.crc32(state), 0) + state
open(sys.argv[2], "wb").write(b"VGGCKPT1" + struct.pack("<II", 1, 5) + meta + meta_sec + state_sec + tail)
PY
"$PY" "$TOOL" info "$T/v1/ckpt_e0000_b000005.bin" > "$T/v1.info" 2>&1 # before the run prunes it
"${MPIRUN[@]}" -np 2 "$BIN" "${SMALL[@]}" --epochs 2 --checkpoint-dir "$T/v1" --resume auto > "$T/v1.log" 2>&1
check "a version-1 checkpoint resumes (bitwise equal to an uninterrupted run)" bash -c \
  "grep -q '^version 1' '$T/v1.info' && grep -q 'resumed from .*ckpt_e0000_b000005.bin' '$T/v1.log' && '$PY' '$TOOL' compare '$T/v1/ckpt_e0002.bin' '$T/ws2/ckpt_e0002.bin'"

# ---- the lr warmup: per step, kept by the checkpoint, continued bitwise after a resume ----
# --warmup-epochs 1.5 at 13 steps an epoch: 20 warmup steps, so epochs 0 and 1 are warmup
# epochs. Stopped at step 7 (epoch 0), again at step 16 (epoch 1, past an epoch end inside the
# warmup), then finished by a run whose --warmup-epochs 0 must not matter: the checkpoint's
# warmup continues, and the end is bitwise the uninterrupted run's.
WARM=("${SMALL[@]}" --epochs 2 --warmup-epochs 1.5 --log-every 1)
"${MPIRUN[@]}" -np 2 "$BIN" "${WARM[@]}" --checkpoint-dir "$T/wu" --metrics "$T/wu.jsonl" > "$T/wu.log" 2>&1
"${MPIRUN[@]}" -np 2 "$BIN" "${WARM[@]}" --checkpoint-dir "$T/wus" --metrics "$T/wus.jsonl" --max-steps 7 > "$T/wus1.log" 2>&1
"${MPIRUN[@]}" -np 2 "$BIN" "${WARM[@]}" --checkpoint-dir "$T/wus" --metrics "$T/wus.jsonl" --max-steps 16 \
  --resume auto > "$T/wus2.log" 2>&1
"${MPIRUN[@]}" -np 2 "$BIN" "${WARM[@]}" --warmup-epochs 0 --checkpoint-dir "$T/wus" --metrics "$T/wus.jsonl" \
  --resume auto > "$T/wus3.log" 2>&1
check "warmup: the run logs its 20 warmup steps" grep -q '^warmup: the lr climbs linearly over the first 20 steps' "$T/wu.log"
check "warmup: the checkpoint keeps its length (STATE warmup_steps 20)" \
  bash -c "'$PY' '$TOOL' state '$T/wus/ckpt_e0001_b000003.bin' | grep -qx 'warmup_steps 20'"
check "warmup: a resume with another --warmup-epochs keeps the checkpoint's, and says so" \
  bash -c "grep -q 'resumed from .*ckpt_e0001_b000003.bin.*(in the warmup)' '$T/wus3.log' && grep -q \"note: continuing with the checkpoint's warmup of 20 steps (--warmup-epochs 0 asks for 0)\" '$T/wus3.log'"
check "warmup: stop + resume twice inside the warmup is bitwise equal to an uninterrupted run" \
  "$PY" "$TOOL" compare "$T/wus/ckpt_e0002.bin" "$T/wu/ckpt_e0002.bin"
check "warmup: differs from the run without it (it acts)" \
  bash -c "! '$PY' '$TOOL' compare '$T/wu/ckpt_e0002.bin' '$T/ws2/ckpt_e0002.bin' > /dev/null"
check "warmup: metrics lr rises per step (lr (k+1)/20 of SMALL's 1e-4 for the step k), then stays; the resumed runs log the same" \
  "$PY" - "$T/wu.jsonl" "$T/wus.jsonl" <<'PY'
import json, sys
def lrs(p): return [(e["step"], e["lr"]) for e in map(json.loads, open(p)) if e["event"] == "step"]
a, b = lrs(sys.argv[1]), lrs(sys.argv[2])
print("   lr by step:", " ".join("%d:%.3g" % s for s in a[:3] + a[18:22]), "...")
want = [(k, 1e-4 * min(k, 20) / 20) for k in range(1, 27)]  # step k was the k-th (0-based k-1)
ok = [s for s, _ in a] == [k for k, _ in want] and all(abs(x - y) <= 1e-5 * y for (_, x), (_, y) in zip(a, want))
sys.exit(0 if ok and a == b else 1)
PY

# ---- stopping: a signal to a rank, to mpirun or to the launch script ends the run after a step
# with a checkpoint, RESUMABLE naming it and the reason, exit 0 and how to resume ----
# 1,900 train images: 60 steps an epoch, so a stop right after the first steps is mid-epoch.
"$GEN" "$T/sigdata" 400 200 3
# --stop-check 0: a stop agreed after every step, so the stop lands mid-epoch however fast the
# steps are (at the default 0.25 s a host whose step took under 4 ms would agree next at the
# epoch's end); the --stop-check 60 case below overrides it (the last flag counts).
SIGRUN=("${SMALL[@]}" --data "$T/sigdata" --epochs 50 --log-every 1 --stop-check 0)
wait_step() { # wait_step METRICS: until the run has logged a step
  for _ in $(seq 1 500); do grep -q '"step"' "$1" 2> /dev/null && return; sleep 0.02; done
}
wait_bounded() { # wait_bounded PID SECONDS: its status, or 124 (and it is killed) when it runs longer
  for _ in $(seq 1 $(($2 * 10))); do kill -0 "$1" 2> /dev/null || break; sleep 0.1; done
  if kill -0 "$1" 2> /dev/null; then kill -9 "$1"; wait "$1"; return 124; fi
  wait "$1"
}
marker_ok() { # marker_ok DIR REASON [mid]: RESUMABLE is "<checkpoint in DIR> REASON" (mid: mid-epoch)
  local line name
  line=$(cat "$1/RESUMABLE" 2> /dev/null) || { echo "   no $1/RESUMABLE"; return 1; }
  name=${line%% *}
  echo "   RESUMABLE: $line"
  [ "$line" = "$name $2" ] && [ -f "$1/$name" ] && { [ "${3:-}" != mid ] || [[ $name == *_b* ]]; }
}
resume_ok() { # resume_ok DIR LOG: --resume auto continues from RESUMABLE's checkpoint, finishes
  # that epoch and the run, and removes RESUMABLE
  local name epoch
  name=$(cut -d' ' -f1 "$1/RESUMABLE") || return 1
  epoch=${name#ckpt_e}
  epoch=$((10#${epoch:0:4}))
  "${MPIRUN[@]}" -np 2 "$BIN" "${SIGRUN[@]}" --epochs $((epoch + 1)) --checkpoint-dir "$1" \
    --resume auto > "$2" 2>&1 && grep -q "resumed from .*/$name" "$2" &&
    grep -q '^test (best model' "$2" && [ ! -e "$1/RESUMABLE" ]
}
stopped_ok() { # stopped_ok STATUS LOG DIR REASON [mid]: exit 0, RESUMABLE, how to resume
  [ "$1" -eq 0 ] && marker_ok "$3" "$4" "${5:-}" && grep -q 'stopped, resumable.*--resume auto' "$2"
}

# SIGTERM to every rank, as Slurm does (the ranks' command lines start with $BIN).
"${MPIRUN[@]}" -np 2 "$BIN" "${SIGRUN[@]}" --checkpoint-dir "$T/sig" --metrics "$T/sig.jsonl" > "$T/sig.log" 2>&1 &
mpid=$!
wait_step "$T/sig.jsonl"
pkill -TERM -f -- "^$BIN .*$T/sig.jsonl"
wait $mpid
rc=$?
check "SIGTERM to every rank: exit 0, a mid-epoch checkpoint, RESUMABLE 'signal 15', how to resume" \
  stopped_ok $rc "$T/sig.log" "$T/sig" "signal 15" mid
check "after SIGTERM the run resumes and finishes" resume_ok "$T/sig" "$T/sig2.log"

# --stop-check 60: no agreement inside a 60-step epoch after its first step's, so a SIGTERM after
# that step lands at the epoch's last batch, on every rank alike (evidence that no collective
# per step carries it any more).
"${MPIRUN[@]}" -np 2 "$BIN" "${SIGRUN[@]}" --stop-check 60 --checkpoint-dir "$T/sc60" --metrics "$T/sc60.jsonl" > "$T/sc60.log" 2>&1 &
mpid=$!
wait_step "$T/sc60.jsonl"
kill -TERM "$(pgrep -f -- "^$BIN .*$T/sc60.jsonl" | tail -n 1)"
wait $mpid
rc=$?
check "--stop-check 60: a SIGTERM after step 1 stops at the end of epoch 1 (exit 0, RESUMABLE names ckpt_e0001.bin)" bash -c \
  "[ $rc -eq 0 ] && grep -q '^stopping at the end of epoch 1 (SIGTERM (signal 15) received)' '$T/sc60.log' && [ \"\$(cat '$T/sc60/RESUMABLE')\" = 'ckpt_e0001.bin signal 15' ]"

# SIGTERM to one rank: the others learn of it at the next stop agreement (SIGRUN: every step).
"${MPIRUN[@]}" -np 2 "$BIN" "${SIGRUN[@]}" --checkpoint-dir "$T/one" --metrics "$T/one.jsonl" > "$T/one.log" 2>&1 &
mpid=$!
wait_step "$T/one.jsonl"
kill -TERM "$(pgrep -f -- "^$BIN .*$T/one.jsonl" | tail -n 1)"
wait $mpid
rc=$?
check "SIGTERM to one rank: exit 0, a mid-epoch checkpoint, RESUMABLE 'signal 15', how to resume" \
  stopped_ok $rc "$T/one.log" "$T/one" "signal 15" mid
# A resumed run leaves the marker until it stops again (here by --max-steps), which replaces it.
before=$(cat "$T/one/RESUMABLE")
step=$(grep -o 'stopping after step [0-9]*' "$T/one.log" | grep -o '[0-9]*$')
"${MPIRUN[@]}" -np 2 "$BIN" "${SIGRUN[@]}" --checkpoint-dir "$T/one" --resume auto \
  --max-steps $((step + 2)) > "$T/one2.log" 2>&1
rc=$?
restopped_ok() { [ "$1" -eq 0 ] && marker_ok "$T/one" max-steps && [ "$(cat "$T/one/RESUMABLE")" != "$before" ]; }
check "a resumed run stopped by --max-steps replaces RESUMABLE ('$before' before)" restopped_ok $rc
check "after it, the run resumes and finishes" resume_ok "$T/one" "$T/one3.log"

# SIGUSR1 to mpirun, which forwards it to every rank at once (a scheduler's warning signal).
"${MPIRUN[@]}" -np 2 "$BIN" "${SIGRUN[@]}" --checkpoint-dir "$T/usr1" --metrics "$T/usr1.jsonl" > "$T/usr1.log" 2>&1 &
mpid=$!
wait_step "$T/usr1.jsonl"
kill -USR1 $mpid
wait $mpid
rc=$?
check "SIGUSR1 to mpirun: exit 0, a mid-epoch checkpoint, RESUMABLE 'signal 10', how to resume" \
  stopped_ok $rc "$T/usr1.log" "$T/usr1" "signal 10" mid

# SIGINT (Ctrl-C) or SIGTERM to mpirun itself. Open MPI 4.1 sends the ranks SIGCONT at once,
# SIGTERM after odls_base_sigkill_timeout seconds (default 1) and SIGKILL as long after, and exits
# 1 whatever they do. By default the small model's step and checkpoint fit in that second (the
# ranks are then killed inside MPI_Finalize, which mpirun does not serve while it aborts); with
# the README's flag every rank also exits 0. mpirun does not report the ranks' status here, so a
# wrapper records it. The stop comes a second or more late: mid-epoch or at an epoch's end.
# --log-every 5: mpirun does not read the ranks' output while it waits, and a full terminal
# buffer (about 16 KiB) would block rank 0 before it sees the signal.
"${MPIRUN[@]}" -np 2 "$BIN" "${SIGRUN[@]}" --log-every 5 --checkpoint-dir "$T/mint" \
  --metrics "$T/mint.jsonl" > "$T/mint.log" 2>&1 &
mpid=$!
wait_step "$T/mint.jsonl"
kill -INT $mpid
wait $mpid
rc=$?
echo "   SIGINT to mpirun: mpirun exit $rc (Open MPI: always 1)"
check "SIGINT to mpirun: a checkpoint, RESUMABLE 'signal 15' (the ranks get SIGTERM), how to resume" \
  stopped_ok 0 "$T/mint.log" "$T/mint" "signal 15"
check "after SIGINT to mpirun the run resumes and finishes" resume_ok "$T/mint" "$T/mint2.log"
printf '#!/bin/bash\ntrap "" TERM INT\n"$@"\necho "exit $?" >> "$RANK_EXITS"\n' > "$T/rank_exit.sh"
chmod +x "$T/rank_exit.sh"
RANK_EXITS="$T/mterm.exits" "${MPIRUN[@]}" --mca odls_base_sigkill_timeout 4 -np 2 -x RANK_EXITS \
  "$T/rank_exit.sh" "$BIN" "${SIGRUN[@]}" --log-every 5 --checkpoint-dir "$T/mterm" \
  --metrics "$T/mterm.jsonl" > "$T/mterm.log" 2>&1 &
mpid=$!
wait_step "$T/mterm.jsonl"
kill -TERM $mpid
wait_bounded $mpid 30
rc=$?
echo "   SIGTERM to mpirun (--mca odls_base_sigkill_timeout 4): mpirun exit $rc, ranks: $(tr '\n' ' ' < "$T/mterm.exits" 2> /dev/null)"
ranks_ok() { [ "$(cat "$T/mterm.exits" 2> /dev/null)" = "$(printf 'exit 0\nexit 0')" ]; }
check "SIGTERM to mpirun (odls_base_sigkill_timeout 4): a checkpoint, RESUMABLE 'signal 15', how to resume" \
  stopped_ok 0 "$T/mterm.log" "$T/mterm" "signal 15"
check "SIGTERM to mpirun (odls_base_sigkill_timeout 4): every rank exits 0" ranks_ok
check "after SIGTERM to mpirun the run resumes and finishes" resume_ok "$T/mterm" "$T/mterm2.log"

# SIGINT to the launch script's process group, as a Ctrl-C at its terminal: the script passes
# SIGUSR1 to mpirun (in a process group of its own). set -m: a background job that ignores
# SIGINT (as one without job control does) could not trap it. And the script starts with SIGINT
# at its default even when this shell was started with it ignored (a background job of a
# non-interactive shell, `make check &`), which a shell can neither trap nor reset: as at a
# terminal, where Ctrl-C reaches it.
launch_bg() { # launch_bg NAME: launch/single_node.sh (2 ranks) in its own process group, lpid,
  # checkpoints in $T/NAME, until its first step
  set -m
  NP=2 "$PY" -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])' \
    "$ROOT/launch/single_node.sh" "${SIGRUN[@]}" --checkpoint-dir "$T/$1" --metrics "$T/$1.jsonl" > "$T/$1.log" 2>&1 &
  lpid=$!
  set +m
  wait_step "$T/$1.jsonl"
}
launch_bg lint
kill -INT -- -$lpid
wait_bounded $lpid 60
rc=$?
check "SIGINT to launch/single_node.sh: exit 0, a mid-epoch checkpoint, RESUMABLE 'signal 10', how to resume" \
  stopped_ok $rc "$T/lint.log" "$T/lint" "signal 10" mid
check "after SIGINT to the launch script the run resumes and finishes" resume_ok "$T/lint" "$T/lint2.log"

# A second Ctrl-C ends the job at once. The ranks are held (SIGSTOP) so the first stop cannot
# complete before it. To the launch script: SIGUSR2 through mpirun, which ends every rank before
# its checkpoint (the held ranks get it, after the first stop's SIGUSR1, once continued).
launch_bg lint2
ranks=$(pgrep -f -- "^$BIN .*$T/lint2.jsonl")
kill -STOP $ranks
t0=$(date +%s)
kill -INT -- -$lpid
sleep 0.3
kill -INT -- -$lpid
sleep 0.5
kill -CONT $ranks
wait_bounded $lpid 20
rc=$?
check "a second SIGINT to the launch script aborts: exit $rc (not 0) in $(( $(date +%s) - t0 )) s, no checkpoint, no RESUMABLE" \
  bash -c "[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q 'SIGINT again: aborting' '$T/lint2.log' && [ ! -e '$T/lint2/RESUMABLE' ] && ! ls '$T/lint2'/ckpt_e0000_b* > /dev/null 2>&1"
# To a rank (a single process at a terminal): it exits by SIGINT at once; mpirun ends the rest.
"${MPIRUN[@]}" -np 2 "$BIN" "${SIGRUN[@]}" --checkpoint-dir "$T/int2" --metrics "$T/int2.jsonl" > "$T/int2.log" 2>&1 &
mpid=$!
wait_step "$T/int2.jsonl"
ranks=($(pgrep -f -- "^$BIN .*$T/int2.jsonl"))
kill -STOP "${ranks[1]}"
kill -INT "${ranks[0]}"
sleep 0.3
kill -INT "${ranks[0]}"
sleep 0.3
kill -CONT "${ranks[1]}"
wait_bounded $mpid 20
rc=$?
check "a second SIGINT to a rank ends it at once: job exit $rc, no checkpoint, no RESUMABLE" \
  bash -c "[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q 'interrupted again: exiting at once' '$T/int2.log' && [ ! -e '$T/int2/RESUMABLE' ] && ! ls '$T/int2'/ckpt_e0000_b* > /dev/null 2>&1"

# A stop during start-up (the handlers are installed before MPI_Init): made deterministic by a
# SIGTERM already pending when rank 1's process becomes vgg_dist (blocked and sent to itself
# before exec; a mask and a pending signal survive exec, and vgg_dist unblocks its stop signals
# as it installs their handlers, before MPI_Init). Every rank stops before the first step: exit
# 0, a checkpoint of the starting state (step 0) and RESUMABLE naming it, and a resume from it is
# bitwise the run that was never stopped.
printf '%s\n' '#!/usr/bin/env python3' 'import os, signal, sys' \
  'if sys.argv[1] in ("any", os.environ.get("OMPI_COMM_WORLD_RANK")):' \
  '    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})' \
  '    os.kill(os.getpid(), signal.SIGTERM)' 'os.execv(sys.argv[2], sys.argv[2:])' > "$T/pending.py"
timeout 120 "${MPIRUN[@]}" -np 2 "$PY" "$T/pending.py" 1 "$BIN" "${SMALL[@]}" --epochs 2 \
  --checkpoint-dir "$T/early" --metrics "$T/early.jsonl" > "$T/early.log" 2>&1
rc=$?
check "SIGTERM to rank 1 during start-up: exit 0, stopped before the first step (no step), RESUMABLE names the step-0 checkpoint" bash -c \
  "[ $rc -eq 0 ] && grep -q '^stopping before the first step (SIGTERM (signal 15) received during start-up): writing a checkpoint of the starting state' '$T/early.log' && ! grep -q '\"step\"' '$T/early.jsonl' && [ \"\$(cat '$T/early/RESUMABLE')\" = 'ckpt_e0000.bin signal 15' ] && grep -q 'stopped, resumable' '$T/early.log'"
"${MPIRUN[@]}" -np 2 "$BIN" "${SMALL[@]}" --epochs 2 --checkpoint-dir "$T/early" --resume auto > "$T/early2.log" 2>&1
check "after a stop during start-up the run resumes at step 0 and is bitwise the uninterrupted run" bash -c \
  "grep -q 'resumed from .*ckpt_e0000.bin: epoch 1, batch 0, step 0' '$T/early2.log' && [ ! -e '$T/early/RESUMABLE' ] && '$PY' '$TOOL' compare '$T/early/ckpt_e0002.bin' '$T/ws2/ckpt_e0002.bin'"

# Without --checkpoint-dir nothing is saved: the stop says there is nothing to resume.
"${MPIRUN[@]}" -np 2 "$BIN" "${SMALL[@]}" --epochs 1 --max-steps 3 > "$T/nodir.log" 2>&1
rc=$?
check "a stop without --checkpoint-dir: exit 0, 'nothing to resume'" \
  bash -c "[ $rc -eq 0 ] && grep -q 'nothing to resume' '$T/nodir.log'"

# ---- a rank that dies ends the whole job within seconds ----
"${MPIRUN[@]}" -np 3 "$BIN" "${SMALL[@]}" --batch 30 --epochs 50 --metrics "$T/die.jsonl" > "$T/die.log" 2>&1 &
mpid=$!
for _ in $(seq 1 200); do grep -q '"step"' "$T/die.jsonl" 2>/dev/null && break; sleep 0.1; done
victim=$(pgrep -f -- "^$BIN .*$T/die.jsonl" | tail -n 1)
t0=$(date +%s)
kill -9 "$victim"
for _ in $(seq 1 300); do kill -0 $mpid 2>/dev/null || break; sleep 0.1; done
if kill -0 $mpid 2>/dev/null; then
  bad "killing one of 3 ranks ends the job (still running after 30 s)"
  pkill -9 -f -- "$T/die.jsonl"
  wait $mpid
else
  wait $mpid
  rc=$?
  echo "   job ended $(( $(date +%s) - t0 )) s after the kill, exit $rc"
  check "killing one of 3 ranks ends the job with an error" bash -c "[ $rc -ne 0 ]"
fi

# ---- launch through a hostfile naming localhost ----
printf 'localhost slots=2\n' > "$T/hosts"
HOSTFILE="$T/hosts" NP=2 "$ROOT/launch/multi_node.sh" "${SMALL[@]}" --epochs 1 > "$T/host.log" 2>&1
check "hostfile launch of 2 ranks trains" bash -c "grep -q '2 ranks' '$T/host.log' && grep -q '^test (best model' '$T/host.log'"

# ---- bad input: one clear line, non-zero status, nothing overwritten ----
expect_fail() { # expect_fail NAME STATUS PATTERN ARGS...
  local name=$1 want=$2 pat=$3
  shift 3
  "$@" > "$T/out.log" 2> "$T/err.log"
  local rc=$?
  if [ $rc -eq "$want" ] && grep -q -- "$pat" "$T/err.log"; then ok "$name"
  else bad "$name (exit $rc, stderr: $(head -c 300 "$T/err.log"))"; fi
}
expect_fail "unknown option" 2 "unknown option '--bogus'" "$BIN" --bogus
expect_fail "value out of range" 2 "--lr" "$BIN" --lr -1
expect_fail "batch not divisible by the ranks" 2 "not divisible" "${MPIRUN[@]}" -np 3 "$BIN" "${SMALL[@]}" --batch 32
# One backend for all ranks: rank 0 forced to the CPU, rank 1 to CUDA (an MPMD line; --device
# cuda without a GPU would die alone, and with one the other rank would wait in MPI while it
# waits in NCCL). Agreed before either backend's first collective: exit 2 on every rank, one
# line from rank 0 naming this host as the one without a GPU; timeout: a hang fails.
expect_fail "a mixture of backends (MPMD --device cpu : --device cuda) refused, naming the host" \
  2 "the ranks chose different backends: the CPU on $(hostname) (1 of 2 ranks" timeout 120 \
  "${MPIRUN[@]}" -np 1 "$BIN" "${SMALL[@]}" : -np 1 "$BIN" "${SMALL[@]}" --device cuda
check "a mixture of backends: one error line, no MPI_ABORT banner" bash -c \
  "[ \$(grep -c 'error' '$T/err.log') -eq 1 ] && ! grep -q MPI_ABORT '$T/err.log'"
mkdir -p "$T/trunc" && cp "$T/data"/* "$T/trunc/" && truncate -s -5 "$T/trunc/data_batch_2.bin"
expect_fail "truncated dataset" 1 "data_batch_2.bin.*not a whole number" "$BIN" "${SMALL[@]}" --data "$T/trunc"
# Every file is checked whole whatever the limits: the limit here ends in data_batch_2.
mkdir -p "$T/trunc5" && cp "$T/data"/* "$T/trunc5/" && truncate -s -5 "$T/trunc5/data_batch_5.bin"
expect_fail "truncated file beyond --train-limit" 1 "data_batch_5.bin.*not a whole number" "$BIN" "${SMALL[@]}" --data "$T/trunc5" --train-limit 150
mkdir -p "$T/nodata"
expect_fail "missing dataset" 1 "cannot open.*data_batch_1.bin" "$BIN" "${SMALL[@]}" --data "$T/nodata"
expect_fail "validation split larger than the data" 2 "--val-size" "$BIN" "${SMALL[@]}" --val-size 600
expect_fail "--device cuda without a GPU" 2 "cuda" "$BIN" "${SMALL[@]}" --device cuda
cp "$T/ws1/ckpt_e0002.bin" "$T/corrupt.bin"
printf '\x55' | dd of="$T/corrupt.bin" bs=1 seek=5000 conv=notrunc 2> /dev/null
sum_before=$(md5sum < "$T/corrupt.bin")
expect_fail "corrupt checkpoint refused" 1 "CRC" "$BIN" "${SMALL[@]}" --epochs 3 --resume "$T/corrupt.bin"
check "refused checkpoint left untouched" bash -c "[ \"$sum_before\" = \"\$(md5sum < '$T/corrupt.bin')\" ]"
# At -np 2 rank 0 alone reads the file: its refusal is agreed, one line, no MPI_ABORT banner.
"${MPIRUN[@]}" -np 2 "$BIN" "${SMALL[@]}" --epochs 3 --resume "$T/corrupt.bin" > "$T/out.log" 2> "$T/err2.log"
rc=$?
check "corrupt checkpoint at -np 2: exit $rc (1), rank 0's one error line, no MPI_ABORT banner" bash -c \
  "[ $rc -eq 1 ] && [ \$(grep -c '^vgg_dist: error' '$T/err2.log') -eq 1 ] && grep -q 'CRC' '$T/err2.log' && ! grep -q MPI_ABORT '$T/err2.log'"
expect_fail "checkpoint of another model refused" 1 "vgg11" "$BIN" "${SMALL[@]}" --model vgg13 --resume "$T/ws1/ckpt_e0002.bin"
expect_fail "checkpoint of another input size refused" 1 "64x64" "$BIN" "${SMALL[@]}" --image-size 64 --resume "$T/ws1/ckpt_e0002.bin"
check "--help documents every option with its default" bash -c "'$BIN' --help | grep -q -- '--early-stop N.*default: 5' && '$BIN' --help | grep -q -- '--model NAME.*default: vgg16' && '$BIN' --help | grep -q -- '--warmup-epochs E.*default: auto' && '$BIN' --help | grep -q -- '--batchnorm 0|1.*default: 1'"
# --print-model needs no mpirun: exit 0, valid JSON on stdout (16 convs for vgg19).
"$BIN" --print-model --model vgg19 --width 0.5 > "$T/model.json" 2> "$T/model.err"
rc=$?
check "--print-model without mpirun: exit 0, JSON of vgg19 at width 0.5 with 16 convs" "$PY" -c "
import json, sys
m = json.load(open(sys.argv[1]))
convs = [l for l in m['layers'] if l['kind'] == 'conv']
sys.exit(0 if ($rc == 0 and m['name'] == 'vgg19' and m['width'] == 0.5 and len(convs) == 16
               and convs[0]['out'][2] == 32) else 1)" "$T/model.json"

# ---- learning: the cpu-demo preset on real CIFAR-10 (or generated data without it) ----
REAL="$ROOT/../shared/data/cifar-10-subset-bin"
if [ -r "$REAL/data_batch_1.bin" ]; then
  data=$REAL; want=0.25; what="real CIFAR-10 subset"
else
  "$GEN" "$T/learn" 400 500 9; data=$T/learn; want=0.6; what="generated data (real subset absent)"
fi
start=$(date +%s)
"${MPIRUN[@]}" -np 2 "$BIN" --preset cpu-demo --data "$data" --metrics "$T/learn.jsonl" > "$T/learn.log" 2>&1
acc=$("$PY" -c "import json,sys; print([json.loads(l) for l in open(sys.argv[1])][-1]['test_acc'])" "$T/learn.jsonl" 2>/dev/null || echo 0)
echo "   cpu-demo on $what, 2 ranks: test accuracy $acc in $(( $(date +%s) - start )) s"
check "cpu-demo learns ($what): test accuracy $acc >= $want" "$PY" -c "import sys; sys.exit(0 if float('$acc') >= $want else 1)"

summary
