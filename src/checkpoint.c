// checkpoint.c - writes, verifies and finds training checkpoints (see checkpoint.h for the
// file layout and the guarantees).
//
// Writing goes to "<path>.tmp.<pid>", is flushed and fsync'ed, renamed over <path>, and the
// directory is fsync'ed, so a crash leaves either the old or the new file, never a mix.
// Reading verifies everything (magic, version, sizes, meta, every CRC, no trailing bytes)
// into private buffers before the first byte reaches the caller's outputs.
// The caller's section table (checkpoint.h) says which sections there are; this file says
// how a file is framed and how each kind of payload is encoded, and refuses a malformed table
// as a bug. Serialization is explicit field by field (no struct padding on disk); floats are
// stored as their little-endian IEEE bits, so the build requires a little-endian host.
// It also owns the checkpoint directory: its creation, names, latest, pruning and the
// RESUMABLE marker.
#include "checkpoint.h"

#include "check.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint.c stores raw little-endian floats; port the (de)serializers for this host"
#endif

// ---------------------------------------------------------------------------------------
// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320, init and final xor 0xFFFFFFFF).
// Slicing-by-8: eight 256-entry tables, 8 bytes per step; same result as the one-table loop.

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_build_tables(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    crc_table[0][i] = c;
  }
  for (int t = 1; t < 8; t++)
    for (int i = 0; i < 256; i++)
      crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
}

uint32_t checkpoint_crc32(uint32_t crc, const void *data, size_t bytes) {
  int rc = pthread_once(&crc_once, crc_build_tables);
  if (rc != 0) FATAL("pthread_once failed: %s", strerror(rc));
  const uint8_t *p = (const uint8_t *)data;
  uint32_t c = ~crc;
  while (bytes >= 8) {
    uint32_t lo, hi;
    memcpy(&lo, p, 4);
    memcpy(&hi, p + 4, 4);
    lo ^= c;
    c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^ crc_table[5][(lo >> 16) & 0xFF] ^
        crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
        crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
    p += 8;
    bytes -= 8;
  }
  while (bytes--) c = crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
  return ~c;
}

// ---------------------------------------------------------------------------------------
// On-disk layout

static const char ckpt_magic[8] = {'V', 'G', 'G', 'C', 'K', 'P', 'T', '1'};

#define META_BYTES_V1 (16 + 4 + 4 + 4 + 8)
#define META_BYTES (META_BYTES_V1 + 8) // from version 2: the buffer count
#define HEADER_FIXED (8 + 4 + 4)       // magic, version, section count; the meta follows
#define SEC_HEADER_BYTES (4 + 4 + 8 + 4 + 4)
#define STATE_BYTES_V1 (8 + 4 + 4 + 2 * 8 + 8 + 4 + 8 + 4 + 4 + 8 + 8 + 4 + 4 + 8 + 3 * 4 + 3 * 4)
#define STATE_BYTES_V2 (STATE_BYTES_V1 + 8) // version 2: the warmup's length
#define STATE_BYTES (STATE_BYTES_V2 + 4 * 4) // from version 3: the sample order
#define PACKED_MAX (META_BYTES > STATE_BYTES ? META_BYTES : STATE_BYTES)

static size_t meta_bytes(uint32_t version) { return version >= 2 ? META_BYTES : META_BYTES_V1; }
static size_t state_bytes(uint32_t version) {
  return version >= 3 ? STATE_BYTES : version == 2 ? STATE_BYTES_V2 : STATE_BYTES_V1;
}

// A cursor over a byte buffer; put_/get_ copy host (= little-endian) representations.
typedef struct bytes_cursor {
  uint8_t *p;
} bytes_cursor;

static void put(bytes_cursor *c, const void *src, size_t n) {
  memcpy(c->p, src, n);
  c->p += n;
}
static void get(bytes_cursor *c, void *dst, size_t n) {
  memcpy(dst, c->p, n);
  c->p += n;
}

// Always the current version's meta: files are only written at CKPT_VERSION.
static void meta_pack(uint8_t out[META_BYTES], const ckpt_meta *m) {
  bytes_cursor c = {out};
  put(&c, m->model, 16);
  put(&c, &m->width, 4);
  put(&c, &m->image_size, 4);
  put(&c, &m->classes, 4);
  put(&c, &m->n_params, 8);
  put(&c, &m->n_buffers, 8);
}

// A version-1 meta has no buffer count: it was made by a build without buffers, so 0.
static void meta_unpack(ckpt_meta *m, const uint8_t *in, uint32_t version) {
  bytes_cursor c = {(uint8_t *)in};
  memset(m, 0, sizeof(*m));
  get(&c, m->model, 16);
  get(&c, &m->width, 4);
  get(&c, &m->image_size, 4);
  get(&c, &m->classes, 4);
  get(&c, &m->n_params, 8);
  if (version >= 2) get(&c, &m->n_buffers, 8);
}

