// test_checkpoint.c - the checkpoint file: CRC-32, bitwise round trip, every refusal (with
// the caller's buffers untouched), atomic replacement under SIGKILL, latest/prune naming.
#include "checkpoint.h"
#include "check.h"
#include "test.h"

#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

// Byte offsets of the layout in checkpoint.h, written out independently of checkpoint.c.
#define T_META_BYTES 36
#define T_HEADER_BYTES (16 + T_META_BYTES)
#define T_SEC_HDR 24
#define T_STATE_BYTES 116

// A fresh subdirectory of the scratch directory, so tests do not see each other's files.
static void make_dir(char *out, size_t len, const char *name) {
  snprintf(out, len, "%s/%s", test_tmp_dir(), name);
  if (mkdir(out, 0700) != 0 && errno != EEXIST) FATAL("mkdir(%s): %s", out, strerror(errno));
}

static ckpt_meta sample_meta(uint64_t n_params) {
  ckpt_meta m;
  memset(&m, 0, sizeof(m));
  snprintf(m.model, sizeof(m.model), "vgg16");
  m.width = 0.25f;
  m.image_size = 32;
  m.classes = 10;
  m.n_params = n_params;
  return m;
}

static train_state sample_state(void) {
  train_state s;
  memset(&s, 0, sizeof(s));
  s.step = 123456789012LL;
  s.epoch = 7;
  s.batch = 42;
  s.epoch_loss_sum = 1.0 / 3.0;
  s.epoch_correct = 1234;
  s.epoch_time_s = 12.375e-3;
  s.lr = 3e-4f;
  s.sched_best = 0.6931471805599453;
  s.sched_bad_epochs = 2;
  s.sched_cooldown = 1;
  s.best_val_loss = 0.5772156649;
  s.best_val_acc = 0.8125;
  s.best_epoch = 5;
  s.es_bad_epochs = 3;
  s.seed = 0xDEADBEEFCAFEF00DULL;
  s.mean[0] = 0.4914f, s.mean[1] = 0.4822f, s.mean[2] = 0.4465f;
  s.std[0] = 0.2470f, s.std[1] = 0.2435f, s.std[2] = 0.2616f;
  return s;
}

// Distinct bit patterns per tensor, including -0, NaN, a denormal and infinities.
static void fill_tensor(float *x, size_t n, uint32_t salt) {
  for (size_t i = 0; i < n; i++) {
    uint32_t b = (uint32_t)(i * 2654435761u) ^ (salt * 0x9E3779B9u);
    memcpy(&x[i], &b, 4);
  }
  uint32_t special[] = {0x80000000u, 0x7FC00001u, 0x00000001u, 0x7F800000u, 0xFF800000u};
  for (size_t i = 0; i < 5 && i < n; i++) memcpy(&x[i], &special[i], 4);
}

static int state_equal(const train_state *a, const train_state *b) {
#define SAME(f) (memcmp(&a->f, &b->f, sizeof(a->f)) == 0)
  return SAME(step) && SAME(epoch) && SAME(batch) && SAME(epoch_loss_sum) && SAME(epoch_correct) &&
         SAME(epoch_time_s) && SAME(lr) && SAME(sched_best) &&
         SAME(sched_bad_epochs) && SAME(sched_cooldown) && SAME(best_val_loss) &&
         SAME(best_val_acc) && SAME(best_epoch) && SAME(es_bad_epochs) && SAME(seed) &&
         SAME(mean) && SAME(std);
#undef SAME
}

static int file_exists(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0;
}

static long file_size(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? (long)sb.st_size : -1;
}

static uint8_t *slurp(const char *path, size_t *bytes) {
  long n = file_size(path);
  if (n < 0) FATAL("stat(%s): %s", path, strerror(errno));
  uint8_t *buf = xmalloc((size_t)n);
  FILE *f = xfopen(path, "rb");
  xfread(buf, (size_t)n, f, path);
  xfclose(f, path);
  *bytes = (size_t)n;
  return buf;
}

