#!/usr/bin/python3
# plot_metrics.py - draws loss, accuracy and learning-rate curves of a vgg_dist metrics file
# (JSON Lines from --metrics) into a PNG.   usage: plot_metrics.py METRICS.jsonl [OUT.png]
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: plot_metrics.py METRICS.jsonl [OUT.png]")
    src = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else src.rsplit(".", 1)[0] + ".png"
    events = []
    for n, line in enumerate(open(src), 1):
        line = line.strip()
        if not line:
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as e:
            sys.exit("%s:%d: not JSON (%s)" % (src, n, e))
    # The last record of each epoch, in epoch order (a resumed run appends to the same file).
    last = {}
    for e in events:
        if e.get("event") == "epoch":
            last[e["epoch"]] = e
    epochs = [last[k] for k in sorted(last)]
    if not epochs:
        sys.exit("%s: no epoch events yet" % src)
    test = [e for e in events if e.get("event") == "test"]
    x = [e["epoch"] for e in epochs]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ax[0].plot(x, [e["train_loss"] for e in epochs], "o-", label="train")
    ax[0].plot(x, [e["val_loss"] for e in epochs], "o-", label="validation")
    ax[0].set_title("loss")
    ax[1].plot(x, [e["train_acc"] for e in epochs], "o-", label="train")
    ax[1].plot(x, [e["val_acc"] for e in epochs], "o-", label="validation")
    if test:
        ax[1].axhline(test[-1]["test_acc"], color="k", ls="--", label="test (best model)")
    ax[1].set_title("accuracy")
    ax[2].semilogy(x, [e["lr"] for e in epochs], "o-")
    ax[2].set_title("learning rate")
    for a in ax:
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    ax[0].legend()
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print("wrote", out)


if __name__ == "__main__":
    main()
