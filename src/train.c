// train.c - the epoch loop (see train.h).
//
// Every rank holds the same parameters and takes the same Adam step: the global batch b of an
// epoch is a fixed slice of that epoch's permutation, each rank computes gradients for its
// interleaved share scaled by 1 / (global batch size), and the gradient buffers are summed.
// Since every random decision is keyed by (seed, epoch/step, sample id), the trajectory does
// not depend on the world size (up to float summation order).
// Rank 0 makes the decisions after validation (learning rate, early stop, best model) and
// broadcasts its train_state, so all ranks act alike. Checkpoints are written by rank 0 only,
// on a host thread from a snapshot of the state (ckpt_writer.h) while training goes on; the
// next checkpoint, a stop and the run's end wait for the write in flight, and a failed write
// ends the run on every rank (agreed between steps or at those waits).
// A stop (a signal, --max-steps) ends the run after a step with a checkpoint and the
// directory's RESUMABLE marker; a finished run (all epochs, early stopping) removes the marker.
// A fresh run may take its model (parameters and buffers) from another run's checkpoint
// (--init-from); everything else about it stays fresh. Evaluating a checkpoint without
// training (--eval) is evaluate.c's.
//
// What a rank holds is one `run`: the options and the communicator, the backend and the net on
// it, the data (run_data), and the host state (run_state: train_state, the model's host copy,
// Adam's m and v, the best model), which the checkpoints and the resume broadcast carry whole.
// The backend holds the live state while training; the host copies are refreshed
// (state_download) where a checkpoint or the best model needs them.
// File order: stop signals; the data; the state (fresh or resumed); evaluation; checkpoints
// and stops; one epoch; after an epoch; the run.
#include "train.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "ckpt_writer.h"
#include "cifar10.h"
#include "device.h"
#include "log.h"
#include "model.h"
#include "net.h"
#include "optim.h"
#include "run_state.h"

// The first stop request's signal (SIGTERM, SIGINT or SIGUSR1); 0 while none came.
static volatile sig_atomic_t stop_signal;

// The first signal asks for a stop (every rank learns of it at the next stop agreement, within
// about --stop-check seconds: stop_agreed). A SIGINT while a stop is pending ends this process
// at once by the default action (a second Ctrl-C), and mpirun then ends the other ranks. A
// repeated SIGTERM does not: a rank may get one from a scheduler and another from mpirun, and
// must still checkpoint.
static void on_stop_signal(int sig) {
  if (sig == SIGINT && stop_signal) {
    static const char msg[] = "vgg_dist: interrupted again: exiting at once, without a checkpoint\n";
    ssize_t written = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)written;
    signal(SIGINT, SIG_DFL);
    raise(SIGINT); // delivered when this handler returns
    return;
  }
  if (!stop_signal) stop_signal = sig;
}

void train_signals_install(void) {
  const int sigs[] = {SIGTERM, SIGINT, SIGUSR1};
  struct sigaction sa = {0};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  const size_t n = sizeof(sigs) / sizeof(sigs[0]);
  for (size_t i = 0; i < n; i++) sigaddset(&sa.sa_mask, sigs[i]); // one handler at a time
  for (size_t i = 0; i < n; i++) CHECK_POSIX(sigaction(sigs[i], &sa, NULL));
  // A launcher may have left them blocked (a mask survives exec): a stop must still be heard,
  // and one already pending is delivered here. Threads made later (MPI's, OpenMP's, CUDA's)
  // inherit this mask.
  int rc = pthread_sigmask(SIG_UNBLOCK, &sa.sa_mask, NULL);
  if (rc != 0) FATAL("pthread_sigmask failed: %s", strerror(rc));
}

// Images in backend memory and the ids (host) that pick a split of them.
typedef struct split {
  const uint8_t *d_images, *d_labels;
  const int32_t *ids;
  int n;
} split;

// The data of a run: the uint8 sets on the host and in backend memory (every rank holds the
// whole set: 180 MB at most), the ids, and the train, validation and test splits, which are
// views of the memory above (data_free releases that, never a split).
typedef struct run_data {
  const char *dir;
  cifar10 train_set, test_set;
  uint8_t *d_train_img, *d_train_lab, *d_test_img, *d_test_lab;
  int32_t *train_ids, *test_ids; // train_ids: the train split's ids, then the validation ids
  split train, val, test;
} run_data;

typedef struct run {
  const config *cfg;
  comm *c;
  int rank, world;
  int local_batch; // this rank's share of a full global batch
  backend *b;
  model m;
  net net;
  grad_sync *gs;
  ckpt_writer *writer; // rank 0 with --checkpoint-dir: checkpoints are written in the background
  run_data data;
  run_state rs;
  prep_params pp;         // batch assembly (normalisation, flips); its epoch is the current one
  int32_t *order, *local; // scratch: the epoch's permutation, this rank's share of a batch
  int stop_sig; // once a stop is agreed: the largest signal number any rank got, 0 = --max-steps
  // The stop agreement's schedule (stop_agreed): the step of the next one, and the step and time
  // of the last one (or of the start of training).
  int64_t stop_check_step, stop_check_from;
  double stop_check_t;
  // The resumed run's best model could not be had (best.bin unusable) and no better epoch has
  // come since: the final test takes the last model, and says why (the reason: rank 0's).
  int best_lost;
  char best_why[1700];
} run;

// ---------------------------------------------------------------------------------------
// The data

// Loads and checks every file, uploads both sets.
static void data_load(run *r) {
  const config *cfg = r->cfg;
  backend *b = r->b;
  run_data *d = &r->data;
  // Every rank reads the same files and meets the same errors: one line, from one rank.
  comm_agree_begin(r->c);
  d->dir = cifar10_resolve_dir(cfg->data_dir[0] ? cfg->data_dir : NULL);
  cifar10_load(&d->train_set, d->dir, 1, cfg->train_limit);
  cifar10_load(&d->test_set, d->dir, 0, cfg->test_limit);
  if (cfg->val_size >= d->train_set.n)
    DIE_USAGE("--val-size %d leaves no training images: %s has %d train images", cfg->val_size,
              d->dir, d->train_set.n);
  comm_agree_end(r->c);
  size_t train_n = (size_t)d->train_set.n, test_n = (size_t)d->test_set.n;
  d->d_train_img = b->ops->alloc(b, train_n * CIFAR_PIXELS);
  d->d_train_lab = b->ops->alloc(b, train_n);
  d->d_test_img = b->ops->alloc(b, test_n * CIFAR_PIXELS);
  d->d_test_lab = b->ops->alloc(b, test_n);
  b->ops->upload(b, d->d_train_img, d->train_set.images, train_n * CIFAR_PIXELS);
  b->ops->upload(b, d->d_train_lab, d->train_set.labels, train_n);
  b->ops->upload(b, d->d_test_img, d->test_set.images, test_n * CIFAR_PIXELS);
  b->ops->upload(b, d->d_test_lab, d->test_set.labels, test_n);
}

