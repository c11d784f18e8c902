// main.c - vgg_dist's entry point: parse the command line (before MPI, so that bad options fail
// fast on every rank with one message from rank 0), start the communicator, train, finish.
#include "check.h"
#include "comm.h"
#include "config.h"
#include "log.h"
#include "train.h"

int main(int argc, char **argv) {
  log_init(check_current_rank());
  config cfg;
  config_parse(&cfg, argc, argv);
  comm *c = comm_init(&argc, &argv);
  log_init(comm_rank(c));
  int status = train_run(&cfg, c);
  comm_finalize(c);
  return status;
}
