// cifar_gen.c - synthetic CIFAR-10 files for tests (see cifar_gen.h).
#include "cifar_gen.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "check.h"
#include "cifar10.h"
#include "rng.h"

// Streams of their own so generated data never correlates with training randomness.
enum { GEN_STREAM_LABEL = 500, GEN_STREAM_NOISE = 501 };

// Distinct base colours, one per class (R, G, B).
static const uint8_t class_rgb[CIFAR_CLASSES][3] = {
    {200, 40, 40},  {40, 200, 40},  {40, 40, 200},  {200, 200, 40}, {200, 40, 200},
    {40, 200, 200}, {230, 130, 30}, {120, 60, 160}, {90, 90, 90},   {170, 220, 120}};

int cifar_gen_label(uint64_t seed, int file, int record) {
  return (int)(rng_bits(seed, GEN_STREAM_LABEL, (uint32_t)file, (uint32_t)record, 0) %
               CIFAR_CLASSES);
}

void cifar_gen_image(uint8_t *img, int label, uint64_t seed, int file, int record) {
  int period = 4 + label / 2 * 2; // 4, 4, 6, 6, ... : stripe width differs between class pairs
  int vertical = label & 1;
  for (int c = 0; c < 3; c++)
    for (int y = 0; y < CIFAR_SIDE; y++)
      for (int x = 0; x < CIFAR_SIDE; x++) {
        int t = vertical ? x : y;
        int stripe = (t % period) < period / 2 ? 45 : -45;
        uint32_t r = rng_bits(seed, GEN_STREAM_NOISE, (uint32_t)file, (uint32_t)record,
                              (uint32_t)((c * CIFAR_SIDE + y) * CIFAR_SIDE + x));
        int noise = (int)(r % 41) - 20;
        int v = class_rgb[label][c] + stripe + noise;
        img[(c * CIFAR_SIDE + y) * CIFAR_SIDE + x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
      }
}

void cifar_gen_write_file(const char *path, int n, uint64_t seed, int file) {
  FILE *f = xfopen(path, "wb");
  uint8_t rec[CIFAR_RECORD];
  for (int r = 0; r < n; r++) {
    int label = cifar_gen_label(seed, file, r);
    rec[0] = (uint8_t)label;
    cifar_gen_image(rec + 1, label, seed, file, r);
    xfwrite(rec, sizeof(rec), f, path);
  }
  xfclose(f, path);
}

void cifar_gen_write_dir(const char *dir, int per_file, int n_test, uint64_t seed) {
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) FATAL("mkdir %s: %s", dir, strerror(errno));
  char path[4096];
  for (int k = 1; k <= 5; k++) {
    snprintf(path, sizeof(path), "%s/data_batch_%d.bin", dir, k);
    cifar_gen_write_file(path, per_file, seed, k);
  }
  snprintf(path, sizeof(path), "%s/test_batch.bin", dir);
  cifar_gen_write_file(path, n_test, seed, 0);
  snprintf(path, sizeof(path), "%s/batches.meta.txt", dir);
  static const char names[] =
      "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
  FILE *f = xfopen(path, "w");
  xfwrite(names, sizeof(names) - 1, f, path);
  xfclose(f, path);
}
