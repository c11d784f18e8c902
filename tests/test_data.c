// test_data.c - tests of the CIFAR-10 pipeline: the reader and its errors, the split, epoch
// order and sharding, flip decisions, the bilinear resize against PyTorch, normalisation,
// and the real subset (when present). Bad files end the process by design, so those cases run
// the loader in a forked child and check its exit status and the message it printed.
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "cifar10.h"
#include "cifar_gen.h"
#include "cpu/cpu_backend.h"
#include "rng.h"
#include "test.h"

// ----------------------------------------------------------------------------------------
// helpers

static const char *tmp_path(char *buf, size_t cap, const char *name) {
  snprintf(buf, cap, "%s/%s", test_tmp_dir(), name);
  return buf;
}

// A fresh generated data directory under the scratch dir (per_file train records per file).
static const char *gen_dir(char *buf, size_t cap, const char *name, int per_file, int n_test,
                           uint64_t seed) {
  tmp_path(buf, cap, name);
  cifar_gen_write_dir(buf, per_file, n_test, seed);
  return buf;
}

static void write_bytes(const char *path, const uint8_t *p, size_t n) {
  FILE *f = xfopen(path, "wb");
  xfwrite(p, n, f, path);
  xfclose(f, path);
}

// A load run in a child by test_in_child (bad files end the process by design).
// mode 0: cifar10_load_file(arg); 1: cifar10_load(arg, train); 2: cifar10_load(arg, test);
// 3: cifar10_read_classes(arg). limit as the loaders take it (0: all).
typedef struct load_job {
  const char *arg;
  int mode, limit;
} load_job;

static void load_in_child(void *p) {
  const load_job *job = p;
  // The child must exit by itself, never through an MPI abort hook another test installed.
  check_set_abort_hook(NULL);
  cifar10 d = {0};
  if (job->mode == 0) cifar10_load_file(&d, job->arg, job->limit);
  else if (job->mode == 3) cifar10_read_classes(d.classes, job->arg);
  else cifar10_load(&d, job->arg, job->mode == 1, job->limit);
  cifar10_free(&d);
}

// Returns the child's exit status (0 if the load returned) and its stderr in msg.
static int child_load_limit(const char *arg, int mode, int limit, char *msg, size_t cap) {
  load_job job = {arg, mode, limit};
  return test_in_child(load_in_child, &job, msg, cap);
}

static int child_load(const char *arg, int mode, char *msg, size_t cap) {
  return child_load_limit(arg, mode, 0, msg, cap);
}

// Overwrites the label byte of one record of a file in place.
static void set_label(const char *path, long record, uint8_t label) {
  FILE *f = xfopen(path, "r+b");
  CHECK_ZERO(fseek(f, record * CIFAR_RECORD, SEEK_SET));
  xfwrite(&label, 1, f, path);
  xfclose(f, path);
}

static int count_lines(const char *s) {
  int n = 0;
  for (; *s; s++) n += *s == '\n';
  return n;
}

// ----------------------------------------------------------------------------------------
// reader

TEST(data_load_generated) {
  char dir[512];
  gen_dir(dir, sizeof(dir), "gen_a", 20, 30, 7);
  cifar10 tr, te;
  cifar10_load(&tr, dir, 1, 0);
  cifar10_load(&te, dir, 0, 0);
  REQUIRE(tr.n == 100);
  REQUIRE(te.n == 30);
  // Sample id = index in the concatenation of data_batch_1..5, in file order.
  uint8_t img[CIFAR_PIXELS];
  int bad = 0;
  for (int id = 0; id < tr.n; id++) {
    int file = 1 + id / 20, rec = id % 20;
    int label = cifar_gen_label(7, file, rec);
    cifar_gen_image(img, label, 7, file, rec);
    bad += tr.labels[id] != label || memcmp(img, tr.images + (size_t)id * CIFAR_PIXELS, CIFAR_PIXELS);
  }
  for (int id = 0; id < te.n; id++) {
    int label = cifar_gen_label(7, 0, id);
    cifar_gen_image(img, label, 7, 0, id);
    bad += te.labels[id] != label || memcmp(img, te.images + (size_t)id * CIFAR_PIXELS, CIFAR_PIXELS);
  }
  EXPECT_EQ_INT(bad, 0);
  // Every class occurs in the generated labels (the generator is usable for learning tests).
  int seen[CIFAR_CLASSES] = {0};
  for (int i = 0; i < tr.n; i++) seen[tr.labels[i]]++;
  for (int c = 0; c < CIFAR_CLASSES; c++) EXPECT(seen[c] > 0);
  cifar10_free(&tr);
  cifar10_free(&te);
  EXPECT(tr.n == 0 && tr.images == NULL);
  cifar10_free(NULL);
}

TEST(data_load_limit) {
  char dir[512];
  gen_dir(dir, sizeof(dir), "gen_limit", 20, 10, 3);
  cifar10 all, part, big;
  cifar10_load(&all, dir, 1, 0);
  cifar10_load(&part, dir, 1, 45); // crosses into data_batch_3
  cifar10_load(&big, dir, 1, 1000);
  REQUIRE(all.n == 100);
  EXPECT_EQ_INT(part.n, 45);
  EXPECT_EQ_INT(big.n, 100);
  EXPECT(memcmp(part.images, all.images, (size_t)45 * CIFAR_PIXELS) == 0);
  EXPECT(memcmp(part.labels, all.labels, 45) == 0);
  cifar10_free(&all);
  cifar10_free(&part);
  cifar10_free(&big);

  // load_file appends to what is already there.
  char p[600];
  cifar10 acc = {0};
  snprintf(p, sizeof(p), "%s/data_batch_1.bin", dir);
  cifar10_load_file(&acc, p, 5);
  cifar10_load_file(&acc, p, 0);
  EXPECT_EQ_INT(acc.n, 25);
  EXPECT(memcmp(acc.images, acc.images + (size_t)5 * CIFAR_PIXELS, (size_t)5 * CIFAR_PIXELS) == 0);
  cifar10_free(&acc);
}

TEST(data_bad_files) {
  char dir[512], path[600], msg[2048];
  gen_dir(dir, sizeof(dir), "gen_bad", 4, 25, 5);

  // Missing file: remove data_batch_3 and load the train set.
  snprintf(path, sizeof(path), "%s/data_batch_3.bin", dir);
  CHECK_ZERO(unlink(path));
  EXPECT_EQ_INT(child_load(dir, 1, msg, sizeof(msg)), 1);
  EXPECT(strstr(msg, path) != NULL);
  EXPECT(strstr(msg, "cannot open") != NULL);
  EXPECT(strstr(msg, "No such file") != NULL);
  EXPECT_EQ_INT(count_lines(msg), 1);
  printf("    missing: %s", msg);

  // Truncated: a whole file minus 100 bytes.
  size_t n = (size_t)25 * CIFAR_RECORD;
  uint8_t *buf = xmalloc(n);
  snprintf(path, sizeof(path), "%s/test_batch.bin", dir);
  FILE *f = xfopen(path, "rb");
  xfread(buf, n, f, path);
  xfclose(f, path);
  tmp_path(path, sizeof(path), "truncated.bin");
  write_bytes(path, buf, n - 100);
  EXPECT_EQ_INT(child_load(path, 0, msg, sizeof(msg)), 1);
  EXPECT(strstr(msg, path) != NULL);
  EXPECT(strstr(msg, "not a whole number of 3073-byte records") != NULL);
  printf("    truncated: %s", msg);

  // Wrong size, exactly as the message should say it.
  tmp_path(path, sizeof(path), "wrongsize.bin");
  write_bytes(path, buf, 12345);
  EXPECT_EQ_INT(child_load(path, 0, msg, sizeof(msg)), 1);
  EXPECT(strstr(msg, path) != NULL);
  EXPECT(strstr(msg, "size 12345 bytes") != NULL);

  // Empty file.
  tmp_path(path, sizeof(path), "empty.bin");
  write_bytes(path, buf, 0);
  EXPECT_EQ_INT(child_load(path, 0, msg, sizeof(msg)), 1);
  EXPECT(strstr(msg, path) != NULL);
  EXPECT(strstr(msg, "empty") != NULL);

  // A label outside 0..9 in record 17.
  buf[(size_t)17 * CIFAR_RECORD] = 12;
  tmp_path(path, sizeof(path), "badlabel.bin");
  write_bytes(path, buf, n);
  EXPECT_EQ_INT(child_load(path, 0, msg, sizeof(msg)), 1);
  EXPECT(strstr(msg, path) != NULL);
  EXPECT(strstr(msg, "record 17: label 12 outside 0..9") != NULL);
  printf("    bad label: %s", msg);

  // A directory where a file is expected.
  EXPECT_EQ_INT(child_load(dir, 0, msg, sizeof(msg)), 1);
  EXPECT(strstr(msg, "not a regular file") != NULL);

  // The harness itself: a good file in a child exits 0 (so the failures above are real).
  snprintf(path, sizeof(path), "%s/test_batch.bin", dir);
  EXPECT_EQ_INT(child_load(path, 0, msg, sizeof(msg)), 0);
  EXPECT_EQ_INT(child_load(dir, 2, msg, sizeof(msg)), 0);
  free(buf);
}

// Every file is checked whole, whatever the limit: a limit decides what is kept, not what is
// checked (a bad file beyond it would otherwise surface only in a later run with another limit).
// A load (mode 1: train, 2: test) under `limit` is refused with one line naming `path` and
// holding `reason`; the line is printed when `show`.
static int refused(const char *dir, int mode, int limit, const char *path, const char *reason,
                   int show) {
  char msg[1024];
  int ok = child_load_limit(dir, mode, limit, msg, sizeof(msg)) == 1 && strstr(msg, path) &&
           strstr(msg, reason) && count_lines(msg) == 1;
  if (show || !ok) printf("    %s", msg);
  return ok;
}

