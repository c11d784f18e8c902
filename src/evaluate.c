// evaluate.c - `vgg_dist --eval CKPT [--dump-logits FILE]`: one checkpoint's model on the test
// set; nothing is trained and no checkpoint is written.
//
// Every rank builds the model from the options, which must describe the checkpoint's (as for
// --resume: the reader refuses another model, width, image size or batch-norm setting with one
// line naming both). Rank 0 reads and checks the file (run_state_load: CRCs, meta, the
// resume's range checks that do not compare with a training run) and every rank gets the model
// by broadcast. Each rank evaluates a contiguous share of the test images, as validation does
// in train.c, in evaluation mode (dropout off, batch norm with the checkpoint's running
// statistics) and with the checkpoint's normalisation (its STATE's mean and std: the inputs its
// model learnt on). The loss and accuracy sums and the confusion matrix are summed over the
// ranks; the logits are gathered to rank 0 in rank order, which is the test file's order.
// Rank 0 prints the report and writes the metrics line and the .npy file.
#include "evaluate.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "cifar10.h"
#include "device.h"
#include "log.h"
#include "model.h"
#include "net.h"
#include "run_state.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the .npy file says '<f4' (little-endian floats): port npy_write for this host"
#endif

#define K CIFAR_CLASSES

typedef struct eval_run {
  const config *cfg;
  comm *c;
  int rank, world;
  backend *b;
  model m;
  net net;
  run_state rs;
  cifar10 test;                 // the test set on the host (labels, class names)
  uint8_t *d_images, *d_labels; // and in backend memory
  int32_t *ids;                 // 0..n-1: the test images in file order
  int lo, hi;                   // this rank's share: images [lo, hi)
  float *logits;                // (hi - lo, K): this rank's
  FILE *npy;                    // rank 0 with --dump-logits: the temp file, renamed when whole
  char npy_tmp[600];
} eval_run;

typedef struct eval_result {
  double loss, acc;
  double confusion[K][K]; // [true class][predicted class]: image counts over every rank
} eval_result;

// ---------------------------------------------------------------------------------------
// The .npy file (NumPy format 1.0)

