// test_comm.c - comm/comm_single.c, the communicator the single-process tools (this test binary,
// bench_step, parity_step) link instead of MPI: a world of one rank whose collectives are the
// identity, whose host gradient reducer changes nothing, and which refuses what needs MPI.
#include <string.h>

#include "comm.h"
#include "test.h"

static void nccl_reducer(void *arg) {
  float g[4] = {0};
  grad_sync_create((comm *)arg, NULL, GRAD_SYNC_NCCL, g, 4, 0, 1.0);
}

static void bucket_outside(void *arg) {
  float g[4] = {0};
  grad_sync *gs = grad_sync_create((comm *)arg, NULL, GRAD_SYNC_MPI, g, 4, 0, 1.0);
  grad_sync_start(gs, 2, 3);
}

TEST(comm_single_process) {
  int argc = 1;
  char *args[] = {"test_unit", NULL}, **argv = args;
  comm *c = comm_init(&argc, &argv);
  EXPECT_EQ_INT(comm_rank(c), 0);
  EXPECT_EQ_INT(comm_world(c), 1);
  EXPECT_EQ_INT(comm_local_rank(c), 0);
  EXPECT_EQ_INT(comm_local_size(c), 1);
  double v[2] = {1.5, -2.0};
  comm_allreduce_sum_f64(c, v, 2);
  comm_allreduce_max_f64(c, v, 2);
  EXPECT(v[0] == 1.5 && v[1] == -2.0);
  char msg[8] = "root";
  comm_bcast(c, msg, sizeof(msg), 0);
  comm_barrier(c);
  EXPECT(!strcmp(msg, "root"));
  float g[4] = {1, 2, 3, 4};
  grad_sync *gs = grad_sync_create(c, NULL, GRAD_SYNC_MPI, g, 4, 0, 1.0);
  grad_sync_start(gs, 0, 2);
  grad_sync_start(gs, 2, 2);
  grad_sync_poll(gs);
  grad_sync_wait(gs);
  EXPECT(g[0] == 1 && g[1] == 2 && g[2] == 3 && g[3] == 4); // the sum over one rank
  grad_sync_free(gs);
  char err[512];
  EXPECT_EQ_INT(test_in_child(nccl_reducer, c, err, sizeof(err)), 1);
  EXPECT(strstr(err, "no NCCL gradient reducer") != NULL);
  EXPECT_EQ_INT(test_in_child(bucket_outside, c, err, sizeof(err)), 1);
  EXPECT(strstr(err, "gradient bucket [2, 5) outside the 4-element buffer") != NULL);
  comm_finalize(c);
}