TEST(data_bad_files_beyond_limit) {
  char dir[512], path[600], msg[2048];
  gen_dir(dir, sizeof(dir), "gen_beyond", 20, 30, 6);
  // The harness: a limit within data_batch_1 loads from the good directory.
  EXPECT_EQ_INT(child_load_limit(dir, 1, 5, msg, sizeof(msg)), 0);

  // A truncated later file, the limit within data_batch_1.
  snprintf(path, sizeof(path), "%s/data_batch_3.bin", dir);
  CHECK_ZERO(truncate(path, (off_t)20 * CIFAR_RECORD - 7));
  EXPECT(refused(dir, 1, 5, path, "not a whole number of 3073-byte records", 1));
  cifar_gen_write_file(path, 20, 6, 3);

  // A missing later file.
  snprintf(path, sizeof(path), "%s/data_batch_5.bin", dir);
  CHECK_ZERO(unlink(path));
  EXPECT(refused(dir, 1, 45, path, "cannot open", 0));
  cifar_gen_write_file(path, 20, 6, 5);

  // A bad label beyond the limit: in the file the limit ends in, and in a later file.
  snprintf(path, sizeof(path), "%s/data_batch_2.bin", dir);
  set_label(path, 12, 255);
  EXPECT(refused(dir, 1, 25, path, "record 12: label 255 outside 0..9", 1)); // keeps records 0..4 of it
  set_label(path, 12, 3);
  snprintf(path, sizeof(path), "%s/data_batch_4.bin", dir);
  set_label(path, 19, 10);
  EXPECT(refused(dir, 1, 5, path, "record 19: label 10", 0));
  set_label(path, 19, 0);

  // The test file: a bad label and a truncation beyond --test-limit.
  snprintf(path, sizeof(path), "%s/test_batch.bin", dir);
  set_label(path, 29, 200);
  EXPECT(refused(dir, 2, 10, path, "record 29: label 200 outside 0..9", 0));
  set_label(path, 29, 1);
  CHECK_ZERO(truncate(path, (off_t)30 * CIFAR_RECORD + 1));
  EXPECT(refused(dir, 2, 10, path, "not a whole number", 0));
  cifar_gen_write_file(path, 30, 6, 0);
  EXPECT_EQ_INT(child_load_limit(dir, 1, 5, msg, sizeof(msg)), 0); // all restored
  EXPECT_EQ_INT(child_load_limit(dir, 2, 10, msg, sizeof(msg)), 0);
}

// Labels beyond the limit are read in chunks (cifar10.c, SCAN_RECORDS = 341): a bad label at a
// chunk's first record and at the file's last record, through load_file's limit.
TEST(data_scan_bad_label) {
  char path[600], msg[2048];
  tmp_path(path, sizeof(path), "chunks.bin");
  enum { N = 700, LIMIT = 10 };
  cifar_gen_write_file(path, N, 8, 1);
  EXPECT_EQ_INT(child_load_limit(path, 0, LIMIT, msg, sizeof(msg)), 0);
  const long at[] = {LIMIT, LIMIT + 341, N - 1};
  for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
    set_label(path, at[i], 77);
    char want[64];
    snprintf(want, sizeof(want), "record %ld: label 77", at[i]);
    EXPECT_EQ_INT(child_load_limit(path, 0, LIMIT, msg, sizeof(msg)), 1);
    if (!strstr(msg, want)) test_fail(__FILE__, __LINE__, "expected '%s' in: %s", want, msg);
    set_label(path, at[i], (uint8_t)cifar_gen_label(8, 1, (int)at[i]));
  }
  EXPECT_EQ_INT(child_load_limit(path, 0, LIMIT, msg, sizeof(msg)), 0);
}

// ----------------------------------------------------------------------------------------
// class names (batches.meta.txt)

static const char *const official[CIFAR_CLASSES] = {
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};

static int names_equal(char names[CIFAR_CLASSES][CIFAR_NAME_CAP], const char *const want[]) {
  int same = 1;
  for (int k = 0; k < CIFAR_CLASSES; k++) same &= strcmp(names[k], want[k]) == 0;
  return same;
}

TEST(data_classes_file) {
  char dir[512], path[600];
  gen_dir(dir, sizeof(dir), "gen_classes", 3, 3, 2);
  cifar10 tr, te;
  cifar10_load(&tr, dir, 1, 0);
  cifar10_load(&te, dir, 0, 0);
  EXPECT_EQ_INT(tr.classes_from_file, 1);
  EXPECT_EQ_INT(te.classes_from_file, 1);
  EXPECT(names_equal(tr.classes, official));
  EXPECT(names_equal(te.classes, official));
  char line[512];
  cifar10_class_list(line, sizeof(line), &tr);
  EXPECT(strcmp(line, "0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog, "
                      "7 horse, 8 ship, 9 truck") == 0);
  cifar10_class_list(line, 12, &tr); // cut, still a string
  EXPECT(strcmp(line, "0 airplane,") == 0);
  cifar10_free(&tr);
  cifar10_free(&te);

  // Other names, as they are: no trailing empty line, "\r\n" line ends, no final "\n",
  // spaces inside a name, a name of the longest length.
  static const char *const mine[CIFAR_CLASSES] = {
      "pickup truck", "b", "c", "d", "e", "f", "g", "h", "i",
      "a name of exactly 31 characters"};
  REQUIRE(strlen(mine[9]) == CIFAR_NAME_CAP - 1);
  static const char *const texts[] = {
      "pickup truck\nb\nc\nd\ne\nf\ng\nh\ni\na name of exactly 31 characters\n",
      "pickup truck\r\nb\r\nc\r\nd\r\ne\r\nf\r\ng\r\nh\r\ni\r\na name of exactly 31 characters\r\n\r\n",
      "pickup truck\nb\nc\nd\ne\nf\ng\nh\ni\na name of exactly 31 characters",
  };
  tmp_path(path, sizeof(path), "meta_good.txt");
  for (size_t t = 0; t < sizeof(texts) / sizeof(texts[0]); t++) {
    write_bytes(path, (const uint8_t *)texts[t], strlen(texts[t]));
    char names[CIFAR_CLASSES][CIFAR_NAME_CAP];
    EXPECT_EQ_INT(cifar10_read_classes(names, path), 1);
    if (!names_equal(names, mine)) test_fail(__FILE__, __LINE__, "names of text %zu", t);
  }
}

// Without batches.meta.txt the load goes on with the official names; the caller warns.
TEST(data_classes_missing) {
  char dir[512], path[600];
  gen_dir(dir, sizeof(dir), "gen_nometa", 3, 3, 2);
  snprintf(path, sizeof(path), "%s/batches.meta.txt", dir);
  CHECK_ZERO(unlink(path));
  cifar10 tr;
  cifar10_load(&tr, dir, 1, 0);
  EXPECT_EQ_INT(tr.n, 15);
  EXPECT_EQ_INT(tr.classes_from_file, 0);
  EXPECT(names_equal(tr.classes, official));
  cifar10_free(&tr);
}

TEST(data_classes_malformed) {
  typedef struct bad_meta {
    const char *text;
    size_t len; // 0: strlen(text)
    const char *want;
  } bad_meta;
  static const bad_meta cases[] = {
      {"a\nb\nc\nd\ne\nf\ng\nh\ni\n\n", 0, "9 class names, expected 10"},
      {"a\nb\nc\nd\ne\nf\ng\nh\ni\n", 0, "9 class names, expected 10"},
      {"", 0, "0 class names, expected 10"},
      {"a\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\n", 0, "more than 10 class names (line 11)"},
      {"a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n\n\n", 0, "line 12: more lines after the 10 class names"},
      {"a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n\nk\n", 0, "line 12: more lines after the 10 class names"},
      {"a\nb\nc\n\nd\ne\nf\ng\nh\ni\nj\n", 0, "line 4 is empty"},
      {"a\nb\n   \nc\nd\ne\nf\ng\nh\ni\nj\n", 0, "line 3 is empty"},
      {"a\nb\nthis class name is 32 characters\nd\ne\nf\ng\nh\ni\nj\n", 0,
       "line 3: a class name of 32 characters (at most 31)"},
      {"a\nb\x00x\nc\nd\ne\nf\ng\nh\ni\nj\n", 22, "line 2: byte 0x00 is not a printable character"},
      {"a\nb\nc\nd\ne\nf\ng\nh\ni\nj\xff\xfe\n", 0, "line 10: byte 0xff is not a printable"},
      {"a\tb\nb\nc\nd\ne\nf\ng\nh\ni\nj\n", 0, "line 1: byte 0x09"},
  };
  char path[600], msg[2048];
  tmp_path(path, sizeof(path), "meta_bad.txt");
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const bad_meta *c = &cases[i];
    write_bytes(path, (const uint8_t *)c->text, c->len ? c->len : strlen(c->text));
    int status = child_load(path, 3, msg, sizeof(msg));
    if (status != 1 || !strstr(msg, path) || !strstr(msg, c->want) || count_lines(msg) != 1)
      test_fail(__FILE__, __LINE__, "case %zu: exit %d, want one line with '%s', got: %s", i,
                status, c->want, msg);
  }
  printf("    last: %s", msg);

  // Binary junk of a data file's size, and a directory in its place.
  uint8_t *junk = xcalloc(CIFAR_RECORD, 1);
  write_bytes(path, junk, CIFAR_RECORD);
  EXPECT_EQ_INT(child_load(path, 3, msg, sizeof(msg)), 1);
  EXPECT(strstr(msg, "line 1: byte 0x00") != NULL);
  free(junk);
  uint8_t big[5000];
  memset(big, 'a', sizeof(big));
  write_bytes(path, big, sizeof(big));
  EXPECT_EQ_INT(child_load(path, 3, msg, sizeof(msg)), 1);
  EXPECT(strstr(msg, "5000 bytes, too large for 10 class names") != NULL);
  EXPECT_EQ_INT(child_load(test_tmp_dir(), 3, msg, sizeof(msg)), 1);
  EXPECT(strstr(msg, "not a regular file") != NULL);

  // Through the loader: a malformed file in the data directory ends the load.
  char dir[512];
  gen_dir(dir, sizeof(dir), "gen_badmeta", 3, 3, 2);
  snprintf(path, sizeof(path), "%s/batches.meta.txt", dir);
  write_bytes(path, (const uint8_t *)"a\nb\n", 4);
  EXPECT_EQ_INT(child_load(dir, 1, msg, sizeof(msg)), 1);
  EXPECT(strstr(msg, path) != NULL);
  EXPECT(strstr(msg, "2 class names, expected 10") != NULL);
  EXPECT_EQ_INT(child_load(dir, 2, msg, sizeof(msg)), 1);
}

