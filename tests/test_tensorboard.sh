#!/usr/bin/env bash
# test_tensorboard.sh - scripts/to_tensorboard.py: a tiny training run's metrics file converted to
# TensorBoard event files, read back by tensorboard's own EventAccumulator, must hold every scalar
# of the file at the same tags, steps and values (to float32), and nothing else; the comparison
# itself is shown to fail on a wrong value and on a wrong tag; bad input ends with one line.
# usage: tests/test_tensorboard.sh ./vgg_dist     (BUILD names the build dir holding gen_cifar;
# TB_PY the Python with tensorboard and torch, default .venv/bin/python from scripts/setup.sh test)
# Prints "N passed, N failed" last.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tests/check.sh"
suite_tools "${1:-}"
export OMP_NUM_THREADS=1
TB_PY=${TB_PY:-$VENV/bin/python}
CONV="$ROOT/scripts/to_tensorboard.py"
T=$(mktemp -d /tmp/vgg_tb_XXXXXX)
trap 'rm -rf "$T"' EXIT

require_python "$TB_PY" 'import tensorboard, torch.utils.tensorboard'
"$GEN" "$T/data" 100 200 3 || { echo "cannot generate data"; echo "0 passed, 1 failed"; exit 1; }
"$BIN" --data "$T/data" --model vgg11 --width 0.125 --image-size 32 --batch 32 --val-size 100 \
  --device cpu --epochs 2 --log-every 2 --seed 3 --metrics "$T/m.jsonl" > "$T/run.log" 2>&1
check "a tiny run (2 epochs) writes step, epoch and test events" bash -c \
  "grep -q '\"event\": \"step\"' '$T/m.jsonl' && [ \$(grep -c '\"event\": \"epoch\"' '$T/m.jsonl') -eq 2 ] && grep -q '\"event\": \"test\"' '$T/m.jsonl'"
check "to_tensorboard.py converts it" "$TB_PY" "$CONV" "$T/m.jsonl" "$T/tb"

# The comparison: the expected tags and axes are written out here, not taken from the converter.
# Every scalar of the metrics file must be in the event files at its tag and step with its value
# as float32, and the event files must hold no other tag or step.
cat > "$T/compare.py" << 'PY'
import glob, json, struct, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
metrics, logdir = sys.argv[1], sys.argv[2]
f32 = lambda v: struct.unpack("<f", struct.pack("<f", v))[0]
want = {}
def put(tag, x, v): want.setdefault(tag, {})[x] = f32(float(v))
for e in map(json.loads, open(metrics)):
    if e["event"] == "step":
        for k in ("train_loss", "train_acc", "images_per_s", "lr"):
            put("step/" + k, e["step"], e[k])
    elif e["event"] == "epoch":
        for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "time_s"):
            put("epoch/" + k, e["epoch"], e[k])
        put("epoch/best", e["epoch"], 1.0 if e["best"] else 0.0)
    elif e["event"] == "test":
        for k, tag in (("test_loss", "loss"), ("test_acc", "acc"), ("images", "images")):
            put("test/" + tag, e["best_epoch"], e[k])
files = glob.glob(logdir + "/events.out.tfevents.*")
acc = EventAccumulator(logdir, size_guidance={"scalars": 0})  # 0: keep every point
acc.Reload()
got = {t: {s.step: s.value for s in acc.Scalars(t)} for t in acc.Tags()["scalars"]}
bad = sorted(set(want) ^ set(got))
for t in sorted(set(want) & set(got)):
    if want[t] != got[t]:
        diff = [(x, want[t].get(x), got[t].get(x)) for x in sorted(set(want[t]) | set(got[t]))
                if want[t].get(x) != got[t].get(x)]
        bad.append("%s: (step, metrics, event file) %s" % (t, diff[:3]))
print("   %d event file(s), %d tags, %d scalars; mismatched: %s"
      % (len(files), len(got), sum(map(len, got.values())), bad or "none"))
sys.exit(0 if len(files) == 1 and want and not bad else 1)
PY
check "every scalar read back (EventAccumulator) has the metrics file's tag, step and float32 value" \
  "$TB_PY" "$T/compare.py" "$T/m.jsonl" "$T/tb"


# The comparison can fail: one value off by 1e-5 relative (above float32's 6e-8), and one tag
# renamed in the converted file (a converter that named val_loss otherwise would look like this).
"$TB_PY" - "$T/m.jsonl" "$T/off.jsonl" << 'PY'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
last = [e for e in ev if e["event"] == "epoch"][-1]
last["val_loss"] *= 1 + 1e-5
open(sys.argv[2], "w").writelines(json.dumps(e) + "\n" for e in ev)
PY
check "the comparison fails on a value off by 1e-5 relative" \
  bash -c "! '$TB_PY' '$T/compare.py' '$T/off.jsonl' '$T/tb'"
sed 's/"val_loss"/"val_los"/' "$T/m.jsonl" > "$T/tag.jsonl"
"$TB_PY" "$CONV" "$T/tag.jsonl" "$T/tbtag" > /dev/null
check "the comparison fails on a wrong tag (epoch/val_los for epoch/val_loss)" \
  bash -c "[ -n \"\$(ls '$T/tbtag')\" ] && ! '$TB_PY' '$T/compare.py' '$T/m.jsonl' '$T/tbtag'"

# A resumed run appends to the file and may log steps twice: the later record is the one kept.
{ cat "$T/m.jsonl"; grep '"event": "step"' "$T/m.jsonl" | tail -n 1 | sed 's/"train_loss": [0-9.]*/"train_loss": 9.5/'; } > "$T/dup.jsonl"
"$TB_PY" "$CONV" "$T/dup.jsonl" "$T/tbdup" > /dev/null
check "a step logged twice (a resumed run): one point, the later value" "$TB_PY" - "$T/tbdup" "$T/m.jsonl" << 'PY'
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
pts = acc.Scalars("step/train_loss")
n = sum(1 for l in open(sys.argv[2]) if '"event": "step"' in l)
sys.exit(0 if len(pts) == n and pts[-1].value == 9.5 else 1)
PY

# ---- bad input: one line on stderr, exit 1 ----
expect_fail() { # expect_fail NAME PATTERN ARGS...
  local name=$1 pat=$2
  shift 2
  "$TB_PY" "$CONV" "$@" > "$T/out.log" 2> "$T/err.log"
  local rc=$?
  if [ $rc -eq 1 ] && [ "$(wc -l < "$T/err.log")" -eq 1 ] && grep -q -- "$pat" "$T/err.log"; then ok "$name"
  else bad "$name (exit $rc, stderr: $(head -c 300 "$T/err.log"))"; fi
}
expect_fail "missing metrics file" "cannot read" "$T/none.jsonl" "$T/tbx"
printf '{"event": "step", "step": 1, "train_loss": nan}\n' > "$T/nan.jsonl"
expect_fail "a line that is not JSON names file:line" "nan.jsonl:1: not JSON" "$T/nan.jsonl" "$T/tbx"
printf '{"event": "step", "train_loss": 1.0}\n' > "$T/nostep.jsonl"
expect_fail "a step record without its step" 'needs a non-negative integer "step"' "$T/nostep.jsonl" "$T/tbx"
expect_fail "a LOGDIR that already holds event files is refused" "already holds event files" "$T/m.jsonl" "$T/tb"
expect_fail "wrong argument count" "usage" "$T/m.jsonl"

summary
