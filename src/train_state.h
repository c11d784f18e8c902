// train_state.h - the training state besides the tensors: the position in the run, the
// scheduler and early-stopping state, the seed and the normalisation. optim.c decides on it,
// train.c advances it, run_state.h holds it beside the tensors, checkpoint.c stores it (its
// STATE section is this struct, so a field change is a checkpoint format change: bump
// CKPT_VERSION in checkpoint.h). It depends on nothing else, so optim.c, which decides on it,
// never sees the checkpoint format.
#ifndef VGG_TRAIN_STATE_H
#define VGG_TRAIN_STATE_H

#include <stdint.h>

// What decides which images a position (epoch, batch) stands for, besides the seed: the
// split (the training set's size and the validation size) and the global batch. Stored from
// version 3; an older file's is unknown (all 0 after reading; the reader's caller decides).
typedef struct sample_order {
  int32_t batch;        // the global batch (--batch)
  int32_t val_size;     // --val-size
  int32_t train_limit;  // --train-limit (0: all), for the messages
  int32_t train_images; // the training set's images as loaded (its files, then the limit)
} sample_order;

// Everything besides the tensors that training needs to continue exactly.
typedef struct train_state {
  int64_t step;        // optimizer steps taken so far (Adam's t)
  int32_t epoch;       // the epoch in progress (0-based)
  int32_t batch;       // the next global batch of that epoch (0 = at the epoch's start)
  double epoch_loss_sum, epoch_correct; // train sums of the partial epoch (its images: batch * B)
  double epoch_time_s; // time spent in the partial epoch
  float lr;
  // ReduceLROnPlateau (mode min, threshold rel): best value, bad epochs, cooldown left
  double sched_best;
  int32_t sched_bad_epochs, sched_cooldown;
  // early stopping and the best model
  double best_val_loss, best_val_acc;
  int32_t best_epoch, es_bad_epochs;
  uint64_t seed;
  float mean[3], std[3]; // the normalisation in use
  // The learning-rate warmup's length in optimizer steps (0: none), fixed when the run starts
  // (--warmup-epochs x steps per epoch) and kept by the checkpoint, so a resumed run finishes
  // the warmup it began whatever its options say. Last, so version 1's STATE is a prefix.
  int64_t warmup_steps;
  // The sample order the position counts in (version 3; after warmup_steps, so version 2's
  // STATE is a prefix).
  sample_order order;
} train_state;

#endif
