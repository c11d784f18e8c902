// checkpoint.h - the versioned, checksummed, atomically written training checkpoint.
//
// File layout (little-endian):
//   header   : magic "VGGCKPT1" (8 bytes), u32 version, u32 section count, then the
//              ckpt_meta fields (model name, width, image size, classes, parameter count and,
//              from version 2, buffer count)
//   sections : repeated { u32 id, u32 reserved, u64 bytes, u32 crc32, u32 reserved, payload }
// Which sections a file holds, in which order, is ONE table of ckpt_section rows that the
// writer, the reader and the resume broadcast all walk; the run builds it from its state
// (run_state_sections in run_state.c) and tests/ckpt_tool.py keeps the Python copy (a unit
// test checks that the two agree). A file of version v holds exactly the rows with
// since <= v, in table order; its first row is META (the header meta again, so it is covered
// by a CRC). How a payload is encoded is its row's kind:
//   CKPT_KIND_META   the header meta (36 bytes in version 1, 44 from version 2)
//   CKPT_KIND_STATE  train_state, field by field (no padding on disk; 116 bytes in version 1,
//                    124 in version 2, 140 from version 3)
//   CKPT_KIND_F32    `bytes` / 4 fp32 values (parameters, Adam m and v, buffers)
// Every section's CRC-32 (IEEE, as zlib) is verified on load, and so are the sizes; a file
// that is truncated, corrupt, of another version, or made for another model / width / input
// size / class count / parameter or buffer count is refused with a one-line error naming the
// file and the reason, and nothing the caller holds is modified.
// Versions: 1 had no BUFFERS section, no buffer count in the meta and no warmup length at
// the end of STATE; 2 added all three. A version-1 file still reads when the run has no
// buffers (its meta reads as 0 buffers, its warmup as 0 steps: none; a run with buffers
// refuses it with "buffer count differs"), so a run resumes across the upgrade. Version 3
// appended the sample order to STATE (train_state.order: global batch, validation size,
// train limit and images); an older file's reads as all 0, and checkpoint_read_version tells
// the caller the file's version, so that it knows the order is unknown rather than zero.
// Writing: to "<path>.tmp.<pid>" in the same directory, fflush + fsync, rename over <path>,
// fsync the directory. A crash at any moment leaves the previous file intact. Files are
// always written at CKPT_VERSION.
// Every field is independent of the world size, so a run may resume on another world size.
#ifndef VGG_CHECKPOINT_H
#define VGG_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "train_state.h"

#define CKPT_VERSION 3     // what this build writes
#define CKPT_VERSION_MIN 1 // the oldest it reads
#define CKPT_MAX_SECTIONS 16

// What a checkpoint belongs to; a resume must match it field for field.
typedef struct ckpt_meta {
  char model[16];      // "vgg16", NUL-padded
  float width;
  int32_t image_size;
  int32_t classes;
  uint64_t n_params;
  uint64_t n_buffers;  // non-trainable state (version 2; 0 in a version-1 file)
} ckpt_meta;

typedef enum { CKPT_KIND_META, CKPT_KIND_STATE, CKPT_KIND_F32 } ckpt_kind;

// One row of the section table. data is host memory of `bytes` bytes in the run's own form
// (a ckpt_meta, a train_state, or floats): what the writer encodes, what the reader fills and
// what the resume broadcast sends. The reader treats the META row as the expectation (read,
// never written) and skips a row whose data is NULL (its CRC is still checked).
typedef struct ckpt_section {
  uint32_t id;      // on disk; rows are in file order
  const char *name; // in messages and in ckpt_tool.py
  ckpt_kind kind;
  uint32_t since;   // the format version that added it
  void *data;
  uint64_t bytes;   // in memory; on disk too, except META and STATE (packed, see above)
} ckpt_section;

// Atomically writes the sections to path (see above). Fatal on I/O errors (the old file
// stays in place) and on a table that is not well formed (META first, every row's data set).
void checkpoint_write(const char *path, const ckpt_section *secs, int n);

