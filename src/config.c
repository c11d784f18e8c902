// config.c - option table, presets, parsing, validation and printing of the configuration.
//
// One table describes every option (name, type, field, range, help); --help, parsing and the
// printed configuration all walk it, so an option cannot be documented but not parsed.
#include "config.h"

#include <ctype.h>
#include <getopt.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

typedef enum { OPT_INT, OPT_FLOAT, OPT_STR, OPT_ENUM, OPT_U64, OPT_VEC3 } opt_type;

typedef struct option_spec {
  const char *name;
  opt_type type;
  size_t offset;
  double min, max; // inclusive range (numbers); ignored for strings
  const char *choices; // OPT_ENUM: names separated by '|', value = position
  const char *metavar;
  const char *help;
} option_spec;

#define F(field) offsetof(config, field)
static const option_spec options[] = {
    {"preset", OPT_STR, F(preset), 0, 0, NULL, "NAME",
     "paper (the recipe's defaults) | cpu-demo (narrow VGG11 at 32x32, learns on 2 CPU cores in minutes)"},
    {"data", OPT_STR, F(data_dir), 0, 0, NULL, "DIR",
     "CIFAR-10 binary directory (default: $CIFAR10_DIR, else data/cifar-10-batches-bin)"},
    {"model", OPT_ENUM, F(model), 0, 0, "vgg11|vgg13|vgg16|vgg19", "NAME",
     "VGG configuration A|B|D|E of the paper"},
    {"width", OPT_FLOAT, F(width), 0.01, 4, NULL, "W", "channel and FC width multiplier (1 = paper)"},
    {"image-size", OPT_INT, F(image_size), 32, 224, NULL, "S", "input size: 32, 64, 128 or 224 (bilinear resize of 32x32)"},
    {"batch", OPT_INT, F(batch), 1, 1 << 20, NULL, "N", "GLOBAL batch, split evenly over ranks"},
    {"epochs", OPT_INT, F(epochs), 1, 100000, NULL, "N", "epochs"},
    {"lr", OPT_FLOAT, F(lr), 1e-12, 10, NULL, "X", "learning rate"},
    {"weight-decay", OPT_FLOAT, F(weight_decay), 0, 1, NULL, "X", "weight decay (L2 in the gradient for adam, decoupled for adamw)"},
    {"optim", OPT_ENUM, F(adamw), 0, 0, "adam|adamw", "NAME", "optimizer (PyTorch semantics)"},
    {"beta1", OPT_FLOAT, F(beta1), 0, 0.999999, NULL, "X", "Adam beta1"},
    {"beta2", OPT_FLOAT, F(beta2), 0, 0.999999, NULL, "X", "Adam beta2"},
    {"eps", OPT_FLOAT, F(eps), 1e-12, 1, NULL, "X", "Adam epsilon"},
    {"dropout", OPT_FLOAT, F(dropout), 0, 0.95, NULL, "P", "dropout probability before each of the first two FC layers"},
    {"batchnorm", OPT_INT, F(batchnorm), 0, 1, NULL, "0|1", "BatchNorm2d after every conv, before its ReLU (torchvision's vgg*_bn)"},
    {"sync-bn", OPT_INT, F(sync_bn), 0, 1, NULL, "0|1",
     "batch norm's training statistics over the global batch, summed over the ranks (1: the "
     "trajectory does not depend on the number of ranks) or each rank's share alone (0: "
     "DDP's default, no communication)"},
    {"flip-p", OPT_FLOAT, F(flip_p), 0, 1, NULL, "P", "horizontal flip probability (the notebook used 0.7)"},
    {"val-size", OPT_INT, F(val_size), 1, 1 << 30, NULL, "N", "validation images split off the train set"},
    {"seed", OPT_U64, F(seed), 0, 0, NULL, "N", "seed of every random decision (split, shuffle, flips, dropout, init)"},
    {"lr-patience", OPT_INT, F(lr_patience), 0, 100000, NULL, "N", "ReduceLROnPlateau patience (epochs)"},
    {"lr-factor", OPT_FLOAT, F(lr_factor), 1e-6, 0.999999, NULL, "X", "ReduceLROnPlateau factor"},
    {"lr-threshold", OPT_FLOAT, F(lr_threshold), 0, 1, NULL, "X", "ReduceLROnPlateau relative threshold"},
    {"min-lr", OPT_FLOAT, F(min_lr), 0, 10, NULL, "X", "ReduceLROnPlateau floor"},
    {"warmup-epochs", OPT_FLOAT, F(warmup_epochs), 0, 100000, NULL, "E",
     "linear lr warmup, per step, over the first E epochs (fractional allowed): step k of W "
     "takes lr * (k+1)/W; the plateau scheduler starts after it (0: off; auto: 1 without "
     "batch norm, 0 with it)"},
    {"early-stop", OPT_INT, F(early_stop), 0, 100000, NULL, "N", "stop after N epochs without a better validation loss (0: never)"},
    {"train-limit", OPT_INT, F(train_limit), 0, 1 << 30, NULL, "N", "use only the first N train-set images (0: all)"},
    {"test-limit", OPT_INT, F(test_limit), 0, 1 << 30, NULL, "N", "use only the first N test images (0: all)"},
    {"checkpoint-dir", OPT_STR, F(checkpoint_dir), 0, 0, NULL, "DIR", "write checkpoints here (empty: none)"},
    {"resume", OPT_STR, F(resume), 0, 0, NULL, "PATH|auto", "resume from a checkpoint, or the newest in --checkpoint-dir"},
    {"init-from", OPT_STR, F(init_from), 0, 0, NULL, "CKPT",
     "start a NEW run (step 0, fresh Adam state and schedule, this run's seed) from the "
     "parameters and buffers of checkpoint CKPT, whose model the model options must describe; "
     "the normalisation is this run's own, not the checkpoint's (not with --resume)"},
    {"eval", OPT_STR, F(eval), 0, 0, NULL, "CKPT",
     "no training: evaluate checkpoint CKPT on the test set (loss, accuracy, per class, the "
     "confusion matrix; an \"eval\" event in --metrics) with its own normalisation; the model "
     "options must describe its model"},
    {"dump-logits", OPT_STR, F(dump_logits), 0, 0, NULL, "FILE",
     "with --eval: write the test logits to FILE as NumPy .npy, float32, shape (N, 10), in the "
     "test file's order"},
    {"keep", OPT_INT, F(keep), 0, 100000, NULL, "K", "keep the K newest periodic checkpoints (0: all); best.bin is always kept"},
    {"metrics", OPT_STR, F(metrics), 0, 0, NULL, "FILE", "write JSON Lines metrics here"},
    {"device", OPT_ENUM, F(device), 0, 0, "auto|cpu|cuda", "NAME", "backend (auto: CUDA when a GPU is visible)"},
    {"precision", OPT_ENUM, F(precision), 0, 0, "fp32|tf32|bf16", "NAME", "CUDA compute precision (CPU: fp32)"},
    {"init", OPT_ENUM, F(init), 0, 0, "torchvision|pytorch|paper|auto", "NAME",
     "weight initialisation (auto: pytorch with batch norm, torchvision without)"},
    {"threads", OPT_INT, F(threads), 0, 1024, NULL, "N", "CPU threads per rank (0: OpenMP/OpenBLAS default)"},
    {"log-every", OPT_INT, F(log_every), 1, 1 << 30, NULL, "N", "steps between progress lines"},
    {"eval-batch", OPT_INT, F(eval_batch), 1, 1 << 20, NULL, "N", "per-rank batch for validation and test"},
    {"mean", OPT_VEC3, F(mean), 0, 0, NULL, "R,G,B", "normalisation mean (default: the train split's own)"},
    {"std", OPT_VEC3, F(std), 0, 0, NULL, "R,G,B", "normalisation std (default: the train split's own)"},
    {"cuda-graphs", OPT_INT, F(cuda_graphs), 0, 1, NULL, "0|1", "capture the training step as a CUDA graph and replay it (full batches)"},
    {"autotune", OPT_ENUM, F(autotune), 0, 0, "fastest|first", "NAME",
     "CUDA conv engine: fastest (each candidate timed at start-up) | first (the heuristics' first that runs, untimed: every process picks the same)"},
    {"grad-allreduce", OPT_ENUM, F(grad_bf16), 0, 0, "fp32|bf16", "NAME", "gradient all-reduce precision on the wire (NCCL)"},
    {"comm-timeout", OPT_FLOAT, F(comm_timeout), 1, 1e6, NULL, "S", "end the job when a collective (gradient all-reduce over NCCL or MPI, MPI control messages) stays unfinished for S seconds (not while rank 0 alone reads or writes a checkpoint)"},
    {"bucket-mb", OPT_FLOAT, F(bucket_mb), 0.001, 4096, NULL, "MB", "gradient all-reduce bucket size"},
    {"max-steps", OPT_INT, F(max_steps), 0, 1 << 30, NULL, "N", "stop after N optimizer steps with a checkpoint (0: off)"},
    {"stop-check", OPT_FLOAT, F(stop_check), 0, 60, NULL, "S",
     "how often the ranks agree on a stop signal (or a failed checkpoint write): about every S "
     "seconds, at a step every rank computes alike, or after every step when a step takes "
     "longer (0: after every step); --max-steps is exact whatever S"},
};
#undef F
#define N_OPTIONS ((int)(sizeof(options) / sizeof(options[0])))

