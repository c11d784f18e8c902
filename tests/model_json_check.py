#!/usr/bin/python3
# model_json_check.py - checks what model_print_json (vgg_dist --print-model) wrote: valid JSON,
# the expected name / parameter count / layer and conv counts, every layer's input the previous
# one's output, parameter tensors tiling the flat buffer in layer order with counts equal to
# their shapes, and the flattened feature map matching the first FC's input.
# usage: model_json_check.py JSON NAME N_PARAMS N_LAYERS N_CONVS   (exit 0: all hold)
import json
import math
import sys


def check(path, name, n_params, n_layers, n_convs):
    m = json.load(open(path))
    assert m["name"] == name, m["name"]
    assert m["n_params"] == n_params, (m["n_params"], n_params)
    layers = m["layers"]
    assert len(layers) == n_layers, len(layers)
    assert sum(l["kind"] == "conv" for l in layers) == n_convs
    assert {l["kind"] for l in layers} <= {"conv", "pool", "dropout", "linear"}
    prev, pos = [m["image_size"], m["image_size"], 3], 0
    for i, l in enumerate(layers):
        if l["kind"] in ("dropout", "linear") and layers[i - 1]["kind"] == "pool":
            assert l.get("flat_hwc") == prev, (i, l, prev)  # the first FC block: flattened
        if "flat_hwc" in l:
            assert prev in (l["flat_hwc"], [1, 1, math.prod(l["flat_hwc"])]), (i, l, prev)
            prev = [1, 1, math.prod(l["flat_hwc"])]
        assert l["in"] == prev, (i, l["in"], prev)
        prev = l["out"]
        relu = l["kind"] == "conv" or (l["kind"] == "linear" and i + 1 < len(layers))
        assert l["act"] == ("relu" if relu else "none"), (i, l)
        if "w_count" in l:
            assert l["w_offset"] == pos and l["w_count"] == math.prod(l["w_shape"]), (i, pos, l)
            assert l["b_offset"] == pos + l["w_count"] and l["b_count"] == l["out"][2], (i, l)
            pos = l["b_offset"] + l["b_count"]
    assert pos == n_params, (pos, n_params)
    assert layers[-1]["out"] == [1, 1, m["classes"]]


if __name__ == "__main__":
    check(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]))