TEST(data_resolve_dir) {
  const char *old = getenv("CIFAR10_DIR");
  char saved[1024] = "";
  if (old) snprintf(saved, sizeof(saved), "%s", old);
  CHECK_ZERO(unsetenv("CIFAR10_DIR"));
  EXPECT(strcmp(cifar10_resolve_dir(NULL), "data/cifar-10-batches-bin") == 0);
  EXPECT(strcmp(cifar10_resolve_dir(""), "data/cifar-10-batches-bin") == 0);
  CHECK_ZERO(setenv("CIFAR10_DIR", "/x/y", 1));
  EXPECT(strcmp(cifar10_resolve_dir(NULL), "/x/y") == 0);
  EXPECT(strcmp(cifar10_resolve_dir("given"), "given") == 0);
  if (old) CHECK_ZERO(setenv("CIFAR10_DIR", saved, 1));
  else CHECK_ZERO(unsetenv("CIFAR10_DIR"));
}

// ----------------------------------------------------------------------------------------
// split, epoch order, sharding

static int is_sorted_unique(const int32_t *a, int n) {
  for (int i = 1; i < n; i++)
    if (a[i] <= a[i - 1]) return 0;
  return 1;
}

TEST(data_split) {
  enum { N = 1000, V = 100 };
  static int32_t tr[N], va[V], tr2[N], va2[V], tr3[N], va3[V];
  cifar10_split(tr, va, N, V, 42);
  cifar10_split(tr2, va2, N, V, 42);
  cifar10_split(tr3, va3, N, V, 43);
  EXPECT(memcmp(tr, tr2, sizeof(int32_t) * (N - V)) == 0);
  EXPECT(memcmp(va, va2, sizeof(va)) == 0);
  EXPECT(memcmp(va, va3, sizeof(va)) != 0);
  EXPECT(is_sorted_unique(tr, N - V));
  EXPECT(is_sorted_unique(va, V));
  // train and val partition [0, N).
  static int seen[N];
  memset(seen, 0, sizeof(seen));
  for (int i = 0; i < N - V; i++) seen[tr[i]]++;
  for (int i = 0; i < V; i++) seen[va[i]]++;
  int ok = 1;
  for (int i = 0; i < N; i++) ok &= seen[i] == 1;
  EXPECT(ok);
  // The validation set is spread over the range, not a block (a real shuffle).
  EXPECT(va[0] < 100 && va[V - 1] > 900);
  // Edge cases: no validation, all validation.
  cifar10_split(tr2, va2, N, 0, 1);
  for (int i = 0; i < N; i++) ok &= tr2[i] == i;
  cifar10_split(tr2, va2, 10, 10, 1);
  for (int i = 0; i < 10; i++) ok &= va2[i] == i;
  EXPECT(ok);
}

TEST(data_epoch_order_and_shards) {
  enum { N = 120, V = 17, T = N - V, B = 16 };
  int32_t tr[T], va[V], order[T], order2[T], sorted[T], out[B];
  cifar10_split(tr, va, N, V, 9);
  int32_t first_epoch[T];
  for (int epoch = 0; epoch < 3; epoch++) {
    cifar10_epoch_order(order, tr, T, 9, epoch);
    cifar10_epoch_order(order2, tr, T, 9, epoch);
    EXPECT(memcmp(order, order2, sizeof(order)) == 0);
    // A permutation of train_ids.
    memcpy(sorted, order, sizeof(sorted));
    for (int i = 1; i < T; i++) // insertion sort, small
      for (int j = i; j > 0 && sorted[j] < sorted[j - 1]; j--) {
        int32_t t = sorted[j]; sorted[j] = sorted[j - 1]; sorted[j - 1] = t;
      }
    EXPECT(memcmp(sorted, tr, sizeof(tr)) == 0);
    if (epoch == 0) memcpy(first_epoch, order, sizeof(order));
    else EXPECT(memcmp(first_epoch, order, sizeof(order)) != 0);

    for (int world = 1; world <= 4; world++) {
      static int seen[N];
      memset(seen, 0, sizeof(seen));
      int shapes_ok = 1;
      for (int b0 = 0; b0 < T; b0 += B) {
        int count = T - b0 < B ? T - b0 : B; // the last batch is short (103 = 6*16 + 7)
        for (int rank = 0; rank < world; rank++) {
          int k = cifar10_shard(out, order + b0, count, rank, world);
          shapes_ok &= k == (count - rank + world - 1) / world;
          for (int i = 0; i < k; i++) {
            seen[out[i]]++;
            shapes_ok &= out[i] == order[b0 + rank + i * world]; // DistributedSampler layout
          }
        }
      }
      EXPECT(shapes_ok);
      int once = 1;
      for (int i = 0; i < T; i++) once &= seen[tr[i]] == 1;
      for (int i = 0; i < V; i++) once &= seen[va[i]] == 0;
      EXPECT(once);
    }
  }
  // More ranks than samples: the extra ranks get nothing.
  int32_t two[2] = {5, 8};
  EXPECT_EQ_INT(cifar10_shard(out, two, 2, 3, 4), 0);
  EXPECT_EQ_INT(cifar10_shard(out, two, 2, 1, 4), 1);
  EXPECT_EQ_INT(out[0], 8);
  // The epoch order depends on the seed.
  cifar10_epoch_order(order2, tr, T, 10, 0);
  EXPECT(memcmp(first_epoch, order2, sizeof(order2)) != 0);
}

// ----------------------------------------------------------------------------------------
// flips and batch assembly

static prep_params params(int size, int augment, float flip_p, uint64_t seed, uint32_t epoch) {
  prep_params p = {.size = size, .augment = augment, .flip_p = flip_p, .seed = seed,
                   .epoch = epoch, .mean = {0.f, 0.f, 0.f}, .std = {1.f, 1.f, 1.f}};
  return p;
}

TEST(data_flips_world_independent) {
  enum { N = 60, B = 24, S = 64 };
  uint8_t *images = xmalloc((size_t)N * CIFAR_PIXELS);
  uint8_t labels[N];
  for (int i = 0; i < N; i++) {
    labels[i] = (uint8_t)cifar_gen_label(1, 1, i);
    cifar_gen_image(images + (size_t)i * CIFAR_PIXELS, labels[i], 1, 1, i);
  }
  int32_t tr[N], va[1], order[N];
  cifar10_split(tr, va, N, 0, 4);
  cifar10_epoch_order(order, tr, N, 4, 3);
  prep_params p = params(S, 1, 0.5f, 4, 3);
  p.mean[0] = 0.4f; p.mean[1] = 0.5f; p.mean[2] = 0.45f;
  p.std[0] = 0.25f; p.std[1] = 0.24f; p.std[2] = 0.26f;
  const size_t row = (size_t)S * S * 3;
  float *x1 = xmalloc(B * row * sizeof(float)), *x3 = xmalloc(B * row * sizeof(float));
  int32_t lab1[B], id1[B], lab3[B], id3[B], shard[B];
  cpu_prep_batch(NULL, x1, lab1, id1, images, labels, order, B, &p); // world 1: whole batch
  int flipped = 0, matched = 0, ok = 1;
  for (int i = 0; i < B; i++) {
    flipped += rng_uniform(4, RNG_STREAM_FLIP, 3, (uint32_t)order[i], 0) < 0.5f;
    ok &= id1[i] == order[i] && lab1[i] == labels[order[i]];
  }
  for (int rank = 0; rank < 3; rank++) {
    int k = cifar10_shard(shard, order, B, rank, 3);
    cpu_prep_batch(NULL, x3, lab3, id3, images, labels, shard, k, &p);
    for (int i = 0; i < k; i++)
      for (int j = 0; j < B; j++)
        if (id1[j] == id3[i]) {
          ok &= lab1[j] == lab3[i];
          ok &= memcmp(x1 + j * row, x3 + i * row, row * sizeof(float)) == 0; // bitwise
          matched++;
        }
  }
  EXPECT(ok);
  EXPECT_EQ_INT(matched, B);
  EXPECT(flipped > 0 && flipped < B); // both kinds occur, so the comparison covers flips
  free(x1);
  free(x3);
  free(images);
}

// Images whose R plane has 0 at (0, 0) and 255 at (0, 31): at size 32 the output's first
// pixel tells whether the image was flipped.
TEST(data_flip_fraction) {
  enum { N = 10000, CH = 1000 };
  uint8_t *images = xcalloc((size_t)N, CIFAR_PIXELS);
  uint8_t *labels = xcalloc(N, 1);
  for (int i = 0; i < N; i++) images[(size_t)i * CIFAR_PIXELS + 31] = 255;
  int32_t *ids = xmalloc(N * sizeof(int32_t));
  for (int i = 0; i < N; i++) ids[i] = i;
  float *x = xmalloc((size_t)CH * CIFAR_PIXELS * sizeof(float));
  int32_t lab[CH], oid[CH];
  const float ps[] = {0.7f, 0.5f, 0.0f, 1.0f};
  for (int augment = 0; augment <= 1; augment++)
    for (size_t pi = 0; pi < sizeof(ps) / sizeof(ps[0]); pi++) {
      prep_params p = params(32, augment, ps[pi], 123, 2);
      int flips = 0, agree = 1;
      for (int c0 = 0; c0 < N; c0 += CH) {
        cpu_prep_batch(NULL, x, lab, oid, images, labels, ids + c0, CH, &p);
        for (int i = 0; i < CH; i++) {
          int f = x[(size_t)i * CIFAR_PIXELS] == 1.0f;
          int want = augment && rng_uniform(123, RNG_STREAM_FLIP, 2, (uint32_t)(c0 + i), 0) < ps[pi];
          agree &= f == want;
          flips += f;
        }
      }
      double frac = (double)flips / N;
      if (augment) printf("    flip_p %.1f: flipped fraction %.4f\n", ps[pi], frac);
      EXPECT(agree);
      EXPECT_NEAR(frac, augment ? ps[pi] : 0.0, 0.02); // binomial sd <= 0.005
    }
  free(x);
  free(ids);
  free(labels);
  free(images);
}

