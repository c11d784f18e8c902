#!/usr/bin/env bash
# test_multinode.sh - several nodes for real, on one machine: 3 nodes made by
# tests/netns_cluster.sh (network + UTS + mount namespaces on a bridge, 2 slots each, a disk of
# their own at $D/local), Open MPI's rsh launcher pointed at tests/netns_agent.sh, TCP only
# (btl tcp,self) on the cluster's interface (IFACE), every job through launch/multi_node.sh:
# - 2 nodes x 2 ranks follow the -np 1 trajectory (validation losses, checkpoint);
# - the start-up line of each node names its ranks with the right local rank and local size;
# - checkpoints are written by rank 0 only, on its node's disk; a run stopped on 2 nodes resumes
#   on 1, one stopped on 1 resumes on 3;
# - a node dies (every process in it SIGKILLed): the job ends within 30 s naming node and ranks;
# - a node's link goes down mid-epoch: the job ends within --comm-timeout plus a margin, naming
#   the ranks that stopped answering and their node; with the link back, --resume auto goes on.
# Without root, `ip`, or the kernel's consent (a container without CAP_NET_ADMIN) it prints
# "skip multinode: REASON" and passes nothing, fails nothing. About 30 s on 2 cores.
# usage: tests/test_multinode.sh ./vgg_dist     (BUILD names the build dir holding gen_cifar)
# Prints "N passed, N failed" last.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tests/check.sh"
suite_tools "${1:-}"
suite_mpi
CLUSTER="$ROOT/tests/netns_cluster.sh"
t_start=$(date +%s)
T=$(mktemp -d /tmp/vgg_multinode_XXXXXX)
D=$T/cluster
cleanup() { # the cluster first (every process in its nodes, then its links), then the files
  "$CLUSTER" down "$D"
  [ -n "${KEEP:-}" ] && echo "   kept $T" || rm -rf "$T"
}
finish() {
  cleanup
  trap - EXIT
  echo "   $(($(date +%s) - t_start)) s"
  summary
  exit
}
trap cleanup EXIT
trap 'bad "interrupted"; finish' INT TERM

out=$("$CLUSTER" up "$D" 3 2>&1)
rc=$?
if [ $rc -eq 77 ]; then echo "skip multinode: ${out#skip: }"; finish; fi
[ $rc -eq 0 ] || { bad "netns_cluster.sh up: $out"; finish; }
P=$(cat "$D/prefix")
echo "   nodes ${P}n1..${P}n3 on $(cat "$D/subnet"), interface $P"
head -2 "$D/hostfile" > "$T/h2"
head -1 "$D/hostfile" > "$T/h1"
# 3 nodes, 4 ranks (32 images a batch): 2 on node 1, one on each of the others.
printf '%s slots=2\n%s slots=1\n%s slots=1\n' ${P}n1 ${P}n2 ${P}n3 > "$T/h3"
export NETNS_CLUSTER_DIR=$D OMPI_MCA_plm_rsh_agent="$ROOT/tests/netns_agent.sh" OMPI_MCA_btl=tcp,self
mn() { # mn HOSTFILE NP ARGS...: the launcher on the cluster's nodes (at most 120 s)
  local h=$1 np=$2
  shift 2
  HOSTFILE=$h NP=$np IFACE=$P timeout 120 "$ROOT/launch/multi_node.sh" "$@"
}

"$GEN" "$T/data" 100 200 3 || { bad "cannot generate data"; finish; }
# test_mpi.sh's small model at its lr 1e-4, global batch 32 (the bounds below are that suite's,
# WS_BOUNDS; see there why lr 1e-4).
SMALL=(--data "$T/data" --model vgg11 --width 0.125 --image-size 32 --batch 32 --val-size 100
       --eval-batch 50 --log-every 5 --device cpu --seed 5 --batchnorm 0 --warmup-epochs 0
       --lr 1e-4)
L=$D/local # each node's own disk, inside the nodes; an empty directory outside

# ---- 2 nodes x 2 ranks against one process ----
timeout 120 "${MPIRUN[@]}" -np 1 "$BIN" "${SMALL[@]}" --epochs 2 --checkpoint-dir "$T/ref" \
  --metrics "$T/ref.jsonl" > "$T/ref.log" 2>&1 || bad "the -np 1 run (see log)"
