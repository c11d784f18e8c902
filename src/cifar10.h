// cifar10.h - the CIFAR-10 binary-format reader, the train/validation split and sharding.
//
// Files: data_batch_1..5.bin (train), test_batch.bin (test); records of 1 label byte and 3072
// pixel bytes (R, G, B planes of 32x32, row-major). The record count comes from the file size;
// a size that is not a whole number of records, a label outside 0..9, or a missing file is a
// one-line error naming the file (and record) and exit status 1. Never a partial load. Every
// file is checked whole (size and every label) whatever the limit: a limit only decides what
// is kept. batches.meta.txt holds the class names (10 lines, then an optional empty line); a
// malformed one is the same kind of error, a missing one means the official names.
//
// Sample ids: an image's index in the concatenation of the files it was loaded from (train:
// data_batch_1 records first). Every random decision is keyed by sample id (see rng.h).
#ifndef VGG_CIFAR10_H
#define VGG_CIFAR10_H

#include <stddef.h>
#include <stdint.h>

#define CIFAR_SIDE 32
#define CIFAR_PIXELS (3 * 32 * 32)
#define CIFAR_RECORD (1 + CIFAR_PIXELS)
#define CIFAR_CLASSES 10
#define CIFAR_NAME_CAP 32 // bytes of a class name, its NUL included

typedef struct cifar10 {
  uint8_t *images; // (n, 3, 32, 32)
  uint8_t *labels; // (n)
  int n;
  char classes[CIFAR_CLASSES][CIFAR_NAME_CAP]; // name of label k (cifar10_load fills it)
  int classes_from_file; // 1: from batches.meta.txt; 0: it is missing, the official names
} cifar10;

// Loads data_batch_1..5.bin (train = 1) or test_batch.bin (train = 0) and the class names of
// batches.meta.txt from dir, keeping at most `limit` images (limit <= 0: all). Every file is
// checked whole whatever the limit. Errors are fatal with a clear message.
void cifar10_load(cifar10 *out, const char *dir, int train, int limit);
// Loads one file (used by the above and by tests); appends to out. Checks the whole file.
void cifar10_load_file(cifar10 *out, const char *path, int limit);
void cifar10_free(cifar10 *d);

// Reads and validates the class names file at path: 10 non-empty lines of printable ASCII
// (at most CIFAR_NAME_CAP - 1 characters each), then at most one empty line. Returns 1; when
// the file does not exist, writes the official CIFAR-10 names and returns 0 (the caller says
// so). Any other problem is a one-line error naming the file (and line), exit status 1.
int cifar10_read_classes(char names[CIFAR_CLASSES][CIFAR_NAME_CAP], const char *path);
// "0 airplane, 1 automobile, ..." for the logs, cut to cap bytes.
void cifar10_class_list(char *out, size_t cap, const cifar10 *d);

// The data directory: `dir` if given, else $CIFAR10_DIR, else "data/cifar-10-batches-bin".
const char *cifar10_resolve_dir(const char *dir);

// Deterministic split of [0, n): a Philox-keyed permutation from `seed`; the last val_size
// entries are the validation ids, the first n - val_size the train ids (each sorted
// ascending so the split is a set, independent of order).
void cifar10_split(int32_t *train_ids, int32_t *val_ids, int n, int val_size, uint64_t seed);

// The order of one epoch: a permutation of train_ids (n of them) keyed by (seed, epoch).
void cifar10_epoch_order(int32_t *order, const int32_t *train_ids, int n, uint64_t seed,
                         int epoch);

// Global batch b of an epoch is order[b*B, min((b+1)*B, n)). Its share for `rank` of `world`
// (DistributedSampler interleaving: position j of the batch goes to rank j % world). A short
// final batch is split the same way, so some ranks get one sample fewer (or none); nothing is
// dropped or repeated. Returns the number of ids written to out.
int cifar10_shard(int32_t *out, const int32_t *batch, int count, int rank, int world);

// Per-channel mean and std (population) of the images `ids`, pixel values in [0, 1].
void cifar10_channel_stats(float mean[3], float std[3], const cifar10 *d, const int32_t *ids,
                           int n);

#endif
