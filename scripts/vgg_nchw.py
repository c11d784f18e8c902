# vgg_nchw.py - vgg_dist's network as a standard NCHW PyTorch module with torchvision's layout
# and key names (features.N, classifier.0/3/6), and the two conversions between it and
# vgg_dist's flat buffers (PARAMS, BUFFERS). Shared by scripts/export.py,
# scripts/import_torchvision.py and tests/export_check.py; import it with scripts/ on sys.path.
#
# The layouts it converts (src/model.c, `vgg_dist --print-model`):
#   conv weight  flat (K, 3, 3, C) "KRSC"       <-> torch (K, C, 3, 3)
#   first FC     flat (out, h, w, c): vgg_dist flattens NHWC activations in (h, w, c) order
#                                             <-> torch (out, c, h, w) flattened, as NCHW's flatten
#   BN buffers   flat running mean (C) then running var (C) at buf_offset
#   other FCs, biases, BN weight/bias: the same in both.
# The module's forward is vgg_dist's eval forward: its dropouts are identities, so dropout's
# place (vgg_dist: before the FC; torchvision: after the ReLU) does not matter; torchvision's
# AdaptiveAvgPool2d((7, 7)) is absent (vgg_dist has none; it holds no parameters, so the keys
# are torchvision's all the same).
import torch
import torch.nn as nn


class VGG(nn.Module):
    """features -> flatten (c, h, w) -> classifier, torchvision's module numbering."""

    def __init__(self, desc):
        super().__init__()
        feats, fcs = [], []
        for l in desc["layers"]:
            if l["kind"] == "conv":
                feats.append(nn.Conv2d(l["in"][2], l["out"][2], l["kernel"], padding=l["pad"]))
            elif l["kind"] == "bn":
                feats.append(nn.BatchNorm2d(l["in"][2], eps=l["eps"], momentum=l["momentum"]))
            elif l["kind"] == "pool":
                feats.append(nn.MaxPool2d(l["kernel"], l["stride"]))
            elif l["kind"] == "linear":
                fcs.append(nn.Linear(l["in"][2] if "flat_hwc" not in l else
                                     l["flat_hwc"][0] * l["flat_hwc"][1] * l["flat_hwc"][2],
                                     l["out"][2]))
            elif l["kind"] != "dropout":
                raise ValueError("unknown layer kind %r" % l["kind"])
            if l["kind"] in ("conv", "bn") and l["act"] == "relu":
                feats.append(nn.ReLU(inplace=True))
            elif l["kind"] in ("conv", "bn") and l["act"] != "none":
                raise ValueError("unknown activation %r" % l["act"])
        if len(fcs) != 3:
            raise ValueError("expected 3 linear layers (torchvision's classifier), got %d" % len(fcs))
        p = desc.get("dropout", 0.5)
        # torchvision's classifier: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear (0/3/6)
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(fcs[0], nn.ReLU(True), nn.Dropout(p), fcs[1],
                                        nn.ReLU(True), nn.Dropout(p), fcs[2])

    def forward(self, x):  # x: (N, 3, S, S), resized and normalised
        return self.classifier(torch.flatten(self.features(x), 1))


def _pairs(desc, model):
    """(layer, torch module) for each layer of desc that holds parameters, in table order."""
    mods = [m for m in model.features if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    mods += [m for m in model.classifier if isinstance(m, nn.Linear)]
    layers = [l for l in desc["layers"] if l["kind"] in ("conv", "bn", "linear")]
    if len(mods) != len(layers):
        raise ValueError("the module has %d parameter layers, the description %d"
                         % (len(mods), len(layers)))
    return list(zip(layers, mods))


def flat_to_torch(l, w):
    """A layer's weight from the flat buffer (1-D tensor) in torch's layout."""
    if l["kind"] == "conv":  # (K, R, S, C) -> (K, C, R, S)
        return w.reshape(l["w_shape"]).permute(0, 3, 1, 2).contiguous()
    if "flat_hwc" in l:  # (out, h, w, c) -> (out, c, h, w) -> (out, c*h*w)
        h, w_, c = l["flat_hwc"]
        out = l["w_shape"][0]
        return w.reshape(out, h, w_, c).permute(0, 3, 1, 2).reshape(out, c * h * w_).contiguous()
    return w.reshape(l["w_shape"]).clone()


def torch_to_flat(l, w):
    """The inverse of flat_to_torch: a 1-D tensor in the flat buffer's layout."""
    if l["kind"] == "conv":
        return w.permute(0, 2, 3, 1).reshape(-1)
    if "flat_hwc" in l:
        h, w_, c = l["flat_hwc"]
        return w.reshape(w.shape[0], c, h, w_).permute(0, 2, 3, 1).reshape(-1)
    return w.reshape(-1)


def load_flat(desc, model, params, buffers):
    """Fills model from 1-D float32 tensors params (n_params) and buffers (n_buffers)."""
    if params.numel() != desc["n_params"] or buffers.numel() != desc["n_buffers"]:
        raise ValueError("%d params / %d buffers, the model has %d / %d" % (
            params.numel(), buffers.numel(), desc["n_params"], desc["n_buffers"]))
    with torch.no_grad():
        for l, m in _pairs(desc, model):
            w = params[l["w_offset"]:l["w_offset"] + l["w_count"]]
            m.weight.copy_(flat_to_torch(l, w))
            m.bias.copy_(params[l["b_offset"]:l["b_offset"] + l["b_count"]])
            if l["kind"] == "bn":
                c = l["in"][2]
                m.running_mean.copy_(buffers[l["buf_offset"]:l["buf_offset"] + c])
                m.running_var.copy_(buffers[l["buf_offset"] + c:l["buf_offset"] + 2 * c])
                m.num_batches_tracked.zero_()  # vgg_dist does not count (momentum is fixed)


def to_flat(desc, model):
    """(params, buffers): model's tensors as vgg_dist's flat float32 buffers."""
    params = torch.zeros(desc["n_params"], dtype=torch.float32)
    buffers = torch.zeros(desc["n_buffers"], dtype=torch.float32)
    with torch.no_grad():
        for l, m in _pairs(desc, model):
            params[l["w_offset"]:l["w_offset"] + l["w_count"]] = torch_to_flat(l, m.weight)
            params[l["b_offset"]:l["b_offset"] + l["b_count"]] = m.bias.reshape(-1)
            if l["kind"] == "bn":
                c = l["in"][2]
                buffers[l["buf_offset"]:l["buf_offset"] + c] = m.running_mean
                buffers[l["buf_offset"] + c:l["buf_offset"] + 2 * c] = m.running_var
    return params, buffers
