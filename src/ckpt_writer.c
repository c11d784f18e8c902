// ckpt_writer.c - the background checkpoint writer (see ckpt_writer.h): one host thread per
// write, over a snapshot the writer owns; its fatal errors are recorded, not acted on.
#include "ckpt_writer.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "checkpoint.h"
#include "log.h"

struct ckpt_writer {
  run_state snap;            // what the write in flight holds (RUN_SECTIONS_ALL only)
  char path[1100], dir[1100];
  int best, keep;
  pthread_t thread;
  int running;               // a thread was started and not joined (the owner's thread only)
  int state;                 // ckpt_writer_state, atomic: the thread stores DONE or FAILED
  // Set by the thread before it stores its state; read by the owner after it loads it.
  int linked;                // best.bin: 1 linked, 0 copied
  double t_start, seconds;   // when the write began; how long it took
  char error[1400];          // a failure's line (file:line, message, rank)
  jmp_buf fail;              // where writer_fail leaves the write (the writer's thread)
};

// The writer of this thread (the writer's own thread only), for its fail hook.
static __thread ckpt_writer *current;

// check_fail in the writer's thread: the line is kept for the owner, and the thread leaves the
// write for writer_main's return (whatever it held open is the process's to lose: the job is
// ending). A longjmp, not pthread_exit: that unwinds through libgcc_s, which glibc loads at
// the first pthread_exit, and a failure such as EMFILE (no file descriptor left) would then
// abort the process instead of being recorded.
static void writer_fail(int code, const char *line) {
  (void)code; // every such failure ends the job with status 1 (train.c)
  ckpt_writer *w = current;
  snprintf(w->error, sizeof(w->error), "%s", line);
  __atomic_store_n(&w->state, CKPT_WRITER_FAILED, __ATOMIC_RELEASE);
  longjmp(w->fail, 1);
}

static void *writer_main(void *arg) {
  ckpt_writer *w = arg;
  current = w;
  if (setjmp(w->fail)) return NULL; // writer_fail: recorded
  check_set_thread_fail_hook(writer_fail);
  ckpt_section secs[CKPT_MAX_SECTIONS];
  const int n = run_state_sections(&w->snap, RUN_SECTIONS_ALL, secs);
  checkpoint_write(w->path, secs, n);
  if (w->best) {
    char best[1200];
    checkpoint_best_path(best, sizeof(best), w->dir);
    w->linked = checkpoint_link(w->path, best);
  }
  // After the link: a resumed run may write a checkpoint older than those present, which
  // --keep then deletes at once, and best.bin's link keeps its data.
  checkpoint_prune(w->dir, w->keep);
  w->seconds = now_s() - w->t_start;
  __atomic_store_n(&w->state, CKPT_WRITER_DONE, __ATOMIC_RELEASE);
  return NULL;
}

ckpt_writer *ckpt_writer_create(const ckpt_meta *meta) {
  ckpt_writer *w = xcalloc(1, sizeof(ckpt_writer));
  run_state_init_live(&w->snap, meta);
  return w;
}

run_state *ckpt_writer_snapshot(ckpt_writer *w) {
  if (w->running) FATAL("ckpt_writer_snapshot: a write is in flight (join it first)");
  return &w->snap;
}

void ckpt_writer_free(ckpt_writer *w) {
  if (!w) return;
  if (ckpt_writer_join(w) != 0) {
    fprintf(stderr, "%s\n", w->error);
    fflush(stderr);
  }
  run_state_free(&w->snap);
  free(w);
}

static void copy_name(char *out, size_t len, const char *name) {
  int n = snprintf(out, len, "%s", name);
  if (n < 0 || (size_t)n >= len) FATAL("checkpoint path %s is too long", name);
}

void ckpt_writer_start(ckpt_writer *w, const char *path, const char *dir, int best, int keep) {
  if (w->running) FATAL("ckpt_writer_start: the previous write was not joined");
  copy_name(w->path, sizeof(w->path), path);
  copy_name(w->dir, sizeof(w->dir), dir);
  w->best = best;
  w->keep = keep;
  w->linked = 0;
  w->seconds = 0;
  w->error[0] = '\0';
  w->t_start = now_s();
  __atomic_store_n(&w->state, CKPT_WRITER_BUSY, __ATOMIC_RELEASE);
  // The thread inherits a mask of every signal: a stop signal is the training thread's.
  sigset_t all, old;
  sigfillset(&all);
  int rc = pthread_sigmask(SIG_SETMASK, &all, &old);
  if (rc != 0) FATAL("pthread_sigmask failed: %s", strerror(rc));
  rc = pthread_create(&w->thread, NULL, writer_main, w);
  const int rc_mask = pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) FATAL("pthread_create of the checkpoint writer failed: %s", strerror(rc));
  if (rc_mask != 0) FATAL("pthread_sigmask failed: %s", strerror(rc_mask));
  w->running = 1;
}

ckpt_writer_state ckpt_writer_poll(const ckpt_writer *w) {
  return (ckpt_writer_state)__atomic_load_n(&w->state, __ATOMIC_ACQUIRE);
}

int ckpt_writer_join(ckpt_writer *w) {
  if (!w || !w->running) return 0;
  int rc = pthread_join(w->thread, NULL);
  if (rc != 0) FATAL("pthread_join of the checkpoint writer failed: %s", strerror(rc));
  w->running = 0;
  const ckpt_writer_state how = ckpt_writer_poll(w);
  __atomic_store_n(&w->state, CKPT_WRITER_IDLE, __ATOMIC_RELEASE);
  if (how != CKPT_WRITER_DONE) {
    if (!w->error[0]) snprintf(w->error, sizeof(w->error), "vgg_dist: error: the checkpoint "
                               "writer of %s ended without finishing", w->path);
    return -1;
  }
  LOG0("checkpoint: %s%s, written in %.2f s\n", w->path,
       !w->best ? "" : w->linked ? " (best.bin: linked)" : " (best.bin: copied)", w->seconds);
  return 0;
}

const char *ckpt_writer_error(const ckpt_writer *w) { return w->error; }
