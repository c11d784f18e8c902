// cifar_gen.h - synthetic CIFAR-10 files for tests: the real binary format, learnable content.
//
// Class k's images are a fixed colour with stripes (horizontal for even k, vertical for odd k,
// a period that depends on k) plus per-pixel noise, so a small network separates them in a
// few steps and a horizontal flip keeps the class recognisable. Everything is a pure function
// of (seed, file, record) through Philox, so two calls write identical bytes.
#ifndef VGG_CIFAR_GEN_H
#define VGG_CIFAR_GEN_H

#include <stdint.h>

// Label of record `record` of generated file `file` (1..5 = data_batch_N, 0 = test_batch).
int cifar_gen_label(uint64_t seed, int file, int record);
// The 3072 pixel bytes (R, G, B planes of 32x32) of an image of class `label`.
void cifar_gen_image(uint8_t *img, int label, uint64_t seed, int file, int record);
// Writes `n` records of generated file `file` to path (created or truncated).
void cifar_gen_write_file(const char *path, int n, uint64_t seed, int file);
// Writes dir/data_batch_1..5.bin (per_file records each), dir/test_batch.bin (n_test records)
// and dir/batches.meta.txt; creates dir if it does not exist.
void cifar_gen_write_dir(const char *dir, int per_file, int n_test, uint64_t seed);

#endif
