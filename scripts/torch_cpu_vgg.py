#!/usr/bin/python3
# torch_cpu_vgg.py - the PyTorch peer on the CPU: images/s of one VGG training step (forward,
# cross-entropy, backward, Adam) with the same model and batch as bench_step. The network is
# built from vgg_dist's own description of it (`vgg_dist --print-model`), so both sides run the
# same layer table.
# usage: /usr/bin/python3 scripts/torch_cpu_vgg.py [MODEL=vgg16] [WIDTH=1] [SIZE=32] [BATCH=64] [STEPS=10]
# The binary is $VGG_DIST (default: vgg_dist in the repository root). Threads follow
# OMP_NUM_THREADS (set it equal to the other side's).
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn as nn


def build(desc):
    """nn.Sequential from --print-model's layers (kind, act, in/out [H, W, C])."""
    layers = []
    for l in desc["layers"]:
        if l["kind"] == "conv":
            layers.append(nn.Conv2d(l["in"][2], l["out"][2], l["kernel"], padding=l["pad"]))
        elif l["kind"] == "pool":
            layers.append(nn.MaxPool2d(l["kernel"], l["stride"]))
        else:
            if "flat_hwc" in l and not any(isinstance(m, nn.Flatten) for m in layers):
                layers.append(nn.Flatten())
            layers.append(nn.Dropout(l["p"]) if l["kind"] == "dropout" else nn.Linear(l["in"][2], l["out"][2]))
        if l["act"] == "relu":
            layers.append(nn.ReLU(True))
        elif l["act"] != "none":
            raise ValueError(f"unknown activation {l['act']!r}")
    return nn.Sequential(*layers)


name = sys.argv[1] if len(sys.argv) > 1 else "vgg16"
width = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
size = int(sys.argv[3]) if len(sys.argv) > 3 else 32
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 64
steps = int(sys.argv[5]) if len(sys.argv) > 5 else 10
binary = os.environ.get("VGG_DIST") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vgg_dist")
desc = json.loads(subprocess.run([binary, "--print-model", "--model", name, "--width", str(width),
                                  "--image-size", str(size), "--dropout", "0.5"],
                                 check=True, capture_output=True, text=True).stdout)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
model = build(desc)
assert sum(p.numel() for p in model.parameters()) == desc["n_params"]
opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
x = torch.randn(batch, 3, size, size)
y = torch.randint(0, desc["classes"], (batch,))
for i in range(2 + steps):
    if i == 2:
        t0 = time.perf_counter()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
dt = (time.perf_counter() - t0) / steps
print("pytorch %s %s width %g %dx%d batch %d cpu fp32 threads %d: %.1f img/s, %.1f ms/step"
      % (torch.__version__, name, width, size, size, batch, torch.get_num_threads(), batch / dt, dt * 1e3))
