// test_core.c - configuration parsing, the VGG table, initialisation, the bucket plan, the
// learning-rate warmup and the rank-0 decision logic (ReduceLROnPlateau, early stopping, and
// how they treat warmup epochs).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "config.h"
#include "model.h"
#include "optim.h"
#include "rng.h"
#include "test.h"

static void parse(config *c, const char *line) {
  char buf[1024], *argv[64];
  int argc = 0;
  snprintf(buf, sizeof(buf), "vgg_dist %s", line);
  for (char *t = strtok(buf, " "); t && argc < 63; t = strtok(NULL, " ")) argv[argc++] = t;
  argv[argc] = NULL;
  config_parse(c, argc, argv);
}

TEST(config_defaults_follow_the_recipe) {
  config c;
  parse(&c, "");
  EXPECT(strcmp(c.model, "vgg16") == 0);
  EXPECT_EQ_INT(c.image_size, 128);
  EXPECT_EQ_INT(c.batch, 256);
  EXPECT_EQ_INT(c.epochs, 30);
  EXPECT_NEAR(c.lr, 1e-3, 1e-9);
  EXPECT_NEAR(c.weight_decay, 1e-4, 1e-10);
  EXPECT_EQ_INT(c.adamw, 0);
  EXPECT_NEAR(c.lr_factor, 0.1, 1e-7);
  EXPECT_EQ_INT(c.lr_patience, 5);
  EXPECT_EQ_INT(c.early_stop, 5);
  EXPECT_EQ_INT(c.val_size, 10000);
  EXPECT_EQ_INT(c.seed, 11);
  EXPECT_NEAR(c.dropout, 0.5, 0);
  EXPECT_EQ_INT(c.autotune, AUTOTUNE_FASTEST);
  EXPECT_EQ_INT(c.batchnorm, 1);      // measured: learns on every seed (README, Accuracy)
  EXPECT_NEAR(c.warmup_epochs, 0, 0); // auto: none with batch norm
  EXPECT_EQ_INT(c.init, INIT_PYTORCH); // auto: PyTorch's with batch norm (measured best)
  parse(&c, "--batchnorm 0");
  EXPECT_NEAR(c.warmup_epochs, 1, 0); // auto: an epoch without it (past the stall)
  EXPECT_EQ_INT(c.init, INIT_TORCHVISION);
  parse(&c, "--init paper --init auto --batchnorm 0");
  EXPECT_EQ_INT(c.init, INIT_TORCHVISION); // auto by name
  parse(&c, "--init paper");
  EXPECT_EQ_INT(c.init, INIT_PAPER);
  parse(&c, "--batchnorm 0 --warmup-epochs 0");
  EXPECT_NEAR(c.warmup_epochs, 0, 0); // unless asked otherwise
  parse(&c, "--warmup-epochs 0.5");
  EXPECT_NEAR(c.warmup_epochs, 0.5, 0);
  parse(&c, "--warmup-epochs 2 --batchnorm 0 --warmup-epochs auto");
  EXPECT_NEAR(c.warmup_epochs, 1, 0); // the default, asked for by name
}

