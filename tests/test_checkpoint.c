// test_checkpoint.c - the checkpoint file: CRC-32, the section table (the run state's, and the
// Python tool's copy of it), bitwise round trip, every refusal (with the caller's buffers
// untouched), version-1 files, atomic replacement under SIGKILL, latest/prune naming.
#include "checkpoint.h"
#include "check.h"
#include "ckpt_writer.h"
#include "run_state.h"
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
#define T_META_BYTES 44
#define T_HEADER_BYTES (16 + T_META_BYTES)
#define T_SEC_HDR 24
#define T_STATE_BYTES 140 // version 1: 116 (no warmup length), 2: 124 (no sample order)
#define T_SECTIONS 6

// A fresh subdirectory of the scratch directory, so tests do not see each other's files.
static void make_dir(char *out, size_t len, const char *name) {
  snprintf(out, len, "%s/%s", test_tmp_dir(), name);
  if (mkdir(out, 0700) != 0 && errno != EEXIST) FATAL("mkdir(%s): %s", out, strerror(errno));
}

static ckpt_meta sample_meta(uint64_t n_params, uint64_t n_buffers) {
  ckpt_meta m;
  memset(&m, 0, sizeof(m));
  snprintf(m.model, sizeof(m.model), "vgg16");
  m.width = 0.25f;
  m.image_size = 32;
  m.classes = 10;
  m.n_params = n_params;
  m.n_buffers = n_buffers;
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
  s.warmup_steps = 9876543210LL;
  s.order = (sample_order){.batch = 256, .val_size = 10000, .train_limit = 0, .train_images = 50000};
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

// A valid mid-run state: epoch 2 (best epoch 1), batch 3 of 10 (300 train images at 32).
static void optim_like_fresh(train_state *s) {
  memset(s, 0, sizeof(*s));
  s->step = 23, s->epoch = 2, s->batch = 3;
  s->epoch_loss_sum = 200, s->epoch_correct = 40, s->epoch_time_s = 1.5;
  s->lr = 1e-3f, s->sched_best = 1.5, s->best_val_loss = 1.5, s->best_val_acc = 0.5;
  s->best_epoch = 1, s->es_bad_epochs = 0, s->seed = 5;
  for (int k = 0; k < 3; k++) s->mean[k] = 0.5f, s->std[k] = 0.25f;
  s->order = (sample_order){.batch = 32, .val_size = 100, .train_limit = 0, .train_images = 400};
}

// A run state of n_params parameters and n_buffers buffers: the sample train_state and
// distinct tensors (salt, salt + 1, ...); the best model differs from the live one.
static void sample_run_state(run_state *rs, uint64_t n_params, uint64_t n_buffers, uint32_t salt) {
  ckpt_meta meta = sample_meta(n_params, n_buffers);
  run_state_init(rs, &meta);
  rs->st = sample_state();
  fill_tensor(rs->live.params, n_params, salt);
  fill_tensor(rs->adam_m, n_params, salt + 1);
  fill_tensor(rs->adam_v, n_params, salt + 2);
  fill_tensor(rs->live.buffers, n_buffers, salt + 3);
  fill_tensor(rs->best.params, n_params, salt + 4);
  fill_tensor(rs->best.buffers, n_buffers, salt + 5);
}

static void write_rs(const char *path, run_state *rs) {
  ckpt_section secs[CKPT_MAX_SECTIONS];
  int n = run_state_sections(rs, RUN_SECTIONS_ALL, secs);
  checkpoint_write(path, secs, n);
}

static int read_rs(const char *path, run_state *rs, run_sections which, char *err, size_t len) {
  ckpt_section secs[CKPT_MAX_SECTIONS];
  int n = run_state_sections(rs, which, secs);
  return checkpoint_read(path, secs, n, err, len);
}

static int state_equal(const train_state *a, const train_state *b) {
#define SAME(f) (memcmp(&a->f, &b->f, sizeof(a->f)) == 0)
  return SAME(step) && SAME(epoch) && SAME(batch) && SAME(epoch_loss_sum) && SAME(epoch_correct) &&
         SAME(epoch_time_s) && SAME(lr) && SAME(sched_best) &&
         SAME(sched_bad_epochs) && SAME(sched_cooldown) && SAME(best_val_loss) &&
         SAME(best_val_acc) && SAME(best_epoch) && SAME(es_bad_epochs) && SAME(seed) &&
         SAME(mean) && SAME(std) && SAME(warmup_steps) && SAME(order);
#undef SAME
}

static int floats_equal(const float *a, const float *b, uint64_t n) {
  return n == 0 || memcmp(a, b, n * sizeof(float)) == 0;
}

// The live state (train_state, model, Adam) of a and b agree bit for bit.
static int live_equal(const run_state *a, const run_state *b) {
  uint64_t P = a->meta.n_params, B = a->meta.n_buffers;
  return state_equal(&a->st, &b->st) && floats_equal(a->live.params, b->live.params, P) &&
         floats_equal(a->adam_m, b->adam_m, P) && floats_equal(a->adam_v, b->adam_v, P) &&
         floats_equal(a->live.buffers, b->live.buffers, B);
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

// ---------------------------------------------------------------------------------------
// The section table

TEST(checkpoint_section_table_follows_the_run_state) {
  run_state rs;
  sample_run_state(&rs, 10, 3, 1);
  ckpt_section all[CKPT_MAX_SECTIONS], model[CKPT_MAX_SECTIONS], best[CKPT_MAX_SECTIONS];
  const int n = run_state_sections(&rs, RUN_SECTIONS_ALL, all);
  REQUIRE(n == T_SECTIONS);
  EXPECT_EQ_INT(run_state_sections(&rs, RUN_SECTIONS_MODEL, model), n);
  EXPECT_EQ_INT(run_state_sections(&rs, RUN_SECTIONS_BEST, best), n);
  const char *names[T_SECTIONS] = {"META", "STATE", "PARAMS", "ADAM_M", "ADAM_V", "BUFFERS"};
  const void *live[T_SECTIONS] = {&rs.meta, &rs.st, rs.live.params, rs.adam_m, rs.adam_v, rs.live.buffers};
  const uint64_t bytes[T_SECTIONS] = {sizeof(ckpt_meta), sizeof(train_state), 40, 40, 40, 12};
  for (int i = 0; i < n; i++) {
    EXPECT_EQ_INT(all[i].id, i + 1);
    EXPECT(strcmp(all[i].name, names[i]) == 0);
    EXPECT(all[i].data == live[i]);
    EXPECT_EQ_INT(all[i].bytes, bytes[i]);
    EXPECT(model[i].id == all[i].id && best[i].id == all[i].id && best[i].bytes == all[i].bytes);
  }
  EXPECT_EQ_INT(all[5].since, 2); // BUFFERS came with version 2
  // The model tables: the model's rows only (META is the expectation a read needs).
  EXPECT(model[0].data == &rs.meta && model[1].data == NULL && model[3].data == NULL &&
         model[4].data == NULL);
  EXPECT(model[2].data == rs.live.params && model[5].data == rs.live.buffers);
  EXPECT(best[2].data == rs.best.params && best[5].data == rs.best.buffers && best[1].data == &rs.best_st);
  // keep_best copies the whole model, parameters and buffers.
  run_state_keep_best(&rs);
  EXPECT(floats_equal(rs.best.params, rs.live.params, 10) && floats_equal(rs.best.buffers, rs.live.buffers, 3));
  run_state_free(&rs);
  run_state_free(&rs); // a freed (zeroed) state frees again
  run_state_free(NULL);
}

// The Python tool's SECTIONS must be the C table: same rows, same order, same kinds.
TEST(checkpoint_section_table_matches_ckpt_tool) {
  static const char *const kinds[] = {[CKPT_KIND_META] = "meta", [CKPT_KIND_STATE] = "state",
                                      [CKPT_KIND_F32] = "f32"};
  run_state rs;
  sample_run_state(&rs, 1, 1, 1);
  ckpt_section secs[CKPT_MAX_SECTIONS];
  const int n = run_state_sections(&rs, RUN_SECTIONS_ALL, secs);
  char want[1024] = "", line[128], cmd[1200], out[1024] = "";
  for (int i = 0; i < n; i++) {
    snprintf(line, sizeof(line), "%u %s %s %u\n", secs[i].id, secs[i].name, kinds[secs[i].kind],
             secs[i].since);
    strncat(want, line, sizeof(want) - strlen(want) - 1);
  }
  const char *src = getenv("VGG_SOURCE_DIR");
  snprintf(cmd, sizeof(cmd), "%s %s/tests/ckpt_tool.py sections", VGG_PY_TORCH, src && *src ? src : ".");
  FILE *p = popen(cmd, "r");
  REQUIRE(p != NULL);
  size_t got = fread(out, 1, sizeof(out) - 1, p);
  out[got] = 0;
  int rc = pclose(p);
  EXPECT_EQ_INT(rc, 0);
  if (strcmp(out, want) != 0)
    test_fail(__FILE__, __LINE__, "ckpt_tool.py's table:\n%sC's table:\n%s", out, want);
  run_state_free(&rs);
}

// The tool reads what C writes: every section, in order, with its size (a version-1 file too);
// with what = "state", the STATE section's fields.
static void tool_run(char *out, size_t len, const char *what, const char *path) {
  char cmd[1400];
  const char *src = getenv("VGG_SOURCE_DIR");
  snprintf(cmd, sizeof(cmd), "%s %s/tests/ckpt_tool.py %s %s", VGG_PY_TORCH, src && *src ? src : ".",
           what, path);
  FILE *p = popen(cmd, "r");
  if (!p) FATAL("popen(%s): %s", cmd, strerror(errno));
  size_t got = fread(out, 1, len - 1, p);
  out[got] = 0;
  if (pclose(p) != 0) test_fail(__FILE__, __LINE__, "'%s' failed", cmd);
}

// ---------------------------------------------------------------------------------------
// Round trip

TEST(checkpoint_round_trip_bitwise) {
  char dir[512], path[600], err[512] = "";
  make_dir(dir, sizeof(dir), "ckpt_rt");
  snprintf(path, sizeof(path), "%s/rt.bin", dir);
  const size_t n = 10007, nb = 33;
  run_state a, b;
  sample_run_state(&a, n, nb, 1);
  write_rs(path, &a);
  EXPECT_EQ_INT(file_size(path), T_HEADER_BYTES + T_SECTIONS * T_SEC_HDR + T_META_BYTES +
                                     T_STATE_BYTES + 3 * 4 * (long)n + 4 * (long)nb);
  EXPECT_EQ_INT(count_tmp_files(dir), 0);
  char info[1024], want[1024];
  tool_run(info, sizeof(info), "info", path);
  snprintf(want, sizeof(want), "version 3\n1 META 44\n2 STATE 140\n3 PARAMS %zu\n4 ADAM_M %zu\n"
           "5 ADAM_V %zu\n6 BUFFERS %zu\n", 4 * n, 4 * n, 4 * n, 4 * nb);
  if (strcmp(info, want) != 0) test_fail(__FILE__, __LINE__, "ckpt_tool.py info:\n%s", info);
  tool_run(info, sizeof(info), "state", path); // the tool's STATE layout is C's
  if (!strstr(info, "step 123456789012\nepoch 7\nbatch 42\n") || !strstr(info, "lr 0.0003000") ||
      !strstr(info, "seed 16045690984503111693\n") || !strstr(info, "\nwarmup_steps 9876543210\n") ||
      !strstr(info, "\norder_batch 256\norder_val_size 10000\norder_train_limit 0\n"
                    "order_train_images 50000\n"))
    test_fail(__FILE__, __LINE__, "ckpt_tool.py state:\n%s", info);

  sample_run_state(&b, n, nb, 100); // everything different
  int rc = read_rs(path, &b, RUN_SECTIONS_ALL, err, sizeof(err));
  if (rc != 0) fprintf(stderr, "    %s\n", err);
  REQUIRE(rc == 0);
  EXPECT(live_equal(&a, &b));
  // The model tables fill the model only: the rest stays as it was.
  run_state_free(&b);
  sample_run_state(&b, n, nb, 100);
  memset(&b.st, 0x5A, sizeof(b.st)); // a MODEL read must leave this as it is
  train_state st_before = b.st;
  EXPECT(read_rs(path, &b, RUN_SECTIONS_MODEL, err, sizeof(err)) == 0);
  EXPECT(floats_equal(a.live.params, b.live.params, n) && floats_equal(a.live.buffers, b.live.buffers, nb));
  EXPECT(memcmp(&b.st, &st_before, sizeof(st_before)) == 0 && !floats_equal(a.adam_m, b.adam_m, n));
  EXPECT(read_rs(path, &b, RUN_SECTIONS_BEST, err, sizeof(err)) == 0);
  EXPECT(floats_equal(a.live.params, b.best.params, n) && floats_equal(a.live.buffers, b.best.buffers, nb));
  // Any row may point nowhere: it is skipped, the others are still filled.
  ckpt_section secs[CKPT_MAX_SECTIONS];
  int ns = run_state_sections(&b, RUN_SECTIONS_ALL, secs);
  for (int i = 1; i < ns; i++)
    if (strcmp(secs[i].name, "ADAM_M") != 0) secs[i].data = NULL;
  EXPECT(checkpoint_read(path, secs, ns, err, sizeof(err)) == 0);
  EXPECT(floats_equal(a.adam_m, b.adam_m, n) && !floats_equal(a.adam_v, b.adam_v, n));

  // Overwriting an existing checkpoint replaces it.
  a.st.epoch = 8;
  fill_tensor(a.live.params, n, 9);
  write_rs(path, &a);
  EXPECT(read_rs(path, &b, RUN_SECTIONS_ALL, err, sizeof(err)) == 0);
  EXPECT_EQ_INT(b.st.epoch, 8);
  EXPECT(live_equal(&a, &b));
  EXPECT_EQ_INT(count_tmp_files(dir), 0);
  run_state_free(&b);
  run_state_free(&a);

  // Zero parameters and zero buffers make a valid (if odd) file.
  sample_run_state(&a, 0, 0, 1);
  sample_run_state(&b, 0, 0, 2);
  snprintf(path, sizeof(path), "%s/rt0.bin", dir);
  write_rs(path, &a);
  EXPECT(read_rs(path, &b, RUN_SECTIONS_ALL, err, sizeof(err)) == 0);
  EXPECT(live_equal(&a, &b));
  run_state_free(&b);
  run_state_free(&a);
}

// ---------------------------------------------------------------------------------------
// Refusals: each case writes a damaged copy and checks -1, the reason, and untouched outputs.

#define R_N 257
#define R_NB 7
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
  run_state rs;
  sample_run_state(&rs, R_N, R_NB, 4);
  fx->meta = rs.meta;
  write_rs(fx->good, &rs);
  run_state_free(&rs);
  fx->bytes = slurp(fx->good, &fx->size);
}

// Every byte of the state a read may fill still holds the 0x5A sentinel.
static int untouched(const run_state *rs) {
  const uint8_t *parts[] = {(const uint8_t *)&rs->st, (const uint8_t *)rs->live.params,
                            (const uint8_t *)rs->adam_m, (const uint8_t *)rs->adam_v,
                            (const uint8_t *)rs->live.buffers};
  const size_t P = rs->meta.n_params * 4, sizes[] = {sizeof(rs->st), P, P, P, rs->meta.n_buffers * 4};
  for (int k = 0; k < 5; k++)
    for (size_t i = 0; i < sizes[k]; i++)
      if (parts[k][i] != 0x5A) return 0;
  return 1;
}

// Reads `path` against `expect` into a sentinel-filled run state; checks it is refused with a
// message containing `want`, and that no output byte changed.
static void expect_refused(const char *path, const ckpt_meta *expect, const char *want,
                           const char *file, int line) {
  run_state rs;
  run_state_init(&rs, expect);
  memset(&rs.st, 0x5A, sizeof(rs.st));
  size_t P = expect->n_params * 4;
  memset(rs.live.params, 0x5A, P), memset(rs.adam_m, 0x5A, P), memset(rs.adam_v, 0x5A, P);
  memset(rs.live.buffers, 0x5A, expect->n_buffers * 4);
  char err[512];
  memset(err, 0, sizeof(err));
  int rc = read_rs(path, &rs, RUN_SECTIONS_ALL, err, sizeof(err));
  if (rc != -1) test_fail(file, line, "read of %s returned %d, expected -1 (%s)", path, rc, want);
  if (!strstr(err, want)) test_fail(file, line, "error \"%s\" does not mention \"%s\"", err, want);
  if (strchr(err, '\n')) test_fail(file, line, "error \"%s\" is not one line", err);
  if (!strstr(err, path)) test_fail(file, line, "error \"%s\" does not name the file", err);
  if (!untouched(&rs)) test_fail(file, line, "refused read of %s modified the outputs", path);
  run_state_free(&rs);
}
#define EXPECT_REFUSED(path, expect, want) expect_refused(path, expect, want, __FILE__, __LINE__)

TEST(checkpoint_refuses_truncated) {
  refusal_fixture fx;
  fixture_init(&fx, "ckpt_trunc");
  size_t sec_meta = T_HEADER_BYTES;                       // META section header
  size_t sec_state = sec_meta + T_SEC_HDR + T_META_BYTES; // STATE section header
  size_t sec_params = sec_state + T_SEC_HDR + T_STATE_BYTES;
  size_t sec_v = sec_params + 2 * (T_SEC_HDR + 4 * R_N);
  size_t sec_buf = sec_v + T_SEC_HDR + 4 * R_N;
  REQUIRE(fx.size == sec_buf + T_SEC_HDR + 4 * R_NB);
  struct {
    size_t cut;
    const char *want;
  } cases[] = {
      {0, "truncated"},                          // empty file
      {5, "truncated"},                          // inside the magic
      {30, "shorter than its 60-byte header"},   // inside the header meta
      {sec_meta + 10, "header of section META"}, // inside a section header
      {sec_state + T_SEC_HDR + 50, "inside section STATE"},
      {sec_params + T_SEC_HDR + 100, "inside section PARAMS"},
      {sec_v, "header of section ADAM_V"}, // exactly at a section boundary
      {sec_v + T_SEC_HDR + 10, "inside section ADAM_V"},
      {sec_buf, "header of section BUFFERS"},
      {fx.size - 1, "inside section BUFFERS"}, // the last byte missing
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
  } secs[T_SECTIONS] = {{"META", T_META_BYTES}, {"STATE", T_STATE_BYTES}, {"PARAMS", 4 * R_N},
                        {"ADAM_M", 4 * R_N},    {"ADAM_V", 4 * R_N},      {"BUFFERS", 4 * R_NB}};
  for (int s = 0; s < T_SECTIONS; s++) {
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
  fx.bytes[16 + 36] ^= 0x01; // header copy of `n_buffers`
  spit(fx.bad, fx.bytes, fx.size);
  EXPECT_REFUSED(fx.bad, &fx.meta, "header meta differs");
  fx.bytes[16 + 36] ^= 0x01;
  // Sanity: the restored bytes are the good file again.
  spit(fx.bad, fx.bytes, fx.size);
  run_state rs;
  run_state_init(&rs, &fx.meta);
  char err[256];
  EXPECT(read_rs(fx.bad, &rs, RUN_SECTIONS_ALL, err, sizeof(err)) == 0);
  run_state_free(&rs);
  free(fx.bytes);
}

// The two reserved u32 of every section header must be zero: a flipped bit there is corruption
// that no CRC covers (the CRC is of the payload), so it is refused, naming the section.
TEST(checkpoint_refuses_nonzero_reserved) {
  refusal_fixture fx;
  fixture_init(&fx, "ckpt_reserved");
  const char *names[T_SECTIONS] = {"META", "STATE", "PARAMS", "ADAM_M", "ADAM_V", "BUFFERS"};
  const size_t payload[T_SECTIONS] = {T_META_BYTES, T_STATE_BYTES, 4 * R_N, 4 * R_N, 4 * R_N,
                                      4 * R_NB};
  size_t off = T_HEADER_BYTES;
  for (int s = 0; s < T_SECTIONS; s++) {
    const size_t fields[2] = {off + 4, off + 20}; // after the id, after the CRC
    const int bits[2] = {0, 31};
    for (int f = 0; f < 2; f++)
      for (int k = 0; k < 2; k++) {
        uint32_t v;
        memcpy(&v, fx.bytes + fields[f], 4);
        REQUIRE(v == 0); // the writer's zero
        v ^= 1u << bits[k];
        memcpy(fx.bytes + fields[f], &v, 4);
        spit(fx.bad, fx.bytes, fx.size);
        char want[80];
        snprintf(want, sizeof(want), "reserved field of section %s", names[s]);
        EXPECT_REFUSED(fx.bad, &fx.meta, want);
        v = 0;
        memcpy(fx.bytes + fields[f], &v, 4);
      }
    off += T_SEC_HDR + payload[s];
  }
  REQUIRE(off == fx.size);
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

  uint32_t versions[2] = {CKPT_VERSION + 1, 0}, current = CKPT_VERSION;
  const char *said[2] = {"version 4, this build reads versions 1 to 3", "version 0"};
  for (int k = 0; k < 2; k++) {
    memcpy(fx.bytes + 8, &versions[k], 4);
    spit(fx.bad, fx.bytes, fx.size);
    EXPECT_REFUSED(fx.bad, &fx.meta, said[k]);
  }
  memcpy(fx.bytes + 8, &current, 4);

  uint32_t count = 4, six = T_SECTIONS;
  memcpy(fx.bytes + 12, &count, 4);
  spit(fx.bad, fx.bytes, fx.size);
  EXPECT_REFUSED(fx.bad, &fx.meta, "4 sections, expected 6");
  memcpy(fx.bytes + 12, &six, 4);

  // Trailing garbage: one byte, and a whole extra section's worth.
  uint8_t *longer = xmalloc(fx.size + 100);
  memcpy(longer, fx.bytes, fx.size);
  memset(longer + fx.size, 0, 100);
  spit(fx.bad, longer, fx.size + 1);
  EXPECT_REFUSED(fx.bad, &fx.meta, "1 bytes of trailing garbage");
  spit(fx.bad, longer, fx.size + 100);
  EXPECT_REFUSED(fx.bad, &fx.meta, "trailing garbage");
  free(longer);

  // Made for another model / width / input size / class count / parameter or buffer count.
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
  e = fx.meta, e.n_buffers = R_NB + 1;
  EXPECT_REFUSED(fx.good, &e, "7 buffers, this run is");
  EXPECT_REFUSED(fx.good, &e, "buffer count differs");
  e = fx.meta, e.n_buffers = 0;
  EXPECT_REFUSED(fx.good, &e, "buffer count differs");

  // An expected size no memory could hold: refused before any allocation.
  run_state rs;
  run_state_init(&rs, &fx.meta);
  ckpt_section secs[CKPT_MAX_SECTIONS];
  int n = run_state_sections(&rs, RUN_SECTIONS_ALL, secs);
  secs[2].data = NULL;
  secs[2].bytes = (UINT64_MAX / 8) * 4; // a multiple of 4 above SIZE_MAX / 4
  char err[512] = "";
  EXPECT(checkpoint_read(fx.good, secs, n, err, sizeof(err)) == -1);
  if (!strstr(err, "absurd")) fprintf(stderr, "    %s\n", err);
  EXPECT(strstr(err, "section PARAMS") && strstr(err, "absurd"));
  // And the good file still reads.
  EXPECT(read_rs(fx.good, &rs, RUN_SECTIONS_ALL, err, sizeof(err)) == 0);
  run_state_free(&rs);
  free(fx.bytes);
}

// ---------------------------------------------------------------------------------------
// Version 1 (no BUFFERS section, no buffer count in the meta): still read for a model without
// buffers, so a run resumes across the upgrade.

// Written by the version-1 writer (checkpoint.c at commit 1e2df49) for vgg11 width 0.125 at
// 32x32, 10 classes, 4 parameters, with the train_state and tensors of v1_expect below.
static const uint8_t ckpt_v1_file[] = {
    0x56, 0x47, 0x47, 0x43, 0x4b, 0x50, 0x54, 0x31, 0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
    0x76, 0x67, 0x67, 0x31, 0x31, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x3e, 0x20, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x24, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x74, 0x9a, 0x46, 0x62, 0x00, 0x00, 0x00, 0x00, 0x76, 0x67, 0x67, 0x31,
    0x31, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3e,
    0x20, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x74, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x59, 0xf8, 0xd1, 0x77, 0x00, 0x00, 0x00, 0x00, 0x0d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x6f, 0x12, 0x83, 0x3a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x40, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x40, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0xc0, 0x3f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x80, 0x3e, 0x00, 0x00, 0x00, 0x3e,
    0x00, 0x00, 0x80, 0x3e, 0x00, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x80, 0x3f, 0x03, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xbe, 0x74, 0xbb, 0x30,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0x3f, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x00, 0x80, 0x3e,
    0x00, 0x00, 0x40, 0x40, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x99, 0xdf, 0xe4, 0xcd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3e,
    0x00, 0x00, 0x00, 0xbf, 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40, 0x05, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x30, 0x06, 0xf3, 0x68,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x3d, 0x00, 0x00, 0x80, 0x3e, 0x00, 0x00, 0x80, 0x40,
    0x00, 0x00, 0x00, 0x41,
};

// warmup_steps stays 0: a version-1 file predates the warmup (the reader's default).
static void v1_expect(run_state *rs) {
  train_state *s = &rs->st;
  s->step = 13, s->epoch = 1, s->lr = 1e-3f, s->sched_best = 2.25, s->best_val_loss = 2.25;
  s->best_val_acc = 0.125, s->best_epoch = 0, s->seed = 5;
  s->mean[0] = 0.5f, s->mean[1] = 0.25f, s->mean[2] = 0.125f;
  s->std[0] = 0.25f, s->std[1] = 0.5f, s->std[2] = 1.0f;
  const float p[4] = {1.5f, -2.0f, 0.25f, 3.0f}, m[4] = {0.125f, -0.5f, 1.0f, 2.0f},
              v[4] = {0.0625f, 0.25f, 4.0f, 8.0f};
  memcpy(rs->live.params, p, sizeof(p));
  memcpy(rs->adam_m, m, sizeof(m));
  memcpy(rs->adam_v, v, sizeof(v));
}

static ckpt_meta v1_meta(uint64_t n_buffers) {
  ckpt_meta meta;
  memset(&meta, 0, sizeof(meta));
  snprintf(meta.model, sizeof(meta.model), "vgg11");
  meta.width = 0.125f;
  meta.image_size = 32;
  meta.classes = 10;
  meta.n_params = 4;
  meta.n_buffers = n_buffers;
  return meta;
}

TEST(checkpoint_reads_version_1) {
  char dir[512], path[600], err[512] = "";
  make_dir(dir, sizeof(dir), "ckpt_v1");
  snprintf(path, sizeof(path), "%s/ckpt_e0001.bin", dir);
  spit(path, ckpt_v1_file, sizeof(ckpt_v1_file));
  ckpt_meta meta = v1_meta(0);
  run_state want, got;
  run_state_init(&want, &meta);
  v1_expect(&want);
  run_state_init(&got, &meta);
  memset(&got.st, 0x5A, sizeof(got.st));
  ckpt_section secs[CKPT_MAX_SECTIONS];
  uint32_t version = 0;
  int rc = checkpoint_read_version(path, secs, run_state_sections(&got, RUN_SECTIONS_ALL, secs),
                                   err, sizeof(err), &version);
  if (rc) fprintf(stderr, "    %s\n", err);
  EXPECT(rc == 0);
  EXPECT_EQ_INT(version, 1);
  EXPECT(live_equal(&want, &got)); // the sample order unknown: all 0
  EXPECT(read_rs(path, &got, RUN_SECTIONS_BEST, err, sizeof(err)) == 0); // best.bin of version 1
  EXPECT(floats_equal(got.best.params, want.live.params, 4));
  char info[512];
  tool_run(info, sizeof(info), "info", path);
  EXPECT(strcmp(info, "version 1\n1 META 36\n2 STATE 116\n3 PARAMS 16\n4 ADAM_M 16\n5 ADAM_V 16\n") == 0);
  tool_run(info, sizeof(info), "state", path);
  EXPECT(strstr(info, "step 13\nepoch 1\n") && strstr(info, "\nwarmup_steps 0\n"));
  run_state_free(&got);
  run_state_free(&want);

  // A model with buffers cannot take a file without them.
  meta = v1_meta(3);
  EXPECT_REFUSED(path, &meta, "0 buffers, this run is");
  EXPECT_REFUSED(path, &meta, "buffer count differs");
  // A version-1 file has version 1's sections, no more, no fewer.
  meta = v1_meta(0);
  uint8_t *bytes = xmalloc(sizeof(ckpt_v1_file));
  memcpy(bytes, ckpt_v1_file, sizeof(ckpt_v1_file));
  uint32_t six = 6;
  memcpy(bytes + 12, &six, 4);
  spit(path, bytes, sizeof(ckpt_v1_file));
  EXPECT_REFUSED(path, &meta, "6 sections, expected 5");
  free(bytes);
}

// A version-2 file (this build's, its STATE cut before the sample order, CRC and version
// redone) reads with its warmup and an unknown (all 0) sample order, and says it is version 2.
TEST(checkpoint_reads_version_2) {
  refusal_fixture fx;
  fixture_init(&fx, "ckpt_v2");
  const size_t state_hdr = T_HEADER_BYTES + T_SEC_HDR + T_META_BYTES, cut = 16;
  uint8_t *v2 = xmalloc(fx.size - cut);
  memcpy(v2, fx.bytes, state_hdr + T_SEC_HDR + T_STATE_BYTES - cut);
  memcpy(v2 + state_hdr + T_SEC_HDR + T_STATE_BYTES - cut,
         fx.bytes + state_hdr + T_SEC_HDR + T_STATE_BYTES, fx.size - (state_hdr + T_SEC_HDR + T_STATE_BYTES));
  const uint32_t two = 2, crc = checkpoint_crc32(0, v2 + state_hdr + T_SEC_HDR, T_STATE_BYTES - cut);
  const uint64_t bytes = T_STATE_BYTES - cut;
  memcpy(v2 + 8, &two, 4);
  memcpy(v2 + state_hdr + 8, &bytes, 8);
  memcpy(v2 + state_hdr + 16, &crc, 4);
  spit(fx.bad, v2, fx.size - cut);
  run_state rs;
  run_state_init(&rs, &fx.meta);
  memset(&rs.st, 0x5A, sizeof(rs.st));
  ckpt_section secs[CKPT_MAX_SECTIONS];
  char err[512] = "";
  uint32_t version = 0;
  const int n = run_state_sections(&rs, RUN_SECTIONS_ALL, secs);
  EXPECT(checkpoint_read_version(fx.bad, secs, n, err, sizeof(err), &version) == 0);
  EXPECT_EQ_INT(version, 2);
  train_state want = sample_state();
  want.order = (sample_order){0};
  EXPECT(state_equal(&rs.st, &want));
  run_state_free(&rs);
  free(v2);
  free(fx.bytes);
}

// run_state_check_resume on the tensors (the STATE fields have their table in
// tests/test_faults.sh, through the binary) and run_state_check_best on best.bin's state.
static void valid_state(run_state *rs) {
  ckpt_meta meta = sample_meta(8, 2);
  run_state_init(rs, &meta);
  optim_like_fresh(&rs->st);
  for (int i = 0; i < 8; i++) rs->live.params[i] = 0.5f * i, rs->adam_m[i] = 0.1f, rs->adam_v[i] = 0.01f;
  rs->live.buffers[0] = rs->live.buffers[1] = 1.0f;
}

TEST(run_state_checks_tensors_and_best) {
  const sample_order now = {.batch = 32, .val_size = 100, .train_limit = 0, .train_images = 400};
  char note[256], err[256];
  run_state rs;
  valid_state(&rs);
  EXPECT(run_state_check_resume(&rs, CKPT_VERSION, &now, note, sizeof(note), err, sizeof(err)) == 0);
  struct {
    float *at;
    float value;
    const char *want;
  } cases[] = {{&rs.live.params[3], NAN, "live model PARAMS[3] = nan"},
               {&rs.live.buffers[1], INFINITY, "live model BUFFERS[1] = inf"},
               {&rs.adam_m[7], -INFINITY, "ADAM_M[7] = -inf"},
               {&rs.adam_v[2], -0.25f, "ADAM_V[2] = -0.25"}};
  for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
    const float keep = *cases[k].at;
    *cases[k].at = cases[k].value;
    EXPECT(run_state_check_resume(&rs, CKPT_VERSION, &now, note, sizeof(note), err, sizeof(err)) == -1);
    if (!strstr(err, cases[k].want)) test_fail(__FILE__, __LINE__, "\"%s\" lacks \"%s\"", err, cases[k].want);
    *cases[k].at = keep;
  }
  // Before the first step Adam's moments are zero.
  rs.st.step = rs.st.epoch = rs.st.batch = 0, rs.st.best_epoch = -1, rs.st.best_val_loss = INFINITY;
  rs.st.es_bad_epochs = rs.st.sched_bad_epochs = 0;
  rs.st.epoch_loss_sum = rs.st.epoch_correct = rs.st.epoch_time_s = 0;
  EXPECT(run_state_check_resume(&rs, CKPT_VERSION, &now, note, sizeof(note), err, sizeof(err)) == -1);
  EXPECT(strstr(err, "not 0 at step 0") != NULL);
  run_state_free(&rs);

  // best.bin: this run's best epoch (written at its end, same loss), finite.
  valid_state(&rs);
  rs.best_st = rs.st;
  rs.best_st.epoch = rs.st.best_epoch + 1;
  run_state_keep_best(&rs);
  EXPECT(run_state_check_best(&rs, err, sizeof(err)) == 0);
  rs.best_st.best_epoch--, rs.best_st.epoch--; // an older best's
  EXPECT(run_state_check_best(&rs, err, sizeof(err)) == -1 && strstr(err, "the resumed run's best"));
  rs.best_st.best_epoch++, rs.best_st.epoch++;
  rs.best_st.best_val_loss += 1e-9; // another run's
  EXPECT(run_state_check_best(&rs, err, sizeof(err)) == -1);
  rs.best_st.best_val_loss = rs.st.best_val_loss;
  rs.best.params[0] = NAN;
  EXPECT(run_state_check_best(&rs, err, sizeof(err)) == -1 && strstr(err, "best model PARAMS[0] = nan"));
  run_state_free(&rs);
}

// ---------------------------------------------------------------------------------------
// Atomicity

TEST(checkpoint_survives_interrupted_write) {
  char dir[512], path[600], stale[700];
  make_dir(dir, sizeof(dir), "ckpt_atomic");
  snprintf(path, sizeof(path), "%s/ckpt.bin", dir);
  const size_t n = 1000;
  run_state rs;
  sample_run_state(&rs, n, 5, 7);
  write_rs(path, &rs);

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
    run_state big;
    sample_run_state(&big, big_n, 5, 1);
    write_rs(path, &big);
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
  run_state back;
  sample_run_state(&back, n, 5, 50);
  int rc = read_rs(path, &back, RUN_SECTIONS_ALL, err, sizeof(err));
  if (rc) fprintf(stderr, "    %s\n", err);
  EXPECT(rc == 0); // the old checkpoint is intact
  EXPECT(live_equal(&rs, &back));

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
  rs.st.epoch = 11;
  write_rs(path, &rs);
  EXPECT(read_rs(path, &back, RUN_SECTIONS_ALL, err, sizeof(err)) == 0);
  EXPECT_EQ_INT(back.st.epoch, 11);
  EXPECT_EQ_INT(count_tmp_files(dir), 1); // only the stale one
  unlink(stale);
  run_state_free(&back);
  run_state_free(&rs);
}

// A write that fails (here: the file-size limit, EFBIG) must delete its temp file, abort
// with status 1, and leave the previous checkpoint in place.
TEST(checkpoint_failed_write_cleans_up) {
  char dir[512], path[600];
  make_dir(dir, sizeof(dir), "ckpt_fail");
  snprintf(path, sizeof(path), "%s/ckpt.bin", dir);
  const size_t n = 100, big_n = 100000;
  run_state rs;
  sample_run_state(&rs, n, 3, 12);
  write_rs(path, &rs);
  fflush(stdout), fflush(stderr);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    struct rlimit lim = {64 << 10, 64 << 10};
    if (setrlimit(RLIMIT_FSIZE, &lim) != 0) _exit(3);
    signal(SIGXFSZ, SIG_IGN);
    if (!freopen("/dev/null", "w", stderr)) _exit(4); // the expected FATAL message
    run_state big;
    sample_run_state(&big, big_n, 3, 1);
    write_rs(path, &big);
    _exit(0);
  }
  int status;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 1);
  EXPECT_EQ_INT(count_tmp_files(dir), 0);
  char err[512] = "";
  run_state back;
  sample_run_state(&back, n, 3, 40);
  EXPECT(read_rs(path, &back, RUN_SECTIONS_ALL, err, sizeof(err)) == 0);
  EXPECT(live_equal(&rs, &back));
  run_state_free(&back);
  run_state_free(&rs);
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

