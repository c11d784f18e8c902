#!/usr/bin/python3
# import_torchvision.py - a torchvision-layout VGG state_dict as a vgg_dist checkpoint:
#   import_torchvision.py STATE_DICT CKPT --model vgg16|vgg16_bn|vgg11|... [--width 1]
#       [--image-size 128] [--lr 1e-3] [--mean R,G,B] [--std R,G,B] [--seed 11]
#       [--batch 256] [--val-size 10000] [--train-limit 0] [--train-images 50000]
# The state_dict (torch.load with weights_only=True: tensors only, nothing unpickled) must hold
# every feature layer of the model (convolutions, and batch norm for *_bn) in torchvision's
# keys and layout; a classifier layer whose shape does not fit this model (ImageNet's
# 25088 -> 4096 -> 4096 -> 1000 against this model's flattened features and 10 classes) is
# re-initialised with the project's torchvision init (weights N(0, 0.01), biases 0; from a
# torch generator seeded by --seed, not vgg_dist's counter-based stream), one line per layer.
# The checkpoint is a fresh run's (format version 3, every section with its CRC): step 0,
# epoch 0, Adam's moments 0, no best epoch, lr --lr, normalisation --mean/--std (default: the
# CIFAR-10 train set's usual per-channel values), no warmup. A version-3 STATE must name a
# valid sample order (run_state_check_resume refuses zeros there), so it records --batch,
# --val-size, --train-limit and --train-images (default: vgg_dist's defaults on the full train
# set); `vgg_dist --resume CKPT` accepts the file when the run's --val-size and train images
# are those, and `--init-from CKPT` reads only PARAMS and BUFFERS.
import argparse
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import ckpt_tool  # noqa: E402
import torch  # noqa: E402
import vgg_nchw  # noqa: E402
import vgg_torch  # noqa: E402
from export import describe  # noqa: E402

MODELS = ("vgg11", "vgg13", "vgg16", "vgg19")
# CIFAR-10's 50,000 training images: per-channel mean and (population) standard deviation of
# the pixels in [0, 1], what vgg_dist's train-split statistics come to on the full set.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def fail(msg):
    sys.exit("import_torchvision.py: " + msg)


def triple(text):
    try:
        v = tuple(float(x) for x in text.split(","))
    except ValueError:
        v = ()
    if len(v) != 3 or not all(math.isfinite(x) for x in v):
        raise argparse.ArgumentTypeError("expected three finite numbers R,G,B, got %r" % text)
    return v


def read_state_dict(path):
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle the safe loader refuses, a damaged zip, a missing file
        fail("%s: not a loadable tensors-only state_dict: %s" % (path, str(e).splitlines()[0]))
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        fail("%s: not a state_dict (a dict of tensors)" % path)
    return sd


def fill(model, sd, path):
    """Copies sd into model: every feature tensor must fit; a classifier one that does not is
    re-initialised. Returns the re-initialised layers' names."""
    own = model.state_dict()
    extra = sorted(k for k in sd if k not in own and not k.endswith("num_batches_tracked"))
    if extra:
        fail("%s: keys this model lacks, e.g. %s (batch norm keys: use a *_bn --model)"
             % (path, extra[0]))
    reinit = []
    with torch.no_grad():
        for name, mod in list(model.features.named_children()) + \
                [("c" + n, m) for n, m in model.classifier.named_children()]:
            prefix = ("features." + name) if not name.startswith("c") else "classifier." + name[1:]
            tensors = {k: v for k, v in mod.state_dict().items() if k != "num_batches_tracked"}
            if not tensors:
                continue
            fits = all(prefix + "." + k in sd and sd[prefix + "." + k].shape == v.shape
                       for k, v in tensors.items())
            if fits:
                for k, v in tensors.items():
                    v.copy_(sd[prefix + "." + k].to(torch.float32))
            elif prefix.startswith("classifier."):
                reinit.append((prefix, mod))
            else:
                k = next(k for k, v in tensors.items()
                         if prefix + "." + k not in sd or sd[prefix + "." + k].shape != v.shape)
                have = tuple(sd[prefix + "." + k].shape) if prefix + "." + k in sd else "absent"
                fail("%s: %s.%s is %s, this model's is %s (--model, --width?)"
                     % (path, prefix, k, have, tuple(tensors[k].shape)))
    return reinit