TEST(config_preset_is_overridden_wherever_options_stand) {
  config c;
  parse(&c, "--epochs 3 --preset cpu-demo --width 0.5");
  EXPECT(strcmp(c.preset, "cpu-demo") == 0);
  EXPECT_EQ_INT(c.epochs, 3);       // before the preset on the line, still wins
  EXPECT_NEAR(c.width, 0.5, 0);     // after it
  EXPECT_EQ_INT(c.image_size, 32);  // from the preset
  EXPECT(strcmp(c.model, "vgg11") == 0);
  parse(&c, "--model vgg19 --optim adamw --precision bf16 --device cpu --seed 123456789012");
  EXPECT(strcmp(c.model, "vgg19") == 0);
  EXPECT_EQ_INT(c.adamw, 1);
  EXPECT_EQ_INT(c.precision, PREC_BF16);
  EXPECT_EQ_INT(c.device, DEVICE_CPU);
  EXPECT(c.seed == 123456789012ull);
  parse(&c, "--autotune first");
  EXPECT_EQ_INT(c.autotune, AUTOTUNE_FIRST);
  parse(&c, "--autotune first --autotune fastest");
  EXPECT_EQ_INT(c.autotune, AUTOTUNE_FASTEST);
  parse(&c, "--preset cpu-demo");
  EXPECT_NEAR(c.warmup_epochs, 0, 0); // cpu-demo has batch norm: auto is none
  parse(&c, "--warmup-epochs 1.5 --preset cpu-demo");
  EXPECT_NEAR(c.warmup_epochs, 1.5, 0);
  parse(&c, "--epochs 4 --warmup-epochs 4");
  EXPECT_NEAR(c.warmup_epochs, 4, 0); // as long as the run is allowed
}

static void parse_child(void *line) {
  config c;
  parse(&c, (const char *)line);
}

