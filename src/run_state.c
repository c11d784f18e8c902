// run_state.c - the run's host state, the checkpoint section table built from it, and the
// checks a state read from a file must pass before a run uses it (see run_state.h). The table
// below is the one place that says which sections a checkpoint holds; tests/ckpt_tool.py's
// SECTIONS mirrors its (id, name, kind, since) columns.
// The checks treat a file as someone else's: a valid CRC says the bytes are what was written,
// not that they are sane, and a value out of range would crash the batch assembly, overflow a
// counter or train to NaN. Each refusal is one line naming the field and its value.
#include "run_state.h"

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "log.h"

// An empty state for meta's sizes, which must fit in memory (who: the caller, for the message).
static void run_state_begin(run_state *rs, const ckpt_meta *meta, const char *who) {
  memset(rs, 0, sizeof(*rs));
  rs->meta = *meta;
  if (meta->n_params > SIZE_MAX / sizeof(float) || meta->n_buffers > SIZE_MAX / sizeof(float))
    FATAL("%s: %llu parameters and %llu buffers do not fit in memory", who,
          (unsigned long long)meta->n_params, (unsigned long long)meta->n_buffers);
}

void run_state_init(run_state *rs, const ckpt_meta *meta) {
  run_state_begin(rs, meta, "run_state_init");
  size_t P = (size_t)meta->n_params, B = (size_t)meta->n_buffers;
  rs->live.params = xmalloc(P * sizeof(float));
  rs->live.buffers = xmalloc(B * sizeof(float));
  rs->adam_m = xcalloc(P, sizeof(float));
  rs->adam_v = xcalloc(P, sizeof(float));
  rs->best.params = xmalloc(P * sizeof(float));
  rs->best.buffers = xmalloc(B * sizeof(float));
}

void run_state_init_model(run_state *rs, const model *m) {
  ckpt_meta meta;
  memset(&meta, 0, sizeof(meta)); // the name's padding is on disk
  snprintf(meta.model, sizeof(meta.model), "%s", m->name);
  meta.width = m->width;
  meta.image_size = m->image_size;
  meta.classes = m->classes;
  meta.n_params = m->n_params;
  meta.n_buffers = m->n_buffers;
  run_state_init(rs, &meta);
}

void run_state_free(run_state *rs) {
  if (!rs) return;
  free(rs->best.buffers);
  free(rs->best.params);
  free(rs->adam_v);
  free(rs->adam_m);
  free(rs->live.buffers);
  free(rs->live.params);
  memset(rs, 0, sizeof(*rs));
}

void run_state_init_live(run_state *rs, const ckpt_meta *meta) {
  run_state_begin(rs, meta, "run_state_init_live");
  const size_t P = (size_t)meta->n_params * sizeof(float);
  const size_t B = (size_t)meta->n_buffers * sizeof(float);
  // memset, not calloc: calloc's fresh pages would be faulted in at the first download instead.
  rs->live.params = memset(xmalloc(P), 0, P);
  rs->live.buffers = memset(xmalloc(B), 0, B);
  rs->adam_m = memset(xmalloc(P), 0, P);
  rs->adam_v = memset(xmalloc(P), 0, P);
}

