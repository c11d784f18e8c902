#!/usr/bin/python3
# scaling_model.py - predicts data-parallel step time, images/s and scaling efficiency of vgg_dist
# for 1 to 64 GPUs (weak scaling: a fixed batch per GPU) from a per-GPU compute time, the gradient
# bytes, the bucket plan and an interconnect, with the ring all-reduce cost model; prints a table
# and every assumption, and draws a PNG. With --validate, compares the model with a measured
# multi-rank step instead (scripts/measure_cpu_scaling.sh's JSON).
#   usage: scaling_model.py [--interconnect nvlink4-ib-ndr|...] [--compute-ms MS] [--n-params N]
#                           [--bucket-mb 25] [--from-json FILE] [--png OUT.png] [--validate FILE]
#
# The model, per step on n GPUs (n <= gpus-per-node: the intra-node link; beyond: the slower of
# the intra-node link and the inter-node one, as one flat ring):
#   buckets      ceil(grad_bytes / bucket_bytes), the last one the remainder
#   allreduce    sum over buckets of 2 (n - 1) / n * bucket_bytes / bus_bw + latency
#   no overlap   step = compute + allreduce + sync_collectives * latency
#   overlap      buckets are reduced while backward still runs: all but the last bucket's time is
#                hidden, at most backward's time (backward_fraction * compute); the last bucket
#                can only start when backward ends.  step = compute + allreduce - hidden + sync
#   images/s = n * batch / step;   efficiency = step(1) / step(n)   (n = 1 reduces nothing)
# --from-json FILE: a JSON object whose keys override the flags of the same name (dashes as
# underscores): n_params, compute_ms, batch_per_rank, bucket_mb, backward_fraction,
# sync_collectives, grad_dtype ("fp32"|"bf16"), and for --validate: allreduce (a list of
# {"bytes", "median_s"} rows, one bucket each), measured_step_ms ({"2": ms, ...}); other keys
# are kept as notes. This is what scripts/measure_cpu_scaling.sh writes, and what `make bench`
# writes for each of its one-rank vgg_dist rows (build/bench/scaling_*.json: n_params,
# compute_ms = the row's measured step, batch_per_rank), the GPU row's included where there is one.
import argparse
import json
import math
import sys

# Interconnects: bus bandwidth in GB/s (NCCL's "busbw": 2 (n-1)/n * bytes / time) and the latency
# of one all-reduce in microseconds. Stated estimates, not measurements of ours.
LINKS = {
    # NVLink 4 (H100 SXM, NVSwitch): NCCL all-reduce busbw about 370-450 GB/s on 8 GPUs.
    "nvlink4": (400.0, 15.0, "NVLink 4 / NVSwitch, 400 GB/s bus bandwidth, 15 us per all-reduce"),
    # InfiniBand NDR 400 Gb/s: about 47 GB/s achievable per NIC; NICs per node sets the aggregate.
    "ib-ndr": (47.0, 25.0, "InfiniBand NDR 400 Gb/s, 47 GB/s per NIC, 25 us per all-reduce"),
    "100gbe": (11.0, 30.0, "100 GbE (RoCE), 11 GB/s per NIC, 30 us per all-reduce"),
    "25gbe": (2.8, 50.0, "25 GbE (RoCE), 2.8 GB/s per NIC, 50 us per all-reduce"),
}
# Preset = intra-node link, inter-node link, NICs per node (DGX H100: 8 ConnectX-7, one per GPU).
PRESETS = {
    "nvlink4-ib-ndr": ("nvlink4", "ib-ndr", 8),
    "nvlink4-100gbe": ("nvlink4", "100gbe", 1),
    "nvlink4-25gbe": ("nvlink4", "25gbe", 1),
}

# The default compute time, an ESTIMATE (no H100 measured here): VGG16 is 15.5 GMACs (31 GFLOP)
# forward per 224x224 image; at 128x128 the convolutions scale by (128/224)^2; forward + backward
# is 3x forward; 64 images per GPU; an H100 SXM's dense bf16 peak is 989 TFLOP/s, of which 35% is
# assumed achieved.
EST = dict(gflop_224=31.0, size=128, batch=64, peak_tflops=989.0, mfu=0.35)


