// prof_table.c - the per-op profile's aggregation and printing (see prof_table.h). Pure C with
// no CUDA calls, so it is unit-tested without a GPU.
#include "prof_table.h"

#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cuda_plan.h"

static const char *const kind_names[PROF_KINDS] = {
    [PROF_PREP] = "prep",
    [PROF_CONV_FWD] = "conv fwd",
    [PROF_CONV_EPILOGUE] = "conv epilogue",
    [PROF_CONV_BIAS_GRAD] = "conv bias grad",
    [PROF_CONV_BWD_FILTER] = "conv bwd filter",
    [PROF_CONV_BWD_DATA] = "conv bwd data",
    [PROF_POOL_FWD] = "pool fwd",
    [PROF_POOL_BWD] = "pool bwd",
    [PROF_BN_FWD] = "bn fwd",
    [PROF_BN_BWD] = "bn bwd",
    [PROF_FC_FWD] = "fc fwd",
    [PROF_FC_BWD] = "fc bwd",
    [PROF_ACT_FWD] = "act fwd",
    [PROF_ACT_BWD] = "act bwd",
    [PROF_DROPOUT_FWD] = "dropout fwd",
    [PROF_DROPOUT_BWD] = "dropout bwd",
    [PROF_LOSS] = "loss",
    [PROF_ADAM] = "adam",
    [PROF_ALLREDUCE_WAIT] = "all-reduce wait",
};

const char *prof_kind_name(prof_kind k) {
  return (int)k >= 0 && k < PROF_KINDS && kind_names[k] ? kind_names[k] : "?";
}

// ---- accumulation --------------------------------------------------------------------------

int prof_conv_note(prof_conv *rec, int64_t engine, unsigned notes, int64_t workspace,
                   prof_cand_status status) {
  if (!rec) return -1;
  int slot = rec->n_cand;
  if (slot == PROF_MAX_CANDS) {
    // Full of configs looked at: a refused one is dropped (counted in `more`), but a candidate
    // takes the place of the last refused entry, so that the engine kept is always in the record.
    rec->more++;
    if (status != PROF_CAND_UNTRIED) return -1;
    for (slot = PROF_MAX_CANDS - 1; slot >= 0 && rec->cand[slot].status == PROF_CAND_UNTRIED; slot--) {
    }
    if (slot < 0) return -1;
  }
  prof_cand *c = &rec->cand[slot];
  c->engine = engine;
  c->notes = notes;
  c->workspace = workspace;
  c->ms = 0.0f;
  c->status = status;
  if (slot == rec->n_cand) rec->n_cand++;
  return slot;
}

static int same_regions(const prof_table *t, const prof_sample *s, int n) {
  if (n != t->n_rows) return 0;
  for (int i = 0; i < n; i++)
    if (s[i].kind != t->rows[i].kind || strcmp(s[i].shape, t->rows[i].shape) != 0) return 0;
  return 1;
}

int prof_table_step(prof_table *t, const prof_sample *s, int n, double wall_ms) {
  if (t->steps == 0) {
    free(t->rows);
    t->rows = xcalloc(n > 0 ? (size_t)n : 1, sizeof(prof_row));
    t->n_rows = n;
    for (int i = 0; i < n; i++) {
      t->rows[i].kind = s[i].kind;
      snprintf(t->rows[i].shape, sizeof(t->rows[i].shape), "%s", s[i].shape);
    }
  } else if (!same_regions(t, s, n)) {
    t->skipped++;
    return 0;
  }
  for (int i = 0; i < n; i++) t->rows[i].ms_sum += s[i].ms;
  t->wall_ms_sum += wall_ms;
  t->steps++;
  return 1;
}

void prof_table_warmup(prof_table *t, double wall_ms) {
  if (t->warmups++ == 0) t->first_wall_ms = wall_ms;
}

prof_conv *prof_table_conv(prof_table *t) {
  if (t->n_convs == t->cap_convs) {
    t->cap_convs = t->cap_convs ? 2 * t->cap_convs : 64;
    t->convs = xrealloc(t->convs, (size_t)t->cap_convs * sizeof(prof_conv));
  }
  prof_conv *r = &t->convs[t->n_convs++];
  memset(r, 0, sizeof(*r));
  r->chosen = -1;
  return r;
}