int run_state_sections(run_state *rs, run_sections which, ckpt_section out[CKPT_MAX_SECTIONS]) {
  const int all = which == RUN_SECTIONS_ALL, best = which == RUN_SECTIONS_BEST;
  const int source = which == RUN_SECTIONS_SOURCE;
  host_model *mdl = which == RUN_SECTIONS_BEST ? &rs->best : &rs->live;
  const uint64_t P = rs->meta.n_params * sizeof(float), B = rs->meta.n_buffers * sizeof(float);
  // id, name, kind, since (the format version that added it), data, bytes. In file order;
  // ids never change. The model's rows point at the chosen model, the others at the live
  // training state, best.bin's STATE at best_st, or nowhere.
  const ckpt_section rows[] = {
      {1, "META", CKPT_KIND_META, 1, &rs->meta, sizeof(rs->meta)},
      {2, "STATE", CKPT_KIND_STATE, 1, all || source ? &rs->st : best ? &rs->best_st : NULL,
       sizeof(rs->st)},
      {3, "PARAMS", CKPT_KIND_F32, 1, mdl->params, P},
      {4, "ADAM_M", CKPT_KIND_F32, 1, all ? rs->adam_m : NULL, P},
      {5, "ADAM_V", CKPT_KIND_F32, 1, all ? rs->adam_v : NULL, P},
      {6, "BUFFERS", CKPT_KIND_F32, 2, mdl->buffers, B},
  };
  const int n = (int)(sizeof(rows) / sizeof(rows[0]));
  _Static_assert(sizeof(rows) / sizeof(rows[0]) <= CKPT_MAX_SECTIONS, "raise CKPT_MAX_SECTIONS");
  memcpy(out, rows, sizeof(rows));
  return n;
}

void run_state_broadcast(run_state *rs, run_sections which, comm *c) {
  ckpt_section secs[CKPT_MAX_SECTIONS];
  int n = run_state_sections(rs, which, secs);
  for (int i = 0; i < n; i++) {
    // Every rank built its meta from the same options; rank 0 checked the file against it.
    if (secs[i].kind == CKPT_KIND_META || !secs[i].data || secs[i].bytes == 0) continue;
    comm_bcast(c, secs[i].data, (size_t)secs[i].bytes, 0);
  }
}

void run_state_keep_best(run_state *rs) {
  memcpy(rs->best.params, rs->live.params, rs->meta.n_params * sizeof(float));
  memcpy(rs->best.buffers, rs->live.buffers, rs->meta.n_buffers * sizeof(float));
}

// ---------------------------------------------------------------------------------------
// Checks of a state read from a file

#define EPOCH_MAX 100000    // --epochs' own bound: no run gets further
#define LR_MAX 10.0         // --lr's and --min-lr's bound
#define BATCH_MAX (1 << 20) // --batch's bound


#define REFUSE(name, fmt, value, why)                                                              \
  checkpoint_errorf(err, len, "STATE %s = " fmt " is out of range: %s", name, value, why)

// The counters: the position and the scheduler's and early stopping's epoch counts.
static int check_counts(const train_state *s, char *err, size_t len) {
  if (s->epoch < 0 || s->epoch > EPOCH_MAX)
    return REFUSE("epoch", "%" PRId32, s->epoch, "0 to 100000 (--epochs' bound)");
  if (s->batch < 0) return REFUSE("batch", "%" PRId32, s->batch, "not negative");
  // Adam's t and the dropout key are 32-bit (against the position: check_position).
  if (s->step < 0 || s->step >= INT32_MAX) return REFUSE("step", "%" PRId64, s->step, "0 to 2^31");
  if (s->warmup_steps < 0 || s->warmup_steps >= INT32_MAX)
    return REFUSE("warmup_steps", "%" PRId64, s->warmup_steps, "0 to 2^31");
  if (s->best_epoch < -1 || s->best_epoch >= s->epoch)
    return REFUSE("best_epoch", "%" PRId32, s->best_epoch, "-1 (none) up to the last finished epoch");
  if (s->es_bad_epochs < 0 || s->es_bad_epochs > s->epoch)
    return REFUSE("es_bad_epochs", "%" PRId32, s->es_bad_epochs, "0 up to the finished epochs");
  if (s->sched_bad_epochs < 0 || s->sched_bad_epochs > s->epoch)
    return REFUSE("sched_bad_epochs", "%" PRId32, s->sched_bad_epochs, "0 up to the finished epochs");
  if (s->sched_cooldown < 0 || s->sched_cooldown > s->epoch)
    return REFUSE("sched_cooldown", "%" PRId32, s->sched_cooldown, "0 up to the finished epochs");
  return 0;
}

