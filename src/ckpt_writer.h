// ckpt_writer.h - rank 0's background checkpoint writer: the run downloads the state into a
// snapshot the writer owns (ckpt_writer_snapshot), and a host thread serialises it, fsyncs,
// renames, links best.bin to it and prunes old checkpoints (checkpoint.h's guarantees, unchanged)
// while training goes on.
//
// Invariants: at most one write is in flight; ckpt_writer_start refuses (fatal) to start another
// before ckpt_writer_join, so the next checkpoint always waits for the previous one and the
// directory has one writer at a time (the pruning runs in the writer, after its own write and
// link, never beside another write). The thread calls no MPI: a fatal error in it (an I/O
// error, out of memory) is recorded as the line check_fail would have printed (file:line, its
// message, the rank), the thread ends, and the owner reports it (ckpt_writer_poll sees it at
// once, ckpt_writer_join returns it), so every rank can agree on it and end the job alike. The
// thread blocks every asynchronous signal: a stop signal goes to the training thread.
// Memory: the snapshot is one more host copy of the checkpoint's tensors (parameters, buffers,
// Adam's m and v; 781 MB for VGG16 at 128x128), allocated and touched by ckpt_writer_create (an
// out-of-memory is found at start-up, and no page is faulted in at an epoch's end).
#ifndef VGG_CKPT_WRITER_H
#define VGG_CKPT_WRITER_H

#include "run_state.h"

typedef struct ckpt_writer ckpt_writer;

typedef enum {
  CKPT_WRITER_IDLE,   // no write since the last join
  CKPT_WRITER_BUSY,   // writing
  CKPT_WRITER_DONE,   // written; join to reap it
  CKPT_WRITER_FAILED, // the write failed; join returns its line
} ckpt_writer_state;

ckpt_writer *ckpt_writer_create(const ckpt_meta *meta);
// Joins a write in flight first (its failure, if any, is printed: nothing else would report it).
void ckpt_writer_free(ckpt_writer *w); // accepts NULL

// The snapshot the next write will hold (RUN_SECTIONS_ALL of it: meta, st, the live model,
// Adam's m and v), for the caller to fill: only while no write is in flight (fatal otherwise).
run_state *ckpt_writer_snapshot(ckpt_writer *w);
// Starts writing the snapshot to `path` on a host thread: checkpoint_write, then (best)
// "<dir>/best.bin" linked to it, then checkpoint_prune(dir, keep). The snapshot is the
// writer's until the join.
void ckpt_writer_start(ckpt_writer *w, const char *path, const char *dir, int best, int keep);
// The write's state, without waiting.
ckpt_writer_state ckpt_writer_poll(const ckpt_writer *w);
// Waits for the write in flight, if any. Returns 0 when it succeeded (rank 0's log then says
// what was written, how and in how long) or there was none; -1 when it failed, with the line of
// its error in ckpt_writer_error. Either way the writer is idle after it.
int ckpt_writer_join(ckpt_writer *w);
const char *ckpt_writer_error(const ckpt_writer *w);

#endif