// Field order is the struct's; put for packing, get for unpacking, one list for both. These
// are version 1's fields; version 2 appends warmup_steps, version 3 the sample order.
#define STATE_FIELDS_V1(OP, c, s)                                                                  \
  OP(c, &(s)->step, 8);                                                                            \
  OP(c, &(s)->epoch, 4);                                                                           \
  OP(c, &(s)->batch, 4);                                                                           \
  OP(c, &(s)->epoch_loss_sum, 8);                                                                  \
  OP(c, &(s)->epoch_correct, 8);                                                                   \
  OP(c, &(s)->epoch_time_s, 8);                                                                    \
  OP(c, &(s)->lr, 4);                                                                              \
  OP(c, &(s)->sched_best, 8);                                                                      \
  OP(c, &(s)->sched_bad_epochs, 4);                                                                \
  OP(c, &(s)->sched_cooldown, 4);                                                                  \
  OP(c, &(s)->best_val_loss, 8);                                                                   \
  OP(c, &(s)->best_val_acc, 8);                                                                    \
  OP(c, &(s)->best_epoch, 4);                                                                      \
  OP(c, &(s)->es_bad_epochs, 4);                                                                   \
  OP(c, &(s)->seed, 8);                                                                            \
  OP(c, (s)->mean, 12);                                                                            \
  OP(c, (s)->std, 12)

// Version 3's sample order, after warmup_steps.
#define SAMPLE_ORDER_FIELDS(OP, c, o)                                                              \
  OP(c, &(o)->batch, 4);                                                                           \
  OP(c, &(o)->val_size, 4);                                                                        \
  OP(c, &(o)->train_limit, 4);                                                                     \
  OP(c, &(o)->train_images, 4)

// Always the current version's state: files are only written at CKPT_VERSION.
static void state_pack(uint8_t out[STATE_BYTES], const train_state *s) {
  bytes_cursor c = {out};
  STATE_FIELDS_V1(put, &c, s);
  put(&c, &s->warmup_steps, 8);
  SAMPLE_ORDER_FIELDS(put, &c, &s->order);
}

// A version-1 state has no warmup length: it was made by a build without warmup, so 0 (none).
// Before version 3 the sample order is unknown: all 0 (the caller, who knows the file's
// version, decides what that means).
static void state_unpack(train_state *s, const uint8_t *in, uint32_t version) {
  bytes_cursor c = {(uint8_t *)in};
  STATE_FIELDS_V1(get, &c, s);
  s->warmup_steps = 0;
  memset(&s->order, 0, sizeof(s->order));
  if (version >= 2) get(&c, &s->warmup_steps, 8);
  if (version >= 3) {
    SAMPLE_ORDER_FIELDS(get, &c, &s->order);
  }
}

static void sec_header_pack(uint8_t out[SEC_HEADER_BYTES], uint32_t id, uint64_t bytes,
                            uint32_t crc) {
  bytes_cursor c = {out};
  uint32_t zero = 0;
  put(&c, &id, 4);
  put(&c, &zero, 4);
  put(&c, &bytes, 8);
  put(&c, &crc, 4);
  put(&c, &zero, 4);
}

// A row's payload size on disk in a file of `version`.
static uint64_t payload_bytes(const ckpt_section *s, uint32_t version) {
  switch (s->kind) {
  case CKPT_KIND_META: return meta_bytes(version);
  case CKPT_KIND_STATE: return state_bytes(version);
  case CKPT_KIND_F32: return s->bytes;
  }
  FATAL("section %s has an unknown kind %d", s->name, (int)s->kind);
}

// The table's shape is the program's, not the file's: a malformed one is a bug, so fatal.
// META comes first (the header copies it), in-memory sizes fit their kinds, ids increase and
// no row is newer than this build.
static void table_check(const ckpt_section *secs, int n, const char *who) {
  if (!secs || n < 1 || n > CKPT_MAX_SECTIONS) FATAL("%s: a table of %d sections", who, n);
  for (int i = 0; i < n; i++) {
    const ckpt_section *s = &secs[i];
    const int meta = s->kind == CKPT_KIND_META;
    const int ok = s->name && meta == (i == 0) &&
                   (!meta || (s->data && s->bytes == sizeof(ckpt_meta))) &&
                   (s->kind != CKPT_KIND_STATE || s->bytes == sizeof(train_state)) &&
                   (s->kind != CKPT_KIND_F32 || s->bytes % sizeof(float) == 0) &&
                   s->since >= 1 && s->since <= CKPT_VERSION && (i == 0 || s->id > secs[i - 1].id);
    if (!ok) FATAL("%s: section table row %d (%s) is malformed", who, i, s->name ? s->name : "?");
  }
}

// How many sections a file of `version` holds: the rows it had.
static uint32_t sections_in(const ckpt_section *secs, int n, uint32_t version) {
  uint32_t count = 0;
  for (int i = 0; i < n; i++) count += secs[i].since <= version;
  return count;
}

// ---------------------------------------------------------------------------------------
// Writing

// On any failure: close and delete the temp file, then abort naming the call site.
#define WRITE_CHECK(cond, f, tmp, ...)                                                             \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      int saved_errno_ = errno;                                                                    \
      if (f) fclose(f);                                                                            \
      unlink(tmp);                                                                                 \
      errno = saved_errno_;                                                                        \
      FATAL(__VA_ARGS__);                                                                          \
    }                                                                                              \
  } while (0)