// The split follows the run's seed (the checkpoint's on resume), so it comes after the state.
static void data_split(run *r) {
  const config *cfg = r->cfg;
  run_data *d = &r->data;
  const int n_train = d->train_set.n - cfg->val_size;
  d->train_ids = xmalloc(sizeof(int32_t) * d->train_set.n);
  int32_t *val_ids = d->train_ids + n_train;
  cifar10_split(d->train_ids, val_ids, d->train_set.n, cfg->val_size, r->rs.st.seed);
  d->test_ids = xmalloc(sizeof(int32_t) * d->test_set.n);
  for (int i = 0; i < d->test_set.n; i++) d->test_ids[i] = i;
  d->train = (split){d->d_train_img, d->d_train_lab, d->train_ids, n_train};
  d->val = (split){d->d_train_img, d->d_train_lab, val_ids, cfg->val_size};
  d->test = (split){d->d_test_img, d->d_test_lab, d->test_ids, d->test_set.n};
  LOG0("data: %s: %d train, %d validation, %d test images\n", d->dir, n_train, cfg->val_size,
       d->test_set.n);
  if (!d->train_set.classes_from_file)
    LOG0("warning: no %s/batches.meta.txt: using the official CIFAR-10 class names\n", d->dir);
  char classes[CIFAR_CLASSES * (CIFAR_NAME_CAP + 8)];
  cifar10_class_list(classes, sizeof(classes), &d->train_set);
  LOG0("classes: %s\n", classes);
}

static void data_free(run *r) {
  backend *b = r->b;
  run_data *d = &r->data;
  b->ops->release(b, d->d_test_lab);
  b->ops->release(b, d->d_test_img);
  b->ops->release(b, d->d_train_lab);
  b->ops->release(b, d->d_train_img);
  free(d->test_ids);
  free(d->train_ids);
  cifar10_free(&d->test_set);
  cifar10_free(&d->train_set);
}

// The normalisation of a fresh run: --mean/--std, else the train split's own statistics.
static void normalisation(run *r) {
  const config *cfg = r->cfg;
  train_state *st = &r->rs.st;
  if (cfg->have_norm) {
    memcpy(st->mean, cfg->mean, sizeof(st->mean));
    memcpy(st->std, cfg->std, sizeof(st->std));
    return;
  }
  cifar10_channel_stats(st->mean, st->std, &r->data.train_set, r->data.train.ids, r->data.train.n);
  LOG0("normalisation (train split's own): mean %.4f %.4f %.4f, std %.4f %.4f %.4f\n",
       st->mean[0], st->mean[1], st->mean[2], st->std[0], st->std[1], st->std[2]);
}

// ---------------------------------------------------------------------------------------
// The state: fresh, or resumed from a checkpoint

// The warmup's length in steps that the options ask for (a fresh run's; a resumed run keeps
// its checkpoint's). Called after data_load, before data_split: the split's size from the set's.
static int64_t warmup_steps_wanted(const run *r) {
  const config *cfg = r->cfg;
  const int n_train = r->data.train_set.n - cfg->val_size;
  return warmup_steps_for(cfg->warmup_epochs, optim_steps_per_epoch(n_train, cfg->batch));
}

// The sample order this run would give a checkpoint (after data_load): what a resumed
// position must have been counted in.
static sample_order order_now(const run *r) {
  const config *cfg = r->cfg;
  return (sample_order){.batch = cfg->batch, .val_size = cfg->val_size,
                        .train_limit = cfg->train_limit, .train_images = r->data.train_set.n};
}

// A fresh run's state: at the start, the scheduler's initial state and the warmup's length,
// the model initialised from the seed (and so far the best one).
static void state_fresh(run *r) {
  const config *cfg = r->cfg;
  run_state *rs = &r->rs;
  rs->st.seed = cfg->seed;
  rs->st.best_epoch = -1;
  optim_state_init(&rs->st, cfg->lr);
  rs->st.warmup_steps = warmup_steps_wanted(r);
  rs->st.order = order_now(r);
  model_init_params(&r->m, rs->live.params, cfg->init, cfg->seed);
  model_init_buffers(&r->m, rs->live.buffers);
  // Identical on every rank by construction; this makes it certain.
  run_state_broadcast(rs, RUN_SECTIONS_MODEL, r->c);
  run_state_keep_best(rs);
}

// While rank 0 reads or writes a checkpoint the others wait for it in a collective: there
// without a deadline (a large file on a slow file system is no hung peer, and --comm-timeout
// would count it). Rank 0's own waits keep theirs, so a peer that stops meanwhile still ends
// the job when rank 0 is done.
static void rank0_io_begin(run *r) {
  if (r->rank != 0) comm_set_timeout(r->c, 0);
}
static void rank0_io_end(run *r) { comm_set_timeout(r->c, r->cfg->comm_timeout); }

// The checkpoint to resume from, chosen by rank 0 (--resume PATH, or auto: the newest in the
// directory); returns 0 when auto finds none.
static int resume_find(run *r, char *path, size_t len) {
  const config *cfg = r->cfg;
  int found = 1;
  rank0_io_begin(r);
  if (r->rank == 0) {
    if (strcmp(cfg->resume, "auto") == 0) {
      found = checkpoint_latest(cfg->checkpoint_dir, path, len) == 0;
    } else {
      int n = snprintf(path, len, "%s", cfg->resume);
      if (n < 0 || (size_t)n >= len) FATAL("--resume path %s is too long", cfg->resume);
    }
  }
  comm_bcast(r->c, &found, sizeof(found), 0);
  rank0_io_end(r);
  return found;
}

// Rank 0 reads and checks the checkpoint (run_state_check_resume: its values, and its sample
// order against the run's) into the run state and broadcasts it, so only rank 0 needs the
// file. A refused file ends the job with rank 0's one line, agreed by every rank (each leaves
// MPI cleanly and exits 1: no MPI_ABORT banner).
static void resume_load(run *r, const char *path) {
  const sample_order now = order_now(r);
  run_state_load(&r->rs, RUN_SECTIONS_ALL, path, "--resume", &now, r->c, r->cfg->comm_timeout);
}

