#!/usr/bin/env python3
# ckpt_tool.py - reads vgg_dist checkpoints (format in src/checkpoint.h) for the shell tests.
#   ckpt_tool.py compare A B [TOL] [SECTION=TOL ...]
#                                    max relative difference of the fp32 sections (PARAMS,
#                                    ADAM_M, ADAM_V, BUFFERS); exit 1 when one is above its TOL
#                                    (default 0: bitwise; SECTION=TOL sets one section's own
#                                    bound). A section a file lacks (BUFFERS in version 1) is empty.
#   ckpt_tool.py info A              "version V", then one line per section in file order:
#                                    id, name, payload bytes
#   ckpt_tool.py state A             the STATE section, one "field value" line per field (a
#                                    version-1 file's warmup_steps, which it lacks, reads 0)
#   ckpt_tool.py set A OUT FIELD=VALUE ...
#                                    A with STATE fields replaced (VALUE as Python reads it:
#                                    nan, inf, -5, 1e6; a 3-vector's item as mean.0=...), its CRC
#                                    recomputed, written to OUT: a well-formed file of hostile values
#   ckpt_tool.py sections            the section table, one row per line: id, name, kind, since
#                                    (tests/test_checkpoint.c compares it with the C table)
# As a module (scripts/export.py, scripts/import_torchvision.py): read(path, check_crc=True)
# also verifies every section's CRC, meta() decodes META, and write() makes a version-3 file
# (every section, CRCs, written to a temp file and renamed, as the C writer).
# Every file is checked against SECTIONS (ids in order, the count its version implies); a
# file that does not match is refused with one line.
import os
import struct
import sys
import zlib

# The section table: (id, name, kind, since), the Python copy of src/run_state.c's
# run_state_sections and the only place here that names sections. kind: how the payload is
# encoded (meta, state: packed structs; f32: floats); since: the format version that added it.
SECTIONS = (
    (1, "META", "meta", 1),
    (2, "STATE", "state", 1),
    (3, "PARAMS", "f32", 1),
    (4, "ADAM_M", "f32", 1),
    (5, "ADAM_V", "f32", 1),
    (6, "BUFFERS", "f32", 2),
)
MAGIC = b"VGGCKPT1"
META_BYTES = {1: 36, 2: 44, 3: 44}  # the header's copy of the meta, by format version
# The STATE section's fields in file order (src/checkpoint.c's STATE_FIELDS_V1, then what each
# version appended), with their struct codes.
STATE_V1 = (("step", "q"), ("epoch", "i"), ("batch", "i"), ("epoch_loss_sum", "d"),
            ("epoch_correct", "d"), ("epoch_time_s", "d"), ("lr", "f"), ("sched_best", "d"),
            ("sched_bad_epochs", "i"), ("sched_cooldown", "i"), ("best_val_loss", "d"),
            ("best_val_acc", "d"), ("best_epoch", "i"), ("es_bad_epochs", "i"), ("seed", "Q"),
            ("mean", "3f"), ("std", "3f"))
STATE_V2 = STATE_V1 + (("warmup_steps", "q"),)
STATE_V3 = STATE_V2 + (("order_batch", "i"), ("order_val_size", "i"), ("order_train_limit", "i"),
                       ("order_train_images", "i"))  # train_state.order: the sample order
STATE_FIELDS = {1: STATE_V1, 2: STATE_V2, 3: STATE_V3}
# What a file without the field means: no warmup; the sample order unknown (0, as the C reader)
STATE_DEFAULTS = {"warmup_steps": 0, "order_batch": 0, "order_val_size": 0,
                  "order_train_limit": 0, "order_train_images": 0}
SEC_HEADER = struct.Struct("<IIQII")  # id, reserved, bytes, crc32, reserved
# The meta from version 2 (src/checkpoint.h's ckpt_meta, packed): model name (NUL-padded),
# width, image size, classes, parameter count, buffer count. Version 1 lacks the last.
META = struct.Struct("<16sfiiQQ")
VERSION = 3  # what write() makes: the C writer's CKPT_VERSION
F32 = tuple(name for _, name, kind, _ in SECTIONS if kind == "f32")


