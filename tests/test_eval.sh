#!/usr/bin/env bash
# test_eval.sh - what a user takes away from a checkpoint: --eval (the test loss and accuracy,
# per class, the confusion matrix, the "eval" metrics event) at world sizes 1 and 2, with and
# without batch norm; --dump-logits (the .npy file: its layout, its argmax accuracy, the same at
# every world size, --test-limit); the refusals (a corrupt checkpoint, another model's, options
# that do not go together); and --init-from (a new run at step 0 from a checkpoint's model).
# A tiny model on generated data: about a minute on two cores.
# usage: tests/test_eval.sh ./vgg_dist     (BUILD names the build dir holding gen_cifar)
# Prints "N passed, N failed" last.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tests/check.sh"
suite_tools "${1:-}"
NPY=/usr/bin/python3 # with numpy: it reads the .npy files as NumPy itself would
suite_mpi
T=$(mktemp -d /tmp/vgg_eval_XXXXXX)
trap 'rm -rf "$T"' EXIT

"$GEN" "$T/data" 100 200 3 || { echo "cannot generate data"; echo "0 passed, 1 failed"; exit 1; }
# 400 train / 100 validation images at batch 32, 200 test images in batches of 30 (a short last
# one, and shares that are not whole batches at -np 2).
SMALL=(--data "$T/data" --model vgg11 --width 0.125 --image-size 32 --batch 32 --val-size 100
       --eval-batch 30 --log-every 50 --device cpu --seed 5 --warmup-epochs 0)

# The printed "loss X acc Y" of a log's line starting with $2.
loss_acc() { grep -m1 "^$2" "$1" | grep -oE 'loss [0-9.]+ acc [0-9.]+'; }

# The eval event against the printed report and the test file's labels: the keys; n; the
# confusion matrix's rows summing to the class counts and its diagonal to the accuracy; the
# per-class accuracies (printed too) averaging, weighted by class counts, to the accuracy.
eval_consistent() { # eval_consistent METRICS LOG
  "$PY" - "$1" "$2" "$T/data" <<'PY'
import json, re, sys
ev = [e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "eval"]
log = open(sys.argv[2]).read()
raw = open(sys.argv[3] + "/test_batch.bin", "rb").read()
names = open(sys.argv[3] + "/batches.meta.txt").read().split()
labels = raw[::3073]
counts = [labels.count(k) for k in range(10)]
assert len(ev) == 1, "one eval event"
e = ev[0]
assert set(e) == {"event", "checkpoint", "test_loss", "test_acc", "per_class_acc", "confusion", "n"}, set(e)
assert e["n"] == len(labels) == 200
C = e["confusion"]
assert [sum(r) for r in C] == counts, ([sum(r) for r in C], counts)
acc = e["test_acc"]
assert abs(sum(C[k][k] for k in range(10)) / e["n"] - acc) < 1e-6
pc = e["per_class_acc"]
assert list(pc) == names, (list(pc), names)
assert abs(sum(pc[n] * c for n, c in zip(names, counts)) / sum(counts) - acc) < 1e-6
assert "eval: loss %.4f acc %.4f on 200 images" % (e["test_loss"], acc) in log
for k, n in enumerate(names):  # the printed table: "  k name  acc  images"
    m = re.search(r"^  %d %s +([0-9.]+) +(\d+)$" % (k, re.escape(n)), log, re.M)
    assert m and abs(float(m.group(1)) - pc[n]) < 1e-4 and int(m.group(2)) == counts[k], n
    row = re.search(r"^  %d %s((?: +\d+){10})$" % (k, re.escape(n)), log, re.M)
    assert row and [int(v) for v in row.group(1).split()] == C[k], n
print("   acc %.4f, classes %s" % (acc, counts))
PY
}

