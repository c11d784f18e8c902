#!/usr/bin/env bash
# test_export.sh - scripts/export.py and scripts/import_torchvision.py against an independent
# reference: a tiny VGG16 (width 0.125, 64x64 so that the first FC's (h, w, c) -> (c, h, w)
# permutation is not trivial: at 32x32 its input is 1x1) trained one epoch with and without
# batch norm, exported to TorchScript, ONNX and a torchvision-layout state_dict; on the test
# file's first 64 images, preprocessed in Python as vgg_dist does, each format's logits (and
# vgg_dist --eval --dump-logits' when the binary has it) match tests/export_check.py's NHWC
# reference on the checkpoint's flat buffers to 1e-4 relative. The state_dict check also shows
# that a wrong permutation on these inputs fails that bound. Import: a random torchvision vgg16
# imports with features(x) unchanged and its ImageNet classifier layers re-initialised; an
# exported state_dict imports back bitwise and vgg_dist resumes from it; hostile inputs fail.
# Needs /usr/bin/python3 with torch, torchvision and onnx, and the venv with onnxruntime
# (scripts/setup.sh test makes both; VGG_DIST_VENV overrides the venv's place, default .venv).
# usage: tests/test_export.sh ./vgg_dist     Prints "N passed, N failed" last.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tests/check.sh"
suite_tools "${1:-}"
export OMP_NUM_THREADS=1 VGG_DIST="$BIN"
TPY=/usr/bin/python3 # Debian's, with torch (the python3 first on PATH may not be)
CHECK="$ROOT/tests/export_check.py"
EXPORT="$ROOT/scripts/export.py"
IMPORT="$ROOT/scripts/import_torchvision.py"
T=$(mktemp -d /tmp/vgg_export_XXXXXX)
trap 'rm -rf "$T"' EXIT

require_python "$TPY" 'import torch, torchvision, onnx'
ORT_OK=1
"$VENV/bin/python" -c 'import onnxruntime, onnx' 2> /dev/null || ORT_OK=0

DATA="$ROOT/../shared/data/cifar-10-subset-bin" # real images when this checkout has them
if [ ! -f "$DATA/test_batch.bin" ]; then
  DATA="$T/data"
  "$GEN" "$DATA" 100 200 3 > /dev/null || { echo "cannot generate data"; echo "0 passed, 1 failed"; exit 1; }
fi
echo "data: $DATA"
MODEL=(--model vgg16 --width 0.125 --image-size 64)
RUN=(--data "$DATA" "${MODEL[@]}" --batch 32 --val-size 100 --train-limit 400 --test-limit 64
     --device cpu --threads 1 --seed 5 --log-every 100)
HAS_DUMP=0
"$BIN" --help 2>&1 | grep -q -- '--dump-logits' && HAS_DUMP=1

