// train.h - the data-parallel training run: data, model, epochs, validation, rank-0
// decisions, checkpoints, resume, preemption and the final test.
#ifndef VGG_TRAIN_H
#define VGG_TRAIN_H

#include "comm.h"
#include "config.h"

// Runs the whole job described by cfg on every rank of c. Returns the process exit status.
int train_run(const config *cfg, comm *c);

#endif
