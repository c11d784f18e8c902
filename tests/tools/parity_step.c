// parity_step.c - the CUDA backend against the CPU backend on whole training steps (the GPU
// check's first part): a narrow VGG16 at 32x32 and 128x128, the same parameters, batch (through
// each backend's own batch assembly), dropout masks and 3 Adam steps on both; per precision the
// worst relative error (max |a - b| / max |b| per tensor) of the losses, every gradient of step 1
// and the parameters after step 3, against a bound:
//   fp32 (TF32 off) 1e-3; tf32 2e-2 (10-bit mantissa products); bf16 1e-1 (8-bit mantissa
//   activations and products, fp32 accumulation and master weights).
// ReLU / max-pool decisions within rounding of a kink may differ between the backends and move
// a gradient by O(1) at one unit; for fp32 the number of differing decisions is printed with
// the errors, so a failure there can be told from a kink.
// Each batch differs from step to step (steps_spec.vary), so that every variable input of a step
// moves. Then the same steps again on the same CUDA backend through CUDA graphs (step 1 eager,
// step 2 captured, steps 3 and 4 replays) against the eager CUDA run: same plans, deterministic
// engines, so the bound is 1e-6 on losses and gradients and on the parameter updates (params
// minus initial params, where a stale Adam step or learning rate would show at 1e-1).
// Exit status 0 when every case is within its bound.   usage: parity_step [SIZE ...]
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "check.h"
#include "model.h"
#include "../steps.h"

static int branch_flips(const model *m, const steps_result *a, const steps_result *b, int steps, int n) {
  int flips = 0;
  for (int t = 0; t < steps; t++)
    for (int i = 0; i < m->n_layers; i++) {
      const layer *l = &m->layers[i];
      size_t count = (size_t)n * l->oH * l->oW * l->K;
      if (a->relu_mask[t][i] && b->relu_mask[t][i])
        for (size_t j = 0; j < count; j++) flips += a->relu_mask[t][i][j] != b->relu_mask[t][i][j];
      if (a->argmax[t][i] && b->argmax[t][i])
        for (size_t j = 0; j < count; j++) flips += a->argmax[t][i][j] != b->argmax[t][i][j];
    }
  return flips;
}

int main(int argc, char **argv) {
  int sizes[8] = {32, 128}, n_sizes = 2;
  if (argc > 1) {
    n_sizes = 0;
    for (int i = 1; i < argc && n_sizes < 8; i++) sizes[n_sizes++] = atoi(argv[i]);
  }
  const precision_kind precs[3] = {PREC_FP32, PREC_TF32, PREC_BF16};
  const char *prec_name[3] = {"fp32", "tf32", "bf16"};
  const double bound[3] = {1e-3, 2e-2, 1e-1};
  const double graph_bound = 1e-6;
  int failures = 0;
  // Every size without batch norm, then the first one with it (the default network): Adam eps
  // 1e-3 there, and the bias gradients of the convs before batch norm (rounding noise around
  // zero) checked as noise (steps_grads_err; see tests/test_golden.c for both).
  for (int si = 0; si <= n_sizes; si++) {
    const int bn = si == n_sizes, size = sizes[bn ? 0 : si], n = size >= 128 ? 8 : 16;
    steps_spec s = {.model = "vgg16", .width = 0.25f, .dropout = 0.5f, .lr = 1e-3f,
                    .weight_decay = 1e-4f, .beta1 = 0.9f, .beta2 = 0.999f,
                    .eps = bn ? 1e-3f : 1e-6f, .size = size, .n = n, .steps = 4, .adamw = 0,
                    .seed = 4321, .record_branches = 1, .vary = 1};
    model m;
    model_build(&m, s.model, s.width, size, 10, s.dropout, bn);
    backend *cpu = backend_cpu_create(0);
    steps_result ref;
    steps_run(&ref, cpu, &m, &s);
    cpu->ops->destroy(cpu);
    for (int p = 0; p < 3; p++) {
      backend *gpu = backend_cuda_create(0, precs[p]);
      steps_spec sp = s;
      sp.record_branches = gpu->act_bytes == sizeof(float);
      steps_result got;
      steps_run(&got, gpu, &m, &sp);
      double loss_err = 0;
      for (int t = 0; t < s.steps; t++)
        loss_err = fmax(loss_err, fabs(got.loss[t] - ref.loss[t]) / fabs(ref.loss[t]));
      double x_err = steps_tensor_err(got.x, ref.x, (size_t)n * size * size * 3);
      char wg[64] = "", wp[64] = "";
      double cancelled;
      double grad_err = steps_grads_err(&m, got.grads, ref.grads, wg, sizeof(wg), &cancelled);
      double param_err = steps_model_err(&m, got.params, ref.params, wp, sizeof(wp));
      double buf_err = m.n_buffers ? steps_tensor_err(got.buffers, ref.buffers, m.n_buffers) : 0;
      double worst = fmax(fmax(loss_err, grad_err), fmax(fmax(param_err, x_err), buf_err));
      int ok = worst <= bound[p] && cancelled <= bound[p];
      failures += !ok;
      printf("parity vgg16%s w0.25 %3dx%-3d batch %2d %s: input %.1e loss %.1e grad %.1e (%s) "
             "params@%d %.1e (%s)", bn ? "_bn" : "", size, size, n, prec_name[p], x_err, loss_err,
             grad_err, wg, s.steps, param_err, wp);
      if (bn) printf(" running stats %.1e, pre-bn bias grads %.1e", buf_err, cancelled);
      if (sp.record_branches) printf(" branch flips %d", branch_flips(&m, &got, &ref, s.steps, n));
      printf(" -> %s (bound %.0e)\n", ok ? "ok" : "FAIL", bound[p]);
      fflush(stdout);

      steps_spec sg = s;
      sg.record_branches = 0;
      sg.graphs = 1;
      steps_result gr;
      steps_run(&gr, gpu, &m, &sg);
      double g_loss = 0;
      for (int t = 0; t < s.steps; t++)
        g_loss = fmax(g_loss, fabs(gr.loss[t] - got.loss[t]) / fabs(got.loss[t]));
      char gw[64] = "", gu[64] = "";
      double g_cancelled; // graphs and eager run the same kernels: these agree too, noise or not
      double g_grad = fmax(steps_grads_err(&m, gr.grads, got.grads, gw, sizeof(gw), &g_cancelled),
                           bn ? steps_model_err(&m, gr.grads, got.grads, gw, sizeof(gw)) : 0);
      for (size_t i = 0; i < m.n_params; i++) { // parameters -> updates, in place
        gr.params[i] -= gr.init_params[i];
        got.params[i] -= got.init_params[i];
      }
      double g_upd = steps_model_err(&m, gr.params, got.params, gu, sizeof(gu));
      int g_ok = fmax(g_loss, fmax(g_grad, g_upd)) <= graph_bound;
      failures += !g_ok;
      printf("parity graphs vs eager%s %3dx%-3d %s: loss %.1e grad %.1e (%s) updates@%d %.1e (%s) "
             "-> %s (bound %.0e)\n", bn ? " (bn)" : "", size, size, prec_name[p], g_loss, g_grad, gw, s.steps, g_upd,
             gu, g_ok ? "ok" : "FAIL", graph_bound);
      fflush(stdout);
      steps_free(&gr);
      steps_free(&got);
      gpu->ops->destroy(gpu);
    }
    steps_free(&ref);
  }
  printf("parity: %d failed\n", failures);
  return failures ? 1 : 0;
}