for bn in 0 1; do
  tag="bn$bn"
  CK="$T/$tag/ckpt_e0001.bin"
  nice "$BIN" "${RUN[@]}" --batchnorm $bn --epochs 1 --checkpoint-dir "$T/$tag" > "$T/$tag.log" 2>&1
  check "$tag: a tiny vgg16 trains one epoch" test -f "$CK" || continue
  check "$tag: reference logits of the first 64 test images" \
    "$TPY" "$CHECK" ref "$CK" "$DATA/test_batch.bin" 64 "$T/$tag.ref"
  for f in torchscript onnx state_dict; do
    check "$tag: export --format $f" "$TPY" "$EXPORT" "$CK" "$T/$tag.$f" --format $f
  done
  # The 1e-4 bounds: float32 summation order only (measured about 5e-7); a layout error is O(1).
  check "$tag: TorchScript (torch.jit.load alone) logits match the reference" \
    "$TPY" "$CHECK" torchscript "$T/$tag.torchscript" "$T/$tag.ref"
  if [ "$ORT_OK" = 1 ]; then
    check "$tag: ONNX Runtime logits match the reference" \
      "$VENV/bin/python" "$CHECK" onnx "$T/$tag.onnx" "$T/$tag.ref"
  else
    bad "$tag: ONNX Runtime: no onnxruntime in $VENV (scripts/setup.sh test makes it)"
  fi
  check "$tag: state_dict has torchvision's keys, its logits match, a wrong permutation fails" \
    "$TPY" "$CHECK" state_dict "$T/$tag.state_dict" "$CK" "$T/$tag.ref"
  if [ "$HAS_DUMP" = 1 ]; then
    if "$BIN" --eval "$CK" --dump-logits "$T/$tag.logits.npy" --data "$DATA" "${MODEL[@]}" \
         --batchnorm $bn --test-limit 64 --device cpu --threads 1 > "$T/$tag.eval.log" 2>&1; then
      check "$tag: vgg_dist --eval --dump-logits matches the reference" \
        "$TPY" "$CHECK" logits "$T/$tag.logits.npy" "$T/$tag.ref"
      # And the exports against vgg_dist's own logits directly (the same images).
      mkdir -p "$T/$tag.vref" && cp "$T/$tag.ref/x.npy" "$T/$tag.ref/norm.json" "$T/$tag.vref/" &&
        cp "$T/$tag.logits.npy" "$T/$tag.vref/ref.npy"
      check "$tag: TorchScript logits match vgg_dist's (--dump-logits)" \
        "$TPY" "$CHECK" torchscript "$T/$tag.torchscript" "$T/$tag.vref"
      [ "$ORT_OK" = 1 ] && check "$tag: ONNX Runtime logits match vgg_dist's (--dump-logits)" \
        "$VENV/bin/python" "$CHECK" onnx "$T/$tag.onnx" "$T/$tag.vref"
    else
      bad "$tag: vgg_dist --eval --dump-logits: $(tail -n 1 "$T/$tag.eval.log")"
    fi
  else
    echo "skip $tag: vgg_dist has no --dump-logits yet (the comparison with its logits)"
  fi
  # The exported state_dict imports back to the same flat buffers, and vgg_dist resumes it.
  bnm=vgg16
  [ $bn = 1 ] && bnm=vgg16_bn
  check "$tag: import of the exported state_dict" "$TPY" "$IMPORT" "$T/$tag.state_dict" \
    "$T/$tag.imp.bin" --model $bnm --width 0.125 --image-size 64 --batch 32 --val-size 100 --train-limit 400
  check "$tag: ... gives PARAMS and BUFFERS bitwise equal to the checkpoint's" bash -c \
    "'$TPY' '$TOOL' compare '$T/$tag.imp.bin' '$CK' | grep -E '^(PARAMS|BUFFERS)' | grep -vq -E 'DIFFERENT'"
  if nice "$BIN" "${RUN[@]}" --batchnorm $bn --epochs 1 --resume "$T/$tag.imp.bin" \
       --checkpoint-dir "$T/$tag.res" --max-steps 1 > "$T/$tag.res.log" 2>&1 &&
     grep -q "^resumed from" "$T/$tag.res.log"; then
    ok "$tag: vgg_dist --resume accepts the imported checkpoint (one step)"
  else
    bad "$tag: vgg_dist --resume of the imported checkpoint: $(grep -m1 -i error "$T/$tag.res.log")"
  fi
done

# ---- import of torchvision's own vgg16 (width 1, random weights) at 32x32 ----
"$TPY" -c "
import torch, torchvision, sys
torch.manual_seed(1)
torch.save(torchvision.models.vgg16(weights=None).state_dict(), sys.argv[1])" "$T/tv16.pt"
if check "import of torchvision.models.vgg16's state_dict" bash -c \
     "'$TPY' '$IMPORT' '$T/tv16.pt' '$T/tv16.bin' --model vgg16 --image-size 32 > '$T/tv16.log'"; then
  cat "$T/tv16.log"
  check "imported features(x) equal torchvision's; classifier.0 and .6 re-initialised, said so" \
    "$TPY" "$CHECK" import "$T/tv16.pt" "$T/tv16.bin" "$T/tv16.log"
fi
rm -f "$T/tv16.bin" # 400 MB

# ---- hostile and wrong inputs: one line, exit 1, nothing run ----
"$TPY" -c "
import os, pickle, sys
class Evil:
    def __reduce__(self): return (os.system, ('touch ' + sys.argv[2],))
pickle.dump({'features.0.weight': Evil()}, open(sys.argv[1], 'wb'))" "$T/evil.pt" "$T/pwned"
one_line_fail() { # one_line_fail CMD...: exits non-zero with exactly one line on stderr
  "$@" > /dev/null 2> "$T/err"
  local rc=$?
  sed 's/^/   /' "$T/err"
  [ $rc -ne 0 ] && [ "$(wc -l < "$T/err")" -eq 1 ]
}
check "import refuses a pickle that runs code (weights_only), and it did not run" \
  bash -c "$(declare -f one_line_fail); T='$T'; one_line_fail '$TPY' '$IMPORT' '$T/evil.pt' '$T/x.bin' --model vgg16 && [ ! -e '$T/pwned' ]"
check "import refuses a state_dict of another model (vgg16_bn keys for vgg16)" \
  one_line_fail "$TPY" "$IMPORT" "$T/bn1.state_dict" "$T/x.bin" --model vgg16 --width 0.125 --image-size 64
head -c 5000 "$T/bn1/ckpt_e0001.bin" > "$T/short.bin"
check "export refuses a truncated checkpoint" \
  one_line_fail "$TPY" "$EXPORT" "$T/short.bin" "$T/x.pt" --format state_dict
cp "$T/bn1/ckpt_e0001.bin" "$T/flip.bin"
printf '\x55' | dd of="$T/flip.bin" bs=1 seek=4000 conv=notrunc status=none
check "export refuses a checkpoint with a damaged section (CRC)" \
  one_line_fail "$TPY" "$EXPORT" "$T/flip.bin" "$T/x.pt" --format torchscript
summary