TEST(config_rejects_bad_input_with_status_2_naming_the_option) {
  struct {
    const char *line, *needle;
  } bad[] = {
      {"--bogus 1", "--bogus"},
      {"--epochs 0", "--epochs"},
      {"--lr abc", "--lr"},
      {"--batch 2.5", "--batch"},
      {"--image-size 96", "--image-size"},
      {"--model vgg15", "--model"},
      {"--flip-p 1.5", "--flip-p"},
      {"--preset fast", "--preset"},
      {"--mean 0.5,0.5", "--mean"},
      {"--resume auto", "--resume"},
      {"--autotune slowest", "--autotune"},
      {"--warmup-epochs -0.5", "--warmup-epochs"},
      {"--warmup-epochs x", "--warmup-epochs"},
      {"--epochs 3 --warmup-epochs 3.5", "--warmup-epochs"}, // longer than the run
      {"--epochs", "--epochs"},
      {"stray", "stray"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    char err[512];
    int status = test_in_child(parse_child, (void *)bad[i].line, err, sizeof(err));
    if (status != 2) test_fail(__FILE__, __LINE__, "'%s': exit %d, expected 2", bad[i].line, status);
    if (!strstr(err, bad[i].needle))
      test_fail(__FILE__, __LINE__, "'%s': message '%s' does not name %s", bad[i].line, err, bad[i].needle);
    if (strchr(err, '\n') != strrchr(err, '\n'))
      test_fail(__FILE__, __LINE__, "'%s': message is not one line: '%s'", bad[i].line, err);
  }
}

TEST(model_parameter_counts_match_torchvision) {
  // torchvision's vgg16(num_classes=10) at 224x224 has 134,301,514 parameters; vgg11 128,807,306;
  // at 32x32 the first FC shrinks to 512 inputs.
  model m;
  model_build(&m, "vgg16", 1, 224, 10, 0.5f, 0);
  EXPECT_EQ_INT(m.n_params, 134301514);
  model_build(&m, "vgg11", 1, 224, 10, 0.5f, 0);
  EXPECT_EQ_INT(m.n_params, 128807306);
  model_build(&m, "vgg16", 1, 32, 10, 0.5f, 0);
  EXPECT_EQ_INT(m.n_params, 14714688 + 512 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10);
  int convs = 0, pools = 0;
  for (int i = 0; i < m.n_layers; i++) {
    convs += m.layers[i].kind == LAYER_CONV;
    pools += m.layers[i].kind == LAYER_POOL;
  }
  EXPECT_EQ_INT(convs, 13);
  EXPECT_EQ_INT(pools, 5);
  model_build(&m, "vgg19", 1, 32, 10, 0.5f, 0);
  convs = 0;
  for (int i = 0; i < m.n_layers; i++) convs += m.layers[i].kind == LAYER_CONV;
  EXPECT_EQ_INT(convs, 16);
  // Training FLOPs (3 x 2 x multiply-adds, convs and FCs): 30.4 GFLOP at 128 and 1.99 at 32
  // (the convs alone 1.88; the FCs are 0.11 at 32, 0.3 at 128).
  model_build(&m, "vgg16", 1, 128, 10, 0.5f, 0);
  EXPECT_NEAR(model_train_flops(&m) * 1e-9, 30.4, 0.1);
  model_build(&m, "vgg16", 1, 32, 10, 0.5f, 0);
  EXPECT_NEAR(model_train_flops(&m) * 1e-9, 1.99, 0.01);
  model_build(&m, "vgg16", 0.25f, 64, 10, 0.5f, 0);
  const layer *fc1 = &m.layers[m.n_layers - 4];
  EXPECT_EQ_INT(fc1->kind, LAYER_LINEAR);
  EXPECT_EQ_INT(fc1->C, 128 * 2 * 2);
  EXPECT_EQ_INT(fc1->K, 1024);
}

TEST(model_json_parses_and_matches_the_model) {
  // model_print_json (vgg_dist --print-model, read by the PyTorch scripts) for every row of the
  // table, checked by tests/model_json_check.py: valid JSON, this model's counts, shapes chained,
  // parameter offsets tiling the flat buffer.
  const char *names[] = {"vgg11", "vgg13", "vgg16", "vgg19"};
  const char *src = getenv("VGG_SOURCE_DIR");
  for (int i = 0; i < 4; i++) {
    model m;
    model_build(&m, names[i], i == 3 ? 0.5f : 0.25f, i == 1 ? 64 : 32, 10, 0.3f, 0);
    int convs = 0;
    for (int k = 0; k < m.n_layers; k++) convs += m.layers[k].kind == LAYER_CONV;
    char path[512], cmd[1400];
    snprintf(path, sizeof(path), "%s/model_%s.json", test_tmp_dir(), names[i]);
    FILE *f = xfopen(path, "w");
    model_print_json(&m, f);
    xfclose(f, path);
    snprintf(cmd, sizeof(cmd), "python3 %s/tests/model_json_check.py %s %s %zu %d %d",
             src && *src ? src : ".", path, names[i], m.n_params, m.n_layers, convs);
    int rc = system(cmd);
    if (rc != 0) test_fail(__FILE__, __LINE__, "'%s' failed (%d)", cmd, rc);
  }
}

TEST(config_print_model_flag) {
  config c;
  parse(&c, "--model vgg19 --width 0.5");
  EXPECT_EQ_INT(c.print_model, 0);
  parse(&c, "--print-model --preset cpu-demo --model vgg19 --width 0.5");
  EXPECT_EQ_INT(c.print_model, 1);
  EXPECT(strcmp(c.model, "vgg19") == 0);
  EXPECT_NEAR(c.width, 0.5, 1e-9);
  EXPECT_EQ_INT(c.image_size, 32);
}

TEST(model_init_statistics_per_scheme) {
  model m;
  model_build(&m, "vgg11", 0.5f, 32, 10, 0.5f, 0);
  float *p = malloc(m.n_params * sizeof(float));
  const layer *conv = &m.layers[2]; // 32 -> 64 channels after the first pool
  const layer *fc = &m.layers[m.n_layers - 2];
  for (int scheme = 0; scheme < 3; scheme++) {
    model_init_params(&m, p, (init_kind)scheme, 5);
    double s2 = 0, s1 = 0, mx = 0;
    for (size_t j = 0; j < conv->w_count; j++) {
      s1 += p[conv->w_off + j];
      s2 += p[conv->w_off + j] * (double)p[conv->w_off + j];
      mx = fmax(mx, fabs(p[conv->w_off + j]));
    }
    double n = conv->w_count, sd = sqrt(s2 / n - (s1 / n) * (s1 / n));
    double want = scheme == INIT_TORCHVISION ? sqrt(2.0 / (9.0 * conv->K))
                : scheme == INIT_PYTORCH     ? 1 / sqrt(9.0 * conv->C) / sqrt(3.0)
                                             : 0.01;
    EXPECT_NEAR(sd / want, 1, 0.03);
    if (scheme == INIT_PYTORCH) EXPECT(mx <= 1 / sqrt(9.0 * conv->C));
    double bias = 0;
    for (size_t j = 0; j < fc->b_count; j++) bias += fabs(p[fc->b_off + j]);
    EXPECT(scheme == INIT_PYTORCH ? bias > 0 : bias == 0);
  }
  float *q = malloc(m.n_params * sizeof(float));
  model_init_params(&m, q, INIT_PAPER, 5);
  EXPECT(memcmp(p, q, m.n_params * sizeof(float)) == 0); // deterministic
  model_init_params(&m, q, INIT_PAPER, 6);
  EXPECT(memcmp(p, q, m.n_params * sizeof(float)) != 0);
  free(q);
  free(p);
}

TEST(bucket_plan_tiles_the_buffer_in_backward_order) {
  model m;
  model_build(&m, "vgg16", 0.25f, 32, 10, 0.5f, 0);
  size_t sizes[] = {1, 50000, 400000, 100000000};
  for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
    bucket_plan p;
    model_plan_buckets(&p, &m, sizes[k]);
    REQUIRE(p.n >= 1);
    EXPECT(p.end[0] == m.n_params);
    EXPECT(p.begin[p.n - 1] == 0);
    for (int i = 0; i < p.n; i++) {
      EXPECT(p.begin[i] < p.end[i]);
      if (i) EXPECT(p.end[i] == p.begin[i - 1]);
      if (i) EXPECT(p.ready_layer[i] < p.ready_layer[i - 1]);
      if (i + 1 < p.n) EXPECT(p.end[i] - p.begin[i] >= sizes[k]);
      EXPECT(m.layers[p.ready_layer[i]].w_off == p.begin[i]);
    }
    if (sizes[k] == 1) EXPECT_EQ_INT(p.n, 16); // one per parameterised layer
    if (sizes[k] == 100000000) EXPECT_EQ_INT(p.n, 1);
  }
}

