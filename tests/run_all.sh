#!/usr/bin/env bash
# run_all.sh - `make test`: every suite, then one closing line "N passed, N failed".
# Suites: the C unit tests (build/test_unit, which also runs the PyTorch golden comparisons),
# the multi-rank tests of the binary under mpirun (tests/test_mpi.sh), faults and hostile inputs
# (tests/test_faults.sh: a stalled rank, FIFOs, divergence, messages; tests/test_ckpt_faults.sh:
# stale temp files, best.bin, the sample order and out-of-range values of checkpoints),
# the metrics file converted to TensorBoard event files and read back (tests/test_tensorboard.sh),
# --eval, --dump-logits and --init-from (tests/test_eval.sh),
# launch/common.sh's GPU count with a fake nvidia-smi and multi_node.sh's mpirun flags with a
# fake mpirun (tests/test_launch.sh), launch/slurm.sbatch under
# a one-node Slurm started for the test (tests/test_slurm.sh; a skip line without root or Slurm),
# launch/multi_node.sh on 3 nodes made of network namespaces, with a node killed and a node cut
# off (tests/test_multinode.sh; a skip line without root or CAP_NET_ADMIN),
# the export to TorchScript / ONNX / torchvision's state_dict and the import from torchvision
# against a reference forward (tests/test_export.sh),
# the GPU check's dry run on a fresh clone of the committed tree (tests/test_gpu_check.sh), the
# Makefile's newcomer path (tests/test_build.sh), and a short pass of every libFuzzer target
# (tests/fuzz/run.sh, FUZZ_SECONDS each, default 10 here; `make fuzz` runs them longer).
# usage: tests/run_all.sh BUILD/test_unit ./vgg_dist
set -u
unit=${1:-build/test_unit}
bin=${2:-./vgg_dist}
here=$(cd "$(dirname "$0")" && pwd)
total_pass=0
total_fail=0
run_suite() {
  local name=$1
  shift
  echo "== $name"
  local log
  log=$(mktemp)
  "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local line
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
  rm -f "$log"
  if [ -z "$line" ]; then
    echo "suite $name ended without a summary (exit $rc): counted as 1 failure"
    total_fail=$((total_fail + 1))
    return
  fi
  local p f
  p=${line%% passed*}
  f=${line#*, }
  f=${f%% failed*}
  total_pass=$((total_pass + p))
  total_fail=$((total_fail + f))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "suite $name exited $rc: counted as 1 failure"
    total_fail=$((total_fail + 1))
  fi
}
run_suite unit "$unit"
run_suite mpi "$here/test_mpi.sh" "$bin"
run_suite faults "$here/test_faults.sh" "$bin"
run_suite ckpt_faults "$here/test_ckpt_faults.sh" "$bin"
run_suite tensorboard "$here/test_tensorboard.sh" "$bin"
run_suite eval "$here/test_eval.sh" "$bin"
run_suite slurm "$here/test_slurm.sh" "$bin"
run_suite multinode "$here/test_multinode.sh" "$bin"
run_suite launch "$here/test_launch.sh"
run_suite export "$here/test_export.sh" "$bin"
run_suite gpu_check "$here/test_gpu_check.sh"
run_suite build "$here/test_build.sh"
run_suite fuzz "$here/fuzz/run.sh" "${FUZZ_SECONDS:-10}"
echo "== all suites"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
