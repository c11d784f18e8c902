// optim.c - the warmup, ReduceLROnPlateau and early stopping (see optim.h); the plateau
// scheduler mirrors torch.optim.lr_scheduler.ReduceLROnPlateau (mode='min', threshold_mode='rel').
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
  st->warmup_steps = 0;
}

// ---------------------------------------------------------------------------------------
// The warmup

int64_t optim_steps_per_epoch(int n_train, int batch) {
  return batch > 0 && n_train > 0 ? ((int64_t)n_train + batch - 1) / batch : 0;
}

int64_t warmup_steps_for(float epochs, int64_t steps_per_epoch) {
  if (!(epochs > 0) || steps_per_epoch <= 0) return 0;
  // Exact in double (a 24-bit float times an integer below 2^29); the float stands for a
  // decimal within a relative 2^-24 of it, so a product within 2^-23 below an integer is
  // that integer, not a fraction of a step more.
  const double x = (double)epochs * (double)steps_per_epoch;
  return (int64_t)ceil(x - x * 0x1p-23);
}

double warmup_factor(int64_t step, int64_t warmup_steps) {
  if (warmup_steps <= 0 || step >= warmup_steps) return 1.0;
  return (double)(step + 1) / (double)warmup_steps;
}

float optim_lr_at(const train_state *st, int64_t step) {
  return (float)((double)st->lr * warmup_factor(step, st->warmup_steps));
}

int warmup_epoch(int64_t first_step, int64_t warmup_steps) { return first_step < warmup_steps; }

// ---------------------------------------------------------------------------------------
// ReduceLROnPlateau

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

// ---------------------------------------------------------------------------------------
// Best model and early stopping

// Returns 1 (and records the epoch) when val_loss is the best so far.
static int best_track(train_state *st, double val_loss, double val_acc, int epoch) {
  if (!(val_loss < st->best_val_loss)) return 0;
  st->best_val_loss = val_loss;
  st->best_val_acc = val_acc;
  st->best_epoch = epoch;
  st->es_bad_epochs = 0;
  return 1;
}

int early_stop_step(train_state *st, double val_loss, double val_acc, int epoch) {
  int best = best_track(st, val_loss, val_acc, epoch);
  if (!best) st->es_bad_epochs++;
  return best;
}

int early_stop_due(const train_state *st, int patience) {
  return patience > 0 && st->es_bad_epochs >= patience;
}

int optim_epoch_end(train_state *st, double val_loss, double val_acc, int64_t first_step,
                    const plateau_params *p) {
  const int warm = warmup_epoch(first_step, st->warmup_steps);
  int found = 0;
  if (!warm && plateau_step(st, val_loss, p)) found |= OPTIM_REDUCED;
  const int best = warm ? best_track(st, val_loss, val_acc, st->epoch)
                        : early_stop_step(st, val_loss, val_acc, st->epoch);
  if (best) found |= OPTIM_BEST;
  return found;
}
