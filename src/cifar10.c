// cifar10.c - the CIFAR-10 binary reader, the train/validation split, epoch order and sharding.
//
// Owns the uint8 dataset in host memory (images (n, 3, 32, 32), labels (n)); see cifar10.h.
// Invariants: a file is validated whole (regular, non-empty, a whole number of 3073-byte
// records, every label in 0..9, kept or not) before anything of it is appended, so a load
// either succeeds completely or ends the process with a one-line message naming the file (and
// record). batches.meta.txt is validated the same way (see cifar10_read_classes).
// All randomness is Philox keyed by (seed, stream, counter): the same seed gives the same
// split and the same epoch order on every rank and every machine.
#include "cifar10.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"
#include "rng.h"

// ----------------------------------------------------------------------------------------
// reader

// Labels of records beyond what is kept are checked through a buffer of this many records
// (1 MiB). A label is every 3073 bytes, closer than a 4 KiB page, so the kernel reads every
// page of the file whatever we do: one fseek + 1-byte read per record would save no I/O and
// cost 10,000 calls per file, and reading the whole file at once would hold 30 MB for nothing.
enum { SCAN_RECORDS = 341 };

// Opens path and checks what its size says: a regular, non-empty file of whole records.
// Returns the stream; *records is the record count.
static FILE *open_records(const char *path, long long *records) {
  // Not xfopen: a missing file is the user's error (one line, no file:line); and a FIFO in its
  // place is refused, not waited on.
  const char *why;
  FILE *f = fopen_regular(path, &why);
  if (!f) DIE_DATA("cannot open %s: %s", path, why);
  struct stat st;
  if (fstat(fileno(f), &st) != 0) DIE_DATA("cannot stat %s: %s", path, strerror(errno));
  long long size = (long long)st.st_size;
  if (size == 0) DIE_DATA("%s is empty (0 bytes, expected 3073-byte records)", path);
  if (size % CIFAR_RECORD != 0)
    DIE_DATA("%s: size %lld bytes is not a whole number of %d-byte records", path, size,
             CIFAR_RECORD);
  *records = size / CIFAR_RECORD;
  return f;
}

// Index of the first of `count` records in buf whose label is outside 0..9, or -1.
static long long first_bad_label(const uint8_t *buf, long long count) {
  for (long long r = 0; r < count; r++)
    if (buf[r * CIFAR_RECORD] >= CIFAR_CLASSES) return r;
  return -1;
}

// Reads records [first, records) of f (positioned at record `first`) and checks their labels,
// keeping nothing. Returns the first record whose label is outside 0..9 (*label: that label),
// or -1.
static long long scan_labels(FILE *f, const char *path, long long first, long long records,
                             int *label) {
  uint8_t *buf = xmalloc((size_t)SCAN_RECORDS * CIFAR_RECORD);
  long long bad = -1;
  for (long long r0 = first; r0 < records && bad < 0; r0 += SCAN_RECORDS) {
    long long count = records - r0 < SCAN_RECORDS ? records - r0 : SCAN_RECORDS;
    xfread(buf, (size_t)count * CIFAR_RECORD, f, path);
    long long r = first_bad_label(buf, count);
    if (r >= 0) {
      bad = r0 + r;
      *label = buf[r * CIFAR_RECORD];
    }
  }
  free(buf);
  return bad;
}

// Checks the whole file (size, every label) and appends its first `keep` records to out
// (keep 0: out is untouched and may be NULL). One pass: the kept records are read into the
// buffer that is appended, the rest through scan_labels. Nothing reaches out before the whole
// file has passed.
static void read_file(cifar10 *out, const char *path, long long keep) {
  long long records;
  FILE *f = open_records(path, &records);
  int have = out ? out->n : 0;
  if (records > 0x7fffffffLL - have) DIE_DATA("%s: too many records (%lld)", path, records);
  int take = (int)(keep < records ? keep : records);
  uint8_t *buf = take > 0 ? xmalloc((size_t)take * CIFAR_RECORD) : NULL;
  if (take > 0) xfread(buf, (size_t)take * CIFAR_RECORD, f, path);
  long long bad = first_bad_label(buf, take);
  int label = bad >= 0 ? buf[bad * CIFAR_RECORD] : 0;
  if (bad < 0) bad = scan_labels(f, path, take, records, &label);
  xfclose(f, path);
  if (bad >= 0) {
    free(buf); // nothing left for a leak checker to report on the way out
    DIE_DATA("%s: record %lld: label %d outside 0..%d", path, bad, label, CIFAR_CLASSES - 1);
  }
  if (take == 0) return;

  int n = have + take;
  uint8_t *images = CHECK_PTR(realloc(out->images, (size_t)n * CIFAR_PIXELS));
  uint8_t *labels = CHECK_PTR(realloc(out->labels, (size_t)n));
  for (int r = 0; r < take; r++) {
    const uint8_t *rec = buf + (size_t)r * CIFAR_RECORD;
    labels[have + r] = rec[0];
    memcpy(images + (size_t)(have + r) * CIFAR_PIXELS, rec + 1, CIFAR_PIXELS);
  }
  out->images = images;
  out->labels = labels;
  out->n = n;
  free(buf);
}

