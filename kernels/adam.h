// adam.h - the Adam/AdamW update shared by both backends: the scalar coefficients (planned once
// per step on the host) and the per-element arithmetic (host and device), so the CPU and CUDA
// backends apply bit-identical updates from identical gradients.
//
// torch.optim.Adam/AdamW (foreach=False, 1.13) step by step, in float with the scalar
// coefficients computed in double as Python does:
//   [AdamW] p.mul_(1 - lr*wd)          [Adam] g = g.add(p, alpha=wd)
//   m.mul_(b1).add_(g, alpha=1-b1);  v.mul_(b2).addcmul_(g, g, value=1-b2)
//   denom = (v.sqrt() / sqrt(bc2)).add_(eps);  p.addcdiv_(m, denom, value=-lr/bc1)
// PyTorch's vectorised add/addcmul kernels round a + alpha*b (and v + (value*g)*g) once, as a
// fused multiply-add; so do we (fmaf). Measured: bit-identical p, m, v to torch 1.13 over 5
// steps of 1000 parameters for Adam and AdamW with weight decay.
#ifndef VGG_ADAM_H
#define VGG_ADAM_H

#include <math.h>

#include "backend.h"

typedef struct adam_coef {
  float neg_step, bc2_sqrt, b1, b2, a1, a2, eps, wd, decay;
  int decoupled, coupled_wd;
} adam_coef;

#ifdef __cplusplus
extern "C" {
#endif
// The coefficients of step ap->step (fatal when step < 1).
adam_coef adam_plan(const adam_params *ap);
// The double a user meant by a float hyper-parameter: the shortest decimal that rounds to f
// (0.999f -> 0.999). PyTorch gets betas as Python doubles, and 1 - (double)0.999f differs
// from 1 - 0.999 by 1.3e-5 relative, far more than the agreement we want with it.
double adam_decimal_of(float f);
#ifdef __cplusplus
}
#endif

#include "hostdev.h"

// One element. fmaf is exact on both sides (one instruction on FMA hardware, libm elsewhere,
// __fmaf_rn on the device); nothing else may be contracted (-ffp-contract=off on the host,
// the __*_rn intrinsics on the device keep the order).
VGG_HD void adam_element(float *param, float grad, float *m, float *v, const adam_coef *k) {
  float p = *param, g = grad;
#ifdef __CUDA_ARCH__
  if (k->decoupled) p = __fmul_rn(p, k->decay);
  else if (k->coupled_wd) g = __fmaf_rn(k->wd, p, g);
  float mi = __fmaf_rn(k->a1, g, __fmul_rn(*m, k->b1));
  float vi = __fmaf_rn(__fmul_rn(k->a2, g), g, __fmul_rn(*v, k->b2));
  float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), k->bc2_sqrt), k->eps);
  *param = __fadd_rn(p, __fdiv_rn(__fmul_rn(k->neg_step, mi), denom));
#else
  if (k->decoupled) p = p * k->decay;
  else if (k->coupled_wd) g = fmaf(k->wd, p, g);
  float mi = fmaf(k->a1, g, *m * k->b1);
  float vi = fmaf(k->a2 * g, g, *v * k->b2);
  float denom = sqrtf(vi) / k->bc2_sqrt + k->eps;
  *param = p + k->neg_step * mi / denom;
#endif
  *m = mi;
  *v = vi;
}

#endif