TEST(plateau_matches_pytorch_semantics) {
  // torch.optim.lr_scheduler.ReduceLROnPlateau(factor=0.1, patience=2, threshold=1e-4) fed
  // these losses gives lrs 1e-3 x4, then 1e-4 after the 3rd epoch without improvement.
  train_state st;
  memset(&st, 0, sizeof(st));
  optim_state_init(&st, 1e-3f);
  plateau_params p = {0.1f, 1e-4f, 0, 2};
  double losses[] = {1.0, 0.9, 0.89995, 0.95, 0.91, 0.8, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85};
  float want[] = {1e-3f, 1e-3f, 1e-3f, 1e-3f, 1e-4f, 1e-4f, 1e-4f, 1e-4f, 1e-5f, 1e-5f, 1e-5f, 1e-6f};
  for (int i = 0; i < 12; i++) {
    plateau_step(&st, losses[i], &p);
    EXPECT_NEAR(st.lr / want[i], 1, 1e-5);
  }
  // min_lr floors the reduction.
  optim_state_init(&st, 1e-3f);
  p.min_lr = 5e-4f;
  p.patience = 0;
  plateau_step(&st, 1, &p);
  plateau_step(&st, 1, &p);
  EXPECT_NEAR(st.lr, 5e-4, 1e-9);
}

