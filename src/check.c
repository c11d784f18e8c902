// check.c - the one place that reports fatal errors and ends the job (see check.h).
#include "check.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static fatal_hook_fn abort_hook;
static user_error_hook_fn user_error_hook;
static int my_rank = -1;
static __thread thread_fail_hook_fn thread_fail_hook;

void check_set_abort_hook(fatal_hook_fn hook) { abort_hook = hook; }
void check_set_user_error_hook(user_error_hook_fn hook) { user_error_hook = hook; }
void check_set_rank(int rank) { my_rank = rank; }
void check_set_thread_fail_hook(thread_fail_hook_fn hook) { thread_fail_hook = hook; }

int check_current_rank(void) {
  if (my_rank >= 0) return my_rank;
  // Before MPI_Init: the launchers export the rank (Open MPI, MPICH/PMI, Slurm).
  const char *vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"};
  for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
    const char *v = getenv(vars[i]);
    if (v && *v) return atoi(v);
  }
  return 0;
}

void check_fail(int code, const char *file, int line, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  char host[64] = "?";
  gethostname(host, sizeof(host) - 1);
  char text[1400]; // the line with where it comes from, as printed and as a thread records it
  if (file)
    snprintf(text, sizeof(text), "vgg_dist: error [rank %d %s] %s:%d: %s", check_current_rank(),
             host, file, line, msg);
  else
    snprintf(text, sizeof(text), "vgg_dist: error [rank %d %s]: %s", check_current_rank(), host,
             msg);
  if (thread_fail_hook) thread_fail_hook(code, text); // its owner ends the job (never returns)
  if (!file && user_error_hook) user_error_hook(code, msg);
  if (file)
    fprintf(stderr, "%s\n", text);
  else if (check_current_rank() == 0)
    fprintf(stderr, "vgg_dist: error: %s\n", msg);
  else if (abort_hook) // before MPI is up every rank sees the same bad input: rank 0 says it
    fprintf(stderr, "vgg_dist: error [rank %d]: %s\n", check_current_rank(), msg);
  fflush(stderr);
  if (abort_hook) abort_hook(code);
  exit(code);
}

void *xmalloc_at(size_t bytes, const char *file, int line) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) check_fail(1, file, line, "out of memory allocating %zu bytes", bytes);
  return p;
}

void *xcalloc_at(size_t count, size_t size, const char *file, int line) {
  void *p = calloc(count ? count : 1, size ? size : 1);
  if (!p) check_fail(1, file, line, "out of memory allocating %zu x %zu bytes", count, size);
  return p;
}

void *xrealloc_at(void *p, size_t bytes, const char *file, int line) {
  void *q = realloc(p, bytes ? bytes : 1);
  if (!q) check_fail(1, file, line, "out of memory reallocating %zu bytes", bytes);
  return q;
}

FILE *xfopen_at(const char *path, const char *mode, const char *file, int line) {
  FILE *f = fopen(path, mode);
  if (!f) check_fail(1, file, line, "cannot open %s: %s", path, strerror(errno));
  return f;
}

void xfread_at(void *dst, size_t bytes, FILE *f, const char *path, const char *file, int line) {
  if (bytes && fread(dst, 1, bytes, f) != bytes)
    check_fail(1, file, line, "short read of %zu bytes from %s: %s", bytes, path,
               ferror(f) ? strerror(errno) : "unexpected end of file");
}

void xfwrite_at(const void *src, size_t bytes, FILE *f, const char *path, const char *file,
                int line) {
  if (bytes && fwrite(src, 1, bytes, f) != bytes)
    check_fail(1, file, line, "write of %zu bytes to %s failed: %s", bytes, path, strerror(errno));
}

void xfclose_at(FILE *f, const char *path, const char *file, int line) {
  if (f && fclose(f) != 0)
    check_fail(1, file, line, "closing %s failed: %s", path, strerror(errno));
}

// The type is checked on a descriptor opened with O_NONBLOCK, before any read: fopen of a FIFO
// waits for a writer forever, and a device may never end. O_NONBLOCK is then cleared, so reads
// of the (regular) file behave as fopen's.
FILE *fopen_regular(const char *path, const char **why) {
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    *why = strerror(errno);
    return NULL;
  }
  struct stat sb;
  int err = 0, flags = 0, other_type = 0;
  if (fstat(fd, &sb) != 0) err = errno;
  else if (!S_ISREG(sb.st_mode)) other_type = 1, err = EINVAL;
  else if ((flags = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
    err = errno;
  FILE *f = err ? NULL : fdopen(fd, "rb");
  if (f) return f;
  if (!err) err = errno; // fdopen's
  close(fd); // nothing was read or written: its status says nothing more
  *why = other_type ? "not a regular file" : strerror(err);
  errno = err;
  return NULL;
}