double prof_table_row_ms(const prof_table *t, int i) {
  return t->steps ? t->rows[i].ms_sum / t->steps : 0.0;
}

double prof_table_step_ms(const prof_table *t) { return t->steps ? t->wall_ms_sum / t->steps : 0.0; }

double prof_table_sum_ms(const prof_table *t) {
  double s = 0.0;
  for (int i = 0; i < t->n_rows; i++) s += prof_table_row_ms(t, i);
  return s;
}

double prof_table_pct(const prof_table *t, double ms) {
  double step = prof_table_step_ms(t);
  return step > 0.0 ? 100.0 * ms / step : 0.0;
}

double prof_table_build_ms(const prof_table *t) {
  double s = 0.0;
  for (int i = 0; i < t->n_convs; i++) s += t->convs[i].build_ms;
  return s;
}

void prof_table_free(prof_table *t) {
  if (!t) return;
  free(t->convs);
  free(t->rows);
  memset(t, 0, sizeof(*t));
}

// ---- printing ------------------------------------------------------------------------------

#define LABEL_W 44

static const char *plural(int n) { return n == 1 ? "" : "s"; }

static void print_line(FILE *f, const char *num, const char *label, double ms, double pct) {
  fprintf(f, "  %4s  %-*s %10.3f %7.1f%%\n", num, LABEL_W, label, ms, pct);
}

static void print_regions(const prof_table *t, FILE *f) {
  fprintf(f, "per-op profile: %d timed eager step%s after %d warm-up; per step, the GPU time "
             "between CUDA events around each op and its share of the step's wall time\n",
          t->steps, plural(t->steps), t->warmups);
  if (t->skipped)
    fprintf(f, "  note: %d more timed step%s ran other regions than the first one, left out\n",
            t->skipped, plural(t->skipped));
  if (t->dropped)
    fprintf(f, "  warning: %d region%s of a step found no free events and %s not timed (the sum "
               "below misses them)\n", t->dropped, plural(t->dropped), t->dropped == 1 ? "is" : "are");
  if (!t->steps) return;
  fprintf(f, "  %4s  %-*s %10s %8s\n", "#", LABEL_W, "region", "ms", "% step");
  int waits = 0;
  for (int i = 0; i < t->n_rows; i++) {
    char num[16], label[96];
    snprintf(num, sizeof(num), "%d", i + 1);
    snprintf(label, sizeof(label), "%s %s", prof_kind_name(t->rows[i].kind), t->rows[i].shape);
    double ms = prof_table_row_ms(t, i);
    print_line(f, num, label, ms, prof_table_pct(t, ms));
    waits += t->rows[i].kind == PROF_ALLREDUCE_WAIT;
  }
  if (!waits)
    fprintf(f, "  %4s  %-*s %10s %8s   (no gradient reducer in this run)\n", "", LABEL_W,
            "all-reduce wait", "-", "-");
  double sum = prof_table_sum_ms(t), step = prof_table_step_ms(t);
  print_line(f, "", "sum of the regions", sum, prof_table_pct(t, sum));
  fprintf(f, "  %4s  %-*s %10.3f %7.1f%%", "", LABEL_W, "step wall time (host)", step, 100.0);
  if (step >= sum)
    fprintf(f, "   (%.3f ms outside the regions: launch gaps, host work, unprofiled copies)\n",
            step - sum);
  else
    fprintf(f, "   (the regions exceed it by %.3f ms)\n", sum - step);
}

static void print_kinds(const prof_table *t, FILE *f) {
  if (!t->steps) return;
  fprintf(f, "  by kind:\n");
  for (int k = 0; k < PROF_KINDS; k++) {
    double ms = 0.0;
    int n = 0;
    for (int i = 0; i < t->n_rows; i++)
      if ((int)t->rows[i].kind == k) {
        ms += prof_table_row_ms(t, i);
        n++;
      }
    if (!n) continue;
    fprintf(f, "  %4s  %-*s %10.3f %7.1f%%   (%d region%s)\n", "", LABEL_W,
            prof_kind_name((prof_kind)k), ms, prof_table_pct(t, ms), n, plural(n));
  }
}

