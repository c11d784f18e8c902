// fuzz_config.c - libFuzzer target: the command line (src/config.c). The input is split at NUL
// and newline bytes into at most 64 arguments after "vgg_dist"; config_parse either refuses them
// (one line, exit 2) or returns a configuration that must be within the documented ranges.
#include <math.h>
#include <string.h>

#include "config.h"
#include "fuzz.h"

typedef struct input {
  int argc;
  char **argv;
  config cfg;
} input;

static void parse(void *arg) {
  input *in = arg;
  config_parse(&in->cfg, in->argc, in->argv);
}

// What an accepted configuration must satisfy whatever the arguments were.
static int config_sane(const config *c) {
  return c->batch >= 1 && c->epochs >= 1 && c->width > 0 && isfinite(c->width) &&
         c->lr > 0 && isfinite(c->lr) && c->val_size >= 1 && c->eval_batch >= 1 &&
         c->dropout >= 0 && c->dropout < 1 && c->warmup_epochs >= 0 &&
         c->warmup_epochs <= c->epochs && c->comm_timeout > 0 && c->bucket_mb > 0 &&
         (c->image_size == 32 || c->image_size == 64 || c->image_size == 128 ||
          c->image_size == 224) &&
         memchr(c->data_dir, 0, sizeof(c->data_dir)) && memchr(c->resume, 0, sizeof(c->resume));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096) return 0;
  char *buf = malloc(size + 1), *args[66];
  memcpy(buf, data, size);
  buf[size] = 0;
  input in = {1, args, {0}};
  args[0] = "vgg_dist";
  for (char *p = buf; in.argc < 65 && p <= buf + size;) {
    args[in.argc++] = p;
    char *end = p;
    while (end < buf + size && *end && *end != '\n') end++;
    *end = 0;
    p = end + 1;
  }
  args[in.argc] = NULL;
  if (fuzz_run(parse, &in) == 0 && !config_sane(&in.cfg)) abort();
  free(buf);
  return 0;
}
