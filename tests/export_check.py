#!/usr/bin/python3
# export_check.py - the comparisons of tests/test_export.sh, one per subcommand; each prints its
# measured error and exits 1 when it is above its bound.
#   ref CKPT TEST_BATCH N DIR       DIR/x.npy: the first N images of TEST_BATCH preprocessed as
#                                   vgg_dist does; DIR/ref.npy: their logits by the reference
#   torchscript FILE DIR            torch.jit.load(FILE) alone against ref.npy; its metadata
#   onnx FILE DIR                   ONNX Runtime (run with the venv's python) against ref.npy
#   state_dict FILE CKPT DIR        keys as torchvision's vgg16(_bn), logits against ref.npy,
#                                   and that a wrong permutation would be caught on these inputs
#   logits FILE.npy DIR             vgg_dist --eval's dumped logits against ref.npy
#   import SD CKPT LOG              torchvision's features(x) against the imported checkpoint's
# The reference is written here from the checkpoint's flat buffers and --print-model's table
# alone, in vgg_dist's own NHWC layout (conv weights KRSC used as such, the flatten in (h, w, c)
# order): it shares no conversion code with scripts/vgg_nchw.py, so a wrong permutation in the
# exporter fails the 1e-4 bounds below (checked once by swapping it: errors of order 1).
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
BOUND = 1e-4  # max |a - b| / max |b|: float32 summation order only


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def verdict(what, err, bound=BOUND):
    print("   %s: max relative error %.3e (bound %.0e)" % (what, err, bound))
    return err <= bound


def torch_modules():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    sys.path.insert(0, HERE)
    import ckpt_tool
    import export
    import torch
    return torch, ckpt_tool, export


def reference(torch, desc, params, buffers, x, upto=None):
    """vgg_dist's eval forward in NHWC from the flat buffers. x: (N, S, S, 3). Returns the
    logits, or with upto="features" the last pool's output (N, h, w, c)."""
    F = torch.nn.functional
    a = x.double()
    p, b = params.double(), buffers.double()
    for l in desc["layers"]:
        k = l["kind"]
        if k == "conv":  # sum over the 3x3 taps of (N,H,W,C) x (K,C): KRSC read as it is stored
            w = p[l["w_offset"]:l["w_offset"] + l["w_count"]].reshape(l["w_shape"])
            n, h, wd, _ = a.shape
            pad = F.pad(a, (0, 0, 1, 1, 1, 1))
            out = sum(torch.einsum("nhwc,kc->nhwk", pad[:, r:r + h, s:s + wd, :], w[:, r, s, :])
                      for r in range(3) for s in range(3))
            a = out + p[l["b_offset"]:l["b_offset"] + l["b_count"]]
        elif k == "bn":
            c = l["in"][2]
            mean = b[l["buf_offset"]:l["buf_offset"] + c]
            var = b[l["buf_offset"] + c:l["buf_offset"] + 2 * c]
            g, beta = p[l["w_offset"]:l["w_offset"] + c], p[l["b_offset"]:l["b_offset"] + c]
            a = (a - mean) / torch.sqrt(var + l["eps"]) * g + beta
        elif k == "pool":
            n, h, wd, c = a.shape
            a = a.reshape(n, h // 2, 2, wd // 2, 2, c).amax(dim=(2, 4))
        elif k == "linear":
            if upto == "features":
                return a
            w = p[l["w_offset"]:l["w_offset"] + l["w_count"]].reshape(l["w_shape"])
            a = a.reshape(a.shape[0], -1) @ w.T + p[l["b_offset"]:l["b_offset"] + l["b_count"]]
        if l["act"] == "relu":
            a = torch.relu(a)
    return a


def preprocess(torch, path, n, size, mean, std):
    """The first n images of a CIFAR-10 binary file as vgg_dist feeds them: byte / 255 in float32,
    bilinear resize (align_corners False, no antialias), then (x - mean) / std per channel."""
    raw = np.fromfile(path, np.uint8)
    if raw.size % 3073 or raw.size // 3073 < n:
        sys.exit("%s: fewer than %d CIFAR-10 records" % (path, n))
    img = raw[:n * 3073].reshape(n, 3073)[:, 1:].reshape(n, 3, 32, 32)
    x = torch.from_numpy(img.astype(np.float32)) / 255.0
    if size != 32:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            align_corners=False, antialias=False)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s  # (N, 3, S, S)


