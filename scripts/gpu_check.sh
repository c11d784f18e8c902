#!/usr/bin/env bash
# gpu_check.sh - the GPU check, one command on a (possibly bare) GPU machine, under 6 minutes
# on one H100 including the build:
#   0. finds nvcc, cuDNN and NCCL (the CUDA toolkit, else Python's nvidia-* wheels) and Open
#      MPI (installed, else the .deb files staged by scripts/stage_gpu_deps.sh in .device/);
#   1. builds, runs the CUDA op tests (build/gpu/test_unit cuda_) and the whole-step parity of
#      the CUDA backend against the CPU backend, and of CUDA graph replays against eager steps
#      (tests/tools/parity_step.c: fp32, tf32, bf16);
#   2. two 1-rank NCCL training runs through mpirun, CUDA graphs on and off: identical losses;
#   3. throughput: VGG16 (width 1) at 128x128 and 32x32, batch 64 and 256, fp32/tf32/bf16:
#      images/s, model FLOP utilisation, device memory;
#   4. if time is left, a short real-data run (VGG16 at 32x32, real CIFAR-10 subset).
# Prints a compact summary and writes it to $OUT/gpu_check.txt when OUT is set.
# usage: scripts/gpu_check.sh    (from the device tool: carry [".device"])
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
T0=$(date +%s)
SUM=$(mktemp)
say() { echo "$*" | tee -a "$SUM"; }
elapsed() { echo $(( $(date +%s) - T0 )); }
finish() {
  say "gpu_check: finished in $(elapsed) s"
  if [ -n "${OUT:-}" ]; then cp "$SUM" "$OUT/gpu_check.txt"; fi
  exit "${1:-0}"
}