// (inode, link count) of path.
static void inode_of(const char *path, ino_t *ino, nlink_t *links) {
  struct stat sb;
  if (stat(path, &sb) != 0) FATAL("stat(%s): %s", path, strerror(errno));
  *ino = sb.st_ino;
  *links = sb.st_nlink;
}

// Whether files a and b hold the same bytes.
static int files_same_bytes(const char *a, const char *b) {
  size_t na, nb;
  uint8_t *x = slurp(a, &na), *y = slurp(b, &nb);
  int same = na == nb && memcmp(x, y, na) == 0;
  free(x);
  free(y);
  return same;
}

// A fresh directory `name` and the paths of its epoch checkpoints 1..n (e[0..n-1]) and best.bin.
static void ckpt_dir_paths(char *dir, size_t len, const char *name, char (*e)[600], int n,
                           char best[600]) {
  make_dir(dir, len, name);
  for (int i = 0; i < n; i++) snprintf(e[i], 600, "%s/ckpt_e%04d.bin", dir, i + 1);
  checkpoint_best_path(best, 600, dir);
}

// best.bin as a hard link to the epoch's checkpoint: one file, two names; a newer best moves
// the name; pruning the periodic name leaves best.bin whole and readable.
TEST(checkpoint_link_shares_the_file) {
  char dir[512], e[3][600], best[600], err[512] = "";
  ckpt_dir_paths(dir, sizeof(dir), "ckpt_link", e, 3, best);
  run_state a, b;
  sample_run_state(&a, 1001, 7, 1);
  sample_run_state(&b, 1001, 7, 50);
  ino_t ib, ie;
  nlink_t lb, le;
  write_rs(e[0], &a);
  EXPECT(checkpoint_link(e[0], best) == 1);
  inode_of(best, &ib, &lb);
  inode_of(e[0], &ie, &le);
  EXPECT(ib == ie && lb == 2);
  EXPECT(checkpoint_link(e[0], best) == 1); // already the same file: nothing changes, no temp left
  inode_of(best, &ib, &lb);
  EXPECT(ib == ie && lb == 2);
  a.st.epoch = 2;
  fill_tensor(a.live.params, 1001, 77);
  write_rs(e[1], &a);
  EXPECT(checkpoint_link(e[1], best) == 1); // a newer best replaces the name, not the old file
  inode_of(best, &ib, &lb);
  inode_of(e[1], &ie, &le);
  EXPECT(ib == ie && lb == 2);
  inode_of(e[0], &ie, &le);
  EXPECT(le == 1);
  write_rs(e[2], &b);
  checkpoint_prune(dir, 1); // deletes ckpt_e0002.bin's name: best.bin keeps its data
  EXPECT(!file_exists(e[1]) && file_exists(e[2]));
  inode_of(best, &ib, &lb);
  EXPECT(lb == 1);
  EXPECT(read_rs(best, &b, RUN_SECTIONS_ALL, err, sizeof(err)) == 0);
  EXPECT(live_equal(&a, &b));
  EXPECT_EQ_INT(count_tmp_files(dir), 0);
  run_state_free(&a);
  run_state_free(&b);
}