# The .npy file as NumPy reads it: float32, (N, 10), C order, the data 64-byte aligned, its
# argmax accuracy on the first N test labels equal to ACC.
npy_ok() { # npy_ok FILE N ACC
  "$NPY" - "$1" "$2" "$3" "$T/data/test_batch.bin" <<'PY'
import sys
import numpy as np
path, n, acc = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
x = np.load(path)
hlen = int.from_bytes(open(path, "rb").read(10)[8:10], "little")
assert open(path, "rb").read(8) == b"\x93NUMPY\x01\x00" and (10 + hlen) % 64 == 0
assert x.dtype == np.float32 and x.shape == (n, 10) and x.flags.c_contiguous, (x.dtype, x.shape)
labels = np.frombuffer(open(sys.argv[4], "rb").read(), np.uint8)[::3073][:n]
got = float((x.argmax(1) == labels).mean())
print("   argmax accuracy %.6f, printed %.6f" % (got, acc))
sys.exit(0 if abs(got - acc) < 1e-9 and np.isfinite(x).all() else 1)
PY
}

same_logits() { # same_logits A B [ROWS]: equal to 1e-6 (relative to the largest), first ROWS of B
  "$NPY" - "$@" <<'PY'
import sys
import numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
if len(sys.argv) > 3: b = b[:int(sys.argv[3])]
d = float(np.abs(a - b).max() / np.abs(b).max()) if a.shape == b.shape else float("inf")
print("   max difference %.3g of the largest logit" % d)
sys.exit(0 if d <= 1e-6 else 1)
PY
}

# ---- --eval and --dump-logits, without and with batch norm ----
for bn in 0 1; do
  RUN=("${SMALL[@]}" --batchnorm $bn)
  "$BIN" "${RUN[@]}" --epochs 2 --checkpoint-dir "$T/ck$bn" > "$T/train$bn.log" 2>&1 ||
    bad "batchnorm $bn: the training run (see log)"
  want=$(loss_acc "$T/train$bn.log" "test (best model")
  for np in 1 2; do
    "${MPIRUN[@]}" -np $np "$BIN" "${RUN[@]}" --eval "$T/ck$bn/best.bin" --metrics "$T/ev$bn$np.jsonl" \
      --dump-logits "$T/l$bn$np.npy" --checkpoint-dir "$T/none" > "$T/ev$bn$np.log" 2>&1 ||
      bad "batchnorm $bn, np $np: --eval (see log)"
    got=$(loss_acc "$T/ev$bn$np.log" "eval: loss")
    check "batchnorm $bn, np $np: --eval prints the training run's test loss and accuracy ($want)" \
      test -n "$want" -a "$got" = "$want"
    check "batchnorm $bn, np $np: eval event, per-class table and confusion matrix agree with the accuracy and the labels" \
      eval_consistent "$T/ev$bn$np.jsonl" "$T/ev$bn$np.log"
    check "batchnorm $bn, np $np: --dump-logits is a (200, 10) float32 .npy whose argmax accuracy is the printed one" \
      npy_ok "$T/l$bn$np.npy" 200 "$("$PY" -c 'import json,sys; print([e for e in map(json.loads, open(sys.argv[1]))][-1]["test_acc"])' "$T/ev$bn$np.jsonl")"
  done
  check "batchnorm $bn: the logits at np 2 equal those at np 1 (gathered in the test file's order)" \
    same_logits "$T/l${bn}2.npy" "$T/l${bn}1.npy"
done
check "--eval writes no checkpoint (--checkpoint-dir untouched) and leaves no temp file" \
  bash -c "[ ! -e '$T/none' ] && ! ls '$T' | grep -q '\.tmp\.'"
"${MPIRUN[@]}" -np 2 "$BIN" "${SMALL[@]}" --batchnorm 1 --eval "$T/ck1/best.bin" --test-limit 50 \
  --eval-batch 7 --dump-logits "$T/lim.npy" > "$T/lim.log" 2>&1
limit_ok() { grep -q 'eval: loss .* on 50 images' "$T/lim.log" && same_logits "$T/lim.npy" "$T/l11.npy" 50; }
check "--test-limit 50 --eval-batch 7 (np 2): 50 images, the first 50 rows of the whole set's logits" limit_ok

