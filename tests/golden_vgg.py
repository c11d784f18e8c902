#!/usr/bin/python3
# golden_vgg.py - the PyTorch side of the golden test (tests/test_golden.c).
#
# Reads MODEL (the model as JSON, written by the C test with model_print_json: the layers to
# build, their shapes and parameter offsets) and IN: its parameters in vgg_dist's layout, one input
# batch (NHWC, already normalised), labels, the dropout masks of each step and the optimizer
# settings; runs `steps` training steps of the same VGG in PyTorch (NCHW, the layouts
# converted) with torch.optim.Adam/AdamW; writes OUT: the loss of every step, the gradients of
# step 1 and the parameters after the last step, both converted back to vgg_dist's layout, the
# branch counts, then the batch-norm running statistics after the last step (vgg_dist's
# buffer layout: per bn layer its mean, then its variance; none without batch norm) and the
# evaluation-mode logits of the batch with the final parameters and statistics.
# Run with Debian's /usr/bin/python3 (python3-torch). usage: golden_vgg.py MODEL IN OUT
import json
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F


def to_torch(l, w):
    """One weight in vgg_dist's layout (a slice of the flat buffer) -> PyTorch's."""
    if l["kind"] == "conv":  # (K, 3, 3, C) -> (K, C, 3, 3)
        return w.reshape(l["w_shape"]).permute(0, 3, 1, 2).contiguous()
    if l["kind"] == "bn":  # gamma (C)
        return w.clone()
    out, fin = l["w_shape"]
    w = w.reshape(out, fin)
    if "flat_hwc" in l:  # the first FC: (out, h, w, c) -> (out, c, h, w)
        w = w.reshape(out, *l["flat_hwc"]).permute(0, 3, 1, 2).reshape(out, fin)
    return w.contiguous()


def from_torch(l, w):
    """The inverse of to_torch, flattened."""
    if l["kind"] == "conv":
        return w.permute(0, 2, 3, 1).reshape(-1)
    if l["kind"] == "bn":
        return w.reshape(-1)
    if "flat_hwc" in l:
        h, w_, c = l["flat_hwc"]
        return w.reshape(l["w_shape"][0], c, h, w_).permute(0, 2, 3, 1).reshape(-1)
    return w.reshape(-1)


