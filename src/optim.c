// optim.c - ReduceLROnPlateau and early stopping (see optim.h), mirroring
// torch.optim.lr_scheduler.ReduceLROnPlateau (mode='min', threshold_mode='rel').
#include "optim.h"

#include <math.h>

void optim_state_init(train_state *st, float lr) {
  st->lr = lr;
  st->sched_best = INFINITY;
  st->sched_bad_epochs = 0;
  st->sched_cooldown = 0;
  st->best_val_loss = INFINITY;
  st->best_val_acc = 0;
  st->best_epoch = -1;
  st->es_bad_epochs = 0;
}

int plateau_step(train_state *st, double val_loss, const plateau_params *p) {
  if (val_loss < st->sched_best * (1.0 - p->threshold)) {
    st->sched_best = val_loss;
    st->sched_bad_epochs = 0;
  } else {
    st->sched_bad_epochs++;
  }
  if (st->sched_cooldown > 0) { // cooldown is 0 in this trainer; kept for the semantics
    st->sched_cooldown--;
    st->sched_bad_epochs = 0;
  }
  if (st->sched_bad_epochs > p->patience) {
    float old = st->lr;
    float lr = fmaxf(old * p->factor, p->min_lr);
    st->sched_bad_epochs = 0;
    if (old - lr > 1e-8f) {
      st->lr = lr;
      return 1;
    }
  }
  return 0;
}

int early_stop_step(train_state *st, double val_loss, double val_acc, int epoch) {
  int best = val_loss < st->best_val_loss;
  if (best) {
    st->best_val_loss = val_loss;
    st->best_val_acc = val_acc;
    st->best_epoch = epoch;
    st->es_bad_epochs = 0;
  } else {
    st->es_bad_epochs++;
  }
  return best;
}

int early_stop_due(const train_state *st, int patience) {
  return patience > 0 && st->es_bad_epochs >= patience;
}