def read(path, check_crc=False):
    """The file's version and its sections' payloads by name, in file order. check_crc: refuse
    a section whose CRC differs (off by default: `set` and the fault tests read damaged files)."""
    try:
        raw = open(path, "rb").read()
    except OSError as e:
        sys.exit("%s: cannot read: %s" % (path, e.strerror))
    if raw[:8] != MAGIC:
        sys.exit("%s: not a vgg_dist checkpoint" % path)
    version, nsec = struct.unpack_from("<II", raw, 8)
    if version not in META_BYTES:
        sys.exit("%s: version %d, this tool reads %s" % (path, version, sorted(META_BYTES)))
    rows = [row for row in SECTIONS if row[3] <= version]
    if nsec != len(rows):
        sys.exit("%s: %d sections, version %d has %d" % (path, nsec, version, len(rows)))
    off, sections = 16 + META_BYTES[version], {}
    for want, name, _, _ in rows:
        if off + SEC_HEADER.size > len(raw):
            sys.exit("%s: truncated before section %s" % (path, name))
        sid, res0, nbytes, crc, res1 = SEC_HEADER.unpack_from(raw, off)
        if sid != want:
            sys.exit("%s: section %d where %s (%d) was expected" % (path, sid, name, want))
        if res0 or res1:  # as the C reader: written 0, anything else is damage
            sys.exit("%s: reserved field of section %s is not 0" % (path, name))
        off += SEC_HEADER.size
        sections[name] = raw[off:off + nbytes]
        if check_crc and (len(sections[name]) != nbytes or zlib.crc32(sections[name]) != crc):
            sys.exit("%s: section %s is truncated or corrupt (CRC)" % (path, name))
        off += nbytes
    if check_crc and off != len(raw):
        sys.exit("%s: %d bytes after the last section" % (path, len(raw) - off))
    return version, sections


def meta(version, payload):
    """The META payload as a dict (model, width, image_size, classes, n_params, n_buffers)."""
    want = META_BYTES[version]
    if len(payload) != want:
        sys.exit("META has %d bytes, version %d has %d" % (len(payload), version, want))
    model, width, size, classes, n_params, n_buffers = META.unpack(payload.ljust(META.size, b"\0"))
    return {"model": model.rstrip(b"\0").decode("ascii", "replace"), "width": width,
            "image_size": size, "classes": classes, "n_params": n_params, "n_buffers": n_buffers}


def pack_state(fields):
    """A version-VERSION STATE payload from {field: value}; every field must be given."""
    spec = STATE_FIELDS[VERSION]
    missing = [name for name, _ in spec if name not in fields]
    if missing:
        raise ValueError("STATE fields missing: %s" % ", ".join(missing))
    values = []
    for name, code in spec:
        values.extend(fields[name] if len(code) > 1 else [fields[name]])
    return struct.pack("<" + "".join(code for _, code in spec), *values)


def write(path, meta_fields, state_fields, f32):
    """A version-VERSION checkpoint at path: META from meta_fields (meta()'s keys), STATE from
    state_fields (pack_state), the f32 sections from f32 {name: bytes of float32}. Written to
    a temp file beside path and renamed over it, so a failure leaves no half file."""
    m = meta_fields
    meta_raw = META.pack(m["model"].encode("ascii"), m["width"], m["image_size"], m["classes"],
                         m["n_params"], m["n_buffers"])
    payloads = {"META": meta_raw, "STATE": pack_state(state_fields)}
    sizes = {"PARAMS": m["n_params"], "ADAM_M": m["n_params"], "ADAM_V": m["n_params"],
             "BUFFERS": m["n_buffers"]}
    for name in F32:
        if len(f32[name]) != 4 * sizes[name]:
            raise ValueError("%s has %d bytes, the meta implies %d" % (name, len(f32[name]),
                                                                       4 * sizes[name]))
        payloads[name] = f32[name]
    rows = [row for row in SECTIONS if row[3] <= VERSION]
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<II", VERSION, len(rows)) + meta_raw)
        for sid, name, _, _ in rows:
            data = payloads[name]
            f.write(SEC_HEADER.pack(sid, 0, len(data), zlib.crc32(data), 0))
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def state(version, payload):
    """The STATE payload as {field: value} (3-vectors as tuples), defaults for absent fields."""
    fields = STATE_FIELDS[version]
    fmt = struct.Struct("<" + "".join(code for _, code in fields))
    if len(payload) != fmt.size:
        sys.exit("STATE has %d bytes, version %d has %d" % (len(payload), version, fmt.size))
    values, out = list(fmt.unpack(payload)), {}
    for name, code in fields:
        n = int(code[:-1]) if len(code) > 1 else 1
        out[name] = tuple(values[:n]) if n > 1 else values[0]
        del values[:n]
    for name, value in STATE_DEFAULTS.items():
        out.setdefault(name, value)
    return out


