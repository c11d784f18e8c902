// fuzz_cifar.c - libFuzzer target: the CIFAR-10 reader (src/cifar10.c) on arbitrary bytes, as a
// batch file (cifar10_load_file: a whole number of 3073-byte records with labels 0..9, else a
// one-line refusal) and as batches.meta.txt (cifar10_read_classes). An accepted batch must hold
// exactly size / 3073 images whose labels are all below 10.
#include "cifar10.h"
#include "fuzz.h"

typedef struct input {
  const uint8_t *data;
  size_t size;
  cifar10 d;
} input;

static void load_batch(void *arg) {
  input *in = arg;
  cifar10_load_file(&in->d, fuzz_file("batch.bin", in->data, in->size), 0);
}

static void read_classes(void *arg) {
  input *in = arg;
  char names[CIFAR_CLASSES][CIFAR_NAME_CAP];
  if (cifar10_read_classes(names, fuzz_file("batches.meta.txt", in->data, in->size)) != 1) abort();
  for (int k = 0; k < CIFAR_CLASSES; k++)
    if (names[k][0] == 0) abort(); // accepted names are non-empty
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  input in = {data, size, {0}};
  if (fuzz_run(load_batch, &in) == 0) {
    if (size % CIFAR_RECORD != 0 || in.d.n != (int)(size / CIFAR_RECORD)) abort();
    for (int i = 0; i < in.d.n; i++)
      if (in.d.labels[i] >= CIFAR_CLASSES) abort();
    cifar10_free(&in.d);
  }
  fuzz_run(read_classes, &in);
  return 0;
}