// Makes path the same file as src, a finished checkpoint, atomically (as checkpoint_write:
// "<path>.tmp.<pid>", rename, directory fsync): a hard link, so the state is written once
// (best.bin is the epoch's checkpoint; deleting src's name later leaves path whole). Where hard
// links fail (EXDEV, EPERM, ... : another file system, or one without them) src is copied.
// Returns 1 when linked, 0 when copied; fatal on I/O errors (the old path stays in place).
// The two names share one file: nothing may modify either in place (nothing here does).
int checkpoint_link(const char *src, const char *path);

// Reads and verifies path against the table: the META row's meta must match the file's, each
// section's size must be its row's. On success fills every other row whose data is set and
// returns 0. On any problem writes a one-line reason into err (err_len bytes), touches none of
// the outputs and returns -1.
int checkpoint_read(const char *path, const ckpt_section *secs, int n, char *err,
                    size_t err_len);

// checkpoint_read, and on success *version is the file's format version (which fields it had).
int checkpoint_read_version(const char *path, const ckpt_section *secs, int n, char *err,
                            size_t err_len, uint32_t *version);

// Writes a one-line reason into err (err_len bytes; err may be NULL) and returns -1: how the
// reader and the checks of what it read (run_state.c) refuse a file.
int checkpoint_errorf(char *err, size_t err_len, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

// CRC-32 (IEEE 802.3, reflected, as zlib's crc32()); crc = 0 to start.
uint32_t checkpoint_crc32(uint32_t crc, const void *data, size_t bytes);

// Directory management for --checkpoint-dir: files are "<dir>/ckpt_e%04d.bin" per epoch
// (or "ckpt_e%04d_b%06d.bin" mid-epoch), "<dir>/best.bin", and "<dir>/latest" is not used:
// the latest is found by scanning.
// checkpoint_dir_create: mkdir -p (an existing directory is fine); a usage error (exit 2)
// naming the part that cannot be made.
void checkpoint_dir_create(const char *dir);
// checkpoint_latest writes the newest valid-looking checkpoint path (highest epoch, batch)
// into out and returns 0, or -1 when there is none.
int checkpoint_latest(const char *dir, char *out, size_t out_len);
// Deletes the oldest periodic checkpoints so that at most `keep` remain (best.bin is never
// deleted). keep <= 0 keeps all.
void checkpoint_prune(const char *dir, int keep);
// Removes the temp files that interrupted writes (a kill during checkpoint_write) left in dir:
// regular files named exactly "<name>.tmp.<pid>", <name> a periodic checkpoint's, best.bin or
// RESUMABLE, whose process is gone (or is this one: a recycled pid; call it before this process
// writes). Nothing else is touched. Calls removed(path, pid) for each (NULL: quietly) and
// returns how many. Only one job may use a directory: a live pid is taken to be a writer, and a
// writer on another host of a shared file system looks dead from here.
int checkpoint_remove_stale_tmp(const char *dir, void (*removed)(const char *path, long pid));
// The periodic checkpoint name for (epoch, batch): batch 0 means "start of epoch".
void checkpoint_path(char *out, size_t out_len, const char *dir, int epoch, int batch);
// "<dir>/best.bin", the best model's checkpoint.
void checkpoint_best_path(char *out, size_t out_len, const char *dir);

// The marker that tells "stopped, resumable" from "finished" (scripts read it; vgg_dist never
// does): "<dir>/RESUMABLE" holds one line, the checkpoint's file name (no directory), a space
// and the reason ("signal 15", "max-steps"). Written atomically like a checkpoint, after the
// checkpoint it names; checkpoint_clear_resumable deletes it (and fsyncs the directory) when
// the run has finished, returning 1 if there was one.
#define CKPT_RESUMABLE "RESUMABLE"
void checkpoint_mark_resumable(const char *dir, const char *ckpt_path, const char *reason);
int checkpoint_clear_resumable(const char *dir);

#endif
