#!/usr/bin/env bash
# test_slurm.sh - launch/slurm.sbatch under a real Slurm (Debian 12's 22.05), not a mock: a
# one-node cluster started here, the time-limit warning delivered as Slurm delivers it, the job
# requeued by the script, resumed from the checkpoint and finished with the same parameters as
# an uninterrupted run; the requeue cap; a finished run leaving no marker.
# usage: tests/test_slurm.sh ./vgg_dist     (BUILD names the build dir holding gen_cifar)
# The warning comes once by scancel --signal=USR1 mid-run (as slurmctld delivers the script's
# --signal=USR1@120: to the job's steps, not the batch shell), and once from the directive
# itself under a 1-minute limit. Needs root (it starts munged, slurmctld and slurmd); apt-get
# installs munge, slurmctld, slurmd and slurm-client when missing. Everything it starts lives
# under one temp dir: a munge key and socket of its own, a slurm.conf (SLURM_CONF, free ports,
# proctrack/linuxproc, task/none, no cgroups), state, spool and logs; it never touches a Slurm
# or munge it did not start and stops only the processes it started, by pid, also on failure.
# Where Slurm cannot run it prints "skip slurm: " and the error. About 50 s on 2 cores: 2 s for
# the cluster, 6 s for the uninterrupted run, 11 s for the warned one (the requeue delay is
# cred_expire=5 + 1 s), about 30 s waiting for slurmctld's time-limit pass.
# Prints "N passed, N failed" last.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tests/check.sh"
suite_tools "${1:-}"
SCRIPT="$ROOT/launch/slurm.sbatch"
t_start=$(date +%s)
T=
pids=() # the daemons this test started, newest last
cleanup() {
  [ -n "$T" ] || return 0
  if [ -n "${CONF:-}" ] && [ ${#pids[@]} -gt 0 ]; then
    SLURM_CONF=$CONF scancel --full --quiet --user=root 2> /dev/null
    for _ in $(seq 1 20); do
      [ -z "$(SLURM_CONF=$CONF squeue -h -o %i 2> /dev/null | head -n 1)" ] && break
      sleep 0.5
    done
  fi
  local i p
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do # slurmd, slurmctld, then munged
    p=${pids[i]}
    kill -TERM "$p" 2> /dev/null || continue
    for _ in $(seq 1 40); do kill -0 "$p" 2> /dev/null || break; sleep 0.25; done
    kill -KILL "$p" 2> /dev/null
    wait "$p" 2> /dev/null
  done
  pids=()
  # Whatever our cluster started carries VGG_SLURM_TEST=$T in its environment (the daemons and
  # the jobs submitted here); nothing should be left, but a leftover would hold the temp dir.
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = $$ ] && continue
    if { tr '\0' '\n' < "/proc/$p/environ"; } 2> /dev/null | grep -qxF "VGG_SLURM_TEST=$T"; then
      echo "   cleanup: killing leftover pid $p ($(cat "/proc/$p/comm" 2> /dev/null))"
      kill -KILL "$p" 2> /dev/null
    fi
  done
  rm -rf "$T"
  T=
}
finish() {
  cleanup
  echo "   $(($(date +%s) - t_start)) s"
  summary
  exit
}
skip() {
  echo "skip slurm: $*"
  finish
}
trap cleanup EXIT
trap 'bad "interrupted"; finish' INT TERM

# ---- what it needs: root, the packages ----
[ "$(id -u)" -eq 0 ] || skip "needs root to start munged, slurmctld and slurmd (uid $(id -u))"
missing=0
for c in munged munge slurmctld slurmd sbatch srun scontrol squeue scancel sinfo; do
  command -v "$c" > /dev/null 2>&1 || missing=1
done
if [ $missing -eq 1 ]; then
  command -v apt-get > /dev/null 2>&1 || skip "Slurm and munge are missing and there is no apt-get"
  echo "   installing munge slurmctld slurmd slurm-client with apt-get"
  pkgs=(munge slurmctld slurmd slurm-client)
  apt_log=$(mktemp)
  apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >> "$apt_log" 2>&1
  }
  if ! apt_install && ! { apt-get update -q >> "$apt_log" 2>&1 && apt_install; }; then
    msg=$(grep -E '^(E|W):' "$apt_log" | tail -n 2 | tr '\n' ' ')
    rm -f "$apt_log"
    skip "apt-get install ${pkgs[*]} failed: ${msg:-see apt-get}"
  fi
  rm -f "$apt_log"
fi