static void write_bytes(FILE *f, const char *tmp, const void *src, size_t bytes) {
  WRITE_CHECK(bytes == 0 || fwrite(src, 1, bytes, f) == bytes, f, tmp,
              "write of %zu bytes to %s failed: %s", bytes, tmp, strerror(errno));
}

// One section: its header, then its payload encoded by kind.
static void write_section(FILE *f, const char *tmp, const ckpt_section *s) {
  uint8_t packed[PACKED_MAX];
  const void *payload = s->data;
  if (s->kind == CKPT_KIND_META) {
    meta_pack(packed, s->data);
    payload = packed;
  } else if (s->kind == CKPT_KIND_STATE) {
    state_pack(packed, s->data);
    payload = packed;
  }
  const uint64_t bytes = payload_bytes(s, CKPT_VERSION);
  uint8_t h[SEC_HEADER_BYTES];
  sec_header_pack(h, s->id, bytes, checkpoint_crc32(0, payload, (size_t)bytes));
  write_bytes(f, tmp, h, sizeof(h));
  write_bytes(f, tmp, payload, (size_t)bytes);
}

// The directory part of path ("." when there is none), for the directory fsync.
static void path_dirname(char *out, size_t out_len, const char *path) {
  const char *slash = strrchr(path, '/');
  size_t n = slash ? (size_t)(slash - path) : 0;
  if (!slash) {
    snprintf(out, out_len, ".");
    return;
  }
  if (n == 0) n = 1; // "/file" lives in "/"
  if (n >= out_len) FATAL("directory of %s is too long", path);
  memcpy(out, path, n);
  out[n] = '\0';
}

// Makes a directory's entries durable (a rename or unlink in it survives a crash).
static void fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0) FATAL("open(%s) for fsync failed: %s", dir, strerror(errno));
  if (fsync(fd) != 0) FATAL("fsync(%s) failed: %s", dir, strerror(errno));
  if (close(fd) != 0) FATAL("close(%s) failed: %s", dir, strerror(errno));
}

// The end of every atomic write: f (open on tmp, fully written) is flushed, fsynced, closed
// and renamed over path, and the directory is fsynced. On failure tmp is deleted.
static void commit_tmp(FILE *f, const char *tmp, const char *path) {
  WRITE_CHECK(fflush(f) == 0, f, tmp, "fflush(%s) failed: %s", tmp, strerror(errno));
  WRITE_CHECK(fsync(fileno(f)) == 0, f, tmp, "fsync(%s) failed: %s", tmp, strerror(errno));
  int rc = fclose(f);
  WRITE_CHECK(rc == 0, (FILE *)NULL, tmp, "closing %s failed: %s", tmp, strerror(errno));
  WRITE_CHECK(rename(tmp, path) == 0, (FILE *)NULL, tmp, "rename(%s, %s) failed: %s", tmp, path,
              strerror(errno));
  // Make the rename itself durable: without this a crash may bring back the old entry.
  char dir[4096];
  path_dirname(dir, sizeof(dir), path);
  fsync_dir(dir);
}

void checkpoint_write(const char *path, const ckpt_section *secs, int n) {
  if (!path) FATAL("checkpoint_write needs a path");
  table_check(secs, n, "checkpoint_write");
  for (int i = 0; i < n; i++) // before the temp file exists: a FATAL here leaves nothing behind
    if (!secs[i].data && secs[i].bytes)
      FATAL("checkpoint_write: section %s has no data", secs[i].name);
  char tmp[4096];
  int len = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
  if (len < 0 || (size_t)len >= sizeof(tmp)) FATAL("checkpoint path too long: %s", path);

  uint8_t header[HEADER_FIXED + META_BYTES];
  bytes_cursor c = {header};
  uint32_t version = CKPT_VERSION, count = (uint32_t)n;
  put(&c, ckpt_magic, 8);
  put(&c, &version, 4);
  put(&c, &count, 4);
  meta_pack(c.p, secs[0].data);

  FILE *f = xfopen(tmp, "wb");
  write_bytes(f, tmp, header, sizeof(header));
  for (int i = 0; i < n; i++) write_section(f, tmp, &secs[i]);
  commit_tmp(f, tmp, path);
}

// Appends the file src to f (open on tmp): the fallback where src cannot be linked.
static void copy_into(FILE *f, const char *tmp, const char *src) {
  FILE *in = fopen(src, "rb");
  WRITE_CHECK(in, f, tmp, "open(%s) to copy it failed: %s", src, strerror(errno));
  enum { CHUNK = 1 << 20 };
  char *buf = xmalloc(CHUNK);
  size_t n;
  while ((n = fread(buf, 1, CHUNK, in)) > 0) write_bytes(f, tmp, buf, n);
  const int failed = ferror(in);
  free(buf);
  WRITE_CHECK(fclose(in) == 0 && !failed, f, tmp, "reading %s to copy it failed", src);
}