const char *config_precision_name(precision_kind p) {
  return p == PREC_TF32 ? "tf32" : p == PREC_BF16 ? "bf16" : "fp32";
}

void config_defaults(config *c) {
  memset(c, 0, sizeof(*c));
  strcpy(c->preset, "paper");
  strcpy(c->model, "vgg16");
  c->width = 1.0f;
  c->image_size = 128;
  c->batch = 256;
  c->epochs = 30;
  c->lr = 1e-3f;
  c->weight_decay = 1e-4f;
  c->beta1 = 0.9f;
  c->beta2 = 0.999f;
  c->eps = 1e-8f;
  c->dropout = 0.5f;
  // Measured on the full CIFAR-10 (README, Accuracy): VGG16 with batch norm learns on every
  // seed (best with PyTorch's initialisation); without it, it stalls at chance on some unless
  // the lr is warmed up over an epoch.
  c->batchnorm = 1;
  // Each rank's own batch statistics, as PyTorch's DDP: with 32 to 64 images per GPU they are
  // statistics enough, and summing them over the ranks costs 39 all-reduces a step on the
  // critical path, the backward's queued behind the gradient buckets (README, Batch norm
  // across ranks: 2.4% measured on 2 CPU ranks, up to a third estimated on 8 GPUs).
  c->sync_bn = 0;
  c->warmup_epochs = WARMUP_AUTO;
  c->flip_p = 0.5f;
  c->val_size = 10000;
  c->seed = 11;
  c->lr_patience = 5;
  c->lr_factor = 0.1f;
  c->lr_threshold = 1e-4f;
  c->early_stop = 5;
  c->keep = 3;
  c->device = DEVICE_AUTO;
  c->precision = PREC_FP32;
  c->init = INIT_AUTO;
  c->log_every = 20;
  c->eval_batch = 200;
  c->comm_timeout = 300;
  c->stop_check = 0.25f;
  c->bucket_mb = 25;
  c->cuda_graphs = 1;
  c->autotune = AUTOTUNE_FASTEST;
}

