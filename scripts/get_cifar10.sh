#!/usr/bin/env bash
# get_cifar10.sh - puts the CIFAR-10 binary files (data_batch_1..5.bin, test_batch.bin,
# batches.meta.txt) into DEST, where vgg_dist looks for them by default.
#
# Usage: scripts/get_cifar10.sh [DEST] [LOCAL_PATH]
#   DEST        default data/cifar-10-batches-bin (vgg_dist's default; or set CIFAR10_DIR)
#   LOCAL_PATH  optional: a cifar-10-binary.tar.gz already on disk, or a directory holding the
#               .bin files; used instead of downloading (machines without network)
# Without LOCAL_PATH it downloads the official tarball from the dataset's home page, checks
# its md5, and unpacks it. If DEST already holds a complete set it does nothing.
# Every failure is one line on stderr and a non-zero exit.
set -euo pipefail

URL="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5="c32a1d4ab5d03f1284b67883e8d87530"
RECORD=3073
TIMEOUT=${CIFAR10_DOWNLOAD_TIMEOUT:-600} # seconds for the whole 170 MB download
FILES="data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin data_batch_5.bin test_batch.bin"

die() { echo "get_cifar10.sh: $*" >&2; exit 1; }

case "${1:-}" in
  -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
DEST=${1:-data/cifar-10-batches-bin}
LOCAL=${2:-}

# A directory is complete when every file is there with a non-zero whole number of records.
complete() {
  local dir=$1 f size
  for f in $FILES; do
    [ -f "$dir/$f" ] || return 1
    size=$(stat -c %s "$dir/$f")
    [ "$size" -gt 0 ] && [ $((size % RECORD)) -eq 0 ] || return 1
  done
}

describe() {
  local dir=$1 train=0 f
  for f in data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin data_batch_5.bin; do
    train=$((train + $(stat -c %s "$dir/$f") / RECORD))
  done
  echo "get_cifar10.sh: $dir holds $train train and $(($(stat -c %s "$dir/test_batch.bin") / RECORD)) test images"
}

if complete "$DEST"; then
  describe "$DEST"
  exit 0
fi

# DEST itself is created only once there is something to put in it (no empty leftovers).
mkdir -p "$(dirname "$DEST")" || die "cannot create $(dirname "$DEST")"
WORK=$(mktemp -d "$(dirname "$DEST")/.get_cifar10.XXXXXX") || die "cannot create a scratch directory beside $DEST"
trap 'rm -rf "$WORK"' EXIT

# Unpacks a tarball into WORK and moves its files into DEST.
unpack() {
  local tarball=$1 src
  tar -xzf "$tarball" -C "$WORK" 2>/dev/null || die "cannot unpack $tarball (not a complete .tar.gz)"
  src="$WORK/cifar-10-batches-bin"
  [ -d "$src" ] || die "$tarball does not contain cifar-10-batches-bin/"
  complete "$src" || die "$tarball: cifar-10-batches-bin/ is missing files or holds a truncated one"
  mkdir -p "$DEST" || die "cannot create $DEST"
  for f in $FILES batches.meta.txt; do
    if [ -e "$src/$f" ]; then mv -f "$src/$f" "$DEST/$f" || die "cannot move $f into $DEST"; fi
  done
}

if [ -n "$LOCAL" ]; then
  if [ -d "$LOCAL" ]; then
    complete "$LOCAL" || die "$LOCAL lacks some of: $FILES (or one is not a whole number of $RECORD-byte records)"
    mkdir -p "$DEST" || die "cannot create $DEST"
    for f in $FILES batches.meta.txt; do
      if [ -e "$LOCAL/$f" ]; then cat "$LOCAL/$f" > "$DEST/$f" || die "cannot copy $LOCAL/$f to $DEST"; fi
    done
  elif [ -f "$LOCAL" ]; then
    got=$(md5sum "$LOCAL" | cut -d' ' -f1) || die "cannot read $LOCAL"
    # A different tarball (a subset, a mirror's repack) is accepted with a warning: the
    # record-size checks below still hold it to the format.
    [ "$got" = "$MD5" ] || echo "get_cifar10.sh: warning: $LOCAL md5 $got is not the official $MD5" >&2
    unpack "$LOCAL"
  else
    die "$LOCAL is neither a tarball nor a directory"
  fi
else
  tarball="$WORK/cifar-10-binary.tar.gz"
  echo "get_cifar10.sh: downloading $URL (timeout ${TIMEOUT}s)" >&2
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --connect-timeout 20 --max-time "$TIMEOUT" -o "$tarball" "$URL" 2>/dev/null ||
      die "download of $URL failed (no network? give a local tarball or directory as LOCAL_PATH)"
  elif command -v wget >/dev/null 2>&1; then
    timeout "$TIMEOUT" wget -q --timeout=20 --tries=2 -O "$tarball" "$URL" ||
      die "download of $URL failed (no network? give a local tarball or directory as LOCAL_PATH)"
  else
    die "neither curl nor wget is installed; give a local tarball or directory as LOCAL_PATH"
  fi
  got=$(md5sum "$tarball" | cut -d' ' -f1)
  [ "$got" = "$MD5" ] || die "downloaded tarball has md5 $got, expected $MD5 (corrupt or changed download)"
  unpack "$tarball"
fi

complete "$DEST" || die "$DEST is incomplete after the copy"
describe "$DEST"
