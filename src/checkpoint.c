// checkpoint.c - writes, verifies and finds training checkpoints (see checkpoint.h for the
// file layout and the guarantees).
//
// Writing goes to "<path>.tmp.<pid>", is flushed and fsync'ed, renamed over <path>, and the
// directory is fsync'ed, so a crash leaves either the old or the new file, never a mix.
// Reading verifies everything (magic, version, sizes, meta, every CRC, no trailing bytes)
// into private buffers before the first byte reaches the caller's outputs.
// Serialization is explicit field by field (no struct padding on disk); floats are stored as
// their little-endian IEEE bits, so the build requires a little-endian host.
#include "checkpoint.h"

#include "check.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
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

enum { SEC_META = 1, SEC_STATE, SEC_PARAMS, SEC_ADAM_M, SEC_ADAM_V, SEC_COUNT = 5 };
static const char *const sec_names[] = {"?", "META", "STATE", "PARAMS", "ADAM_M", "ADAM_V"};

#define META_BYTES (16 + 4 + 4 + 4 + 8)
#define HEADER_BYTES (8 + 4 + 4 + META_BYTES)
#define SEC_HEADER_BYTES (4 + 4 + 8 + 4 + 4)
#define STATE_BYTES (8 + 4 + 4 + 2 * 8 + 8 + 4 + 8 + 4 + 4 + 8 + 8 + 4 + 4 + 8 + 3 * 4 + 3 * 4)

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

static void meta_pack(uint8_t out[META_BYTES], const ckpt_meta *m) {
  bytes_cursor c = {out};
  put(&c, m->model, 16);
  put(&c, &m->width, 4);
  put(&c, &m->image_size, 4);
  put(&c, &m->classes, 4);
  put(&c, &m->n_params, 8);
}

static void meta_unpack(ckpt_meta *m, const uint8_t in[META_BYTES]) {
  bytes_cursor c = {(uint8_t *)in};
  get(&c, m->model, 16);
  get(&c, &m->width, 4);
  get(&c, &m->image_size, 4);
  get(&c, &m->classes, 4);
  get(&c, &m->n_params, 8);
}

// Field order is the struct's; put for packing, get for unpacking, one list for both.
#define STATE_FIELDS(OP, c, s)                                                                     \
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

static void state_pack(uint8_t out[STATE_BYTES], const train_state *s) {
  bytes_cursor c = {out};
  STATE_FIELDS(put, &c, s);
}