TEST(data_prep_normalises_nhwc) {
  enum { N = 5, S = 40 };
  uint8_t images[N * CIFAR_PIXELS], labels[N];
  for (int i = 0; i < N; i++) {
    labels[i] = (uint8_t)cifar_gen_label(2, 0, i);
    cifar_gen_image(images + i * CIFAR_PIXELS, labels[i], 2, 0, i);
  }
  int32_t ids[3] = {4, 0, 2}, lab[3], oid[3];
  prep_params p = params(S, 1, 0.5f, 8, 0);
  p.mean[0] = 0.49f; p.mean[1] = 0.48f; p.mean[2] = 0.45f;
  p.std[0] = 0.25f; p.std[1] = 0.24f; p.std[2] = 0.26f;
  static float x[3 * S * S * 3], plane[S * S];
  cpu_prep_batch(NULL, x, lab, oid, images, labels, ids, 3, &p);
  int ok = 1;
  for (int i = 0; i < 3; i++) {
    ok &= lab[i] == labels[ids[i]] && oid[i] == ids[i];
    int flip = rng_uniform(8, RNG_STREAM_FLIP, 0, (uint32_t)ids[i], 0) < 0.5f;
    for (int c = 0; c < 3; c++) {
      cpu_resize_plane(plane, 1, images + ids[i] * CIFAR_PIXELS + c * 1024, S, flip);
      for (int k = 0; k < S * S; k++)
        ok &= x[(i * S * S + k) * 3 + c] == (plane[k] - p.mean[c]) / p.std[c];
    }
  }
  EXPECT(ok);
  // n = 0 (a rank without samples in a short final batch) touches nothing.
  x[0] = 123.0f;
  cpu_prep_batch(NULL, x, lab, oid, images, labels, ids, 0, &p);
  EXPECT(x[0] == 123.0f);
}

// ----------------------------------------------------------------------------------------
// resize against PyTorch

// Must equal ref_pixel() in tests/torch_resize_ref.py.
static uint8_t ref_pixel(int c, int y, int x) {
  uint32_t i = (uint32_t)(c * 1024 + y * 32 + x);
  return (uint8_t)((i * 2654435761u) >> 24);
}

typedef struct resize_ref {
  int size, flip, y, x;
  float v[3];
} resize_ref;
typedef struct resize_sum {
  int size, flip;
  double sum, weighted;
} resize_sum;

