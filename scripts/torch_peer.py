#!/usr/bin/python3
# torch_peer.py - the PyTorch peer of `make bench` (scripts/bench.py): images/s of one VGG training
# step (forward, cross-entropy, backward, Adam(lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight
# decay 1e-4): bench_step's settings) on tensors already in memory, with the network built from
# vgg_dist's own description of it (`vgg_dist --print-model`, scripts/vgg_torch.py), so both
# sides run the same layer table. Prints one JSON object (the keys bench_step --json prints).
#   torch_peer.py --mode cpu  [--threads N]            one process, N intra-op threads
#   torch_peer.py --mode ddp  [--ranks 2 --threads 1]  DistributedDataParallel over gloo, one
#       process per rank (torch.multiprocessing, env:// init on 127.0.0.1); --batch is the global
#       batch, split evenly. allreduce_ms: the gradients (DDP's default 25 MB buckets) summed by
#       dist.all_reduce alone, all started then waited (median of --steps repetitions, the slowest
#       rank's); wait_ms: the DDP step's time minus the same step under model.no_sync() (no
#       reduction), i.e. the all-reduce time backward did not hide (an estimate: both are medians
#       of separate windows).
#   torch_peer.py --mode gpu  [--compile]              CUDA, channels_last, bf16 autocast (TF32
#       allowed, cudnn.benchmark), optionally torch.compile (torch >= 2; refused otherwise).
# Common: --model vgg16 --width 1 --size 32 --batch 64 --batchnorm 0 --steps 10 --warmup 2
#         --windows 1 (img/s of the median window). The binary is $VGG_DIST (default: ./vgg_dist).
import argparse
import json
import os
import resource
import socket
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vgg_torch import build, default_binary, describe  # noqa: E402


def parse():
    p = argparse.ArgumentParser(description="the PyTorch peer of make bench")
    p.add_argument("--mode", choices=["cpu", "ddp", "gpu"], default="cpu")
    p.add_argument("--model", default="vgg16")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batchnorm", type=int, choices=[0, 1], default=0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--windows", type=int, default=1)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--compile", action="store_true")
    p.error = lambda msg: sys.exit(f"torch_peer.py: {msg}")  # one line, not argparse's usage block
    a = p.parse_args()
    if a.steps < 1 or a.warmup < 0 or not 1 <= a.windows <= a.steps or a.threads < 1:
        p.error("--steps >= 1, --warmup >= 0, --windows in 1..--steps, --threads >= 1")
    if a.mode == "ddp" and (a.ranks < 2 or a.batch % a.ranks):
        p.error(f"--ranks {a.ranks} must be >= 2 and split --batch {a.batch} evenly")
    if a.compile and (a.mode != "gpu" or not hasattr(torch, "compile")):
        p.error(f"--compile needs --mode gpu and torch >= 2 (this is torch {torch.__version__})")
    if a.mode == "gpu" and not torch.cuda.is_available():
        p.error("--mode gpu: no CUDA device is visible to torch")
    return a


def network(a):
    desc = describe(default_binary(), "--model", a.model, "--width", str(a.width), "--image-size",
                    str(a.size), "--dropout", "0.5", "--batchnorm", str(a.batchnorm))
    model = build(desc)
    if sum(p.numel() for p in model.parameters()) != desc["n_params"]:
        sys.exit("torch_peer.py: the PyTorch network's parameter count differs from vgg_dist's")
    return model, desc


def windows(a, step, sync=lambda: None):
    """Warm-up, then the timed steps in a.windows windows: seconds per step of each window."""
    for _ in range(a.warmup):
        step()
    out = []
    for w in range(a.windows):
        n = (w + 1) * a.steps // a.windows - w * a.steps // a.windows
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        out.append((time.perf_counter() - t0) / n)
    return out


def result(a, desc, per_step, mem_kind, mem_mib, ranks, device, precision, mode, **extra):
    dt = statistics.median(per_step)
    gf = desc_flops(desc)
    r = {"tool": f"pytorch {torch.__version__}", "model": a.model, "width": a.width, "size": a.size,
         "batchnorm": a.batchnorm, "batch": a.batch, "ranks": ranks, "threads": a.threads,
         "device": device, "precision": precision, "mode": mode, "img_s": round(a.batch / dt, 2),
         "ms_step": round(dt * 1e3, 3), "train_gflop_per_image": round(gf, 4),
         "gflop_s": round(a.batch / dt * gf, 2), "mem_kind": mem_kind, "mem_mib": round(mem_mib, 1),
         "windows_img_s": [round(a.batch / t, 2) for t in per_step]}
    r.update(extra)
    return r


