#!/usr/bin/env python3
# bench.py - `make bench`: vgg_dist beside PyTorch doing the same work, on this machine, in one
# run, as ONE table: the same model (the layer table of `vgg_dist --print-model`), width, input
# size, global batch, Adam(1e-4, (0.9, 0.999), 1e-8, weight decay 1e-4), precision, with the data
# already in memory. Rows:
#   cpu-1p   one process, THREADS threads (default: all cores), VGG16 width 1 and width 0.25;
#   cpu-2r   2 ranks of 1 thread, VGG16 width 0.25, global batch 64: build/bench_step_mpi under
#            mpirun against DistributedDataParallel over gloo;
#   gpu      one GPU, VGG16 at GPU_SIZE (128), batch 64, bf16: bench_step --device cuda (CUDA
#            graphs) against PyTorch eager (channels_last, bf16 autocast) and torch.compile
#            (torch >= 2). Where no GPU is visible these print a skip line with the reason.
# then one line: the cost of batch norm's sums over 2 ranks (vgg_dist --sync-bn 1 against 0).
# Columns: img/s (median of WINDOWS timed windows after warm-up), vgg_dist / peer, model FLOP
# utilisation (GPU rows; training FLOPs per image from model_train_flops), peak memory (CPU: the
# largest process's peak RSS; GPU: device memory), and for 2 ranks the all-reduce time per step
# and how much of it backward hid (methods: scripts/torch_peer.py, tests/tools/bench_step.c).
# Writes build/bench/bench.md and bench.json (date, machine, library versions, every command).
#   scripts/bench.py [--build build] [--vgg-dist ./vgg_dist]
#   env: STEPS (10 per window set), WINDOWS (5), THREADS, ROUNDS (3, --sync-bn), GPU_SIZE (128),
#        PEAK_TFLOPS (the GPU's dense bf16 peak, when its name is not in PEAK_BF16 below),
#        BENCH_QUICK=1 (a smoke run: VGG11 width 0.125, batch 16, 2 steps: checks the plumbing,
#        its numbers mean nothing).
import datetime
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile

TORCH_PY = "/usr/bin/python3"  # Debian's python with torch (not necessarily the first on PATH)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}  # dense, SXM


def die(msg):
    sys.exit(f"bench.py: {msg}")


def env_int(name, default, lo):
    v = os.environ.get(name, str(default))
    if not v.isdigit() or int(v) < lo:
        die(f"{name}={v!r}: needs an integer >= {lo}")
    return int(v)


ROW_TIMEOUT_S = 1800  # a row that takes longer hangs (a dead peer process): one line, not forever


