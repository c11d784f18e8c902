#!/usr/bin/env python3
# ckpt_tool.py - reads vgg_dist checkpoints (format in src/checkpoint.h) for the shell tests.
#   ckpt_tool.py compare A B [TOL] [SECTION=TOL ...]
#                                    max relative difference of the PARAMS, ADAM_M and ADAM_V
#                                    sections; exit 1 when one is above its TOL (default 0:
#                                    bitwise; SECTION=TOL sets one section's own bound)
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
    names = ("PARAMS", "ADAM_M", "ADAM_V")
    args = sys.argv[4:]
    tol = float(args.pop(0)) if args and "=" not in args[0] else 0.0
    tols = dict.fromkeys(names, tol)
    for arg in args:
        name, _, value = arg.partition("=")
        if name not in tols:
            sys.exit("ckpt_tool.py: unknown section %s (one of %s)" % (name, ", ".join(names)))
        tols[name] = float(value)
    ok = True
    for name in names:
        if tols[name] == 0.0:
            same = a[name] == b[name]
            print("%s: %s" % (name, "bitwise equal" if same else "DIFFERENT"))
            ok &= same
            continue
        x, y = floats(a[name]), floats(b[name])
        scale = max(max(abs(v) for v in y), 1e-30)
        d = max(abs(p - q) for p, q in zip(x, y)) / scale
        print("%s: max |a-b| / max |b| = %.3e (bound %.0e)" % (name, d, tols[name]))
        ok &= d <= tols[name]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
