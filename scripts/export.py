#!/usr/bin/python3
# export.py - a vgg_dist checkpoint as a model that runs without vgg_dist:
#   export.py CKPT OUT --format torchscript|onnx|state_dict [--vgg-dist BIN]
# torchscript: torch.jit.script of the NCHW module, metadata in the extra file 'vgg_dist.json'
#              (torch.jit.load(OUT, _extra_files={'vgg_dist.json': ''}) reads it back);
# onnx:        opset 17, input "input" (N, 3, S, S) and output "logits" (N, classes), the batch
#              axis dynamic, metadata in metadata_props (key 'vgg_dist.json');
# state_dict:  torch.save of a dict of tensors only, torchvision's keys and layout
#              (features.N.*, classifier.0/3/6.*), metadata in the sidecar OUT.json.
# The network is the checkpoint's (model, width and image size from its META; batch norm when
# it holds buffers), described by `vgg_dist --print-model` (the layer table lives only in
# src/model.c) and checked against the file's parameter and buffer counts. The model takes
# NCHW float32 already resized and normalised; the metadata says how (metadata() below, and
# README "Export and import"). Runs with Debian's Python (/usr/bin/python3: torch, and onnx
# for the ONNX format). Checkpoints are read by tests/ckpt_tool.py (never unpickled).
import argparse
import io
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import ckpt_tool  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import vgg_nchw  # noqa: E402
import vgg_torch  # noqa: E402

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")  # CIFAR-10's batches.meta.txt, label order
FORMATS = ("torchscript", "onnx", "state_dict")


def fail(msg):
    sys.exit("export.py: " + msg)


def describe(binary, model, width, size, batchnorm):
    """--print-model's JSON for these options; one line when vgg_dist cannot say."""
    try:
        return vgg_torch.describe(binary, "--model", model, "--width", "%.9g" % width,
                                  "--image-size", str(size), "--batchnorm", str(int(batchnorm)))
    except (OSError, subprocess.CalledProcessError, ValueError) as e:
        fail("cannot describe %s width %g size %d with %s: %s" % (model, width, size, binary, e))


def f32_tensor(payload):
    """A section's little-endian float32 payload as a 1-D tensor (empty when it is)."""
    return torch.from_numpy(np.frombuffer(payload, dtype="<f4").astype(np.float32))


def load_checkpoint(path, binary):
    """(desc, meta, state, model in eval mode) of a vgg_dist checkpoint."""
    version, s = ckpt_tool.read(path, check_crc=True)
    meta = ckpt_tool.meta(version, s["META"])
    st = ckpt_tool.state(version, s["STATE"])
    # The meta names no batch norm flag: a network with batch norm is the one with buffers
    # (its running statistics); --print-model's counts then confirm the whole shape.
    desc = describe(binary, meta["model"], meta["width"], meta["image_size"], meta["n_buffers"] > 0)
    for key in ("n_params", "n_buffers", "classes"):
        if desc[key] != meta[key]:
            fail("%s: %s %d, but %s width %g size %d has %d" % (
                path, key, meta[key], meta["model"], meta["width"], meta["image_size"], desc[key]))
    params, buffers = f32_tensor(s["PARAMS"]), f32_tensor(s.get("BUFFERS", b""))
    if not (torch.isfinite(params).all() and torch.isfinite(buffers).all()):
        fail("%s: PARAMS or BUFFERS hold a value that is not finite" % path)
    model = vgg_nchw.VGG(desc)
    vgg_nchw.load_flat(desc, model, params, buffers)
    return desc, meta, st, model.eval()


def metadata(desc, meta, st, path):
    """What a user needs to feed the model: input, output, preprocessing, classes."""
    size = desc["image_size"]
    return {
        "format": "vgg_dist export 1",
        "model": meta["model"], "width": meta["width"], "image_size": size,
        "batchnorm": bool(desc["batchnorm"]), "classes": meta["classes"],
        "class_names": list(CLASS_NAMES),
        "input": {"name": "input", "layout": "NCHW", "dtype": "float32",
                  "shape": ["N", 3, size, size], "channels": "RGB"},
        "output": {"name": "logits", "shape": ["N", meta["classes"]],
                   "meaning": "unnormalised logits (apply softmax for probabilities)"},
        "preprocess": {
            "steps": ["to_float", "resize", "normalize"],
            "to_float": "uint8 RGB 32x32 -> float32 in [0, 1]: value / 255",
            "resize": {"from": [32, 32], "to": [size, size], "mode": "bilinear",
                       "align_corners": False, "antialias": False,
                       "equivalent": "torch.nn.functional.interpolate(x, size=(%d, %d), "
                                     "mode='bilinear', align_corners=False, antialias=False)"
                                     % (size, size)},
            "normalize": {"mean": [float(v) for v in st["mean"]],
                          "std": [float(v) for v in st["std"]],
                          "formula": "(x[c] - mean[c]) / std[c], per RGB channel"},
        },
        "source": {"checkpoint": os.path.basename(path), "epoch": st["epoch"],
                   "step": st["step"], "best_epoch": st["best_epoch"]},
    }


def write_atomic(out, data):
    tmp = "%s.tmp.%d" % (out, os.getpid())
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, out)


def export_torchscript(model, info, out):
    scripted = torch.jit.script(model)  # script, not trace: no shape is baked in
    buf = io.BytesIO()
    torch.jit.save(scripted, buf, _extra_files={"vgg_dist.json": json.dumps(info, indent=1)})
    write_atomic(out, buf.getvalue())


def export_onnx(model, info, out):
    try:
        import onnx
    except ImportError:
        fail("the onnx format needs the onnx package (scripts/setup.sh test installs it)")
    size = info["image_size"]
    buf = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 3, size, size), buf, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = "vgg_dist.json", json.dumps(info)
    onnx.checker.check_model(proto)
    write_atomic(out, proto.SerializeToString())


def export_state_dict(model, info, out):
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(sd, buf)  # tensors in a plain dict: loads with torch.load(weights_only=True)
    write_atomic(out + ".json", (json.dumps(info, indent=1) + "\n").encode())
    write_atomic(out, buf.getvalue())


def main():
    ap = argparse.ArgumentParser(description="Export a vgg_dist checkpoint.")
    ap.add_argument("ckpt")
    ap.add_argument("out")
    ap.add_argument("--format", required=True, choices=FORMATS)
    ap.add_argument("--vgg-dist", default=vgg_torch.default_binary(),
                    help="the vgg_dist whose --print-model describes the network "
                         "(default: $VGG_DIST, else ../vgg_dist beside scripts/)")
    a = ap.parse_args()
    if not os.access(a.vgg_dist, os.X_OK):
        fail("no vgg_dist at %s (build it: make, or give --vgg-dist)" % a.vgg_dist)
    desc, meta, st, model = load_checkpoint(a.ckpt, a.vgg_dist)
    info = metadata(desc, meta, st, a.ckpt)
    {"torchscript": export_torchscript, "onnx": export_onnx,
     "state_dict": export_state_dict}[a.format](model, info, a.out)
    print("export.py: %s (%s width %g, %dx%d, %s) -> %s (%s)" % (
        a.ckpt, meta["model"], meta["width"], desc["image_size"], desc["image_size"],
        "batch norm" if desc["batchnorm"] else "no batch norm", a.out, a.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