# ---- a one-node cluster of our own ----
T=$(mktemp -d /tmp/vgg_slurm_XXXXXX)
chmod 755 "$T" # munged wants its socket's directory searchable by all
mkdir -p "$T/munge" "$T/run" "$T/state" "$T/spool" "$T/log"
chmod 700 "$T/munge"
head -c 1024 /dev/urandom > "$T/munge/munge.key"
chmod 400 "$T/munge/munge.key"
SOCK=$T/run/munge.socket
VGG_SLURM_TEST=$T munged -F --key-file="$T/munge/munge.key" --socket="$SOCK" \
  --pid-file="$T/run/munged.pid" --seed-file="$T/munge/seed" --log-file="$T/log/munged.log" \
  > "$T/log/munged.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 40); do [ -S "$SOCK" ] && break; sleep 0.25; done
munge -S "$SOCK" -n 2> "$T/log/munge.err" | unmunge -S "$SOCK" > /dev/null 2>> "$T/log/munge.err" ||
  skip "munged does not work: $(cat "$T/log/munged.out" "$T/log/munge.err" | tail -n 2 | tr '\n' ' ')"

read -r port_ctld port_d < <("$PY" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("", 0))
print(*[x.getsockname()[1] for x in s])')
HOST=$(hostname -s)
CPUS=$(nproc)
[ "$CPUS" -lt 2 ] && CPUS=2 # two ranks; config_overrides lets slurmd take the conf's word
CONF=$T/slurm.conf
# sched_interval=1 and cred_expire=5: a requeued job waits cred_expire + 1 s (Reason=BeginTime)
# and then a scheduling pass; the defaults (120 s, 60 s) would make this test take minutes.
cat > "$CONF" << EOF
ClusterName=vggtest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$port_ctld
SlurmdPort=$port_d
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK,cred_expire=5
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/run/slurmctld.pid
SlurmdPidFile=$T/run/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
PlugStackConfig=$T/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmdParameters=config_overrides
MailProg=/bin/true
ReturnToService=2
KillWait=5
MinJobAge=600
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
: > "$T/plugstack.conf"
export SLURM_CONF=$CONF
VGG_SLURM_TEST=$T slurmctld -D -f "$CONF" > "$T/log/slurmctld.out" 2>&1 &
pids+=($!)
VGG_SLURM_TEST=$T slurmd -D -f "$CONF" -N "$HOST" > "$T/log/slurmd.out" 2>&1 &
pids+=($!)
state=
for _ in $(seq 1 60); do
  state=$(sinfo -h -n "$HOST" -o %T 2> /dev/null)
  [ "$state" = idle ] && break
  sleep 0.5
done
if [ "$state" != idle ]; then
  why=$(cat "$T/log/slurmctld.out" "$T/log/slurmd.out" 2> /dev/null | grep -Ei 'error|fatal' | tail -n 3 | tr '\n' ' ')
  skip "the node did not become idle (state '$state'): ${why:-$(sinfo 2>&1 | tail -n 1)}"
fi
echo "   cluster up: slurmctld :$port_ctld, slurmd :$port_d, $CPUS CPUs, $(sinfo -V)" \
     "($(($(date +%s) - t_start)) s)"
srun --mpi=list > "$T/mpi.list" 2>&1
check "Slurm offers --mpi=pmix ($(grep -v 'types are' "$T/mpi.list" | tr -s '\n\t ' ' '))" \
  grep -qx '[[:space:]]*pmix' "$T/mpi.list"

# ---- the batch script, with the real cluster's sizes overridden on sbatch's command line ----
"$GEN" "$T/data" 100 200 3 > /dev/null || { bad "cannot generate data"; finish; }
# 400 train / 100 validation images, global batch 32: 13 steps an epoch, 20 epochs in about 3 s,
# time for the signal to arrive mid-run; --log-every 1 writes a metrics line every step.
# The plain network without warmup: on these generated images batch norm learns so fast that
# early stopping would end the run before its 20 epochs, which the checks below count on.
SMALL=(--data "$T/data" --model vgg11 --width 0.125 --image-size 32 --batch 32 --val-size 100
       --eval-batch 50 --log-every 1 --device cpu --seed 5 --epochs 20 --batchnorm 0
       --warmup-epochs 0)
submit() { # submit NAME MINUTES [VAR=VALUE...] [-- OPTIONS]: sbatch the script for 2 ranks on one
  local name=$1 minutes=$2 # node, --time MINUTES, vgg_dist OPTIONS after SMALL; prints the job id
  shift 2
  local vars=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do vars+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  (cd "$T" && env VGG_SLURM_TEST="$T" VGG_BIN="$BIN" CKPT_DIR="$T/$name" "${vars[@]}" \
    sbatch --parsable --job-name="$name" --nodes=1 --ntasks-per-node=2 --gpus-per-node=0 \
      --cpus-per-task=1 --time="$minutes" --output="$T/$name.out" "$SCRIPT" "${SMALL[@]}" \
      --metrics "$T/$name.jsonl" "$@")
}
field() { scontrol show job "$1" 2> /dev/null | grep -o "\b$2=[^ ]*" | head -n 1 | cut -d= -f2; }
wait_end() { # wait_end JOB SECONDS: prints the final state (or "still STATE")
  local st='' t0=$SECONDS
  for _ in $(seq 1 $(($2 * 4))); do
    st=$(field "$1" JobState)
    case $st in
      COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE)
        echo "$st"
        echo "   job $1 ($(field "$1" JobName)): $st after $((SECONDS - t0)) s" >&2
        return ;;
    esac
    sleep 0.25
  done
  echo "still ${st:-unknown}"
}
signal_when_training() { # as --signal=USR1@120 does: SIGUSR1 to the job's steps, not the batch shell
  for _ in $(seq 1 400); do grep -q '"step"' "$T/$2.jsonl" 2> /dev/null && break; sleep 0.05; done
  scancel --signal=USR1 "$1"
}
show_log() { sed 's/^/   | /' "$T/$1.out" | tail -n "${2:-15}"; }