// Where a file system has no hard links (or not across these two paths), link() fails with
// one of these and a copy does the same job; any other failure is a real error.
static int link_unsupported(int err) {
  return err == EXDEV || err == EPERM || err == EMLINK || err == ENOTSUP ||
         err == EOPNOTSUPP || err == ENOSYS;
}

int checkpoint_link(const char *src, const char *path) {
  char tmp[4096], dir[4096];
  int len = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
  if (len < 0 || (size_t)len >= sizeof(tmp)) FATAL("checkpoint path too long: %s", path);
  path_dirname(dir, sizeof(dir), path);
  // A leftover of this pid (a recycled one) would make link() fail with EEXIST.
  if (unlink(tmp) != 0 && errno != ENOENT) FATAL("unlink(%s) failed: %s", tmp, strerror(errno));
  if (link(src, tmp) != 0) {
    if (!link_unsupported(errno)) FATAL("link(%s, %s) failed: %s", src, tmp, strerror(errno));
    FILE *f = xfopen(tmp, "wb");
    copy_into(f, tmp, src);
    commit_tmp(f, tmp, path); // the copy's data fsynced, renamed, the directory fsynced
    return 0;
  }
  // src's data was fsynced when it was written: only the new names need to be durable.
  WRITE_CHECK(rename(tmp, path) == 0, (FILE *)NULL, tmp, "rename(%s, %s) failed: %s", tmp, path,
              strerror(errno));
  // rename() of two links to one file does nothing and leaves tmp (path already was src).
  if (unlink(tmp) != 0 && errno != ENOENT) FATAL("unlink(%s) failed: %s", tmp, strerror(errno));
  fsync_dir(dir);
  return 1;
}

// ---------------------------------------------------------------------------------------
// Reading: open -> header -> each section into private buffers (the META one verified against
// the run's) -> the end of the file -> only then the caller's outputs.

int checkpoint_errorf(char *err, size_t err_len, const char *fmt, ...) {
  if (err && err_len) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
  }
  return -1;
}

// Reads exactly `bytes`; returns 0, or -1 with the reason in why.
static int read_exact(FILE *f, void *dst, size_t bytes, const char **why) {
  if (bytes && fread(dst, 1, bytes, f) != bytes) {
    *why = ferror(f) ? strerror(errno) : "unexpected end of file";
    return -1;
  }
  return 0;
}

// Reads a section's payload of `bytes` and returns its CRC. With dst NULL the payload is
// only checksummed, in chunks, so skipped tensors cost no memory.
static int read_payload(FILE *f, void *dst, uint64_t bytes, uint32_t *crc, const char **why) {
  if (dst) {
    if (read_exact(f, dst, (size_t)bytes, why)) return -1;
    *crc = checkpoint_crc32(0, dst, (size_t)bytes);
    return 0;
  }
  enum { CHUNK = 1 << 20 };
  uint8_t *buf = xmalloc(CHUNK);
  uint32_t c = 0;
  int rc = 0;
  while (bytes > 0) {
    size_t n = bytes < CHUNK ? (size_t)bytes : CHUNK;
    if ((rc = read_exact(f, buf, n, why))) break;
    c = checkpoint_crc32(c, buf, n);
    bytes -= n;
  }
  free(buf);
  *crc = c;
  return rc;
}

// Which meta field differs first (NULL when they match).
static const char *meta_diff(const ckpt_meta *a, const ckpt_meta *b) {
  if (strncmp(a->model, b->model, sizeof(a->model)) != 0) return "model";
  if (a->width != b->width) return "width";
  if (a->image_size != b->image_size) return "image size";
  if (a->classes != b->classes) return "class count";
  if (a->n_params != b->n_params) return "parameter count";
  if (a->n_buffers != b->n_buffers) return "buffer count";
  return NULL;
}

#define META_FMT                                                                                   \
  "model %.16s width %g at %dx%d, %d classes, %" PRIu64 " parameters, %" PRIu64 " buffers"
#define META_ARGS(m)                                                                               \
  (m)->model, (double)(m)->width, (m)->image_size, (m)->image_size, (m)->classes, (m)->n_params,   \
      (m)->n_buffers

// One read in progress: the file, where we are in it, what its header said, and the private
// copies of the sections (staged[i] for row i; NULL for a row only checksummed).
typedef struct ckpt_reader {
  const char *path;
  FILE *f;
  uint64_t file_bytes, pos;
  uint32_t version, count;
  uint8_t header_meta[META_BYTES];
  void *staged[CKPT_MAX_SECTIONS];
  char *err;
  size_t err_len;
} ckpt_reader;

#define READ_FAIL(rd, ...) checkpoint_errorf((rd)->err, (rd)->err_len, __VA_ARGS__)

// Opens path and learns its size; only a regular file is a checkpoint.
static int reader_open(ckpt_reader *rd) {
  const char *why;
  rd->f = fopen_regular(rd->path, &why); // a FIFO would block fopen: refused before it opens
  if (!rd->f) return READ_FAIL(rd, "cannot open checkpoint %s: %s", rd->path, why);
  struct stat sb;
  if (fstat(fileno(rd->f), &sb) != 0)
    return READ_FAIL(rd, "cannot stat checkpoint %s: %s", rd->path, strerror(errno));
  if (!S_ISREG(sb.st_mode)) return READ_FAIL(rd, "checkpoint %s is not a regular file", rd->path);
  rd->file_bytes = (uint64_t)sb.st_size;
  return 0;
}

