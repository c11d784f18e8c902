# check.sh - the shell suites' tiny harness (sourced by tests/test_*.sh): ok/bad count, check runs
# a command as a named test, summary prints the closing line "N passed, N failed" that
# tests/run_all.sh reads, and returns whether all passed.
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