def main():
    ap = argparse.ArgumentParser(description="Import a torchvision VGG state_dict.")
    ap.add_argument("state_dict")
    ap.add_argument("ckpt")
    ap.add_argument("--model", required=True,
                    choices=[m + s for m in MODELS for s in ("", "_bn")])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--image-size", type=int, default=128, help="vgg_dist's default: 128")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--mean", type=triple, default=CIFAR10_MEAN)
    ap.add_argument("--std", type=triple, default=CIFAR10_STD)
    ap.add_argument("--seed", type=int, default=11, help="vgg_dist's default")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--val-size", type=int, default=10000)
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--train-images", type=int, default=0,
                    help="the run's train-set images (default: --train-limit, else 50000)")
    ap.add_argument("--vgg-dist", default=vgg_torch.default_binary())
    a = ap.parse_args()
    # The bounds run_state_check_resume applies, so that the file is one vgg_dist accepts.
    train_images = a.train_images or a.train_limit or 50000
    if not (0 < a.lr <= 10 and math.isfinite(a.lr)):
        fail("--lr %g: above 0, at most 10" % a.lr)
    if not all(s > 0 for s in a.std):
        fail("--std: every channel above 0")
    if not (1 <= a.batch <= 1 << 20 and a.val_size >= 1 and a.train_limit >= 0 and
            train_images > a.val_size and (a.train_limit == 0 or train_images <= a.train_limit)):
        fail("sample order: need 1 <= --batch <= 2^20, --val-size >= 1, train images (%d) above "
             "--val-size and at most --train-limit" % train_images)
    if not os.access(a.vgg_dist, os.X_OK):
        fail("no vgg_dist at %s (build it: make, or give --vgg-dist)" % a.vgg_dist)
    name, bn = a.model.replace("_bn", ""), a.model.endswith("_bn")
    desc = describe(a.vgg_dist, name, a.width, a.image_size, bn)
    sd = read_state_dict(a.state_dict)
    model = vgg_nchw.VGG(desc)
    reinit = fill(model, sd, a.state_dict)
    gen = torch.Generator().manual_seed(a.seed)
    with torch.no_grad():
        for prefix, mod in reinit:
            mod.weight.normal_(0.0, 0.01, generator=gen)  # torchvision's (and --init's) linears
            mod.bias.zero_()
            have = sd.get(prefix + ".weight")
            print("import_torchvision.py: %s re-initialised: the state_dict's is %s, this "
                  "model's %s" % (prefix, tuple(have.shape) if have is not None else "absent",
                                  tuple(mod.weight.shape)))
        for mod in model.features:  # a state_dict without statistics: BatchNorm2d's defaults
            if isinstance(mod, torch.nn.BatchNorm2d) and not torch.isfinite(mod.running_var).all():
                fail("%s: running statistics that are not finite" % a.state_dict)
    params, buffers = vgg_nchw.to_flat(desc, model)
    if not (torch.isfinite(params).all() and torch.isfinite(buffers).all()):
        fail("%s: a parameter that is not finite" % a.state_dict)
    meta = {"model": name, "width": a.width, "image_size": a.image_size,
            "classes": desc["classes"], "n_params": desc["n_params"],
            "n_buffers": desc["n_buffers"]}
    zeros = bytes(4 * desc["n_params"])
    state = {"step": 0, "epoch": 0, "batch": 0, "epoch_loss_sum": 0.0, "epoch_correct": 0.0,
             "epoch_time_s": 0.0, "lr": a.lr, "sched_best": math.inf, "sched_bad_epochs": 0,
             "sched_cooldown": 0, "best_val_loss": math.inf, "best_val_acc": 0.0,
             "best_epoch": -1, "es_bad_epochs": 0, "seed": a.seed, "mean": a.mean,
             "std": a.std, "warmup_steps": 0, "order_batch": a.batch,
             "order_val_size": a.val_size, "order_train_limit": a.train_limit,
             "order_train_images": train_images}
    try:
        ckpt_tool.write(a.ckpt, meta, state, {
            "PARAMS": params.numpy().tobytes(), "ADAM_M": zeros, "ADAM_V": zeros,
            "BUFFERS": buffers.numpy().tobytes()})
    except OSError as e:
        fail("%s: cannot write: %s" % (a.ckpt, e.strerror))
    loaded = len([m for m in model.modules() if isinstance(m, (torch.nn.Conv2d,
                  torch.nn.BatchNorm2d, torch.nn.Linear))]) - len(reinit)
    print("import_torchvision.py: %s -> %s (%s width %g, %dx%d, %d layers loaded, %d "
          "re-initialised)" % (a.state_dict, a.ckpt, a.model, a.width, a.image_size,
                               a.image_size, loaded, len(reinit)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
