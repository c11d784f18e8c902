// test_harness.c - the test runner itself: `test_unit --isolate` (what the GPU check runs the
// CUDA op tests with) reports a test that ends its process, crashes or hangs as that test's
// failure and goes on with the others. The fixtures below fail on purpose; harness_isolate runs
// them through this very binary.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "test.h"

TEST_FIXTURE(harness_fixture_fatal) { FATAL("the fatal fixture ends its process"); }
TEST_FIXTURE(harness_fixture_signal) { abort(); } // SIGABRT: sanitizers leave it alone
TEST_FIXTURE(harness_fixture_hang) { sleep(30); }
TEST_FIXTURE(harness_fixture_pass) { EXPECT(1 + 1 == 2); }

TEST(harness_isolate) {
  char self[4096];
  ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
  REQUIRE(len > 0);
  self[len] = 0;
  char cmd[4200], out[8192] = "";
  snprintf(cmd, sizeof(cmd), "'%s' --isolate --limit 1 harness_fixture 2>&1", self);
  FILE *p = popen(cmd, "r");
  REQUIRE(p != NULL);
  size_t got = fread(out, 1, sizeof(out) - 1, p);
  out[got] = 0;
  int status = pclose(p);
  EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 1);
  static const char *want[] = {
      "the fatal fixture ends its process",
      "FAIL harness_fixture_fatal (the test ended its process with exit status 1",
      "FAIL harness_fixture_signal (killed by signal 6)",
      "FAIL harness_fixture_hang (killed by signal 14: over the time limit)",
      "ok   harness_fixture_pass",
      "\n1 passed, 3 failed\n"};
  for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
    if (!strstr(out, want[i])) test_fail(__FILE__, __LINE__, "missing \"%s\" in:\n%s", want[i], out);
}