def estimated_compute_ms(e=EST):
    flop = e["gflop_224"] * 1e9 * (e["size"] / 224.0) ** 2 * 3 * e["batch"]
    return 1e3 * flop / (e["peak_tflops"] * 1e12 * e["mfu"])


def bucket_sizes(grad_bytes, bucket_mb):
    b = bucket_mb * 1e6
    n = max(1, math.ceil(grad_bytes / b))
    return [b] * (n - 1) + [grad_bytes - b * (n - 1)]


def link_for(n, a):
    """(bus bandwidth GB/s, latency us) of an n-GPU ring."""
    if n <= a.gpus_per_node:
        return a.intra_bw, a.intra_lat
    return min(a.intra_bw, a.inter_bw * a.nics_per_node), max(a.intra_lat, a.inter_lat)


def step_ms(n, compute_ms, grad_bytes, a, overlap):
    """Predicted step time in ms on n GPUs and its all-reduce part."""
    if n == 1:
        return compute_ms, 0.0
    bw, lat = link_for(n, a)
    per = [2.0 * (n - 1) / n * b / (bw * 1e9) * 1e3 + lat * 1e-3 for b in bucket_sizes(grad_bytes, a.bucket_mb)]
    ar = sum(per)
    hidden = min(ar - per[-1], a.backward_fraction * compute_ms) if overlap else 0.0
    return compute_ms + ar - hidden + a.sync_collectives * lat * 1e-3, ar


def parse():
    p = argparse.ArgumentParser(description="ring all-reduce scaling model for vgg_dist (see the file's header)")
    p.add_argument("--interconnect", default="nvlink4-ib-ndr", choices=sorted(PRESETS) + ["custom"])
    p.add_argument("--intra-bw", type=float, help="intra-node bus bandwidth, GB/s (custom)")
    p.add_argument("--intra-lat", type=float, help="intra-node latency per all-reduce, us (custom)")
    p.add_argument("--inter-bw", type=float, help="inter-node bandwidth per NIC, GB/s (custom)")
    p.add_argument("--inter-lat", type=float, help="inter-node latency per all-reduce, us (custom)")
    p.add_argument("--nics-per-node", type=int)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--max-gpus", type=int, default=64)
    p.add_argument("--n-params", type=int, default=65103946,
                   help="default: ./vgg_dist --print-model --model vgg16 --image-size 128")
    p.add_argument("--compute-ms", type=float, default=None,
                   help="one GPU's step (forward, backward, optimizer); default: the estimate in the header")
    p.add_argument("--batch-per-rank", type=int, default=64)
    p.add_argument("--bucket-mb", type=float, default=25.0)
    p.add_argument("--backward-fraction", type=float, default=2.0 / 3.0,
                   help="backward's share of compute (backward = 2x forward FLOPs)")
    p.add_argument("--sync-collectives", type=int, default=0,
                   help="small blocking all-reduces per step (vgg_dist --sync-bn 1: 3 per BN layer, 39 for VGG16)")
    p.add_argument("--grad-dtype", choices=["fp32", "bf16", "both"], default="both")
    p.add_argument("--from-json", help="inputs as JSON (see the header); keys override flags")
    p.add_argument("--png", default="docs/scaling_vgg16.png")
    p.add_argument("--validate", metavar="FILE", help="compare with measured steps (measure_cpu_scaling.sh)")
    a = p.parse_args()
    src = a.from_json or a.validate
    if src:
        try:
            doc = json.load(open(src))
        except (OSError, ValueError) as e:
            sys.exit("scaling_model: %s: %s" % (src, e))
        if not isinstance(doc, dict):
            sys.exit("scaling_model: %s: not a JSON object" % src)
        for k, v in doc.items():
            if k in vars(a) and k not in ("from_json", "validate", "png"):
                setattr(a, k, v)
        a.doc = doc
    if a.interconnect == "custom":
        if None in (a.intra_bw, a.intra_lat, a.inter_bw, a.inter_lat):
            sys.exit("scaling_model: --interconnect custom needs --intra-bw, --intra-lat, --inter-bw, --inter-lat")
        a.nics_per_node = a.nics_per_node or 1
        a.link_text = "custom: intra %g GB/s %g us, inter %g GB/s x %d NICs %g us" % (
            a.intra_bw, a.intra_lat, a.inter_bw, a.nics_per_node, a.inter_lat)
    else:
        intra, inter, nics = PRESETS[a.interconnect]
        a.intra_bw, a.intra_lat = (a.intra_bw or LINKS[intra][0]), (a.intra_lat or LINKS[intra][1])
        a.inter_bw, a.inter_lat = (a.inter_bw or LINKS[inter][0]), (a.inter_lat or LINKS[inter][1])
        a.nics_per_node = a.nics_per_node or nics
        a.link_text = "intra-node: %s; inter-node: %s, %d NIC(s) per node" % (LINKS[intra][2], LINKS[inter][2], a.nics_per_node)
    for k in ("n_params", "batch_per_rank", "gpus_per_node", "max_gpus"):
        if not isinstance(getattr(a, k), int) or getattr(a, k) < 1:
            sys.exit("scaling_model: %s must be a positive integer" % k)
    for k in ("bucket_mb", "intra_bw", "inter_bw"):
        if not getattr(a, k) > 0:
            sys.exit("scaling_model: %s must be > 0" % k)
    if not 0 <= a.backward_fraction <= 1 or a.sync_collectives < 0 or min(a.intra_lat, a.inter_lat) < 0:
        sys.exit("scaling_model: need 0 <= backward_fraction <= 1 and non-negative latencies and sync_collectives")
    if a.compute_ms is not None and not a.compute_ms > 0:
        sys.exit("scaling_model: compute_ms must be > 0")
    return a