void cifar10_load_file(cifar10 *out, const char *path, int limit) {
  read_file(out, path, limit > 0 ? limit : 0x7fffffffLL);
}

void cifar10_load(cifar10 *out, const char *dir, int train, int limit) {
  memset(out, 0, sizeof(*out));
  char path[4096];
  int len = snprintf(path, sizeof(path), "%s/batches.meta.txt", dir);
  if (len < 0 || (size_t)len >= sizeof(path)) DIE_DATA("data directory path too long: %s", dir);
  out->classes_from_file = cifar10_read_classes(out->classes, path);
  // Every file is checked whole (size, every label), whatever the limit: a bad file beyond
  // the limit is an error now, not in a later run with another limit.
  int files = train ? 5 : 1;
  for (int k = 1; k <= files; k++) {
    long long left = limit > 0 ? limit - out->n : 0x7fffffffLL;
    len = train ? snprintf(path, sizeof(path), "%s/data_batch_%d.bin", dir, k)
                : snprintf(path, sizeof(path), "%s/test_batch.bin", dir);
    if (len < 0 || (size_t)len >= sizeof(path)) DIE_DATA("data directory path too long: %s", dir);
    read_file(out, path, left);
  }
}

// ----------------------------------------------------------------------------------------
// class names (batches.meta.txt)

static const char *const official_classes[CIFAR_CLASSES] = {
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};

// Ten names at most CIFAR_NAME_CAP - 1 bytes each, their line ends and one empty line fit
// well within this; anything larger is not a class-names file.
enum { META_MAX_BYTES = 4096 };

// Validates the text of batches.meta.txt and copies the names: 10 lines of printable ASCII,
// not empty or blank, then at most one empty line. A line may end in "\r\n" (a file edited on
// Windows); a final line may lack its "\n".
static void parse_classes(char names[CIFAR_CLASSES][CIFAR_NAME_CAP], const char *text,
                          long len, const char *path) {
  int n = 0;
  long i = 0; // start of the current line
  for (int line = 1; i < len; line++) {
    long end = i;
    while (end < len && text[end] != '\n') end++;
    long width = end - i - (end > i && text[end - 1] == '\r');
    int blank = 1;
    for (long k = i; k < i + width; k++) {
      unsigned char ch = (unsigned char)text[k];
      if (ch < 0x20 || ch > 0x7e)
        DIE_DATA("%s: line %d: byte 0x%02x is not a printable character (expected %d class "
                 "names, one per line)", path, line, ch, CIFAR_CLASSES);
      blank &= ch == ' ';
    }
    if (blank && end + 1 >= len) break; // the optional trailing empty line (counted below)
    if (n == CIFAR_CLASSES) {
      if (!blank) DIE_DATA("%s: more than %d class names (line %d)", path, CIFAR_CLASSES, line);
      DIE_DATA("%s: line %d: more lines after the %d class names (one empty line at most)",
               path, line + 1, CIFAR_CLASSES);
    }
    if (blank)
      DIE_DATA("%s: line %d is empty (expected %d class names, one per line)", path, line,
               CIFAR_CLASSES);
    if (width >= CIFAR_NAME_CAP)
      DIE_DATA("%s: line %d: a class name of %ld characters (at most %d)", path, line, width,
               CIFAR_NAME_CAP - 1);
    memcpy(names[n], text + i, (size_t)width);
    names[n][width] = '\0';
    n++;
    i = end + 1;
  }
  if (n < CIFAR_CLASSES)
    DIE_DATA("%s: %d class names, expected %d (one per line)", path, n, CIFAR_CLASSES);
}

int cifar10_read_classes(char names[CIFAR_CLASSES][CIFAR_NAME_CAP], const char *path) {
  const char *why;
  FILE *f = fopen_regular(path, &why);
  if (!f && errno == ENOENT) {
    for (int k = 0; k < CIFAR_CLASSES; k++)
      snprintf(names[k], CIFAR_NAME_CAP, "%s", official_classes[k]);
    return 0;
  }
  if (!f) DIE_DATA("cannot open %s: %s", path, why);
  struct stat st;
  if (fstat(fileno(f), &st) != 0) DIE_DATA("cannot stat %s: %s", path, strerror(errno));
  if (st.st_size > META_MAX_BYTES)
    DIE_DATA("%s: %lld bytes, too large for %d class names", path, (long long)st.st_size,
             CIFAR_CLASSES);
  char text[META_MAX_BYTES];
  long len = (long)st.st_size;
  if (len > 0) xfread(text, (size_t)len, f, path);
  xfclose(f, path);
  parse_classes(names, text, len, path);
  return 1;
}

