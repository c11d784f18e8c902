// optim.h - the learning-rate schedule and the rank-0 decisions after each epoch, as pure
// functions of train_state: a linear warmup per step, ReduceLROnPlateau (PyTorch semantics:
// mode min, relative threshold, cooldown 0, min_lr) and early stopping / best-model tracking
// on the validation loss. The Adam step itself is a backend op (kernels/backend.h) over the
// flat buffers.
//
// The lr of a step is the scheduler's lr (train_state.lr, which the plateau scheduler lowers)
// times the warmup's factor for that step: (step + 1) / warmup_steps during the first
// warmup_steps steps (0-based), 1 after. The climb starts near 0 but never at 0 (a step at lr 0
// would be a wasted step) and reaches the full lr exactly at the warmup's last step. The factor
// multiplies the lr only: Adam's step count t (its bias correction) counts every step as ever.
//
// The warmup and the epoch-end decisions (as a PyTorch user chains LinearLR, then
// ReduceLROnPlateau): an epoch during which the warmup was still under way (any of its steps)
// is a warmup epoch. The plateau scheduler does not see warmup epochs (its best and its bad
// epochs stay as they were), so it cannot lower the lr the warmup is climbing to, and it starts
// from scratch with the first epoch after the warmup. Best-model tracking sees every epoch (a
// warmup epoch may be the best so far, and then it is saved), but a warmup epoch that is not
// the best does not count towards early stopping: a rising lr may well raise the validation
// loss for a while, and that is no reason to stop (Keras' EarlyStopping start_from_epoch).
#ifndef VGG_OPTIM_H
#define VGG_OPTIM_H

#include <stdint.h>

#include "train_state.h"

typedef struct plateau_params {
  float factor, threshold, min_lr;
  int patience;
} plateau_params;

// Starts the scheduler and early-stopping state for a fresh run (no warmup: the caller sets
// st->warmup_steps).
void optim_state_init(train_state *st, float lr);

// Optimizer steps in an epoch of n_train images at global batch `batch` (the last may be short).
int64_t optim_steps_per_epoch(int n_train, int batch);
// The warmup's length in steps for `epochs` (fractional allowed; <= 0: none): rounded up,
// so any fraction of a step warms up a whole one. The float's own rounding is not rounded up
// (0.1 epochs of 10 steps is 1 step, not 2).
int64_t warmup_steps_for(float epochs, int64_t steps_per_epoch);
// The warmup's factor for 0-based `step`: (step + 1) / warmup_steps while step < warmup_steps,
// else 1 (and 1 for warmup_steps <= 0).
double warmup_factor(int64_t step, int64_t warmup_steps);
// The lr of 0-based `step` (the step st->step takes next, or one already taken): the
// scheduler's lr times the warmup's factor.
float optim_lr_at(const train_state *st, int64_t step);
// Whether the epoch whose first step is `first_step` is a warmup epoch (see above).
int warmup_epoch(int64_t first_step, int64_t warmup_steps);

// One ReduceLROnPlateau step with the epoch's validation loss; returns 1 when lr was reduced.
int plateau_step(train_state *st, double val_loss, const plateau_params *p);

// Best-model tracking on the validation loss. Returns 1 when this epoch is the best so far
// (the caller saves the best model); otherwise counts one more epoch without improvement.
int early_stop_step(train_state *st, double val_loss, double val_acc, int epoch);
// Early stopping: 1 when `patience` epochs (patience > 0) passed without improvement.
int early_stop_due(const train_state *st, int patience);

// What the epoch-end decisions found.
enum { OPTIM_BEST = 1, OPTIM_REDUCED = 2 };
// Every decision at the end of epoch st->epoch, whose first step was `first_step`, in order:
// the plateau scheduler, then best-model tracking and early stopping, with the warmup rules
// above. Returns OPTIM_BEST and OPTIM_REDUCED bits.
int optim_epoch_end(train_state *st, double val_loss, double val_acc, int64_t first_step,
                    const plateau_params *p);

#endif