TEST(warmup_length_in_steps) {
  EXPECT_EQ_INT(optim_steps_per_epoch(320, 32), 10);
  EXPECT_EQ_INT(optim_steps_per_epoch(321, 32), 11); // the short last batch is a step
  EXPECT_EQ_INT(warmup_steps_for(0, 13), 0);          // off
  EXPECT_EQ_INT(warmup_steps_for(1, 13), 13);
  EXPECT_EQ_INT(warmup_steps_for(2, 13), 26);
  EXPECT_EQ_INT(warmup_steps_for(0.5f, 13), 7);       // 6.5 steps: rounded up
  EXPECT_EQ_INT(warmup_steps_for(1e-6f, 13), 1);      // any fraction is a whole step
  EXPECT_EQ_INT(warmup_steps_for(0.1f, 10), 1);       // 0.1f is a hair above 0.1: still 1
  EXPECT_EQ_INT(warmup_steps_for(0.3f, 10), 3);
  EXPECT_EQ_INT(warmup_steps_for(0.7f, 1563), 1095);  // 1094.1
  EXPECT_EQ_INT(warmup_steps_for(2.5f, 157), 393);    // 392.5
}

TEST(warmup_factor_start_middle_end) {
  // W = 4: 1/4, 2/4, 3/4, then the full lr from the warmup's last step on.
  const double want[] = {0.25, 0.5, 0.75, 1, 1, 1};
  for (int k = 0; k < 6; k++) EXPECT(warmup_factor(k, 4) == want[k]);
  EXPECT(warmup_factor(1000000, 4) == 1);
  for (int k = 0; k < 50; k += 7) { // no warmup: the identity
    EXPECT(warmup_factor(k, 0) == 1);
    EXPECT(warmup_factor(k, -3) == 1);
  }
  train_state st;
  memset(&st, 0, sizeof(st));
  optim_state_init(&st, 1e-3f);
  for (int64_t k = 0; k < 100; k += 9) EXPECT(optim_lr_at(&st, k) == st.lr); // bitwise
  // --warmup-epochs 0.5 at 13 steps an epoch: 7 steps, from lr/7 to lr.
  st.warmup_steps = warmup_steps_for(0.5f, 13);
  EXPECT_NEAR(optim_lr_at(&st, 0) / 1e-3, 1.0 / 7, 1e-6); // near 0, never 0
  EXPECT_NEAR(optim_lr_at(&st, 3) / 1e-3, 4.0 / 7, 1e-6); // the middle
  EXPECT(optim_lr_at(&st, 6) == st.lr);                   // the last warmup step: exactly lr
  EXPECT(optim_lr_at(&st, 7) == st.lr);
  for (int64_t k = 1; k < 7; k++) EXPECT(optim_lr_at(&st, k) > optim_lr_at(&st, k - 1));
  // The warmup climbs to the scheduler's lr, whatever it is now.
  st.lr = 1e-4f;
  EXPECT_NEAR(optim_lr_at(&st, 3) / 1e-4, 4.0 / 7, 1e-6);
  EXPECT(optim_lr_at(&st, 9) == st.lr);
}

