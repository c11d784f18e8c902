// main.c - vgg_dist's entry point: parse the command line (before MPI, so that bad options fail
// fast on every rank with one message from rank 0), start the communicator, train, finish.
// --print-model prints the model as JSON and exits before MPI: it needs no mpirun. --eval
// evaluates a checkpoint instead of training (evaluate.c).
#include "check.h"
#include "cifar10.h"
#include "comm.h"
#include "config.h"
#include "evaluate.h"
#include "log.h"
#include "model.h"
#include "train.h"

int main(int argc, char **argv) {
  log_init(check_current_rank());
  config cfg;
  config_parse(&cfg, argc, argv);
  if (cfg.print_model) {
    model m;
    model_build(&m, cfg.model, cfg.width, cfg.image_size, CIFAR_CLASSES, cfg.dropout, cfg.batchnorm);
    if (check_current_rank() == 0) model_print_json(&m, stdout);
    return 0;
  }
  // Training hears stop signals from here on, MPI_Init and NCCL's start-up included (train.h);
  // --eval keeps their default action, since it has nothing to save.
  if (!cfg.eval[0]) train_signals_install();
  comm *c = comm_init(&argc, &argv);
  log_init(comm_rank(c));
  comm_set_timeout(c, cfg.comm_timeout); // the MPI collectives' deadline (the NCCL one: train.c)
  int status = cfg.eval[0] ? evaluate_run(&cfg, c) : train_run(&cfg, c);
  comm_finalize(c);
  return status;
}
