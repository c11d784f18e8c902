#!/usr/bin/env bash
# make_sample.sh - cuts data/sample/ (the small real CIFAR-10 sample kept in the repository)
# from a CIFAR-10 binary directory: the first 600 records of each of data_batch_1..5.bin
# (3000 train images, same file names) and the first 600 of test_batch.bin, plus
# batches.meta.txt. Records are 3073 bytes (1 label + 3072 pixels), so `head -c` on a
# multiple of 3073 keeps whole records.
# Usage: scripts/make_sample.sh [SRC_DIR] [DEST_DIR]
#   SRC_DIR  default ../shared/data/cifar-10-subset-bin (the real subset; the full set works too)
#   DEST_DIR default data/sample
set -euo pipefail

SRC=${1:-../shared/data/cifar-10-subset-bin}
DEST=${2:-data/sample}
RECORD=3073
PER_FILE=600

die() { echo "make_sample.sh: $*" >&2; exit 1; }

for f in data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin data_batch_5.bin \
         test_batch.bin batches.meta.txt; do
  [ -r "$SRC/$f" ] || die "cannot read $SRC/$f (give the CIFAR-10 binary directory as SRC_DIR)"
done
mkdir -p "$DEST"
for f in data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin data_batch_5.bin \
         test_batch.bin; do
  size=$(stat -c %s "$SRC/$f")
  [ "$size" -ge $((PER_FILE * RECORD)) ] || die "$SRC/$f has fewer than $PER_FILE records"
  head -c $((PER_FILE * RECORD)) "$SRC/$f" > "$DEST/$f"
done
cat "$SRC/batches.meta.txt" > "$DEST/batches.meta.txt" # cat, not cp: no read-only mode copied
echo "make_sample.sh: wrote $((5 * PER_FILE)) train and $PER_FILE test records to $DEST"