// Rank 0 reads best.bin beside the resumed checkpoint `path` and checks it as any checkpoint,
// and that it is this run's best epoch; returns 1 when it may be used, else 0 with the reason.
static int best_read(run *r, const char *path, char *why, size_t len) {
  char dir[1024], best[1100], err[512] = "";
  const char *slash = strrchr(path, '/');
  snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
  checkpoint_best_path(best, sizeof(best), dir);
  ckpt_section secs[CKPT_MAX_SECTIONS];
  const int n = run_state_sections(&r->rs, RUN_SECTIONS_BEST, secs);
  if (checkpoint_read(best, secs, n, err, sizeof(err)) == 0 &&
      run_state_check_best(&r->rs, err, sizeof(err)) == 0)
    return 1;
  snprintf(why, len, "%s unusable: %s", best, err);
  return 0;
}

// The best model so far, for the final test: best.bin beside the checkpoint. When the resumed
// run has a best epoch but best.bin cannot be used, the run says so once and the final test
// will take the last model, and say so, unless a better epoch comes.
static void resume_best(run *r, const char *path) {
  int have_best = 0;
  rank0_io_begin(r);
  if (r->rank == 0 && r->rs.st.best_epoch >= 0)
    have_best = best_read(r, path, r->best_why, sizeof(r->best_why));
  comm_bcast(r->c, &have_best, sizeof(have_best), 0);
  rank0_io_end(r);
  if (have_best) {
    run_state_broadcast(&r->rs, RUN_SECTIONS_BEST, r->c);
    return;
  }
  run_state_keep_best(&r->rs); // a whole model there, though the final test will not take it
  r->best_lost = r->rs.st.best_epoch >= 0;
  if (r->best_lost) LOG0("warning: %s: the final test will use the last model\n", r->best_why);
}

// Returns whether the run resumed (a fresh state stays when --resume auto finds nothing).
static int resume(run *r) {
  char path[1024] = "";
  if (!resume_find(r, path, sizeof(path))) {
    LOG0("resume: no checkpoint in %s yet, starting fresh\n", r->cfg->checkpoint_dir);
    return 0;
  }
  resume_load(r, path);
  resume_best(r, path);
  const train_state *st = &r->rs.st;
  LOG0("resumed from %s: epoch %d, batch %d, step %lld, lr %g%s\n", path, st->epoch + 1,
       st->batch, (long long)st->step, optim_lr_at(st, st->step),
       st->step < st->warmup_steps ? " (in the warmup)" : "");
  return 1;
}

// --init-from: a fresh run (state_fresh's position, schedule, seed and zero Adam state) whose
// model is the checkpoint's parameters and buffers; its STATE is checked, then set aside (the
// normalisation too: the run computes its own, see normalisation()).
static void init_from(run *r) {
  const train_state fresh = r->rs.st;
  run_state_load(&r->rs, RUN_SECTIONS_SOURCE, r->cfg->init_from, "--init-from", NULL, r->c,
                 r->cfg->comm_timeout);
  const int source_epoch = r->rs.st.epoch, source_step = (int)r->rs.st.step;
  r->rs.st = fresh;
  run_state_keep_best(&r->rs); // the model so far, should no epoch improve on it
  LOG0("init: the model of %s (after epoch %d, step %d); a new run from step 0\n",
       r->cfg->init_from, source_epoch, source_step);
}

// The run's warmup: said once at the start; a resumed run keeps its checkpoint's, whatever
// --warmup-epochs says now (as it keeps its seed), so that it continues the trajectory it began.
static void warmup_report(const run *r, int resumed) {
  const train_state *st = &r->rs.st;
  const int64_t wanted = warmup_steps_wanted(r);
  if (resumed && st->warmup_steps != wanted)
    LOG0("note: continuing with the checkpoint's warmup of %lld steps (--warmup-epochs %g asks "
         "for %lld)\n", (long long)st->warmup_steps, r->cfg->warmup_epochs, (long long)wanted);
  if (st->warmup_steps > 0)
    LOG0("warmup: the lr climbs linearly over the first %lld steps, from %g to %g\n",
         (long long)st->warmup_steps, optim_lr_at(st, 0), st->lr);
}

// The model and the run state (fresh, or from a checkpoint); returns whether the run resumed.
static int state_init(run *r) {
  const config *cfg = r->cfg;
  model_build(&r->m, cfg->model, cfg->width, cfg->image_size, CIFAR_CLASSES, cfg->dropout,
              cfg->batchnorm);
  if (r->rank == 0) model_print(&r->m, stdout);
  run_state_init_model(&r->rs, &r->m);
  state_fresh(r);
  if (cfg->init_from[0]) init_from(r);
  int resumed = cfg->resume[0] && resume(r);
  if (resumed && r->rs.st.seed != cfg->seed)
    LOG0("note: continuing with the checkpoint's seed %llu (not --seed %llu)\n",
         (unsigned long long)r->rs.st.seed, (unsigned long long)cfg->seed);
  warmup_report(r, resumed);
  return resumed;
}

// The backend's side of the run: the net's buffers, the gradient reducer, the state uploaded.
static void net_setup(run *r) {
  const config *cfg = r->cfg;
  backend *b = r->b;
  int max_n = r->local_batch > cfg->eval_batch ? r->local_batch : cfg->eval_batch;
  device_memory_check(b, &r->m, cfg, max_n, r->world);
  net_init(&r->net, &r->m, b, max_n, (size_t)(cfg->bucket_mb * 1e6 / sizeof(float)) + 1);
  r->net.graphs = cfg->cuda_graphs;
  r->gs = grad_sync_create(r->c, b, b->is_device ? GRAD_SYNC_NCCL : GRAD_SYNC_MPI,
                           r->net.grads, r->m.n_params, cfg->grad_bf16, cfg->comm_timeout);
  if (cfg->batchnorm && cfg->sync_bn) r->net.bn_sync = grad_sync_rank_sum(r->gs); // every rank
  size_t pbytes = r->m.n_params * sizeof(float);
  net_upload_params(&r->net, r->rs.live.params);
  net_upload_buffers(&r->net, r->rs.live.buffers);
  b->ops->upload(b, r->net.adam_m, r->rs.adam_m, pbytes);
  b->ops->upload(b, r->net.adam_v, r->rs.adam_v, pbytes);
}