// The cpu-demo preset: a narrow VGG11 with batch norm at 32x32 that learns real CIFAR-10 on two
// CPU cores in a minute (on the bundled 3,000-image sample: about 49% test accuracy).
static void preset_apply(config *c, const char *name) {
  if (strcmp(name, "paper") == 0) {
    config_defaults(c);
  } else if (strcmp(name, "cpu-demo") == 0) {
    config_defaults(c);
    strcpy(c->model, "vgg11");
    c->batchnorm = 1;
    // On the bundled sample, measured: 49% test accuracy with torchvision's initialisation,
    // 37% with PyTorch's (auto's choice with batch norm, which is better on the full set).
    c->init = INIT_TORCHVISION;
    c->width = 0.25f;
    c->image_size = 32;
    c->batch = 64;
    c->epochs = 10;
    c->val_size = 300;
    c->train_limit = 10000;
    c->lr_patience = 2;
    c->early_stop = 4;
    c->log_every = 10;
    c->device = DEVICE_CPU;
  } else {
    DIE_USAGE("--preset: unknown preset '%s' (paper | cpu-demo)", name);
  }
  snprintf(c->preset, sizeof(c->preset), "%s", name);
}

static void usage(FILE *f) {
  config d;
  config_defaults(&d);
  fprintf(f, "usage: mpirun -np N vgg_dist [options]\n"
             "Data-parallel VGG training on CIFAR-10 (one rank per GPU; CPU backend without GPUs).\n\n");
  for (int i = 0; i < N_OPTIONS; i++) {
    const option_spec *o = &options[i];
    char lhs[64], def[96];
    snprintf(lhs, sizeof(lhs), "--%s %s", o->name, o->metavar);
    const char *p = (const char *)&d + o->offset;
    switch (o->type) {
    case OPT_INT: snprintf(def, sizeof(def), "%d", *(const int *)p); break;
    case OPT_FLOAT:
      if (*(const float *)p == WARMUP_AUTO) snprintf(def, sizeof(def), "auto");
      else snprintf(def, sizeof(def), "%g", *(const float *)p);
      break;
    case OPT_U64: snprintf(def, sizeof(def), "%llu", (unsigned long long)*(const uint64_t *)p); break;
    case OPT_STR: snprintf(def, sizeof(def), "%s", *p ? p : "none"); break;
    case OPT_VEC3: snprintf(def, sizeof(def), "computed"); break;
    case OPT_ENUM: {
      if (strcmp(o->name, "model") == 0) {
        snprintf(def, sizeof(def), "%s", d.model);
        break;
      }
      int v = *(const int *)p;
      const char *s = o->choices;
      for (int k = 0; k < v && strchr(s, '|'); k++) s = strchr(s, '|') + 1;
      snprintf(def, sizeof(def), "%.*s", (int)(strchr(s, '|') ? strchr(s, '|') - s : (long)strlen(s)), s);
      break;
    }
    }
    if (strstr(o->help, "(default:")) fprintf(f, "  %-26s %s\n", lhs, o->help); // says it itself
    else fprintf(f, "  %-26s %s [default: %s]\n", lhs, o->help, def);
  }
  fprintf(f, "  %-26s %s\n", "--print-model",
          "print the model (the options above: --model, --width, --image-size, --dropout, --batchnorm) as JSON and exit");
  fprintf(f, "  %-26s %s\n", "--help", "print this help and exit");
}

