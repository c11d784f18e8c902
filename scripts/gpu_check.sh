#!/usr/bin/env bash
# gpu_check.sh - the GPU check: one command on a (possibly bare) GPU machine that always returns
# a usable diagnosis. A lent GPU is one shot (15 minutes, about one issue in ten), so every part
# writes its log into $OUT as it goes, the summary grows line by line, and a part that fails or
# cannot run is reported while the others still run. Parts, within GPU_CHECK_BUDGET seconds
# (default 420, for a device call of 480 s; every part's timeout is cut to the time left, and a
# part with too little left is skipped with a line saying so):
#   0. environment: glibc, GPU, nvcc, cuDNN and NCCL (the toolkit, else Python's nvidia-* wheels),
#      Open MPI and OpenBLAS (installed, else the .deb files staged by scripts/stage_gpu_deps.sh
#      in .device/debs, unpacked into $GPU_CHECK_ROOT under /tmp, never into a carried folder);
#   1. build (WERROR=0: a newer host gcc may warn anew) of the single-process tools, which need
#      no MPI (test_unit, parity_step, bench_step), then of vgg_dist; `ldd` of each and of cuDNN's
#      own sub-libraries: what cannot load is listed, and the tools still run when only libmpi
#      cannot (the staged OpenBLAS needs glibc >= 2.34, the staged Open MPI >= 2.36);
#   2. the CUDA op tests, each in its own process (test_unit --isolate cuda_);
#   3. whole-step parity of the CUDA backend against the CPU backend, and of CUDA graph replays
#      against eager steps (parity_step: fp32, tf32, bf16) -- the first part that needs a GPU;
#   4. two 1-rank NCCL training runs through mpirun, CUDA graphs on and off, with the
#      deterministic autotune (--autotune first): identical losses (the graphs run also sums
#      batch norm's statistics over NCCL, --sync-bn 1: at one rank the same numbers);
#   5. the per-op time profile (bench_step --profile: VGG16 at 128x128, batch 64, bf16);
#   6. throughput: VGG16 (width 1) at 128x128 and 32x32, batch 64 and 256, bf16/tf32/fp32;
#   7. if time is left, compute-sanitizer over the op tests of the row-wise, loss and batch-norm
#      kernels, then a short real-data run.
# --dry-run (for machines without a GPU; `make test` runs it on a fresh clone): every part that
# needs no GPU runs (staging, build, ldd, the host op tests, a CPU run through the staged
# mpirun), the check stops at part 3 with a "no CUDA device" line, and exits 0 if all before
# passed.
# $OUT (the device tool's folder; default build/gpu_check_out) receives at most 8 files:
# gpu_check.txt (the summary) and env/build/unit/parity/nccl/bench/real .log.
# usage: scripts/gpu_check.sh [--dry-run]     the device call: README.md, "The GPU check"
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
T0=$(date +%s)
DRY=${GPU_CHECK_DRY_RUN:-0}
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: scripts/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
BUDGET=${GPU_CHECK_BUDGET:-420}
OUT=${OUT:-$ROOT/build/gpu_check_out}
DEVROOT=${GPU_CHECK_ROOT:-/tmp/vgg_gpu_root}
mkdir -p "$OUT" "$ROOT/build" || exit 1
WORK=$(mktemp -d /tmp/vgg_gpu_check.XXXXXX) || exit 1
SUM=$OUT/gpu_check.txt
: > "$SUM"
B=build/gpu
FAILS=0
CHILD=