static void print_engine(FILE *f, const prof_cand *c) {
  fprintf(f, "engine %lld (", (long long)c->engine);
  if (c->notes == PLAN_NOTES_UNKNOWN)
    fprintf(f, "numerical notes unknown)");
  else
    fprintf(f, "tensor cores: %s, deterministic: %s)", c->notes & PLAN_NOTE_TENSOR_CORE ? "yes" : "no",
            c->notes & PLAN_NOTE_NONDETERMINISTIC ? "no" : "yes");
}

// The configs that never became candidates, grouped by reason, each engine named once.
static void print_refused(FILE *f, const prof_conv *r) {
  static const struct {
    prof_cand_status st;
    const char *why;
  } groups[4] = {{PROF_CAND_REFUSED_NOTES, "numerical notes not allowed"},
                 {PROF_CAND_REFUSED_RTC, "runtime-compiled"},
                 {PROF_CAND_NOT_FINALIZED, "did not finalize"},
                 {PROF_CAND_WORKSPACE, "workspace over the cap"}};
  for (int g = 0; g < 4; g++) {
    int shown = 0;
    for (int i = 0; i < r->n_cand; i++) {
      if (r->cand[i].status != groups[g].st) continue;
      int dup = 0;
      for (int j = 0; j < i && !dup; j++)
        dup = r->cand[j].status == groups[g].st && r->cand[j].engine == r->cand[i].engine;
      if (dup) continue;
      long long e = (long long)r->cand[i].engine;
      if (shown++) fprintf(f, ", %lld", e);
      else fprintf(f, "      refused (%s): engine %lld", groups[g].why, e);
    }
    if (shown) fprintf(f, "\n");
  }
  if (r->more) fprintf(f, "      (%d more config%s not recorded)\n", r->more, plural(r->more));
}

static void print_conv(FILE *f, const prof_conv *r) {
  fprintf(f, "  %s %s, N %d, align x%d w%d y%d: ", prof_kind_name(r->kind), r->shape, r->N,
          r->align[0], r->align[1], r->align[2]);
  if (r->chosen >= 0) {
    const prof_cand *c = &r->cand[r->chosen];
    print_engine(f, c);
    fprintf(f, ", workspace %.2f MiB", c->workspace / 1048576.0);
  } else {
    fprintf(f, "no engine kept");
  }
  fprintf(f, "; heuristics %s; built in %.1f ms (autotune %.1f ms)\n", r->heuristics, r->build_ms,
          r->tune_ms);
  for (int i = 0; i < r->n_cand; i++) {
    const prof_cand *c = &r->cand[i];
    if (c->status > PROF_CAND_UNTRIED) continue; // not a candidate: listed below
    fprintf(f, "      engine %-6lld ", (long long)c->engine);
    switch (c->status) {
    case PROF_CAND_TIMED: fprintf(f, "%10.3f ms", c->ms); break;
    case PROF_CAND_RAN: fprintf(f, "%13s", "ran, untimed"); break;
    case PROF_CAND_FAILED: fprintf(f, "%13s", "failed to run"); break;
    default: fprintf(f, "%13s", "not run"); break;
    }
    fprintf(f, "%s\n", i == r->chosen ? "   <- kept" : "");
  }
  print_refused(f, r);
}

static void print_convs(const prof_table *t, FILE *f) {
  if (!t->n_convs) return;
  fprintf(f, "conv plans (%s):\n",
          t->autotune_first ? "autotune first: the first candidate in the heuristics' order that runs, untimed"
                            : "autotune fastest: each candidate timed on the live buffers, ms per run");
  for (int i = 0; i < t->n_convs; i++) print_conv(f, &t->convs[i]);
  double tune = 0.0;
  for (int i = 0; i < t->n_convs; i++) tune += t->convs[i].tune_ms;
  fprintf(f, "plan building (host, at first use): %d conv plan%s in %.1f ms (autotune %.1f ms of it)",
          t->n_convs, plural(t->n_convs), prof_table_build_ms(t), tune);
  if (t->warmups)
    fprintf(f, "; the first step took %.1f ms wall, a timed step %.3f ms", t->first_wall_ms,
            prof_table_step_ms(t));
  fprintf(f, "\n");
}

void prof_table_print(const prof_table *t, FILE *f) {
  print_regions(t, f);
  print_kinds(t, f);
  print_convs(t, f);
}