static double parse_number(const option_spec *o, const char *arg) {
  char *end;
  errno = 0;
  double v = strtod(arg, &end);
  if (errno || end == arg || *end || !isfinite(v))
    DIE_USAGE("--%s: '%s' is not a number", o->name, arg);
  if (o->type == OPT_INT && v != floor(v)) DIE_USAGE("--%s: '%s' is not an integer", o->name, arg);
  if (v < o->min || v > o->max)
    DIE_USAGE("--%s: %s is out of range [%g, %g]", o->name, arg, o->min, o->max);
  return v;
}

static void option_set(config *c, const option_spec *o, const char *arg) {
  char *p = (char *)c + o->offset;
  if (o->offset == offsetof(config, warmup_epochs) && strcmp(arg, "auto") == 0) {
    c->warmup_epochs = WARMUP_AUTO; // resolved once --batchnorm is known (config_parse)
    return;
  }
  switch (o->type) {
  case OPT_INT: *(int *)p = (int)parse_number(o, arg); break;
  case OPT_FLOAT: *(float *)p = (float)parse_number(o, arg); break;
  case OPT_U64: {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 10);
    // strtoull skips leading spaces and takes " -1" as 2^64 - 1: only digits are accepted.
    if (!isdigit((unsigned char)arg[0]) || errno || *end)
      DIE_USAGE("--%s: '%s' is not a non-negative integer (digits only)", o->name, arg);
    *(uint64_t *)p = v;
    break;
  }
  case OPT_STR: {
    size_t cap = strcmp(o->name, "preset") == 0 ? sizeof(c->preset) : 512;
    if (strlen(arg) >= cap) DIE_USAGE("--%s: value too long (at most %zu characters)", o->name, cap - 1);
    snprintf(p, cap, "%s", arg);
    break;
  }
  case OPT_ENUM: {
    const char *s = o->choices;
    size_t len = strlen(arg);
    for (int k = 0; s; k++) {
      const char *bar = strchr(s, '|');
      size_t n = bar ? (size_t)(bar - s) : strlen(s);
      if (n == len && strncmp(s, arg, n) == 0) {
        if (strcmp(o->name, "model") == 0) snprintf(p, sizeof(c->model), "%s", arg);
        else *(int *)p = k;
        return;
      }
      s = bar ? bar + 1 : NULL;
    }
    DIE_USAGE("--%s: '%s' is not one of %s", o->name, arg, o->choices);
  }
  case OPT_VEC3: {
    float *v = (float *)p;
    char *end;
    const char *s = arg;
    for (int k = 0; k < 3; k++) {
      errno = 0;
      v[k] = strtof(s, &end);
      if (errno || end == s || (k < 2 && *end != ',') || (k == 2 && *end) || !isfinite(v[k]))
        DIE_USAGE("--%s: expected three comma-separated numbers, got '%s'", o->name, arg);
      s = end + 1;
    }
    if (strcmp(o->name, "std") == 0 && (v[0] <= 0 || v[1] <= 0 || v[2] <= 0))
      DIE_USAGE("--std: values must be positive, got '%s'", arg);
    c->have_norm |= strcmp(o->name, "mean") == 0 ? 1 : 2;
    break;
  }
  }
}