static void spit(const char *path, const void *buf, size_t bytes) {
  FILE *f = xfopen(path, "wb");
  xfwrite(buf, bytes, f, path);
  xfclose(f, path);
}

static int count_tmp_files(const char *dir) {
  DIR *d = CHECK_PTR(opendir(dir));
  int n = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) n += strstr(de->d_name, ".tmp.") != NULL;
  closedir(d);
  return n;
}

// ---------------------------------------------------------------------------------------

TEST(checkpoint_crc32_known_values) {
  EXPECT(checkpoint_crc32(0, "123456789", 9) == 0xCBF43926u);
  EXPECT(checkpoint_crc32(0, "", 0) == 0);
  EXPECT(checkpoint_crc32(0, "a", 1) == 0xE8B7BE43u);
  EXPECT(checkpoint_crc32(0, "The quick brown fox jumps over the lazy dog", 43) == 0x414FA339u);
  // Incremental == one shot, for every split point of an unaligned buffer (exercises the
  // 8-byte loop and the tail).
  uint8_t buf[77];
  for (int i = 0; i < 77; i++) buf[i] = (uint8_t)(i * 37 + 11);
  uint32_t whole = checkpoint_crc32(0, buf + 1, 76);
  for (int k = 0; k <= 76; k++)
    EXPECT(checkpoint_crc32(checkpoint_crc32(0, buf + 1, k), buf + 1 + k, 76 - k) == whole);
  // Against the one-table bitwise definition.
  uint32_t c = 0xFFFFFFFFu;
  for (int i = 1; i < 77; i++) {
    c ^= buf[i];
    for (int b = 0; b < 8; b++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
  }
  EXPECT(whole == ~c);
}

TEST(checkpoint_round_trip_bitwise) {
  char dir[512], path[600];
  make_dir(dir, sizeof(dir), "ckpt_rt");
  snprintf(path, sizeof(path), "%s/rt.bin", dir);
  const size_t n = 10007;
  ckpt_meta meta = sample_meta(n);
  train_state st = sample_state();
  float *p = xmalloc(n * 4), *m = xmalloc(n * 4), *v = xmalloc(n * 4);
  fill_tensor(p, n, 1), fill_tensor(m, n, 2), fill_tensor(v, n, 3);
  checkpoint_write(path, &meta, &st, p, m, v);
  EXPECT_EQ_INT(file_size(path),
                T_HEADER_BYTES + 5 * T_SEC_HDR + T_META_BYTES + T_STATE_BYTES + 3 * 4 * (long)n);
  EXPECT_EQ_INT(count_tmp_files(dir), 0);

  train_state st2;
  memset(&st2, 0xAB, sizeof(st2));
  float *p2 = xmalloc(n * 4), *m2 = xmalloc(n * 4), *v2 = xmalloc(n * 4);
  char err[512] = "";
  int rc = checkpoint_read(path, &meta, &st2, p2, m2, v2, err, sizeof(err));
  if (rc != 0) fprintf(stderr, "    %s\n", err);
  REQUIRE(rc == 0);
  EXPECT(state_equal(&st, &st2));
  EXPECT(memcmp(p, p2, n * 4) == 0);
  EXPECT(memcmp(m, m2, n * 4) == 0);
  EXPECT(memcmp(v, v2, n * 4) == 0);

  // NULL outputs are skipped; the others are still filled.
  memset(&st2, 0, sizeof(st2));
  memset(m2, 0, n * 4);
  EXPECT(checkpoint_read(path, &meta, &st2, NULL, m2, NULL, err, sizeof(err)) == 0);
  EXPECT(state_equal(&st, &st2));
  EXPECT(memcmp(m, m2, n * 4) == 0);
  EXPECT(checkpoint_read(path, &meta, NULL, NULL, NULL, NULL, err, sizeof(err)) == 0);

  // Overwriting an existing checkpoint replaces it.
  st.epoch = 8;
  fill_tensor(p, n, 9);
  checkpoint_write(path, &meta, &st, p, m, v);
  EXPECT(checkpoint_read(path, &meta, &st2, p2, NULL, NULL, err, sizeof(err)) == 0);
  EXPECT_EQ_INT(st2.epoch, 8);
  EXPECT(memcmp(p, p2, n * 4) == 0);
  EXPECT_EQ_INT(count_tmp_files(dir), 0);

  // Zero parameters is a valid (if odd) file.
  ckpt_meta meta0 = sample_meta(0);
  snprintf(path, sizeof(path), "%s/rt0.bin", dir);
  checkpoint_write(path, &meta0, &st, p, m, v);
  EXPECT(checkpoint_read(path, &meta0, &st2, p2, m2, v2, err, sizeof(err)) == 0);
  free(p), free(m), free(v), free(p2), free(m2), free(v2);
}

// ---------------------------------------------------------------------------------------
// Refusals: each case writes a damaged copy and checks -1, the reason, and untouched outputs.

#define R_N 257
typedef struct refusal_fixture {
  char dir[512], good[600], bad[600];
  ckpt_meta meta;
  uint8_t *bytes;
  size_t size;
} refusal_fixture;

static void fixture_init(refusal_fixture *fx, const char *name) {
  make_dir(fx->dir, sizeof(fx->dir), name);
  snprintf(fx->good, sizeof(fx->good), "%s/good.bin", fx->dir);
  snprintf(fx->bad, sizeof(fx->bad), "%s/bad.bin", fx->dir);
  fx->meta = sample_meta(R_N);
  train_state st = sample_state();
  float p[R_N], m[R_N], v[R_N];
  fill_tensor(p, R_N, 4), fill_tensor(m, R_N, 5), fill_tensor(v, R_N, 6);
  checkpoint_write(fx->good, &fx->meta, &st, p, m, v);
  fx->bytes = slurp(fx->good, &fx->size);
}

// Reads `path` against `expect` into sentinel-filled outputs; checks it is refused with a
// message containing `want`, and that no output byte changed.
static void expect_refused(const char *path, const ckpt_meta *expect, const char *want,
                           const char *file, int line) {
  train_state st, st0;
  float p[R_N], m[R_N], v[R_N];
  memset(&st, 0x5A, sizeof(st));
  memset(p, 0x5A, sizeof(p)), memset(m, 0x5A, sizeof(m)), memset(v, 0x5A, sizeof(v));
  memcpy(&st0, &st, sizeof(st));
  char err[512];
  memset(err, 0, sizeof(err));
  int rc = checkpoint_read(path, expect, &st, p, m, v, err, sizeof(err));
  if (rc != -1) test_fail(file, line, "read of %s returned %d, expected -1 (%s)", path, rc, want);
  if (!strstr(err, want)) test_fail(file, line, "error \"%s\" does not mention \"%s\"", err, want);
  if (strchr(err, '\n')) test_fail(file, line, "error \"%s\" is not one line", err);
  if (!strstr(err, path)) test_fail(file, line, "error \"%s\" does not name the file", err);
  int touched = memcmp(&st, &st0, sizeof(st)) != 0;
  for (int i = 0; i < R_N; i++) {
    uint32_t a, b, c;
    memcpy(&a, &p[i], 4), memcpy(&b, &m[i], 4), memcpy(&c, &v[i], 4);
    touched |= a != 0x5A5A5A5Au || b != 0x5A5A5A5Au || c != 0x5A5A5A5Au;
  }
  if (touched) test_fail(file, line, "refused read of %s modified the outputs", path);
}
#define EXPECT_REFUSED(path, expect, want) expect_refused(path, expect, want, __FILE__, __LINE__)

TEST(checkpoint_refuses_truncated) {
  refusal_fixture fx;
  fixture_init(&fx, "ckpt_trunc");
  size_t sec_meta = T_HEADER_BYTES;                       // META section header
  size_t sec_state = sec_meta + T_SEC_HDR + T_META_BYTES; // STATE section header
  size_t sec_params = sec_state + T_SEC_HDR + T_STATE_BYTES;
  size_t sec_v = sec_params + 2 * (T_SEC_HDR + 4 * R_N);
  REQUIRE(fx.size == sec_v + T_SEC_HDR + 4 * R_N);
  struct {
    size_t cut;
    const char *want;
  } cases[] = {
      {0, "truncated"},                          // empty file
      {5, "truncated"},                          // inside the magic
      {30, "truncated"},                         // inside the header meta
      {sec_meta + 10, "header of section META"}, // inside a section header
      {sec_state + T_SEC_HDR + 50, "inside section STATE"},
      {sec_params + T_SEC_HDR + 100, "inside section PARAMS"},
      {sec_v, "header of section ADAM_V"},    // exactly at a section boundary
      {fx.size - 1, "inside section ADAM_V"}, // the last byte missing
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    spit(fx.bad, fx.bytes, cases[i].cut);
    EXPECT_REFUSED(fx.bad, &fx.meta, cases[i].want);
  }
  free(fx.bytes);
}

TEST(checkpoint_refuses_corrupt_sections) {
  refusal_fixture fx;
  fixture_init(&fx, "ckpt_corrupt");
  size_t off = T_HEADER_BYTES;
  struct {
    const char *name;
    size_t bytes;
  } secs[] = {{"META", T_META_BYTES},
              {"STATE", T_STATE_BYTES},
              {"PARAMS", 4 * R_N},
              {"ADAM_M", 4 * R_N},
              {"ADAM_V", 4 * R_N}};
  for (int s = 0; s < 5; s++) {
    size_t payload = off + T_SEC_HDR;
    // A flipped bit at the start, middle and end of the payload: the CRC names the section.
    size_t at[3] = {payload, payload + secs[s].bytes / 2, payload + secs[s].bytes - 1};
    for (int k = 0; k < 3; k++) {
      char want[64];
      snprintf(want, sizeof(want), "CRC mismatch in section %s", secs[s].name);
      fx.bytes[at[k]] ^= 0x10;
      spit(fx.bad, fx.bytes, fx.size);
      EXPECT_REFUSED(fx.bad, &fx.meta, want);
      fx.bytes[at[k]] ^= 0x10;
    }
    // The stored CRC itself damaged.
    fx.bytes[off + 16] ^= 0x01;
    spit(fx.bad, fx.bytes, fx.size);
    EXPECT_REFUSED(fx.bad, &fx.meta, secs[s].name);
    fx.bytes[off + 16] ^= 0x01;
    // A wrong size field.
    uint64_t b;
    memcpy(&b, fx.bytes + off + 8, 8);
    uint64_t bad_sizes[2] = {b + 4, UINT64_MAX / 2};
    for (int k = 0; k < 2; k++) {
      memcpy(fx.bytes + off + 8, &bad_sizes[k], 8);
      spit(fx.bad, fx.bytes, fx.size);
      char want[64];
      snprintf(want, sizeof(want), "section %s has", secs[s].name);
      EXPECT_REFUSED(fx.bad, &fx.meta, want);
    }
    memcpy(fx.bytes + off + 8, &b, 8);
    off = payload + secs[s].bytes;
  }
  // Sections out of order (ids of STATE and META swapped).
  fx.bytes[T_HEADER_BYTES] = 2;
  spit(fx.bad, fx.bytes, fx.size);
  EXPECT_REFUSED(fx.bad, &fx.meta, "corrupt");
  fx.bytes[T_HEADER_BYTES] = 1;
  // The unchecksummed header meta disagreeing with the META section.
  fx.bytes[16 + 16 + 8] ^= 0x01; // header copy of `classes`
  spit(fx.bad, fx.bytes, fx.size);
  EXPECT_REFUSED(fx.bad, &fx.meta, "header meta differs");
  fx.bytes[16 + 16 + 8] ^= 0x01;
  // Sanity: the restored bytes are the good file again.
  spit(fx.bad, fx.bytes, fx.size);
  char err[256];
  EXPECT(checkpoint_read(fx.bad, &fx.meta, NULL, NULL, NULL, NULL, err, sizeof(err)) == 0);
  free(fx.bytes);
}

TEST(checkpoint_refuses_wrong_file) {
  refusal_fixture fx;
  fixture_init(&fx, "ckpt_wrong");
  char path[700];
  snprintf(path, sizeof(path), "%s/does_not_exist.bin", fx.dir);
  EXPECT_REFUSED(path, &fx.meta, "cannot open");
  EXPECT_REFUSED(fx.dir, &fx.meta, fx.dir); // a directory, not a file

  fx.bytes[0] = 'X';
  spit(fx.bad, fx.bytes, fx.size);
  EXPECT_REFUSED(fx.bad, &fx.meta, "bad magic");
  fx.bytes[0] = 'V';

  uint32_t version = CKPT_VERSION + 1, one = CKPT_VERSION;
  memcpy(fx.bytes + 8, &version, 4);
  spit(fx.bad, fx.bytes, fx.size);
  EXPECT_REFUSED(fx.bad, &fx.meta, "version 2");
  memcpy(fx.bytes + 8, &one, 4);

  uint32_t count = 4, five = 5;
  memcpy(fx.bytes + 12, &count, 4);
  spit(fx.bad, fx.bytes, fx.size);
  EXPECT_REFUSED(fx.bad, &fx.meta, "4 sections");
  memcpy(fx.bytes + 12, &five, 4);

  // Trailing garbage: one byte, and a whole extra section's worth.
  uint8_t *longer = xmalloc(fx.size + 100);
  memcpy(longer, fx.bytes, fx.size);
  memset(longer + fx.size, 0, 100);
  spit(fx.bad, longer, fx.size + 1);
  EXPECT_REFUSED(fx.bad, &fx.meta, "1 bytes of trailing garbage");
  spit(fx.bad, longer, fx.size + 100);
  EXPECT_REFUSED(fx.bad, &fx.meta, "trailing garbage");
  free(longer);

  // Made for another model / width / input size / class count / parameter count.
  ckpt_meta e = fx.meta;
  snprintf(e.model, sizeof(e.model), "vgg11");
  EXPECT_REFUSED(fx.good, &e, "model differs");
  EXPECT_REFUSED(fx.good, &e, "is for model vgg16 width 0.25 at 32x32");
  EXPECT_REFUSED(fx.good, &e, "this run is model vgg11 width 0.25 at 32x32");
  e = fx.meta, e.width = 0.5f;
  EXPECT_REFUSED(fx.good, &e, "width differs");
  e = fx.meta, e.image_size = 64;
  EXPECT_REFUSED(fx.good, &e, "image size differs");
  e = fx.meta, e.classes = 100;
  EXPECT_REFUSED(fx.good, &e, "class count differs");
  e = fx.meta, e.n_params = R_N - 1;
  EXPECT_REFUSED(fx.good, &e, "parameter count differs");
  e = fx.meta, e.n_params = UINT64_MAX / 3; // absurd: refused before any allocation
  EXPECT_REFUSED(fx.good, &e, "absurd");
  // And the good file still reads.
  char err[256];
  EXPECT(checkpoint_read(fx.good, &fx.meta, NULL, NULL, NULL, NULL, err, sizeof(err)) == 0);
  free(fx.bytes);
}

// ---------------------------------------------------------------------------------------
// Atomicity

TEST(checkpoint_survives_interrupted_write) {
  char dir[512], path[600], stale[700];
  make_dir(dir, sizeof(dir), "ckpt_atomic");
  snprintf(path, sizeof(path), "%s/ckpt.bin", dir);
  const size_t n = 1000;
  ckpt_meta meta = sample_meta(n);
  train_state st = sample_state();
  float *p = xmalloc(n * 4), *m = xmalloc(n * 4), *v = xmalloc(n * 4);
  fill_tensor(p, n, 7), fill_tensor(m, n, 8), fill_tensor(v, n, 9);
  checkpoint_write(path, &meta, &st, p, m, v);

  // A child rewrites the same path with a large parameter set and is SIGKILLed midway. To
  // kill it mid-write deterministically, its temp file "<path>.tmp.<pid>" is made a FIFO
  // before it starts: the write blocks once the pipe is full, and we read the first bytes
  // (proof that it writes the temp file, not <path>) before killing it.
  const size_t big_n = 1u << 20; // 4 MiB per tensor, far more than a pipe holds
  int go[2];
  REQUIRE(pipe(go) == 0);
  fflush(stdout), fflush(stderr);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    char c;
    if (read(go[0], &c, 1) != 1) _exit(3);
    float *z = xcalloc(big_n, sizeof(float));
    ckpt_meta big = sample_meta(big_n);
    checkpoint_write(path, &big, &st, z, z, z);
    _exit(0);
  }
  snprintf(stale, sizeof(stale), "%s.tmp.%ld", path, (long)pid);
  int made = mkfifo(stale, 0600) == 0;
  EXPECT(made);
  // O_RDWR: the open never blocks, so a writer that never comes cannot hang the test.
  int fd = made ? open(stale, O_RDWR | O_NONBLOCK) : -1;
  EXPECT(write(go[1], "g", 1) == 1);
  size_t got = 0;
  uint8_t head[16], buf[65536];
  while (fd >= 0 && got < (256u << 10)) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, 5000) <= 0) break; // 5 s without a byte: the child is not writing there
    ssize_t r = read(fd, buf, sizeof(buf));
    if (r <= 0) break;
    if (got < sizeof(head))
      memcpy(head + got, buf, (size_t)r < sizeof(head) - got ? (size_t)r : sizeof(head) - got);
    got += (size_t)r;
  }
  kill(pid, SIGKILL);
  int status;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  EXPECT(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL); // killed, not finished
  EXPECT(got >= (256u << 10));
  EXPECT(got >= 8 && memcmp(head, "VGGCKPT1", 8) == 0);
  if (fd >= 0) close(fd);
  close(go[0]), close(go[1]);

  char err[512] = "";
  train_state st2;
  float *p2 = xmalloc(n * 4);
  int rc = checkpoint_read(path, &meta, &st2, p2, NULL, NULL, err, sizeof(err));
  if (rc) fprintf(stderr, "    %s\n", err);
  EXPECT(rc == 0); // the old checkpoint is intact
  EXPECT(state_equal(&st, &st2));
  EXPECT(memcmp(p, p2, n * 4) == 0);

  // Stale temp files (the FIFO, and a half-written regular one) are no checkpoints: latest
  // ignores them and the next write works beside them.
  unlink(stale);
  size_t good_bytes;
  uint8_t *good = slurp(path, &good_bytes);
  snprintf(stale, sizeof(stale), "%s/ckpt_e0007.bin.tmp.4242", dir);
  spit(stale, good, good_bytes / 2);
  free(good);
  char latest[700];
  EXPECT(checkpoint_latest(dir, latest, sizeof(latest)) == -1);
  st.epoch = 11;
  checkpoint_write(path, &meta, &st, p, m, v);
  EXPECT(checkpoint_read(path, &meta, &st2, NULL, NULL, NULL, err, sizeof(err)) == 0);
  EXPECT_EQ_INT(st2.epoch, 11);
  EXPECT_EQ_INT(count_tmp_files(dir), 1); // only the stale one
  unlink(stale);
  free(p), free(m), free(v), free(p2);
}

