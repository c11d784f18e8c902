#!/usr/bin/env bash
# measure_cpu_scaling.sh - the measurements that validate scripts/scaling_model.py on this CPU
# machine: the step time of one rank at the per-rank batch (compute alone: one rank reduces
# nothing), the step time of 2 ranks at twice that global batch, and the MPI all-reduce of the
# gradient (build/allreduce_bench). One thread per rank in both runs (--threads 1,
# OMP_NUM_THREADS=1), so a rank of the 2-rank run does the 1-rank run's work on one core.
# The 1- and 2-rank runs alternate ROUNDS times (the machine is shared: medians are reported).
# Writes OUT (default scaling_cpu.json), the shape `scaling_model.py --from-json` reads.
# With HOSTFILE and IFACE set, the 2-rank runs and the all-reduce go to those hosts instead, over
# TCP only on IFACE (btl tcp,self), one rank per host with "slots=1" lines: the 2-node case,
# e.g. on two nodes of tests/netns_cluster.sh ("up DIR 2 1", with its agent; see README, Scaling).
#   usage: scripts/measure_cpu_scaling.sh [OUT]   (env: MODEL=vgg16 WIDTH=0.25 SIZE=32
#          BATCH=32 (per rank) ROUNDS=3 TRAIN=400 (images per generated file), BIN=./vgg_dist,
#          SYNC_BN=0 (vgg_dist --sync-bn, its default: the gradient all-reduce is the only communication))
set -euo pipefail
out=${1:-scaling_cpu.json}
MODEL=${MODEL:-vgg16} WIDTH=${WIDTH:-0.25} SIZE=${SIZE:-32} BATCH=${BATCH:-32} ROUNDS=${ROUNDS:-3}
TRAIN=${TRAIN:-400} BIN=${BIN:-./vgg_dist} BUILD=${BUILD:-build} SYNC_BN=${SYNC_BN:-0}
for f in "$BIN" "$BUILD/gen_cifar" "$BUILD/allreduce_bench"; do
  [ -x "$f" ] || { echo "measure_cpu_scaling: $f missing: make && make $BUILD/gen_cifar $BUILD/allreduce_bench" >&2; exit 1; }
done
export OMP_NUM_THREADS=1 OMPI_MCA_rmaps_base_oversubscribe=1
MPIRUN=(mpirun --allow-run-as-root --oversubscribe)
MPI2=("${MPIRUN[@]}") transport="one node (shared memory)" # the 2-rank runs
if [ -n "${HOSTFILE:-}" ]; then
  : "${IFACE:?measure_cpu_scaling: HOSTFILE needs IFACE (the interface between the hosts)}"
  # --bind-to none: Open MPI binds a node's first rank to its core 0, and nodes that are
  # namespaces of one machine share its cores: both ranks on core 0 (measured: 2.3 ms for a
  # 4 KB all-reduce and twice the compute, against 60 us and no slowdown unbound).
  MPI2+=(--hostfile "$HOSTFILE" --mca btl tcp,self --mca btl_tcp_if_include "$IFACE"
         --mca oob_tcp_if_include "$IFACE" -x OMP_NUM_THREADS --bind-to none)
  transport="hosts of $HOSTFILE, TCP on $IFACE"
fi
T=$(mktemp -d /tmp/vgg_scaling_XXXXXX)
trap 'rm -rf "$T"' EXIT
"$BUILD/gen_cifar" "$T/data" "$TRAIN" 200 3 > /dev/null
n_params=$("$BIN" --print-model --model "$MODEL" --width "$WIDTH" --image-size "$SIZE" |
  /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["n_params"])')
RUN=(--data "$T/data" --model "$MODEL" --width "$WIDTH" --image-size "$SIZE" --val-size 100
     --device cpu --threads 1 --epochs 1 --log-every 1000 --seed 1 --sync-bn "$SYNC_BN")
step_ms() { # step_ms NP: one epoch on NP ranks (global batch NP x BATCH); ms per step from img/s
  local run=("${MPIRUN[@]}")
  [ "$1" -gt 1 ] && run=("${MPI2[@]}")
  "${run[@]}" -np "$1" "$BIN" "${RUN[@]}" --batch $(($1 * BATCH)) --metrics "$T/m$1.jsonl" > "$T/log$1" 2>&1 ||
    { echo "measure_cpu_scaling: the $1-rank run failed:" >&2; tail -n 3 "$T/log$1" >&2; exit 1; }
  /usr/bin/python3 -c 'import json, sys
e = [json.loads(l) for l in open(sys.argv[1]) if "\"epoch\"" in l][-1]
print(1e3 * int(sys.argv[2]) / e["images_per_s"])' "$T/m$1.jsonl" $(($1 * BATCH))
}
one=() two=()
for r in $(seq 1 "$ROUNDS"); do
  one+=($(step_ms 1))
  two+=($(step_ms 2))
  echo "round $r: 1 rank ${one[-1]} ms/step, 2 ranks ${two[-1]} ms/step" >&2
done
"${MPI2[@]}" -np 2 "$BUILD/allreduce_bench" --iters 20 --max-bytes $((n_params * 8)) \
  --total-bytes $((n_params * 4)) > "$T/ar.jsonl"
/usr/bin/python3 - "$out" "$T/ar.jsonl" "$MODEL" "$WIDTH" "$SIZE" "$BATCH" "$n_params" "${one[*]}" "${two[*]}" "$SYNC_BN" "$transport" << 'PY'
import json, statistics, sys
out, ar, model, width, size, batch, n_params, one, two, sbn, transport = sys.argv[1:]
one, two = [float(x) for x in one.split()], [float(x) for x in two.split()]
rows = [json.loads(l) for l in open(ar)]
doc = {
    "what": "measured by scripts/measure_cpu_scaling.sh (CPU backend, 1 thread per rank; 2 ranks on %s)" % transport,
    "model": model, "width": float(width), "image_size": int(size), "n_params": int(n_params),
    "batch_per_rank": int(batch), "grad_dtype": "fp32", "sync_bn": int(sbn),
    "two_ranks_on": transport,
    "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
    "compute_ms": statistics.median(one), "compute_ms_runs": one,
    "measured_step_ms": {"2": statistics.median(two)}, "measured_step_ms_runs": {"2": two},
    "allreduce": [r for r in rows if r["buckets"] == 1],
    "allreduce_bucketed": [r for r in rows if r["buckets"] > 1 or r["bytes"] == int(n_params) * 4],
}
json.dump(doc, open(out, "w"), indent=1)
print("wrote", out)
PY