// What the background writer holds: the snapshot, filled by its owner (as train.c downloads into
// it), allocated zeroed and without a best model.
static void snapshot_fill(ckpt_writer *w, const run_state *rs) {
  run_state *snap = ckpt_writer_snapshot(w);
  const size_t P = rs->meta.n_params * sizeof(float), B = rs->meta.n_buffers * sizeof(float);
  snap->st = rs->st;
  memcpy(snap->live.params, rs->live.params, P);
  memcpy(snap->live.buffers, rs->live.buffers, B);
  memcpy(snap->adam_m, rs->adam_m, P);
  memcpy(snap->adam_v, rs->adam_v, P);
}

static void snapshot_while_writing(void *arg) { ckpt_writer_snapshot(arg); }

// The background writer writes its snapshot (a whole checkpoint: its meta is the run's), links
// best.bin to it, prunes after the link (--keep), and refuses to hand out its snapshot while
// it writes it.
TEST(ckpt_writer_writes_the_snapshot) {
  char dir[512], e[2][600], best[600], err[512] = "", why[512];
  ckpt_dir_paths(dir, sizeof(dir), "ckpt_writer", e, 2, best);
  run_state rs, got;
  sample_run_state(&rs, 100003, 7, 3);
  sample_run_state(&got, 100003, 7, 90);
  ckpt_writer *w = ckpt_writer_create(&rs.meta);
  const run_state *snap = ckpt_writer_snapshot(w);
  EXPECT(snap->best.params == NULL && snap->adam_v[100002] == 0 && snap->live.buffers[6] == 0);
  EXPECT(ckpt_writer_poll(w) == CKPT_WRITER_IDLE);
  snapshot_fill(w, &rs);
  ckpt_writer_start(w, e[0], dir, 1, 1);
  // A second write, or a refill of the snapshot, while this one is in flight is a bug: fatal.
  EXPECT_EQ_INT(test_in_child(snapshot_while_writing, w, why, sizeof(why)), 1);
  EXPECT(strstr(why, "a write is in flight") != NULL);
  EXPECT_EQ_INT(ckpt_writer_join(w), 0);
  EXPECT(ckpt_writer_poll(w) == CKPT_WRITER_IDLE);
  EXPECT_EQ_INT(ckpt_writer_join(w), 0); // nothing in flight: nothing to wait for
  EXPECT(read_rs(e[0], &got, RUN_SECTIONS_ALL, err, sizeof(err)) == 0);
  EXPECT(live_equal(&got, &rs));
  ino_t ib, ie;
  nlink_t lb, le;
  inode_of(best, &ib, &lb);
  inode_of(e[0], &ie, &le);
  EXPECT(ib == ie && lb == 2);
  // The second write (not best) prunes the first's name (--keep 1): best.bin keeps its data.
  run_state first;
  sample_run_state(&first, 100003, 7, 3);
  rs.st.step++;
  fill_tensor(rs.adam_m, 100003, 41);
  snapshot_fill(w, &rs);
  ckpt_writer_start(w, e[1], dir, 0, 1);
  EXPECT_EQ_INT(ckpt_writer_join(w), 0);
  EXPECT(!file_exists(e[0]) && file_exists(e[1]));
  EXPECT(read_rs(best, &got, RUN_SECTIONS_ALL, err, sizeof(err)) == 0);
  EXPECT(live_equal(&got, &first));
  EXPECT(read_rs(e[1], &got, RUN_SECTIONS_ALL, err, sizeof(err)) == 0);
  EXPECT(live_equal(&got, &rs));
  EXPECT_EQ_INT(count_tmp_files(dir), 0);
  ckpt_writer_free(w);
  run_state_free(&first);
  run_state_free(&got);
  run_state_free(&rs);
}