def main(model_path, src, dst):
    model = json.load(open(model_path))
    layers = model["layers"]
    raw = open(src, "rb").read()
    off = 0

    def take(fmt):
        nonlocal off
        v = struct.unpack_from(fmt, raw, off)
        off += struct.calcsize(fmt)
        return v

    def array(dtype, n):
        nonlocal off
        a = np.frombuffer(raw, dtype=dtype, count=n, offset=off).copy()
        off += a.nbytes
        return torch.from_numpy(a)

    def floats(n):
        return array("<f4", n)

    name = take("16s")[0].rstrip(b"\0").decode()
    width, dropout, lr, wd, b1, b2, eps = take("<7f")
    size, classes, n, steps, adamw, n_params = take("<6i")
    assert (name, size, classes, n_params) == (model["name"], model["image_size"], model["classes"],
                                                model["n_params"]), (name, model)
    flat = floats(n_params)
    x = floats(n * size * size * 3).reshape(n, size, size, 3).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(take("<%di" % n), dtype=torch.long)

    # Parameters: vgg_dist's (K,3,3,C) convs and (h,w,c)-ordered first FC -> PyTorch's layouts,
    # each tensor at its offset in the flat buffer as the model JSON gives it.
    with_params = [l for l in layers if l.get("w_count")]
    params = []
    for l in with_params:
        w = flat[l["w_offset"]:l["w_offset"] + l["w_count"]]
        params += [to_torch(l, w), flat[l["b_offset"]:l["b_offset"] + l["b_count"]].clone()]
    assert sum(l["w_count"] + l["b_count"] for l in with_params) == n_params
    params = [t.requires_grad_() for t in params]
    # Batch norm's running statistics, PyTorch's initial values (vgg_dist starts alike).
    running = {i: (torch.zeros(l["in"][2]), torch.ones(l["in"][2]))
               for i, l in enumerate(layers) if l["kind"] == "bn"}

    # The branches vgg_dist took, per step and layer, in its NHWC order: the mask of the layer's
    # ReLU (when its activation is one), then a pool's argmaxes (the file's order).
    def nchw(a, l):
        h_, w_, c_ = l["out"]
        return a.reshape(n, h_, w_, c_).permute(0, 3, 1, 2) if l["kind"] in ("conv", "pool", "bn") else a.reshape(n, c_)

    branches = []
    for _ in range(steps):
        per = []
        for l in layers:
            count = n * l["out"][0] * l["out"][1] * l["out"][2]
            mask = nchw(array(np.uint8, count), l) if l["act"] == "relu" else None
            argmax = nchw(array("<i4", count).long(), l) if l["kind"] == "pool" else None
            per.append((mask, argmax))
        branches.append(per)

    # Dropout masks per step: (n, features) in vgg_dist's feature order, one per dropout layer.
    masks = []
    for _ in range(steps):
        per = []
        for l in (l for l in layers if l["kind"] == "dropout"):
            m = floats(n * l["in"][2])
            if "flat_hwc" in l:
                m = m.reshape(n, *l["flat_hwc"]).permute(0, 3, 1, 2)
            per.append(m.reshape(n, -1))
        masks.append(per)

    # Follow vgg_dist's branches; count where PyTorch's own decision differs by more than
    # rounding (hard: a real error) and within rounding (soft: a kink).
    counts = [0, 0]

    def relu(z, mask):
        zd = z.detach()
        mine = zd > 0
        differ = mine != mask.bool()
        near = zd.abs() <= 1e-4 * zd.abs().max()
        counts[0] += int((differ & ~near).sum())
        counts[1] += int((differ & near).sum())
        return z * mask.to(z.dtype)

    def pool(h, idx):
        n_, c_, hh, ww = h.shape
        chosen = h.flatten(2).gather(2, idx.flatten(2)).reshape(n_, c_, hh // 2, ww // 2)
        top = F.max_pool2d(h.detach(), 2)
        gap = top - chosen.detach()
        near = gap <= 1e-5 * top.abs()
        counts[0] += int(((gap > 0) & ~near).sum())
        counts[1] += int(((gap > 0) & near).sum())
        return chosen

    def forward(step, train=True):
        h, pi = x, 0
        scale = 1.0 / (1.0 - dropout) if dropout > 0 else 1.0
        for i, (l, (mask, argmax)) in enumerate(zip(layers, branches[step])):
            if l["kind"] in ("dropout", "linear"):
                h = torch.flatten(h, 1)
            if l["kind"] == "pool":
                h = pool(h, argmax) if train else F.max_pool2d(h, 2)
            elif l["kind"] == "dropout":
                if train:
                    h = h * masks[step][l["index"]] * scale
            elif l["kind"] == "bn":
                w, b = params[pi], params[pi + 1]
                pi += 2
                h = F.batch_norm(h, *running[i], w, b, training=train, momentum=l["momentum"],
                                 eps=l["eps"])
            else:
                w, b = params[pi], params[pi + 1]
                pi += 2
                h = F.conv2d(h, w, b, padding=1) if l["kind"] == "conv" else F.linear(h, w, b)
            if l["act"] == "relu":
                h = relu(h, mask) if train else F.relu(h)
            else:
                assert l["act"] == "none", l["act"]
        return h

    opt_cls = torch.optim.AdamW if adamw else torch.optim.Adam
    opt = opt_cls(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    losses, grads = [], None
    for step in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(forward(step), labels)
        loss.backward()
        losses.append(loss.item())
        if step == 0:
            grads = [p.grad.detach().clone() for p in params]
        opt.step()

    def to_flat(ts):
        out = torch.empty(n_params)
        for l, w, b in zip(with_params, ts[0::2], ts[1::2]):
            out[l["w_offset"]:l["w_offset"] + l["w_count"]] = from_torch(l, w.detach())
            out[l["b_offset"]:l["b_offset"] + l["b_count"]] = b.detach().reshape(-1)
        return out.numpy().astype("<f4")

    with open(dst, "wb") as f:
        f.write(struct.pack("<%dd" % steps, *losses))
        f.write(to_flat(grads).tobytes())
        f.write(to_flat(params).tobytes())
        f.write(struct.pack("<2d", counts[0], counts[1]))
        for i, l in enumerate(layers):
            if l["kind"] == "bn":
                f.write(torch.cat(running[i]).numpy().astype("<f4").tobytes())
        with torch.no_grad():
            f.write(forward(steps - 1, train=False).numpy().astype("<f4").tobytes())


if __name__ == "__main__":
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "2")))
    main(sys.argv[1], sys.argv[2], sys.argv[3])