// Refuses, before anything is read, a table whose sizes no memory could hold (each row's
// section is staged privately beside the caller's own copy).
static int reader_check_sizes(ckpt_reader *rd, const ckpt_section *secs, int n) {
  for (int i = 0; i < n; i++)
    if (secs[i].bytes > (uint64_t)(SIZE_MAX / 4))
      return READ_FAIL(rd, "checkpoint %s: expected size of section %s "
                           "(%" PRIu64 " bytes) is absurd",
                       rd->path, secs[i].name, secs[i].bytes);
  return 0;
}

// Magic, version, section count, then the header's copy of the meta (its length depends on
// the version).
static int reader_header(ckpt_reader *rd, const ckpt_section *secs, int n) {
  uint8_t fixed[HEADER_FIXED];
  const char *why = "";
  const size_t want = HEADER_FIXED + META_BYTES; // what a header is now, for files too short to say
  if (rd->file_bytes < HEADER_FIXED || read_exact(rd->f, fixed, HEADER_FIXED, &why))
    return READ_FAIL(rd, "checkpoint %s is truncated: "
                         "%" PRIu64 " bytes, shorter than its %zu-byte header",
                     rd->path, rd->file_bytes, want);
  if (memcmp(fixed, ckpt_magic, 8) != 0)
    return READ_FAIL(rd, "%s is not a vgg_dist checkpoint (bad magic)", rd->path);
  memcpy(&rd->version, fixed + 8, 4);
  memcpy(&rd->count, fixed + 12, 4);
  if (rd->version < CKPT_VERSION_MIN || rd->version > CKPT_VERSION)
    return READ_FAIL(rd, "checkpoint %s has version "
                         "%" PRIu32 ", this build reads versions %d to %d",
                     rd->path, rd->version, CKPT_VERSION_MIN, CKPT_VERSION);
  const size_t header = HEADER_FIXED + meta_bytes(rd->version);
  if (rd->file_bytes < header || read_exact(rd->f, rd->header_meta, header - HEADER_FIXED, &why))
    return READ_FAIL(rd, "checkpoint %s is truncated: "
                         "%" PRIu64 " bytes, shorter than its %zu-byte header",
                     rd->path, rd->file_bytes, header);
  const uint32_t expect = sections_in(secs, n, rd->version);
  if (rd->count != expect)
    return READ_FAIL(rd, "checkpoint %s has %" PRIu32 " sections, expected %" PRIu32, rd->path,
                     rd->count, expect);
  rd->pos = header;
  return 0;
}

// The section header of row s: its id, its size (what the row implies, so a corrupt size
// field can never make us allocate more than the caller's own copy, nor more than the file
// holds) and its stored CRC.
static int reader_section_header(ckpt_reader *rd, const ckpt_section *s, uint64_t *bytes,
                                 uint32_t *crc) {
  uint8_t h[SEC_HEADER_BYTES];
  const char *why = "";
  if (rd->file_bytes - rd->pos < SEC_HEADER_BYTES || read_exact(rd->f, h, SEC_HEADER_BYTES, &why))
    return READ_FAIL(rd, "checkpoint %s is truncated: "
                         "%" PRIu64 " bytes, ends in the header of section %s",
                     rd->path, rd->file_bytes, s->name);
  rd->pos += SEC_HEADER_BYTES;
  uint32_t id, reserved[2];
  memcpy(&id, h, 4);
  memcpy(&reserved[0], h + 4, 4);
  memcpy(bytes, h + 8, 8);
  memcpy(crc, h + 16, 4);
  memcpy(&reserved[1], h + 20, 4);
  if (id != s->id)
    return READ_FAIL(rd, "checkpoint %s is corrupt: section "
                         "%" PRIu32 " found where %s was expected",
                     rd->path, id, s->name);
  // The writer zeroes them and no CRC covers them: anything else is damage (or a newer format
  // that gave them a meaning this build does not know).
  for (int k = 0; k < 2; k++)
    if (reserved[k] != 0)
      return READ_FAIL(rd, "checkpoint %s is corrupt: reserved field of section %s is "
                           "0x%08" PRIx32 ", not 0", rd->path, s->name, reserved[k]);
  const uint64_t want = payload_bytes(s, rd->version);
  if (*bytes != want)
    return READ_FAIL(rd, "checkpoint %s: section %s has %" PRIu64 " bytes, expected %" PRIu64,
                     rd->path, s->name, *bytes, want);
  if (rd->file_bytes - rd->pos < *bytes)
    return READ_FAIL(rd, "checkpoint %s is truncated: %" PRIu64 " bytes, ends inside section %s",
                     rd->path, rd->file_bytes, s->name);
  return 0;
}