// Rank 0 opens "<FILE>.tmp.<pid>" before any work, so that an unwritable path fails at once
// with one line; the file gets its name only when whole (npy_finish), never half written.
static void npy_open(eval_run *e) {
  const char *path = e->cfg->dump_logits;
  comm_agree_begin(e->c);
  if (e->rank == 0 && path[0]) {
    int n = snprintf(e->npy_tmp, sizeof(e->npy_tmp), "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof(e->npy_tmp)) DIE_USAGE("--dump-logits: path %s is too long", path);
    e->npy = fopen(e->npy_tmp, "wb");
    if (!e->npy) DIE_USAGE("--dump-logits: cannot write %s: %s", e->npy_tmp, strerror(errno));
  }
  comm_agree_end(e->c);
}

// Magic, version 1.0, the header's length (u16), then a Python dict literal padded with spaces
// and ended by a newline, so that the data starts at a multiple of 64 bytes; then the data.
static void npy_finish(eval_run *e, const float *logits, int n) {
  const char *path = e->cfg->dump_logits;
  char hdr[192];
  int len = snprintf(hdr + 10, sizeof(hdr) - 10,
                     "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", n, K);
  if (len < 0 || len + 11 > 128) FATAL("npy header of %d bytes", len);
  const size_t total = 128; // 10 + the dict + padding + '\n': its 64-byte multiple, whatever n
  memset(hdr + 10 + len, ' ', total - 10 - (size_t)len);
  memcpy(hdr, "\x93NUMPY\x01\x00", 8);
  hdr[8] = (char)((total - 10) & 0xff);
  hdr[9] = (char)((total - 10) >> 8);
  hdr[total - 1] = '\n';
  xfwrite(hdr, total, e->npy, e->npy_tmp);
  xfwrite(logits, (size_t)n * K * sizeof(float), e->npy, e->npy_tmp);
  CHECK_ZERO(fflush(e->npy));
  CHECK_POSIX(fsync(fileno(e->npy))); // the bytes are down before the name says they are there
  xfclose(e->npy, e->npy_tmp);
  e->npy = NULL;
  if (rename(e->npy_tmp, path) != 0)
    FATAL("renaming %s to %s failed: %s", e->npy_tmp, path, strerror(errno));
}

// ---------------------------------------------------------------------------------------
// The model, the data, the passes

// The model the options describe, and the checkpoint's parameters, buffers and STATE in it.
static void eval_model_load(eval_run *e) {
  const config *cfg = e->cfg;
  model_build(&e->m, cfg->model, cfg->width, cfg->image_size, CIFAR_CLASSES, cfg->dropout,
              cfg->batchnorm);
  run_state_init_model(&e->rs, &e->m);
  run_state_load(&e->rs, RUN_SECTIONS_SOURCE, cfg->eval, "--eval", NULL, e->c, cfg->comm_timeout);
  const train_state *st = &e->rs.st;
  LOG0("eval: %s: %s width %g at %dx%d%s, %zu parameters, after epoch %d (step %lld)\n",
       cfg->eval, e->m.name, e->m.width, e->m.image_size, e->m.image_size,
       e->m.batchnorm ? " with batch norm" : "", e->m.n_params, st->epoch, (long long)st->step);
  LOG0("normalisation (the checkpoint's): mean %.4f %.4f %.4f, std %.4f %.4f %.4f\n",
       st->mean[0], st->mean[1], st->mean[2], st->std[0], st->std[1], st->std[2]);
}

// The test set (with --test-limit), on the host and the backend; this rank's share of it.
static void eval_data_load(eval_run *e) {
  const config *cfg = e->cfg;
  comm_agree_begin(e->c); // every rank reads the same files: one line from one rank
  const char *dir = cifar10_resolve_dir(cfg->data_dir[0] ? cfg->data_dir : NULL);
  cifar10_load(&e->test, dir, 0, cfg->test_limit);
  comm_agree_end(e->c);
  const size_t n = (size_t)e->test.n;
  e->d_images = e->b->ops->alloc(e->b, n * CIFAR_PIXELS);
  e->d_labels = e->b->ops->alloc(e->b, n);
  e->b->ops->upload(e->b, e->d_images, e->test.images, n * CIFAR_PIXELS);
  e->b->ops->upload(e->b, e->d_labels, e->test.labels, n);
  e->ids = xmalloc(sizeof(int32_t) * (n ? n : 1));
  for (int i = 0; i < e->test.n; i++) e->ids[i] = i;
  e->lo = (int)((long long)e->test.n * e->rank / e->world);
  e->hi = (int)((long long)e->test.n * (e->rank + 1) / e->world);
  e->logits = xmalloc(sizeof(float) * K * (size_t)(e->hi - e->lo ? e->hi - e->lo : 1));
  LOG0("data: %s: %d test images\n", dir, e->test.n);
}

// The net for batches of --eval-batch, holding the checkpoint's model.
static void eval_net_setup(eval_run *e) {
  const config *cfg = e->cfg;
  device_memory_check(e->b, &e->m, cfg, cfg->eval_batch, e->world);
  net_init(&e->net, &e->m, e->b, cfg->eval_batch, (size_t)(cfg->bucket_mb * 1e6 / sizeof(float)) + 1);
  net_upload_params(&e->net, e->rs.live.params);
  net_upload_buffers(&e->net, e->rs.live.buffers);
}

// This rank's share in batches: evaluation-mode forward, the loss and accuracy sums, the logits.
static void eval_shard(eval_run *e) {
  const int B = e->cfg->eval_batch;
  prep_params pp = {.size = e->m.image_size, .augment = 0};
  memcpy(pp.mean, e->rs.st.mean, sizeof(pp.mean));
  memcpy(pp.std, e->rs.st.std, sizeof(pp.std));
  net_reset_stats(&e->net);
  for (int i = e->lo; i < e->hi; i += B) {
    const int cnt = e->hi - i < B ? e->hi - i : B;
    net_prep(&e->net, e->d_images, e->d_labels, e->ids + i, cnt, &pp);
    net_forward(&e->net, cnt, 0, 0, 0);
    net_loss(&e->net, cnt, 0);
    net_download_logits(&e->net, e->logits + (size_t)(i - e->lo) * K, cnt);
  }
}

// The first maximum, as the loss's accuracy count takes it (backend.h, xent).
static int argmax_first(const float *z) {
  int am = 0;
  for (int j = 1; j < K; j++)
    if (z[j] > z[am]) am = j;
  return am;
}

// The loss and accuracy (the backend's sums, as the training run's test) and the confusion
// matrix (from the logits), over every rank.
static void eval_sums(eval_run *e, eval_result *res) {
  double sums[2];
  net_read_stats(&e->net, &sums[0], &sums[1]);
  memset(res->confusion, 0, sizeof(res->confusion));
  for (int i = e->lo; i < e->hi; i++)
    res->confusion[e->test.labels[i]][argmax_first(e->logits + (size_t)(i - e->lo) * K)] += 1;
  comm_allreduce_sum_f64(e->c, sums, 2);
  comm_allreduce_sum_f64(e->c, &res->confusion[0][0], K * K);
  res->loss = sums[0] / e->test.n;
  res->acc = sums[1] / e->test.n;
}

// Every rank's logits to rank 0 in rank order (the shares are contiguous: the file's order),
// which writes the .npy file.
static void eval_dump_logits(eval_run *e) {
  if (!e->cfg->dump_logits[0]) return;
  const size_t row = K * sizeof(float);
  float *all = e->rank == 0 ? xmalloc(row * (size_t)(e->test.n ? e->test.n : 1)) : NULL;
  comm_gather_bytes(e->c, all, e->rank == 0 ? row * (size_t)e->test.n : 0, e->logits,
                    row * (size_t)(e->hi - e->lo), 0);
  if (e->rank == 0) {
    npy_finish(e, all, e->test.n);
    LOG0("logits: %s (float32, shape (%d, %d))\n", e->cfg->dump_logits, e->test.n, K);
  }
  free(all);
}

// ---------------------------------------------------------------------------------------
// The report

// s as the inside of a JSON string: quotes, backslashes and control characters escaped.
static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    const unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
    else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
    else fputc(ch, f);
  }
  fputc('"', f);
}

