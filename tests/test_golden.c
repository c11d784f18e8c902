// test_golden.c - whole training steps of the CPU backend against PyTorch.
//
// A narrow VGG16 (and VGG11, and the AdamW variant) with the same parameters, the same input
// batch (made by the real batch-assembly path) and the same dropout masks (exported: the C side
// computes them with the counter-based rule, PyTorch applies them) runs 3 training steps on
// both sides (tests/golden_vgg.py under the Makefile's PY_TORCH, by default Debian's
// /usr/bin/python3 with python3-torch, which builds its network from the model's JSON,
// model_print_json, written beside the input). The loss
// of every step, every gradient of step 1 and every parameter after step 3 must agree to a
// relative error of 1e-4 (max |a - b| / max |b| per tensor); the worst errors are printed.
//
// ReLU and max-pool are not differentiable at their kinks: where a pre-activation lies within
// float rounding of 0, or two values of a pool window within rounding of each other, two
// implementations may take different branches and then differ by O(1) there, whatever their
// quality (with ~10^5 units a run, a few always lie that close). So the C side exports the
// branches it took (ReLU masks, pool argmaxes) and PyTorch follows them; PyTorch also counts
// where its own decision differs from ours by more than rounding (must be none: that would be
// a real error) and where within rounding (printed).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "check.h"
#include "model.h"
#include "rng.h"
#include "steps.h"
#include "test.h"

#define GOLDEN_TOL 1e-4


// The Python with torch: the Makefile's PY_TORCH, its one definition.
#ifndef VGG_PY_TORCH
#error "VGG_PY_TORCH (the Python with torch) comes from the Makefile's PY_TORCH"
#endif

static void export_case(const char *path, const model *m, const steps_spec *s, const steps_result *r) {
  FILE *f = xfopen(path, "wb");
  char name[16] = {0};
  snprintf(name, sizeof(name), "%s", s->model);
  float hyper[7] = {s->width, s->dropout, s->lr, s->weight_decay, s->beta1, s->beta2, s->eps};
  int32_t ints[6] = {s->size, 10, s->n, s->steps, s->adamw, (int32_t)m->n_params};
  xfwrite(name, 16, f, path);
  xfwrite(hyper, sizeof(hyper), f, path);
  xfwrite(ints, sizeof(ints), f, path);
  xfwrite(r->init_params, m->n_params * sizeof(float), f, path);
  xfwrite(r->x, (size_t)s->n * s->size * s->size * 3 * sizeof(float), f, path);
  xfwrite(r->labels, (size_t)s->n * sizeof(int32_t), f, path);
  for (int t = 0; t < s->steps; t++)
    for (int i = 0; i < m->n_layers; i++) {
      const layer *l = &m->layers[i];
      size_t count = (size_t)s->n * l->oH * l->oW * l->K;
      if (r->relu_mask[t][i]) xfwrite(r->relu_mask[t][i], count, f, path);
      if (r->argmax[t][i]) xfwrite(r->argmax[t][i], count * sizeof(int32_t), f, path);
    }
  for (int t = 0; t < s->steps; t++)
    for (int li = 0; li < m->n_layers; li++) {
      const layer *l = &m->layers[li];
      if (l->kind != LAYER_DROPOUT) continue;
      for (int i = 0; i < s->n; i++)
        for (int j = 0; j < l->C; j++) {
          float keep = (float)rng_dropout_keep(s->seed, (uint32_t)l->dropout_index, (uint32_t)t,
                                               (uint32_t)r->ids[i], (uint32_t)j, s->dropout);
          xfwrite(&keep, 4, f, path);
        }
    }
  xfclose(f, path);
}