def assumptions(a, estimated):
    out = ["weak scaling: %d images per GPU; %d GPUs per node; one flat ring (n <= %d: intra-node link;"
           " beyond: min(intra bus bw, inter bw x NICs per node))" % (a.batch_per_rank, a.gpus_per_node, a.gpus_per_node),
           "links: " + a.link_text,
           "all-reduce per bucket: 2(n-1)/n x bytes / bus bw + latency; buckets of %g MB" % a.bucket_mb,
           "overlap: all but the last bucket hidden behind backward, at most backward = %.2f x compute" % a.backward_fraction,
           "small blocking collectives per step (sync BN): %d x latency, never hidden" % a.sync_collectives]
    if estimated:
        out.append("compute %.2f ms per step is an ESTIMATE: VGG16 %g GFLOP fwd/img at 224 x (%d/224)^2 x 3 (fwd+bwd)"
                   " x %d img at %.0f%% of %g TFLOP/s dense bf16 (H100 SXM)" % (
                       a.compute_ms, EST["gflop_224"], EST["size"], EST["batch"], 100 * EST["mfu"], EST["peak_tflops"]))
    else:
        out.append("compute %.2f ms per step: given (flag or JSON)" % a.compute_ms)
    out.append("gradients: %d parameters x 4 bytes (fp32) or x 2 (bf16 on the wire)" % a.n_params)
    return out


def table(a):
    gpus = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if n <= a.max_gpus]
    dtypes = ["fp32", "bf16"] if a.grad_dtype == "both" else [a.grad_dtype]
    rows = []
    for dt in dtypes:
        gb = a.n_params * (4 if dt == "fp32" else 2)
        for n in gpus:
            r = {"dtype": dt, "gpus": n, "buckets": len(bucket_sizes(gb, a.bucket_mb))}
            for ov in (False, True):
                t, ar = step_ms(n, a.compute_ms, gb, a, ov)
                key = "overlap" if ov else "serial"
                r[key] = (t, n * a.batch_per_rank / t * 1e3, step_ms(1, a.compute_ms, gb, a, ov)[0] / t)
                r["allreduce_ms"] = ar
            rows.append(r)
    return rows


