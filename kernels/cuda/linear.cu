// linear.cu - fully connected layers with cuBLASLt (forward, bias + activation fused in the
// GEMM's epilogue) and cuBLAS GemmEx (backward), row-major tensors mapped onto column-major
// GEMMs by plan_linear_gemm() (cuda_plan.c, unit-tested on the host). A layer's shape is an
// op_shape with H = W = 1: N rows, C input and K output features.
// The backward only reads dy: the activation's backward is the walker's act_bwd, run before it,
// so no ReLU-gradient epilogue (DRELU_BGRAD) is used; the bias gradient is a column sum of dy
// (cuda_bias_grad) and the two GEMMs take dy as an input.
//
// Precision: fp32 uses CUBLAS_COMPUTE_32F (cuBLASLt) / 32F_PEDANTIC (GemmEx): no TF32 anywhere;
// tf32 uses 32F_FAST_TF32; bf16 reads bf16 activations and the bf16 weight shadow, accumulates
// in fp32, writes bf16 activations and fp32 weight gradients (GemmEx with Ctype 32F).
// The forward algorithm is chosen once per (shape, activation, bias in the epilogue, precision,
// alignment) and cached; when cuBLASLt offers none, the forward falls back to GemmEx + our bias +
// activation kernel.
// The bias is the fp32 one from the flat parameters in every precision, in the epilogue as in
// the fallback: bf16 sets CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE to CUDA_R_32F (fp32 and tf32 have
// it by default: the bias type defaults to the output type). cublasLt.h documents the bias as
// the output's type except for IMMA and fp8 kernels, so a bf16 GEMM with an fp32 bias may have
// no algorithm on some GPU / cuBLAS version: then the heuristic returns none for that key and
// the forward takes the fallback, which adds the same fp32 bias (cuda_bias_act).
#include "cuda_common.h"

typedef struct lt_plan {
  int ok; // 0: no cuBLASLt algorithm, use the GemmEx fallback
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t a, b, d;
  cublasLtMatmulAlgo_t algo;
} lt_plan;

void cuda_gemm_plan_free(void *v, void *arg) {
  lt_plan *p = (lt_plan *)v;
  if (!p) return;
  if (p->d) cublasCheck(cublasLtMatrixLayoutDestroy(p->d));
  if (p->b) cublasCheck(cublasLtMatrixLayoutDestroy(p->b));
  if (p->a) cublasCheck(cublasLtMatrixLayoutDestroy(p->a));
  if (p->op) cublasCheck(cublasLtMatmulDescDestroy(p->op));
  free(p);
}

static cudaDataType_t act_type(const cuda_ctx *c) {
  return c->precision == PREC_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

// GemmEx's compute type: fp32 pedantic (no TF32, no reduced-precision reduction), TF32 tensor
// cores, or fp32 accumulation of bf16 inputs.
static cublasComputeType_t gemm_compute(const cuda_ctx *c) {
  switch (c->precision) {
  case PREC_FP32: return CUBLAS_COMPUTE_32F_PEDANTIC;
  case PREC_TF32: return CUBLAS_COMPUTE_32F_FAST_TF32;
  case PREC_BF16: return CUBLAS_COMPUTE_32F;
  }
  FATAL("unknown precision %d", (int)c->precision);
}

// cuBLASLt's: FAST_TF32 in tf32, else plain 32F (fp32 inputs without TF32; bf16 inputs with
// fp32 accumulation).
static cublasComputeType_t lt_compute(const cuda_ctx *c) {
  return c->precision == PREC_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

static const void *linear_weights(cuda_ctx *c, const float *w, size_t count) {
  return c->precision == PREC_BF16 ? (const void *)cuda_shadow(c, w, count) : (const void *)w;
}

// The activation in cuBLASLt's epilogue: with the bias there, RELU_BIAS or BIAS; without it
// (its pointer is not 16-byte aligned) none, and cuda_bias_act adds both afterwards.
static cublasLtEpilogue_t lt_epilogue(activation act, int epilogue_bias) {
  if (!epilogue_bias) return CUBLASLT_EPILOGUE_DEFAULT;
  return act == ACT_RELU ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
}

// C = op(A) op(B) with GemmEx, the plan giving transposes, sizes and leading dimensions.
static void gemm_ex(cuda_ctx *c, const gemm_plan *g, const void *A, cudaDataType_t at, const void *B,
                    cudaDataType_t bt, void *C, cudaDataType_t ct) {
  const float alpha = 1.0f, beta = 0.0f;
  cublasCheck(cublasGemmEx(c->cublas, g->transa ? CUBLAS_OP_T : CUBLAS_OP_N,
                           g->transb ? CUBLAS_OP_T : CUBLAS_OP_N, g->m, g->n, g->k, &alpha, A, at,
                           g->lda, B, bt, g->ldb, &beta, C, ct, g->ldc, gemm_compute(c),
                           CUBLAS_GEMM_DEFAULT));
}

// The key holds everything the heuristic saw: the bias type follows from the precision, and
// epilogue_bias = 1 means a 16-byte aligned fp32 bias pointer (the heuristic reads its alignment).
static lt_plan *lt_plan_get(cuda_ctx *c, op_shape s, activation act, int epilogue_bias, int align,
                            const float *bias) {
  plan_key key = plan_key_linear(s, act, epilogue_bias, c->precision, align);
  lt_plan *p = (lt_plan *)plan_cache_find(&c->gemms, &key);
  if (p) return p;
  p = (lt_plan *)xcalloc(1, sizeof(lt_plan));
  gemm_plan g = plan_linear_gemm(LINEAR_FWD, s.N, s.C, s.K);
  cudaDataType_t t = act_type(c);
  cublasCheck(cublasLtMatmulDescCreate(&p->op, lt_compute(c), CUDA_R_32F));
  cublasOperation_t ta = g.transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.transb ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasCheck(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  cublasCheck(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  cublasLtEpilogue_t epi = lt_epilogue(act, epilogue_bias);
  cublasCheck(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (epilogue_bias && t != CUDA_R_32F) { // bf16 output, fp32 bias (see the top)
    const cudaDataType_t bias_type = CUDA_R_32F;
    cublasCheck(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                               &bias_type, sizeof(bias_type)));
  }
  // The heuristic reads the bias pointer's alignment (cublasLt.h: "routines that don't
  // dereference this pointer ... depend on its value"): give it a real one, not the NULL default.
  if (epilogue_bias)
    cublasCheck(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                               sizeof(bias)));
  // Stored (not transposed) shapes: A is (k x m) when transposed, B (k x n), D (m x n).
  cublasCheck(cublasLtMatrixLayoutCreate(&p->a, t, g.transa ? g.k : g.m, g.transa ? g.m : g.k, g.lda));
  cublasCheck(cublasLtMatrixLayoutCreate(&p->b, t, g.transb ? g.n : g.k, g.transb ? g.k : g.n, g.ldb));
  cublasCheck(cublasLtMatrixLayoutCreate(&p->d, t, g.m, g.n, g.ldc));
  cublasLtMatmulPreference_t pref;
  cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t wsb = c->lt_ws_bytes;
  uint32_t al = (uint32_t)align;
  cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)));
  cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof(al)));
  cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof(al)));
  cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof(al)));
  cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof(al)));
  cublasLtMatmulHeuristicResult_t res;
  int got = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->a, p->b, p->d, p->d, pref, 1, &res, &got);
  cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
  p->ok = st == CUBLAS_STATUS_SUCCESS && got > 0 && res.state == CUBLAS_STATUS_SUCCESS;
  if (p->ok) p->algo = res.algo;
  plan_cache_insert(&c->gemms, &key, p);
  return p;
}