static void run_case(const char *name, float width, int size, int n, int adamw, int bn) {
  // eps 1e-6 rather than Adam's 1e-8: an update lr * g / (|g| + eps) amplifies float noise in a
  // near-zero gradient by lr / eps, so with 1e-8 a 1e-10 difference in a vanishing gradient of
  // this deep net without batch norm moves a parameter by 1e-5, and no two float
  // implementations agree to 1e-4. Every term of the update is still exercised (gradients
  // here are mostly far above 1e-6); the op itself is checked with eps 1e-8 in test_cpu_ops.c.
  // With batch norm, 1e-3: a conv before it has a bias whose gradient is pure rounding noise
  // (see steps_grads_err), which Adam would turn into steps of +-lr, and batch norm's scale
  // invariance leaves more weight gradients near the noise floor (measured: 1e-6 leaves
  // parameter errors of 7e-3, 1e-4 of 2e-4, 1e-3 of 3e-5).
  steps_spec s = {.model = name, .width = width, .dropout = 0.5f, .lr = 1e-3f, .weight_decay = 1e-4f,
                  .beta1 = 0.9f, .beta2 = 0.999f, .eps = bn ? 1e-3f : 1e-6f, .size = size, .n = n, .steps = 3,
                  .adamw = adamw, .seed = 1234, .record_branches = 1};
  model m;
  model_build(&m, name, width, size, 10, s.dropout, bn);
  backend *b = backend_cpu_create(2);
  steps_result r;
  steps_run(&r, b, &m, &s);

  char model_path[512], in_path[512], out_path[512], cmd[2000];
  snprintf(model_path, sizeof(model_path), "%s/golden_%s_%d_%d_%d.json", test_tmp_dir(), name, size, adamw, bn);
  snprintf(in_path, sizeof(in_path), "%s/golden_%s_%d_%d_%d.in", test_tmp_dir(), name, size, adamw, bn);
  snprintf(out_path, sizeof(out_path), "%s/golden_%s_%d_%d_%d.out", test_tmp_dir(), name, size, adamw, bn);
  FILE *mf = xfopen(model_path, "w"); // what golden_vgg.py builds its network from
  model_print_json(&m, mf);
  xfclose(mf, model_path);
  export_case(in_path, &m, &s, &r);
  const char *src = getenv("VGG_SOURCE_DIR");
  snprintf(cmd, sizeof(cmd), "OMP_NUM_THREADS=2 %s %s/tests/golden_vgg.py %s %s %s", VGG_PY_TORCH,
           src && *src ? src : ".", model_path, in_path, out_path);
  int rc = system(cmd);
  if (rc != 0) {
    test_fail(__FILE__, __LINE__, "'%s' failed (%d): %s needs torch (python3-torch)", cmd, rc,
              VGG_PY_TORCH);
    steps_free(&r);
    b->ops->destroy(b);
    return;
  }
  size_t P = m.n_params;
  double ref_loss[3], branches[2];
  float *ref_grads = xmalloc(P * sizeof(float)), *ref_params = xmalloc(P * sizeof(float));
  const size_t nb = m.n_buffers, nl = (size_t)n * 10;
  float *ref_buffers = xmalloc((nb ? nb : 1) * sizeof(float)), *ref_logits = xmalloc(nl * sizeof(float));
  FILE *g = xfopen(out_path, "rb");
  xfread(ref_loss, sizeof(ref_loss), g, out_path);
  xfread(ref_grads, P * sizeof(float), g, out_path);
  xfread(ref_params, P * sizeof(float), g, out_path);
  xfread(branches, sizeof(branches), g, out_path);
  if (nb) xfread(ref_buffers, nb * sizeof(float), g, out_path);
  xfread(ref_logits, nl * sizeof(float), g, out_path);
  xfclose(g, out_path);
  double loss_err = 0;
  for (int t = 0; t < 3; t++) loss_err = fmax(loss_err, fabs(r.loss[t] - ref_loss[t]) / fabs(ref_loss[t]));
  char wg[64] = "", wp[64] = "";
  double cancelled;
  double grad_err = steps_grads_err(&m, r.grads, ref_grads, wg, sizeof(wg), &cancelled);
  double param_err = steps_model_err(&m, r.params, ref_params, wp, sizeof(wp));
  double buf_err = nb ? steps_tensor_err(r.buffers, ref_buffers, nb) : 0;
  double eval_err = steps_tensor_err(r.eval_logits, ref_logits, nl);
  printf("    %s%s width %g %dx%d batch %d %s: losses %.6f %.6f %.6f | worst rel err: loss %.2e, "
         "grad %.2e (%s), params after 3 steps %.2e (%s), evaluation logits %.2e; branches "
         "within rounding of a kink: %.0f\n",
         name, bn ? "_bn" : "", width, size, size, n, adamw ? "adamw" : "adam", r.loss[0],
         r.loss[1], r.loss[2], loss_err, grad_err, wg, param_err, wp, eval_err, branches[1]);
  if (bn)
    printf("    batch norm: running statistics %.2e; the conv biases before it have gradients at "
           "%.1e of their weights' (zero in exact arithmetic)\n", buf_err, cancelled);
  if (branches[0] != 0)
    test_fail(__FILE__, __LINE__, "%.0f ReLU/max-pool decisions differ from PyTorch's by more than rounding", branches[0]);
  EXPECT(loss_err <= GOLDEN_TOL);
  EXPECT(grad_err <= GOLDEN_TOL);
  EXPECT(param_err <= GOLDEN_TOL);
  EXPECT(buf_err <= GOLDEN_TOL);
  EXPECT(eval_err <= GOLDEN_TOL);
  EXPECT(cancelled <= 1e-5);
  EXPECT(r.loss[2] < r.loss[0]); // the steps learn the batch
  free(ref_logits);
  free(ref_buffers);
  free(ref_params);
  free(ref_grads);
  steps_free(&r);
  b->ops->destroy(b);
}

TEST(golden_vgg16_32_adam_vs_pytorch) { run_case("vgg16", 0.125f, 32, 6, 0, 0); }
TEST(golden_vgg16_64_adam_vs_pytorch) { run_case("vgg16", 0.125f, 64, 4, 0, 0); }
TEST(golden_vgg16_32_adamw_vs_pytorch) { run_case("vgg16", 0.125f, 32, 6, 1, 0); }
TEST(golden_vgg11_64_adam_vs_pytorch) { run_case("vgg11", 0.25f, 64, 3, 0, 0); }
// Batch norm after every conv (torchvision's vgg*_bn): also the running statistics after the
// steps and the evaluation-mode logits with them.
TEST(golden_vgg16_bn_32_adam_vs_pytorch) { run_case("vgg16", 0.125f, 32, 6, 0, 1); }
TEST(golden_vgg11_bn_64_adamw_vs_pytorch) { run_case("vgg11", 0.25f, 64, 3, 1, 1); }
