#!/usr/bin/env bash
# common.sh - shared by the launch scripts: where the binary is, mpirun's flags, and
# launch_mpirun, which turns a signal to the script into a checkpoint and exit 0. Sourced, not run. The launch scripts are the only place that sets NCCL_*, CUDA_VISIBLE_DEVICES
# or mpirun binding flags; the binary binds each rank to GPU (local rank % visible GPUs).
VGG_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VGG_BIN=${VGG_BIN:-$VGG_ROOT/vgg_dist}
[ -x "$VGG_BIN" ] || { echo "launch: $VGG_BIN not built (run make)" >&2; exit 1; }
# Binding: none by default, since Open MPI's default (one core per rank for 2 ranks or fewer)
# would pin a CPU rank's OpenMP threads to one core. VGG_MPI_BIND replaces it (words split), e.g.
# "--map-by ppr:4:socket:PE=8 --bind-to core" to keep each GPU rank's cores near its GPU.
read -r -a MPI_FLAGS <<< "${VGG_MPI_BIND:---bind-to none --map-by slot}"
# Root in containers and CI: Open MPI refuses root unless told.
[ "$(id -u)" -eq 0 ] && MPI_FLAGS+=(--allow-run-as-root)
# gpu_count: the GPUs this job can see, which is what the ranks' CUDA shows them. nvidia-smi -L
# lists every GPU of the machine and ignores CUDA_VISIBLE_DEVICES; when that is set (a
# scheduler's allocation, a user's choice) it is the answer: empty or "NoDevFiles" (Slurm
# without GPUs) is none, a list is its entries up to the first invalid one ("-1" hides the rest,
# as in CUDA). Unset: every GPU nvidia-smi lists (0 without nvidia-smi). An entry naming no
# existing GPU ("0,1,7" on a 4-GPU node) still counts here while CUDA drops it; the ranks then
# bound to a shared GPU are refused by their PCI bus ids, in one line.
gpu_count() {
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    echo "$CUDA_VISIBLE_DEVICES" | awk -F, '{ n = 0; for (i = 1; i <= NF; i++) { v = $i; gsub(/ /, "", v)
      if (v == "" || v ~ /^-/ || v == "NoDevFiles") break; n++ } print n }'
  elif command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true
  else echo 0; fi
}
# NCCL errors and stalls: the binary's own non-blocking communicator and watchdog end the job
# (--comm-timeout); NCCL_ASYNC_ERROR_HANDLING is PyTorch's variable, which NCCL never reads.