# An uninterrupted run: finishes, leaves no marker, is not requeued.
job=$(submit full 10) || { bad "sbatch refused the script: $job"; finish; }
st=$(wait_end "$job" 60)
check "an uninterrupted run through srun --mpi=pmix: 2 ranks, ends $st, no requeue, no marker" \
  bash -c "[ $st = COMPLETED ] && [ '$(field "$job" Restarts)' = 0 ] && [ ! -e '$T/full/RESUMABLE' ] &&
           grep -q '2 ranks' '$T/full.out' && grep -q 'vgg_dist finished' '$T/full.out' &&
           [ -f '$T/full/ckpt_e0020.bin' ]" || show_log full

# The time-limit warning mid-run: checkpoint, requeue, resume, finish on the same parameters.
# An epoch here takes about 0.1 s, less than --stop-check's default 0.25 s between the ranks'
# stop agreements: --stop-check 0 (an agreement after every step) stops at the step the signal
# reaches, which is mid-epoch unless it is an epoch's last (1 in 13: the epoch is finished
# first, and its checkpoint is the one resumed). Either way the run stops resumably; test_mpi
# checks the mid-epoch position itself.
job=$(submit warned 10 -- --stop-check 0)
signal_when_training "$job" warned
st=$(wait_end "$job" 90)
marker=$(sed -n 's/.*stopped resumably (\(.*\)): requeueing.*/\1/p' "$T/warned.out" | head -n 1)
ckpt=${marker%% *}
echo "   marker: '$marker'; job ended $st after $(field "$job" Restarts) requeue(s)"
check "SIGUSR1 to the steps: the ranks checkpoint, the script requeues the job" \
  bash -c "grep -qE 'stopping (after step|at the end of epoch)' '$T/warned.out' &&
           [ '${marker#* }' = 'signal 10' ] &&
           [ '$(field "$job" Restarts)' = 1 ]" || show_log warned 30
check "the requeued job resumes from that checkpoint ($ckpt)" \
  grep -q "resumed from .*/${ckpt:-none}" "$T/warned.out"
check "the requeued job finishes: $st, marker removed" \
  bash -c "[ $st = COMPLETED ] && [ ! -e '$T/warned/RESUMABLE' ] && grep -q 'vgg_dist finished' '$T/warned.out'"
check "stop, requeue and resume land on the uninterrupted run's parameters (bitwise)" \
  "$PY" "$TOOL" compare "$T/warned/ckpt_e0020.bin" "$T/full/ckpt_e0020.bin"

# The script's own --signal=USR1@120 under a 1-minute limit: slurmctld sends the warning at its
# first time-limit pass (every 30 s) to the ranks, not the batch shell, which survives to
# decide; and the cap: VGG_MAX_REQUEUES=0 stops there, says so, fails the job, keeps the marker.
# The signal lands on any step: mid-epoch (a mid-epoch checkpoint) or an epoch's last (1 in 13:
# the epoch is finished first), and either way the run stops resumably.
job=$(submit capped 1 VGG_MAX_REQUEUES=0 -- --epochs 100000 --early-stop 0 --log-every 13)
st=$(wait_end "$job" 90)
check "the script's --signal=USR1@120 reaches the ranks before the limit; the batch shell survives" \
  bash -c "grep -qE 'stopping (after step|at the end of epoch)' '$T/capped.out' && grep -q ' signal 10\$' '$T/capped/RESUMABLE' &&
           grep -q 'stopped resumably' '$T/capped.out'" || show_log capped
check "past VGG_MAX_REQUEUES: not requeued, says so, job $st" \
  bash -c "[ $st = FAILED ] && [ '$(field "$job" Restarts)' = 0 ] &&
           grep -q 'VGG_MAX_REQUEUES=0): not requeued' '$T/capped.out'" || show_log capped

out=$(VGG_BIN="$BIN" bash "$SCRIPT" --resume x 2>&1)
rc=$?
if [ $rc -eq 2 ] && [[ $out == *"--resume is refused"* ]]; then ok "--resume among the options is refused"
else bad "--resume among the options is refused (exit $rc: $out)"; fi
finish
