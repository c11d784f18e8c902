#!/usr/bin/python3
# to_tensorboard.py - converts a vgg_dist metrics file (JSON Lines from --metrics) into TensorBoard
# event files, written by torch.utils.tensorboard.SummaryWriter (the tensorboard package from
# PyPI: `scripts/setup.sh test` installs it into .venv, which also sees Debian's torch).
#   usage: .venv/bin/python scripts/to_tensorboard.py METRICS.jsonl LOGDIR
#          tensorboard --logdir LOGDIR
# Tags, one scalar per numeric field of each record (booleans as 0/1), named EVENT/FIELD with a
# leading "EVENT_" dropped from the field (test_loss -> test/loss):
#   step/train_loss, step/train_acc, step/images_per_s, step/lr      x: the global step
#   epoch/train_loss, .../val_loss, val_acc, lr, images_per_s, time_s, best   x: the epoch (1-based)
#   test/loss, test/acc, test/images                                 x: best_epoch (the model tested)
#   any other event (e.g. eval): its "step", else its "epoch", else its ordinal, as x.
# Index fields (epoch, batch, step, best_epoch) are the x axis, never values. A resumed run appends
# to the same file and may log a step twice (the steps after its checkpoint): the last record of a
# (tag, x) wins, as in scripts/plot_metrics.py. Values are stored as float32 (TensorBoard's type).
import json
import os
import sys

AXIS = {"step": "step", "epoch": "epoch", "test": "best_epoch"}
INDEX_FIELDS = {"event", "epoch", "batch", "step", "best_epoch"}


def read_events(path):
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        sys.exit("to_tensorboard: cannot read %s: %s" % (path, e.strerror))
    events = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except json.JSONDecodeError as err:
            sys.exit("to_tensorboard: %s:%d: not JSON (%s)" % (path, n, err))
        if not isinstance(e, dict) or not isinstance(e.get("event"), str):
            sys.exit("to_tensorboard: %s:%d: not a metrics record (an object with \"event\")" % (path, n))
        events.append((n, e))
    if not events:
        sys.exit("to_tensorboard: %s: no metrics records" % path)
    return events


def scalars(path, events):
    """{tag: {x: value}} from the records, the last record of a (tag, x) winning."""
    out, ordinal = {}, {}
    for n, e in events:
        kind = e["event"]
        ordinal[kind] = ordinal.get(kind, 0) + 1
        key = AXIS.get(kind) or ("step" if "step" in e else "epoch" if "epoch" in e else None)
        x = e.get(key) if key else ordinal[kind]
        if isinstance(x, bool) or not isinstance(x, int) or x < 0:
            sys.exit("to_tensorboard: %s:%d: a %s record needs a non-negative integer \"%s\"" % (path, n, kind, key))
        for field, v in e.items():
            if field in INDEX_FIELDS or not isinstance(v, (int, float)):  # bool is an int
                continue
            name = field[len(kind) + 1:] if field.startswith(kind + "_") else field
            out.setdefault(kind + "/" + name, {})[x] = float(v)
    if not out:
        sys.exit("to_tensorboard: %s: no numeric fields to convert" % path)
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: to_tensorboard.py METRICS.jsonl LOGDIR")
    src, logdir = sys.argv[1], sys.argv[2]
    data = scalars(src, read_events(src))
    # A second conversion into the same directory would add a second event file, and TensorBoard
    # would show every point twice: refuse instead.
    if os.path.isdir(logdir) and any(f.startswith("events.out.tfevents") for f in os.listdir(logdir)):
        sys.exit("to_tensorboard: %s already holds event files: remove them or choose another LOGDIR" % logdir)
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        sys.exit("to_tensorboard: %s exists and is not a directory" % logdir)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        sys.exit("to_tensorboard: %s: run scripts/setup.sh test, then use .venv/bin/python" % e)
    writer = SummaryWriter(log_dir=logdir)
    # Each tag in x order: TensorBoard draws a line through the points in the order written.
    for tag in sorted(data):
        for x in sorted(data[tag]):
            writer.add_scalar(tag, data[tag][x], global_step=x)
    writer.close()
    print("to_tensorboard: %d scalars in %d tags -> %s" % (sum(map(len, data.values())), len(data), logdir))


if __name__ == "__main__":
    main()