mn "$T/h2" 4 "${SMALL[@]}" --epochs 2 --checkpoint-dir "$L/ck" --metrics "$T/n22.jsonl" \
  > "$T/n22.log" 2>&1 || { bad "the 2 x 2 run"; tail -20 "$T/n22.log"; }
check "2 nodes x 2 ranks: the validation losses of -np 1" "$PY" - "$T/ref.jsonl" "$T/n22.jsonl" <<'PY'
import json, sys
def losses(p): return [e["val_loss"] for e in map(json.loads, open(p)) if e["event"] == "epoch"]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
print("   val losses", a, b)
sys.exit(0 if len(a) == 2 and len(b) == 2 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)) else 1)
PY
check "2 nodes x 2 ranks: the parameters and Adam state of -np 1 (up to summation order)" \
  "$PY" "$TOOL" compare "$D/disk/1/ck/ckpt_e0002.bin" "$T/ref/ckpt_e0002.bin" 1e-4 ADAM_M=1e-3 ADAM_V=1e-3
# One line per node from its local rank 0: every rank once, on the node the hostfile's order
# puts it (slots 2 each, --map-by slot), local ranks 0 and 1 of 2.
nodes_ok() { # nodes_ok LOG NODE:RANK,RANK...: exactly these node lines, in any order
  local log=$1 want got
  shift
  want=$(for spec in "$@"; do
    local n=${spec%%:*} i line rs
    IFS=, read -r -a rs <<< "${spec#*:}"
    line="node $n: ${#rs[@]} rank$([ ${#rs[@]} -gt 1 ] && echo s):"
    for i in "${!rs[@]}"; do
      line+="$([ $i -gt 0 ] && echo ,) rank ${rs[i]} local $i/${#rs[@]}"
    done
    echo "$line"
  done | sort)
  got=$(grep '^node ' "$log" | sort)
  [ "$want" = "$got" ] || { echo "   want: $want"; echo "   got:  $got"; return 1; }
}
check "local rank and local size per node: one line for each node, each right" \
  nodes_ok "$T/n22.log" "${P}n1:0,1" "${P}n2:2,3"
check "checkpoints by rank 0 only, on its node's disk (none on node 2, none outside)" bash -c \
  "[ -f '$D/disk/1/ck/ckpt_e0002.bin' ] && [ ! -e '$D/disk/2/ck' ] && [ -z \"\$(ls -A '$L')\" ]"

# ---- resume on another node count: 2 nodes -> 1 node, 1 node -> 3 nodes ----
mn "$T/h2" 4 "${SMALL[@]}" --epochs 2 --checkpoint-dir "$L/rs21" --max-steps 5 > "$T/rs21a.log" 2>&1
mn "$T/h1" 2 "${SMALL[@]}" --epochs 2 --checkpoint-dir "$L/rs21" --resume auto > "$T/rs21b.log" 2>&1
check "stopped on 2 nodes, resumed on 1: the trajectory of -np 1" bash -c \
  "grep -q 'resumed from .*ckpt_e0000_b000005.bin' '$T/rs21b.log' && grep -q '^node ${P}n1: 2 ranks' '$T/rs21b.log' && [ \$(grep -c '^node ' '$T/rs21b.log') -eq 1 ] &&
   '$PY' '$TOOL' compare '$D/disk/1/rs21/ckpt_e0002.bin' '$T/ref/ckpt_e0002.bin' 1e-4 ADAM_M=1e-3 ADAM_V=1e-3"
mn "$T/h1" 2 "${SMALL[@]}" --epochs 2 --checkpoint-dir "$L/rs13" --max-steps 5 > "$T/rs13a.log" 2>&1
mn "$T/h3" 4 "${SMALL[@]}" --epochs 2 --checkpoint-dir "$L/rs13" --resume auto > "$T/rs13b.log" 2>&1
check "stopped on 1 node, resumed on 3 (2 + 1 + 1 ranks): the trajectory of -np 1" bash -c \
  "grep -q 'resumed from .*ckpt_e0000_b000005.bin' '$T/rs13b.log' &&
   '$PY' '$TOOL' compare '$D/disk/1/rs13/ckpt_e0002.bin' '$T/ref/ckpt_e0002.bin' 1e-4 ADAM_M=1e-3 ADAM_V=1e-3"