// Row i's section: header, payload (staged when the row wants it, and always for META, which
// is verified next), CRC.
static int reader_section(ckpt_reader *rd, const ckpt_section *secs, int i) {
  const ckpt_section *s = &secs[i];
  uint64_t bytes = 0;
  uint32_t crc_want = 0, crc_got = 0;
  if (reader_section_header(rd, s, &bytes, &crc_want)) return -1;
  if (s->data) rd->staged[i] = xmalloc((size_t)bytes);
  const char *why = "";
  if (read_payload(rd->f, rd->staged[i], bytes, &crc_got, &why))
    return READ_FAIL(rd, "checkpoint %s: reading section %s failed: %s", rd->path, s->name, why);
  rd->pos += bytes;
  if (crc_got != crc_want)
    return READ_FAIL(rd, "checkpoint %s is corrupt: CRC mismatch in section %s (stored %08" PRIx32
                     ", computed %08" PRIx32 ")", rd->path, s->name, crc_want, crc_got);
  return 0;
}

// The META section (checksummed) against the header's copy (not) and against the run's meta.
static int reader_verify_meta(ckpt_reader *rd, const uint8_t *staged, const ckpt_meta *expect) {
  if (memcmp(staged, rd->header_meta, meta_bytes(rd->version)) != 0)
    return READ_FAIL(rd, "checkpoint %s is corrupt: header meta differs from the META "
                         "section", rd->path);
  ckpt_meta file_meta;
  meta_unpack(&file_meta, staged, rd->version);
  const char *diff = meta_diff(&file_meta, expect);
  if (diff)
    return READ_FAIL(rd, "checkpoint %s is for " META_FMT ", this run is " META_FMT " (%s differs)",
                     rd->path, META_ARGS(&file_meta), META_ARGS(expect), diff);
  return 0;
}

// Every row in order: the file's sections, and the rows newer than the file, which the run may
// only lack when they are empty (a version-1 file and a model without buffers).
static int reader_sections(ckpt_reader *rd, const ckpt_section *secs, int n) {
  for (int i = 0; i < n; i++) {
    if (secs[i].since > rd->version) {
      if (secs[i].bytes == 0) continue;
      return READ_FAIL(rd, "checkpoint %s has version "
                           "%" PRIu32 ", without the section %s this run needs",
                       rd->path, rd->version, secs[i].name);
    }
    if (reader_section(rd, secs, i)) return -1;
    if (secs[i].kind == CKPT_KIND_META && reader_verify_meta(rd, rd->staged[i], secs[i].data))
      return -1;
  }
  return 0;
}

// Nothing after the last section, and nothing appended while we read.
static int reader_end(ckpt_reader *rd) {
  if (rd->pos != rd->file_bytes)
    return READ_FAIL(rd, "checkpoint %s has "
                         "%" PRIu64 " bytes of trailing garbage after the last section",
                     rd->path, rd->file_bytes - rd->pos);
  uint8_t probe;
  if (fread(&probe, 1, 1, rd->f) != 0 || ferror(rd->f)) // the file grew or failed under us
    return READ_FAIL(rd, "checkpoint %s changed while being read", rd->path);
  return 0;
}

// Everything verified: only now the caller's outputs (META is the run's own, never written).
static void reader_commit(const ckpt_reader *rd, const ckpt_section *secs, int n) {
  for (int i = 0; i < n; i++) {
    if (!rd->staged[i] || !secs[i].data) continue;
    if (secs[i].kind == CKPT_KIND_STATE) state_unpack(secs[i].data, rd->staged[i], rd->version);
    if (secs[i].kind == CKPT_KIND_F32) memcpy(secs[i].data, rd->staged[i], (size_t)secs[i].bytes);
  }
}

int checkpoint_read(const char *path, const ckpt_section *secs, int n, char *err,
                    size_t err_len) {
  uint32_t version;
  return checkpoint_read_version(path, secs, n, err, err_len, &version);
}

int checkpoint_read_version(const char *path, const ckpt_section *secs, int n, char *err,
                            size_t err_len, uint32_t *version) {
  if (!path) return checkpoint_errorf(err, err_len, "checkpoint_read: no path");
  table_check(secs, n, "checkpoint_read");
  ckpt_reader rd = {.path = path, .err = err, .err_len = err_len};
  const int failed = reader_check_sizes(&rd, secs, n) || reader_open(&rd) ||
                     reader_header(&rd, secs, n) || reader_sections(&rd, secs, n) ||
                     reader_end(&rd);
  if (!failed) reader_commit(&rd, secs, n);
  if (!failed) *version = rd.version;
  for (int i = 0; i < n; i++) free(rd.staged[i]);
  if (rd.f) fclose(rd.f); // read-only stream: a close error cannot lose data
  return failed ? -1 : 0;
}

// ---------------------------------------------------------------------------------------
// Directory management

