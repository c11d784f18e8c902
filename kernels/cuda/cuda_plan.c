// cuda_plan.c - host-only planning logic of the CUDA backend (see cuda_plan.h). Pure C with no
// CUDA calls, so it is unit-tested without a GPU.
#include "cuda_plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

// ---- plan cache ----------------------------------------------------------------------------

plan_key plan_key_conv(int op, op_shape s, precision_kind precision, const int align[3]) {
  plan_key k;
  memset(&k, 0, sizeof(k));
  k.op = op;
  k.s = s;
  k.precision = precision;
  k.act = ACT_NONE;
  k.epilogue_bias = 0;
  for (int i = 0; i < 3; i++) k.align[i] = align[i];
  return k;
}

plan_key plan_key_linear(op_shape s, activation act, int epilogue_bias, precision_kind precision,
                         int align) {
  const int all[3] = {align, align, align};
  plan_key k = plan_key_conv(PLAN_LINEAR_FWD, s, precision, all);
  k.act = act;
  k.epilogue_bias = epilogue_bias;
  return k;
}

int plan_key_equal(const plan_key *a, const plan_key *b) {
  return a->op == b->op && a->s.N == b->s.N && a->s.H == b->s.H && a->s.W == b->s.W &&
         a->s.C == b->s.C && a->s.K == b->s.K && a->precision == b->precision &&
         a->act == b->act && a->epilogue_bias == b->epilogue_bias &&
         a->align[0] == b->align[0] && a->align[1] == b->align[1] && a->align[2] == b->align[2];
}

void *plan_cache_find(const plan_cache *pc, const plan_key *k) {
  for (int i = 0; i < pc->n; i++)
    if (plan_key_equal(&pc->keys[i], k)) return pc->vals[i];
  return NULL;
}

void plan_cache_insert(plan_cache *pc, const plan_key *k, void *val) {
  if (plan_cache_find(pc, k)) FATAL("plan cache: key inserted twice (op %d)", k->op);
  if (pc->n == pc->cap) {
    int cap = pc->cap ? 2 * pc->cap : 16;
    plan_key *keys = xmalloc((size_t)cap * sizeof(*keys));
    void **vals = xmalloc((size_t)cap * sizeof(*vals));
    if (pc->n) {
      memcpy(keys, pc->keys, (size_t)pc->n * sizeof(*keys));
      memcpy(vals, pc->vals, (size_t)pc->n * sizeof(*vals));
    }
    free(pc->keys);
    free(pc->vals);
    pc->keys = keys;
    pc->vals = vals;
    pc->cap = cap;
  }
  pc->keys[pc->n] = *k;
  pc->vals[pc->n] = val;
  pc->n++;
}

void plan_cache_free(plan_cache *pc, void (*free_val)(void *val, void *arg), void *arg) {
  if (!pc) return;
  if (free_val)
    for (int i = 0; i < pc->n; i++) free_val(pc->vals[i], arg);
  free(pc->keys);
  free(pc->vals);
  memset(pc, 0, sizeof(*pc));
}

// ---- engine choice -------------------------------------------------------------------------

int plan_engine_allowed(precision_kind precision, unsigned notes, int allow_nondet) {
  if (allow_nondet && notes != PLAN_NOTES_UNKNOWN) notes &= ~PLAN_NOTE_NONDETERMINISTIC;
  if (precision == PREC_FP32)
    return (notes & (PLAN_NOTE_TENSOR_CORE | PLAN_NOTE_DOWN_CONVERT | PLAN_NOTE_REDUCED_REDUCTION |
                     PLAN_NOTE_NONDETERMINISTIC)) == 0;
  if (notes == PLAN_NOTES_UNKNOWN) return 1; // unreadable notes: tf32/bf16 were never exact
  // fp16 inputs are out of range for gradients; atomics make runs unrepeatable.
  return (notes & (PLAN_NOTE_DOWN_CONVERT | PLAN_NOTE_NONDETERMINISTIC)) == 0;
}

int plan_pick_fastest(const float *ms, int n) {
  int best = -1;
  for (int i = 0; i < n; i++)
    if (ms[i] >= 0.0f && (best < 0 || ms[i] < ms[best])) best = i;
  return best;
}

int plan_pick(autotune_mode mode, const float *ms, int n) {
  if (mode == AUTOTUNE_FASTEST) return plan_pick_fastest(ms, n);
  for (int i = 0; i < n; i++)
    if (ms[i] >= 0.0f) return i;
  return -1;
}

size_t plan_workspace_grow(size_t have, size_t need) {
  if (need <= have) return have;
  const size_t mib = (size_t)1 << 20;
  return (need + mib - 1) / mib * mib;
}

// ---- linear layers -------------------------------------------------------------------------

gemm_plan plan_linear_gemm(linear_product which, int N, int in, int out) {
  gemm_plan g;
  memset(&g, 0, sizeof(g));
  switch (which) {
  case LINEAR_FWD: // y^T (out x N) = w^T (out x in) x^T (in x N)
    g.transa = 1; g.transb = 0; g.m = out; g.n = N; g.k = in;
    g.lda = in; g.ldb = in; g.ldc = out;
    break;
  case LINEAR_DX: // dx^T (in x N) = w_cm (in x out) dy^T (out x N)
    g.transa = 0; g.transb = 0; g.m = in; g.n = N; g.k = out;
    g.lda = in; g.ldb = out; g.ldc = in;
    break;
  case LINEAR_DW: // dw_cm (in x out) = x^T (in x N) dy (N x out)
    g.transa = 0; g.transb = 1; g.m = in; g.n = out; g.k = N;
    g.lda = in; g.ldb = out; g.ldc = in;
    break;
  }
  return g;
}

void plan_gemm_reference(float *C, const float *A, const float *B, const gemm_plan *g) {
  for (int j = 0; j < g->n; j++)
    for (int i = 0; i < g->m; i++) {
      double s = 0.0;
      for (int p = 0; p < g->k; p++) {
        float a = g->transa ? A[p + (size_t)i * g->lda] : A[i + (size_t)p * g->lda];
        float b = g->transb ? B[j + (size_t)p * g->ldb] : B[p + (size_t)j * g->ldb];
        s += (double)a * b;
      }
      C[i + (size_t)j * g->ldc] = (float)s;
    }
}

// ---- launches and memory -------------------------------------------------------------------

unsigned plan_blocks(size_t n, unsigned threads, unsigned max_blocks) {
  if (n == 0) return 0;
  size_t b = (n + threads - 1) / threads;
  return b > max_blocks ? max_blocks : (unsigned)b;
}

int plan_alignment(const void *p) {
  uintptr_t a = (uintptr_t)p;
  int al = 16;
  while (al > 1 && (a % (uintptr_t)al) != 0) al /= 2;
  return al;
}

uint16_t plan_f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

float plan_bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// ---- precision -----------------------------------------------------------------------------

int plan_precision_valid(precision_kind p) {
  switch (p) {
  case PREC_FP32:
  case PREC_TF32:
  case PREC_BF16: return 1;
  }
  return 0; // a value outside the enum (an int cast by a caller)
}

const char *plan_precision_name(precision_kind p) {
  switch (p) {
  case PREC_FP32: return "fp32";
  case PREC_TF32: return "tf32";
  case PREC_BF16: return "bf16";
  }
  return "unknown";
}
