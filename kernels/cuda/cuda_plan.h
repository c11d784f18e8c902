// cuda_plan.h - the host-only planning logic of the CUDA backend, kept apart from any CUDA
// call so that it is unit-tested on machines without a GPU (tests/test_cuda_host.c):
//   - the plan cache (cuDNN execution plans / cuBLASLt algorithms, one per layer shape),
//   - which cuDNN engines a precision allows (numerical notes) and the autotune pick (fastest
//     or first),
//   - workspace growth,
//   - the column-major GEMM that computes each row-major linear product,
//   - launch sizes, pointer alignment classes, bf16 rounding, precision names.
// Compiled as C (mpicc) for the tests and the backend, included by the .cu files too.
#ifndef VGG_CUDA_PLAN_H
#define VGG_CUDA_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h" // autotune_mode, op_shape, activation, precision_kind

#ifdef __cplusplus
extern "C" {
#endif

// ---- plan cache ----------------------------------------------------------------------------
// One key per distinct (operation, shape, precision, fused activation, pointer alignment
// classes); plans are built once, at the first step, so a linear scan over a few dozen entries
// is all we need.
typedef enum {
  PLAN_CONV_FWD = 1,
  PLAN_CONV_BWD_DATA = 2,
  PLAN_CONV_BWD_FILTER = 3,
  PLAN_LINEAR_FWD = 4,
} plan_op;

typedef struct plan_key {
  int op;
  op_shape s; // the op's shape (a linear layer's: H = W = 1, C in and K out features)
  precision_kind precision;
  activation act;    // the fused epilogue's activation (linear forward; ACT_NONE for convs)
  int epilogue_bias; // linear forward: the bias is added in cuBLASLt's epilogue
  // Byte alignment class (plan_alignment) of each tensor: a convolution's x-like, w-like and
  // y-like tensor (each its own, so one misaligned weight does not push x and y off the
  // vectorised/tensor-core engines); a linear layer has one class for all three.
  int align[3];
} plan_key;

typedef struct plan_cache {
  plan_key *keys;
  void **vals;
  int n, cap;
} plan_cache;

// A convolution's key (op PLAN_CONV_*): align[0..2] of its x-like, w-like and y-like tensors.
plan_key plan_key_conv(int op, op_shape s, precision_kind precision, const int align[3]);
// A linear forward's key: its fused activation, whether the bias is in the epilogue, and one
// alignment class for every tensor.
plan_key plan_key_linear(op_shape s, activation act, int epilogue_bias, precision_kind precision,
                         int align);
int plan_key_equal(const plan_key *a, const plan_key *b);
void *plan_cache_find(const plan_cache *pc, const plan_key *k); // NULL when absent
void plan_cache_insert(plan_cache *pc, const plan_key *k, void *val); // key must be absent
// Calls free_val on every value (if given), then releases the arrays. Accepts an empty cache.
void plan_cache_free(plan_cache *pc, void (*free_val)(void *val, void *arg), void *arg);

// ---- engine choice -------------------------------------------------------------------------
// Bits (1 << cudnnBackendNumericalNote_t) of an engine's numerical notes. Values mirror cuDNN's
// enum (TENSOR_CORE = 0, DOWN_CONVERT_INPUTS = 1, REDUCED_PRECISION_REDUCTION = 2).
#define PLAN_NOTE_TENSOR_CORE (1u << 0)
#define PLAN_NOTE_DOWN_CONVERT (1u << 1)
#define PLAN_NOTE_REDUCED_REDUCTION (1u << 2)
#define PLAN_NOTE_NONDETERMINISTIC (1u << 4)
// The notes of an engine whose notes could not be read.
#define PLAN_NOTES_UNKNOWN (~0u)
// Whether an engine with these notes may run a layer of `precision`. PREC_FP32: no tensor
// cores (i.e. no TF32), no down-converted inputs, no reduced-precision reduction, and unknown
// notes are refused. Every precision: no DOWN_CONVERT_INPUTS, which converts fp32/bf16 inputs to
// fp16 (range 6.5e4, so gradients overflow or flush to zero): PyTorch drops those engines always;
// and no NONDETERMINISTIC engine (atomics in the reduction), so that a run, a resumed run and a
// captured step repeat an eager one bit for bit (unless allow_nondet: the last resort when a
// shape has no deterministic engine). PREC_TF32 and PREC_BF16 allow everything else, and
// engines of unknown notes.
int plan_engine_allowed(precision_kind precision, unsigned notes, int allow_nondet);
// Index of the fastest candidate (first of equal times); times < 0 mark failed candidates.
// Returns -1 when every candidate failed.
int plan_pick_fastest(const float *ms, int n);
// What autotuning noted per candidate, in the heuristics' order: a time in ms (>= 0; 0 when it
// ran untimed), PLAN_MS_FAILED (it did not run) or PLAN_MS_UNTRIED (not run: an earlier one
// was taken).
#define PLAN_MS_FAILED (-1.0f)
#define PLAN_MS_UNTRIED (-2.0f)
// The candidate the mode keeps: AUTOTUNE_FASTEST the fastest (plan_pick_fastest),
// AUTOTUNE_FIRST the first that ran, whatever the times. -1 when none ran.
int plan_pick(autotune_mode mode, const float *ms, int n);
// Workspace size after a request: unchanged when it suffices, else `need` rounded up to 1 MiB.
size_t plan_workspace_grow(size_t have, size_t need);

// ---- linear layers as column-major GEMMs ---------------------------------------------------
// Row-major y (N,out) = x (N,in) w(out,in)^T is, seen column-major, y^T = w^T x^T with the
// row-major w (out,in) read as the column-major (in,out) matrix. The three products:
//   LINEAR_FWD  y  = x w^T : C = y  (out x N),  A = w  (T, lda in),  B = x  (N, ldb in)
//   LINEAR_DX   dx = dy w  : C = dx (in x N),   A = w  (N, lda in),  B = dy (N, ldb out)
//   LINEAR_DW   dw = dy^T x: C = dw (in x out), A = x  (N, lda in),  B = dy (T, ldb out)
typedef enum { LINEAR_FWD = 0, LINEAR_DX = 1, LINEAR_DW = 2 } linear_product;
typedef struct gemm_plan {
  int transa, transb; // 0 = N, 1 = T
  int m, n, k;
  int lda, ldb, ldc;
} gemm_plan;
gemm_plan plan_linear_gemm(linear_product which, int N, int in, int out);
// Reference column-major SGEMM C = op(A) op(B) (beta 0) used by the tests to check the plans.
void plan_gemm_reference(float *C, const float *A, const float *B, const gemm_plan *g);

// ---- launches and memory -------------------------------------------------------------------
// Blocks for `n` elements, `threads` per block, grid-stride loops beyond `max_blocks`; 0 when
// n == 0 (the caller skips the launch: a zero grid is an error).
unsigned plan_blocks(size_t n, unsigned threads, unsigned max_blocks);
// The largest power of two (<= 16) dividing the address: what a library may assume.
int plan_alignment(const void *p);
// fp32 -> bf16 with round-to-nearest-even (NaN kept quiet), as __float2bfloat16_rn.
uint16_t plan_f32_to_bf16(float f);
float plan_bf16_to_f32(uint16_t h);
// Whether p is one of the precision_kind values; its name ("fp32", "tf32", "bf16"; "unknown"
// otherwise) for messages.
int plan_precision_valid(precision_kind p);
const char *plan_precision_name(precision_kind p);

#ifdef __cplusplus
}
#endif

#endif