// The host copy of the model (parameters and buffers) on every rank, which each keeps as the
// best model for the final test. Where a checkpoint will be written (rank 0's writer, which the
// caller has joined), the checkpoint's state goes straight into the writer's snapshot, Adam's
// state there only (so rs.adam_m and v keep what was loaded at start-up), and the live model is
// copied from it: the download and a third of the bytes copied, not the download and a copy.
static void state_download(run *r) {
  if (!r->writer) {
    net_download_params(&r->net, r->rs.live.params);
    net_download_buffers(&r->net, r->rs.live.buffers);
    return;
  }
  backend *b = r->b;
  run_state *snap = ckpt_writer_snapshot(r->writer);
  const size_t pbytes = r->m.n_params * sizeof(float), bbytes = r->m.n_buffers * sizeof(float);
  net_download_params(&r->net, snap->live.params);
  net_download_buffers(&r->net, snap->live.buffers);
  b->ops->download(b, snap->adam_m, r->net.adam_m, pbytes);
  b->ops->download(b, snap->adam_v, r->net.adam_v, pbytes);
  memcpy(r->rs.live.params, snap->live.params, pbytes);
  if (bbytes) memcpy(r->rs.live.buffers, snap->live.buffers, bbytes);
}

// Batch norm's running statistics: with --sync-bn 0 each rank updates its own from its share of
// every batch, so they drift apart; with sync every rank computes the same global statistics,
// but an all-reduce need not round alike on every rank. Before they are used (validation, the
// test) or saved, every rank takes rank 0's, as PyTorch's DistributedDataParallel broadcasts
// its buffers. Training never reads them, so a resumed run, which starts from rank 0's, stays
// bitwise equal to an uninterrupted one.
static void buffers_from_rank0(run *r) {
  if (r->world == 1 || r->m.n_buffers == 0) return;
  net_download_buffers(&r->net, r->rs.live.buffers);
  comm_bcast(r->c, r->rs.live.buffers, r->m.n_buffers * sizeof(float), 0);
  net_upload_buffers(&r->net, r->rs.live.buffers);
}

// ---------------------------------------------------------------------------------------
// Evaluation

// Mean loss and accuracy of `s` with the model on the backend; every rank takes a contiguous
// part, the sums are added up over ranks (all ranks get the result).
static void evaluate(run *r, const split *s, double *loss, double *acc) {
  int lo = (int)((long long)s->n * r->rank / r->world);
  int hi = (int)((long long)s->n * (r->rank + 1) / r->world);
  prep_params pp = r->pp;
  pp.augment = 0;
  net_reset_stats(&r->net);
  for (int i = lo; i < hi; i += r->cfg->eval_batch) {
    int cnt = hi - i < r->cfg->eval_batch ? hi - i : r->cfg->eval_batch;
    net_prep(&r->net, s->d_images, s->d_labels, s->ids + i, cnt, &pp);
    net_forward(&r->net, cnt, 0, 0, 0);
    net_loss(&r->net, cnt, 0);
  }
  double sums[2];
  net_read_stats(&r->net, &sums[0], &sums[1]);
  comm_allreduce_sum_f64(r->c, sums, 2);
  *loss = sums[0] / s->n;
  *acc = sums[1] / s->n;
}

// Global train loss and accuracy sums of the epoch so far (carried over a resume included).
static void epoch_sums(run *r, double sums[2]) {
  net_read_stats(&r->net, &sums[0], &sums[1]);
  comm_allreduce_sum_f64(r->c, sums, 2);
  sums[0] += r->rs.st.epoch_loss_sum;
  sums[1] += r->rs.st.epoch_correct;
}

// ---------------------------------------------------------------------------------------
// Checkpoints and stops

// Starts the periodic checkpoint at (epoch, batch) of st on rank 0's background writer, which
// the caller has joined (the next checkpoint waits for the previous one) and downloaded the
// state into (state_download). With `best` it is also best.bin: the best model's checkpoint is
// the epoch's own (the same state at the same moment, RUN_SECTIONS_ALL), so it is written once
// and best.bin made a link to it (ckpt_writer.h).
static void save_periodic(run *r, int best) {
  const config *cfg = r->cfg;
  if (!r->writer) return;
  char path[1024];
  checkpoint_path(path, sizeof(path), cfg->checkpoint_dir, r->rs.st.epoch, r->rs.st.batch);
  ckpt_writer_snapshot(r->writer)->st = r->rs.st; // the model and Adam: state_download's
  ckpt_writer_start(r->writer, path, cfg->checkpoint_dir, best, cfg->keep);
}

// Rank 0 waits for its checkpoint write in flight, if any; returns 1 when it failed, after
// printing its line (file:line, the message, the rank). Other ranks: 0.
static int write_join(run *r) {
  if (!r->writer || ckpt_writer_join(r->writer) == 0) return 0;
  fprintf(stderr, "%s\n", ckpt_writer_error(r->writer));
  fflush(stderr);
  return 1;
}

// Every rank learns whether rank 0's checkpoint write failed (`failed`: rank 0's verdict, which
// it has printed): the job then ends on every rank alike (exit 1, no MPI_ABORT banner). Called in
// rank 0's I/O window, so the others wait here without a deadline while it writes or joins.
static int write_failed_agreed(run *r, int failed) {
  comm_bcast(r->c, &failed, sizeof(failed), 0);
  return failed;
}

// The reason of a stop, as the RESUMABLE marker gives it (its format is read by scripts and
// tests: "signal N" or "max-steps"; the messages say it in words, stop_cause).
static const char *stop_reason(const run *r, char *buf, size_t len) {
  if (r->stop_sig) snprintf(buf, len, "signal %d", r->stop_sig);
  else snprintf(buf, len, "max-steps");
  return buf;
}

// What caused a stop, for the messages: the signal by name (it may have reached only some
// ranks: every rank learnt of it through stop_agreed), else --max-steps.
static const char *stop_cause(const run *r, char *buf, size_t len) {
  const int sig = r->stop_sig;
  const char *name = sig == SIGTERM ? "SIGTERM"
                     : sig == SIGINT  ? "SIGINT"
                     : sig == SIGUSR1 ? "SIGUSR1"
                                      : "a signal";
  if (sig) snprintf(buf, len, "%s (signal %d) received", name, sig);
  else snprintf(buf, len, "--max-steps %d reached", r->cfg->max_steps);
  return buf;
}