void checkpoint_dir_create(const char *dir) {
  char buf[1024];
  int len = snprintf(buf, sizeof(buf), "%s", dir);
  if (len < 0 || (size_t)len >= sizeof(buf))
    DIE_USAGE("--checkpoint-dir: %s is longer than %zu bytes", dir, sizeof(buf) - 1);
  // Each prefix ending at a '/' and then the whole path, as mkdir -p; an existing directory
  // (made by an earlier run, or by another rank of this one) is fine.
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || *p == 0) {
      char c = *p;
      *p = 0;
      struct stat sb;
      if (mkdir(buf, 0755) != 0 && !(errno == EEXIST && stat(buf, &sb) == 0 && S_ISDIR(sb.st_mode)))
        DIE_USAGE("--checkpoint-dir: cannot create %s: %s", buf,
                  errno == EEXIST ? "it exists and is not a directory" : strerror(errno));
      *p = c;
      if (!c) break;
    }
  }
}

void checkpoint_best_path(char *out, size_t out_len, const char *dir) {
  int n = snprintf(out, out_len, "%s/best.bin", dir);
  if (n < 0 || (size_t)n >= out_len)
    FATAL("checkpoint path in %s does not fit %zu bytes", dir, out_len);
}

void checkpoint_path(char *out, size_t out_len, const char *dir, int epoch, int batch) {
  int n = batch == 0 ? snprintf(out, out_len, "%s/ckpt_e%04d.bin", dir, epoch)
                     : snprintf(out, out_len, "%s/ckpt_e%04d_b%06d.bin", dir, epoch, batch);
  if (n < 0 || (size_t)n >= out_len)
    FATAL("checkpoint path in %s does not fit %zu bytes", dir, out_len);
}

// Parses a run of decimal digits; returns the position after it or NULL if none / too big.
static const char *parse_uint(const char *s, long *out) {
  long v = 0;
  const char *p = s;
  for (; *p >= '0' && *p <= '9'; p++) {
    v = v * 10 + (*p - '0');
    if (v > 1000000000L) return NULL;
  }
  if (p == s) return NULL;
  *out = v;
  return p;
}

// "ckpt_e<digits>.bin" or "ckpt_e<digits>_b<digits>.bin" exactly; anything else (best.bin,
// "*.tmp.<pid>" leftovers of an interrupted write) is not a periodic checkpoint.
static int periodic_name_parse(const char *name, long *epoch, long *batch) {
  if (strncmp(name, "ckpt_e", 6) != 0) return 0;
  const char *p = parse_uint(name + 6, epoch);
  if (!p) return 0;
  *batch = 0;
  if (p[0] == '_' && p[1] == 'b') {
    p = parse_uint(p + 2, batch);
    if (!p) return 0;
  }
  return strcmp(p, ".bin") == 0;
}

// "<name>.tmp.<pid>" where <name> is a file this module writes atomically (a periodic
// checkpoint, best.bin, the RESUMABLE marker) and <pid> is decimal digits only: the name
// commit_tmp's callers give their temp files, and nothing else. Sets *pid.
static int tmp_name_parse(const char *name, long *pid) {
  const char *tmp = strstr(name, ".tmp.");
  if (!tmp) return 0;
  const size_t base = (size_t)(tmp - name);
  char stem[256];
  if (base == 0 || base >= sizeof(stem)) return 0;
  memcpy(stem, name, base);
  stem[base] = '\0';
  long epoch, batch;
  const int known = strcmp(stem, "best.bin") == 0 || strcmp(stem, CKPT_RESUMABLE) == 0 ||
                    periodic_name_parse(stem, &epoch, &batch);
  const char *end = known ? parse_uint(tmp + 5, pid) : NULL;
  return end && *end == '\0' && *pid > 0 && *pid <= INT_MAX; // a pid_t
}

// Whether process pid may still be writing: it exists (kill 0 succeeds, or is refused for
// permission) and is not this one, which has written nothing yet when this runs.
static int tmp_writer_alive(long pid) {
  if (pid == (long)getpid()) return 0; // a reused pid (containers restart at the same pids)
  if (kill((pid_t)pid, 0) == 0) return 1;
  if (errno == ESRCH) return 0;
  if (errno == EPERM) return 1;
  FATAL("kill(%ld, 0) failed: %s", pid, strerror(errno));
}

// Removes dir/name when it is a regular file (never a directory or a link someone made);
// returns 1 when it did.
static int tmp_remove(const char *dir, const char *name, long pid,
                      void (*removed)(const char *path, long pid)) {
  char path[4096];
  int len = snprintf(path, sizeof(path), "%s/%s", dir, name);
  if (len < 0 || (size_t)len >= sizeof(path)) FATAL("path %s/%s too long", dir, name);
  struct stat sb;
  if (lstat(path, &sb) != 0) {
    if (errno == ENOENT) return 0; // gone meanwhile
    FATAL("lstat(%s) failed: %s", path, strerror(errno));
  }
  if (!S_ISREG(sb.st_mode)) return 0;
  if (unlink(path) != 0) {
    if (errno == ENOENT) return 0;
    FATAL("unlink(%s) failed: %s", path, strerror(errno));
  }
  if (removed) removed(path, pid);
  return 1;
}

// The next entry of directory d (named dir), NULL at its end; a read error is fatal.
static struct dirent *dir_next(DIR *d, const char *dir) {
  errno = 0;
  struct dirent *de = readdir(d);
  if (!de && errno != 0) FATAL("readdir(%s) failed: %s", dir, strerror(errno));
  return de;
}

