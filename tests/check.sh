# check.sh - the shell suites' tiny harness (sourced by tests/test_*.sh, after they set ROOT):
# ok/bad count, check runs a command as a named test, summary prints the closing line
# "N passed, N failed" that tests/run_all.sh reads and returns whether all passed, and
# suite_tools BIN sets what the suites of the binary share: BIN (absolute), GEN (gen_cifar in
# $BUILD, default build), TOOL (the checkpoint tool), PY, and VENV (scripts/setup.sh's venv of
# PyPI packages); suite_mpi exports one thread per rank and sets MPIRUN (mpirun as root,
# oversubscribed); require_python PYTHON CODE ends a suite at once (one failure) when that Python
# cannot run CODE (its imports), naming the command that installs them.
pass=0
fail=0
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; fail=$((fail + 1)); }
check() { # check NAME COMMAND...: passes when the command succeeds (and returns its verdict)
  local name=$1
  shift
  if "$@"; then ok "$name"; else bad "$name"; return 1; fi
}
summary() { echo "$pass passed, $fail failed"; [ "$fail" -eq 0 ]; }
suite_tools() { # suite_tools [BIN]
  BIN=$(realpath "${1:-./vgg_dist}")
  BUILD=${BUILD:-build}
  GEN="$ROOT/$BUILD/gen_cifar"
  [ -x "$GEN" ] || GEN="$BUILD/gen_cifar"
  TOOL="$ROOT/tests/ckpt_tool.py"
  PY=${PY:-python3}
  VENV=${VGG_DIST_VENV:-$ROOT/.venv}
}
suite_mpi() { # the suites that start ranks: one thread each, more ranks than cores allowed (root)
  export OMP_NUM_THREADS=1 OMPI_MCA_rmaps_base_oversubscribe=1
  MPIRUN=(mpirun --allow-run-as-root --oversubscribe)
}
require_python() { # require_python PYTHON CODE
  "$1" -c "$2" 2> /dev/null && return 0
  echo "FAIL $1 cannot run '$2': run scripts/setup.sh test"
  echo "0 passed, 1 failed"
  exit 1
}
