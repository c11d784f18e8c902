// train.c - the epoch loop (see train.h).
//
// Every rank holds the same parameters and takes the same Adam step: the global batch b of an
// epoch is a fixed slice of that epoch's permutation, each rank computes gradients for its
// interleaved share scaled by 1 / (global batch size), and the gradient buffers are summed.
// Since every random decision is keyed by (seed, epoch/step, sample id), the trajectory does
// not depend on the world size (up to float summation order).
// Rank 0 makes the decisions after validation (learning rate, early stop, best model) and
// broadcasts its train_state, so all ranks act alike. Checkpoints are written by rank 0 only.
// A stop (a signal, --max-steps) ends the run after a step with a checkpoint and the
// directory's RESUMABLE marker; a finished run (all epochs, early stopping) removes the marker.
#include "train.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "cifar10.h"
#include "log.h"
#include "model.h"
#include "net.h"
#include "optim.h"

// The first stop request's signal (SIGTERM, SIGINT or SIGUSR1); 0 while none came.
static volatile sig_atomic_t stop_signal;

// mkdir -p; a path that exists and is a directory is fine.
static void make_dirs(const char *path) {
  char buf[1024];
  snprintf(buf, sizeof(buf), "%s", path);
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || *p == 0) {
      char c = *p;
      *p = 0;
      struct stat sb;
      if (mkdir(buf, 0755) != 0 && !(errno == EEXIST && stat(buf, &sb) == 0 && S_ISDIR(sb.st_mode)))
        DIE_USAGE("--checkpoint-dir: cannot create %s: %s", buf, strerror(errno));
      *p = c;
      if (!c) break;
    }
  }
}

// The first signal asks for a stop after the current step (every rank learns of it through the
// step's reduction). A SIGINT while a stop is pending ends this process at once by the default
// action (a second Ctrl-C), and mpirun then ends the other ranks. A repeated SIGTERM does not:
// a rank may get one from a scheduler and another from mpirun, and must still checkpoint.
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

static void stop_signals_install(void) {
  const int sigs[] = {SIGTERM, SIGINT, SIGUSR1};
  struct sigaction sa = {0};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  const size_t n = sizeof(sigs) / sizeof(sigs[0]);
  for (size_t i = 0; i < n; i++) sigaddset(&sa.sa_mask, sigs[i]); // one handler at a time
  for (size_t i = 0; i < n; i++) CHECK_POSIX(sigaction(sigs[i], &sa, NULL));
}

typedef struct split {
  const uint8_t *d_images, *d_labels; // backend memory
  const int32_t *ids;                 // host
  int n;
} split;

typedef struct run {
  const config *cfg;
  comm *c;
  int rank, world;
  backend *b;
  model m;
  net net;
  grad_sync *gs;
  ckpt_meta meta;
  train_state st;
  float *h_params, *h_m, *h_v, *h_best;
  int stop_sig; // once a stop is agreed: the largest signal number any rank got, 0 = --max-steps
} run;

static backend *backend_choose(const config *cfg, comm *c) {
  int gpus = cfg->device == DEVICE_CPU ? 0 : backend_cuda_device_count();
  if (cfg->device == DEVICE_CUDA || (cfg->device == DEVICE_AUTO && gpus > 0)) {
    // None visible: backend_cuda_create says why (no device, the driver's reason, or a build
    // without CUDA) and exits.
    if (gpus == 0) return backend_cuda_create(0, cfg->precision);
    if (comm_local_size(c) > gpus)
      DIE_USAGE("%d ranks on this node but only %d GPUs: one rank per GPU (use fewer ranks)",
                comm_local_size(c), gpus);
    LOG0("device: cuda (%d GPUs visible on rank 0's node, %d ranks there), precision %s, "
         "CUDA graphs %s, conv autotune %s\n", gpus, comm_local_size(c),
         config_precision_name(cfg->precision), cfg->cuda_graphs ? "on (full batches)" : "off",
         cfg->autotune == AUTOTUNE_FIRST ? "first (untimed)" : "fastest");
    backend *b = backend_cuda_create(comm_local_rank(c) % gpus, cfg->precision);
    backend_cuda_set_autotune(b, cfg->autotune);
    return b;
  }
  if (cfg->precision != PREC_FP32) DIE_USAGE("--precision %s needs --device cuda", config_precision_name(cfg->precision));
  // Threads per rank: --threads, else OMP_NUM_THREADS, else the node's cores shared by its
  // ranks (more would oversubscribe the cores and stall OpenMP's barriers).
  int threads = cfg->threads;
  const char *omp = getenv("OMP_NUM_THREADS");
  if (threads == 0 && !(omp && *omp)) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    threads = cores > comm_local_size(c) ? (int)(cores / comm_local_size(c)) : 1;
  }
  LOG0("device: cpu (%s), %d ranks, %d threads each\n",
       cfg->device == DEVICE_CPU ? "requested" : "no CUDA device visible", comm_world(c),
       threads ? threads : atoi(omp));
  return backend_cpu_create(threads);
}