# ---- refusals: one line from rank 0, exit 1 (2 for options that do not go together) ----
refused() { # refused NAME CODE PATTERN NP ARGS...: exit CODE, one error line matching PATTERN, no report
  local name=$1 code=$2 pat=$3 np=$4
  shift 4
  "${MPIRUN[@]}" -np "$np" "$BIN" "$@" > "$T/out.log" 2> "$T/err.log"
  local rc=$?
  if [ $rc -eq "$code" ] && [ "$(grep -c '^vgg_dist: error' "$T/err.log")" -eq 1 ] &&
     grep -q -- "$pat" "$T/err.log" && ! grep -q '^eval: loss\|img/s' "$T/out.log"; then ok "$name"
  else bad "$name (exit $rc, stderr: $(head -c 300 "$T/err.log"))"; fi
}
cp "$T/ck1/best.bin" "$T/corrupt.bin"
printf '\125' | dd of="$T/corrupt.bin" bs=1 seek=5000 conv=notrunc 2> /dev/null
BN1=("${SMALL[@]}" --batchnorm 1)
refused "--eval of a corrupt checkpoint refused (np 2)" 1 "^vgg_dist: error: --eval: .*CRC mismatch" 2 \
  "${BN1[@]}" --eval "$T/corrupt.bin"
refused "--eval of another model's checkpoint refused (np 2)" 1 "--eval: .*(model differs)" 2 \
  "${BN1[@]}" --model vgg13 --eval "$T/ck1/best.bin"
refused "--eval with --batchnorm 0 of a batch-norm checkpoint refused" 1 "--eval: .*count differs" 1 \
  "${SMALL[@]}" --batchnorm 0 --eval "$T/ck1/best.bin"
refused "--dump-logits without --eval refused" 2 "--dump-logits needs --eval" 1 "${BN1[@]}" --dump-logits "$T/x.npy"
refused "--eval with --resume refused" 2 "--eval trains nothing" 1 "${BN1[@]}" --eval "$T/ck1/best.bin" --resume "$T/ck1/best.bin"

# ---- --init-from: a new run (step 0, fresh Adam state, its own seed) from a checkpoint's model ----
INIT=("${BN1[@]}" --seed 9 --epochs 1 --max-steps 1)
"$BIN" "${INIT[@]}" --init-from "$T/ck1/ckpt_e0002.bin" --checkpoint-dir "$T/init" > "$T/init.log" 2>&1 ||
  bad "--init-from run (see log)"
"$BIN" "${INIT[@]}" --checkpoint-dir "$T/fresh" > /dev/null 2>&1 || bad "fresh run (see log)"
ONE="$T/init/ckpt_e0000_b000001.bin"
check "--init-from: the run starts at step 0 (its one step makes step 1 of epoch 1), its own normalisation" \
  bash -c "'$PY' '$TOOL' state '$ONE' | tr '\n' ' ' | grep -q '^step 1 epoch 0 batch 1 ' && grep -q '^normalisation (train split.s own)' '$T/init.log' && grep -q '^init: the model of ' '$T/init.log'"
# One Adam step moves each parameter by about lr (1e-3) at most: measured 9.9e-4 of the largest
# parameter; the seed's own initialisation is 0.33 away.
check "--init-from: PARAMS are the checkpoint's moved by one Adam step" bash -c \
  "'$PY' '$TOOL' compare '$ONE' '$T/ck1/ckpt_e0002.bin' 2e-3 ADAM_M=1e9 ADAM_V=1e9 BUFFERS=1e9 && ! '$PY' '$TOOL' compare '$ONE' '$T/ck1/ckpt_e0002.bin' 0 ADAM_M=1e9 ADAM_V=1e9 BUFFERS=1e9 > /dev/null"
check "without --init-from the same options start elsewhere (the check above can fail)" bash -c \
  "! '$PY' '$TOOL' compare '$T/fresh/ckpt_e0000_b000001.bin' '$T/ck1/ckpt_e0002.bin' 2e-3 ADAM_M=1e9 ADAM_V=1e9 BUFFERS=1e9 > /dev/null"
refused "--init-from with --resume refused" 2 "--init-from starts a new run, --resume continues one" 1 \
  "${INIT[@]}" --init-from "$T/ck1/best.bin" --resume "$T/ck1/best.bin"
refused "--init-from of another model's checkpoint refused (np 2)" 1 "--init-from: .*(width differs)" 2 \
  "${INIT[@]}" --width 0.25 --init-from "$T/ck1/best.bin"
refused "--init-from of a corrupt checkpoint refused" 1 "--init-from: .*CRC mismatch" 1 \
  "${INIT[@]}" --init-from "$T/corrupt.bin"

summary
