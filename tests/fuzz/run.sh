#!/usr/bin/env bash
# run.sh - the libFuzzer targets of tests/fuzz/ (built by `make fuzz-bins` into $BUILD/fuzz):
# first every input that ever crashed one (tests/fuzz/regress/TARGET/, run once each: they must
# pass now), then each target for SECONDS from its corpus ($BUILD/fuzz/corpus/TARGET, kept
# between runs, seeded from tests/fuzz/seeds/TARGET and from the test data generator). A new
# crash is a failure, and its input is copied into tests/fuzz/regress/TARGET to be kept.
# usage: tests/fuzz/run.sh [SECONDS=60]    (BUILD: the build directory, default build)
# Prints "N passed, N failed" last; a skip line and no count without clang.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-build}
SECONDS_EACH=${1:-60}
cd "$ROOT"
pass=0 fail=0
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; fail=$((fail + 1)); }
if ! command -v "${FUZZ_CC:-clang}" > /dev/null 2>&1; then
  echo "skip fuzz: no clang (apt-get install clang libclang-rt-dev)"
  echo "0 passed, 0 failed"
  exit 0
fi
make -s BUILD="$BUILD" fuzz-bins "$BUILD/gen_cifar" > /dev/null || { bad "building the fuzz targets"; echo "$pass passed, $fail failed"; exit 1; }
T=$(mktemp -d /tmp/vgg_fuzz_XXXXXX)
trap 'rm -rf "$T"' EXIT
export TMPDIR=$T # where the targets write their inputs (fuzz.h): ours alone, removed with T

# Seeds beside the committed ones: a 3-record CIFAR-10 batch and its batches.meta.txt; the
# checkpoints (mid-epoch, epoch end, best.bin) of the tiny run fuzz_checkpoint.c describes.
"$BUILD/gen_cifar" "$T/gen" 3 2 > /dev/null
mkdir -p "$T/seeds/cifar" "$T/seeds/checkpoint"
cp "$T/gen/data_batch_1.bin" "$T/gen/batches.meta.txt" "$T/seeds/cifar/"
TINY=(--data "$T/gen" --model vgg11 --width 0.01 --image-size 32 --batch 4 --val-size 5
      --eval-batch 5 --device cpu --threads 1 --batchnorm 1 --checkpoint-dir "$T/ck")
if [ -x ./vgg_dist ] && ./vgg_dist "${TINY[@]}" --epochs 2 --max-steps 4 > /dev/null 2>&1; then
  cp "$T/ck"/*.bin "$T/seeds/checkpoint/"
  # Their STATE payloads too (short inputs: fuzz_checkpoint puts them into this template).
  export VGG_FUZZ_TEMPLATE=$T/ck/ckpt_e0001_b000001.bin
  for f in "$T/ck"/*.bin; do
    /usr/bin/python3 - "$f" "$T/seeds/checkpoint/state_$(basename "$f")" <<'PY'
import struct, sys
raw = open(sys.argv[1], "rb").read()
version = struct.unpack_from("<I", raw, 8)[0]
off = 16 + (36 if version == 1 else 44)
while off + 24 <= len(raw):
    sid, _, size, _, _ = struct.unpack_from("<IIQII", raw, off)
    if sid == 2:
        open(sys.argv[2], "wb").write(raw[off + 24:off + 24 + size])
        break
    off += 24 + size
PY
  done
else
  echo "note: no ./vgg_dist to make checkpoint seeds: fuzz_checkpoint starts from its corpus"
fi

OPTS=(-detect_leaks=0 -close_fd_mask=3 -timeout=10 -rss_limit_mb=2048)
for src in tests/fuzz/fuzz_*.c; do
  t=${src#tests/fuzz/fuzz_}
  t=${t%.c}
  bin=$BUILD/fuzz/fuzz_$t
  reg=tests/fuzz/regress/$t
  if [ -d "$reg" ] && [ -n "$(ls -A "$reg")" ]; then
    if "$bin" "${OPTS[@]}" "$reg"/* > "$T/$t.reg.log" 2>&1; then
      ok "$t: the $(ls "$reg" | wc -l) kept crash inputs pass"
    else
      bad "$t: a kept crash input fails again (see below)"
      tail -30 "$T/$t.reg.log"
    fi
  fi
  corpus=$BUILD/fuzz/corpus/$t
  mkdir -p "$corpus"
  for s in tests/fuzz/seeds/$t "$T/seeds/$t"; do [ -d "$s" ] && cp -n "$s"/* "$corpus/" 2> /dev/null; done
  max_len=16384
  [ "$t" = checkpoint ] && max_len=65536 # the seeds are 41 KB
  "$bin" "${OPTS[@]}" -max_total_time="$SECONDS_EACH" -max_len=$max_len \
    -artifact_prefix="$T/$t-" "$corpus" > "$T/$t.log" 2>&1
  rc=$?
  runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$T/$t.log")
  if [ $rc -eq 0 ] && [ -n "$runs" ]; then
    ok "$t: $runs inputs in ${SECONDS_EACH} s, no crash (corpus: $(ls "$corpus" | wc -l) inputs)"
  else
    mkdir -p "$reg"
    for a in "$T/$t"-*; do [ -e "$a" ] && cp "$a" "$reg/$(basename "$a" | sed "s/^$t-//")"; done
    bad "$t: crashed (exit $rc); the input is kept in $reg (see below)"
    grep -m1 -A25 -E 'ERROR|runtime error|deadly signal|timeout' "$T/$t.log"
  fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