def sh(cmd, env=None):
    """Runs cmd (a list); its stdout, or one line naming the command and its last error line."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                           timeout=ROW_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        die(f"`{shlex.join(cmd)}` did not finish in {ROW_TIMEOUT_S} s")
    if r.returncode:
        tail = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
        die(f"`{shlex.join(cmd)}` failed (exit {r.returncode}): {tail}")
    return r.stdout


def json_line(out, cmd):
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    die(f"`{shlex.join(cmd)}` printed no JSON line")


def first_line(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return None


def header_version(path, keys):
    try:
        text = open(path).read()
    except OSError:
        return None
    vals = [re.search(rf"#define {k}\s+(\d+)", text) for k in keys]
    return ".".join(v.group(1) for v in vals) if all(vals) else None


def machine_info(gpu):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    torch_v = first_line([TORCH_PY, "-c", "import torch; print(torch.__version__)"])
    blas = first_line(["dpkg-query", "-W", "-f", "${Version}\\n", "libopenblas0-pthread"])
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    nvcc = first_line(["sh", "-c", f"{cuda_home}/bin/nvcc --version | grep release"])
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpu": cpu, "cores": os.cpu_count(), "load_avg_at_start": os.getloadavg()[0],
            "gpu": gpu or "none visible",
            "versions": {"torch": torch_v or "not installed", "OpenBLAS": blas or "unknown",
                         "Open MPI": (first_line(["mpirun", "--version"]) or "not installed").split(")")[-1].strip(),
                         "CUDA": nvcc.split("release")[-1].strip() if nvcc else "not installed",
                         "cuDNN": header_version("/usr/include/cudnn_version.h",
                                                 ["CUDNN_MAJOR", "CUDNN_MINOR", "CUDNN_PATCHLEVEL"])
                                  or header_version(f"{cuda_home}/include/cudnn_version.h",
                                                    ["CUDNN_MAJOR", "CUDNN_MINOR", "CUDNN_PATCHLEVEL"]) or "not found",
                         "NCCL": header_version("/usr/include/nccl.h", ["NCCL_MAJOR", "NCCL_MINOR", "NCCL_PATCH"])
                                 or header_version(f"{cuda_home}/include/nccl.h",
                                                   ["NCCL_MAJOR", "NCCL_MINOR", "NCCL_PATCH"]) or "not found"}}


def visible_gpu():
    """The first GPU's name, or None with the reason."""
    if not shutil.which("nvidia-smi"):
        return None, "no nvidia-smi: no GPU driver on this machine"
    names = first_line(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    return (names, None) if names else (None, "nvidia-smi lists no GPU")


def torch_has(expr):
    return subprocess.run([TORCH_PY, "-c", f"import torch, sys; sys.exit(0 if {expr} else 1)"],
                          capture_output=True).returncode == 0


class Bench:
    def __init__(self, build, vgg_dist):
        self.build, self.vgg_dist = build, os.path.realpath(vgg_dist)
        self.quick = os.environ.get("BENCH_QUICK") == "1"
        self.steps = 2 if self.quick else env_int("STEPS", 10, 1)
        self.windows = 1 if self.quick else env_int("WINDOWS", 5, 1)
        self.threads = env_int("THREADS", os.cpu_count(), 1)
        self.rounds = 1 if self.quick else env_int("ROUNDS", 3, 1)
        self.gpu_size = env_int("GPU_SIZE", 128, 32)
        self.model = ["--model", "vgg11"] if self.quick else ["--model", "vgg16"]
        self.have_torch = torch_has("True")
        self.rows, self.lines = [], []
        for f in ("bench_step", "bench_step_mpi"):
            if not os.access(f"{build}/{f}", os.X_OK):
                die(f"{build}/{f} is missing: run `make bench` (it builds it)")
        if not os.access(self.vgg_dist, os.X_OK):
            die(f"{vgg_dist} is not an executable vgg_dist")

    def common(self, width, size, batch):
        width = 0.125 if self.quick else width
        batch = 16 if self.quick else batch
        return [*self.model, "--width", str(width), "--size", str(size), "--batch", str(batch),
                "--steps", str(self.steps * self.windows), "--windows", str(self.windows),
                "--warmup", "1" if self.quick else "2"]

    def mpirun(self, n, threads):
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        return ["mpirun", *root, "--oversubscribe", "-np", str(n), "-x", f"OMP_NUM_THREADS={threads}"]

    def measure(self, cmd, env):
        print(f"  running: {' '.join(f'{k}={v}' for k, v in env.items())} {shlex.join(cmd)}", flush=True)
        return json_line(sh(cmd, env), cmd), " ".join([*(f"{k}={v}" for k, v in env.items()), shlex.join(cmd)])

    def row(self, name, ours, peer, skip=None):
        """ours/peer: (cmd, env) or None; peer may be a string (why there is none)."""
        r = {"row": name}
        if skip:
            r["skip"] = skip
            print(f"{name}: skipped ({skip})", flush=True)
            self.rows.append(r)
            return
        r["vgg_dist"], r["vgg_dist_cmd"] = self.measure(*ours)
        if isinstance(peer, str):
            r["peer_skip"] = peer
        else:
            r["peer"], r["peer_cmd"] = self.measure(*peer)
            r["ratio"] = round(r["vgg_dist"]["img_s"] / r["peer"]["img_s"], 3)
        self.rows.append(r)

    def torch_cmd(self, *args):
        return [TORCH_PY, "scripts/torch_peer.py", *args]

    def cpu_rows(self):
        env = {"OMP_NUM_THREADS": str(self.threads)}
        for width in (1, 0.25):
            c = self.common(width, 32, 64)
            self.row(f"CPU 1 process, {self.threads} threads",
                     ([f"{self.build}/bench_step", *c, "--threads", str(self.threads), "--json"], env),
                     (self.torch_cmd("--mode", "cpu", *c, "--threads", str(self.threads)), env)
                     if self.have_torch else "torch is not installed (apt-get install python3-torch)")
        c = self.common(0.25, 32, 64)
        self.row("CPU 2 ranks, 1 thread each",
                 ([*self.mpirun(2, 1), f"{self.build}/bench_step_mpi", *c, "--threads", "1", "--json"], {}),
                 (self.torch_cmd("--mode", "ddp", "--ranks", "2", *c, "--threads", "1"), {"OMP_NUM_THREADS": "1"})
                 if self.have_torch and torch_has("torch.distributed.is_gloo_available()")
                 else "torch with torch.distributed (gloo) is not installed")

    def gpu_rows(self, gpu, why):
        names = ["GPU bf16 vs PyTorch eager", "GPU bf16 vs torch.compile"]
        if not gpu:
            for n in names:
                self.row(n, None, None, skip=why)
            return
        c = self.common(1, self.gpu_size, 64)
        ours = ([f"{self.build}/bench_step", "--device", "cuda", "--precision", "bf16", *c, "--json"], {})
        if not self.have_torch or not torch_has("torch.cuda.is_available()"):
            self.row(names[0], ours, "torch without CUDA here")
            return
        self.row(names[0], ours, (self.torch_cmd("--mode", "gpu", *c), {}))
        if torch_has("hasattr(torch, 'compile')"):
            self.rows.append({**self.rows[-1], "row": names[1]})  # the same vgg_dist run
            r = self.rows[-1]
            r["peer"], r["peer_cmd"] = self.measure(self.torch_cmd("--mode", "gpu", "--compile", *c), {})
            r["ratio"] = round(r["vgg_dist"]["img_s"] / r["peer"]["img_s"], 3)
        else:
            self.row(names[1], None, None, skip="torch.compile needs torch >= 2 (installed: "
                     + (first_line([TORCH_PY, "-c", "import torch; print(torch.__version__)"]) or "?") + ")")

    def sync_bn_line(self):
        """One epoch of VGG16-BN (width 0.25, 32x32, global batch 256: 12 steps on 3,072 generated
        images) on 2 ranks of one thread, batch norm's statistics summed over the ranks (39 small
        all-reduces a step) and not, alternated ROUNDS times: the medians of the epoch's img/s."""
        with tempfile.TemporaryDirectory(prefix="vgg_bench_") as t:
            sh([f"{self.build}/gen_cifar", f"{t}/data", "660", "100"])
            run = [*self.mpirun(2, 1), self.vgg_dist, "--data", f"{t}/data", *self.model, "--width",
                   "0.125" if self.quick else "0.25", "--image-size", "32", "--batch", "256", "--epochs", "1",
                   "--val-size", "228", "--eval-batch", "128", "--device", "cpu", "--threads", "1",
                   "--log-every", "1000"]
            got = {1: [], 0: []}
            for _ in range(self.rounds):
                for s in (1, 0):
                    out = sh([*run, "--sync-bn", str(s)])
                    m = re.search(r"^epoch 1/1: .*s, (\d+) img/s", out, re.M)
                    if not m:
                        die(f"`{shlex.join(run)} --sync-bn {s}` printed no epoch line")
                    got[s].append(int(m.group(1)))
        med = {s: statistics.median(v) for s, v in got.items()}
        cmd = shlex.join(run).replace(t, "$T") + " --sync-bn 1|0"
        self.sync_bn = {"cmd": cmd, "sync_bn_1_img_s": got[1], "sync_bn_0_img_s": got[0],
                        "cost_pct": round(100 * (1 - med[1] / med[0]), 1)}
        print(f"  sync-bn: {self.sync_bn}", flush=True)


def fmt_row(r):
    if "skip" in r:
        return f"| {r['row']} | skipped: {r['skip']} | | | | | | |"
    v, p = r["vgg_dist"], r.get("peer")
    model = f"{v['model']} w{v['width']:g} {v['size']}x{v['size']} b{v['batch']}"
    peer = f"{p['img_s']:.1f} ({p['tool']}, {p['mode']})" if p else f"n/a: {r['peer_skip']}"
    ratio = f"{r['ratio']:.2f}x" if p else "n/a"
    mfu = "n/a (CPU)"
    if v.get("mfu") is not None:
        mfu = f"{100 * v['mfu']:.1f}% / {100 * p['mfu']:.1f}%" if p and p.get("mfu") is not None else f"{100 * v['mfu']:.1f}%"
    mem = f"{v['mem_mib']:.0f} / {p['mem_mib']:.0f} MiB" if p else f"{v['mem_mib']:.0f} MiB"
    comm = "n/a (1 rank)"
    if "allreduce_ms" in v:
        def c(x):
            hid = 100 * max(0.0, 1 - x["wait_ms"] / x["allreduce_ms"]) if x["allreduce_ms"] > 0 else 0
            return f"{x['allreduce_ms']:.1f} ms, {x['wait_ms']:.1f} exposed ({hid:.0f}% hidden)"
        comm = c(v) + (" / " + c(p) if p and "allreduce_ms" in p else "")
    return f"| {r['row']} | {model} | {v['img_s']:.1f} | {peer} | {ratio} | {mfu} | {mem} | {comm} |"


def write(b, info):
    os.makedirs(f"{b.build}/bench", exist_ok=True)
    doc = {"machine": info, "steps_per_window": b.steps, "windows": b.windows, "rows": b.rows,
           "sync_bn": b.sync_bn}
    with open(f"{b.build}/bench/bench.json", "w") as f:
        json.dump(doc, f, indent=1)
    # Each one-rank vgg_dist row as scripts/scaling_model.py's --from-json input: its measured
    # step is the per-GPU (or per-process) compute the model scales up.
    scaling = []
    for i, r in enumerate(b.rows):
        v = r.get("vgg_dist")
        if not v or v.get("ranks") != 1 or "n_params" not in v:
            continue
        path = f"{b.build}/bench/scaling_{i}_{v['device']}.json"
        with open(path, "w") as f:
            json.dump({"n_params": v["n_params"], "compute_ms": v["ms_step"], "batch_per_rank": v["batch"],
                       "source": f"make bench row '{r['row']}': {r['vgg_dist_cmd']}"}, f, indent=1)
        scaling.append(path)
    v = info["versions"]
    md = [f"Date {info['date']}; CPU {info['cpu']} ({info['cores']} cores, load {info['load_avg_at_start']:.2f} "
          f"at start); GPU {info['gpu']}.",
          "Versions: " + ", ".join(f"{k} {x}" for k, x in v.items()) + ".",
          f"img/s: the median of {b.windows} windows of {b.steps} steps after warm-up.", "",
          "| row | model | vgg_dist img/s | peer img/s | ratio | MFU (vgg_dist / peer) | peak memory (vgg_dist / peer) | all-reduce per step, exposed (vgg_dist / peer) |",
          "|---|---|---|---|---|---|---|---|", *map(fmt_row, b.rows), "",
          f"Batch norm's sums over 2 ranks (--sync-bn 1 vs 0, one epoch, {b.rounds} rounds): "
          f"{b.sync_bn['cost_pct']}% slower (img/s {b.sync_bn['sync_bn_1_img_s']} vs {b.sync_bn['sync_bn_0_img_s']}).",
          "", "Commands:"]
    for r in b.rows:
        for k in ("vgg_dist_cmd", "peer_cmd"):
            if k in r:
                md.append(f"- {r['row']}, {'vgg_dist' if k == 'vgg_dist_cmd' else 'PyTorch'}: `{r[k]}`")
    md.append(f"- --sync-bn (T: a temporary directory of `{b.build}/gen_cifar $T/data 660 100`): `{b.sync_bn['cmd']}`")
    with open(f"{b.build}/bench/bench.md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\nwritten: {b.build}/bench/bench.md, {b.build}/bench/bench.json; for "
          f"scripts/scaling_model.py --from-json: {', '.join(scaling) or 'none'}")


def main():
    args, build, vgg = sys.argv[1:], "build", os.environ.get("VGG_DIST", "./vgg_dist")
    while args:
        if len(args) < 2 or args[0] not in ("--build", "--vgg-dist"):
            die(f"unknown or incomplete option {args[0]!r} (usage: bench.py [--build DIR] [--vgg-dist BIN])")
        build, vgg = (args[1], vgg) if args[0] == "--build" else (build, args[1])
        args = args[2:]
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    os.environ["VGG_DIST"] = os.path.realpath(vgg)  # the peer builds its network from it
    b = Bench(build, vgg)
    gpu, why = visible_gpu()
    info = machine_info(gpu)
    b.cpu_rows()
    b.gpu_rows(gpu, why)
    for r in b.rows:  # model FLOP utilisation, GPU rows only: training FLOPs per image x img/s / peak
        peak = float(os.environ.get("PEAK_TFLOPS", "0")) * 1e12 or next(
            (f for k, f in PEAK_BF16.items() if gpu and k in gpu), None)
        for side in ("vgg_dist", "peer"):
            x = r.get(side)
            if x and x["device"] != "cpu":
                x["mfu"] = x["gflop_s"] * 1e9 / peak if peak else None
    b.sync_bn_line()
    write(b, info)


if __name__ == "__main__":
    main()