check "3 nodes: the three node lines (local sizes 2, 1, 1)" nodes_ok "$T/rs13b.log" "${P}n1:0,1" "${P}n2:2" "${P}n3:3"

# ---- a node dies, a node is cut off ----
ranks_left() { # ranks_left I: the vgg_dist processes in node I
  local p
  for p in $("$CLUSTER" pids "$D" "$1"); do
    [ "$(cat "/proc/$p/comm" 2> /dev/null)" = vgg_dist ] && echo "$p"
  done
}
since() { echo "$(date +%s.%N) $1" | awk '{ printf "%.0f", $1 - $2 }'; }
# run_cut NAME HOW: a long 2-node run, --comm-timeout 5; once epoch 1's checkpoint is written,
# node 2 is killed (HOW=kill) or its link taken down (HOW=link). Sets took and gone (seconds
# from the cut to the launcher's exit, and until node 2 had no rank left), and rc.
run_cut() {
  local name=$1 how=$2 pid t0
  mn "$T/h2" 4 "${SMALL[@]}" --epochs 200 --comm-timeout 5 --checkpoint-dir "$L/$name" \
    > "$T/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do [ -f "$D/disk/1/$name/ckpt_e0001.bin" ] && break; sleep 0.1; done
  sleep 0.3 # into epoch 2
  t0=$(date +%s.%N)
  if [ "$how" = kill ]; then "$CLUSTER" kill "$D" 2; else "$CLUSTER" link "$D" 2 down; fi
  took= gone=
  for _ in $(seq 1 600); do
    [ -z "$gone" ] && [ -z "$(ranks_left 2)" ] && gone=$(since "$t0")
    [ -z "$took" ] && ! kill -0 $pid 2> /dev/null && took=$(since "$t0")
    [ -n "$gone" ] && [ -n "$took" ] && break
    sleep 0.1
  done
  if kill -0 $pid 2> /dev/null; then # the launcher hangs (a failure below): end it, and mpirun
    kill -KILL $pid $(pgrep -f -- "mpirun .*--hostfile $T/h2") 2> /dev/null
    took=${took:-999}
  fi
  wait $pid
  rc=$?
  gone=${gone:-999}
  echo "   $name: the job ended ${took} s after node 2's $how, exit $rc; node 2's last rank ended after ${gone} s"
}
run_cut death kill
check "a node dies: the job ends within 30 s, non-zero" bash -c "[ $rc -ne 0 ] && [ $took -le 30 ]"
check "a node dies: the message names the node and its ranks" \
  grep -q "^launch: node ${P}n2 stopped answering mpirun; rank(s) on it: 2 3$" "$T/death.log"
"$CLUSTER" kill "$D" 1 # nothing should be left; a leftover would confuse the next run
run_cut part link
check "a partition: the job ends within --comm-timeout 5 + 15 s, non-zero" \
  bash -c "[ $rc -ne 0 ] && [ $took -le 20 ]"
check "a partition: the message names the ranks that stopped answering and their node" grep -qE \
  "error \[rank [01] ${P}n1\] .*waited [0-9]+ s for .*: no answer within 2 s from rank\(s\) 2 3 on ${P}n2: stopped, dead or cut off" \
  "$T/part.log"
# Cut off from mpirun, node 2's ranks cannot have their MPI_Abort carried out: they end on their
# own 5 s later (comm_abort) instead of waiting in MPI_Abort (a minute and more in Open MPI 4.1).
check "a partition: the ranks cut off end on their own, within --comm-timeout 5 + 10 s" \
  bash -c "[ $gone -le 15 ]"
"$CLUSTER" link "$D" 2 up
last=$(ls "$D/disk/1/part" | grep -E '^ckpt_e[0-9]+\.bin$' | sort | tail -1)
mn "$T/h2" 4 "${SMALL[@]}" --epochs $((10#$(echo "$last" | tr -dc 0-9) + 1)) \
  --checkpoint-dir "$L/part" --resume auto > "$T/part2.log" 2>&1
check "the link back: --resume auto goes on from the last checkpoint ($last) and finishes" bash -c \
  "grep -q 'resumed from .*$last' '$T/part2.log' && grep -q '^test (best model' '$T/part2.log'"
finish
