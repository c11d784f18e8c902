// adam.c - Adam/AdamW coefficients shared by the backends (see adam.h).
#include "adam.h"

#include <stdio.h>
#include <stdlib.h>

#include "check.h"

double adam_decimal_of(float f) {
  char buf[32];
  for (int digits = 1; digits <= 9; digits++) {
    snprintf(buf, sizeof(buf), "%.*g", digits, (double)f);
    double d = strtod(buf, NULL);
    if ((float)d == f) return d;
  }
  return f;
}

adam_coef adam_plan(const adam_params *ap) {
  if (ap->step < 1) FATAL("adam: step %d must be >= 1", ap->step);
  const double lr = adam_decimal_of(ap->lr), b1 = adam_decimal_of(ap->beta1),
               b2 = adam_decimal_of(ap->beta2), wd = adam_decimal_of(ap->weight_decay);
  const double bc1 = 1.0 - pow(b1, ap->step), bc2 = 1.0 - pow(b2, ap->step);
  adam_coef k = {
      .neg_step = (float)(-(lr / bc1)),
      .bc2_sqrt = (float)sqrt(bc2),
      .b1 = (float)b1,
      .b2 = (float)b2,
      .a1 = (float)(1.0 - b1),
      .a2 = (float)(1.0 - b2),
      .eps = ap->eps,
      .wd = (float)wd,
      .decay = (float)(1.0 - lr * wd),
      .decoupled = ap->decoupled != 0,
      .coupled_wd = !ap->decoupled && wd != 0.0,
  };
  return k;
}