TEST(warmup_epochs_are_hidden_from_plateau_and_early_stop) {
  // 10 steps an epoch, warmup 15 steps: epochs 0 and 1 are warmup epochs (epoch 1 still began
  // inside it). The losses rise through them; patience 0 would cut the lr at once without the
  // warmup.
  const plateau_params p = {0.1f, 1e-4f, 0, 0};
  const double losses[] = {1.0, 1.2, 1.1, 1.15, 1.3};
  const int64_t spe = 10;
  train_state st, off;
  memset(&st, 0, sizeof(st));
  optim_state_init(&st, 1e-3f);
  st.warmup_steps = 15;
  EXPECT(warmup_epoch(0, 15) && warmup_epoch(10, 15) && !warmup_epoch(20, 15));
  EXPECT(!warmup_epoch(0, 0));
  int found[5];
  for (int e = 0; e < 5; e++) {
    st.epoch = e;
    st.step = (e + 1) * spe;
    found[e] = optim_epoch_end(&st, losses[e], 0.5, e * spe, &p);
    if (e == 1) { // after the warmup epochs: the scheduler saw nothing, nothing counted
      EXPECT(isinf(st.sched_best) && st.sched_bad_epochs == 0 && st.lr == 1e-3f);
      EXPECT_EQ_INT(st.es_bad_epochs, 0);
    }
  }
  EXPECT_EQ_INT(found[0], OPTIM_BEST);    // best-model tracking sees warmup epochs
  EXPECT_EQ_INT(found[1], 0);             // worse, but not counted
  EXPECT_EQ_INT(found[2], 0);             // the scheduler's first epoch: its best, no cut
  EXPECT_EQ_INT(found[3], OPTIM_REDUCED); // one bad epoch > patience 0
  EXPECT_EQ_INT(found[4], OPTIM_REDUCED);
  EXPECT_NEAR(st.lr, 1e-5, 1e-12);
  EXPECT_EQ_INT(st.best_epoch, 0);
  EXPECT_EQ_INT(st.es_bad_epochs, 3); // epochs 2, 3, 4
  // Without a warmup the same losses cut the lr at epoch 1, and optim_epoch_end is exactly
  // plateau_step then early_stop_step.
  memset(&off, 0, sizeof(off));
  optim_state_init(&off, 1e-3f);
  memset(&st, 0, sizeof(st));
  optim_state_init(&st, 1e-3f);
  for (int e = 0; e < 5; e++) {
    off.epoch = st.epoch = e;
    int reduced = plateau_step(&off, losses[e], &p);
    int best = early_stop_step(&off, losses[e], 0.5, e);
    found[e] = optim_epoch_end(&st, losses[e], 0.5, e * spe, &p);
    EXPECT_EQ_INT(found[e], (best ? OPTIM_BEST : 0) | (reduced ? OPTIM_REDUCED : 0));
    EXPECT(st.lr == off.lr && st.sched_best == off.sched_best &&
           st.sched_bad_epochs == off.sched_bad_epochs && st.es_bad_epochs == off.es_bad_epochs &&
           st.best_epoch == off.best_epoch);
  }
  EXPECT_NEAR(off.lr, 1e-3 * 1e-4, 1e-12); // cut at epochs 1 to 4 (none beats epoch 0)
}

TEST(early_stopping_and_best_epoch) {
  train_state st;
  memset(&st, 0, sizeof(st));
  optim_state_init(&st, 1e-3f);
  double losses[] = {2.0, 1.5, 1.6, 1.45, 1.7, 1.4, 1.41, 1.42};
  int stop = 0, best_at = -1, stopped_at = -1;
  for (int e = 0; e < 8 && !stop; e++) {
    if (early_stop_step(&st, losses[e], 0.1 * e, e)) best_at = e;
    stop = early_stop_due(&st, 2);
    if (stop) stopped_at = e;
  }
  EXPECT_EQ_INT(best_at, 5);
  EXPECT_EQ_INT(stopped_at, 7);
  EXPECT_NEAR(st.best_val_loss, 1.4, 0);
  EXPECT_EQ_INT(st.best_epoch, 5);
  optim_state_init(&st, 1e-3f);
  for (int e = 0; e < 20; e++) early_stop_step(&st, 1.0, 0, e);
  EXPECT_EQ_INT(early_stop_due(&st, 0), 0); // patience 0 disables
  EXPECT_EQ_INT(early_stop_due(&st, 19), 1);
}

TEST(philox_known_answer_and_uniform_range) {
  // Random123's known-answer test for philox4x32-10: counter 0, key 0.
  uint32_t o[4];
  rng_philox(o, 0, 0, 0, 0, 0, 0);
  EXPECT(o[0] == 0x6627e8d5u && o[1] == 0xe169c58du && o[2] == 0xbc57ac4cu && o[3] == 0x9b00dbd8u);
  double s = 0;
  for (uint32_t i = 0; i < 100000; i++) {
    float u = rng_uniform(7, 1, 2, i, 3);
    REQUIRE(u >= 0 && u < 1);
    s += u;
  }
  EXPECT_NEAR(s / 100000, 0.5, 0.005);
}
