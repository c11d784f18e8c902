// checkpoint.h - the versioned, checksummed, atomically written training checkpoint.
//
// File layout (little-endian):
//   header   : magic "VGGCKPT1" (8 bytes), u32 version, u32 section count, then the
//              ckpt_meta struct fields (model name, width, image size, classes, param count)
//   sections : repeated { u32 id, u32 reserved, u64 bytes, u32 crc32, u32 reserved, payload }
//              ids: META (the header meta again, so it is covered by a CRC), STATE
//              (train_state), PARAMS, ADAM_M, ADAM_V (fp32, `n_params` each)
// Every section's CRC-32 (IEEE, as zlib) is verified on load, and so are the sizes; a file
// that is truncated, corrupt, of another version, or made for another model / width / input
// size / class count is refused with a one-line error naming the file and the reason, and
// nothing the caller holds is modified.
// Writing: to "<path>.tmp.<pid>" in the same directory, fflush + fsync, rename over <path>,
// fsync the directory. A crash at any moment leaves the previous file intact.
// Every field is independent of the world size, so a run may resume on another world size.
#ifndef VGG_CHECKPOINT_H
#define VGG_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "train_state.h"

#define CKPT_VERSION 1

typedef struct ckpt_meta {
  char model[16];      // "vgg16", NUL-padded
  float width;
  int32_t image_size;
  int32_t classes;
  uint64_t n_params;
} ckpt_meta;


// Atomically writes the checkpoint to path (see above). Fatal on I/O errors (the old file
// stays in place).
void checkpoint_write(const char *path, const ckpt_meta *meta, const train_state *st,
                      const float *params, const float *m, const float *v);

// Reads and verifies path against `expect` (model, width, image size, classes, n_params must
// match). On success fills st, params, m, v (each n_params floats; any may be NULL to skip)
// and returns 0. On any problem writes a one-line reason into err (err_len bytes), touches
// none of the outputs and returns -1.
int checkpoint_read(const char *path, const ckpt_meta *expect, train_state *st, float *params,
                    float *m, float *v, char *err, size_t err_len);

// CRC-32 (IEEE 802.3, reflected, as zlib's crc32()); crc = 0 to start.
uint32_t checkpoint_crc32(uint32_t crc, const void *data, size_t bytes);

// Directory management for --checkpoint-dir: files are "<dir>/ckpt_e%04d.bin" per epoch
// (or "ckpt_e%04d_b%06d.bin" mid-epoch), "<dir>/best.bin", and "<dir>/latest" is not used:
// the latest is found by scanning. checkpoint_latest writes the newest valid-looking
// checkpoint path (highest epoch, batch) into out and returns 0, or -1 when there is none.
int checkpoint_latest(const char *dir, char *out, size_t out_len);
// Deletes the oldest periodic checkpoints so that at most `keep` remain (best.bin is never
// deleted). keep <= 0 keeps all.
void checkpoint_prune(const char *dir, int keep);
// The periodic checkpoint name for (epoch, batch): batch 0 means "start of epoch".
void checkpoint_path(char *out, size_t out_len, const char *dir, int epoch, int batch);

// The marker that tells "stopped, resumable" from "finished" (scripts read it; vgg_dist never
// does): "<dir>/RESUMABLE" holds one line, the checkpoint's file name (no directory), a space
// and the reason ("signal 15", "max-steps"). Written atomically like a checkpoint, after the
// checkpoint it names; checkpoint_clear_resumable deletes it (and fsyncs the directory) when
// the run has finished, returning 1 if there was one.
#define CKPT_RESUMABLE "RESUMABLE"
void checkpoint_mark_resumable(const char *dir, const char *ckpt_path, const char *reason);
int checkpoint_clear_resumable(const char *dir);

#endif
