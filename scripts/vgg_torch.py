# vgg_torch.py - vgg_dist's network as a PyTorch nn.Module, built from vgg_dist's own
# description of it (`vgg_dist --print-model`: the layer table lives only in src/model.c), and
# torchvision's VGG initialisation. Shared by the PyTorch peers (torch_peer.py: speed,
# torch_cifar_train.py: accuracy). Import it with scripts/ on sys.path.
import json
import os
import subprocess

import torch.nn as nn


def describe(binary, *args):
    """The model JSON of `binary --print-model args...` (a vgg_dist)."""
    out = subprocess.run([binary, "--print-model", *args], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def default_binary():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.environ.get("VGG_DIST") or os.path.join(here, "..", "vgg_dist")


def build(desc):
    """nn.Sequential from --print-model's layers (kind, act, in/out [H, W, C])."""
    layers = []
    for l in desc["layers"]:
        if l["kind"] == "conv":
            layers.append(nn.Conv2d(l["in"][2], l["out"][2], l["kernel"], padding=l["pad"]))
        elif l["kind"] == "pool":
            layers.append(nn.MaxPool2d(l["kernel"], l["stride"]))
        elif l["kind"] == "bn":
            layers.append(nn.BatchNorm2d(l["in"][2], eps=l["eps"], momentum=l["momentum"]))
        else:
            if "flat_hwc" in l and not any(isinstance(m, nn.Flatten) for m in layers):
                layers.append(nn.Flatten())
            layers.append(nn.Dropout(l["p"]) if l["kind"] == "dropout" else nn.Linear(l["in"][2], l["out"][2]))
        if l["act"] == "relu":
            layers.append(nn.ReLU(True))
        elif l["act"] != "none":
            raise ValueError(f"unknown activation {l['act']!r}")
    return nn.Sequential(*layers)


def init_torchvision(model):
    """torchvision.models.VGG's initialisation (vgg_dist's --init torchvision)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)
