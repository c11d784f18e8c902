#!/usr/bin/env python3
# ckpt_tool.py - reads vgg_dist checkpoints (format in src/checkpoint.h) for the shell tests.
#   ckpt_tool.py compare A B [TOL]   max relative difference of the PARAMS, ADAM_M and ADAM_V
#                                    sections; exit 1 when above TOL (default 0: bitwise)
#   ckpt_tool.py info A              the header and section sizes
import struct
import sys

NAMES = {1: "META", 2: "STATE", 3: "PARAMS", 4: "ADAM_M", 5: "ADAM_V"}


def read(path):
    raw = open(path, "rb").read()
    if raw[:8] != b"VGGCKPT1":
        sys.exit("%s: not a vgg_dist checkpoint" % path)
    version, nsec = struct.unpack_from("<II", raw, 8)
    off, sections = 52, {}
    for _ in range(nsec):
        sid, _, nbytes, _, _ = struct.unpack_from("<IIQII", raw, off)
        off += 24
        sections[NAMES.get(sid, str(sid))] = raw[off:off + nbytes]
        off += nbytes
    return version, sections


def floats(b):
    return struct.unpack("<%df" % (len(b) // 4), b)


def main():
    if sys.argv[1] == "info":
        version, s = read(sys.argv[2])
        print("version", version, {k: len(v) for k, v in s.items()})
        return 0
    a, b = read(sys.argv[2])[1], read(sys.argv[3])[1]
    tol = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    worst = 0.0
    for name in ("PARAMS", "ADAM_M", "ADAM_V"):
        if tol == 0.0:
            same = a[name] == b[name]
            print("%s: %s" % (name, "bitwise equal" if same else "DIFFERENT"))
            worst = max(worst, 0.0 if same else 1.0)
            continue
        x, y = floats(a[name]), floats(b[name])
        scale = max(max(abs(v) for v in y), 1e-30)
        d = max(abs(p - q) for p, q in zip(x, y)) / scale
        print("%s: max |a-b| / max |b| = %.3e" % (name, d))
        worst = max(worst, d)
    return 0 if worst <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