# launch_mpirun ARGS...: runs "mpirun ARGS..." and returns its status. SIGTERM, SIGINT (Ctrl-C)
# or SIGHUP to this script becomes SIGUSR1 to mpirun, which forwards it to every rank at once:
# the ranks finish the step, checkpoint, write RESUMABLE and exit 0, and so do mpirun and this
# script. Open MPI 4.1's mpirun, signalled itself, exits 1 whatever the ranks do, and passes
# SIGTERM on only after odls_base_sigkill_timeout seconds (1) with SIGKILL as long after: too
# little for a large checkpoint (README, "Checkpoints and resume"). So mpirun runs in its own
# process group, where the terminal's Ctrl-C does not reach it, reading stdin from /dev/null (a
# background group must not read the terminal; the ranks never read stdin). A second signal
# aborts: SIGUSR2 to mpirun, which forwards it to every rank at once, and SIGUSR2 (not handled
# by vgg_dist) ends each rank before it can checkpoint; mpirun then ends the job. A signal that
# comes before mpirun's pid is known is kept and forwarded once it is; if this script exits for
# any reason while mpirun lives (set -e, an error), mpirun is ended with it, not orphaned.
#
# With LAUNCH_GRACE=S set (multi_node.sh), mpirun's stderr passes through launch_watch, which
# ends mpirun S seconds after the job's first error if it has not ended by then, and names the
# ranks of a node mpirun lost (from LAUNCH_MAP, lines "node rank rank...", when set).
launch_mpirun() {
  LAUNCH_PID= LAUNCH_SIGNALS=0 LAUNCH_PENDING= LAUNCH_TMP=
  trap 'launch_forward INT' INT
  trap 'launch_forward TERM' TERM
  trap 'launch_forward HUP' HUP
  trap 'launch_orphan' EXIT
  if [ -n "${LAUNCH_GRACE:-}" ]; then
    LAUNCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/vgg_launch_XXXXXX")
    printf '%s\n' "${LAUNCH_MAP:-}" > "$LAUNCH_TMP/map"
  fi
  set -m # job control: the next background job gets its own process group
  if [ -n "$LAUNCH_TMP" ]; then
    mpirun "$@" < /dev/null 2> >(launch_watch "$LAUNCH_TMP" "$LAUNCH_GRACE") &
  else
    mpirun "$@" < /dev/null &
  fi
  LAUNCH_PID=$!
  [ -z "$LAUNCH_TMP" ] || echo "$LAUNCH_PID" > "$LAUNCH_TMP/pid"
  set +m
  trap '' PIPE # a message to a closed stderr fails, it does not end this script (mpirun keeps the default)
  if [ -n "$LAUNCH_PENDING" ]; then # a signal came while mpirun was being started
    LAUNCH_SIGNALS=0
    launch_forward "$LAUNCH_PENDING"
  fi
  local rc=0 status seen got=0
  while :; do
    seen=$LAUNCH_SIGNALS
    status=0
    wait "$LAUNCH_PID" || status=$?
    # 127: a signal came just after mpirun's status was collected, which is the one to keep.
    [ "$got" = 1 ] && [ "$status" -eq 127 ] && break
    rc=$status got=1
    [ "$LAUNCH_SIGNALS" -ne "$seen" ] || break # not a wait cut short by a trapped signal
  done
  return "$rc"
}
# launch_forward NAME: the signal NAME reached this script. The signal to mpirun goes first: the
# message after it may fail (stderr a pipe whose reader the same Ctrl-C ended, a hung-up
# terminal), which must not keep mpirun from hearing it, nor end this script.
launch_forward() {
  if [ -z "$LAUNCH_PID" ]; then
    LAUNCH_PENDING=$1
    return
  fi
  LAUNCH_SIGNALS=$((LAUNCH_SIGNALS + 1))
  if [ "$LAUNCH_SIGNALS" -eq 1 ]; then
    kill -USR1 "$LAUNCH_PID" 2> /dev/null || true
    echo "launch: SIG$1: the ranks stop after this step with a checkpoint (SIGUSR1 to mpirun);" \
      "SIG$1 again aborts at once, without one" >&2 || true
  else
    kill -USR2 "$LAUNCH_PID" 2> /dev/null || true
    echo "launch: SIG$1 again: aborting (SIGUSR2 to the ranks, no checkpoint)" >&2 || true
  fi
}
launch_orphan() { # EXIT trap: never leave mpirun (in its own process group) behind
  [ -n "$LAUNCH_PID" ] && kill -0 "$LAUNCH_PID" 2> /dev/null && kill -TERM "$LAUNCH_PID" 2> /dev/null
  [ -n "$LAUNCH_TMP" ] && rm -rf "$LAUNCH_TMP"
  return 0
}
# launch_watch DIR GRACE: mpirun's stderr, line by line, to this script's stderr. A rank that
# ends the job (MPI_Abort) asks mpirun to end every rank, and mpirun waits until every node's
# daemon has confirmed it: a daemon cut off by the network never does, and Open MPI 4.1 then
# waits for TCP to give up on it (about 15 minutes). So mpirun's first line about an abort or a
# lost daemon arms a timer: GRACE seconds later, mpirun (pid in DIR/pid) still running is ended
# (SIGKILL). An error the ranks agree on and exit from together (a failed checkpoint write: one
# "vgg_dist: error" line, then every rank finalises) arms nothing: that teardown can take longer
# on GPUs, and its exit status is the one to keep.
# When mpirun loses a node's daemon its message names the node; the line added here names the
# ranks that ran there (DIR/map). It ignores the signals launch_forward handles (Ctrl-C must not
# end it: mpirun would die of SIGPIPE writing to it) and a closed stderr.
launch_watch() {
  local dir=$1 grace=$2 line node= armed=
  trap '' INT TERM HUP PIPE
  while IFS= read -r line; do
    printf '%s\n' "$line" >&2 2> /dev/null
    [[ $line =~ Remote\ daemon:.*\ on\ node\ ([^[:space:]]+) ]] && node=${BASH_REMATCH[1]}
    if [ -n "$node" ] && [[ $line == ---* ]]; then # after the message's box
      echo "launch: node $node stopped answering mpirun; rank(s) on it:" \
        "$(awk -v n="$node" '$1 == n { $1 = ""; print substr($0, 2) }' "$dir/map" 2> /dev/null)" >&2 2> /dev/null
      node=
    fi
    [ -n "$armed" ] && continue
    case $line in
      *"MPI_ABORT was invoked"* | *"lost communication with a remote daemon"*) ;;
      *) continue ;;
    esac
    armed=1
    (
      sleep "$grace"
      pid=$(cat "$dir/pid" 2> /dev/null) || exit 0 # the launcher is gone: so is mpirun
      [ "$(cat "/proc/$pid/comm" 2> /dev/null)" = mpirun ] || exit 0
      echo "launch: mpirun still runs ${grace} s after the job's first error: it waits for a" \
        "node it cannot reach (see the errors above); ending it" >&2 2> /dev/null
      kill -KILL "$pid" 2> /dev/null # SIGTERM in the middle of its abort crashes it (4.1)
    ) &
  done
}