// A write that fails in the background (a full file system: the temp file is /dev/full) does
// not end the process: the writer records the line the error would have printed (rank,
// file:line, the message), poll sees it without waiting, join returns it, and nothing is left
// behind; the writer then writes again.
TEST(ckpt_writer_failure_is_recorded) {
  char dir[512], path[600], tmp[700], err[512] = "";
  make_dir(dir, sizeof(dir), "ckpt_writer_full");
  snprintf(path, sizeof(path), "%s/ckpt_e0001.bin", dir);
  snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
  if (symlink("/dev/full", tmp) != 0) FATAL("symlink(/dev/full, %s): %s", tmp, strerror(errno));
  run_state rs, got;
  sample_run_state(&rs, 100003, 7, 5);
  sample_run_state(&got, 100003, 7, 60);
  ckpt_writer *w = ckpt_writer_create(&rs.meta);
  snapshot_fill(w, &rs);
  ckpt_writer_start(w, path, dir, 1, 0);
  ckpt_writer_state st = CKPT_WRITER_BUSY;
  for (int i = 0; i < 2000 && (st = ckpt_writer_poll(w)) == CKPT_WRITER_BUSY; i++) usleep(5000);
  EXPECT(st == CKPT_WRITER_FAILED);
  EXPECT_EQ_INT(ckpt_writer_join(w), -1);
  const char *line = ckpt_writer_error(w);
  EXPECT(strstr(line, "vgg_dist: error [rank ") == line);
  EXPECT(strstr(line, "src/checkpoint.c:") != NULL);
  EXPECT(strstr(line, "No space left on device") != NULL);
  EXPECT(strchr(line, '\n') == NULL);
  EXPECT(!file_exists(path) && !file_exists(tmp) && count_tmp_files(dir) == 0);
  char best[600];
  checkpoint_best_path(best, sizeof(best), dir);
  EXPECT(!file_exists(best)); // the link comes after a write that succeeded, never before
  EXPECT(ckpt_writer_poll(w) == CKPT_WRITER_IDLE);
  ckpt_writer_start(w, path, dir, 1, 0); // the symlink is gone: this one succeeds
  EXPECT_EQ_INT(ckpt_writer_join(w), 0);
  EXPECT(read_rs(path, &got, RUN_SECTIONS_ALL, err, sizeof(err)) == 0);
  EXPECT(live_equal(&got, &rs));
  ckpt_writer_free(w);
  run_state_free(&got);
  run_state_free(&rs);
}