def desc_flops(desc):
    """Training GFLOP per image as vgg_dist's model_train_flops counts them: 3 x 2 x the MACs of
    the convolutions and linear layers."""
    macs = 0
    for l in desc["layers"]:
        if l["kind"] == "conv":
            macs += l["out"][0] * l["out"][1] * l["out"][2] * l["in"][2] * l["kernel"] ** 2
        elif l["kind"] == "linear":
            macs += l["in"][2] * l["out"][2]
    return 6 * macs * 1e-9


def adam(model):
    return torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_cpu(a):
    torch.set_num_threads(a.threads)
    model, desc = network(a)
    opt = adam(model)
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.randint(0, desc["classes"], (a.batch,))

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return result(a, desc, windows(a, step), "peak RSS", peak_rss_mib(), 1, "cpu", "fp32", "eager")


def ddp_rank(rank, a, port, queue):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", rank=rank, world_size=a.ranks)
    torch.manual_seed(1)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    model, desc = network(a)
    ddp = nn.parallel.DistributedDataParallel(model)  # bucket_cap_mb 25, as vgg_dist's --bucket-mb
    opt = adam(ddp)
    n = a.batch // a.ranks
    x = torch.randn(n, 3, a.size, a.size)
    y = torch.randint(0, desc["classes"], (n,))

    def step():
        opt.zero_grad()
        # DDP averages over ranks: the mean loss over a rank's share, as vgg_dist's 1/global sum
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()

    def local_step():
        with ddp.no_sync():
            step()

    def slowest(v):
        t = torch.tensor(v, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()
    dist.barrier()
    per_step = slowest(windows(a, step, dist.barrier))
    local = slowest(windows(a, local_step, dist.barrier))
    # The reduction alone: the gradients flattened into DDP-sized buckets (25 MB), summed.
    flat = torch.zeros(desc["n_params"])
    buckets = flat.split(25 * 1024 * 1024 // 4)
    times = []
    for _ in range(a.steps):
        dist.barrier()
        t0 = time.perf_counter()
        for w in [dist.all_reduce(b, async_op=True) for b in buckets]:
            w.wait()
        times.append(time.perf_counter() - t0)
    times = slowest(times)
    rss = slowest([peak_rss_mib()])[0]
    if rank == 0:
        allreduce = statistics.median(times)
        wait = max(0.0, statistics.median(per_step) - statistics.median(local))
        queue.put(result(a, desc, per_step, "peak RSS", rss, a.ranks, "cpu", "fp32", "DDP gloo",
                         allreduce_ms=round(allreduce * 1e3, 3), wait_ms=round(wait * 1e3, 3),
                         no_sync_img_s=round(a.batch / statistics.median(local), 2)))
    dist.destroy_process_group()


def run_ddp(a):
    import torch.multiprocessing as mp
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = mp.spawn(ddp_rank, args=(a, port, queue), nprocs=a.ranks, join=False)
    # The result before joining (a rank never waits on a full pipe to exit), but not forever:
    # a rank that died (join raises with its error) or hangs must end this process too.
    import queue as queue_mod
    deadline = time.monotonic() + 1800
    while True:
        try:
            out = queue.get(timeout=5)
            break
        except queue_mod.Empty:
            procs.join(timeout=0)  # raises ProcessRaisedException / ProcessExitedException
            if time.monotonic() > deadline:
                sys.exit("torch_peer: the DDP ranks gave no result in 1800 s")
    while not procs.join():
        pass
    return out


def run_gpu(a):
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    model, desc = network(a)
    model = model.cuda().to(memory_format=torch.channels_last)
    opt = adam(model)  # foreach implementation: the default on CUDA
    f = torch.compile(model) if a.compile else model
    x = torch.randn(a.batch, 3, a.size, a.size, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, desc["classes"], (a.batch,), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", torch.bfloat16):
            loss = nn.functional.cross_entropy(f(x), y)
        loss.backward()
        opt.step()
    for _ in range(a.warmup):  # compile and autotune before the peak memory is reset
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    per_step = windows(a, step, torch.cuda.synchronize)
    mode = "channels_last bf16-autocast" + (" torch.compile" if a.compile else " eager")
    return result(a, desc, per_step, "device memory", torch.cuda.max_memory_allocated() / 2**20, 1,
                  torch.cuda.get_device_name(), "bf16", mode)


if __name__ == "__main__":
    args = parse()
    print(json.dumps({"cpu": run_cpu, "ddp": run_ddp, "gpu": run_gpu}[args.mode](args)), flush=True)