say() { echo "$*" | tee -a "$SUM"; }
elapsed() { echo $(($(date +%s) - T0)); }
left() { echo $((BUDGET - $(elapsed))); }
fail() { FAILS=$((FAILS + 1)); say "$*"; }
# log FILE TITLE CMD...: append TITLE and the command's output to $OUT/FILE; returns its status.
# The command runs in the background and is waited for, so that a signal to this script is
# handled at once (bash defers traps while a foreground child runs) and ends the child too.
log() {
  local file=$OUT/$1 title=$2 rc
  shift 2
  echo "==== $title ($(elapsed) s): $*" >> "$file"
  "$@" >> "$file" 2>&1 < /dev/null &
  CHILD=$!
  wait $CHILD
  rc=$?
  CHILD=
  return $rc
}
# tmo CAP MIN NAME: a part's timeout, CAP seconds cut to the budget left (10 s kept for the
# end); prints nothing and says why when fewer than MIN seconds remain.
tmo() {
  local t=$(($(left) - 10))
  [ "$t" -gt "$1" ] && t=$1
  if [ "$t" -lt "$2" ]; then
    say "$3: skipped, $(left) s of the budget left (needs $(($2 + 10)))" >&2
    return 1
  fi
  echo "$t"
}
finish() {
  local f
  for f in "$OUT"/*; do # the device returns files of at most 16 MiB: keep the end of a longer log
    [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt 15728640 ] &&
      { tail -c 15728640 "$f" > "$WORK/cut" && mv "$WORK/cut" "$f"; }
  done
  say "gpu_check: finished in $(elapsed) s"
  rm -rf "$WORK"
}
trap finish EXIT
trap '[ -n "$CHILD" ] && kill -TERM "$CHILD" 2> /dev/null; say "gpu_check: stopped by a signal at $(elapsed) s"; exit 143' TERM INT HUP

# ---- 0. environment -----------------------------------------------------------------------------
say "gpu_check: $([ "$DRY" = 1 ] && echo "DRY RUN (no GPU needed)" || echo "GPU run") on $(uname -n), $(date -u +%FT%TZ), budget $BUDGET s"
say "glibc: $(ldd --version 2>&1 | head -n 1)"
for tool in make gcc; do
  command -v $tool > /dev/null 2>&1 || { fail "gpu_check: no $tool on this machine: nothing can be built"; exit 1; }
done
say "host: $(gcc --version | head -n 1), $(make --version | head -n 1), $(nproc) cpus"
if command -v nvidia-smi > /dev/null 2>&1; then # a GPU in a bad state can hang it: bounded
  timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$SUM"
  log env.log "nvidia-smi" timeout 20 nvidia-smi
  say "gpu: driver supports $(grep -o 'CUDA Version: [0-9.]*' "$OUT/env.log" | head -n 1)"
else
  say "gpu: no nvidia-smi"
fi
log env.log "uname, memory" sh -c 'uname -a; free -g'
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc 2> /dev/null || echo /usr/local/cuda/bin/nvcc)")")}
[ -x "$CUDA_HOME/bin/nvcc" ] || { fail "gpu_check: no nvcc (CUDA_HOME=$CUDA_HOME)"; exit 1; }
say "nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -n 1)"
site=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2> /dev/null || true)
mkdir -p "$WORK/lib"
find_first() { # find_first FILE DIR...: the first directory holding FILE
  local file=$1 d hit
  shift
  for d in "$@"; do
    [ -d "$d" ] || continue
    hit=$(find -H "$d" -maxdepth 4 -name "$file" 2> /dev/null | head -n 1)
    [ -n "$hit" ] && { dirname "$hit"; return 0; }
  done
  return 1
}
# find_lib NAME HEADER LIB: sets NAME_INC and NAME_LIB from the toolkit, the system, or Python's
# nvidia-* wheels (whose layout varies: nvidia/cudnn/, nvidia/cu13/, ...).
find_lib() {
  local name=$1 header=$2 lib=$3 inc dir
  inc=$(find_first "$header" "$CUDA_HOME/include" /usr/include ${site:+"$site/nvidia"}) || true
  dir=$(find_first "lib$lib.so*" "$CUDA_HOME/lib64" /usr/lib/x86_64-linux-gnu ${site:+"$site/nvidia"}) || true
  [ -n "$inc" ] && [ -n "$dir" ] || { fail "gpu_check: $header / lib$lib not found"; exit 1; }
  # Wheels ship only libX.so.N: give the linker its libX.so.
  [ -e "$dir/lib$lib.so" ] || ln -sf "$(ls "$dir/lib$lib.so".* | head -n 1)" "$WORK/lib/lib$lib.so"
  printf -v "${name}_INC" '%s' "$inc"
  printf -v "${name}_LIB" '%s' "$dir"
}
find_lib CUDNN cudnn.h cudnn
find_lib NCCL nccl.h nccl
say "cudnn: $CUDNN_INC $CUDNN_LIB | nccl: $NCCL_INC $NCCL_LIB"
glibc=$(ldd --version 2>&1 | head -n 1 | grep -o '[0-9]*\.[0-9]*$')
glibc_at_least() { awk -v have="${glibc:-0}" -v need="$1" 'BEGIN { split(have, h, "."); split(need, n, ".");
  exit !(h[1] > n[1] || (h[1] == n[1] && h[2] >= n[2])) }'; }
export LIBRARY_PATH="$WORK/lib:$CUDNN_LIB:$NCCL_LIB${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$CUDNN_LIB:$NCCL_LIB:$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# Open MPI and OpenBLAS: installed, else (or with GPU_CHECK_STAGED=1) the staged .deb files.
unpack_debs() {
  [ -e "$DEVROOT/.unpacked" ] && return 0
  ls .device/debs/*.deb > /dev/null 2>&1 ||
    { fail "gpu_check: no staged .deb files (run scripts/stage_gpu_deps.sh here and carry .device)"; exit 1; }
  mkdir -p "$DEVROOT" || exit 1
  local f
  for f in .device/debs/*.deb; do
    if command -v dpkg-deb > /dev/null 2>&1; then dpkg-deb -x "$f" "$DEVROOT"
    else (cd "$WORK" && ar x "$ROOT/$f" && tar -xf data.tar.* -C "$DEVROOT" && rm -f ./*.tar.* debian-binary); fi ||
      { fail "gpu_check: cannot unpack $f into $DEVROOT"; exit 1; }
  done
  touch "$DEVROOT/.unpacked"
}
STAGED=${GPU_CHECK_STAGED:-0}
BLAS=()
if [ "$STAGED" = 1 ] || { ! [ -e /usr/include/x86_64-linux-gnu/cblas.h ] && ! [ -e /usr/include/cblas.h ]; }; then
  unpack_debs
  BLAS=(OPENBLAS_INC="$DEVROOT/usr/include/x86_64-linux-gnu/openblas-pthread"
        OPENBLAS_LIB="$DEVROOT/usr/lib/x86_64-linux-gnu/openblas-pthread")
  say "openblas: staged copy in $DEVROOT"
fi
if [ "$STAGED" = 1 ] || ! command -v mpicc > /dev/null 2>&1; then
  unpack_debs
  export OPAL_PREFIX="$DEVROOT/usr"
  mkdir -p "$WORK/bin"
  ln -sf "$OPAL_PREFIX/bin/mpicc.openmpi" "$WORK/bin/mpicc"
  ln -sf "$OPAL_PREFIX/bin/orterun" "$WORK/bin/mpirun"
  export PATH="$WORK/bin:$OPAL_PREFIX/bin:$PATH"
  export LD_LIBRARY_PATH="$OPAL_PREFIX/lib/x86_64-linux-gnu:$OPAL_PREFIX/lib/x86_64-linux-gnu/openmpi/lib:$LD_LIBRARY_PATH"
  say "mpi: staged Open MPI in $DEVROOT"
fi
say "mpi: $(mpirun --version 2>&1 | head -n 1)"

# ---- 1. build, ldd ------------------------------------------------------------------------------
MK=(make -j"$(nproc)" "BUILD=$B" "BIN=$B/vgg_dist" CUDA=1 WERROR=0 CUDA_ARCH="${CUDA_ARCH:-90}"
    CUDA_HOME="$CUDA_HOME" CUDNN_INC="$CUDNN_INC" CUDNN_LIB="$CUDNN_LIB" NCCL_INC="$NCCL_INC"
    NCCL_LIB="$NCCL_LIB" "${BLAS[@]}")
if [ ${#BLAS[@]} -gt 0 ] && ! glibc_at_least 2.34; then
  say "glibc: $glibc is older than the staged OpenBLAS needs (2.34): expect no binary to load"
elif [ -n "${OPAL_PREFIX:-}" ] && ! glibc_at_least 2.36; then
  say "glibc: $glibc is older than the staged Open MPI needs (2.36): vgg_dist will not load, the tools will"
fi
if ! log build.log "single-process tools" "${MK[@]}" $B/test_unit $B/parity_step $B/bench_step; then
  grep -E "error|Error" "$OUT/build.log" | head -n 20 | tee -a "$SUM"
  fail "gpu_check: build of the tools FAILED (build.log)"
  exit 1
fi
HAVE_BIN=1
if log build.log "vgg_dist" "${MK[@]}" $B/vgg_dist; then
  say "build: ok at $(elapsed) s (CUDA_ARCH ${CUDA_ARCH:-90}, WERROR=0; warnings: $(grep -c 'warning' "$OUT/build.log"))"
else
  HAVE_BIN=0
  grep -E "error|Error|undefined" "$OUT/build.log" | tail -n 10 | tee -a "$SUM"
  fail "build: the tools built, vgg_dist FAILED (build.log); the MPI parts are skipped"
fi
# cuDNN 9 loads its engine sub-libraries itself (they need cuBLASLt/NVRTC of their CUDA major):
# ldd of our binaries does not show them, so they are listed here.
for bin in $B/test_unit $B/parity_step $B/bench_step $B/vgg_dist "$CUDNN_LIB"/libcudnn*.so.[0-9]*; do
  [ -e "$bin" ] || continue
  missing=$(ldd "$bin" 2>&1 | grep -E "not found|version .* not found" | sed 's/^[[:space:]]*//' | sort -u | tr '\n' ' ')
  if [ -n "$missing" ]; then
    say "ldd $bin: cannot load: $missing"
    [ "$bin" = $B/vgg_dist ] && HAVE_BIN=0
  else
    case "$bin" in "$B"/*) say "ldd $bin: every library found" ;; esac
  fi
done
# The staged mpirun starts ranks: a CPU run of 2 ranks, seconds. Where shared-memory transport
# fails (a sandboxed kernel), once more over TCP alone, and the MPI parts then use that.
MPIRUN=(mpirun --allow-run-as-root)
mpi_smoke() {
  log env.log "mpi smoke test $*" timeout 45 "${MPIRUN[@]}" "$@" --oversubscribe -np 2 $B/vgg_dist \
    --device cpu --data data/sample --model vgg11 --width 0.125 --image-size 32 --batch 32 \
    --epochs 1 --train-limit 96 --val-size 32 --test-limit 32 --threads 1
}
if [ "$HAVE_BIN" = 1 ]; then
  if mpi_smoke; then
    say "mpi: 2 CPU ranks through mpirun: ok"
  elif mpi_smoke --mca btl self,tcp; then
    MPIRUN+=(--mca btl self,tcp)
    say "mpi: 2 CPU ranks through mpirun: ok over TCP only (the default transports failed: env.log)"
  else
    HAVE_BIN=0
    fail "mpi: 2 CPU ranks through mpirun FAILED (env.log); the MPI parts are skipped"
  fi
fi

# ---- 2. CUDA op tests, one process each -----------------------------------------------------------
if t=$(tmo 150 30 unit); then
  log unit.log "CUDA op tests" timeout "$t" $B/test_unit --isolate --limit 45 cuda_
  rc=$?
  grep -E "^(ok|FAIL|skip)|error|FATAL|rel error|passed" "$OUT/unit.log" | tail -n 40 | sed 's/^/unit: /' | tee -a "$SUM"
  [ $rc -eq 0 ] || fail "unit: FAIL (exit $rc$([ $rc -eq 124 ] && echo ": over its $t s"); unit.log)"
fi

# ---- 3. parity: the first part that needs a GPU ------------------------------------------------
t=$(tmo 150 20 parity) || t=20 # the first GPU part always runs: it tells whether there is a GPU
log parity.log "parity" timeout "$t" $B/parity_step 32 128
rc=$?
if grep -q "no CUDA device" "$OUT/parity.log"; then
  say "gpu_check: no CUDA device: $(grep -m 1 'no CUDA device' "$OUT/parity.log" | sed 's/^vgg_dist: error: //')"
  if [ "$DRY" = 1 ]; then
    say "gpu_check: dry run stops at the first part that needs a GPU; $FAILS parts failed before it"
    exit $((FAILS > 0))
  fi
  fail "gpu_check: a GPU run without a GPU"
  exit 1
fi
grep -E "^parity|error|FATAL" "$OUT/parity.log" | tee -a "$SUM"
[ $rc -eq 0 ] || fail "parity: FAIL (exit $rc$([ $rc -eq 124 ] && echo ": over its $t s"); parity.log)"
[ "$DRY" = 1 ] && say "gpu_check: dry run, but a CUDA device answered: running the GPU parts too"

# ---- 4. one-rank NCCL runs: CUDA graphs on and off ------------------------------------------
# 1000 train images in batches of 64: step 1 eager, step 2 captured, later ones replayed, the
# short last one eager. With --autotune first both processes pick the same (deterministic)
# engines, so the losses must be identical; a stale step variable in the graph (ids, flips,
# dropout step, Adam step or lr) would not. The graphs run takes batch norm's sums over NCCL
# (--sync-bn 1: all-reduces of doubles on the comm stream, captured between the compute
# stream's kernels), the eager run not: over one rank they are the same sums, so a broken event
# order, capture or all-reduce there shows as a difference too.
data=data/sample
[ -r .device/data/data_batch_1.bin ] && data=.device/data
nccl_run() { # nccl_run GRAPHS (and --sync-bn GRAPHS)
  local t
  t=$(tmo 90 20 "nccl --cuda-graphs $1") || return 124
  log nccl.log "1 rank, --cuda-graphs $1 --sync-bn $1" timeout "$t" "${MPIRUN[@]}" -np 1 $B/vgg_dist \
    --device cuda --data "$data" --model vgg11 --width 0.5 --image-size 32 --batch 64 --epochs 1 \
    --val-size 200 --train-limit 1000 --lr 1e-3 --log-every 5 --autotune first --cuda-graphs "$1" \
    --sync-bn "$1" --metrics "$WORK/nccl_$1.jsonl"
}
same_losses() { # every step and epoch loss and accuracy (%.6f in the metrics) of the two runs
  [ -s "$WORK/nccl_1.jsonl" ] && [ -s "$WORK/nccl_0.jsonl" ] || { echo "a run wrote no metrics"; return 1; }
  python3 - "$WORK/nccl_1.jsonl" "$WORK/nccl_0.jsonl" << 'PY'
import json, sys
def figures(path):
    ev = [json.loads(l) for l in open(path)]
    return [(e["event"], k, e[k]) for e in ev if e["event"] in ("step", "epoch")
            for k in sorted(e) if "loss" in k or "acc" in k]
a, b = figures(sys.argv[1]), figures(sys.argv[2])
diff = [(x, y) for x, y in zip(a, b) if x != y]
print(f"{len(a)} and {len(b)} figures, {len(diff)} differ" + (f", first {diff[0]}" if diff else ""))
sys.exit(0 if a and len(a) == len(b) and not diff else 1)
PY
}
if [ "$HAVE_BIN" = 1 ]; then
  nccl_run 1; rc=$?
  nccl_run 0; rc0=$?
  grep -E "^device|^epoch [0-9]+/[0-9]+:|^device memory|^test|error|FATAL|WARN|signal|Abort|noticed" \
    "$OUT/nccl.log" | head -n 40 | sed 's/^/nccl: /' | tee -a "$SUM"
  cmp=$(same_losses 2>&1)
  crc=$?
  if [ $rc -eq 0 ] && [ $rc0 -eq 0 ] && [ $crc -eq 0 ]; then
    say "nccl 1 rank: exit 0 and 0, graph (--sync-bn 1) and eager (--sync-bn 0) losses identical ($cmp)"
  else
    fail "nccl 1 rank: FAIL (exit $rc with graphs, $rc0 eager; losses must be identical: $cmp)"
  fi
else
  fail "nccl 1 rank: not run (vgg_dist cannot run here: see above)"
fi

# ---- 5. per-op profile ----------------------------------------------------------------------------
# The summary keeps the per-op table, the totals by kind and the plan-building line; every
# convolution's engine and candidates stay in bench.log.
if t=$(tmo 120 30 profile); then
  log bench.log "profile" timeout "$t" $B/bench_step --device cuda --model vgg16 --width 1 --size 128 \
    --batch 64 --precision bf16 --steps 10 --warmup 3 --profile || fail "profile: FAILED (bench.log)"
  awk '/^==== profile/ { on = 1; next } /^==== / { on = 0 } /^conv plans/ { plans = 1 }
       on && (!plans || /^plan building/)' "$OUT/bench.log" | sed 's/^/profile: /' | tee -a "$SUM"
fi

# ---- 6. throughput ---------------------------------------------------------------------------------
peak() { case "$1" in fp32) echo 67e12 ;; tf32) echo 495e12 ;; bf16) echo 989e12 ;; esac; } # H100/H200 SXM dense
bench() { # bench ARGS...: one bench_step line into the summary
  local line gf mfu t prec=$1
  shift
  t=$(tmo 60 20 "bench $prec $*") || return
  if ! log bench.log "bench $prec $*" timeout "$t" $B/bench_step --device cuda --model vgg16 --width 1 \
       --precision "$prec" --steps 20 --warmup 5 "$@"; then
    say "bench $prec $*: FAILED or over its $t s (bench.log)"
    return
  fi
  line=$(tail -n 1 "$OUT/bench.log")
  gf=$(echo "$line" | sed -n 's/.* \([0-9.]*\) GFLOP\/s.*/\1/p')
  mfu=$(awk -v g="${gf:-0}" -v p="$(peak "$prec")" 'BEGIN { printf "%.1f", g * 1e9 / p * 100 }')
  say "bench: $line | MFU ${mfu}% of $(peak "$prec") FLOP/s"
}
for size in 128 32; do
  for batch in 64 256; do
    for prec in bf16 tf32 fp32; do
      if [ "$(left)" -lt 40 ]; then say "bench: out of time, the rest skipped"; break 3; fi
      bench $prec --size $size --batch $batch
    done
  done
  # What the graphs save where launches weigh most: the small images, eagerly.
  [ "$size" = 32 ] && [ "$(left)" -ge 40 ] && bench bf16 --size 32 --batch 64 --graphs 0