def draw(a, rows, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for dt in sorted({r["dtype"] for r in rows}):
        for key, ls in (("serial", "--"), ("overlap", "-")):
            rr = [r for r in rows if r["dtype"] == dt]
            x = [r["gpus"] for r in rr]
            ax[0].plot(x, [r[key][1] for r in rr], "o" + ls, label="%s grads, %s" % (dt, key))
            ax[1].plot(x, [100 * r[key][2] for r in rr], "o" + ls, label="%s grads, %s" % (dt, key))
    ideal = [r["gpus"] * rows[0]["serial"][1] for r in rows if r["dtype"] == rows[0]["dtype"]]
    ax[0].plot([r["gpus"] for r in rows if r["dtype"] == rows[0]["dtype"]], ideal, "k:", label="ideal")
    ax[0].set(xscale="log", yscale="log", xlabel="GPUs", ylabel="images/s", title="throughput (model)")
    ax[1].set(xscale="log", xlabel="GPUs", ylabel="scaling efficiency, %", ylim=(0, 105), title="efficiency (model)")
    for x in ax:
        x.axvline(a.gpus_per_node, color="grey", lw=0.8)
        x.grid(alpha=0.3)
    ax[1].legend(fontsize=8)
    fig.suptitle("%s, %d params, %d img/GPU, compute %.2f ms/step" % (
        a.interconnect, a.n_params, a.batch_per_rank, a.compute_ms), fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=70)
    print("wrote", png)


def fit_allreduce(rows):
    """(bus bandwidth GB/s, latency us) from the one-bucket rows: the latency is the smallest
    message's time, the bandwidth the large messages' (>= 1 MB) bytes over their time less that
    latency. Not a least-squares line: on a shared machine the large sizes' noise would set the
    intercept (a fit gave 0.5 ms of 'latency' where a 4 KB all-reduce takes 12 us)."""
    rows = sorted(rows, key=lambda r: r["bytes"])
    big = [r for r in rows if r["bytes"] >= 1 << 20]
    if len(rows) < 2 or not big:
        sys.exit("scaling_model: --validate needs one-bucket all-reduce rows, some of 1 MB or more")
    lat = rows[0]["median_s"]
    x = sum(2.0 * (r["ranks"] - 1) / r["ranks"] * r["bytes"] for r in big)
    return x / sum(r["median_s"] - lat for r in big) * 1e-9, lat * 1e6


def validate(a):
    doc = a.doc
    for k in ("allreduce", "measured_step_ms", "compute_ms", "n_params"):
        if k not in doc:
            sys.exit("scaling_model: %s: no \"%s\"" % (a.validate, k))
    bw, lat = fit_allreduce(doc["allreduce"])
    a.intra_bw, a.intra_lat, a.gpus_per_node = bw, lat, 1 << 30  # one node: the measured link only
    gb = a.n_params * (4 if a.grad_dtype != "bf16" else 2)
    print("validation on this machine (%s)" % doc.get("what", a.validate))
    print("  model %s width %s at %s px, %d parameters, %d images per rank, %d bucket(s) of %g MB" % (
        doc.get("model"), doc.get("width"), doc.get("image_size"), a.n_params, a.batch_per_rank,
        len(bucket_sizes(gb, a.bucket_mb)), a.bucket_mb))
    print("  all-reduce from %d sizes: %.2f GB/s bus bandwidth, %.1f us latency" % (len(doc["allreduce"]), bw, lat))
    print("  compute (1 rank, measured): %.1f ms per step; sync collectives per step: %d" % (a.compute_ms, a.sync_collectives))
    for n, meas in sorted(doc["measured_step_ms"].items()):
        for ov in (False, True):
            t, ar = step_ms(int(n), a.compute_ms, gb, a, ov)
            err = (t - meas) / meas
            print("  %s ranks, %-10s predicted %.1f ms (all-reduce %.1f ms), measured %.1f ms: error %+.0f%%" % (
                n, "overlap" if ov else "no overlap", t, ar, meas, 100 * err))


def main():
    a = parse()
    estimated = a.compute_ms is None
    if estimated:
        a.compute_ms = estimated_compute_ms()
    if a.validate:
        validate(a)
        return
    rows = table(a)
    print("scaling model (predictions, not measurements); assumptions:")
    for s in assumptions(a, estimated):
        print("  - " + s)
    print("\n| grads | GPUs | buckets | all-reduce ms | step ms (serial) | img/s (serial) | eff. (serial) "
          "| step ms (overlap) | img/s (overlap) | eff. (overlap) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s, o = r["serial"], r["overlap"]
        print("| %s | %d | %d | %.2f | %.2f | %.0f | %.0f%% | %.2f | %.0f | %.0f%% |" % (
            r["dtype"], r["gpus"], r["buckets"], r["allreduce_ms"], s[0], s[1], 100 * s[2], o[0], o[1], 100 * o[2]))
    if a.png:
        draw(a, rows, a.png)


if __name__ == "__main__":
    main()
