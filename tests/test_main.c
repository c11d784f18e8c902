// test_main.c - runs every TEST registered by the linked test files; prints "N passed, N failed".
// Usage: test_unit [--isolate] [--limit S] [substring]  (only tests whose name contains
// substring; --isolate runs each test in its own process, killed after S seconds, default 300)
#include "test.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <fcntl.h>
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_TESTS 512
static struct {
  const char *name;
  test_fn fn;
  int fixture;
} tests[MAX_TESTS];
static int n_tests, current_failed;
static const char *current_skip;

void test_register(const char *name, test_fn fn) {
  if (n_tests == MAX_TESTS) {
    fprintf(stderr, "too many tests\n");
    exit(1);
  }
  tests[n_tests].name = name;
  tests[n_tests].fn = fn;
  tests[n_tests].fixture = 0;
  n_tests++;
}

void test_register_fixture(const char *name, test_fn fn) {
  test_register(name, fn);
  tests[n_tests - 1].fixture = 1;
}

void test_fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "    FAIL %s:%d: ", file, line);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  current_failed = 1;
}

int test_failed_now(void) { return current_failed; }

void test_skip(const char *reason) { current_skip = reason; }

const char *test_real_data_dir(void) {
  static const char *candidates[] = {"../shared/data/cifar-10-subset-bin",
                                     "../../shared/data/cifar-10-subset-bin"};
  const char *env = getenv("VGG_REAL_DATA");
  if (env && *env) return access(env, R_OK) == 0 ? env : NULL;
  for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++)
    if (access(candidates[i], R_OK) == 0) return candidates[i];
  return NULL;
}

const char *test_tmp_dir(void) {
  static char dir[256];
  if (!dir[0]) {
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/vgg_test_XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir)) {
      perror("mkdtemp");
      exit(1);
    }
  }
  return dir;
}


// fork() after flushing stdio (so that nothing buffered is printed twice); exits on failure.
static pid_t fork_flushed(void) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(1);
  }
  return pid;
}

int test_in_child(void (*fn)(void *), void *arg, char *err, size_t len) {
  int fds[2];
  if (pipe(fds) != 0) {
    perror("pipe");
    exit(1);
  }
  pid_t pid = fork_flushed();
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], STDERR_FILENO);
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, STDOUT_FILENO);
    fn(arg);
    _exit(0);
  }
  close(fds[1]);
  size_t got = 0;
  ssize_t n;
  char sink[256];
  while ((n = read(fds[0], got + 1 < len ? err + got : sink,
                   got + 1 < len ? len - 1 - got : sizeof(sink))) > 0)
    if (got + 1 < len) got += (size_t)n;
  if (len) err[got] = 0;
  close(fds[0]);
  // Drop sanitizer chatter ("==pid==..." lines) so that debug builds test the same messages.
  if (len) {
    char *w = err;
    for (char *line = err; *line;) {
      char *nl = strchr(line, '\n');
      size_t n = nl ? (size_t)(nl - line + 1) : strlen(line);
      if (strncmp(line, "==", 2) != 0) {
        memmove(w, line, n);
        w += n;
      }
      line += n;
    }
    *w = 0;
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Runs test i in this process and prints its line; returns 0 passed, 1 failed, 2 skipped.
static int run_one(int i) {
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  current_failed = 0;
  current_skip = NULL;
  tests[i].fn();
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  if (current_skip && !current_failed) {
    printf("skip %s (%s)\n", tests[i].name, current_skip);
    return 2;
  }
  printf("%s %s (%.2fs)\n", current_failed ? "FAIL" : "ok  ", tests[i].name, s);
  return current_failed;
}

// --isolate: test i in a forked child, so that a test that ends its process (a FATAL inside a
// library call, a crash, a hang past `limit_s` seconds) is reported as that test's failure and
// the others still run. The parent never touches a GPU: each child makes its own CUDA context.
enum { CHILD_PASSED = 0, CHILD_FAILED = 10, CHILD_SKIPPED = 11 };
static int run_isolated(int i, unsigned limit_s) {
  pid_t pid = fork_flushed();
  if (pid == 0) {
    alarm(limit_s);
    int r = run_one(i);
    fflush(stdout);
    _exit(r == 0 ? CHILD_PASSED : r == 1 ? CHILD_FAILED : CHILD_SKIPPED);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) {
      perror("waitpid");
      exit(1);
    }
  if (WIFEXITED(status)) {
    int code = WEXITSTATUS(status);
    if (code == CHILD_PASSED) return 0;
    if (code == CHILD_SKIPPED) return 2;
    if (code == CHILD_FAILED) return 1;
    printf("FAIL %s (the test ended its process with exit status %d: see the error above)\n",
           tests[i].name, code);
    return 1;
  }
  int sig = WTERMSIG(status);
  printf("FAIL %s (killed by signal %d%s)\n", tests[i].name, sig,
         sig == SIGALRM ? ": over the time limit" : "");
  return 1;
}

// usage: test_unit [--isolate] [--limit S] [substring]
int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char *filter = NULL;
  int isolate = 0;
  unsigned limit_s = 300;
  for (int a = 1; a < argc; a++) {
    if (!strcmp(argv[a], "--isolate")) isolate = 1;
    else if (!strcmp(argv[a], "--limit") && a + 1 < argc) limit_s = (unsigned)atoi(argv[++a]);
    else if (argv[a][0] == '-') {
      fprintf(stderr, "test_unit: unknown option %s (usage: test_unit [--isolate] [--limit S] "
                      "[substring])\n", argv[a]);
      return 2;
    } else filter = argv[a];
  }
  int passed = 0, failed = 0, skipped = 0;
  for (int i = 0; i < n_tests; i++) {
    if (filter && !strstr(tests[i].name, filter)) continue;
    if (tests[i].fixture && !(filter && strstr(filter, "fixture"))) continue;
    int r = isolate ? run_isolated(i, limit_s) : run_one(i);
    passed += r == 0;
    failed += r == 1;
    skipped += r == 2;
  }
  if (skipped) printf("%d skipped (see the skip lines)\n", skipped);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
