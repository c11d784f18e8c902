// evaluate.h - `vgg_dist --eval CKPT`: a checkpoint's model on the test set, no training (the
// loss, the accuracy overall and per class, the confusion matrix, an "eval" metrics event, and
// with --dump-logits the logits as a .npy file). See evaluate.c.
#ifndef VGG_EVALUATE_H
#define VGG_EVALUATE_H

#include "comm.h"
#include "config.h"

// Runs the evaluation that cfg->eval names on every rank of c. Returns the process exit status.
int evaluate_run(const config *cfg, comm *c);

#endif