# ---- 0. tools -------------------------------------------------------------------------------
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$SUM"
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc 2> /dev/null || echo /usr/local/cuda/bin/nvcc)")")}
[ -x "$CUDA_HOME/bin/nvcc" ] || { say "gpu_check: no nvcc"; finish 1; }
say "nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -n 1)"
mkdir -p .device/lib
site=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2> /dev/null || true)
# find_lib NAME HEADER LIB: sets <NAME>_INC and <NAME>_LIB from the toolkit, the system, or
# Python's nvidia-* wheels (whose layout varies: nvidia/cudnn/, nvidia/cu13/, ...).
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
find_lib() {
  local name=$1 header=$2 lib=$3 inc dir
  inc=$(find_first "$header" "$CUDA_HOME/include" /usr/include ${site:+"$site/nvidia"}) || true
  dir=$(find_first "lib$lib.so*" "$CUDA_HOME/lib64" /usr/lib/x86_64-linux-gnu ${site:+"$site/nvidia"}) || true
  [ -n "$inc" ] && [ -n "$dir" ] || { say "gpu_check: $header / lib$lib not found"; finish 1; }
  # Wheels ship only libX.so.N: give the linker its libX.so.
  [ -e "$dir/lib$lib.so" ] || ln -sf "$(ls "$dir/lib$lib.so".* | head -n 1)" ".device/lib/lib$lib.so"
  printf -v "${name}_INC" '%s' "$inc"
  printf -v "${name}_LIB" '%s' "$dir"
}
find_lib CUDNN cudnn.h cudnn
find_lib NCCL nccl.h nccl
say "cudnn: $CUDNN_INC $CUDNN_LIB | nccl: $NCCL_INC $NCCL_LIB"
export LIBRARY_PATH="$ROOT/.device/lib:$CUDNN_LIB:$NCCL_LIB${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$CUDNN_LIB:$NCCL_LIB:$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# Open MPI and OpenBLAS: installed, else unpacked from the staged .deb files.
unpack_debs() {
  [ -e .device/root/.unpacked ] && return 0
  ls .device/debs/*.deb > /dev/null 2>&1 || { say "gpu_check: no staged .deb files (run scripts/stage_gpu_deps.sh here, carry .device)"; finish 1; }
  local f
  for f in .device/debs/*.deb; do
    if command -v dpkg-deb > /dev/null 2>&1; then dpkg-deb -x "$f" .device/root
    else (mkdir -p .device/x && cd .device/x && ar x "../../$f" && tar -xf data.tar.* -C ../root && rm -f ./*); fi ||
      { say "gpu_check: cannot unpack $f"; finish 1; }
  done
  touch .device/root/.unpacked
}
mkdir -p .device/root .device/bin
STAGED=${GPU_CHECK_STAGED:-0} # 1: use the staged copies even where the system has its own
BLAS=()
if [ "$STAGED" = 1 ] || { ! [ -e /usr/include/x86_64-linux-gnu/cblas.h ] && ! [ -e /usr/include/cblas.h ]; }; then
  unpack_debs
  BLAS=(OPENBLAS_INC="$ROOT/.device/root/usr/include/x86_64-linux-gnu/openblas-pthread"
        OPENBLAS_LIB="$ROOT/.device/root/usr/lib/x86_64-linux-gnu/openblas-pthread")
  say "openblas: staged copy in .device/root"
fi
if [ "$STAGED" = 1 ] || ! command -v mpicc > /dev/null 2>&1; then
  unpack_debs
  export OPAL_PREFIX="$ROOT/.device/root/usr"
  ln -sf "$OPAL_PREFIX/bin/mpicc.openmpi" .device/bin/mpicc
  ln -sf "$OPAL_PREFIX/bin/orterun" .device/bin/mpirun
  export PATH="$ROOT/.device/bin:$OPAL_PREFIX/bin:$PATH"
  export LD_LIBRARY_PATH="$OPAL_PREFIX/lib/x86_64-linux-gnu:$OPAL_PREFIX/lib/x86_64-linux-gnu/openmpi/lib:$LD_LIBRARY_PATH"
  say "mpi: staged Open MPI in .device/root"
fi
say "mpi: $(mpirun --version 2>&1 | head -n 1)"

# ---- 1. build, op tests, parity ----------------------------------------------------------------
B=build/gpu
MK=(make -j"$(nproc)" "BUILD=$B" CUDA=1 CUDA_ARCH="${CUDA_ARCH:-90}" CUDA_HOME="$CUDA_HOME"
    CUDNN_INC="$CUDNN_INC" CUDNN_LIB="$CUDNN_LIB" NCCL_INC="$NCCL_INC" NCCL_LIB="$NCCL_LIB" "${BLAS[@]}")
if ! "${MK[@]}" vgg_dist $B/test_unit $B/bench_step $B/parity_step > $B.log 2>&1; then
  tail -n 30 $B.log; say "gpu_check: build FAILED (see above)"; finish 1
fi
say "build: ok at $(elapsed) s"
FAILS=0
timeout 120 $B/test_unit cuda_ > /tmp/gc_unit.log 2>&1 || FAILS=$((FAILS + 1))
grep -E "^(ok|FAIL|skip)|rel error|passed" /tmp/gc_unit.log | tail -n 25 | tee -a "$SUM"
timeout 150 $B/parity_step 32 128 > /tmp/gc_parity.log 2>&1 || FAILS=$((FAILS + 1))
grep -E "^parity|error" /tmp/gc_parity.log | tee -a "$SUM"

# ---- 2. one-rank NCCL runs: CUDA graphs on and off -------------------------------------------
# 800 train images in batches of 64: step 1 eager, step 2 captured, 3-12 replayed, the short
# 13th eager. Deterministic engines make the two runs' losses identical; a stale step variable
# in the graph (ids, flips, dropout step, Adam step or lr) would not.
data=data/sample
[ -r .device/data/data_batch_1.bin ] && data=.device/data
nccl_run() { # nccl_run GRAPHS LOG
  timeout 120 mpirun --allow-run-as-root -np 1 ./vgg_dist --device cuda --data "$data" --model vgg11 \
    --width 0.5 --image-size 32 --batch 64 --epochs 1 --val-size 200 --train-limit 1000 --lr 1e-3 \
    --log-every 5 --cuda-graphs "$1" > "$2" 2>&1
}
losses() { sed -n 's/^\(epoch [0-9]*\/[0-9]*: train loss [0-9.]* acc [0-9.]* | val loss [0-9.]* acc [0-9.]*\).*/\1/p' "$1"; }
nccl_run 1 /tmp/gc_nccl.log
rc=$?
nccl_run 0 /tmp/gc_nccl_eager.log
rc0=$?
grep -E "^device|^epoch [0-9]+/[0-9]+:|^device memory|^test|error" /tmp/gc_nccl.log | sed 's/^/nccl 1 rank, graphs: /' | tee -a "$SUM"
grep -E "^epoch [0-9]+/[0-9]+:|error" /tmp/gc_nccl_eager.log | sed 's/^/nccl 1 rank, eager: /' | tee -a "$SUM"
if [ $rc -eq 0 ] && [ $rc0 -eq 0 ] && [ -n "$(losses /tmp/gc_nccl.log)" ] &&
   [ "$(losses /tmp/gc_nccl.log)" = "$(losses /tmp/gc_nccl_eager.log)" ]; then
  say "nccl 1 rank: exit 0 and 0, graph and eager losses identical"
else
  FAILS=$((FAILS + 1))
  say "nccl 1 rank: FAIL (exit $rc with graphs, $rc0 eager; losses must be identical)"
fi

# ---- 3. throughput ---------------------------------------------------------------------------
peak() { case "$1" in fp32) echo 67e12 ;; tf32) echo 495e12 ;; bf16) echo 989e12 ;; esac; } # H100 SXM dense
for size in 128 32; do
  for batch in 64 256; do
    for prec in bf16 tf32 fp32; do
      if [ "$(elapsed)" -gt 320 ]; then say "bench: out of time, the rest skipped"; break 3; fi
      line=$(timeout 90 $B/bench_step --device cuda --model vgg16 --width 1 --size $size --batch $batch \
             --precision $prec --steps 20 --warmup 5 2>&1 | tail -n 1)
      gf=$(echo "$line" | sed -n 's/.* \([0-9.]*\) GFLOP\/s.*/\1/p')
      mfu=$(awk -v g="${gf:-0}" -v p="$(peak "$prec")" 'BEGIN { printf "%.1f", g * 1e9 / p * 100 }')
      say "bench: $line | MFU ${mfu:-?}% of $(peak $prec) FLOP/s"
    done
  done
  # What the graphs save where launches weigh most: the small images, eagerly.
  [ "$size" = 32 ] && say "bench: $(timeout 90 $B/bench_step --device cuda --model vgg16 --width 1 \
    --size 32 --batch 64 --precision bf16 --steps 20 --warmup 5 --graphs 0 2>&1 | tail -n 1)"
done

# ---- 4. real data, if time is left ------------------------------------------------------------
if [ "$(elapsed)" -lt 270 ] && [ -r .device/data/data_batch_1.bin ]; then
  timeout $(( 340 - $(elapsed) )) mpirun --allow-run-as-root -np 1 ./vgg_dist --device cuda --data .device/data \
    --model vgg16 --width 1 --image-size 32 --batch 64 --lr 1e-4 --epochs 12 --val-size 300 \
    --precision bf16 --log-every 100 > /tmp/gc_real.log 2>&1
  grep -E "^epoch [0-9]+/[0-9]+:|^test" /tmp/gc_real.log | sed 's/^/real: /' | tail -n 4 | tee -a "$SUM"
fi
say "gpu_check: $FAILS of the 3 correctness parts failed (op tests, parity, NCCL runs)"
finish "$FAILS"