// After a stop's checkpoint (at st's position): rank 0 marks the directory resumable and says
// how to continue.
static void stop_resumable(run *r) {
  const config *cfg = r->cfg;
  if (r->rank != 0) return;
  if (!cfg->checkpoint_dir[0]) {
    LOG0("stopped; without --checkpoint-dir nothing was saved, so there is nothing to resume\n");
    return;
  }
  char path[1024], reason[32];
  checkpoint_path(path, sizeof(path), cfg->checkpoint_dir, r->rs.st.epoch, r->rs.st.batch);
  checkpoint_mark_resumable(cfg->checkpoint_dir, path, stop_reason(r, reason, sizeof(reason)));
  LOG0("stopped, resumable (%s/%s names %s): run again with the same options plus "
       "--resume auto\n", cfg->checkpoint_dir, CKPT_RESUMABLE, strrchr(path, '/') + 1);
}

// Rank 0's background write, seen between steps without waiting: a finished one is reaped (its
// line logged), a failed one returns 1 (joined and reported when every rank has agreed on it).
static int write_poll_failed(run *r) {
  if (!r->writer) return 0;
  const ckpt_writer_state st = ckpt_writer_poll(r->writer);
  if (st == CKPT_WRITER_DONE) ckpt_writer_join(r->writer);
  return st == CKPT_WRITER_FAILED;
}

// How the agreement after a step came out.
typedef enum { STEP_GO, STEP_STOP, STEP_WRITE_FAILED } step_verdict;

// Steps until the next stop agreement: about `every_s` seconds of steps of `step_s` seconds, at
// least one, at most STOP_CHECK_MAX_STEPS (a host that runs ahead of its GPU measures short
// steps); every step when every_s is 0. A pure function of values every rank holds alike.
#define STOP_CHECK_MAX_STEPS 100
static int64_t stop_check_interval(double every_s, double step_s) {
  if (every_s <= 0) return 1;
  if (!(step_s > 0)) return STOP_CHECK_MAX_STEPS;
  const double n = floor(every_s / step_s);
  return n < 1 ? 1 : n > STOP_CHECK_MAX_STEPS ? STOP_CHECK_MAX_STEPS : (int64_t)n;
}

// The stop agreement's schedule from now: the first after the next step.
static void stop_check_start(run *r) {
  r->stop_check_from = r->rs.st.step;
  r->stop_check_step = r->stop_check_from + 1;
  r->stop_check_t = now_s();
}

// Whether to stop after this step (the epoch's `last` or not): a signal (it may have reached
// only some ranks), --max-steps, or a failed background checkpoint write (rank 0's). --max-steps
// is each rank's own count, exact. The rest needs one reduction, which is not taken after every
// step (a collective that every rank waits for) but at steps every rank computes alike: the
// epoch's last, --max-steps', and one about every --stop-check seconds, the interval in steps
// following from the slowest rank's step time over the last interval, which the reduction
// carries (so every rank derives the same next step; after every step when a step is longer).
// A stop then lands within about --stop-check seconds or one step, on the same step on every
// rank; what is computed never depends on it, so the trajectory is the same (tests/test_mpi.sh).
// A failed write is reported (its line, by rank 0) and ends the run on every rank.
static step_verdict stop_agreed(run *r, int last) {
  const config *cfg = r->cfg;
  const int64_t step = r->rs.st.step;
  const int max_steps = cfg->max_steps && step >= cfg->max_steps;
  if (!last && !max_steps && step < r->stop_check_step) return STEP_GO;
  const double t = now_s();
  double stop[4] = {stop_signal, max_steps, write_poll_failed(r),
                    (t - r->stop_check_t) / (double)(step - r->stop_check_from)};
  comm_allreduce_max_f64(r->c, stop, 4);
  r->stop_check_step = step + stop_check_interval(cfg->stop_check, stop[3]);
  r->stop_check_from = step;
  r->stop_check_t = t;
  if (stop[2] > 0) {
    write_join(r); // rank 0: its line
    return STEP_WRITE_FAILED;
  }
  int agreed = stop[0] > 0 || stop[1] > 0;
  if (agreed) r->stop_sig = (int)stop[0];
  return agreed ? STEP_STOP : STEP_GO;
}

// ---------------------------------------------------------------------------------------
// One epoch

// The clock of the epoch in progress, in this process and (carried) before a resume.
typedef struct epoch_clock {
  double t_start;  // when this process began the epoch
  double carried;  // time spent on it before a resume
  int first_batch; // the batch this process began it at
  double t_log;    // the last progress line, and the images trained since
  int log_images;
  double log_loss_sum; // the epoch's global loss sum at the last progress line
  double window_loss;  // the mean training loss since the line before the last one
} epoch_clock;

// How train_epoch ended.
typedef enum {
  EPOCH_DONE,        // every batch trained
  EPOCH_DONE_STOP,   // every batch trained, and a stop (signal, --max-steps) was requested
  EPOCH_INTERRUPTED, // stopped inside the epoch; the exact position is checkpointed
  EPOCH_DIVERGED,    // the training loss exploded: stopped, nothing of this state saved
  EPOCH_WRITE_FAILED, // a background checkpoint write failed (reported): the run ends, exit 1
} epoch_end;

// The divergence guard: a mean training loss over a logging window above this (a million times
// the loss of a uniform guess over the 10 classes, ln 10) or not finite means the run has
// diverged. A learning model starts near ln 10 and goes down; past this bound its logits
// differ by millions and Adam will not bring it back, while a NaN never goes away.
#define DIVERGED_LOSS (1e6 * 2.302585092994046)

static int epoch_batches(const run *r) {
  return (int)optim_steps_per_epoch(r->data.train.n, r->cfg->batch);
}

// Begins (or continues, after a resume) epoch st.epoch: its permutation, its flips, its clock.
static void epoch_begin(run *r, epoch_clock *clk) {
  const train_state *st = &r->rs.st;
  cifar10_epoch_order(r->order, r->data.train.ids, r->data.train.n, st->seed, st->epoch);
  r->pp.epoch = (uint32_t)st->epoch;
  clk->first_batch = st->batch;
  clk->carried = st->epoch_time_s;
  clk->t_start = now_s();
  net_reset_stats(&r->net);
  clk->t_log = clk->t_start;
  clk->log_images = 0;
  clk->log_loss_sum = st->epoch_loss_sum; // a resumed epoch's sums carry its loss so far
}

// One optimizer step on global batch st.batch: the `count` images from `start` of the
// epoch's order, this rank's share of them.
static void step_take(run *r, int start, int count) {
  const config *cfg = r->cfg;
  train_state *st = &r->rs.st;
  int mine = cifar10_shard(r->local, r->order + start, count, r->rank, r->world);
  train_step ts = {.d_images = r->data.train.d_images, .d_labels = r->data.train.d_labels,
                   .h_ids = r->local, .n = mine, .grad_scale = 1.0f / count, .pp = &r->pp,
                   .seed = st->seed,
                   .step = (uint32_t)st->step, // keys this step's dropout masks
                   // the warmup scales the lr only; Adam's t counts every step
                   .adam = {optim_lr_at(st, st->step), cfg->beta1, cfg->beta2, cfg->eps,
                            cfg->weight_decay, (int)st->step + 1, cfg->adamw},
                   .full = count == cfg->batch};
  net_train_step(&r->net, &ts, r->gs);
  st->step++;
}

