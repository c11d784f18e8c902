// fuzz.h - what the libFuzzer targets in tests/fuzz/ share: running one input through code that
// ends the process on bad input (check_fail, config's exit after --help) and coming back.
//
// check_fail prints its one line and calls the abort hook, which jumps back here instead of
// ending the process; `exit` is wrapped (-Wl,--wrap=exit, see the Makefile) to do the same while
// an input runs. A refused input is the expected outcome; what the fuzzer hunts is everything
// else: a sanitizer report (out-of-bounds, overflow, undefined behaviour), a hang, a crash.
// What the jump skips (a free, an fclose) is reclaimed after each input: the file descriptors
// opened during it are closed; leaked memory is small, and leak detection is off (the runs
// pass -detect_leaks=0).
#ifndef VGG_FUZZ_H
#define VGG_FUZZ_H

#include <dirent.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"

static sigjmp_buf fuzz_jump;
static int fuzz_active;

static void fuzz_refused(int code) { siglongjmp(fuzz_jump, code ? code : 1); }

void __real_exit(int code);
void __wrap_exit(int code) {
  if (fuzz_active) siglongjmp(fuzz_jump, 100 + code);
  __real_exit(code);
}

// Marks the file descriptors open now (a bit per fd below 1024).
static void fuzz_fds(uint8_t open_fds[128]) {
  for (int i = 0; i < 128; i++) open_fds[i] = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d) return;
  for (struct dirent *e; (e = readdir(d));) {
    int fd = atoi(e->d_name);
    if (e->d_name[0] != '.' && fd >= 0 && fd < 1024 && fd != dirfd(d))
      open_fds[fd / 8] |= (uint8_t)(1u << (fd % 8));
  }
  closedir(d);
}

// Runs fn(arg) as one input: returns 0 when it returned, else the refusal's exit code (100 + an
// exit's code). Closes what fn left open.
static int fuzz_run(void (*fn)(void *), void *arg) {
  uint8_t before[128], after[128];
  fuzz_fds(before);
  check_set_abort_hook(fuzz_refused);
  fuzz_active = 1;
  int code = sigsetjmp(fuzz_jump, 1);
  if (code == 0) fn(arg);
  fuzz_active = 0;
  check_set_abort_hook(NULL);
  fuzz_fds(after);
  for (int fd = 3; fd < 1024; fd++)
    if ((after[fd / 8] & ~before[fd / 8]) & (1u << (fd % 8))) close(fd);
  return code;
}

// Writes the input to a file of this process (the readers take paths) in $TMPDIR (else /tmp)
// and returns its path.
static const char *fuzz_file(const char *name, const uint8_t *data, size_t size) {
  static char path[512];
  const char *dir = getenv("TMPDIR");
  snprintf(path, sizeof(path), "%s/vgg_fuzz_%ld_%s", dir && *dir ? dir : "/tmp", (long)getpid(),
           name);
  FILE *f = fopen(path, "wb");
  if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
    perror(path);
    abort();
  }
  return path;
}

#endif