// A linear layer's op_shape has H = W = 1 (backend.h): x is (N, C), y (N, K).
static void linear_check(op_shape s, const char *who) {
  if (s.H != 1 || s.W != 1)
    FATAL("%s: shape H = %d, W = %d: a linear layer's op_shape has H = W = 1 (C input, K output "
          "features)", who, s.H, s.W);
}

void cuda_linear_fwd(backend *b, void *y, const void *x, const float *w, const float *bias,
                     op_shape s, activation act) {
  cuda_ctx *c = ctx_of(b);
  linear_check(s, "linear_fwd");
  cuda_act_check(act, "linear_fwd");
  if (s.N == 0) return;
  const void *wp = linear_weights(c, w, (size_t)s.C * s.K);
  // The epilogue reads the fp32 bias in every precision (bf16: BIAS_DATA_TYPE, see the top).
  int epilogue_bias = bias != NULL && plan_alignment(bias) == 16;
  int align = plan_alignment(wp);
  align = plan_alignment(x) < align ? plan_alignment(x) : align;
  align = plan_alignment(y) < align ? plan_alignment(y) : align;
  lt_plan *p = lt_plan_get(c, s, act, epilogue_bias, align, bias);
  if (p->ok) {
    const float alpha = 1.0f, beta = 0.0f;
    if (epilogue_bias)
      cublasCheck(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    cublasCheck(cublasLtMatmul(c->lt, p->op, &alpha, wp, p->a, x, p->b, &beta, y, p->d, y, p->d,
                               &p->algo, c->lt_ws, c->lt_ws_bytes, c->stream));
    if (!epilogue_bias) cuda_bias_act(c, y, y, bias, (size_t)s.N, s.K, act);
  } else {
    gemm_plan g = plan_linear_gemm(LINEAR_FWD, s.N, s.C, s.K);
    gemm_ex(c, &g, wp, act_type(c), x, act_type(c), y, act_type(c));
    cuda_bias_act(c, y, y, bias, (size_t)s.N, s.K, act);
  }
}

// dy (N, K) is only read: by the bias gradient's column sum and as an input of both GEMMs.
void cuda_linear_bwd(backend *b, void *dx, float *dw, float *db, const void *dy, const void *x,
                     const float *w, op_shape s) {
  cuda_ctx *c = ctx_of(b);
  linear_check(s, "linear_bwd");
  if (s.N == 0) {
    if (dw) cuda_zero(c, dw, (size_t)s.C * s.K * sizeof(float));
    if (db) cuda_zero(c, db, (size_t)s.K * sizeof(float));
    return;
  }
  cuda_bias_grad(c, db, dy, (size_t)s.N, s.K);
  cudaDataType_t t = act_type(c);
  if (dw) {
    gemm_plan g = plan_linear_gemm(LINEAR_DW, s.N, s.C, s.K);
    gemm_ex(c, &g, x, t, dy, t, dw, CUDA_R_32F);
  }
  if (dx) {
    gemm_plan g = plan_linear_gemm(LINEAR_DX, s.N, s.C, s.K);
    gemm_ex(c, &g, linear_weights(c, w, (size_t)s.C * s.K), t, dy, t, dx, t);
  }
}