// Mean loss and accuracy of `s` with the current parameters; every rank takes a contiguous
// part, the sums are added up over ranks (all ranks get the result).
static void evaluate(run *r, const split *s, const prep_params *base, double *loss, double *acc) {
  int lo = (int)((long long)s->n * r->rank / r->world), hi = (int)((long long)s->n * (r->rank + 1) / r->world);
  prep_params pp = *base;
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

// Parameters to the host on every rank (each keeps the best model for the final test); Adam's
// state only where a checkpoint will be written.
static void state_download(run *r) {
  backend *b = r->b;
  size_t bytes = r->m.n_params * sizeof(float);
  b->ops->download(b, r->h_params, r->net.params, bytes);
  if (r->rank != 0 || !r->cfg->checkpoint_dir[0]) return;
  b->ops->download(b, r->h_m, r->net.adam_m, bytes);
  b->ops->download(b, r->h_v, r->net.adam_v, bytes);
}

static void save_checkpoint(run *r, const char *path) {
  if (r->rank != 0) return;
  checkpoint_write(path, &r->meta, &r->st, r->h_params, r->h_m, r->h_v);
}

// Periodic checkpoint at (epoch, batch) of st; callers have downloaded the state.
static void save_periodic(run *r) {
  const config *cfg = r->cfg;
  if (!cfg->checkpoint_dir[0] || r->rank != 0) return;
  char path[1024];
  checkpoint_path(path, sizeof(path), cfg->checkpoint_dir, r->st.epoch, r->st.batch);
  save_checkpoint(r, path);
  checkpoint_prune(cfg->checkpoint_dir, cfg->keep);
  LOG0("checkpoint: %s\n", path);
}

// The reason of a stop, as the RESUMABLE marker and the messages give it.
static const char *stop_reason(const run *r, char *buf, size_t len) {
  if (r->stop_sig) snprintf(buf, len, "signal %d", r->stop_sig);
  else snprintf(buf, len, "max-steps");
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
  checkpoint_path(path, sizeof(path), cfg->checkpoint_dir, r->st.epoch, r->st.batch);
  checkpoint_mark_resumable(cfg->checkpoint_dir, path, stop_reason(r, reason, sizeof(reason)));
  LOG0("stopped, resumable (%s/%s names %s): run again with the same options plus "
       "--resume auto\n", cfg->checkpoint_dir, CKPT_RESUMABLE, strrchr(path, '/') + 1);
}

// Rank 0 reads the checkpoint and broadcasts it, so only rank 0 needs the file.
static int resume(run *r) {
  const config *cfg = r->cfg;
  char path[1024] = "";
  int found = 1;
  if (r->rank == 0) {
    if (strcmp(cfg->resume, "auto") == 0)
      found = checkpoint_latest(cfg->checkpoint_dir, path, sizeof(path)) == 0;
    else
      snprintf(path, sizeof(path), "%s", cfg->resume);
  }
  comm_bcast(r->c, &found, sizeof(found), 0);
  if (!found) {
    LOG0("resume: no checkpoint in %s yet, starting fresh\n", cfg->checkpoint_dir);
    return 0;
  }
  int ok = 0;
  char err[512] = "";
  if (r->rank == 0)
    ok = checkpoint_read(path, &r->meta, &r->st, r->h_params, r->h_m, r->h_v, err, sizeof(err)) == 0;
  comm_bcast(r->c, &ok, sizeof(ok), 0);
  if (!ok) {
    // Rank 0 says why and aborts the job; the others wait for that instead of repeating it.
    if (r->rank == 0) DIE_DATA("--resume: %s", err);
    comm_barrier(r->c);
    FATAL("rank 0 refused the checkpoint but the job did not end");
  }
  size_t bytes = r->m.n_params * sizeof(float);
  comm_bcast(r->c, &r->st, sizeof(r->st), 0);
  comm_bcast(r->c, r->h_params, bytes, 0);
  comm_bcast(r->c, r->h_m, bytes, 0);
  comm_bcast(r->c, r->h_v, bytes, 0);
  // The best model so far, for the final test: best.bin beside the checkpoint when present.
  int have_best = 0;
  if (r->rank == 0 && cfg->checkpoint_dir[0]) {
    char best[1024];
    snprintf(best, sizeof(best), "%s/best.bin", cfg->checkpoint_dir);
    have_best = checkpoint_read(best, &r->meta, NULL, r->h_best, NULL, NULL, err, sizeof(err)) == 0;
  }
  comm_bcast(r->c, &have_best, sizeof(have_best), 0);
  if (have_best) comm_bcast(r->c, r->h_best, bytes, 0);
  else memcpy(r->h_best, r->h_params, bytes);
  LOG0("resumed from %s: epoch %d, batch %d, step %lld, lr %g\n", path, r->st.epoch + 1,
       r->st.batch, (long long)r->st.step, r->st.lr);
  return 1;
}

static void normalisation(run *r, const cifar10 *train, const int32_t *train_ids, int n_train) {
  const config *cfg = r->cfg;
  if (cfg->have_norm) {
    memcpy(r->st.mean, cfg->mean, sizeof(r->st.mean));
    memcpy(r->st.std, cfg->std, sizeof(r->st.std));
    return;
  }
  cifar10_channel_stats(r->st.mean, r->st.std, train, train_ids, n_train);
  LOG0("normalisation (train split's own): mean %.4f %.4f %.4f, std %.4f %.4f %.4f\n",
       r->st.mean[0], r->st.mean[1], r->st.mean[2], r->st.std[0], r->st.std[1], r->st.std[2]);
}

// What the net's buffers will take, said before allocating them; on a GPU where they do not
// fit, a clear error (with the figure and what to change) instead of a failed allocation.
// Library workspaces (cuDNN plans, cuBLAS, NCCL) come on top and are sized during the first step.
static void memory_check(run *r, int max_n, int local_batch) {
  backend *b = r->b;
  double gib = 1024.0 * 1024.0 * 1024.0;
  size_t need = net_memory_bytes(&r->m, max_n, b->act_bytes);
  size_t state = net_memory_bytes(&r->m, 0, b->act_bytes); // what does not grow with the batch
  LOG0("memory per rank: %.2f GiB (parameters, gradients and Adam state %.2f GiB; activations "
       "for %d images %.2f GiB), plus library workspaces\n", need / gib, state / gib, max_n,
       (need - state) / gib);
  if (!b->is_device) return;
  size_t avail = backend_cuda_memory_free(b);
  if (need > avail)
    DIE_USAGE("the model's buffers need %.2f GiB but only %.2f GiB of GPU memory are free: use "
              "a smaller per-GPU batch (--batch %d over %d ranks is %d per GPU; --eval-batch %d) "
              "or more ranks", need / gib, avail / gib, r->cfg->batch, r->world, local_batch,
              r->cfg->eval_batch);
}

typedef struct epoch_ctx {
  const int32_t *train_ids;
  int n_train;
  const uint8_t *d_images, *d_labels;
  const split *val;
  prep_params *pp;
  int32_t *order, *local; // scratch: the epoch's permutation, this rank's share of a batch
  double t_start, carried_time;
  int first_batch;
} epoch_ctx;

// Global train loss and accuracy sums of the epoch so far (carried over a resume included).
static void epoch_sums(run *r, double sums[2]) {
  net_read_stats(&r->net, &sums[0], &sums[1]);
  comm_allreduce_sum_f64(r->c, sums, 2);
  sums[0] += r->st.epoch_loss_sum;
  sums[1] += r->st.epoch_correct;
}

// How train_epoch ended.
typedef enum {
  EPOCH_DONE,        // every batch trained
  EPOCH_DONE_STOP,   // every batch trained, and a stop (signal, --max-steps) was requested
  EPOCH_INTERRUPTED, // stopped inside the epoch; the exact position is checkpointed
} epoch_end;

// Trains the remaining batches of epoch st.epoch.
static epoch_end train_epoch(run *r, epoch_ctx *e) {
  const config *cfg = r->cfg;
  train_state *st = &r->st;
  int B = cfg->batch, n_batches = (e->n_train + B - 1) / B;
  cifar10_epoch_order(e->order, e->train_ids, e->n_train, st->seed, st->epoch);
  e->pp->epoch = (uint32_t)st->epoch;
  e->first_batch = st->batch;
  e->carried_time = st->epoch_time_s;
  e->t_start = now_s();
  net_reset_stats(&r->net);
  double t_log = e->t_start;
  int log_images = 0;
  for (; st->batch < n_batches; st->batch++) {
    int start = st->batch * B, count = e->n_train - start < B ? e->n_train - start : B;
    int mine = cifar10_shard(e->local, e->order + start, count, r->rank, r->world);
    train_step ts = {.d_images = e->d_images, .d_labels = e->d_labels, .h_ids = e->local,
                     .n = mine, .grad_scale = 1.0f / count, .pp = e->pp, .seed = st->seed,
                     .step = (uint32_t)st->step, // keys this step's dropout masks
                     .adam = {st->lr, cfg->beta1, cfg->beta2, cfg->eps, cfg->weight_decay,
                              (int)st->step + 1, cfg->adamw},
                     .full = count == B};
    net_train_step(&r->net, &ts, r->gs);
    st->step++;
    log_images += count;

    // Every rank must agree on stopping: a signal may reach only some of them.
    double stop[2] = {stop_signal, cfg->max_steps && st->step >= cfg->max_steps};
    comm_allreduce_max_f64(r->c, stop, 2);
    int flag = stop[0] > 0 || stop[1] > 0;
    if (flag) r->stop_sig = (int)stop[0];
    int last = st->batch + 1 == n_batches;
    if (st->step % cfg->log_every == 0 || last || flag) {
      double sums[2], t = now_s(), done = start + count;
      epoch_sums(r, sums);
      double ips = log_images / (t - t_log + 1e-9);
      double elapsed = e->carried_time + (t - e->t_start);
      double eta = elapsed / (done - e->first_batch * (double)B) * (e->n_train - done);
      log_progress("epoch %d/%d step %d/%d loss %.4f acc %.4f %.0f img/s lr %.3g eta %.0fs",
                   st->epoch + 1, cfg->epochs, st->batch + 1, n_batches, sums[0] / done,
                   sums[1] / done, ips, st->lr, eta);
      metrics_write("step", "\"epoch\": %d, \"batch\": %d, \"step\": %lld, \"train_loss\": %.6f, "
                    "\"train_acc\": %.6f, \"images_per_s\": %.2f, \"lr\": %.6g",
                    st->epoch + 1, st->batch + 1, (long long)st->step, sums[0] / done,
                    sums[1] / done, ips, st->lr);
      t_log = t;
      log_images = 0;
      if (flag && !last) {
        // Preemption or --max-steps inside the epoch: checkpoint the exact position.
        st->epoch_loss_sum = sums[0];
        st->epoch_correct = sums[1];
        st->epoch_time_s = elapsed;
        st->batch++;
        char reason[32];
        LOG0("stopping after step %lld (%s)%s%s\n", (long long)st->step,
             stop_reason(r, reason, sizeof(reason)),
             cfg->checkpoint_dir[0] ? ": writing a mid-epoch checkpoint" : "",
             r->stop_sig == SIGINT ? " (interrupt again to exit at once)" : "");
        state_download(r);
        save_periodic(r);
        stop_resumable(r);
        return EPOCH_INTERRUPTED;
      }
    }
    if (flag) { // at the epoch's last batch: the caller finishes the epoch, then stops
      st->batch++;
      return EPOCH_DONE_STOP;
    }
  }
  return EPOCH_DONE;
}

// After the last batch of an epoch: validation, rank-0 decisions (broadcast), metrics, the
// best model and the checkpoints (which name the start of the next epoch). Returns 1 on an
// early stop.
static int validate_and_decide(run *r, epoch_ctx *e) {
  const config *cfg = r->cfg;
  train_state *st = &r->st;
  double sums[2];
  epoch_sums(r, sums);
  double train_loss = sums[0] / e->n_train, train_acc = sums[1] / e->n_train;
  double epoch_time = e->carried_time + now_s() - e->t_start;
  double ips = (e->n_train - (double)e->first_batch * cfg->batch) / (now_s() - e->t_start + 1e-9);
  double val_loss, val_acc;
  evaluate(r, e->val, e->pp, &val_loss, &val_acc);
  // Rank 0 decides; its train_state is everyone's, and the decisions follow from it.
  const float lr_before = st->lr;
  if (r->rank == 0) {
    plateau_params pl = {cfg->lr_factor, cfg->lr_threshold, cfg->min_lr, cfg->lr_patience};
    plateau_step(st, val_loss, &pl);
    early_stop_step(st, val_loss, val_acc, st->epoch);
  }
  comm_bcast(r->c, st, sizeof(*st), 0);
  const int best = st->best_epoch == st->epoch;
  const int early = early_stop_due(st, cfg->early_stop);
  const int reduced = st->lr < lr_before;
  LOG0("epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.3g | %.1fs, %.0f img/s, %.1f GFLOP/s%s%s\n",
       st->epoch + 1, cfg->epochs, train_loss, train_acc, val_loss, val_acc, st->lr, epoch_time,
       ips, ips * model_train_flops(&r->m) * 1e-9, best ? " | best" : "",
       reduced ? " | lr reduced" : "");
  metrics_write("epoch", "\"epoch\": %d, \"train_loss\": %.6f, \"train_acc\": %.6f, \"val_loss\": %.6f, "
                "\"val_acc\": %.6f, \"lr\": %.6g, \"images_per_s\": %.2f, \"time_s\": %.3f, \"best\": %s",
                st->epoch + 1, train_loss, train_acc, val_loss, val_acc, st->lr, ips, epoch_time,
                best ? "true" : "false");
  st->epoch++;
  st->batch = 0;
  st->epoch_loss_sum = st->epoch_correct = st->epoch_time_s = 0;
  state_download(r);
  if (best) {
    memcpy(r->h_best, r->h_params, r->m.n_params * sizeof(float));
    if (cfg->checkpoint_dir[0] && r->rank == 0) {
      char path[1024];
      snprintf(path, sizeof(path), "%s/best.bin", cfg->checkpoint_dir);
      save_checkpoint(r, path);
    }
  }
  save_periodic(r);
  // The others wait here, not inside the next step's all-reduce, where the NCCL watchdog would
  // count rank 0's checkpoint writing (a slow file system) against --comm-timeout.
  comm_barrier(r->c);
  if (early)
    LOG0("early stop: no better validation loss for %d epochs (best %.4f after epoch %d)\n",
         cfg->early_stop, st->best_val_loss, st->best_epoch + 1);
  return early;
}

// The data of a run: the uint8 sets on the host and in backend memory (every rank holds the
// whole set: 180 MB at most), and the split of the train set into train and validation ids.
typedef struct run_data {
  const char *dir;
  cifar10 train, test;
  uint8_t *d_train_img, *d_train_lab, *d_test_img, *d_test_lab;
  int32_t *train_ids, *test_ids; // train_ids: n_train train ids, then val_size validation ids
  int n_train;
  split val, test_split;
} run_data;

// Loads and checks every file, uploads both sets.
static void data_load(run *r, run_data *d) {
  const config *cfg = r->cfg;
  backend *b = r->b;
  d->dir = cifar10_resolve_dir(cfg->data_dir[0] ? cfg->data_dir : NULL);
  cifar10_load(&d->train, d->dir, 1, cfg->train_limit);
  cifar10_load(&d->test, d->dir, 0, cfg->test_limit);
  if (cfg->val_size >= d->train.n)
    DIE_USAGE("--val-size %d leaves no training images: %s has %d train images", cfg->val_size,
              d->dir, d->train.n);
  d->d_train_img = b->ops->alloc(b, (size_t)d->train.n * CIFAR_PIXELS);
  d->d_train_lab = b->ops->alloc(b, d->train.n);
  d->d_test_img = b->ops->alloc(b, (size_t)d->test.n * CIFAR_PIXELS);
  d->d_test_lab = b->ops->alloc(b, d->test.n);
  b->ops->upload(b, d->d_train_img, d->train.images, (size_t)d->train.n * CIFAR_PIXELS);
  b->ops->upload(b, d->d_train_lab, d->train.labels, d->train.n);
  b->ops->upload(b, d->d_test_img, d->test.images, (size_t)d->test.n * CIFAR_PIXELS);
  b->ops->upload(b, d->d_test_lab, d->test.labels, d->test.n);
}

// The split follows the run's seed (the checkpoint's on resume), so it comes after the state.
static void data_split(run *r, run_data *d) {
  const config *cfg = r->cfg;
  d->n_train = d->train.n - cfg->val_size;
  d->train_ids = xmalloc(sizeof(int32_t) * d->train.n);
  int32_t *val_ids = d->train_ids + d->n_train;
  cifar10_split(d->train_ids, val_ids, d->train.n, cfg->val_size, r->st.seed);
  d->test_ids = xmalloc(sizeof(int32_t) * d->test.n);
  for (int i = 0; i < d->test.n; i++) d->test_ids[i] = i;
  d->val = (split){d->d_train_img, d->d_train_lab, val_ids, cfg->val_size};
  d->test_split = (split){d->d_test_img, d->d_test_lab, d->test_ids, d->test.n};
  LOG0("data: %s: %d train, %d validation, %d test images\n", d->dir, d->n_train, cfg->val_size,
       d->test.n);
  if (!d->train.classes_from_file)
    LOG0("warning: no %s/batches.meta.txt: using the official CIFAR-10 class names\n", d->dir);
  char classes[CIFAR_CLASSES * (CIFAR_NAME_CAP + 8)];
  cifar10_class_list(classes, sizeof(classes), &d->train);
  LOG0("classes: %s\n", classes);
}

static void data_free(run *r, run_data *d) {
  backend *b = r->b;
  b->ops->release(b, d->d_test_lab);
  b->ops->release(b, d->d_test_img);
  b->ops->release(b, d->d_train_lab);
  b->ops->release(b, d->d_train_img);
  free(d->test_ids);
  free(d->train_ids);
  cifar10_free(&d->test);
  cifar10_free(&d->train);
}

// The model, the host copies of the state (fresh, or from a checkpoint); returns whether the
// run resumed.
static int state_init(run *r) {
  const config *cfg = r->cfg;
  model_build(&r->m, cfg->model, cfg->width, cfg->image_size, CIFAR_CLASSES, cfg->dropout);
  if (r->rank == 0) model_print(&r->m, stdout);
  snprintf(r->meta.model, sizeof(r->meta.model), "%s", cfg->model);
  r->meta.width = cfg->width;
  r->meta.image_size = cfg->image_size;
  r->meta.classes = CIFAR_CLASSES;
  r->meta.n_params = r->m.n_params;
  size_t pbytes = r->m.n_params * sizeof(float);
  r->h_params = xmalloc(pbytes);
  r->h_m = xcalloc(r->m.n_params, sizeof(float));
  r->h_v = xcalloc(r->m.n_params, sizeof(float));
  r->h_best = xmalloc(pbytes);
  memset(&r->st, 0, sizeof(r->st));
  r->st.seed = cfg->seed;
  r->st.best_epoch = -1;
  optim_state_init(&r->st, cfg->lr);
  model_init_params(&r->m, r->h_params, cfg->init, cfg->seed);
  comm_bcast(r->c, r->h_params, pbytes, 0); // identical by construction; this makes it certain
  memcpy(r->h_best, r->h_params, pbytes);
  int resumed = cfg->resume[0] && resume(r);
  if (resumed && r->st.seed != cfg->seed)
    LOG0("note: continuing with the checkpoint's seed %llu (not --seed %llu)\n",
         (unsigned long long)r->st.seed, (unsigned long long)cfg->seed);
  return resumed;
}

// The backend's side of the run: the net's buffers, the gradient reducer, the state uploaded.
static void net_setup(run *r, int local_batch) {
  const config *cfg = r->cfg;
  backend *b = r->b;
  int max_n = local_batch > cfg->eval_batch ? local_batch : cfg->eval_batch;
  memory_check(r, max_n, local_batch);
  net_init(&r->net, &r->m, b, max_n, (size_t)(cfg->bucket_mb * 1e6 / sizeof(float)) + 1);
  r->net.graphs = cfg->cuda_graphs;
  r->gs = grad_sync_create(r->c, b, b->is_device ? GRAD_SYNC_NCCL : GRAD_SYNC_MPI,
                           r->net.grads, r->m.n_params, cfg->grad_bf16, cfg->comm_timeout);
  size_t pbytes = r->m.n_params * sizeof(float);
  net_upload_params(&r->net, r->h_params);
  b->ops->upload(b, r->net.adam_m, r->h_m, pbytes);
  b->ops->upload(b, r->net.adam_v, r->h_v, pbytes);
}

// The epochs; returns whether the run stopped early (a signal or --max-steps: resumable).
static int train_epochs(run *r, epoch_ctx *e) {
  const config *cfg = r->cfg;
  backend *b = r->b;
  int memory_reported = 0;
  // A resumed run whose early stop is already due (a stop came in its last epoch) only tests.
  while (r->st.epoch < cfg->epochs && !early_stop_due(&r->st, cfg->early_stop)) {
    epoch_end how = train_epoch(r, e);
    if (how == EPOCH_INTERRUPTED) return 1;
    int early = validate_and_decide(r, e);
    if (!memory_reported && b->is_device) {
      // Every buffer, plan workspace and graph exists once a training step and an evaluation
      // have run: this is the run's peak (the CUDA context and libraries included).
      LOG0("device memory: %.0f MiB in use on rank 0's GPU\n", backend_cuda_memory_used(b) / 1048576.0);
      memory_reported = 1;
    }
    if (how == EPOCH_DONE_STOP) {
      char reason[32];
      LOG0("stopping at the end of epoch %d (%s)\n", r->st.epoch, stop_reason(r, reason, sizeof(reason)));
      stop_resumable(r);
      return 1;
    }
    if (early) break;
  }
  return 0;
}

// The final test with the best model; a finished run has nothing left to resume.
static void final_test(run *r, run_data *d, const prep_params *pp) {
  const config *cfg = r->cfg;
  net_upload_params(&r->net, r->h_best);
  double test_loss, test_acc;
  evaluate(r, &d->test_split, pp, &test_loss, &test_acc);
  LOG0("test (best model, epoch %d): loss %.4f acc %.4f on %d images\n", r->st.best_epoch + 1,
       test_loss, test_acc, d->test.n);
  metrics_write("test", "\"test_loss\": %.6f, \"test_acc\": %.6f, \"best_epoch\": %d, \"images\": %d",
                test_loss, test_acc, r->st.best_epoch + 1, d->test.n);
  if (r->rank == 0 && cfg->checkpoint_dir[0] && checkpoint_clear_resumable(cfg->checkpoint_dir))
    LOG0("finished: removed %s/%s\n", cfg->checkpoint_dir, CKPT_RESUMABLE);
}

int train_run(const config *cfg, comm *c) {
  run state = {.cfg = cfg, .c = c, .rank = comm_rank(c), .world = comm_world(c)};
  run *r = &state;
  // First: a stop signal during start-up (data, plans, NCCL) is honoured at the first step.
  stop_signals_install();
  config_validate_world(cfg, r->world);
  if (r->rank == 0) config_print(cfg, stdout);
  if (r->rank == 0 && cfg->checkpoint_dir[0]) make_dirs(cfg->checkpoint_dir);
  r->b = backend_choose(cfg, c);
  backend *b = r->b;

  run_data d;
  memset(&d, 0, sizeof(d));
  data_load(r, &d);
  int resumed = state_init(r);
  data_split(r, &d);
  if (!resumed) normalisation(r, &d.train, d.train_ids, d.n_train);
  int local_batch = cfg->batch / r->world;
  net_setup(r, local_batch);
  metrics_open(cfg->metrics, resumed);

  prep_params pp = {.size = cfg->image_size, .augment = 1, .flip_p = cfg->flip_p, .seed = r->st.seed};
  memcpy(pp.mean, r->st.mean, sizeof(pp.mean));
  memcpy(pp.std, r->st.std, sizeof(pp.std));
  epoch_ctx e = {.train_ids = d.train_ids, .n_train = d.n_train, .d_images = d.d_train_img,
                 .d_labels = d.d_train_lab, .val = &d.val, .pp = &pp,
                 .order = xmalloc(sizeof(int32_t) * d.n_train), .local = xmalloc(sizeof(int32_t) * local_batch)};
  int stopped = train_epochs(r, &e);
  free(e.local);
  free(e.order);
  if (!stopped) final_test(r, &d, &pp);

  metrics_close();
  net_release_graph(&r->net); // before the communicator its NCCL work belongs to
  grad_sync_free(r->gs);
  net_free(&r->net);
  data_free(r, &d);
  b->ops->destroy(b);
  free(r->h_best);
  free(r->h_v);
  free(r->h_m);
  free(r->h_params);
  return 0;
}