// A write that fails (here: the file-size limit, EFBIG) must delete its temp file, abort
// with status 1, and leave the previous checkpoint in place.
TEST(checkpoint_failed_write_cleans_up) {
  char dir[512], path[600];
  make_dir(dir, sizeof(dir), "ckpt_fail");
  snprintf(path, sizeof(path), "%s/ckpt.bin", dir);
  const size_t n = 100, big_n = 100000;
  ckpt_meta meta = sample_meta(n);
  train_state st = sample_state();
  float *p = xcalloc(big_n, sizeof(float));
  fill_tensor(p, n, 12);
  checkpoint_write(path, &meta, &st, p, p, p);
  fflush(stdout), fflush(stderr);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    struct rlimit lim = {64 << 10, 64 << 10};
    if (setrlimit(RLIMIT_FSIZE, &lim) != 0) _exit(3);
    signal(SIGXFSZ, SIG_IGN);
    if (!freopen("/dev/null", "w", stderr)) _exit(4); // the expected FATAL message
    ckpt_meta big = sample_meta(big_n);
    checkpoint_write(path, &big, &st, p, p, p);
    _exit(0);
  }
  int status;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 1);
  EXPECT_EQ_INT(count_tmp_files(dir), 0);
  char err[512] = "";
  train_state st2;
  float *p2 = xmalloc(n * 4);
  EXPECT(checkpoint_read(path, &meta, &st2, p2, NULL, NULL, err, sizeof(err)) == 0);
  EXPECT(memcmp(p, p2, n * 4) == 0);
  free(p), free(p2);
}