// The learning rate, the losses and accuracy the decisions compare with, the normalisation.
static int check_values(const train_state *s, char *err, size_t len) {
  if (!(s->lr > 0 && s->lr <= LR_MAX)) // NaN fails too
    return REFUSE("lr", "%g", (double)s->lr, "finite, above 0, at most 10 (--lr's bound)");
  // Losses are cross entropies (>= 0); +inf means none yet.
  if (!(s->sched_best >= 0)) return REFUSE("sched_best", "%g", s->sched_best, "a loss >= 0 or inf");
  if (!(s->best_val_loss >= 0))
    return REFUSE("best_val_loss", "%g", s->best_val_loss, "a loss >= 0 or inf");
  if ((s->best_epoch < 0) != (s->best_val_loss == INFINITY))
    return REFUSE("best_val_loss", "%g", s->best_val_loss, "inf exactly when best_epoch is -1");
  if (!(s->best_val_acc >= 0 && s->best_val_acc <= 1))
    return REFUSE("best_val_acc", "%g", s->best_val_acc, "0 to 1");
  static const char *const mean_names[3] = {"mean[0]", "mean[1]", "mean[2]"};
  static const char *const std_names[3] = {"std[0]", "std[1]", "std[2]"};
  for (int k = 0; k < 3; k++) {
    if (!isfinite(s->mean[k])) return REFUSE(mean_names[k], "%g", (double)s->mean[k], "finite");
    if (!(s->std[k] > 0 && isfinite(s->std[k])))
      return REFUSE(std_names[k], "%g", (double)s->std[k], "finite and above 0");
  }
  return 0;
}

// The partial epoch's sums and time: none at an epoch's start.
static int check_epoch_sums(const train_state *s, char *err, size_t len) {
  const double v[3] = {s->epoch_loss_sum, s->epoch_correct, s->epoch_time_s};
  static const char *const names[3] = {"epoch_loss_sum", "epoch_correct", "epoch_time_s"};
  for (int k = 0; k < 3; k++) {
    if (!(v[k] >= 0 && isfinite(v[k]))) return REFUSE(names[k], "%g", v[k], "finite, >= 0");
    if (s->batch == 0 && v[k] != 0) return REFUSE(names[k], "%g", v[k], "0 at an epoch's start");
  }
  if (s->epoch_correct != floor(s->epoch_correct))
    return REFUSE("epoch_correct", "%g", s->epoch_correct, "a count of images");
  return 0;
}

// A version-3 file's sample order on its own (the run's is checked by config and the loader).
static int check_order(const sample_order *o, char *err, size_t len) {
  if (o->batch < 1 || o->batch > BATCH_MAX)
    return REFUSE("order.batch", "%" PRId32, o->batch, "1 to 2^20 (--batch's bound)");
  if (o->val_size < 1) return REFUSE("order.val_size", "%" PRId32, o->val_size, "at least 1");
  if (o->train_limit < 0) return REFUSE("order.train_limit", "%" PRId32, o->train_limit, "not negative");
  if (o->train_images <= o->val_size || (o->train_limit > 0 && o->train_images > o->train_limit))
    return REFUSE("order.train_images", "%" PRId32, o->train_images,
                  "above val_size, at most train_limit");
  return 0;
}

// The position within the epoch the (now known) order makes: the batch one of its batches, the
// images so far at most those batches', the step count at most one step per image.
static int check_position(const train_state *s, char *err, size_t len) {
  const int64_t n_train = s->order.train_images - s->order.val_size;
  const int64_t batches = (n_train + s->order.batch - 1) / s->order.batch;
  if (s->batch >= batches)
    return checkpoint_errorf(err, len, "STATE batch = %" PRId32 " is out of range: an epoch of %" PRId64
                      " images in batches of %" PRId32 " has batches 0 to %" PRId64, s->batch,
                      n_train, s->order.batch, batches - 1);
  if (s->epoch_correct > (double)s->batch * s->order.batch)
    return REFUSE("epoch_correct", "%g", s->epoch_correct, "at most the epoch's images so far");
  // Every finished epoch and batch took one step at least, and at most one per image.
  if (s->step < (int64_t)s->epoch + s->batch || s->step > (int64_t)s->epoch * n_train + s->batch)
    return REFUSE("step", "%" PRId64, s->step, "from one step per batch to one per image");
  return 0;
}