// --resume continues a run, --init-from starts a new one from a model, --eval trains none:
// at most one of them (a stopped --init-from run continues with --resume alone).
static void config_check_modes(const config *c) {
  if (c->init_from[0] && c->resume[0])
    DIE_USAGE("--init-from starts a new run, --resume continues one: give only one of them");
  if (c->eval[0] && (c->resume[0] || c->init_from[0]))
    DIE_USAGE("--eval trains nothing: it takes no --%s", c->resume[0] ? "resume" : "init-from");
  if (c->dump_logits[0] && !c->eval[0]) DIE_USAGE("--dump-logits needs --eval CKPT");
}

void config_parse(config *c, int argc, char **argv) {
  struct option longopts[N_OPTIONS + 3];
  for (int i = 0; i < N_OPTIONS; i++)
    longopts[i] = (struct option){options[i].name, required_argument, NULL, 1000 + i};
  longopts[N_OPTIONS] = (struct option){"help", no_argument, NULL, 'h'};
  longopts[N_OPTIONS + 1] = (struct option){"print-model", no_argument, NULL, 'p'};
  longopts[N_OPTIONS + 2] = (struct option){NULL, 0, NULL, 0};

  // Pass 1: the preset (the last one given), so that explicit options override it wherever
  // they stand. Pass 2: every option in order.
  config_defaults(c);
  const char *preset = "paper";
  for (int pass = 0; pass < 2; pass++) {
    optind = 1;
    opterr = 0;
    int opt, idx;
    while ((opt = getopt_long(argc, argv, ":h", longopts, &idx)) != -1) {
      if (opt == 'h') {
        if (pass == 0) {
          if (check_current_rank() == 0) usage(stdout);
          exit(0);
        }
        continue;
      }
      if (opt == 'p') { // after the preset (which resets the configuration)
        if (pass == 1) c->print_model = 1;
        continue;
      }
      if (opt == '?') {
        if (optopt) DIE_USAGE("unknown option '-%c' (see --help)", optopt);
        DIE_USAGE("unknown option '%s' (see --help)", argv[optind - 1]);
      }
      if (opt == ':') DIE_USAGE("option '%s' needs a value (see --help)", argv[optind - 1]);
      const option_spec *o = &options[opt - 1000];
      if (pass == 0) {
        if (o->offset == offsetof(config, preset)) preset = optarg;
      } else if (o->offset != offsetof(config, preset)) {
        option_set(c, o, optarg);
      }
    }
    if (pass == 0) {
      if (optind < argc) DIE_USAGE("unexpected argument '%s' (see --help)", argv[optind]);
      preset_apply(c, preset);
    }
  }
  if (c->image_size != 32 && c->image_size != 64 && c->image_size != 128 && c->image_size != 224)
    DIE_USAGE("--image-size: %d is not one of 32, 64, 128, 224", c->image_size);
  if (c->have_norm == 1 || c->have_norm == 2) DIE_USAGE("--mean and --std must be given together");
  if (strcmp(c->resume, "auto") == 0 && !c->checkpoint_dir[0])
    DIE_USAGE("--resume auto needs --checkpoint-dir");
  config_check_modes(c);
  if (c->warmup_epochs == WARMUP_AUTO) c->warmup_epochs = c->batchnorm ? 0.0f : 1.0f;
  if (c->init == INIT_AUTO) c->init = c->batchnorm ? INIT_PYTORCH : INIT_TORCHVISION;
  // A warmup longer than the run never reaches the lr it climbs to: surely not what was meant.
  if (c->warmup_epochs > c->epochs)
    DIE_USAGE("--warmup-epochs: %g is longer than the run (--epochs %d)", c->warmup_epochs,
              c->epochs);
}