done

# ---- 7. compute-sanitizer, then real data, if time is left -----------------------------------
# memcheck over the kernels written without a GPU (one process each: a refusal is reported).
SAN=$CUDA_HOME/bin/compute-sanitizer
if [ -x "$SAN" ]; then
  for t_name in cuda_gpu_rowwise_paths cuda_gpu_pool_dropout_xent cuda_gpu_bn; do
    t=$(tmo 60 20 "sanitizer $t_name") || break
    log unit.log "compute-sanitizer $t_name" timeout "$t" "$SAN" --tool memcheck --error-exitcode 3 \
      $B/test_unit "$t_name"
    say "sanitizer $t_name: exit $? ($(grep -E 'ERROR SUMMARY|Device not supported' "$OUT/unit.log" | tail -n 1))"
  done
fi
# The default recipe (the paper preset's batch norm, learning rate and warmup), at 32x32 and a
# per-GPU batch of 64 so that a dozen epochs of what travels fit the time left.
if [ "$HAVE_BIN" = 1 ] && [ -r .device/data/data_batch_1.bin ] && t=$(tmo 200 60 "real data"); then
  log real.log "real data" timeout "$t" "${MPIRUN[@]}" -np 1 $B/vgg_dist \
    --device cuda --data .device/data --image-size 32 --batch 64 \
    --epochs 12 --val-size 300 --precision bf16 --log-every 100
  grep -E "^epoch [0-9]+/[0-9]+:|^test" "$OUT/real.log" | sed 's/^/real: /' | tail -n 4 | tee -a "$SUM"
fi
say "gpu_check: $FAILS parts failed (of: build, MPI start-up, op tests, parity, NCCL runs, profile)"
exit $((FAILS > 0))