// The file's sample order against the run's (see run_state_check_resume); the state takes the
// run's when it may continue under it.
static int adopt_order(train_state *s, uint32_t version, const sample_order *now, char *note,
                       size_t note_len, char *err, size_t len) {
  const sample_order *was = &s->order;
  if (version < 3) {
    if (s->batch > 0)
      snprintf(note, note_len, "note: checkpoint format version %" PRIu32 " does not record the "
               "sample order: assuming this run's --batch %d, --val-size %d, --train-limit %d",
               version, now->batch, now->val_size, now->train_limit);
  } else if (was->val_size != now->val_size) {
    return checkpoint_errorf(err, len, "--val-size %d: the checkpoint's run split off %" PRId32
                      " validation images (its best model and lr schedule were judged on them)",
                      now->val_size, was->val_size);
  } else if (was->train_images != now->train_images) {
    return checkpoint_errorf(err, len, "--train-limit %d: this run has %d training images, the "
                      "checkpoint's run had %" PRId32 " (--train-limit %" PRId32 ")",
                      now->train_limit, now->train_images, was->train_images, was->train_limit);
  } else if (was->batch != now->batch) {
    if (s->batch > 0) // its batches are counted in the old size: they would be other images
      return checkpoint_errorf(err, len, "--batch %d: the checkpoint is at batch %" PRId32 " of an epoch "
                        "in batches of %" PRId32 "; resume mid-epoch with --batch %" PRId32,
                        now->batch, s->batch, was->batch, was->batch);
    snprintf(note, note_len, "note: --batch %d (the checkpoint's run used %" PRId32 "): from "
             "epoch %" PRId32 " on", now->batch, was->batch, s->epoch + 1);
  }
  s->order = *now;
  return 0;
}

// n floats: which is the first not finite (or, with nonneg, negative); -1 when none.
static int64_t first_bad(const float *x, uint64_t n, int nonneg) {
  for (uint64_t i = 0; i < n; i++)
    if (!isfinite(x[i]) || (nonneg && x[i] < 0)) return (int64_t)i;
  return -1;
}

// A model's tensors: finite (a NaN or inf trains to NaN, or tests as garbage).
static int check_model(const host_model *m, const ckpt_meta *meta, const char *what, char *err,
                       size_t len) {
  int64_t i;
  if ((i = first_bad(m->params, meta->n_params, 0)) >= 0)
    return checkpoint_errorf(err, len, "%s PARAMS[%" PRId64 "] = %g is not finite", what, i,
                      (double)m->params[i]);
  if ((i = first_bad(m->buffers, meta->n_buffers, 0)) >= 0)
    return checkpoint_errorf(err, len, "%s BUFFERS[%" PRId64 "] = %g is not finite", what, i,
                      (double)m->buffers[i]);
  return 0;
}

// Adam's moments: finite, v (a mean of squares) >= 0, both zero before the first step.
static int check_adam(const run_state *rs, char *err, size_t len) {
  const uint64_t P = rs->meta.n_params;
  int64_t i;
  if ((i = first_bad(rs->adam_m, P, 0)) >= 0)
    return checkpoint_errorf(err, len, "ADAM_M[%" PRId64 "] = %g is not finite", i, (double)rs->adam_m[i]);
  if ((i = first_bad(rs->adam_v, P, 1)) >= 0)
    return checkpoint_errorf(err, len, "ADAM_V[%" PRId64 "] = %g is not finite and >= 0", i,
                      (double)rs->adam_v[i]);
  if (rs->st.step == 0)
    for (uint64_t k = 0; k < P; k++)
      if (rs->adam_m[k] != 0 || rs->adam_v[k] != 0)
        return checkpoint_errorf(err, len, "ADAM_M/ADAM_V[%" PRIu64 "] is not 0 at step 0 (no step "
                          "taken yet)", k);
  return 0;
}

