// test.h - the tiny C test harness: TEST(name) { ... } registers itself at load time;
// tests/test_main.c runs them all (or those whose name contains argv[1]) and prints
// "N passed, N failed". EXPECT_* record a failure and continue; REQUIRE_* return from the test.
#ifndef VGG_TEST_H
#define VGG_TEST_H

#include <math.h>
#include <stdio.h>

typedef void (*test_fn)(void);
void test_register(const char *name, test_fn fn);
// A fixture is a test that other tests run on purpose (it fails or crashes by design): it runs
// only when the name filter given to test_unit contains "fixture".
void test_register_fixture(const char *name, test_fn fn);
void test_fail(const char *file, int line, const char *fmt, ...);
int test_failed_now(void);
// Marks the running test as skipped (it needs what this machine lacks); not counted as passed.
void test_skip(const char *reason);
// Path of the real CIFAR-10 subset if present (else NULL), and a scratch directory.
const char *test_real_data_dir(void);
const char *test_tmp_dir(void);
// Runs fn(arg) in a forked child (for code that exits on bad input); returns the child's exit
// status (128 + signal if killed) and its stderr (up to len - 1 bytes) in err.
int test_in_child(void (*fn)(void *), void *arg, char *err, size_t len);

#define TEST(name)                                                                        \
  static void test_##name(void);                                                          \
  __attribute__((constructor)) static void test_reg_##name(void) {                         \
    test_register(#name, test_##name);                                                    \
  }                                                                                       \
  static void test_##name(void)

#define TEST_FIXTURE(name)                                                                \
  static void test_##name(void);                                                          \
  __attribute__((constructor)) static void test_reg_##name(void) {                         \
    test_register_fixture(#name, test_##name);                                            \
  }                                                                                       \
  static void test_##name(void)

#define EXPECT(cond)                                                                      \
  do {                                                                                    \
    if (!(cond)) test_fail(__FILE__, __LINE__, "expected %s", #cond);                     \
  } while (0)
#define REQUIRE(cond)                                                                     \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      test_fail(__FILE__, __LINE__, "required %s", #cond);                                \
      return;                                                                             \
    }                                                                                     \
  } while (0)
#define EXPECT_NEAR(a, b, tol)                                                            \
  do {                                                                                    \
    double ea_ = (a), eb_ = (b), et_ = (tol);                                             \
    if (!(fabs(ea_ - eb_) <= et_))                                                        \
      test_fail(__FILE__, __LINE__, "%s = %.9g, %s = %.9g, |diff| %.3g > %.3g", #a, ea_, #b, \
                eb_, fabs(ea_ - eb_), et_);                                               \
  } while (0)
#define EXPECT_EQ_INT(a, b)                                                               \
  do {                                                                                    \
    long long ea_ = (long long)(a), eb_ = (long long)(b);                                 \
    if (ea_ != eb_) test_fail(__FILE__, __LINE__, "%s = %lld, expected %s = %lld", #a, ea_, #b, eb_); \
  } while (0)

#endif
