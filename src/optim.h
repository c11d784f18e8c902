// optim.h - the rank-0 decisions after each epoch, as pure functions of train_state:
// ReduceLROnPlateau (PyTorch semantics: mode min, relative threshold, cooldown 0, min_lr) and
// early stopping / best-model tracking on the validation loss. The Adam step itself is a
// backend op (kernels/backend.h) over the flat buffers.
#ifndef VGG_OPTIM_H
#define VGG_OPTIM_H

#include "train_state.h"

typedef struct plateau_params {
  float factor, threshold, min_lr;
  int patience;
} plateau_params;

// Starts the scheduler and early-stopping state for a fresh run.
void optim_state_init(train_state *st, float lr);

// One ReduceLROnPlateau step with the epoch's validation loss; returns 1 when lr was reduced.
int plateau_step(train_state *st, double val_loss, const plateau_params *p);

// Best-model tracking on the validation loss. Returns 1 when this epoch is the best so far
// (the caller saves the best model).
int early_stop_step(train_state *st, double val_loss, double val_acc, int epoch);
// Early stopping: 1 when `patience` epochs (patience > 0) passed without improvement.
int early_stop_due(const train_state *st, int patience);

#endif
