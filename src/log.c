// log.c - rank-0 console output and the metrics file (see log.h).
#include "log.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int root = 1, progress_open, tty;
static FILE *metrics;
static char metrics_path[512];

void log_init(int rank) {
  root = rank == 0;
  // Open MPI hands its ranks a pseudo-terminal even when mpirun's own output is a pipe or a
  // file, so under a launcher plain lines are the safe choice.
  tty = isatty(STDOUT_FILENO) && !getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMI_SIZE") &&
        !getenv("SLURM_PROCID");
  setvbuf(stdout, NULL, _IOLBF, 0);
}

void log_printf(const char *fmt, ...) {
  if (!root) return;
  log_progress_end();
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  fflush(stdout);
}

void log_progress(const char *fmt, ...) {
  if (!root) return;
  va_list ap;
  va_start(ap, fmt);
  if (tty) {
    printf("\r\033[K");
    vprintf(fmt, ap);
    progress_open = 1;
  } else {
    vprintf(fmt, ap);
    printf("\n");
  }
  va_end(ap);
  fflush(stdout);
}

void log_progress_end(void) {
  if (progress_open) {
    printf("\n");
    progress_open = 0;
  }
}

void metrics_open(const char *path) {
  if (!root || !path || !*path) return;
  snprintf(metrics_path, sizeof(metrics_path), "%s", path);
  // "a": opening must not lose an earlier run's lines before we know whether this one resumes.
  metrics = fopen(path, "a");
  if (!metrics) DIE_USAGE("--metrics: cannot open %s for writing: %s", path, strerror(errno));
}

void metrics_truncate(void) {
  // In append mode every write goes to the end, which is then 0.
  if (metrics && (fflush(metrics) != 0 || ftruncate(fileno(metrics), 0) != 0))
    FATAL("truncating the metrics file %s failed: %s", metrics_path, strerror(errno));
}

void metrics_close(void) {
  if (metrics) xfclose(metrics, metrics_path);
  metrics = NULL;
}

void metrics_write(const char *event, const char *fmt, ...) {
  if (!metrics) return;
  // Sized first: an event (the eval's confusion matrix and class names) may be long, and a
  // cut line would be no JSON.
  va_list ap, again;
  va_start(ap, fmt);
  va_copy(again, ap);
  const int len = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (len < 0) FATAL("formatting a metrics line failed");
  char *body = xmalloc((size_t)len + 1);
  vsnprintf(body, (size_t)len + 1, fmt, again);
  va_end(again);
  if (fprintf(metrics, "{\"event\": \"%s\", %s}\n", event, body) < 0 || fflush(metrics) != 0)
    FATAL("writing metrics to %s failed: %s", metrics_path, strerror(errno));
  free(body);
}

double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}