def cmd_ref(ckpt, test_batch, n, out):
    torch, ckpt_tool, export = torch_modules()
    desc, meta, st, _ = export.load_checkpoint(ckpt, export.vgg_torch.default_binary())
    version, s = ckpt_tool.read(ckpt, check_crc=True)
    params, buffers = export.f32_tensor(s["PARAMS"]), export.f32_tensor(s.get("BUFFERS", b""))
    x = preprocess(torch, test_batch, int(n), desc["image_size"], st["mean"], st["std"])
    ref = reference(torch, desc, params, buffers, x.permute(0, 2, 3, 1))
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, "x.npy"), x.numpy())
    np.save(os.path.join(out, "ref.npy"), ref.float().numpy())
    json.dump({"mean": list(st["mean"]), "std": list(st["std"])},
              open(os.path.join(out, "norm.json"), "w"))
    print("   reference logits of %d images, %s, |logit| up to %.3g" % (
        x.shape[0], tuple(x.shape), float(ref.abs().max())))
    return 0


def load_ref(d):
    return np.load(os.path.join(d, "x.npy")), np.load(os.path.join(d, "ref.npy")), \
        json.load(open(os.path.join(d, "norm.json")))


def meta_ok(info, norm, x):
    """The export's metadata states the checkpoint's normalisation and this input size."""
    p = info["preprocess"]
    return (np.allclose(p["normalize"]["mean"], norm["mean"], rtol=0, atol=0) and
            np.allclose(p["normalize"]["std"], norm["std"], rtol=0, atol=0) and
            p["resize"]["to"] == [x.shape[2], x.shape[3]] and not p["resize"]["align_corners"]
            and not p["resize"]["antialias"])


def cmd_torchscript(path, d):
    import torch  # torch alone: the TorchScript file must need no vgg_dist code
    x, ref, norm = load_ref(d)
    extra = {"vgg_dist.json": ""}
    m = torch.jit.load(path, _extra_files=extra)
    with torch.no_grad():
        out = m(torch.from_numpy(x)).numpy()
        out5 = m(torch.from_numpy(x[:5])).numpy()  # another batch size: nothing traced in
    ok = verdict("TorchScript logits vs reference", rel(out, ref))
    ok &= verdict("TorchScript, batch of 5", rel(out5, ref[:5]))
    info = json.loads(extra["vgg_dist.json"] or "{}")
    good = bool(info) and meta_ok(info, norm, x)
    print("   metadata vgg_dist.json: %s" % ("states the checkpoint's preprocessing" if good else "WRONG or absent"))
    return 0 if ok and good else 1


def cmd_onnx(path, d):
    import onnx
    import onnxruntime as ort
    x, ref, norm = load_ref(d)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = sess.run(["logits"], {"input": x})[0]
    out5 = sess.run(["logits"], {"input": x[:5]})[0]  # the dynamic batch axis
    ok = verdict("ONNX Runtime %s logits vs reference" % ort.__version__, rel(out, ref))
    ok &= verdict("ONNX Runtime, batch of 5", rel(out5, ref[:5]))
    proto = onnx.load(path)
    props = {p.key: p.value for p in proto.metadata_props}
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    good = "vgg_dist.json" in props and meta_ok(json.loads(props["vgg_dist.json"]), norm, x)
    print("   opset %d; metadata_props vgg_dist.json: %s" % (
        opset, "states the checkpoint's preprocessing" if good else "WRONG or absent"))
    return 0 if ok and good and opset >= 13 else 1


