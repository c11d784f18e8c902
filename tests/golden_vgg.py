#!/usr/bin/python3
# golden_vgg.py - the PyTorch side of the golden test (tests/test_golden.c).
#
# Reads IN (written by the C test): the model, its parameters in vgg_dist's layout, one input
# batch (NHWC, already normalised), labels, the dropout masks of each step and the optimizer
# settings; runs `steps` training steps of the same VGG in PyTorch (NCHW, the layouts
# converted) with torch.optim.Adam/AdamW; writes OUT: the loss of every step, the gradients of
# step 1 and the parameters after the last step, both converted back to vgg_dist's layout.
# Run with Debian's /usr/bin/python3 (python3-torch). usage: golden_vgg.py IN OUT
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

CFG = {"vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
       "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
       "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
       "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                 512, 512, 512, 512, "M"]}


def main(src, dst):
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
    flat = floats(n_params)
    x = floats(n * size * size * 3).reshape(n, size, size, 3).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(take("<%di" % n), dtype=torch.long)

    # Parameters: vgg_dist's (K,3,3,C) convs and (h,w,c)-ordered first FC -> PyTorch's layouts.
    convs, pos, cin, s = [], 0, 3, size
    for v in CFG[name]:
        if v == "M":
            s //= 2
            continue
        k = max(1, round(v * width))
        w = flat[pos:pos + k * 9 * cin].reshape(k, 3, 3, cin).permute(0, 3, 1, 2).contiguous()
        pos += k * 9 * cin
        convs.append([w, flat[pos:pos + k].clone()])
        pos += k
        cin = k
    fc = max(1, round(4096 * width))
    dims = [(s * s * cin, fc), (fc, fc), (fc, classes)]
    fcs = []
    for i, (fin, fout) in enumerate(dims):
        w = flat[pos:pos + fout * fin].reshape(fout, fin)
        if i == 0:  # (out, h, w, c) -> (out, c, h, w)
            w = w.reshape(fout, s, s, cin).permute(0, 3, 1, 2).reshape(fout, fin)
        pos += fout * fin
        fcs.append([w.contiguous(), flat[pos:pos + fout].clone()])
        pos += fout
    assert pos == n_params, (pos, n_params)
    params = [t.requires_grad_() for pair in convs + fcs for t in pair]

    # The branches vgg_dist took (ReLU masks, max-pool argmaxes), per step, in its NHWC order.
    branches = []
    for _ in range(steps):
        per, h_, c_ = [], size, 3
        for v in CFG[name]:
            if v == "M":
                h_ //= 2
                per.append(array("<i4", n * h_ * h_ * c_).long().reshape(n, h_, h_, c_).permute(0, 3, 1, 2))
            else:
                c_ = max(1, round(v * width))
                per.append(array(np.uint8, n * h_ * h_ * c_).reshape(n, h_, h_, c_).permute(0, 3, 1, 2))
        per.append(array(np.uint8, n * fc).reshape(n, fc))
        per.append(array(np.uint8, n * fc).reshape(n, fc))
        branches.append(per)

    # Dropout masks per step: (n, features) in vgg_dist's feature order.
    masks = []
    for _ in range(steps):
        m0 = floats(n * s * s * cin).reshape(n, s, s, cin).permute(0, 3, 1, 2).reshape(n, -1)
        m1 = floats(n * fc)
        masks.append((m0, m1.reshape(n, fc)))

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

    def forward(step):
        h, ci = x, 0
        br = iter(branches[step])
        for v in CFG[name]:
            if v == "M":
                h = pool(h, next(br))
            else:
                w, b = params[2 * ci], params[2 * ci + 1]
                h = relu(F.conv2d(h, w, b, padding=1), next(br))
                ci += 1
        h = torch.flatten(h, 1)
        base = 2 * ci
        scale = 1.0 / (1.0 - dropout) if dropout > 0 else 1.0
        h = h * masks[step][0] * scale
        h = relu(F.linear(h, params[base], params[base + 1]), next(br))
        h = h * masks[step][1] * scale
        h = relu(F.linear(h, params[base + 2], params[base + 3]), next(br))
        return F.linear(h, params[base + 4], params[base + 5])

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
        out, i = [], 0
        for t in ts[:2 * len(convs)]:
            out.append(t.permute(0, 2, 3, 1).reshape(-1) if t.dim() == 4 else t.reshape(-1))
        fc_ts = ts[2 * len(convs):]
        w0 = fc_ts[0].reshape(fc, cin, s, s).permute(0, 2, 3, 1).reshape(-1)
        out += [w0] + [t.reshape(-1) for t in fc_ts[1:]]
        return torch.cat([o.detach() for o in out]).numpy().astype("<f4")

    with open(dst, "wb") as f:
        f.write(struct.pack("<%dd" % steps, *losses))
        f.write(to_flat(grads).tobytes())
        f.write(to_flat(params).tobytes())
        f.write(struct.pack("<2d", counts[0], counts[1]))


if __name__ == "__main__":
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "2")))
    main(sys.argv[1], sys.argv[2])