int run_state_check_resume(run_state *rs, uint32_t version, const sample_order *now, char *note,
                           size_t note_len, char *err, size_t err_len) {
  train_state *s = &rs->st;
  if (note_len) note[0] = '\0';
  return check_counts(s, err, err_len) || check_values(s, err, err_len) ||
                 check_epoch_sums(s, err, err_len) ||
                 (version >= 3 && check_order(&s->order, err, err_len)) ||
                 adopt_order(s, version, now, note, note_len, err, err_len) ||
                 check_position(s, err, err_len) ||
                 check_model(&rs->live, &rs->meta, "live model", err, err_len) ||
                 check_adam(rs, err, err_len)
             ? -1
             : 0;
}

int run_state_check_best(const run_state *rs, char *err, size_t err_len) {
  const train_state *b = &rs->best_st, *s = &rs->st;
  // best.bin is the checkpoint written at the end of the best epoch: it names the epoch after
  // it, and the best epoch and loss it recorded are the resumed state's (bitwise: the same
  // values travelled), else it is another run's or an older best.
  if (b->best_epoch != s->best_epoch || b->epoch != s->best_epoch + 1 ||
      memcmp(&b->best_val_loss, &s->best_val_loss, sizeof(double)) != 0)
    return checkpoint_errorf(err, err_len, "it holds epoch %" PRId32 " (best loss %g), the resumed "
                      "run's best is epoch %" PRId32 " (best loss %g)", b->best_epoch + 1,
                      b->best_val_loss, s->best_epoch + 1, s->best_val_loss);
  return check_model(&rs->best, &rs->meta, "best model", err, err_len);
}

int run_state_check_source(const run_state *rs, uint32_t version, char *err, size_t err_len) {
  const train_state *s = &rs->st;
  // A version-3 file's own order says what its position may be; an older file has none (all 0).
  return check_counts(s, err, err_len) || check_values(s, err, err_len) ||
                 check_epoch_sums(s, err, err_len) ||
                 (version >= 3 && (check_order(&s->order, err, err_len) ||
                                   check_position(s, err, err_len))) ||
                 check_model(&rs->live, &rs->meta, "model", err, err_len)
             ? -1
             : 0;
}

void run_state_load(run_state *rs, run_sections which, const char *path, const char *opt,
                    const sample_order *now, comm *c, double timeout_s) {
  if (which != RUN_SECTIONS_ALL && which != RUN_SECTIONS_SOURCE)
    FATAL("run_state_load: sections %d are not a resume's or a source's", (int)which);
  const int rank = comm_rank(c);
  if (rank != 0) comm_set_timeout(c, 0);
  comm_agree_begin(c);
  if (rank == 0) {
    ckpt_section secs[CKPT_MAX_SECTIONS];
    const int n = run_state_sections(rs, which, secs);
    char err[512] = "", why[400] = "", note[400] = "";
    uint32_t version = 0;
    if (checkpoint_read_version(path, secs, n, err, sizeof(err), &version) != 0)
      DIE_DATA("%s: %s", opt, err);
    const int bad = which == RUN_SECTIONS_ALL
                        ? run_state_check_resume(rs, version, now, note, sizeof(note), why,
                                                 sizeof(why))
                        : run_state_check_source(rs, version, why, sizeof(why));
    if (bad) DIE_DATA("%s: checkpoint %s is refused: %s", opt, path, why);
    if (note[0]) LOG0("%s\n", note);
  }
  comm_agree_end(c);
  comm_set_timeout(c, timeout_s);
  run_state_broadcast(rs, which, c);
}