def cmd_state_dict(path, ckpt, d):
    torch, _, export = torch_modules()
    import torchvision
    x, ref, norm = load_ref(d)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    desc, _, _, model = export.load_checkpoint(ckpt, export.vgg_torch.default_binary())
    # torchvision's naming: its vgg16(_bn) at width 1 has the same keys and tensor ranks (the
    # shapes differ by the width and the classifier's input; at width 1 the features' agree).
    tv = (torchvision.models.vgg16_bn if desc["batchnorm"] else torchvision.models.vgg16)(weights=None)
    tv_sd = tv.state_dict()
    keys_ok = sorted(sd) == sorted(tv_sd) and all(sd[k].dim() == tv_sd[k].dim() for k in sd)
    print("   %d keys, %s torchvision's %s" % (len(sd), "the same as" if keys_ok else "NOT",
                                              "vgg16_bn" if desc["batchnorm"] else "vgg16"))
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(x)).numpy()
    ok = verdict("state_dict in the NCHW module vs reference", rel(out, ref))
    side = os.path.exists(path + ".json") and meta_ok(json.load(open(path + ".json")), norm, x)
    print("   sidecar %s.json: %s" % (os.path.basename(path), "states the checkpoint's preprocessing"
                                       if side else "WRONG or absent"))
    # The inputs can tell a wrong layout: the first FC read in (h, w, c) order (no permutation),
    # a conv weight's (K, C) with (R, S) swapped; each must move the logits far past the bound.
    # The inputs must be able to tell a wrong layout: the first FC read in (h, w, c) order (its
    # permutation left out), every conv weight's KRSC buffer read as (K, C, R, S) (its permutation
    # left out); each must move the logits far past the bound.
    fc = next(l for l in desc["layers"] if "flat_hwc" in l)
    h, w_, c = fc["flat_hwc"]
    wrongs = (
        ("first FC in (h, w, c) order", lambda k, t: k == "classifier.0.weight",
         lambda t: t.reshape(t.shape[0], c, h, w_).permute(0, 2, 3, 1).reshape(t.shape)),
        ("conv weights KRSC read as KCRS", lambda k, t: k.startswith("features.") and t.dim() == 4,
         lambda t: t.permute(0, 2, 3, 1).reshape(t.shape)))
    sensitive = True
    for what, which, wrong in wrongs:
        bad = {k: (wrong(t).contiguous() if which(k, t) else t) for k, t in sd.items()}
        model.load_state_dict(bad, strict=True)
        with torch.no_grad():
            e = rel(model(torch.from_numpy(x)).numpy(), ref)
        print("   a wrong layout (%s) gives %.3e: %s" % (what, e, "caught" if e > 100 * BOUND
                                                          else "NOT caught"))
        sensitive &= e > 100 * BOUND
    return 0 if ok and keys_ok and side and sensitive else 1


def cmd_logits(path, d):
    x, ref, _ = load_ref(d)
    out = np.load(path, allow_pickle=False)
    print("   dumped %s %s" % (out.dtype, out.shape))
    return 0 if out.dtype == np.float32 and verdict("vgg_dist --dump-logits vs reference",
                                                    rel(out, ref)) else 1


def cmd_import(sd_path, ckpt, log):
    torch, ckpt_tool, export = torch_modules()
    import torchvision
    tv = torchvision.models.vgg16(weights=None).eval()
    tv.load_state_dict(torch.load(sd_path, map_location="cpu", weights_only=True))
    desc, meta, _, _ = export.load_checkpoint(ckpt, export.vgg_torch.default_binary())
    version, s = ckpt_tool.read(ckpt, check_crc=True)
    params, buffers = export.f32_tensor(s["PARAMS"]), export.f32_tensor(s.get("BUFFERS", b""))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = tv.features(x).permute(0, 2, 3, 1).numpy()  # (N, 1, 1, 512) as NHWC
    got = reference(torch, desc, params, buffers, x.permute(0, 2, 3, 1), upto="features")
    ok = verdict("imported checkpoint's features vs torchvision's features(x)", rel(got.numpy(), want))
    said = open(log).read()
    # At 32x32 the flattened features are 512 wide (ImageNet's 25088) and there are 10 classes
    # (1000): classifier.0 and .6 cannot load; classifier.3 (4096 x 4096) fits and loads.
    reinit = [k for k in ("classifier.0", "classifier.6") if k + " re-initialised" in said]
    print("   re-initialised and said so: %s" % (", ".join(reinit) or "none"))
    fc = [l for l in desc["layers"] if l["kind"] == "linear"]
    w6 = params[fc[2]["w_offset"]:fc[2]["w_offset"] + fc[2]["w_count"]]
    w3 = params[fc[1]["w_offset"]:fc[1]["w_offset"] + fc[1]["w_count"]].reshape(fc[1]["w_shape"])
    std_ok = 0.005 < float(w6.std()) < 0.02  # N(0, 0.01)
    kept = torch.equal(w3, tv.classifier[3].weight)
    print("   classifier.6 weight std %.4f (N(0, 0.01)); classifier.3 %s" % (
        float(w6.std()), "loaded as it was" if kept else "NOT loaded"))
    return 0 if ok and len(reinit) == 2 and std_ok and kept and meta["model"] == "vgg16" else 1


def main():
    cmds = {"ref": cmd_ref, "torchscript": cmd_torchscript, "onnx": cmd_onnx,
            "state_dict": cmd_state_dict, "logits": cmd_logits, "import": cmd_import}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit("usage: export_check.py %s ..." % "|".join(cmds))
    return cmds[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
