// test_device.c - the GPU binding policy (device_pick), the bus-id comparison that refuses two
// ranks on one GPU (device_bus_id_clash), and the line that refuses a mixture of backends
// (device_mixture_message): pure functions, so the cluster layouts are tested without GPUs.
#include <string.h>

#include "device.h"
#include "test.h"

enum { ID = 16 };

// The bus ids ranks 0..n-1 of one node would gather: rank r drives physical GPU phys[r].
static void bus_ids(char *ids, const int *phys, int n) {
  memset(ids, 0, (size_t)n * ID);
  for (int r = 0; r < n; r++) snprintf(ids + (size_t)r * ID, ID, "0000:%02x:00.0", 0x10 + phys[r]);
}

TEST(device_pick_four_ranks_four_visible) {
  for (int r = 0; r < 4; r++) EXPECT_EQ_INT(device_pick(r, 4, 4), r);
}

// srun --gpus-per-task=1 / --gpu-bind: each rank sees only its own GPU, as device 0; the node
// has 4 ranks. Not refused (it was: "4 ranks on this node but only 1 GPUs"), and the bus ids
// differ, so the check passes too.
TEST(device_pick_one_visible_per_rank_is_not_refused) {
  int phys[4];
  for (int r = 0; r < 4; r++) {
    EXPECT_EQ_INT(device_pick(r, 4, 1), 0);
    phys[r] = r; // device 0 of rank r is physical GPU r
  }
  char ids[4 * ID];
  bus_ids(ids, phys, 4);
  int i = -1, j = -1;
  EXPECT_EQ_INT(device_bus_id_clash(ids, 4, ID, &i, &j), 0);
}

// 2 nodes x 4: the local rank decides, whatever the global rank (local = global % 4 here).
TEST(device_pick_two_nodes_of_four) {
  for (int g = 0; g < 8; g++) EXPECT_EQ_INT(device_pick(g % 4, 4, 4), g % 4);
}

// Uneven ranks per node (3 on one node of 4 GPUs, 1 on another): distinct GPUs on each.
TEST(device_pick_uneven_ranks_per_node) {
  int phys[3];
  for (int r = 0; r < 3; r++) phys[r] = device_pick(r, 3, 4);
  EXPECT_EQ_INT(phys[0], 0);
  EXPECT_EQ_INT(phys[2], 2);
  EXPECT_EQ_INT(device_pick(0, 1, 4), 0);
  char ids[3 * ID];
  bus_ids(ids, phys, 3);
  int i = -1, j = -1;
  EXPECT_EQ_INT(device_bus_id_clash(ids, 3, ID, &i, &j), 0);
}

// 8 ranks on a node whose ranks all see the same 4 GPUs: the binding wraps (local rank % 4),
// and the bus ids are what refuses it, naming the first pair that shares a GPU (0 and 4).
TEST(device_eight_ranks_on_four_gpus_clash) {
  int phys[8];
  for (int r = 0; r < 8; r++) phys[r] = device_pick(r, 8, 4);
  EXPECT_EQ_INT(phys[5], 1);
  char ids[8 * ID];
  bus_ids(ids, phys, 8);
  int i = -1, j = -1;
  REQUIRE(device_bus_id_clash(ids, 8, ID, &i, &j) == 1);
  EXPECT_EQ_INT(i, 0);
  EXPECT_EQ_INT(j, 4);
}

// A rank that sees no GPU is the only refusal of device_pick (so is a rank outside the node).
TEST(device_pick_refuses_no_visible_gpu) {
  EXPECT_EQ_INT(device_pick(0, 4, 0), -1);
  EXPECT_EQ_INT(device_pick(3, 4, 0), -1);
  EXPECT_EQ_INT(device_pick(4, 4, 4), -1);
}

// Ranks 1 and 3 on node-b and rank 2 on node-c have no GPU: each host named once, counts right.
TEST(device_mixture_message_names_hosts_once) {
  enum { H = 16 };
  char hosts[5 * H] = {0}, msg[512];
  strcpy(hosts + 1 * H, "node-b");
  strcpy(hosts + 2 * H, "node-c");
  strcpy(hosts + 3 * H, "node-b");
  size_t n = device_mixture_message(msg, sizeof(msg), hosts, 5, H);
  EXPECT(n == strlen(msg));
  EXPECT(strstr(msg, "the CPU on node-b, node-c (3 of 5 ranks") != NULL);
  EXPECT(strstr(msg, "CUDA on the other 2") != NULL);
  EXPECT(strstr(msg, "node-b, node-c, node-b") == NULL);
  char small[24];
  EXPECT_EQ_INT(device_mixture_message(small, sizeof(small), hosts, 5, H), sizeof(small) - 1);
  EXPECT_EQ_INT(strlen(small), sizeof(small) - 1); // cut to fit, NUL-terminated
}