int checkpoint_remove_stale_tmp(const char *dir, void (*removed)(const char *path, long pid)) {
  DIR *d = opendir(dir);
  if (!d) FATAL("opendir(%s) failed: %s", dir, strerror(errno));
  int n = 0;
  for (struct dirent *de; (de = dir_next(d, dir));) {
    long pid;
    if (tmp_name_parse(de->d_name, &pid) && !tmp_writer_alive(pid))
      n += tmp_remove(dir, de->d_name, pid, removed);
  }
  if (closedir(d) != 0) FATAL("closedir(%s) failed: %s", dir, strerror(errno));
  if (n > 0) fsync_dir(dir);
  return n;
}

typedef struct ckpt_entry {
  long epoch, batch;
  char name[256];
} ckpt_entry;

// Newest first.
static int entry_cmp_desc(const void *a, const void *b) {
  const ckpt_entry *x = a, *y = b;
  if (x->epoch != y->epoch) return x->epoch < y->epoch ? 1 : -1;
  if (x->batch != y->batch) return x->batch < y->batch ? 1 : -1;
  return strcmp(x->name, y->name);
}

// Lists the periodic checkpoints in dir, newest first. Returns -1 if dir does not exist.
static int list_periodic(const char *dir, ckpt_entry **out, int *count) {
  DIR *d = opendir(dir);
  if (!d) {
    if (errno == ENOENT) return -1;
    FATAL("opendir(%s) failed: %s", dir, strerror(errno));
  }
  int n = 0, cap = 16;
  ckpt_entry *e = xmalloc(cap * sizeof(*e));
  for (struct dirent *de; (de = dir_next(d, dir));) {
    long epoch, batch;
    if (!periodic_name_parse(de->d_name, &epoch, &batch)) continue;
    if (strlen(de->d_name) >= sizeof(e->name)) continue;
    if (n == cap) {
      cap *= 2;
      e = CHECK_PTR(realloc(e, cap * sizeof(*e)));
    }
    e[n].epoch = epoch;
    e[n].batch = batch;
    snprintf(e[n].name, sizeof(e[n].name), "%s", de->d_name);
    n++;
  }
  if (closedir(d) != 0) FATAL("closedir(%s) failed: %s", dir, strerror(errno));
  qsort(e, n, sizeof(*e), entry_cmp_desc);
  *out = e;
  *count = n;
  return 0;
}

int checkpoint_latest(const char *dir, char *out, size_t out_len) {
  ckpt_entry *e;
  int n;
  if (list_periodic(dir, &e, &n) != 0) return -1;
  int rc = -1;
  if (n > 0) {
    int len = snprintf(out, out_len, "%s/%s", dir, e[0].name);
    if (len < 0 || (size_t)len >= out_len)
      FATAL("checkpoint path %s/%s does not fit %zu bytes", dir, e[0].name, out_len);
    rc = 0;
  }
  free(e);
  return rc;
}

void checkpoint_prune(const char *dir, int keep) {
  if (keep <= 0) return;
  ckpt_entry *e;
  int n;
  if (list_periodic(dir, &e, &n) != 0) FATAL("checkpoint directory %s does not exist", dir);
  for (int i = keep; i < n; i++) {
    char path[4096];
    int len = snprintf(path, sizeof(path), "%s/%s", dir, e[i].name);
    if (len < 0 || (size_t)len >= sizeof(path))
      FATAL("checkpoint path %s/%s too long", dir, e[i].name);
    if (unlink(path) != 0 && errno != ENOENT) FATAL("unlink(%s) failed: %s", path, strerror(errno));
  }
  free(e);
}

// ---------------------------------------------------------------------------------------
// The RESUMABLE marker

// "<dir>/RESUMABLE", checked for length.
static void marker_path(char *out, size_t out_len, const char *dir) {
  int n = snprintf(out, out_len, "%s/%s", dir, CKPT_RESUMABLE);
  if (n < 0 || (size_t)n >= out_len) FATAL("marker path in %s does not fit %zu bytes", dir, out_len);
}

void checkpoint_mark_resumable(const char *dir, const char *ckpt_path, const char *reason) {
  if (!dir || !ckpt_path || !reason) FATAL("checkpoint_mark_resumable needs dir, path and reason");
  const char *slash = strrchr(ckpt_path, '/');
  const char *name = slash ? slash + 1 : ckpt_path;
  char path[4096], tmp[4200];
  marker_path(path, sizeof(path), dir);
  snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
  FILE *f = xfopen(tmp, "w");
  WRITE_CHECK(fprintf(f, "%s %s\n", name, reason) > 0, f, tmp, "write to %s failed: %s", tmp,
              strerror(errno));
  commit_tmp(f, tmp, path);
}

int checkpoint_clear_resumable(const char *dir) {
  char path[4096];
  marker_path(path, sizeof(path), dir);
  if (unlink(path) != 0) {
    if (errno == ENOENT) return 0;
    FATAL("unlink(%s) failed: %s", path, strerror(errno));
  }
  fsync_dir(dir);
  return 1;
}