def set_state(path, out, assignments):
    """Rewrites STATE fields of path into out, the section's CRC recomputed."""
    raw = bytearray(open(path, "rb").read())
    version, s = read(path)
    off = 16 + META_BYTES[version]  # the META section's header
    off += SEC_HEADER.size + SEC_HEADER.unpack_from(raw, off)[2]  # STATE's
    fields = STATE_FIELDS[version]
    fmt = struct.Struct("<" + "".join(code for _, code in fields))
    values = list(fmt.unpack(s["STATE"]))
    index, at = {}, 0
    for name, code in fields:
        n = int(code[:-1]) if len(code) > 1 else 1
        for k in range(n):
            index[name if n == 1 else "%s.%d" % (name, k)] = at + k
        at += n
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        if name not in index:
            sys.exit("ckpt_tool.py: no STATE field %s in version %d" % (name, version))
        old = values[index[name]]
        values[index[name]] = type(old)(float(value)) if isinstance(old, float) else int(value)
    payload = fmt.pack(*values)
    sid, r0, nbytes, _, r1 = SEC_HEADER.unpack_from(raw, off)
    SEC_HEADER.pack_into(raw, off, sid, r0, nbytes, zlib.crc32(payload), r1)
    raw[off + SEC_HEADER.size:off + SEC_HEADER.size + nbytes] = payload
    # A new file renamed over out, never written in place: best.bin may be a hard link to an
    # epoch's checkpoint, which an in-place write would change too.
    tmp = "%s.tmp.%d" % (out, os.getpid())
    with open(tmp, "wb") as f:
        f.write(bytes(raw))
    os.replace(tmp, out)


def floats(b):
    return struct.unpack("<%df" % (len(b) // 4), b)


def compare(a, b, args):
    tol = float(args.pop(0)) if args and "=" not in args[0] else 0.0
    tols = dict.fromkeys(F32, tol)
    for arg in args:
        name, _, value = arg.partition("=")
        if name not in tols:
            sys.exit("ckpt_tool.py: unknown section %s (one of %s)" % (name, ", ".join(F32)))
        tols[name] = float(value)
    ok = True
    for name in F32:
        x, y = a.get(name, b""), b.get(name, b"")
        if not x and not y:
            print("%s: empty in both" % name)
            continue
        if tols[name] == 0.0 or len(x) != len(y):
            same = x == y
            print("%s: %s" % (name, "bitwise equal" if same else "DIFFERENT"))
            ok &= same
            continue
        x, y = floats(x), floats(y)
        scale = max(max(abs(v) for v in y), 1e-30)
        d = max(abs(p - q) for p, q in zip(x, y)) / scale
        print("%s: max |a-b| / max |b| = %.3e (bound %.0e)" % (name, d, tols[name]))
        ok &= d <= tols[name]
    return ok


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "sections":
        for row in SECTIONS:
            print("%d %s %s %d" % row)
        return 0
    if cmd == "info":
        version, s = read(sys.argv[2])
        print("version", version)
        ids = {name: sid for sid, name, _, _ in SECTIONS}
        for name, payload in s.items():
            print(ids[name], name, len(payload))
        return 0
    if cmd == "state":
        version, s = read(sys.argv[2])
        for name, value in state(version, s["STATE"]).items():
            print(name, " ".join(repr(v) for v in value) if isinstance(value, tuple) else repr(value))
        return 0
    if cmd == "set":
        set_state(sys.argv[2], sys.argv[3], sys.argv[4:])
        return 0
    if cmd == "compare":
        a, b = read(sys.argv[2])[1], read(sys.argv[3])[1]
        return 0 if compare(a, b, sys.argv[4:]) else 1
    sys.exit("usage: ckpt_tool.py compare A B [TOL] [SECTION=TOL ...] | info A | state A | "
             "set A OUT FIELD=VALUE ... | sections")


if __name__ == "__main__":
    sys.exit(main())