static void state_unpack(train_state *s, const uint8_t in[STATE_BYTES]) {
  bytes_cursor c = {(uint8_t *)in};
  STATE_FIELDS(get, &c, s);
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

static void write_section(FILE *f, const char *tmp, uint32_t id, const void *payload,
                          uint64_t bytes) {
  uint8_t h[SEC_HEADER_BYTES];
  sec_header_pack(h, id, bytes, checkpoint_crc32(0, payload, (size_t)bytes));
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

void checkpoint_write(const char *path, const ckpt_meta *meta, const train_state *st,
                      const float *params, const float *m, const float *v) {
  if (!path || !meta || !st || !params || !m || !v)
    FATAL("checkpoint_write needs a path, meta, state and all three tensors");
  if (meta->n_params > (uint64_t)(SIZE_MAX / sizeof(float)))
    FATAL("checkpoint_write: %" PRIu64 " parameters do not fit in memory", meta->n_params);
  uint64_t tensor_bytes = meta->n_params * sizeof(float);

  char tmp[4096];
  int n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
  if (n < 0 || (size_t)n >= sizeof(tmp)) FATAL("checkpoint path too long: %s", path);

  uint8_t meta_bytes[META_BYTES], state_bytes[STATE_BYTES], header[HEADER_BYTES];
  meta_pack(meta_bytes, meta);
  state_pack(state_bytes, st);
  bytes_cursor c = {header};
  uint32_t version = CKPT_VERSION, count = SEC_COUNT;
  put(&c, ckpt_magic, 8);
  put(&c, &version, 4);
  put(&c, &count, 4);
  put(&c, meta_bytes, META_BYTES);

  FILE *f = xfopen(tmp, "wb");
  write_bytes(f, tmp, header, sizeof(header));
  write_section(f, tmp, SEC_META, meta_bytes, META_BYTES);
  write_section(f, tmp, SEC_STATE, state_bytes, STATE_BYTES);
  write_section(f, tmp, SEC_PARAMS, params, tensor_bytes);
  write_section(f, tmp, SEC_ADAM_M, m, tensor_bytes);
  write_section(f, tmp, SEC_ADAM_V, v, tensor_bytes);
  commit_tmp(f, tmp, path);
}

// ---------------------------------------------------------------------------------------
// Reading

static int read_fail(char *err, size_t err_len, const char *fmt, ...) VGG_PRINTF(3, 4);
static int read_fail(char *err, size_t err_len, const char *fmt, ...) {
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
  return NULL;
}

#define META_FMT "model %.16s width %g at %dx%d, %d classes, %" PRIu64 " parameters"
#define META_ARGS(m)                                                                               \
  (m)->model, (double)(m)->width, (m)->image_size, (m)->image_size, (m)->classes, (m)->n_params

int checkpoint_read(const char *path, const ckpt_meta *expect, train_state *st, float *params,
                    float *m, float *v, char *err, size_t err_len) {
  if (!path || !expect) return read_fail(err, err_len, "checkpoint_read: no path or meta");
  FILE *f = fopen(path, "rb");
  if (!f) return read_fail(err, err_len, "cannot open checkpoint %s: %s", path, strerror(errno));

  int rc = -1;
  const char *why = "";
  float *tensors[3] = {NULL, NULL, NULL};
  float *outs[3] = {params, m, v};
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0) {
    read_fail(err, err_len, "cannot stat checkpoint %s: %s", path, strerror(errno));
    goto done;
  }
  if (!S_ISREG(sb.st_mode)) {
    read_fail(err, err_len, "checkpoint %s is not a regular file", path);
    goto done;
  }
  uint64_t file_bytes = (uint64_t)sb.st_size;

  // Header: magic, version, section count, meta.
  uint8_t header[HEADER_BYTES];
  if (file_bytes < HEADER_BYTES || read_exact(f, header, HEADER_BYTES, &why)) {
    read_fail(err, err_len,
              "checkpoint %s is truncated: %" PRIu64 " bytes, shorter than its %d-byte header",
              path, file_bytes, HEADER_BYTES);
    goto done;
  }
  if (memcmp(header, ckpt_magic, 8) != 0) {
    read_fail(err, err_len, "%s is not a vgg_dist checkpoint (bad magic)", path);
    goto done;
  }
  uint32_t version, count;
  memcpy(&version, header + 8, 4);
  memcpy(&count, header + 12, 4);
  if (version != CKPT_VERSION) {
    read_fail(err, err_len, "checkpoint %s has version %" PRIu32 ", this build reads version %d",
              path, version, CKPT_VERSION);
    goto done;
  }
  if (count != SEC_COUNT) {
    read_fail(err, err_len, "checkpoint %s has %" PRIu32 " sections, expected %d", path, count,
              SEC_COUNT);
    goto done;
  }

  // Sections, in order. Sizes are what `expect` implies, so a corrupt size field can never
  // make us allocate more than the caller's own tensors, and never more than the file holds.
  if (expect->n_params > (uint64_t)(SIZE_MAX / sizeof(float)) / 4) {
    read_fail(err, err_len, "checkpoint %s: expected parameter count %" PRIu64 " is absurd", path,
              expect->n_params);
    goto done;
  }
  const uint64_t tensor_bytes = expect->n_params * sizeof(float);
  const uint64_t sec_bytes[SEC_COUNT + 1] = {
      0, META_BYTES, STATE_BYTES, tensor_bytes, tensor_bytes, tensor_bytes};
  uint64_t pos = HEADER_BYTES;
  uint8_t meta_bytes[META_BYTES], state_bytes[STATE_BYTES];
  ckpt_meta file_meta;
  for (uint32_t id = 1; id <= SEC_COUNT; id++) {
    const char *name = sec_names[id];
    uint8_t h[SEC_HEADER_BYTES];
    if (file_bytes - pos < SEC_HEADER_BYTES || read_exact(f, h, SEC_HEADER_BYTES, &why)) {
      read_fail(err, err_len,
                "checkpoint %s is truncated: %" PRIu64 " bytes, ends in the header of section %s",
                path, file_bytes, name);
      goto done;
    }
    pos += SEC_HEADER_BYTES;
    uint32_t got_id, crc_want;
    uint64_t bytes;
    memcpy(&got_id, h, 4);
    memcpy(&bytes, h + 8, 8);
    memcpy(&crc_want, h + 16, 4);
    if (got_id != id) {
      read_fail(err, err_len,
                "checkpoint %s is corrupt: section %" PRIu32 " found where %s was expected", path,
                got_id, name);
      goto done;
    }
    if (bytes != sec_bytes[id]) {
      read_fail(err, err_len, "checkpoint %s: section %s has %" PRIu64 " bytes, expected %" PRIu64,
                path, name, bytes, sec_bytes[id]);
      goto done;
    }
    if (file_bytes - pos < bytes) {
      read_fail(err, err_len,
                "checkpoint %s is truncated: %" PRIu64 " bytes, ends inside section %s", path,
                file_bytes, name);
      goto done;
    }
    void *dst = NULL;
    if (id == SEC_META)
      dst = meta_bytes;
    else if (id == SEC_STATE)
      dst = state_bytes;
    else if (outs[id - SEC_PARAMS])
      dst = tensors[id - SEC_PARAMS] = xmalloc((size_t)bytes);
    uint32_t crc_got;
    if (read_payload(f, dst, bytes, &crc_got, &why)) {
      read_fail(err, err_len, "checkpoint %s: reading section %s failed: %s", path, name, why);
      goto done;
    }
    pos += bytes;
    if (crc_got != crc_want) {
      read_fail(err, err_len,
                "checkpoint %s is corrupt: CRC mismatch in section %s (stored %08" PRIx32
                ", computed %08" PRIx32 ")",
                path, name, crc_want, crc_got);
      goto done;
    }
    if (id == SEC_META) {
      // The header copy is not checksummed; the META section is. They must agree.
      if (memcmp(meta_bytes, header + 16, META_BYTES) != 0) {
        read_fail(err, err_len,
                  "checkpoint %s is corrupt: header meta differs from the META section", path);
        goto done;
      }
      meta_unpack(&file_meta, meta_bytes);
      const char *diff = meta_diff(&file_meta, expect);
      if (diff) {
        read_fail(err, err_len,
                  "checkpoint %s is for " META_FMT ", this run is " META_FMT " (%s differs)", path,
                  META_ARGS(&file_meta), META_ARGS(expect), diff);
        goto done;
      }
    }
  }
  if (pos != file_bytes) {
    read_fail(err, err_len,
              "checkpoint %s has %" PRIu64 " bytes of trailing garbage after the last section",
              path, file_bytes - pos);
    goto done;
  }
  uint8_t probe;
  if (fread(&probe, 1, 1, f) != 0 || ferror(f)) { // the file grew or failed under us
    read_fail(err, err_len, "checkpoint %s changed while being read", path);
    goto done;
  }

  // Everything verified: only now touch the caller's outputs.
  if (st) state_unpack(st, state_bytes);
  for (int t = 0; t < 3; t++)
    if (outs[t]) memcpy(outs[t], tensors[t], (size_t)tensor_bytes);
  rc = 0;

done:
  for (int t = 0; t < 3; t++) free(tensors[t]);
  fclose(f); // read-only stream: a close error cannot lose data
  return rc;
}

// ---------------------------------------------------------------------------------------
// Directory management

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
  for (;;) {
    errno = 0;
    struct dirent *de = readdir(d);
    if (!de) {
      if (errno != 0) FATAL("readdir(%s) failed: %s", dir, strerror(errno));
      break;
    }
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