void cifar10_class_list(char *out, size_t cap, const cifar10 *d) {
  size_t used = 0;
  out[0] = '\0';
  for (int k = 0; k < CIFAR_CLASSES && used < cap; k++) {
    int w = snprintf(out + used, cap - used, "%s%d %s", k ? ", " : "", k, d->classes[k]);
    if (w < 0) break;
    used += (size_t)w;
  }
}

void cifar10_free(cifar10 *d) {
  if (!d) return;
  free(d->images);
  free(d->labels);
  d->images = NULL;
  d->labels = NULL;
  d->n = 0;
}

const char *cifar10_resolve_dir(const char *dir) {
  if (dir && *dir) return dir;
  const char *env = getenv("CIFAR10_DIR");
  if (env && *env) return env;
  return "data/cifar-10-batches-bin";
}

// ----------------------------------------------------------------------------------------
// split, epoch order, sharding

// Unbiased draw in [0, bound] by rejection: a 32-bit value is accepted when it lies below the
// largest multiple of (bound + 1); the retry counter is the last Philox counter word, so the
// draw stays a pure function of (seed, stream, a, b).
static uint32_t draw_upto(uint64_t seed, uint32_t stream, uint32_t a, uint32_t b, uint32_t bound) {
  uint64_t range = (uint64_t)bound + 1;
  uint64_t limit = (1ull << 32) - ((1ull << 32) % range);
  for (uint32_t attempt = 0;; attempt++) {
    uint32_t r = rng_bits(seed, stream, a, b, attempt);
    if (r < limit) return (uint32_t)(r % range);
  }
}

static int cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

void cifar10_split(int32_t *train_ids, int32_t *val_ids, int n, int val_size, uint64_t seed) {
  if (n < 0 || val_size < 0 || val_size > n)
    DIE_USAGE("validation size %d does not fit in %d images", val_size, n);
  int32_t *perm = xmalloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
  for (int i = 0; i < n; i++) perm[i] = i;
  // Fisher-Yates from the top: position i swaps with a uniform j in [0, i].
  for (int i = n - 1; i > 0; i--) {
    uint32_t j = draw_upto(seed, RNG_STREAM_SPLIT, (uint32_t)i, 0, (uint32_t)i);
    int32_t t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  int n_train = n - val_size;
  memcpy(train_ids, perm, (size_t)n_train * sizeof(int32_t));
  memcpy(val_ids, perm + n_train, (size_t)val_size * sizeof(int32_t));
  // Sorted so the split is a set: the epoch order alone decides the visiting order.
  qsort(train_ids, (size_t)n_train, sizeof(int32_t), cmp_i32);
  qsort(val_ids, (size_t)val_size, sizeof(int32_t), cmp_i32);
  free(perm);
}

void cifar10_epoch_order(int32_t *order, const int32_t *train_ids, int n, uint64_t seed,
                         int epoch) {
  memmove(order, train_ids, (size_t)(n > 0 ? n : 0) * sizeof(int32_t));
  for (int i = n - 1; i > 0; i--) {
    uint32_t j = draw_upto(seed, RNG_STREAM_SHUFFLE, (uint32_t)epoch, (uint32_t)i, (uint32_t)i);
    int32_t t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
}

int cifar10_shard(int32_t *out, const int32_t *batch, int count, int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world) FATAL("bad shard rank %d of world %d", rank, world);
  int k = 0;
  for (int j = rank; j < count; j += world) out[k++] = batch[j];
  return k;
}

// ----------------------------------------------------------------------------------------
// statistics

void cifar10_channel_stats(float mean[3], float std[3], const cifar10 *d, const int32_t *ids,
                           int n) {
  // Integer sums are exact (50,000 images * 1024 pixels * 255^2 < 2^42), so the result does
  // not depend on summation order or thread count.
  if (n <= 0) FATAL("channel statistics of %d images", n);
  uint64_t s[3] = {0, 0, 0}, ss[3] = {0, 0, 0};
  for (int c = 0; c < 3; c++) {
    uint64_t sc = 0, ssc = 0;
#pragma omp parallel for reduction(+ : sc, ssc) schedule(static)
    for (int i = 0; i < n; i++) {
      const uint8_t *p = d->images + (size_t)ids[i] * CIFAR_PIXELS + (size_t)c * 1024;
      uint64_t a = 0, b = 0;
      for (int k = 0; k < 1024; k++) {
        a += p[k];
        b += (uint64_t)p[k] * p[k];
      }
      sc += a;
      ssc += b;
    }
    s[c] = sc;
    ss[c] = ssc;
  }
  double count = (double)n * 1024.0;
  for (int c = 0; c < 3; c++) {
    double m = (double)s[c] / count;
    double var = (double)ss[c] / count - m * m;
    mean[c] = (float)(m / 255.0);
    std[c] = (float)(sqrt(var > 0 ? var : 0) / 255.0);
  }
}