void config_validate_world(const config *c, int world) {
  if (c->batch % world != 0)
    DIE_USAGE("--batch: the global batch %d is not divisible by the %d ranks", c->batch, world);
}

void config_print(const config *c, FILE *f) {
  fprintf(f, "configuration:\n");
  for (int i = 0; i < N_OPTIONS; i++) {
    const option_spec *o = &options[i];
    const char *p = (const char *)c + o->offset;
    fprintf(f, "  %-15s ", o->name);
    switch (o->type) {
    case OPT_INT: fprintf(f, "%d\n", *(const int *)p); break;
    case OPT_FLOAT: fprintf(f, "%g\n", *(const float *)p); break;
    case OPT_U64: fprintf(f, "%llu\n", (unsigned long long)*(const uint64_t *)p); break;
    case OPT_STR: fprintf(f, "%s\n", *p ? p : "(none)"); break;
    case OPT_VEC3: {
      const float *v = (const float *)p;
      if (c->have_norm) fprintf(f, "%g,%g,%g\n", v[0], v[1], v[2]);
      else fprintf(f, "(train split's own)\n");
      break;
    }
    case OPT_ENUM:
      if (strcmp(o->name, "model") == 0) fprintf(f, "%s\n", c->model);
      else {
        const char *s = o->choices;
        for (int k = 0; k < *(const int *)p; k++) s = strchr(s, '|') + 1;
        const char *bar = strchr(s, '|');
        fprintf(f, "%.*s\n", (int)(bar ? bar - s : (long)strlen(s)), s);
      }
      break;
    }
  }
}
