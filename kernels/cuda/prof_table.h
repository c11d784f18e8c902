// prof_table.h - the host-only half of the CUDA backend's per-op profiler (bench_step
// --profile): the regions one step ran (op kind, shape, GPU time between its two events), their
// means over the timed steps in step order, the conv plans' engine choices, and the printed
// table. Pure C without CUDA calls, so it is unit-tested without a GPU (tests/test_cuda_host.c);
// profile.cu records the events and feeds it, conv.cu fills the plan records.
//
// Invariants: every timed step runs the same regions in the same order (eager steps of one
// shape); a step that does not is left out and counted. Times are milliseconds.
#ifndef VGG_PROF_TABLE_H
#define VGG_PROF_TABLE_H

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

// What a region times. The all-reduce wait is the host's wait for a gradient reducer (none in
// bench_step); the rest are the backend's ops, convolutions split into their parts.
typedef enum {
  PROF_PREP,
  PROF_CONV_FWD,
  PROF_CONV_EPILOGUE,  // bias + the fused activation after the forward convolution
  PROF_CONV_BIAS_GRAD, // bias gradient (column sums of dy)
  PROF_CONV_BWD_FILTER,
  PROF_CONV_BWD_DATA,
  PROF_POOL_FWD,
  PROF_POOL_BWD,
  PROF_BN_FWD, // batch norm with its fused activation (statistics, running update, normalise)
  PROF_BN_BWD, // batch norm backward (gamma, beta gradients and dx)
  PROF_FC_FWD,
  PROF_FC_BWD,
  PROF_ACT_FWD, // an activation on its own (act_fwd; conv and FC fuse theirs)
  PROF_ACT_BWD, // an activation's backward (act_bwd; every ReLU's, fused forward or not)
  PROF_DROPOUT_FWD,
  PROF_DROPOUT_BWD,
  PROF_LOSS,
  PROF_ADAM,
  PROF_ALLREDUCE_WAIT,
  PROF_KINDS
} prof_kind;
const char *prof_kind_name(prof_kind k); // "conv fwd", ...

#define PROF_SHAPE 40
// One region of one step: kind, shape (e.g. "128x128 3->64") and its GPU time.
typedef struct prof_sample {
  prof_kind kind;
  char shape[PROF_SHAPE];
  float ms;
} prof_sample;

typedef struct prof_row {
  prof_kind kind;
  char shape[PROF_SHAPE];
  double ms_sum; // over the timed steps
} prof_row;

// ---- conv plans: which engine, from which candidates ---------------------------------------
typedef enum {
  PROF_CAND_TIMED,         // ran during autotune, timed (ms per run)
  PROF_CAND_RAN,           // ran, untimed (autotune first, or the only candidate)
  PROF_CAND_FAILED,        // did not run
  PROF_CAND_UNTRIED,       // finalized but not run (autotune first took an earlier one)
  PROF_CAND_REFUSED_NOTES, // numerical notes the precision forbids (TF32 in fp32, fp16 inputs,
                           // nondeterministic while deterministic ones were wanted)
  PROF_CAND_REFUSED_RTC,   // runtime-compiled, while precompiled engines were wanted
  PROF_CAND_NOT_FINALIZED, // the plan did not finalize (or its workspace was unreadable)
  PROF_CAND_WORKSPACE,     // wants more workspace than the cap
} prof_cand_status;

typedef struct prof_cand {
  int64_t engine;    // CUDNN_ATTR_ENGINE_GLOBAL_INDEX (-1 when unreadable)
  unsigned notes;    // PLAN_NOTE_* bits (PLAN_NOTES_UNKNOWN when unreadable)
  int64_t workspace; // bytes (0 when unknown)
  float ms;          // per run, PROF_CAND_TIMED only
  prof_cand_status status;
} prof_cand;

#define PROF_MAX_CANDS 48
typedef struct prof_conv {
  prof_kind kind; // PROF_CONV_FWD, PROF_CONV_BWD_DATA or PROF_CONV_BWD_FILTER
  char shape[PROF_SHAPE];
  int N;
  int align[3];        // byte alignment of x, w, y
  char heuristics[64]; // the heuristics query that gave the candidates
  prof_cand cand[PROF_MAX_CANDS];
  int n_cand, more; // recorded; not recorded (beyond PROF_MAX_CANDS)
  int chosen;       // index into cand; -1 none
  double build_ms, tune_ms; // host time of the whole build, and of its autotuning
} prof_conv;

// Notes one engine config of a plan being built; returns its index in rec->cand, or -1 when
// rec is NULL (profiling off) or full.
int prof_conv_note(prof_conv *rec, int64_t engine, unsigned notes, int64_t workspace,
                   prof_cand_status status);

// ---- the table -----------------------------------------------------------------------------
typedef struct prof_table {
  prof_row *rows; // in step order
  int n_rows;
  int steps;          // timed steps accumulated
  int skipped;        // timed steps whose regions differed from the first one's (left out)
  int warmups;        // warm-up steps seen (not accumulated)
  double wall_ms_sum; // host wall time of the accumulated steps
  double first_wall_ms; // of the first warm-up step: the one that built the plans
  int dropped;        // most regions of one step that had no events left (not timed)
  int autotune_first; // for the conv section's heading
  prof_conv *convs;
  int n_convs, cap_convs;
} prof_table;

// Adds a timed step of n regions and its wall time; returns 0 (and counts it as skipped) when
// its regions differ from those of the first timed step.
int prof_table_step(prof_table *t, const prof_sample *s, int n, double wall_ms);
// A warm-up step: only its wall time is kept, the first one's.
void prof_table_warmup(prof_table *t, double wall_ms);
// Appends a zeroed conv plan record (chosen = -1).
prof_conv *prof_table_conv(prof_table *t);
// Means per timed step (0 before any).
double prof_table_row_ms(const prof_table *t, int i);
double prof_table_step_ms(const prof_table *t);
double prof_table_sum_ms(const prof_table *t); // of every row
double prof_table_pct(const prof_table *t, double ms); // of the mean step wall time
double prof_table_build_ms(const prof_table *t); // every conv plan's build, host
// The profile: one row per region in step order (ms per step, % of the step's wall time), the
// all-reduce wait (or that there is no reducer), the sum of the regions against the wall time,
// the totals per kind, the conv plans and the start-up plan building.
void prof_table_print(const prof_table *t, FILE *f);
void prof_table_free(prof_table *t); // accepts a zeroed table

#ifdef __cplusplus
}
#endif

#endif