// ---- torch_resize_ref.py output (F.interpolate bilinear, align_corners=False, no antialias)
// generated by: /usr/bin/python3 tests/torch_resize_ref.py  (torch 1.13.0a0)
static const resize_ref resize_refs[] = {
    {64, 0, 0, 0, {0.0f, 0.866666675f, 0.733333349f}},
    {64, 0, 0, 1, {0.154901966f, 0.771568656f, 0.638235331f}},
    {64, 0, 0, 2, {0.464705884f, 0.581372559f, 0.448039234f}},
    {64, 0, 0, 5, {0.390196085f, 0.25686276f, 0.876470566f}},
    {64, 0, 0, 31, {0.425490201f, 0.292156875f, 0.158823535f}},
    {64, 0, 0, 32, {0.735294104f, 0.601960838f, 0.468627483f}},
    {64, 0, 0, 61, {0.445098072f, 0.311764717f, 0.429411769f}},
    {64, 0, 0, 62, {0.252941191f, 0.119607843f, 0.739215732f}},
    {64, 0, 0, 63, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {64, 0, 1, 0, {0.19411765f, 0.81078434f, 0.677451015f}},
    {64, 0, 1, 1, {0.286519617f, 0.715686321f, 0.582107902f}},
    {64, 0, 1, 2, {0.47132355f, 0.525490224f, 0.391421586f}},
    {64, 0, 1, 5, {0.33431372f, 0.389215708f, 0.820588231f}},
    {64, 0, 1, 31, {0.369607836f, 0.424509823f, 0.290441185f}},
    {64, 0, 1, 32, {0.679411769f, 0.608823597f, 0.475245118f}},
    {64, 0, 1, 61, {0.451960802f, 0.318627477f, 0.373529404f}},
    {64, 0, 1, 62, {0.385294139f, 0.251960784f, 0.683333397f}},
    {64, 0, 1, 63, {0.351960778f, 0.218627453f, 0.838235319f}},
    {64, 0, 2, 0, {0.582352936f, 0.69901967f, 0.565686285f}},
    {64, 0, 2, 1, {0.549754918f, 0.603921652f, 0.469852984f}},
    {64, 0, 2, 2, {0.484558821f, 0.413725495f, 0.278186291f}},
    {64, 0, 2, 5, {0.222549021f, 0.653921604f, 0.708823502f}},
    {64, 0, 2, 31, {0.257843137f, 0.68921572f, 0.553676486f}},
    {64, 0, 2, 32, {0.56764704f, 0.622549057f, 0.488480389f}},
    {64, 0, 2, 61, {0.465686291f, 0.332352936f, 0.261764705f}},
    {64, 0, 2, 62, {0.649999976f, 0.516666651f, 0.571568608f}},
    {64, 0, 2, 63, {0.742156863f, 0.608823538f, 0.72647059f}},
    {64, 0, 5, 0, {0.497058839f, 0.363725483f, 0.230392173f}},
    {64, 0, 5, 1, {0.464705884f, 0.330392182f, 0.38529411f}},
    {64, 0, 5, 2, {0.400000036f, 0.263725519f, 0.695098042f}},
    {64, 0, 5, 5, {0.640196085f, 0.50686276f, 0.436274529f}},
    {64, 0, 5, 31, {0.675490201f, 0.541421533f, 0.468627453f}},
    {64, 0, 5, 32, {0.483333349f, 0.3497549f, 0.403921604f}},
    {64, 0, 5, 61, {0.381372541f, 0.812745094f, 0.679411769f}},
    {64, 0, 5, 62, {0.565686285f, 0.620588303f, 0.487254918f}},
    {64, 0, 5, 63, {0.657843173f, 0.524509847f, 0.391176462f}},
    {64, 0, 31, 0, {0.601960778f, 0.465686291f, 0.332352936f}},
    {64, 0, 31, 1, {0.506127477f, 0.433333337f, 0.299754918f}},
    {64, 0, 31, 2, {0.314460784f, 0.368627459f, 0.234558836f}},
    {64, 0, 31, 5, {0.742156863f, 0.608823538f, 0.475490212f}},
    {64, 0, 31, 31, {0.777451038f, 0.644117653f, 0.510784328f}},
    {64, 0, 31, 32, {0.585294127f, 0.451960802f, 0.318627447f}},
    {64, 0, 31, 61, {0.483333349f, 0.349999994f, 0.781372547f}},
    {64, 0, 31, 62, {0.667647123f, 0.534313738f, 0.589215755f}},
    {64, 0, 31, 63, {0.759803951f, 0.626470625f, 0.49313727f}},
    {64, 0, 32, 0, {0.488235295f, 0.353921592f, 0.220588237f}},
    {64, 0, 32, 1, {0.392892152f, 0.447058856f, 0.312990189f}},
    {64, 0, 32, 2, {0.202205896f, 0.633333325f, 0.497794151f}},
    {64, 0, 32, 5, {0.630392134f, 0.497058839f, 0.363725483f}},
    {64, 0, 32, 31, {0.66568625f, 0.532352984f, 0.399019599f}},
    {64, 0, 32, 32, {0.473529398f, 0.340196073f, 0.206862748f}},
    {64, 0, 32, 61, {0.748039246f, 0.614705861f, 0.669607878f}},
    {64, 0, 32, 62, {0.681372523f, 0.548039198f, 0.477450997f}},
    {64, 0, 32, 63, {0.648039222f, 0.514705896f, 0.381372571f}},
    {64, 0, 61, 0, {0.25686276f, 0.37156862f, 0.238235295f}},
    {64, 0, 61, 1, {0.412009805f, 0.464705884f, 0.331127465f}},
    {64, 0, 61, 2, {0.722303927f, 0.650980413f, 0.516911745f}},
    {64, 0, 61, 5, {0.459803939f, 0.326470613f, 0.381372541f}},
    {64, 0, 61, 31, {0.495098054f, 0.361764729f, 0.416666657f}},
    {64, 0, 61, 32, {0.428431392f, 0.295098066f, 0.72647059f}},
    {64, 0, 61, 61, {0.702941179f, 0.569607854f, 0.499019623f}},
    {64, 0, 61, 62, {0.510784328f, 0.377450973f, 0.43235296f}},
    {64, 0, 61, 63, {0.414705873f, 0.281372547f, 0.399019599f}},
    {64, 0, 62, 0, {0.143137261f, 0.761764705f, 0.62843138f}},
    {64, 0, 62, 1, {0.298774511f, 0.729411781f, 0.595343173f}},
    {64, 0, 62, 2, {0.610049009f, 0.664705873f, 0.529166698f}},
    {64, 0, 62, 5, {0.473529398f, 0.340196103f, 0.269607842f}},
    {64, 0, 62, 31, {0.508823514f, 0.375490189f, 0.304901958f}},
    {64, 0, 62, 32, {0.693137228f, 0.559803963f, 0.614705861f}},
    {64, 0, 62, 61, {0.59117651f, 0.457843125f, 0.512745142f}},
    {64, 0, 62, 62, {0.399019599f, 0.265686274f, 0.697058797f}},
    {64, 0, 62, 63, {0.302941173f, 0.169607848f, 0.789215684f}},
    {64, 0, 63, 0, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {64, 0, 63, 1, {0.242156863f, 0.861764729f, 0.727450967f}},
    {64, 0, 63, 2, {0.55392158f, 0.671568632f, 0.535294116f}},
    {64, 0, 63, 5, {0.480392158f, 0.347058833f, 0.213725492f}},
    {64, 0, 63, 31, {0.515686274f, 0.382352948f, 0.249019608f}},
    {64, 0, 63, 32, {0.825490177f, 0.692156911f, 0.558823526f}},
    {64, 0, 63, 61, {0.535294116f, 0.40196079f, 0.519607842f}},
    {64, 0, 63, 62, {0.343137264f, 0.209803924f, 0.829411745f}},
    {64, 0, 63, 63, {0.247058824f, 0.113725491f, 0.984313726f}},
    {64, 1, 0, 0, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {64, 1, 0, 1, {0.252941191f, 0.119607843f, 0.739215672f}},
    {64, 1, 0, 2, {0.445098042f, 0.311764717f, 0.429411769f}},
    {64, 1, 0, 5, {0.770588219f, 0.636274517f, 0.502941191f}},
    {64, 1, 0, 31, {0.735294104f, 0.601960778f, 0.468627483f}},
    {64, 1, 0, 32, {0.425490201f, 0.292156875f, 0.158823535f}},
    {64, 1, 0, 61, {0.464705884f, 0.581372559f, 0.448039234f}},
    {64, 1, 0, 62, {0.154901966f, 0.771568596f, 0.638235331f}},
    {64, 1, 0, 63, {0.0f, 0.866666675f, 0.733333349f}},
    {64, 1, 1, 0, {0.351960778f, 0.218627453f, 0.838235319f}},
    {64, 1, 1, 1, {0.385294139f, 0.251960784f, 0.683333337f}},
    {64, 1, 1, 2, {0.451960802f, 0.318627477f, 0.373529404f}},
    {64, 1, 1, 5, {0.714705884f, 0.643137276f, 0.509803951f}},
    {64, 1, 1, 31, {0.679411769f, 0.608823538f, 0.475245118f}},
    {64, 1, 1, 32, {0.369607836f, 0.424509823f, 0.290441185f}},
    {64, 1, 1, 61, {0.47132355f, 0.525490224f, 0.391421586f}},
    {64, 1, 1, 62, {0.286519617f, 0.715686262f, 0.582107902f}},
    {64, 1, 1, 63, {0.19411765f, 0.81078434f, 0.677451015f}},
    {64, 1, 2, 0, {0.742156863f, 0.608823538f, 0.72647059f}},
    {64, 1, 2, 1, {0.649999976f, 0.516666651f, 0.571568608f}},
    {64, 1, 2, 2, {0.465686291f, 0.332352936f, 0.261764705f}},
    {64, 1, 2, 5, {0.602941155f, 0.656862736f, 0.52352941f}},
    {64, 1, 2, 31, {0.56764704f, 0.622549057f, 0.488480389f}},
    {64, 1, 2, 32, {0.257843137f, 0.68921572f, 0.553676486f}},
    {64, 1, 2, 61, {0.484558821f, 0.413725495f, 0.278186291f}},
    {64, 1, 2, 62, {0.549754858f, 0.603921592f, 0.469852954f}},
    {64, 1, 2, 63, {0.582352936f, 0.69901967f, 0.565686285f}},
    {64, 1, 5, 0, {0.657843173f, 0.524509847f, 0.391176462f}},
    {64, 1, 5, 1, {0.565686285f, 0.620588303f, 0.487254918f}},
    {64, 1, 5, 2, {0.381372571f, 0.812745094f, 0.679411769f}},
    {64, 1, 5, 5, {0.517647088f, 0.383578449f, 0.436274529f}},
    {64, 1, 5, 31, {0.483333349f, 0.3497549f, 0.403921574f}},
    {64, 1, 5, 32, {0.675490201f, 0.541421592f, 0.468627453f}},
    {64, 1, 5, 61, {0.400000006f, 0.263725489f, 0.695098042f}},
    {64, 1, 5, 62, {0.464705884f, 0.330392182f, 0.385294139f}},
    {64, 1, 5, 63, {0.497058839f, 0.363725483f, 0.230392173f}},
    {64, 1, 31, 0, {0.759803951f, 0.626470625f, 0.49313727f}},
    {64, 1, 31, 1, {0.667647064f, 0.534313738f, 0.589215755f}},
    {64, 1, 31, 2, {0.483333349f, 0.350000024f, 0.781372547f}},
    {64, 1, 31, 5, {0.620588303f, 0.486274511f, 0.352941185f}},
    {64, 1, 31, 31, {0.585294127f, 0.451960802f, 0.318627447f}},
    {64, 1, 31, 32, {0.777450979f, 0.644117653f, 0.510784328f}},
    {64, 1, 31, 61, {0.314460784f, 0.368627459f, 0.234558821f}},
    {64, 1, 31, 62, {0.506127477f, 0.433333337f, 0.299754918f}},
    {64, 1, 31, 63, {0.601960778f, 0.465686291f, 0.332352936f}},
    {64, 1, 32, 0, {0.648039222f, 0.514705896f, 0.381372571f}},
    {64, 1, 32, 1, {0.681372523f, 0.548039198f, 0.477450997f}},
    {64, 1, 32, 2, {0.748039246f, 0.614705861f, 0.669607878f}},
    {64, 1, 32, 5, {0.508823514f, 0.374509811f, 0.241176471f}},
    {64, 1, 32, 31, {0.473529398f, 0.340196073f, 0.206862748f}},
    {64, 1, 32, 32, {0.665686309f, 0.532352924f, 0.399019599f}},
    {64, 1, 32, 61, {0.202205896f, 0.633333325f, 0.497794122f}},
    {64, 1, 32, 62, {0.392892182f, 0.447058856f, 0.312990189f}},
    {64, 1, 32, 63, {0.488235295f, 0.353921592f, 0.220588237f}},
    {64, 1, 61, 0, {0.414705873f, 0.281372547f, 0.399019599f}},
    {64, 1, 61, 1, {0.510784328f, 0.377450973f, 0.43235296f}},
    {64, 1, 61, 2, {0.702941179f, 0.569607854f, 0.499019623f}},
    {64, 1, 61, 5, {0.275490195f, 0.330147058f, 0.760784328f}},
    {64, 1, 61, 31, {0.428431392f, 0.295098037f, 0.72647059f}},
    {64, 1, 61, 32, {0.495098054f, 0.361764729f, 0.416666687f}},
    {64, 1, 61, 61, {0.722303927f, 0.650980413f, 0.516911745f}},
    {64, 1, 61, 62, {0.412009805f, 0.464705884f, 0.331127465f}},
    {64, 1, 61, 63, {0.25686276f, 0.37156862f, 0.238235295f}},
    {64, 1, 62, 0, {0.302941173f, 0.169607848f, 0.789215684f}},
    {64, 1, 62, 1, {0.399019599f, 0.265686274f, 0.697058797f}},
    {64, 1, 62, 2, {0.59117651f, 0.457843125f, 0.512745142f}},
    {64, 1, 62, 5, {0.163725495f, 0.594362795f, 0.649019599f}},
    {64, 1, 62, 31, {0.693137228f, 0.559803903f, 0.614705861f}},
    {64, 1, 62, 32, {0.508823514f, 0.375490189f, 0.304901958f}},
    {64, 1, 62, 61, {0.610049009f, 0.664705873f, 0.529166698f}},
    {64, 1, 62, 62, {0.298774511f, 0.729411781f, 0.595343173f}},
    {64, 1, 62, 63, {0.143137261f, 0.761764705f, 0.62843138f}},
    {64, 1, 63, 0, {0.247058824f, 0.113725491f, 0.984313726f}},
    {64, 1, 63, 1, {0.343137264f, 0.209803924f, 0.829411745f}},
    {64, 1, 63, 2, {0.535294116f, 0.40196079f, 0.519607842f}},
    {64, 1, 63, 5, {0.107843138f, 0.72647059f, 0.593137264f}},
    {64, 1, 63, 31, {0.825490177f, 0.692156851f, 0.558823526f}},
    {64, 1, 63, 32, {0.515686274f, 0.382352948f, 0.249019623f}},
    {64, 1, 63, 61, {0.55392158f, 0.671568632f, 0.535294116f}},
    {64, 1, 63, 62, {0.242156863f, 0.861764729f, 0.727450967f}},
    {64, 1, 63, 63, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {128, 0, 0, 0, {0.0f, 0.866666675f, 0.733333349f}},
    {128, 0, 0, 1, {0.0f, 0.866666675f, 0.733333349f}},
    {128, 0, 0, 2, {0.0774509832f, 0.819117665f, 0.68578434f}},
    {128, 0, 0, 5, {0.542156875f, 0.53382355f, 0.400490195f}},
    {128, 0, 0, 63, {0.502941191f, 0.369607866f, 0.236274526f}},
    {128, 0, 0, 64, {0.657843113f, 0.524509788f, 0.391176492f}},
    {128, 0, 0, 125, {0.204901963f, 0.0715686306f, 0.816666663f}},
    {128, 0, 0, 126, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {128, 0, 0, 127, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {128, 0, 1, 0, {0.0f, 0.866666675f, 0.733333349f}},
    {128, 0, 1, 1, {0.0f, 0.866666675f, 0.733333349f}},
    {128, 0, 1, 2, {0.0774509832f, 0.819117665f, 0.68578434f}},
    {128, 0, 1, 5, {0.542156875f, 0.53382355f, 0.400490195f}},
    {128, 0, 1, 63, {0.502941191f, 0.369607866f, 0.236274526f}},
    {128, 0, 1, 64, {0.657843113f, 0.524509788f, 0.391176492f}},
    {128, 0, 1, 125, {0.204901963f, 0.0715686306f, 0.816666663f}},
    {128, 0, 1, 126, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {128, 0, 1, 127, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {128, 0, 2, 0, {0.0970588252f, 0.838725507f, 0.705392182f}},
    {128, 0, 2, 1, {0.0970588252f, 0.838725507f, 0.705392182f}},
    {128, 0, 2, 2, {0.158884808f, 0.791176498f, 0.657781899f}},
    {128, 0, 2, 5, {0.529840708f, 0.505882382f, 0.372120082f}},
    {128, 0, 2, 63, {0.475000024f, 0.420098066f, 0.286458343f}},
    {128, 0, 2, 64, {0.629901946f, 0.543627441f, 0.410110325f}},
    {128, 0, 2, 125, {0.286764711f, 0.153431371f, 0.788725495f}},
    {128, 0, 2, 126, {0.254411757f, 0.121078432f, 0.866176486f}},
    {128, 0, 2, 127, {0.254411757f, 0.121078432f, 0.866176486f}},
    {128, 0, 5, 0, {0.679411769f, 0.671078444f, 0.537745118f}},
    {128, 0, 5, 1, {0.679411769f, 0.671078444f, 0.537745118f}},
    {128, 0, 5, 2, {0.64748776f, 0.623529434f, 0.489767164f}},
    {128, 0, 5, 5, {0.455943674f, 0.338235289f, 0.201899514f}},
    {128, 0, 5, 63, {0.30735293f, 0.72303921f, 0.587561369f}},
    {128, 0, 5, 64, {0.462254912f, 0.658333361f, 0.523713231f}},
    {128, 0, 5, 125, {0.777941167f, 0.644607842f, 0.621078432f}},
    {128, 0, 5, 126, {0.839705884f, 0.706372559f, 0.698529422f}},
    {128, 0, 5, 127, {0.839705884f, 0.706372559f, 0.698529422f}},
    {128, 0, 63, 0, {0.573529422f, 0.437745124f, 0.304411769f}},
    {128, 0, 63, 1, {0.573529422f, 0.437745124f, 0.304411769f}},
    {128, 0, 63, 2, {0.525674045f, 0.437254936f, 0.30373776f}},
    {128, 0, 63, 5, {0.238541692f, 0.434313744f, 0.299693644f}},
    {128, 0, 63, 63, {0.701470613f, 0.568137288f, 0.434803933f}},
    {128, 0, 63, 64, {0.605392158f, 0.472058803f, 0.338725507f}},
    {128, 0, 63, 125, {0.701470613f, 0.568137288f, 0.513235331f}},
    {128, 0, 63, 126, {0.731862783f, 0.598529398f, 0.465196103f}},
    {128, 0, 63, 127, {0.731862783f, 0.598529398f, 0.465196103f}},
    {128, 0, 64, 0, {0.516666651f, 0.38186276f, 0.248529419f}},
    {128, 0, 64, 1, {0.516666651f, 0.38186276f, 0.248529419f}},
    {128, 0, 64, 2, {0.468933851f, 0.412745118f, 0.279105395f}},
    {128, 0, 64, 5, {0.182536781f, 0.59803921f, 0.46256128f}},
    {128, 0, 64, 63, {0.645588219f, 0.512254953f, 0.378921568f}},
    {128, 0, 64, 64, {0.549509823f, 0.416176438f, 0.282843143f}},
    {128, 0, 64, 125, {0.676960766f, 0.543627441f, 0.457352966f}},
    {128, 0, 64, 126, {0.675980389f, 0.542647064f, 0.409313738f}},
    {128, 0, 64, 127, {0.675980389f, 0.542647064f, 0.409313738f}},
    {128, 0, 125, 0, {0.11470589f, 0.859313726f, 0.725980401f}},
    {128, 0, 125, 1, {0.11470589f, 0.859313726f, 0.725980401f}},
    {128, 0, 125, 2, {0.192585781f, 0.827450991f, 0.69368875f}},
    {128, 0, 125, 5, {0.659865201f, 0.636274576f, 0.499938756f}},
    {128, 0, 125, 63, {0.574019611f, 0.440686285f, 0.354411751f}},
    {128, 0, 125, 64, {0.697549045f, 0.56421572f, 0.509313762f}},
    {128, 0, 125, 125, {0.323039204f, 0.189705878f, 0.824999988f}},
    {128, 0, 125, 126, {0.275000006f, 0.141666666f, 0.886764705f}},
    {128, 0, 125, 127, {0.275000006f, 0.141666666f, 0.886764705f}},
    {128, 0, 126, 0, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {128, 0, 126, 1, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {128, 0, 126, 2, {0.164215684f, 0.909313738f, 0.775490224f}},
    {128, 0, 126, 5, {0.63186276f, 0.624019682f, 0.487254918f}},
    {128, 0, 126, 63, {0.593137264f, 0.459803939f, 0.326470584f}},
    {128, 0, 126, 64, {0.748039246f, 0.61470592f, 0.481372565f}},
    {128, 0, 126, 125, {0.295098037f, 0.161764711f, 0.906862736f}},
    {128, 0, 126, 126, {0.247058824f, 0.113725491f, 0.984313726f}},
    {128, 0, 126, 127, {0.247058824f, 0.113725491f, 0.984313726f}},
    {128, 0, 127, 0, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {128, 0, 127, 1, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {128, 0, 127, 2, {0.164215684f, 0.909313738f, 0.775490224f}},
    {128, 0, 127, 5, {0.63186276f, 0.624019682f, 0.487254918f}},
    {128, 0, 127, 63, {0.593137264f, 0.459803939f, 0.326470584f}},
    {128, 0, 127, 64, {0.748039246f, 0.61470592f, 0.481372565f}},
    {128, 0, 127, 125, {0.295098037f, 0.161764711f, 0.906862736f}},
    {128, 0, 127, 126, {0.247058824f, 0.113725491f, 0.984313726f}},
    {128, 0, 127, 127, {0.247058824f, 0.113725491f, 0.984313726f}},
    {128, 1, 0, 0, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {128, 1, 0, 1, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {128, 1, 0, 2, {0.204901963f, 0.0715686306f, 0.816666663f}},
    {128, 1, 0, 5, {0.49313727f, 0.359803945f, 0.351960808f}},
    {128, 1, 0, 63, {0.657843113f, 0.524509788f, 0.391176492f}},
    {128, 1, 0, 64, {0.502941191f, 0.369607866f, 0.236274526f}},
    {128, 1, 0, 125, {0.0774509832f, 0.819117665f, 0.68578428f}},
    {128, 1, 0, 126, {0.0f, 0.866666675f, 0.733333349f}},
    {128, 1, 0, 127, {0.0f, 0.866666675f, 0.733333349f}},
    {128, 1, 1, 0, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {128, 1, 1, 1, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {128, 1, 1, 2, {0.204901963f, 0.0715686306f, 0.816666663f}},
    {128, 1, 1, 5, {0.49313727f, 0.359803945f, 0.351960808f}},
    {128, 1, 1, 63, {0.657843113f, 0.524509788f, 0.391176492f}},
    {128, 1, 1, 64, {0.502941191f, 0.369607866f, 0.236274526f}},
    {128, 1, 1, 125, {0.0774509832f, 0.819117665f, 0.68578428f}},
    {128, 1, 1, 126, {0.0f, 0.866666675f, 0.733333349f}},
    {128, 1, 1, 127, {0.0f, 0.866666675f, 0.733333349f}},
    {128, 1, 2, 0, {0.254411757f, 0.121078432f, 0.866176486f}},
    {128, 1, 2, 1, {0.254411757f, 0.121078432f, 0.866176486f}},
    {128, 1, 2, 2, {0.286764711f, 0.153431371f, 0.788725495f}},
    {128, 1, 2, 5, {0.480882376f, 0.347549051f, 0.324019641f}},
    {128, 1, 2, 63, {0.629901946f, 0.543627441f, 0.410110325f}},
    {128, 1, 2, 64, {0.475000024f, 0.420098066f, 0.286458343f}},
    {128, 1, 2, 125, {0.158884808f, 0.791176498f, 0.657781839f}},
    {128, 1, 2, 126, {0.0970588252f, 0.838725507f, 0.705392182f}},
    {128, 1, 2, 127, {0.0970588252f, 0.838725507f, 0.705392182f}},
    {128, 1, 5, 0, {0.839705884f, 0.706372559f, 0.698529422f}},
    {128, 1, 5, 1, {0.839705884f, 0.706372559f, 0.698529422f}},
    {128, 1, 5, 2, {0.777941167f, 0.644607842f, 0.621078432f}},
    {128, 1, 5, 5, {0.407352984f, 0.274019599f, 0.156372562f}},
    {128, 1, 5, 63, {0.462254912f, 0.658333361f, 0.523713231f}},
    {128, 1, 5, 64, {0.30735293f, 0.72303921f, 0.587561309f}},
    {128, 1, 5, 125, {0.64748776f, 0.623529375f, 0.489767164f}},
    {128, 1, 5, 126, {0.679411769f, 0.671078444f, 0.537745118f}},
    {128, 1, 5, 127, {0.679411769f, 0.671078444f, 0.537745118f}},
    {128, 1, 63, 0, {0.731862783f, 0.598529398f, 0.465196103f}},
    {128, 1, 63, 1, {0.731862783f, 0.598529398f, 0.465196103f}},
    {128, 1, 63, 2, {0.701470613f, 0.568137288f, 0.513235331f}},
    {128, 1, 63, 5, {0.519117653f, 0.385784328f, 0.801470578f}},
    {128, 1, 63, 63, {0.605392158f, 0.472058803f, 0.338725507f}},
    {128, 1, 63, 64, {0.701470613f, 0.568137288f, 0.434803933f}},
    {128, 1, 63, 125, {0.525674045f, 0.437254906f, 0.30373776f}},
    {128, 1, 63, 126, {0.573529422f, 0.437745124f, 0.304411769f}},
    {128, 1, 63, 127, {0.573529422f, 0.437745124f, 0.304411769f}},
    {128, 1, 64, 0, {0.675980389f, 0.542647064f, 0.409313738f}},
    {128, 1, 64, 1, {0.675980389f, 0.542647064f, 0.409313738f}},
    {128, 1, 64, 2, {0.676960766f, 0.543627441f, 0.457352966f}},
    {128, 1, 64, 5, {0.682843149f, 0.549509823f, 0.745588243f}},
    {128, 1, 64, 63, {0.549509764f, 0.416176438f, 0.282843143f}},
    {128, 1, 64, 64, {0.645588279f, 0.512254953f, 0.378921598f}},
    {128, 1, 64, 125, {0.468933821f, 0.412745118f, 0.279105395f}},
    {128, 1, 64, 126, {0.516666651f, 0.38186276f, 0.248529419f}},
    {128, 1, 64, 127, {0.516666651f, 0.38186276f, 0.248529419f}},
    {128, 1, 125, 0, {0.275000006f, 0.141666666f, 0.886764705f}},
    {128, 1, 125, 1, {0.275000006f, 0.141666666f, 0.886764705f}},
    {128, 1, 125, 2, {0.323039204f, 0.189705878f, 0.824999988f}},
    {128, 1, 125, 5, {0.61127454f, 0.477941155f, 0.454411805f}},
    {128, 1, 125, 63, {0.697549045f, 0.56421572f, 0.509313703f}},
    {128, 1, 125, 64, {0.574019611f, 0.440686285f, 0.354411751f}},
    {128, 1, 125, 125, {0.192585781f, 0.827450931f, 0.69368875f}},
    {128, 1, 125, 126, {0.11470589f, 0.859313726f, 0.725980401f}},
    {128, 1, 125, 127, {0.11470589f, 0.859313726f, 0.725980401f}},
    {128, 1, 126, 0, {0.247058824f, 0.113725491f, 0.984313726f}},
    {128, 1, 126, 1, {0.247058824f, 0.113725491f, 0.984313726f}},
    {128, 1, 126, 2, {0.295098037f, 0.161764711f, 0.906862736f}},
    {128, 1, 126, 5, {0.583333373f, 0.449999988f, 0.442156881f}},
    {128, 1, 126, 63, {0.748039246f, 0.61470592f, 0.481372565f}},
    {128, 1, 126, 64, {0.593137264f, 0.459803939f, 0.326470584f}},
    {128, 1, 126, 125, {0.164215684f, 0.909313679f, 0.775490224f}},
    {128, 1, 126, 126, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {128, 1, 126, 127, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {128, 1, 127, 0, {0.247058824f, 0.113725491f, 0.984313726f}},
    {128, 1, 127, 1, {0.247058824f, 0.113725491f, 0.984313726f}},
    {128, 1, 127, 2, {0.295098037f, 0.161764711f, 0.906862736f}},
    {128, 1, 127, 5, {0.583333373f, 0.449999988f, 0.442156881f}},
    {128, 1, 127, 63, {0.748039246f, 0.61470592f, 0.481372565f}},
    {128, 1, 127, 64, {0.593137264f, 0.459803939f, 0.326470584f}},
    {128, 1, 127, 125, {0.164215684f, 0.909313679f, 0.775490224f}},
    {128, 1, 127, 126, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {128, 1, 127, 127, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 0, 0, 0, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 0, 0, 1, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 0, 0, 2, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 0, 0, 5, {0.177030846f, 0.757983208f, 0.624649882f}},
    {224, 0, 0, 111, {0.536134899f, 0.402801573f, 0.269468248f}},
    {224, 0, 0, 112, {0.624650359f, 0.491317004f, 0.357983679f}},
    {224, 0, 0, 221, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 0, 0, 222, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 0, 0, 223, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 0, 1, 0, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 0, 1, 1, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 0, 1, 2, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 0, 1, 5, {0.177030846f, 0.757983208f, 0.624649882f}},
    {224, 0, 1, 111, {0.536134899f, 0.402801573f, 0.269468248f}},
    {224, 0, 1, 112, {0.624650359f, 0.491317004f, 0.357983679f}},
    {224, 0, 1, 221, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 0, 1, 222, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 0, 1, 223, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 0, 2, 0, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 0, 2, 1, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 0, 2, 2, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 0, 2, 5, {0.177030846f, 0.757983208f, 0.624649882f}},
    {224, 0, 2, 111, {0.536134899f, 0.402801573f, 0.269468248f}},
    {224, 0, 2, 112, {0.624650359f, 0.491317004f, 0.357983679f}},
    {224, 0, 2, 221, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 0, 2, 222, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 0, 2, 223, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 0, 5, 0, {0.221848771f, 0.802801132f, 0.669467807f}},
    {224, 0, 5, 1, {0.221848771f, 0.802801132f, 0.669467807f}},
    {224, 0, 5, 2, {0.221848771f, 0.802801132f, 0.669467807f}},
    {224, 0, 5, 5, {0.317246944f, 0.694117665f, 0.560464203f}},
    {224, 0, 5, 111, {0.472269356f, 0.502841413f, 0.368867815f}},
    {224, 0, 5, 112, {0.560784817f, 0.550380409f, 0.416566908f}},
    {224, 0, 5, 221, {0.37983197f, 0.246498629f, 0.830252111f}},
    {224, 0, 5, 222, {0.37983197f, 0.246498629f, 0.830252111f}},
    {224, 0, 5, 223, {0.37983197f, 0.246498629f, 0.830252111f}},
    {224, 0, 111, 0, {0.561344385f, 0.425770164f, 0.292436808f}},
    {224, 0, 111, 1, {0.561344385f, 0.425770164f, 0.292436808f}},
    {224, 0, 111, 2, {0.561344385f, 0.425770164f, 0.292436808f}},
    {224, 0, 111, 5, {0.452020645f, 0.440016061f, 0.306202531f}},
    {224, 0, 111, 111, {0.668907106f, 0.535573781f, 0.402240455f}},
    {224, 0, 111, 112, {0.614005148f, 0.480671823f, 0.347338498f}},
    {224, 0, 111, 221, {0.719887793f, 0.586554468f, 0.453221142f}},
    {224, 0, 111, 222, {0.719887793f, 0.586554468f, 0.453221142f}},
    {224, 0, 111, 223, {0.719887793f, 0.586554468f, 0.453221142f}},
    {224, 0, 112, 0, {0.52885139f, 0.393837392f, 0.260504037f}},
    {224, 0, 112, 1, {0.52885139f, 0.393837392f, 0.260504037f}},
    {224, 0, 112, 2, {0.52885139f, 0.393837392f, 0.260504037f}},
    {224, 0, 112, 5, {0.419687718f, 0.449059695f, 0.315086097f}},
    {224, 0, 112, 111, {0.636974335f, 0.503641009f, 0.370307684f}},
    {224, 0, 112, 112, {0.582072377f, 0.448739052f, 0.315405726f}},
    {224, 0, 112, 221, {0.687955022f, 0.554621696f, 0.421288371f}},
    {224, 0, 112, 222, {0.687955022f, 0.554621696f, 0.421288371f}},
    {224, 0, 112, 223, {0.687955022f, 0.554621696f, 0.421288371f}},
    {224, 0, 221, 0, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 0, 221, 1, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 0, 221, 2, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 0, 221, 5, {0.264425814f, 0.848179281f, 0.713725507f}},
    {224, 0, 221, 111, {0.626330972f, 0.492997646f, 0.359664321f}},
    {224, 0, 221, 112, {0.714846432f, 0.581513047f, 0.448179752f}},
    {224, 0, 221, 221, {0.247058824f, 0.113725491f, 0.984313726f}},
    {224, 0, 221, 222, {0.247058824f, 0.113725491f, 0.984313726f}},
    {224, 0, 221, 223, {0.247058809f, 0.113725491f, 0.984313667f}},
    {224, 0, 222, 0, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 0, 222, 1, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 0, 222, 2, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 0, 222, 5, {0.264425814f, 0.848179281f, 0.713725507f}},
    {224, 0, 222, 111, {0.626330972f, 0.492997646f, 0.359664321f}},
    {224, 0, 222, 112, {0.714846432f, 0.581513047f, 0.448179752f}},
    {224, 0, 222, 221, {0.247058824f, 0.113725491f, 0.984313726f}},
    {224, 0, 222, 222, {0.247058824f, 0.113725491f, 0.984313726f}},
    {224, 0, 222, 223, {0.247058809f, 0.113725491f, 0.984313667f}},
    {224, 0, 223, 0, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 0, 223, 1, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 0, 223, 2, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 0, 223, 5, {0.264425814f, 0.848179221f, 0.713725507f}},
    {224, 0, 223, 111, {0.626330912f, 0.492997617f, 0.359664321f}},
    {224, 0, 223, 112, {0.714846432f, 0.581513047f, 0.448179752f}},
    {224, 0, 223, 221, {0.247058809f, 0.113725491f, 0.984313667f}},
    {224, 0, 223, 222, {0.247058809f, 0.113725491f, 0.984313667f}},
    {224, 0, 223, 223, {0.247058809f, 0.113725491f, 0.984313607f}},
    {224, 1, 0, 0, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 1, 0, 1, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 1, 0, 2, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 1, 0, 5, {0.26666671f, 0.133333355f, 0.717086792f}},
    {224, 1, 0, 111, {0.624649405f, 0.49131608f, 0.357982755f}},
    {224, 1, 0, 112, {0.536134005f, 0.402800679f, 0.269467324f}},
    {224, 1, 0, 221, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 1, 0, 222, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 1, 0, 223, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 1, 1, 0, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 1, 1, 1, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 1, 1, 2, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 1, 1, 5, {0.26666671f, 0.133333355f, 0.717086792f}},
    {224, 1, 1, 111, {0.624649405f, 0.49131608f, 0.357982755f}},
    {224, 1, 1, 112, {0.536134005f, 0.402800679f, 0.269467324f}},
    {224, 1, 1, 221, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 1, 1, 222, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 1, 1, 223, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 1, 2, 0, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 1, 2, 1, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 1, 2, 2, {0.156862751f, 0.0235294122f, 0.894117653f}},
    {224, 1, 2, 5, {0.26666671f, 0.133333355f, 0.717086792f}},
    {224, 1, 2, 111, {0.624649405f, 0.49131608f, 0.357982755f}},
    {224, 1, 2, 112, {0.536134005f, 0.402800679f, 0.269467324f}},
    {224, 1, 2, 221, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 1, 2, 222, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 1, 2, 223, {0.0f, 0.866666675f, 0.733333349f}},
    {224, 1, 5, 0, {0.37983197f, 0.246498629f, 0.830252111f}},
    {224, 1, 5, 1, {0.37983197f, 0.246498629f, 0.830252111f}},
    {224, 1, 5, 2, {0.37983197f, 0.246498629f, 0.830252111f}},
    {224, 1, 5, 5, {0.407683104f, 0.274349779f, 0.65322125f}},
    {224, 1, 5, 111, {0.560783863f, 0.550379932f, 0.416566402f}},
    {224, 1, 5, 112, {0.472268462f, 0.502840936f, 0.368867338f}},
    {224, 1, 5, 221, {0.221848771f, 0.802801132f, 0.669467807f}},
    {224, 1, 5, 222, {0.221848771f, 0.802801132f, 0.669467807f}},
    {224, 1, 5, 223, {0.221848756f, 0.802801132f, 0.669467807f}},
    {224, 1, 111, 0, {0.719887793f, 0.586554468f, 0.453221142f}},
    {224, 1, 111, 1, {0.719887793f, 0.586554468f, 0.453221142f}},
    {224, 1, 111, 2, {0.719887793f, 0.586554468f, 0.453221142f}},
    {224, 1, 111, 5, {0.665786326f, 0.532453001f, 0.563025057f}},
    {224, 1, 111, 111, {0.614005685f, 0.480672359f, 0.347339034f}},
    {224, 1, 111, 112, {0.668907702f, 0.535574377f, 0.402241021f}},
    {224, 1, 111, 221, {0.561344385f, 0.425770164f, 0.292436808f}},
    {224, 1, 111, 222, {0.561344385f, 0.425770164f, 0.292436808f}},
    {224, 1, 111, 223, {0.561344385f, 0.425770164f, 0.292436779f}},
    {224, 1, 112, 0, {0.687955022f, 0.554621696f, 0.421288371f}},
    {224, 1, 112, 1, {0.687955022f, 0.554621696f, 0.421288371f}},
    {224, 1, 112, 2, {0.687955022f, 0.554621696f, 0.421288371f}},
    {224, 1, 112, 5, {0.67482996f, 0.541496634f, 0.531092286f}},
    {224, 1, 112, 111, {0.582072914f, 0.448739588f, 0.315406293f}},
    {224, 1, 112, 112, {0.636974931f, 0.503641605f, 0.37030825f}},
    {224, 1, 112, 221, {0.52885139f, 0.393837392f, 0.260504037f}},
    {224, 1, 112, 222, {0.52885139f, 0.393837392f, 0.260504037f}},
    {224, 1, 112, 223, {0.52885133f, 0.393837392f, 0.260504037f}},
    {224, 1, 221, 0, {0.247058824f, 0.113725491f, 0.984313726f}},
    {224, 1, 221, 1, {0.247058824f, 0.113725491f, 0.984313726f}},
    {224, 1, 221, 2, {0.247058824f, 0.113725491f, 0.984313726f}},
    {224, 1, 221, 5, {0.356862783f, 0.223529428f, 0.807282865f}},
    {224, 1, 221, 111, {0.714845479f, 0.581512153f, 0.448178828f}},
    {224, 1, 221, 112, {0.626330078f, 0.492996752f, 0.359663427f}},
    {224, 1, 221, 221, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 1, 221, 222, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 1, 221, 223, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 1, 222, 0, {0.247058824f, 0.113725491f, 0.984313726f}},
    {224, 1, 222, 1, {0.247058824f, 0.113725491f, 0.984313726f}},
    {224, 1, 222, 2, {0.247058824f, 0.113725491f, 0.984313726f}},
    {224, 1, 222, 5, {0.356862783f, 0.223529428f, 0.807282865f}},
    {224, 1, 222, 111, {0.714845479f, 0.581512153f, 0.448178828f}},
    {224, 1, 222, 112, {0.626330078f, 0.492996752f, 0.359663427f}},
    {224, 1, 222, 221, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 1, 222, 222, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 1, 222, 223, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 1, 223, 0, {0.247058809f, 0.113725491f, 0.984313667f}},
    {224, 1, 223, 1, {0.247058809f, 0.113725491f, 0.984313667f}},
    {224, 1, 223, 2, {0.247058809f, 0.113725491f, 0.984313667f}},
    {224, 1, 223, 5, {0.356862783f, 0.223529428f, 0.807282865f}},
    {224, 1, 223, 111, {0.714845479f, 0.581512153f, 0.448178798f}},
    {224, 1, 223, 112, {0.626330078f, 0.492996722f, 0.359663397f}},
    {224, 1, 223, 221, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 1, 223, 222, {0.0862745121f, 0.956862748f, 0.823529422f}},
    {224, 1, 223, 223, {0.0862745121f, 0.956862748f, 0.823529422f}},
};
static const resize_sum resize_sums[] = {
    {64, 0, 6143.73345278, 24551.4730274},
    {64, 1, 6143.73345019, 24576.9114904},
    {128, 0, 24574.9338975, 98293.0029303},
    {128, 1, 24574.9337813, 98292.8307693},
    {224, 0, 75260.7347846, 300966.186123},
    {224, 1, 75260.735007, 301119.692964},
};
// ---- end of torch_resize_ref.py output

TEST(data_resize_matches_torch) {
  static uint8_t img[CIFAR_PIXELS];
  for (int c = 0; c < 3; c++)
    for (int y = 0; y < 32; y++)
      for (int x = 0; x < 32; x++) img[(c * 32 + y) * 32 + x] = ref_pixel(c, y, x);
  static float out[224 * 224 * 3];
  double max_diff = 0;
  int checked = 0, exact = 0;
  for (size_t s = 0; s < sizeof(resize_sums) / sizeof(resize_sums[0]); s++) {
    const int size = resize_sums[s].size, flip = resize_sums[s].flip;
    for (int c = 0; c < 3; c++) cpu_resize_plane(out + c, 3, img + c * 1024, size, flip);
    for (size_t r = 0; r < sizeof(resize_refs) / sizeof(resize_refs[0]); r++) {
      const resize_ref *e = &resize_refs[r];
      if (e->size != size || e->flip != flip) continue;
      for (int c = 0; c < 3; c++) {
        double d = fabs(out[(e->y * size + e->x) * 3 + c] - e->v[c]);
        if (d > max_diff) max_diff = d;
        exact += d == 0;
        if (d > 2.5e-7)
          test_fail(__FILE__, __LINE__, "size %d flip %d (y %d, x %d, c %d): %.9g vs torch %.9g",
                    size, flip, e->y, e->x, c, out[(e->y * size + e->x) * 3 + c], e->v[c]);
        checked++;
      }
    }
    // Whole-image checksums: every pixel, and their positions (weights 1..7).
    double sum = 0, weighted = 0;
    for (int y = 0; y < size; y++)
      for (int x = 0; x < size; x++)
        for (int c = 0; c < 3; c++) {
          double v = out[(y * size + x) * 3 + c];
          sum += v;
          weighted += v * ((y * size + x) % 7 + 1);
        }
    double tol = 1e-7 * size * size * 3;
    EXPECT_NEAR(sum, resize_sums[s].sum, tol);
    EXPECT_NEAR(weighted, resize_sums[s].weighted, 7 * tol);
  }
  // prep.c follows PyTorch's arithmetic, so these are normally bit-exact; the tolerance (two
  // float ulps near 1) leaves room for a compiler that contracts differently, but not for the
  // weights computed in float (up to 6e-7 off at size 224).
  printf("    %d values against torch: %d bit-exact, max |diff| %.3g\n", checked, exact, max_diff);
  EXPECT(checked == 3 * (int)(sizeof(resize_refs) / sizeof(resize_refs[0])));
}

TEST(data_resize_flip_symmetry) {
  static uint8_t img[CIFAR_PIXELS];
  for (int i = 0; i < 1024; i++) img[i] = ref_pixel(0, i / 32, i % 32);
  static float a[224 * 224], b[224 * 224];
  const int sizes[] = {32, 48, 64, 128, 224};
  for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
    int n = sizes[s];
    cpu_resize_plane(a, 1, img, n, 1); // flip, then resize
    cpu_resize_plane(b, 1, img, n, 0); // resize, then mirror the output below
    double max_diff = 0;
    for (int y = 0; y < n; y++)
      for (int x = 0; x < n; x++) {
        double d = fabs(a[y * n + x] - b[y * n + (n - 1 - x)]);
        if (d > max_diff) max_diff = d;
      }
    // Equal in exact arithmetic; in float the mirrored source coordinate 31 - src differs
    // by rounding (~1e-7 pixels), times neighbour differences of up to 1.
    EXPECT_NEAR(max_diff, 0.0, 4e-6);
  }
  // Size 32 is an exact copy of byte / 255.
  cpu_resize_plane(a, 1, img, 32, 0);
  int exact = 1;
  for (int i = 0; i < 1024; i++) exact &= a[i] == (float)img[i] / 255.0f;
  EXPECT(exact);
}

// ----------------------------------------------------------------------------------------
// statistics and the real data

TEST(data_channel_stats) {
  // Two images: channel 0 all 0 and all 255 -> mean 0.5, std 0.5; channel 1 constant 51 ->
  // mean 0.2, std 0; channel 2 a 0/255 checkerboard in both -> mean 0.5, std 0.5.
  static uint8_t images[2 * CIFAR_PIXELS];
  for (int i = 0; i < 2; i++)
    for (int k = 0; k < 1024; k++) {
      images[i * CIFAR_PIXELS + k] = i ? 255 : 0;
      images[i * CIFAR_PIXELS + 1024 + k] = 51;
      images[i * CIFAR_PIXELS + 2048 + k] = ((k / 32 + k) & 1) ? 255 : 0;
    }
  uint8_t labels[2] = {0, 1};
  cifar10 d = {.images = images, .labels = labels, .n = 2};
  int32_t ids[2] = {0, 1};
  float mean[3], std[3];
  cifar10_channel_stats(mean, std, &d, ids, 2);
  EXPECT_NEAR(mean[0], 0.5, 1e-7);
  EXPECT_NEAR(std[0], 0.5, 1e-7);
  EXPECT_NEAR(mean[1], 0.2, 1e-7);
  EXPECT_NEAR(std[1], 0.0, 1e-7);
  EXPECT_NEAR(mean[2], 0.5, 1e-7);
  EXPECT_NEAR(std[2], 0.5, 1e-7);
  // Only the given ids count.
  cifar10_channel_stats(mean, std, &d, ids + 1, 1);
  EXPECT_NEAR(mean[0], 1.0, 1e-7);
  EXPECT_NEAR(std[0], 0.0, 1e-7);
}

static void expect_first_labels(const cifar10 *d, const uint8_t want[10]) {
  for (int i = 0; i < 10; i++) EXPECT_EQ_INT(d->labels[i], want[i]);
}

static const uint8_t first_train[10] = {6, 9, 9, 4, 1, 1, 2, 7, 8, 3};
static const uint8_t first_test[10] = {3, 8, 8, 0, 6, 6, 1, 6, 3, 1};

TEST(data_real_subset) {
  const char *dir = test_real_data_dir();
  if (!dir) {
    test_skip("no real CIFAR-10 subset at ../shared/data/cifar-10-subset-bin");
    return;
  }
  cifar10 tr, te;
  cifar10_load(&tr, dir, 1, 0);
  cifar10_load(&te, dir, 0, 0);
  EXPECT_EQ_INT(tr.n, 3000);
  EXPECT_EQ_INT(te.n, 1000);
  REQUIRE(tr.n >= 10 && te.n >= 10);
  expect_first_labels(&tr, first_train);
  expect_first_labels(&te, first_test);
  int32_t *ids = xmalloc((size_t)tr.n * sizeof(int32_t));
  for (int i = 0; i < tr.n; i++) ids[i] = i;
  float mean[3], std[3];
  cifar10_channel_stats(mean, std, &tr, ids, tr.n);
  printf("    subset train mean %.4f %.4f %.4f  std %.4f %.4f %.4f\n", mean[0], mean[1], mean[2],
         std[0], std[1], std[2]);
  // The full training set's values; a 3000-image subset lands within about 0.01.
  const double full_mean[3] = {0.4914, 0.4822, 0.4465}, full_std[3] = {0.2470, 0.2435, 0.2616};
  for (int c = 0; c < 3; c++) {
    EXPECT_NEAR(mean[c], full_mean[c], 0.01);
    EXPECT_NEAR(std[c], full_std[c], 0.01);
  }
  free(ids);
  cifar10_free(&tr);
  cifar10_free(&te);
}

// data/sample (cut by scripts/make_sample.sh) when the tests run from the repository root.
TEST(data_sample_dir) {
  const char *dir = "data/sample";
  if (access("data/sample/test_batch.bin", R_OK) != 0) {
    test_skip("data/sample not found: run from the repository root");
    return;
  }
  cifar10 tr, te;
  cifar10_load(&tr, dir, 1, 0);
  cifar10_load(&te, dir, 0, 0);
  EXPECT_EQ_INT(tr.n, 3000);
  EXPECT_EQ_INT(te.n, 600);
  REQUIRE(tr.n >= 10 && te.n >= 10);
  expect_first_labels(&tr, first_train);
  expect_first_labels(&te, first_test);
  cifar10_free(&tr);
  cifar10_free(&te);
}
