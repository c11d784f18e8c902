// config.h - the run configuration: defaults -> preset -> command line -> validation -> print.
//
// Defaults reproduce the recipe (VGG16 = config D, 128x128, global batch 256, Adam 1e-3 with
// L2 weight decay 1e-4, plateau factor 0.1 / patience 5, early stop 5, 30 epochs, 10,000
// validation images, seed 11). A preset replaces defaults; explicit options override the
// preset wherever they stand on the command line. Unknown options and out-of-range values
// exit with status 2 and a one-line message naming the option.
#ifndef VGG_CONFIG_H
#define VGG_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "backend.h" // autotune_mode, precision_kind

typedef enum { DEVICE_AUTO, DEVICE_CPU, DEVICE_CUDA } device_kind;
// INIT_AUTO (the default) is resolved by config_parse once --batchnorm is known: PyTorch's own
// initialisation with batch norm, torchvision's without (README, Accuracy).
typedef enum { INIT_TORCHVISION, INIT_PYTORCH, INIT_PAPER, INIT_AUTO } init_kind;

// The default of --warmup-epochs, resolved by config_parse once --batchnorm is known.
#define WARMUP_AUTO (-1.0f)

typedef struct config {
  char preset[16];
  char data_dir[512];    // empty: $CIFAR10_DIR, else data/cifar-10-batches-bin
  char model[16];        // vgg11 | vgg13 | vgg16 | vgg19
  float width;
  int image_size;
  int batch;             // GLOBAL batch
  int epochs;
  float lr, weight_decay, beta1, beta2, eps;
  int adamw;
  float dropout;
  int batchnorm;         // BatchNorm2d after every conv
  int sync_bn;           // its training statistics over the global batch (summed over ranks)
  float flip_p;
  int val_size;
  uint64_t seed;
  int lr_patience;
  float lr_factor, lr_threshold, min_lr;
  float warmup_epochs;   // linear lr warmup per step over the first E epochs; 0 disables
                         // (WARMUP_AUTO until parsed: 1 without batch norm, 0 with it)
  int early_stop;        // patience; 0 disables
  int train_limit, test_limit; // 0: all
  char checkpoint_dir[512];    // empty: no checkpoints
  char resume[512];            // empty, a path, or "auto"
  char init_from[512];         // empty, or a checkpoint whose model a NEW run starts from
  char eval[512];              // empty, or a checkpoint to evaluate on the test set (no training)
  char dump_logits[512];       // with eval: the test logits as .npy here (empty: none)
  int keep;
  char metrics[512];
  device_kind device;
  precision_kind precision;
  init_kind init;
  int threads;
  int log_every;               // steps between progress lines / step metrics
  int eval_batch;              // per-rank batch for validation and test
  int have_norm;               // --mean/--std given
  float mean[3], std[3];
  int grad_bf16;               // --grad-allreduce bf16
  float comm_timeout;
  float bucket_mb;
  int cuda_graphs;             // capture full training steps as CUDA graphs
  autotune_mode autotune;      // --autotune fastest|first (the choices in enum order)
  int max_steps;               // stop (with a checkpoint) after this many optimizer steps; 0 = off
  float stop_check;            // seconds between the ranks' agreements on a stop; 0 = every step
  int print_model;             // --print-model: print the model as JSON and exit (main.c)
} config;

// Parses argv into cfg (after defaults and preset). Exits 0 after --help, 2 on errors;
// --print-model only sets cfg->print_model (the caller prints, before MPI starts).
void config_parse(config *cfg, int argc, char **argv);
void config_defaults(config *cfg);
// Validates cross-field constraints that need the world size (batch divisible, etc.).
void config_validate_world(const config *cfg, int world);
void config_print(const config *cfg, FILE *f);
const char *config_precision_name(precision_kind p);

#endif