// ---------------------------------------------------------------------------------------
// Names, latest, prune

static void touch(const char *dir, const char *name) {
  char path[800];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  spit(path, "x", 1);
}

TEST(checkpoint_path_latest_prune) {
  char out[700], dir[512], want[800];
  checkpoint_path(out, sizeof(out), "runs/a", 3, 0);
  EXPECT(strcmp(out, "runs/a/ckpt_e0003.bin") == 0);
  checkpoint_path(out, sizeof(out), "runs/a", 12, 250);
  EXPECT(strcmp(out, "runs/a/ckpt_e0012_b000250.bin") == 0);

  make_dir(dir, sizeof(dir), "ckpt_dir");
  EXPECT(checkpoint_latest(dir, out, sizeof(out)) == -1); // empty
  snprintf(want, sizeof(want), "%s/missing", dir);
  EXPECT(checkpoint_latest(want, out, sizeof(out)) == -1); // no such directory

  int epochs[] = {1, 2, 2, 3, 10, 9};
  int batches[] = {0, 0, 500, 0, 0, 120};
  for (int i = 0; i < 6; i++) {
    checkpoint_path(out, sizeof(out), dir, epochs[i], batches[i]);
    spit(out, "x", 1);
  }
  touch(dir, "best.bin");
  touch(dir, "ckpt_e0099.bin.tmp.12345"); // an interrupted write: never "latest"
  touch(dir, "ckpt_e0050.binx");
  touch(dir, "ckpt_e.bin");
  touch(dir, "ckpt_e0040_b.bin");
  touch(dir, "notes.txt");
  EXPECT(checkpoint_latest(dir, out, sizeof(out)) == 0);
  snprintf(want, sizeof(want), "%s/ckpt_e0010.bin", dir); // 10 > 9 numerically
  EXPECT(strcmp(out, want) == 0);

  checkpoint_prune(dir, 0); // keeps all
  snprintf(want, sizeof(want), "%s/ckpt_e0001.bin", dir);
  EXPECT(file_exists(want));

  checkpoint_prune(dir, 3); // keeps (10,0), (9,120), (3,0)
  const char *kept[] = {"ckpt_e0010.bin", "ckpt_e0009_b000120.bin",   "ckpt_e0003.bin",
                        "best.bin",       "ckpt_e0099.bin.tmp.12345", "ckpt_e0050.binx",
                        "ckpt_e.bin",     "ckpt_e0040_b.bin",         "notes.txt"};
  const char *gone[] = {"ckpt_e0002_b000500.bin", "ckpt_e0002.bin", "ckpt_e0001.bin"};
  for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++) {
    snprintf(want, sizeof(want), "%s/%s", dir, kept[i]);
    if (!file_exists(want)) test_fail(__FILE__, __LINE__, "prune deleted %s", kept[i]);
  }
  for (size_t i = 0; i < sizeof(gone) / sizeof(gone[0]); i++) {
    snprintf(want, sizeof(want), "%s/%s", dir, gone[i]);
    if (file_exists(want)) test_fail(__FILE__, __LINE__, "prune kept %s", gone[i]);
  }
  checkpoint_prune(dir, 1);
  snprintf(want, sizeof(want), "%s/ckpt_e0003.bin", dir);
  EXPECT(!file_exists(want));
  snprintf(want, sizeof(want), "%s/best.bin", dir);
  EXPECT(file_exists(want));
  EXPECT(checkpoint_latest(dir, out, sizeof(out)) == 0);
  snprintf(want, sizeof(want), "%s/ckpt_e0010.bin", dir);
  EXPECT(strcmp(out, want) == 0);

  // Within one epoch the highest batch is the newest; the epoch-start file is the oldest.
  make_dir(dir, sizeof(dir), "ckpt_dir_batches");
  touch(dir, "ckpt_e0004_b000050.bin");
  touch(dir, "ckpt_e0004.bin");
  touch(dir, "ckpt_e0004_b000300.bin");
  touch(dir, "ckpt_e0003_b000900.bin");
  EXPECT(checkpoint_latest(dir, out, sizeof(out)) == 0);
  snprintf(want, sizeof(want), "%s/ckpt_e0004_b000300.bin", dir);
  EXPECT(strcmp(out, want) == 0);
  checkpoint_prune(dir, 2);
  EXPECT(file_exists(want));
  snprintf(want, sizeof(want), "%s/ckpt_e0004_b000050.bin", dir);
  EXPECT(file_exists(want));
  snprintf(want, sizeof(want), "%s/ckpt_e0004.bin", dir);
  EXPECT(!file_exists(want));
  snprintf(want, sizeof(want), "%s/ckpt_e0003_b000900.bin", dir);
  EXPECT(!file_exists(want));
}

