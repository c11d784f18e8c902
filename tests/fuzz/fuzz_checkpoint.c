// fuzz_checkpoint.c - libFuzzer target: the checkpoint reader and the resume's checks
// (src/checkpoint.c, src/run_state.c) on arbitrary bytes, for a tiny model (VGG11-BN at width
// 0.01, 32x32: 3,426 parameters, 56 buffers) and the sample order of the seeds tests/fuzz/run.sh
// makes (global batch 4, 5 validation images, 15 train-set images).
// A whole file (more than 512 bytes) is read twice: as it is (the CRCs reject almost every
// mutation: the framing, the sizes and the header are what gets exercised), then with every
// section's CRC recomputed over its payload, so that the values behind a valid CRC reach
// run_state_check_resume, which must refuse whatever the run cannot use. A short input is a
// STATE payload: it replaces that of the template checkpoint $VGG_FUZZ_TEMPLATE (CRCs
// recomputed), which focuses the mutations on the fields (in a whole file they mostly land in
// the tensors). An accepted state must then hold what training relies on.
#include <math.h>
#include <string.h>

#include "checkpoint.h"
#include "fuzz.h"
#include "model.h"
#include "run_state.h"

typedef struct input {
  const char *path;
  run_state rs;
  int accepted;
} input;

static const sample_order now = {.batch = 4, .val_size = 5, .train_limit = 0, .train_images = 15};

static void resume_check(void *arg) {
  input *in = arg;
  ckpt_section secs[CKPT_MAX_SECTIONS];
  const int n = run_state_sections(&in->rs, RUN_SECTIONS_ALL, secs);
  char err[512], note[400];
  uint32_t version = 0;
  in->accepted = checkpoint_read_version(in->path, secs, n, err, sizeof(err), &version) == 0 &&
                 run_state_check_resume(&in->rs, version, &now, note, sizeof(note), err,
                                        sizeof(err)) == 0;
}

// What training takes from an accepted state without checking it again.
static int state_usable(const train_state *st) {
  const int per_epoch = (now.train_images - now.val_size + now.batch - 1) / now.batch;
  return st->epoch >= 0 && st->batch >= 0 && st->batch < per_epoch && st->step >= 0 &&
         isfinite(st->lr) && st->lr > 0 && st->best_epoch >= -1 && st->best_epoch < st->epoch &&
         isfinite(st->mean[0]) && st->std[0] > 0 && isfinite(st->std[0]);
}

// Walks the section headers (as far as the file holds them): rewrites each CRC over its
// payload when fix is set; returns the offset of section `id`'s payload (0: none) and its size.
static size_t walk_sections(uint8_t *p, size_t size, int fix, uint32_t id, size_t *len) {
  if (size < 16) return 0;
  uint32_t version, sid;
  memcpy(&version, p + 8, 4);
  size_t found = 0;
  for (size_t off = 16 + (version == 1 ? 36 : 44); off + 24 <= size;) {
    uint64_t bytes;
    memcpy(&sid, p + off, 4);
    memcpy(&bytes, p + off + 8, 8);
    if (bytes > size - off - 24) break;
    if (fix) {
      uint32_t crc = checkpoint_crc32(0, p + off + 24, (size_t)bytes);
      memcpy(p + off + 16, &crc, 4);
    }
    if (sid == id && !found) found = off + 24, *len = (size_t)bytes;
    off += 24 + (size_t)bytes;
  }
  return found;
}

// The template's bytes and where its STATE payload lies (NULL without $VGG_FUZZ_TEMPLATE).
static uint8_t *template_file(size_t *size, size_t *state_off, size_t *state_len) {
  static uint8_t *t;
  static size_t t_size, off, len;
  static int tried;
  if (!tried) {
    tried = 1;
    const char *path = getenv("VGG_FUZZ_TEMPLATE");
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (f) {
      t = malloc(1 << 20);
      t_size = fread(t, 1, 1 << 20, f);
      fclose(f);
      off = walk_sections(t, t_size, 0, 2, &len); // STATE's id (run_state.c's table)
      if (!off) free(t), t = NULL;
    }
  }
  *size = t_size, *state_off = off, *state_len = len;
  return t;
}

static void run_one(const uint8_t *data, size_t size) {
  static model m;
  static ckpt_meta meta;
  if (!m.n_layers) {
    model_build(&m, "vgg11", 0.01f, 32, 10, 0.5f, 1);
    meta = (ckpt_meta){.width = 0.01f, .image_size = 32, .classes = 10, .n_params = m.n_params,
                       .n_buffers = m.n_buffers};
    snprintf(meta.model, sizeof(meta.model), "vgg11");
  }
  input in = {fuzz_file("ckpt.bin", data, size), {0}, 0};
  run_state_init(&in.rs, &meta);
  if (fuzz_run(resume_check, &in) == 0 && in.accepted && !state_usable(&in.rs.st)) abort();
  run_state_free(&in.rs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t t_size, off, len;
  const uint8_t *t = template_file(&t_size, &off, &len);
  if (size <= 512) { // a STATE payload
    if (!t) return 0;
    uint8_t *file = malloc(t_size);
    memcpy(file, t, t_size);
    memcpy(file + off, data, size < len ? size : len);
    walk_sections(file, t_size, 1, 0, &len);
    run_one(file, t_size);
    free(file);
    return 0;
  }
  run_one(data, size);
  uint8_t *fixed = malloc(size);
  memcpy(fixed, data, size);
  walk_sections(fixed, size, 1, 0, &len);
  run_one(fixed, size);
  free(fixed);
  return 0;
}