// Across file systems (tmpfs /dev/shm to the scratch directory) link() fails with EXDEV and
// the file is copied: the same bytes under a new inode, atomically, no temp file left.
TEST(checkpoint_link_copies_across_file_systems) {
  char dir[512], src[600], best[600];
  make_dir(dir, sizeof(dir), "ckpt_link_copy");
  snprintf(src, sizeof(src), "/dev/shm/vgg_link_src.%ld", (long)getpid());
  checkpoint_best_path(best, sizeof(best), dir);
  struct stat sd, ss;
  if (stat("/dev/shm", &ss) != 0 || stat(dir, &sd) != 0 || ss.st_dev == sd.st_dev) {
    test_skip("no /dev/shm on another file system (the copy across file systems)");
    return;
  }
  run_state a;
  sample_run_state(&a, 513, 3, 9);
  write_rs(src, &a);
  spit(best, "old", 3);
  EXPECT(checkpoint_link(src, best) == 0);
  ino_t ib, is;
  nlink_t lb, ls;
  inode_of(best, &ib, &lb);
  inode_of(src, &is, &ls);
  EXPECT(lb == 1 && ls == 1);
  EXPECT(files_same_bytes(src, best));
  EXPECT_EQ_INT(count_tmp_files(dir), 0);
  if (unlink(src) != 0) FATAL("unlink(%s): %s", src, strerror(errno));
  run_state_free(&a);
}