// ---------------------------------------------------------------------------------------
// The RESUMABLE marker

// The marker's whole text ("" when absent).
static void marker_text(char *out, size_t len, const char *dir) {
  char path[800];
  snprintf(path, sizeof(path), "%s/" CKPT_RESUMABLE, dir);
  out[0] = 0;
  if (!file_exists(path)) return;
  size_t bytes;
  uint8_t *b = slurp(path, &bytes);
  snprintf(out, len, "%.*s", (int)bytes, (const char *)b);
  free(b);
}

TEST(checkpoint_resumable_marker) {
  char dir[512], ckpt[700], text[256];
  make_dir(dir, sizeof(dir), "marker_dir");
  EXPECT_EQ_INT(checkpoint_clear_resumable(dir), 0); // none yet: fine
  checkpoint_path(ckpt, sizeof(ckpt), dir, 0, 5);
  checkpoint_mark_resumable(dir, ckpt, "signal 15");
  marker_text(text, sizeof(text), dir);
  EXPECT(strcmp(text, "ckpt_e0000_b000005.bin signal 15\n") == 0);
  EXPECT_EQ_INT(count_tmp_files(dir), 0);
  // A later stop replaces it whole.
  checkpoint_path(ckpt, sizeof(ckpt), dir, 3, 0);
  checkpoint_mark_resumable(dir, ckpt, "max-steps");
  marker_text(text, sizeof(text), dir);
  EXPECT(strcmp(text, "ckpt_e0003.bin max-steps\n") == 0);
  EXPECT_EQ_INT(count_tmp_files(dir), 0);
  // Not a periodic checkpoint: never "latest", never pruned.
  touch(dir, "ckpt_e0001.bin");
  EXPECT(checkpoint_latest(dir, ckpt, sizeof(ckpt)) == 0);
  checkpoint_prune(dir, 1);
  marker_text(text, sizeof(text), dir);
  EXPECT(text[0] != 0);
  EXPECT_EQ_INT(checkpoint_clear_resumable(dir), 1);
  marker_text(text, sizeof(text), dir);
  EXPECT(text[0] == 0);
}