// Images of class k (a confusion row's sum), and its accuracy (negative: no images).
static double class_images(const eval_result *res, int k) {
  double n = 0;
  for (int j = 0; j < K; j++) n += res->confusion[k][j];
  return n;
}
static double class_acc(const eval_result *res, int k) {
  const double n = class_images(res, k);
  return n > 0 ? res->confusion[k][k] / n : -1;
}

// The "eval" event: checkpoint, test_loss, test_acc, per_class_acc {name: acc or null},
// confusion [[...]] (rows: true class), n. Built in memory (it may be long), then one line.
static void eval_metrics(const eval_run *e, const eval_result *res) {
  char *body = NULL;
  size_t size = 0;
  FILE *f = CHECK_PTR(open_memstream(&body, &size));
  fprintf(f, "\"checkpoint\": ");
  json_string(f, e->cfg->eval);
  fprintf(f, ", \"test_loss\": %.6f, \"test_acc\": %.6f, \"per_class_acc\": {", res->loss, res->acc);
  for (int k = 0; k < K; k++) {
    fprintf(f, "%s", k ? ", " : "");
    json_string(f, e->test.classes[k]);
    if (class_acc(res, k) < 0) fprintf(f, ": null");
    else fprintf(f, ": %.6f", class_acc(res, k));
  }
  fprintf(f, "}, \"confusion\": [");
  for (int t = 0; t < K; t++)
    for (int p = 0; p < K; p++)
      fprintf(f, "%s%.0f%s", p ? ", " : t ? ", [" : "[", res->confusion[t][p], p == K - 1 ? "]" : "");
  fprintf(f, "], \"n\": %d", e->test.n);
  if (ferror(f) || fclose(f) != 0) FATAL("building the eval metrics line failed");
  metrics_write("eval", "%s", body);
  free(body);
}

// The printed report: loss and accuracy, then per class, then the confusion matrix.
static void eval_report(const eval_run *e, const eval_result *res) {
  LOG0("eval: loss %.4f acc %.4f on %d images\n", res->loss, res->acc, e->test.n);
  LOG0("per class:      accuracy  images\n");
  for (int k = 0; k < K; k++) {
    const double acc = class_acc(res, k);
    if (acc < 0) LOG0("  %d %-12.12s      -         0\n", k, e->test.classes[k]);
    else LOG0("  %d %-12.12s %8.4f %7.0f\n", k, e->test.classes[k], acc, class_images(res, k));
  }
  LOG0("confusion matrix (rows: true class, columns: predicted):\n                ");
  for (int p = 0; p < K; p++) LOG0(" %6d", p);
  LOG0("\n");
  for (int t = 0; t < K; t++) {
    LOG0("  %d %-12.12s", t, e->test.classes[t]);
    for (int p = 0; p < K; p++) LOG0(" %6.0f", res->confusion[t][p]);
    LOG0("\n");
  }
}

// ---------------------------------------------------------------------------------------
// The run

static void eval_free(eval_run *e) {
  net_free(&e->net);
  free(e->logits);
  free(e->ids);
  if (e->d_labels) e->b->ops->release(e->b, e->d_labels);
  if (e->d_images) e->b->ops->release(e->b, e->d_images);
  cifar10_free(&e->test);
  run_state_free(&e->rs);
  e->b->ops->destroy(e->b);
  metrics_close();
}

int evaluate_run(const config *cfg, comm *c) {
  eval_run e = {.cfg = cfg, .c = c, .rank = comm_rank(c), .world = comm_world(c)};
  // Output paths first: an unwritable one is found before the loading. The metrics file is
  // appended to (a training run's file may take its checkpoint's evaluation).
  metrics_open(cfg->metrics);
  npy_open(&e);
  e.b = device_backend_create(cfg, c);
  eval_model_load(&e);
  eval_data_load(&e);
  eval_net_setup(&e);
  eval_shard(&e);
  eval_result res;
  eval_sums(&e, &res);
  eval_dump_logits(&e);
  if (e.rank == 0) {
    eval_report(&e, &res);
    eval_metrics(&e, &res);
  }
  eval_free(&e);
  return 0;
}