static void dir_create_child(void *dir) { checkpoint_dir_create(dir); }

// A pid no process has: a child that has exited and been reaped.
static long dead_pid(void) {
  pid_t pid = fork();
  if (pid < 0) FATAL("fork: %s", strerror(errno));
  if (pid == 0) _exit(0);
  int status;
  if (waitpid(pid, &status, 0) != pid) FATAL("waitpid: %s", strerror(errno));
  return (long)pid;
}

static int removed_count;
static void count_removed(const char *path, long pid) {
  (void)path, (void)pid;
  removed_count++;
}

// Only "<checkpoint name>.tmp.<pid of no process>" regular files go; near misses, live writers'
// files, directories and the checkpoints themselves stay.
TEST(checkpoint_removes_stale_tmp_only) {
  char dir[512], name[128], path[800];
  make_dir(dir, sizeof(dir), "ckpt_stale");
  const long dead = dead_pid(), live = (long)getppid(); // the parent outlives this test
  const char *stale[] = {"best.bin.tmp.%ld", "ckpt_e0003.bin.tmp.%ld",
                         "ckpt_e0001_b000005.bin.tmp.%ld", "RESUMABLE.tmp.%ld"};
  const char *kept[] = {"best.bin.tmp.%ldx", "best.bin.tmp.x%ld", "best.bin.tmp.%ld.bak",
                        "best.bin.tmp%ld", "xbest.bin.tmp.%ld", "notes.txt.tmp.%ld",
                        "ckpt_e0003.binx.tmp.%ld", "best.bin.tmp.", "best.bin.tmp.0",
                        "best.bin.tmp.-%ld", "best.bin", "ckpt_e0003.bin"};
  const int n_stale = sizeof(stale) / sizeof(stale[0]), n_kept = sizeof(kept) / sizeof(kept[0]);
  for (int i = 0; i < n_stale; i++) {
    snprintf(name, sizeof(name), stale[i], dead);
    touch(dir, name);
  }
  for (int i = 0; i < n_kept; i++) {
    snprintf(name, sizeof(name), kept[i], dead);
    touch(dir, name);
  }
  snprintf(name, sizeof(name), "best.bin.tmp.%ld", live); // a live writer's
  touch(dir, name);
  snprintf(path, sizeof(path), "%s/ckpt_e0004.bin.tmp.%ld", dir, dead); // a directory
  REQUIRE(mkdir(path, 0700) == 0);
  snprintf(path, sizeof(path), "%s/ckpt_e0005.bin.tmp.%ld", dir, dead); // a link
  REQUIRE(symlink("best.bin", path) == 0);

  removed_count = 0;
  EXPECT_EQ_INT(checkpoint_remove_stale_tmp(dir, count_removed), n_stale);
  EXPECT_EQ_INT(removed_count, n_stale);
  for (int i = 0; i < n_stale; i++) {
    snprintf(path, sizeof(path), "%s/", dir);
    snprintf(path + strlen(path), sizeof(path) - strlen(path), stale[i], dead);
    EXPECT(!file_exists(path));
  }
  for (int i = 0; i < n_kept; i++) {
    snprintf(path, sizeof(path), "%s/", dir);
    snprintf(path + strlen(path), sizeof(path) - strlen(path), kept[i], dead);
    if (!file_exists(path)) test_fail(__FILE__, __LINE__, "%s was removed", path);
  }
  snprintf(path, sizeof(path), "%s/best.bin.tmp.%ld", dir, live);
  EXPECT(file_exists(path));
  snprintf(path, sizeof(path), "%s/ckpt_e0004.bin.tmp.%ld", dir, dead);
  EXPECT(file_exists(path));
  struct stat sb;
  snprintf(path, sizeof(path), "%s/ckpt_e0005.bin.tmp.%ld", dir, dead);
  EXPECT(lstat(path, &sb) == 0);
  // Our own pid: a file of an earlier process that had it, since this one has written nothing.
  snprintf(name, sizeof(name), "best.bin.tmp.%ld", (long)getpid());
  touch(dir, name);
  EXPECT_EQ_INT(checkpoint_remove_stale_tmp(dir, NULL), 1);
  EXPECT_EQ_INT(checkpoint_remove_stale_tmp(dir, NULL), 0);
}

TEST(checkpoint_dir_create_is_mkdir_p) {
  char dir[512], path[700], best[800], err[512];
  make_dir(dir, sizeof(dir), "ckpt_mkdir");
  snprintf(path, sizeof(path), "%s/a/b/c", dir);
  checkpoint_dir_create(path);
  struct stat sb;
  EXPECT(stat(path, &sb) == 0 && S_ISDIR(sb.st_mode));
  checkpoint_dir_create(path); // it exists: fine
  checkpoint_best_path(best, sizeof(best), path);
  EXPECT(strncmp(best, path, strlen(path)) == 0 && strcmp(best + strlen(path), "/best.bin") == 0);
  // A file where a directory should be: one line, exit status 2 (a usage error).
  touch(dir, "file");
  snprintf(path, sizeof(path), "%s/file/sub", dir);
  EXPECT_EQ_INT(test_in_child(dir_create_child, path, err, sizeof(err)), 2);
  EXPECT(strstr(err, "--checkpoint-dir: cannot create") != NULL);
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
