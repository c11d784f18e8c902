// check.h - fatal-error reporting and the check macros every library call goes through.
//
// A failure prints "vgg_dist: [rank R host] file:line: message" on stderr and then aborts the
// whole job through the hook that comm/ installs once MPI is up (MPI_Abort), so one rank's
// failure never leaves the others hanging. Before MPI is up, or in single-process tools, the
// hook is unset and the process exits with status 1.
//
// User-input errors (bad flags, bad files) use die_user(): one line, exit status 2 for usage
// errors, 1 for data errors, through the same abort hook.
#ifndef VGG_CHECK_H
#define VGG_CHECK_H

#include <stddef.h>
#include <stdio.h>

#if defined(__GNUC__)
#define VGG_NORETURN __attribute__((noreturn))
#define VGG_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define VGG_NORETURN
#define VGG_PRINTF(a, b)
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Installed by comm/ after MPI_Init: aborts every rank with this exit code. Never returns.
typedef void (*fatal_hook_fn)(int code);
void check_set_abort_hook(fatal_hook_fn hook);
// Installed by comm/ around work where every rank may meet the same user error (reading the
// data): a DIE_USAGE/DIE_DATA then goes to this hook, unprinted, instead of aborting; it agrees
// with the other ranks which one prints it, and ends the job cleanly. Never returns.
typedef void (*user_error_hook_fn)(int code, const char *msg);
void check_set_user_error_hook(user_error_hook_fn hook);
// Set by a thread that must not end the job itself (the background checkpoint writer, which
// may not call MPI): a fatal error in that thread formats its whole line ("vgg_dist: error
// [rank R host] file:line: message", not printed) and hands it to the hook, which never returns
// (it records the line and ends the thread); the thread's owner reports it. Per thread; NULL
// (the default) restores the usual print-and-abort.
typedef void (*thread_fail_hook_fn)(int code, const char *line);
void check_set_thread_fail_hook(thread_fail_hook_fn hook);
// This process's rank for messages (-1 until known; read from the launcher's environment
// before MPI_Init so that early errors still name their rank).
void check_set_rank(int rank);
int check_current_rank(void);

// Print "[rank R host] file:line: <fmt>" and abort the job with status `code`.
VGG_NORETURN void check_fail(int code, const char *file, int line, const char *fmt, ...)
    VGG_PRINTF(4, 5);

#ifdef __cplusplus
}
#endif

// Internal failure with location (library error, I/O error, broken invariant).
#define FATAL(...) check_fail(1, __FILE__, __LINE__, __VA_ARGS__)
// Bad input from the user: a clear one-line message and a non-zero exit (2 = usage).
#define DIE_USAGE(...) check_fail(2, NULL, 0, __VA_ARGS__)
#define DIE_DATA(...) check_fail(1, NULL, 0, __VA_ARGS__)

// libc calls that return NULL / non-zero / -1 on failure; errno carries the reason.
#include <errno.h>
#include <string.h>
#define CHECK_PTR(expr)                                                                  \
  ({                                                                                     \
    void *check_p_ = (void *)(expr);                                                     \
    if (!check_p_) FATAL("%s failed: %s", #expr, strerror(errno));                       \
    check_p_;                                                                            \
  })
#define CHECK_ZERO(expr)                                                                 \
  do {                                                                                   \
    if ((expr) != 0) FATAL("%s failed: %s", #expr, strerror(errno));                     \
  } while (0)
#define CHECK_POSIX(expr)                                                                \
  do {                                                                                   \
    if ((expr) < 0) FATAL("%s failed: %s", #expr, strerror(errno));                      \
  } while (0)

#ifdef __cplusplus
extern "C" {
#endif
// Checked allocation and stdio helpers: abort with file:line on failure.
void *xmalloc_at(size_t bytes, const char *file, int line);
void *xcalloc_at(size_t count, size_t size, const char *file, int line);
void *xrealloc_at(void *p, size_t bytes, const char *file, int line);
FILE *xfopen_at(const char *path, const char *mode, const char *file, int line);
void xfread_at(void *dst, size_t bytes, FILE *f, const char *path, const char *file, int line);
void xfwrite_at(const void *src, size_t bytes, FILE *f, const char *path, const char *file,
                int line);
void xfclose_at(FILE *f, const char *path, const char *file, int line);
// Opens path for reading ("rb") only when it is a regular file, never blocking on a FIFO or a
// device. NULL on failure: *why is the reason ("not a regular file", or strerror's), errno the
// error (EINVAL for a file of another type).
FILE *fopen_regular(const char *path, const char **why);
#ifdef __cplusplus
}
#endif
#define xmalloc(bytes) xmalloc_at((bytes), __FILE__, __LINE__)
#define xcalloc(n, size) xcalloc_at((n), (size), __FILE__, __LINE__)
#define xrealloc(p, bytes) xrealloc_at((p), (bytes), __FILE__, __LINE__)
#define xfopen(path, mode) xfopen_at((path), (mode), __FILE__, __LINE__)
#define xfread(dst, bytes, f, path) xfread_at((dst), (bytes), (f), (path), __FILE__, __LINE__)
#define xfwrite(src, bytes, f, path) xfwrite_at((src), (bytes), (f), (path), __FILE__, __LINE__)
#define xfclose(f, path) xfclose_at((f), (path), __FILE__, __LINE__)

#endif
