#!/usr/bin/python3
# torch_cpu_vgg.py - the PyTorch peer on the CPU: images/s of one VGG training step (forward,
# cross-entropy, backward, Adam) with the same model and batch as bench_step. The network is
# built from vgg_dist's own description of it (`vgg_dist --print-model`), so both sides run the
# same layer table.
# usage: /usr/bin/python3 scripts/torch_cpu_vgg.py [MODEL=vgg16] [WIDTH=1] [SIZE=32] [BATCH=64] [STEPS=10]
# The binary is $VGG_DIST (default: vgg_dist in the repository root). Threads follow
# OMP_NUM_THREADS (set it equal to the other side's).
import os
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vgg_torch import build, default_binary, describe  # noqa: E402

name = sys.argv[1] if len(sys.argv) > 1 else "vgg16"
width = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
size = int(sys.argv[3]) if len(sys.argv) > 3 else 32
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 64
steps = int(sys.argv[5]) if len(sys.argv) > 5 else 10
desc = describe(default_binary(), "--model", name, "--width", str(width), "--image-size", str(size),
                "--dropout", "0.5")
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