// The progress line and the step's metrics, `done` images into the epoch; lr is the one the
// step just taken used (the warmup's, while it lasts). Leaves the epoch's global sums so far in
// sums and returns its time so far.
static double progress_log(run *r, epoch_clock *clk, double done, double sums[2]) {
  const config *cfg = r->cfg;
  const train_state *st = &r->rs.st;
  const int n_train = r->data.train.n;
  const float lr = optim_lr_at(st, st->step - 1);
  double t = now_s();
  epoch_sums(r, sums);
  double ips = clk->log_images / (t - clk->t_log + 1e-9);
  double elapsed = clk->carried + (t - clk->t_start);
  double eta = elapsed / (done - clk->first_batch * (double)cfg->batch) * (n_train - done);
  clk->window_loss = (sums[0] - clk->log_loss_sum) / clk->log_images;
  clk->log_loss_sum = sums[0];
  log_progress("epoch %d/%d step %d/%d loss %.4f acc %.4f %.0f img/s lr %.3g eta %.0fs",
               st->epoch + 1, cfg->epochs, st->batch + 1, epoch_batches(r), sums[0] / done,
               sums[1] / done, ips, lr, eta);
  // A non-finite loss would print as nan or inf, which is no JSON: the divergence guard that
  // follows reports it instead.
  if (isfinite(sums[0]))
    metrics_write("step", "\"epoch\": %d, \"batch\": %d, \"step\": %lld, \"train_loss\": %.6f, "
                "\"train_acc\": %.6f, \"images_per_s\": %.2f, \"lr\": %.6g",
                st->epoch + 1, st->batch + 1, (long long)st->step, sums[0] / done,
                sums[1] / done, ips, lr);
  clk->t_log = t;
  clk->log_images = 0;
  return elapsed;
}

// The divergence guard, after a progress line: whether the window's mean training loss is not
// finite or above DIVERGED_LOSS on any rank (the sums are reduced, so every rank sees the same
// values up to the reduction's rounding; one more reduction makes the verdict the same). Rank 0
// says so in one line.
static int diverged(run *r, const epoch_clock *clk) {
  const double loss = clk->window_loss;
  double bad = !isfinite(loss) || loss > DIVERGED_LOSS;
  comm_allreduce_max_f64(r->c, &bad, 1);
  if (bad == 0) return 0;
  const train_state *st = &r->rs.st;
  if (r->rank == 0) {
    fprintf(stderr, "vgg_dist: error: training diverged at epoch %d, step %lld: mean training "
            "loss %g since the last progress line (not finite or above %.3g); stopped without "
            "a checkpoint of this state (a smaller --lr?)\n", st->epoch + 1, (long long)st->step,
            loss, DIVERGED_LOSS);
    fflush(stderr);
  }
  return 1;
}

// The end of a stop, in rank 0's I/O window (the others wait for it without a deadline: without
// it they would go on to leave the job, and on GPUs wait for rank 0 inside ncclCommFinalize,
// whose settling counts --comm-timeout, so a slow file system would end a clean stop as a hung
// peer; after it every rank finalizes NCCL together): the write in flight joined, then (mid:
// a mid-epoch stop) the stop's own checkpoint downloaded, written and joined, then the RESUMABLE
// marker, which only ever names a whole checkpoint. Returns 1 (on every rank) when a write
// failed: no marker, the run ends with its error.
static int stop_checkpoint(run *r, int mid) {
  rank0_io_begin(r);
  int failed = write_join(r);
  if (mid) {
    state_download(r);
    if (!failed) {
      save_periodic(r, 0);
      failed = write_join(r);
    }
  }
  if (!failed) stop_resumable(r);
  failed = write_failed_agreed(r, failed);
  rank0_io_end(r);
  return failed;
}

// A stop inside the epoch (preemption, --max-steps) after batch st.batch: the checkpoint
// holds the exact position and the epoch's sums and time so far. Returns 1 when a checkpoint
// write failed.
static int stop_mid_epoch(run *r, const double sums[2], double elapsed) {
  train_state *st = &r->rs.st;
  st->epoch_loss_sum = sums[0];
  st->epoch_correct = sums[1];
  st->epoch_time_s = elapsed;
  st->batch++;
  char cause[64];
  LOG0("stopping after step %lld (%s)%s%s\n", (long long)st->step,
       stop_cause(r, cause, sizeof(cause)),
       r->cfg->checkpoint_dir[0] ? ": writing a mid-epoch checkpoint" : "",
       r->stop_sig == SIGINT ? " (interrupt again to exit at once)" : "");
  buffers_from_rank0(r);
  return stop_checkpoint(r, 1);
}

// Trains the remaining batches of epoch st.epoch.
static epoch_end train_epoch(run *r, epoch_clock *clk) {
  const config *cfg = r->cfg;
  train_state *st = &r->rs.st;
  const int B = cfg->batch, n_train = r->data.train.n, n_batches = epoch_batches(r);
  epoch_begin(r, clk);
  for (; st->batch < n_batches; st->batch++) {
    int start = st->batch * B, count = n_train - start < B ? n_train - start : B;
    step_take(r, start, count);
    clk->log_images += count;
    const int last = st->batch + 1 == n_batches;
    const step_verdict verdict = stop_agreed(r, last);
    if (verdict == STEP_WRITE_FAILED) return EPOCH_WRITE_FAILED;
    const int stop = verdict == STEP_STOP;
    if (st->step % cfg->log_every == 0 || last || stop) {
      double sums[2];
      double elapsed = progress_log(r, clk, start + count, sums);
      if (diverged(r, clk)) return EPOCH_DIVERGED; // before any checkpoint of this state
      if (stop && !last)
        return stop_mid_epoch(r, sums, elapsed) ? EPOCH_WRITE_FAILED : EPOCH_INTERRUPTED;
    }
    if (stop) { // at the epoch's last batch: the caller finishes the epoch, then stops
      st->batch++;
      return EPOCH_DONE_STOP;
    }
  }
  return EPOCH_DONE;
}

