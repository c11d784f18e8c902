# check.sh - the shell suites' tiny harness (sourced by tests/test_*.sh, after they set ROOT):
# ok/bad count, check runs a command as a named test, summary prints the closing line
# "N passed, N failed" that tests/run_all.sh reads and returns whether all passed, and
# suite_tools BIN sets what the suites of the binary share: BIN (absolute), GEN (gen_cifar in
# $BUILD, default build), TOOL (the checkpoint tool) and PY.
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
}
