// train.h - the data-parallel training run: data, model, epochs, validation, rank-0
// decisions, checkpoints, resume, preemption and the final test.
#ifndef VGG_TRAIN_H
#define VGG_TRAIN_H

#include "comm.h"
#include "config.h"

// The stop signals' handlers (SIGTERM, SIGINT, SIGUSR1: a stop after the current step, see
// train.c), installed first, before MPI_Init (main.c): a stop during start-up is then a clean
// stop before the first step, never the default action's death without a message. Unblocks them.
void train_signals_install(void);

// Runs the whole job described by cfg on every rank of c. Returns the process exit status.
int train_run(const config *cfg, comm *c);

#endif
