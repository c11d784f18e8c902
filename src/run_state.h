// run_state.h - one object owns the run's state on the host: what the run is (ckpt_meta), where
// it is (train_state), the model (parameters and non-trainable buffers), Adam's m and v, and
// the best model so far (parameters and buffers). The checkpoint's section table is built
// from it (run_state_sections), and the checkpoint writer, the reader and the resume
// broadcast walk that table, so the state goes everywhere as one.
//
// Invariants: every host copy has the size meta says (n_params or n_buffers floats); the
// backend holds the live state during training and the host copies are what was last
// downloaded or loaded; `best` is a whole model (parameters with their buffers), never half
// of one.
#ifndef VGG_RUN_STATE_H
#define VGG_RUN_STATE_H

#include "checkpoint.h"
#include "comm.h"
#include "model.h"
#include "train_state.h"

// A model on the host: the flat parameters and the flat non-trainable buffers.
typedef struct host_model {
  float *params;  // meta.n_params
  float *buffers; // meta.n_buffers
} host_model;

typedef struct run_state {
  ckpt_meta meta;
  train_state st;
  host_model live;        // the model as last downloaded or loaded
  float *adam_m, *adam_v; // n_params each
  host_model best;        // the model of the best epoch (the final test's)
  train_state best_st;    // the state best.bin was written with (read to check it is this run's)
} run_state;

// Which state a section table points at. Rows outside the choice point nowhere (NULL data:
// the reader only checksums them, the broadcast skips them).
typedef enum {
  RUN_SECTIONS_ALL,   // all the live state: the checkpoints and the resume
  RUN_SECTIONS_MODEL, // the live model only (parameters and buffers)
  RUN_SECTIONS_BEST,  // the best model and its state into best_st (best.bin, for the final test)
  RUN_SECTIONS_SOURCE, // the live model and STATE, no Adam state (--eval and --init-from)
} run_sections;

// Allocates the host copies for meta's sizes: Adam state zeroed, the rest to be filled; the
// train_state zeroed. run_state_free accepts NULL and a zeroed struct.
void run_state_init(run_state *rs, const ckpt_meta *meta);
void run_state_free(run_state *rs);
// run_state_init for the meta of model m (what a checkpoint of it says it is).
void run_state_init_model(run_state *rs, const model *m);

// The checkpoint's section table (see checkpoint.h), rows pointing into rs; returns the row
// count (at most CKPT_MAX_SECTIONS). Adding a section to the file is one row here (and one
// in tests/ckpt_tool.py), and a CKPT_VERSION bump.
int run_state_sections(run_state *rs, run_sections which, ckpt_section out[CKPT_MAX_SECTIONS]);

// Rank 0's copy of the table's state (every row but META, which each rank builds from the
// same options and rank 0 has verified) to every rank.
void run_state_broadcast(run_state *rs, run_sections which, comm *c);

// Checks the live state just read from a checkpoint of format `version`, as input from
// someone else, before the run uses it: every STATE field in its range and consistent with the
// others, the tensors finite (Adam's v >= 0; m and v zero before the first step), and the
// sample order against the run's own (`now`). Mid-epoch the order must be the run's: another
// batch, split or training set would resume on other images. At an epoch's start a new global
// batch is safe (the state takes the run's and `note` says so); a new split never is (the best
// model and the lr schedule were judged on the old validation set). A file older than
// version 3 has no order: the run's is assumed (`note` says so mid-epoch).
// Returns 0 (note: a line to print, or empty), or -1 with one line naming the field or option,
// the stored and the given value in err.
int run_state_check_resume(run_state *rs, uint32_t version, const sample_order *now, char *note,
                           size_t note_len, char *err, size_t err_len);

// Checks the best model just read (RUN_SECTIONS_BEST: best, best_st) against the resumed live
// state: its tensors finite, and its state that of this run's best epoch (written at its end,
// with the same best epoch and loss). Returns 0, or -1 with one line in err.
int run_state_check_best(const run_state *rs, char *err, size_t err_len);

// Checks a model source just read (RUN_SECTIONS_SOURCE from a file of format `version`): the
// checks of run_state_check_resume that do not compare with this run's data: every STATE
// field in its range (its normalisation among them: --eval uses it), a version-3 file's sample
// order and position consistent in themselves, the model's tensors finite. Adam's state is
// not read, so not checked. Returns 0, or -1 with one line in err.
int run_state_check_source(const run_state *rs, uint32_t version, char *err, size_t err_len);

// Rank 0 reads the checkpoint at `path` into the `which` rows of rs (CRCs, its meta against
// rs->meta) and checks it: RUN_SECTIONS_ALL, a resume (run_state_check_resume against the run's
// sample order `now`; its note, if any, is printed); RUN_SECTIONS_SOURCE, the model of
// --init-from or --eval (run_state_check_source). Every rank then gets the rows by broadcast. A
// refusal ends the job with rank 0's one line "<opt>: <reason>", agreed by every rank (no
// MPI_ABORT). The other ranks wait without a deadline while rank 0 reads (a slow file system
// is no hung peer), then get `timeout_s` back.
void run_state_load(run_state *rs, run_sections which, const char *path, const char *opt,
                    const sample_order *now, comm *c, double timeout_s);

// Allocates only what RUN_SECTIONS_ALL points at (the live model, Adam's m and v) for meta's
// sizes, zeroed and touched (so its pages exist before the first use); the best model stays
// NULL, so only RUN_SECTIONS_ALL may be taken of it: the background checkpoint writer's
// snapshot. Freed by run_state_free.
void run_state_init_live(run_state *rs, const ckpt_meta *meta);

// The live model becomes the best one (parameters and buffers together).
void run_state_keep_best(run_state *rs);

#endif
