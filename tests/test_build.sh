#!/usr/bin/env bash
# test_build.sh - the newcomer's path through the Makefile: the goals that need nothing (help,
# clean, and run/test, which set up first) never stop on detection; OpenBLAS is found as
# OpenBLAS (not any cblas.h); a build directory rebuilds when its configuration changes instead
# of mixing objects; scripts/setup.sh. Prints "N passed, N failed" last.
# usage: tests/test_build.sh
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
unset MAKEFLAGS MFLAGS MAKELEVEL # as a user's shell: not the make that runs this suite
. "$ROOT/tests/check.sh"
quiet() { "$@" > /dev/null 2>&1; }
T=$(mktemp -d /tmp/vgg_build_XXXXXX)
trap 'rm -rf "$T"' EXIT
NONE=(MPICC=/nonexistent/mpicc OPENBLAS_INC="$T/none" OPENBLAS_LIB="$T/none")

check "make help without MPI or OpenBLAS" quiet make -s "${NONE[@]}" help
check "make clean without MPI or OpenBLAS (dry run)" quiet make -n "${NONE[@]}" clean
check "make run parses without MPI or OpenBLAS (dry run)" quiet make -n "${NONE[@]}" run
check "make test sets up before anything is detected" \
  sh -c "make -n ${NONE[*]} test 2> /dev/null | head -n 1 | grep -qx 'scripts/setup.sh test'"
# A netlib cblas.h (as libblas-dev's alternative provides) is not OpenBLAS: refused by name.
mkdir -p "$T/netlib"
printf 'void cblas_sgemm(void);\n' > "$T/netlib/cblas.h"
make -n OPENBLAS_INC="$T/netlib" OPENBLAS_LIB=/usr/lib/x86_64-linux-gnu vgg_dist > "$T/netlib.log" 2>&1
check "a netlib cblas.h is refused with one line naming OpenBLAS" grep -q "OpenBLAS not found" "$T/netlib.log"
check "OpenBLAS's own include directory is on the compile line" \
  sh -c "make -n BUILD=$T/b1 $T/b1/src/check.o | grep -q -- '-I$(pkg-config --variable=includedir openblas 2> /dev/null || echo /usr/include)'"
# The same build directory with one configuration, then another (WERROR here; CUDA=0/1 and the
# rest are keys of the same stamp): the switch rebuilds everything (a mixed directory failed to
# link, or linked the other configuration's objects), and the same configuration again nothing.
B=$T/b2
make -s BUILD="$B" CUDA=0 "$B/gen_cifar" > "$T/sw1.log" 2>&1
make BUILD="$B" CUDA=0 WERROR=0 "$B/gen_cifar" > "$T/sw2.log" 2>&1
check "changing the configuration says so and rebuilds" \
  sh -c "grep -q 'build configuration changed' '$T/sw2.log' && grep -q -- '-c src/check.c' '$T/sw2.log'"
make BUILD="$B" CUDA=0 WERROR=0 "$B/gen_cifar" > "$T/sw3.log" 2>&1
check "the same configuration again rebuilds nothing" \
  sh -c "! grep -q -- ' -c ' '$T/sw3.log' && ! grep -q 'configuration changed' '$T/sw3.log'"
scripts/setup.sh nonsense > /dev/null 2>&1
check "scripts/setup.sh refuses an unknown argument (exit 2)" test $? -eq 2
check "scripts/setup.sh test --check: everything the tests need is here (exit 0)" scripts/setup.sh test --check
check "scripts/setup.sh test --check without the PyPI venv: exit 1 naming its packages, nothing installed" \
  bash -c "VGG_DIST_VENV=/nonexistent/venv scripts/setup.sh test --check 2>&1 | grep -q 'missing from PyPI in /nonexistent/venv: tensorboard' && ! VGG_DIST_VENV=/nonexistent/venv scripts/setup.sh test --check 2> /dev/null && [ ! -e /nonexistent ]"
# Without root nothing is installed: what is required and missing (here OpenBLAS, hidden from
# pkg-config) is named with the command to run.
if command -v setpriv > /dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp PKG_CONFIG_LIBDIR="$T/none" \
    OPENBLAS_INC="$T/none" scripts/setup.sh run > "$T/nonroot.log" 2>&1
  rc=$?
  check "as a user without OpenBLAS: exit 1 naming the packages and the command" \
    sh -c "[ $rc -eq 1 ] && grep -q 'sudo apt-get update && sudo apt-get install pkg-config libopenblas-dev' '$T/nonroot.log'"
fi
summary