// ---------------------------------------------------------------------------------------
// After an epoch: validation, rank-0 decisions, the report, the checkpoints

typedef struct epoch_result {
  double train_loss, train_acc, val_loss, val_acc;
  double time_s, images_per_s;
  int best, reduced; // the best epoch so far; the learning rate was reduced
} epoch_result;

// Rank 0 decides on the validation loss (learning rate, early stopping, best model; a warmup
// epoch is the plateau scheduler's and early stopping's to ignore, see optim.h); its
// train_state becomes everyone's, and the decisions follow from it.
static void decide(run *r, epoch_result *e) {
  const config *cfg = r->cfg;
  train_state *st = &r->rs.st;
  const float lr_before = st->lr;
  if (r->rank == 0) {
    plateau_params pl = {cfg->lr_factor, cfg->lr_threshold, cfg->min_lr, cfg->lr_patience};
    const int64_t first_step = st->step - st->batch; // every batch of the epoch is taken
    optim_epoch_end(st, e->val_loss, e->val_acc, first_step, &pl);
  }
  comm_bcast(r->c, st, sizeof(*st), 0);
  e->best = st->best_epoch == st->epoch;
  e->reduced = st->lr < lr_before;
}

// lr: the one the next step takes, after this epoch's decision (and the warmup's, while it lasts).
static void epoch_report(run *r, const epoch_result *e) {
  const config *cfg = r->cfg;
  const train_state *st = &r->rs.st;
  const float lr = optim_lr_at(st, st->step);
  LOG0("epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.3g | %.1fs, %.0f img/s, %.1f GFLOP/s%s%s\n",
       st->epoch + 1, cfg->epochs, e->train_loss, e->train_acc, e->val_loss, e->val_acc, lr,
       e->time_s, e->images_per_s, e->images_per_s * model_train_flops(&r->m) * 1e-9,
       e->best ? " | best" : "", e->reduced ? " | lr reduced" : "");
  metrics_write("epoch", "\"epoch\": %d, \"train_loss\": %.6f, \"train_acc\": %.6f, \"val_loss\": %.6f, "
                "\"val_acc\": %.6f, \"lr\": %.6g, \"images_per_s\": %.2f, \"time_s\": %.3f, \"best\": %s",
                st->epoch + 1, e->train_loss, e->train_acc, e->val_loss, e->val_acc, lr,
                e->images_per_s, e->time_s, e->best ? "true" : "false");
}

// The checkpoints at the end of an epoch, which name the start of the next one: the best
// model (every rank keeps it for the final test; rank 0 links best.bin to the periodic one)
// and the periodic one, written once, in the background: rank 0 waits for the previous write,
// downloads the state into its writer's snapshot, and training goes on while it writes.
// Returns 1 (on every rank) when the previous write failed.
static int epoch_checkpoints(run *r, int best) {
  const config *cfg = r->cfg;
  train_state *st = &r->rs.st;
  st->epoch++;
  st->batch = 0;
  st->epoch_loss_sum = st->epoch_correct = st->epoch_time_s = 0;
  const double t0 = now_s();
  // The others wait in the broadcast below, not inside the next step's all-reduce, where the
  // NCCL watchdog would count rank 0's joining and copying against --comm-timeout; and it has
  // no deadline for them (rank0_io_begin).
  rank0_io_begin(r);
  int failed = write_join(r);
  state_download(r);
  if (best) {
    run_state_keep_best(&r->rs);
    r->best_lost = 0; // better than the lost one too: its loss was the resumed best
  }
  if (!failed) save_periodic(r, best);
  failed = write_failed_agreed(r, failed);
  rank0_io_end(r);
  // What every rank waited for the end-of-epoch checkpoints (the previous write's end, the
  // download, the copy for the writer): the stall the benchmark in BENCHMARKS.md measures.
  if (cfg->checkpoint_dir[0] && !failed)
    LOG0("checkpoints: epoch %d: training paused %.2f s (written in the background)\n", st->epoch,
         now_s() - t0);
  return failed;
}

// After the last batch of an epoch: validation, decisions, the report, the checkpoints.
// Returns 1 on an early stop; sets *write_failed when a background checkpoint write failed.
static int validate_and_decide(run *r, const epoch_clock *clk, int *write_failed) {
  const config *cfg = r->cfg;
  const train_state *st = &r->rs.st;
  const int n_train = r->data.train.n;
  epoch_result e;
  double sums[2];
  epoch_sums(r, sums);
  e.train_loss = sums[0] / n_train;
  e.train_acc = sums[1] / n_train;
  e.time_s = clk->carried + now_s() - clk->t_start;
  e.images_per_s = (n_train - (double)clk->first_batch * cfg->batch) / (now_s() - clk->t_start + 1e-9);
  buffers_from_rank0(r);
  evaluate(r, &r->data.val, &e.val_loss, &e.val_acc);
  decide(r, &e);
  const int early = early_stop_due(st, cfg->early_stop);
  epoch_report(r, &e);
  *write_failed = epoch_checkpoints(r, e.best);
  if (early && !*write_failed)
    LOG0("early stop: no better validation loss for %d epochs (best %.4f after epoch %d)\n",
         cfg->early_stop, st->best_val_loss, st->best_epoch + 1);
  return early;
}

// ---------------------------------------------------------------------------------------
// The run

// How the epochs ended.
typedef enum { RUN_FINISHED, RUN_STOPPED, RUN_DIVERGED, RUN_WRITE_FAILED } run_end;

// A stop signal that came during start-up (the handlers are installed before MPI_Init, see
// main.c), agreed by every rank once start-up is done: the run then stops before its first step,
// as any stop does (a checkpoint of where it stands: a fresh run's step 0, or the resumed
// position; RESUMABLE naming it; exit 0), so RESUMABLE keeps its meaning for scripts and a
// resume continues the very trajectory. One reduction, once per run.
static int startup_stop_agreed(run *r) {
  double sig = stop_signal;
  comm_allreduce_max_f64(r->c, &sig, 1);
  if (sig > 0) r->stop_sig = (int)sig;
  return sig > 0;
}

