// gen_cifar.c - writes a generated CIFAR-10 directory for the shell tests and demos:
//   gen_cifar DIR [PER_FILE=200] [N_TEST=200] [SEED=1]
#include <stdlib.h>

#include "../cifar_gen.h"
#include "check.h"

int main(int argc, char **argv) {
  if (argc < 2 || argc > 5) {
    fprintf(stderr, "usage: gen_cifar DIR [PER_FILE=200] [N_TEST=200] [SEED=1]\n");
    return 2;
  }
  int per_file = argc > 2 ? atoi(argv[2]) : 200, n_test = argc > 3 ? atoi(argv[3]) : 200;
  uint64_t seed = argc > 4 ? strtoull(argv[4], NULL, 10) : 1;
  if (per_file < 1 || n_test < 1) DIE_USAGE("PER_FILE and N_TEST must be positive");
  cifar_gen_write_dir(argv[1], per_file, n_test, seed);
  return 0;
}
