// log.h - rank-0 output and the JSON Lines metrics file.
//
// LOG0 prints on rank 0 only (other ranks print only errors, through check.h). The progress
// line redraws in place ("\r") when stdout is a terminal and is a plain line otherwise.
// The metrics file holds one JSON object per line with an "event" key ("step", "epoch",
// "test", and "eval" from --eval); it is flushed after every line so a crash loses nothing
// already reported.
#ifndef VGG_LOG_H
#define VGG_LOG_H

#include <stdio.h>

#include "check.h"

#ifdef __cplusplus
extern "C" {
#endif
void log_init(int rank);
void log_printf(const char *fmt, ...) VGG_PRINTF(1, 2);
#define LOG0(...) log_printf(__VA_ARGS__)
// A progress line: redrawn in place on a terminal; log_progress_end finishes it.
void log_progress(const char *fmt, ...) VGG_PRINTF(1, 2);
void log_progress_end(void);

// Metrics: opened by rank 0 only, for appending, before anything else is done (an unwritable
// path is a one-line usage error, exit 2); a fresh run then truncates it (metrics_truncate), a
// resumed one continues it. NULL or empty path = off.
void metrics_open(const char *path);
void metrics_truncate(void);
void metrics_close(void);
// Writes one line: {"event": "<event>", <fields>} where fields is a preformatted JSON
// fragment such as "\"epoch\": 3, \"val_loss\": 1.25".
void metrics_write(const char *event, const char *fmt, ...) VGG_PRINTF(2, 3);

double now_s(void); // CLOCK_MONOTONIC seconds
#ifdef __cplusplus
}
#endif

#endif