// The epochs: finished (all of them, or an early stop), stopped (a signal or --max-steps:
// resumable), diverged, or ended by a failed checkpoint write.
static run_end train_epochs(run *r) {
  const config *cfg = r->cfg;
  int memory_reported = 0;
  epoch_clock clk;
  if (startup_stop_agreed(r)) {
    char cause[64];
    LOG0("stopping before the first step (%s during start-up)%s\n",
         stop_cause(r, cause, sizeof(cause)),
         cfg->checkpoint_dir[0] ? ": writing a checkpoint of the starting state" : "");
    return stop_checkpoint(r, 1) ? RUN_WRITE_FAILED : RUN_STOPPED;
  }
  stop_check_start(r);
  // A resumed run whose early stop is already due (a stop came in its last epoch) only tests.
  while (r->rs.st.epoch < cfg->epochs && !early_stop_due(&r->rs.st, cfg->early_stop)) {
    epoch_end how = train_epoch(r, &clk);
    if (how == EPOCH_INTERRUPTED) return RUN_STOPPED;
    if (how == EPOCH_DIVERGED) return RUN_DIVERGED;
    if (how == EPOCH_WRITE_FAILED) return RUN_WRITE_FAILED;
    int write_failed = 0;
    int early = validate_and_decide(r, &clk, &write_failed);
    if (write_failed) return RUN_WRITE_FAILED;
    if (!memory_reported) {
      // Every buffer, plan workspace and graph exists once a training step and an evaluation
      // have run: this is the run's peak (the CUDA context and libraries included).
      device_memory_report(r->b);
      memory_reported = 1;
    }
    if (how == EPOCH_DONE_STOP) {
      char cause[64];
      LOG0("stopping at the end of epoch %d (%s)\n", r->rs.st.epoch, stop_cause(r, cause, sizeof(cause)));
      return stop_checkpoint(r, 0) ? RUN_WRITE_FAILED : RUN_STOPPED; // the epoch's is in flight
    }
    if (early) break;
  }
  return RUN_FINISHED;
}

// The final test with the best model (while the last checkpoint is written).
static void final_test(run *r) {
  const train_state *st = &r->rs.st;
  const host_model *tested = r->best_lost ? &r->rs.live : &r->rs.best;
  net_upload_params(&r->net, tested->params);
  net_upload_buffers(&r->net, tested->buffers);
  double test_loss, test_acc;
  evaluate(r, &r->data.test, &test_loss, &test_acc);
  if (r->best_lost)
    LOG0("test (last model, epoch %d): loss %.4f acc %.4f on %d images (%s)\n", st->epoch,
         test_loss, test_acc, r->data.test.n, r->best_why);
  else
    LOG0("test (best model, epoch %d): loss %.4f acc %.4f on %d images\n", st->best_epoch + 1,
         test_loss, test_acc, r->data.test.n);
  // "model": which one was tested (the best epoch's, or the last when best.bin was unusable).
  metrics_write("test", "\"test_loss\": %.6f, \"test_acc\": %.6f, \"best_epoch\": %d, \"images\": %d, "
                "\"model\": \"%s\"", test_loss, test_acc, st->best_epoch + 1, r->data.test.n,
                r->best_lost ? "last" : "best");
}

// Every run's end: the write in flight (a finished run's last checkpoint, a diverged run's
// earlier good one) joined in rank 0's I/O window, before anything leaves; returns 1 (on every
// rank) when it failed. Then a finished run, with its checkpoints on disk, has nothing left to
// resume.
static int run_settle(run *r, run_end how) {
  const config *cfg = r->cfg;
  rank0_io_begin(r);
  const int failed = write_failed_agreed(r, write_join(r));
  rank0_io_end(r);
  if (!failed && how == RUN_FINISHED && r->rank == 0 && cfg->checkpoint_dir[0] &&
      checkpoint_clear_resumable(cfg->checkpoint_dir))
    LOG0("finished: removed %s/%s\n", cfg->checkpoint_dir, CKPT_RESUMABLE);
  return failed;
}

// One line per temp file an interrupted checkpoint write left behind (rank 0, at start-up).
static void report_stale_tmp(const char *path, long pid) {
  LOG0("checkpoint: removed stale %s (an interrupted write; process %ld is gone)\n", path, pid);
}

// Everything before the first step: the options checked and printed, the checkpoint directory,
// the backend, the data, the state (fresh or resumed), the net, the metrics file, the batch
// assembly.
static void run_init(run *r, const config *cfg, comm *c) {
  *r = (run){.cfg = cfg, .c = c, .rank = comm_rank(c), .world = comm_world(c)};
  config_validate_world(cfg, r->world);
  if (r->rank == 0) config_print(cfg, stdout);
  if (r->rank == 0 && cfg->checkpoint_dir[0]) {
    checkpoint_dir_create(cfg->checkpoint_dir);
    checkpoint_remove_stale_tmp(cfg->checkpoint_dir, report_stale_tmp); // before we write any
  }
  // Before the data: an unwritable metrics file is found at once, not after the loading.
  metrics_open(cfg->metrics);
  r->b = device_backend_create(cfg, c);
  r->local_batch = cfg->batch / r->world;
  data_load(r);
  int resumed = state_init(r);
  data_split(r);
  if (!resumed) normalisation(r);
  net_setup(r);
  if (!resumed) metrics_truncate(); // a fresh run's file starts empty; a resumed one continues
  r->pp = (prep_params){.size = cfg->image_size, .augment = 1, .flip_p = cfg->flip_p,
                        .seed = r->rs.st.seed};
  memcpy(r->pp.mean, r->rs.st.mean, sizeof(r->pp.mean));
  memcpy(r->pp.std, r->rs.st.std, sizeof(r->pp.std));
  r->order = xmalloc(sizeof(int32_t) * r->data.train.n);
  r->local = xmalloc(sizeof(int32_t) * r->local_batch);
  // The writer's snapshot: one more host copy of the checkpoint on rank 0, allocated now.
  if (r->rank == 0 && cfg->checkpoint_dir[0]) r->writer = ckpt_writer_create(&r->rs.meta);
}

// In reverse order of run_init.
static void run_free(run *r) {
  ckpt_writer_free(r->writer); // joined already (run_settle)
  free(r->local);
  free(r->order);
  metrics_close();
  net_release_graph(&r->net); // before the communicator its NCCL work belongs to
  grad_sync_free(r->gs);
  net_free(&r->net);
  run_state_free(&r->rs);
  data_free(r);
  r->b->ops->destroy(r->b);
}

int train_run(const config *cfg, comm *c) {
  run r;
  run_init(&r, cfg, c);
  run_end how = train_epochs(&r);
  if (how == RUN_FINISHED) final_test(&r);
  if (how != RUN_WRITE_FAILED && run_settle(&r, how)) how = RUN_WRITE_FAILED;
  run_free(&r);
  // Every rank agreed on a divergence or a failed write: each exits 1, after MPI_Finalize.
  return how == RUN_DIVERGED || how == RUN_WRITE_FAILED ? 1 : 0;
}
