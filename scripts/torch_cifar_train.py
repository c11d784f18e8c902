#!/usr/bin/python3
# torch_cifar_train.py - the PyTorch peer for accuracy: the same recipe as vgg_dist on real
# CIFAR-10 binary files, so the README's accuracy table can show both side by side. The network
# is vgg_dist's own (built from `vgg_dist --print-model`; PyTorch's or torchvision's init); the
# recipe: a seeded train/validation split of the train set, per-channel normalisation from the
# train split, random horizontal flips, dropout, Adam with L2 weight decay (PyTorch's Adam),
# optional linear warmup per step (lr (k+1)/W for the first W steps, as vgg_dist), then
# ReduceLROnPlateau on the validation loss once the warmup is over, and the test accuracy of the
# model of the best validation loss. The split and the random streams are PyTorch's, not
# vgg_dist's: the runs agree in recipe, not in bits.
# usage: /usr/bin/python3 scripts/torch_cifar_train.py --data DIR [--batchnorm 1] [--seed 11] ...
import argparse
import copy
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vgg_torch import build, default_binary, describe, init_torchvision  # noqa: E402


def load(path):
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
    return torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).copy()), torch.from_numpy(raw[:, 0].astype(np.int64))


def evaluate(model, x, y, batch=500):
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            z = model(x[i:i + batch])
            loss += F.cross_entropy(z, y[i:i + batch], reduction="sum").item()
            correct += int((z.argmax(1) == y[i:i + batch]).sum())
    return loss / len(x), correct / len(x)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="vgg16")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batchnorm", type=int, default=1)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, default=0)
    p.add_argument("--val-size", type=int, default=10000)
    p.add_argument("--flip-p", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--init", choices=["torchvision", "pytorch"], default="pytorch",
                   help="torchvision's VGG initialisation, or PyTorch's layer defaults")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    desc = describe(default_binary(), "--model", a.model, "--width", str(a.width), "--image-size",
                    str(a.image_size), "--dropout", "0.5", "--batchnorm", str(a.batchnorm))
    model = build(desc)
    if a.init == "torchvision":
        init_torchvision(model)

    parts = [load(os.path.join(a.data, f"data_batch_{i}.bin")) for i in range(1, 6)]
    x_all = torch.cat([q[0] for q in parts]).float() / 255
    y_all = torch.cat([q[1] for q in parts])
    x_test, y_test = load(os.path.join(a.data, "test_batch.bin"))
    x_test = x_test.float() / 255
    perm = torch.randperm(len(x_all))
    tr, va = perm[a.val_size:], perm[:a.val_size]
    mean = x_all[tr].mean((0, 2, 3), keepdim=True)
    std = x_all[tr].std((0, 2, 3), keepdim=True)
    norm = lambda t: F.interpolate(t, size=a.image_size, mode="bilinear", align_corners=False) \
        if a.image_size != 32 else t
    x_tr, y_tr = norm((x_all[tr] - mean) / std), y_all[tr]
    x_va, y_va = norm((x_all[va] - mean) / std), y_all[va]
    x_te = norm((x_test - mean) / std)

    opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    steps_per_epoch = math.ceil(len(x_tr) / a.batch)
    warm = math.ceil(a.warmup_epochs * steps_per_epoch)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=5, threshold=1e-4)
    best, best_loss, step = None, float("inf"), 0
    print(f"pytorch {torch.__version__}: {a.model} width {a.width} {a.image_size}x{a.image_size} "
          f"batchnorm {a.batchnorm} init {a.init} warmup {a.warmup_epochs} seed {a.seed}: {len(x_tr)} train, "
          f"{len(x_va)} validation, {len(x_te)} test", flush=True)
    for epoch in range(a.epochs):
        model.train()
        t0, loss_sum, correct = time.time(), 0.0, 0
        order = torch.randperm(len(x_tr))
        base_lr = opt.param_groups[0]["lr"] if step >= warm else a.lr
        for i in range(0, len(x_tr), a.batch):
            idx = order[i:i + a.batch]
            x = x_tr[idx]
            flip = torch.rand(len(idx)) < a.flip_p
            x[flip] = x[flip].flip(3)
            if step < warm:
                for g in opt.param_groups:
                    g["lr"] = base_lr * (step + 1) / warm
            opt.zero_grad()
            z = model(x)
            loss = F.cross_entropy(z, y_tr[idx])
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            correct += int((z.argmax(1) == y_tr[idx]).sum())
        val_loss, val_acc = evaluate(model, x_va, y_va)
        if step > warm or warm == 0:  # plateau decisions once the warmup is over
            plateau.step(val_loss)
        if val_loss < best_loss:
            best_loss, best = val_loss, copy.deepcopy(model.state_dict())
        print(f"epoch {epoch + 1}/{a.epochs}: train loss {loss_sum / len(x_tr):.4f} acc "
              f"{correct / len(x_tr):.4f} | val loss {val_loss:.4f} acc {val_acc:.4f} | lr "
              f"{opt.param_groups[0]['lr']:.3g} | {time.time() - t0:.1f}s", flush=True)
    model.load_state_dict(best)
    test_loss, test_acc = evaluate(model, x_te, y_test)
    print(f"test (best model): loss {test_loss:.4f} acc {test_acc:.4f} on {len(x_te)} images", flush=True)


if __name__ == "__main__":
    main()
