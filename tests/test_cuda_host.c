// test_cuda_host.c - host-side tests of the CUDA backend that need no GPU: the plan cache,
// engine filtering by precision, autotune pick, workspace growth, the column-major GEMM plans of
// the linear layers (checked against row-major products), launch sizes, alignment, bf16
// rounding, the resize coefficients (against the CPU backend's resize), the Adam coefficients
// (against the CPU backend's Adam), the per-op profile's table (made-up region times: rows,
// percentages, order, conv plan lines), and the behaviour without a GPU (device count 0 and a
// clear error from backend_cuda_create).
// On a machine with a GPU the cuda_gpu_* tests also compare every op of the CUDA backend, in
// each precision, with the CPU reference backend on small shapes, check that --autotune first
// repeats bit for bit across two backends, and run the per-op profiler (they skip without a
// GPU).
#ifdef VGG_HAVE_CUDA

#include <cudnn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "check.h"
#include "cpu/cpu_backend.h"
#include "cuda/cuda_plan.h"
#include "cuda/prof_table.h"
#include "log.h"
#include "model.h"
#include "net.h"
#include "cuda/rowwise.h"
#include "resize.h"
#include "rng.h"
#include "steps.h"
#include "test.h"

static int freed_count;
static void count_free(void *val, void *arg) {
  freed_count += *(int *)val;
  (void)arg;
}

// A convolution's key with one alignment class for its three tensors.
static plan_key conv_key(int op, int N, int H, int W, int C, int K, precision_kind prec, int align) {
  const op_shape s = {N, H, W, C, K};
  const int all[3] = {align, align, align};
  return plan_key_conv(op, s, prec, all);
}

TEST(cuda_plan_cache) {
  plan_cache pc;
  memset(&pc, 0, sizeof(pc));
  static int vals[40];
  for (int i = 0; i < 40; i++) {
    vals[i] = 1;
    plan_key k = conv_key(PLAN_CONV_FWD, 128, 32, 32, 64, i + 1, PREC_FP32, 16);
    REQUIRE(plan_cache_find(&pc, &k) == NULL);
    plan_cache_insert(&pc, &k, &vals[i]);
  }
  EXPECT_EQ_INT(pc.n, 40);
  plan_key k = conv_key(PLAN_CONV_FWD, 128, 32, 32, 64, 7, PREC_FP32, 16);
  EXPECT(plan_cache_find(&pc, &k) == &vals[6]);
  // Every field is part of the key.
  plan_key v[9] = {
      conv_key(PLAN_CONV_BWD_DATA, 128, 32, 32, 64, 7, PREC_FP32, 16),
      conv_key(PLAN_CONV_FWD, 127, 32, 32, 64, 7, PREC_FP32, 16),
      conv_key(PLAN_CONV_FWD, 128, 31, 32, 64, 7, PREC_FP32, 16),
      conv_key(PLAN_CONV_FWD, 128, 32, 31, 64, 7, PREC_FP32, 16),
      conv_key(PLAN_CONV_FWD, 128, 32, 32, 63, 7, PREC_FP32, 16),
      conv_key(PLAN_CONV_FWD, 128, 32, 32, 64, 70, PREC_FP32, 16),
      conv_key(PLAN_CONV_FWD, 128, 32, 32, 64, 7, PREC_BF16, 16),
      conv_key(PLAN_CONV_FWD, 128, 32, 32, 64, 7, PREC_TF32, 16),
      conv_key(PLAN_CONV_FWD, 128, 32, 32, 64, 7, PREC_FP32, 8),
  };
  for (int i = 0; i < 9; i++) {
    EXPECT(!plan_key_equal(&v[i], &k));
    EXPECT(plan_cache_find(&pc, &v[i]) == NULL);
  }
  // A convolution's key holds the alignment of each tensor (x, w, y), each one part of the key.
  const op_shape cs = {128, 32, 32, 64, 7};
  const int a16[3] = {16, 16, 16};
  plan_key c16 = plan_key_conv(PLAN_CONV_FWD, cs, PREC_FP32, a16);
  EXPECT(plan_key_equal(&c16, &k));
  EXPECT_EQ_INT(c16.align[0], 16);
  EXPECT_EQ_INT(c16.align[1], 16);
  EXPECT_EQ_INT(c16.align[2], 16);
  EXPECT_EQ_INT(c16.act, ACT_NONE); // a convolution's key has no fused activation
  for (int t = 0; t < 3; t++) {
    int a[3] = {16, 16, 16};
    a[t] = 4; // only this tensor misaligned
    plan_key one = plan_key_conv(PLAN_CONV_FWD, cs, PREC_FP32, a);
    EXPECT_EQ_INT(one.align[t], 4);
    EXPECT_EQ_INT(one.align[(t + 1) % 3], 16); // the others keep their own class
    EXPECT(!plan_key_equal(&one, &k));
    EXPECT(plan_cache_find(&pc, &one) == NULL);
    for (int u = 0; u < 3; u++) {
      int b[3] = {16, 16, 16};
      b[u] = 4;
      plan_key other = plan_key_conv(PLAN_CONV_FWD, cs, PREC_FP32, b);
      EXPECT_EQ_INT(plan_key_equal(&one, &other), t == u);
    }
  }
  freed_count = 0;
  plan_cache_free(&pc, count_free, NULL);
  EXPECT_EQ_INT(freed_count, 40);
  EXPECT_EQ_INT(pc.n, 0);
  plan_cache_free(&pc, count_free, NULL); // empty: fine
}

// A linear forward's key: its activation and whether the bias is in the epilogue count too,
// and it never equals a convolution's key of the same numbers.
TEST(cuda_plan_key_linear) {
  const op_shape ls = {64, 1, 1, 512, 10};
  plan_key lin = plan_key_linear(ls, ACT_RELU, 1, PREC_BF16, 16);
  EXPECT_EQ_INT(lin.op, PLAN_LINEAR_FWD);
  EXPECT_EQ_INT(lin.align[0], 16);
  EXPECT_EQ_INT(lin.align[2], 16);
  plan_key lv[5] = {plan_key_linear(ls, ACT_NONE, 1, PREC_BF16, 16),
                    plan_key_linear(ls, ACT_RELU, 0, PREC_BF16, 16),
                    plan_key_linear(ls, ACT_RELU, 1, PREC_FP32, 16),
                    plan_key_linear(ls, ACT_RELU, 1, PREC_BF16, 8),
                    conv_key(PLAN_CONV_FWD, 64, 1, 1, 512, 10, PREC_BF16, 16)};
  plan_key same = plan_key_linear(ls, ACT_RELU, 1, PREC_BF16, 16);
  EXPECT(plan_key_equal(&lin, &same));
  for (int i = 0; i < 5; i++) EXPECT(!plan_key_equal(&lv[i], &lin));
}

TEST(cuda_engine_filter) {
  // The bit values mirror cuDNN's numerical-note enum.
  EXPECT_EQ_INT(PLAN_NOTE_TENSOR_CORE, 1u << CUDNN_NUMERICAL_NOTE_TENSOR_CORE);
  EXPECT_EQ_INT(PLAN_NOTE_DOWN_CONVERT, 1u << CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS);
  EXPECT_EQ_INT(PLAN_NOTE_REDUCED_REDUCTION, 1u << CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION);
  unsigned winograd = 1u << CUDNN_NUMERICAL_NOTE_WINOGRAD;
  unsigned nondet = 1u << CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC;
  EXPECT_EQ_INT(PLAN_NOTE_NONDETERMINISTIC, nondet);
  EXPECT(plan_engine_allowed(PREC_FP32, 0, 0));
  EXPECT(plan_engine_allowed(PREC_FP32, winograd, 0));
  // Nondeterministic engines (atomics) are refused in every precision: runs repeat bit for bit.
  EXPECT(!plan_engine_allowed(PREC_FP32, winograd | nondet, 0));
  EXPECT(!plan_engine_allowed(PREC_TF32, PLAN_NOTE_TENSOR_CORE | nondet, 0));
  EXPECT(!plan_engine_allowed(PREC_BF16, PLAN_NOTE_TENSOR_CORE | nondet, 0));
  // ... unless no deterministic engine exists (the last resort); the other rules still hold.
  EXPECT(plan_engine_allowed(PREC_FP32, winograd | nondet, 1));
  EXPECT(plan_engine_allowed(PREC_BF16, PLAN_NOTE_TENSOR_CORE | nondet, 1));
  EXPECT(!plan_engine_allowed(PREC_FP32, PLAN_NOTE_TENSOR_CORE | nondet, 1));
  EXPECT(!plan_engine_allowed(PREC_FP32, PLAN_NOTES_UNKNOWN, 1));
  EXPECT(!plan_engine_allowed(PREC_FP32, PLAN_NOTE_TENSOR_CORE, 0));
  EXPECT(!plan_engine_allowed(PREC_FP32, PLAN_NOTE_DOWN_CONVERT | winograd, 0));
  EXPECT(!plan_engine_allowed(PREC_FP32, ~0u, 0));
  EXPECT(!plan_engine_allowed(PREC_FP32, PLAN_NOTE_REDUCED_REDUCTION, 0));
  EXPECT(!plan_engine_allowed(PREC_FP32, PLAN_NOTES_UNKNOWN, 0));
  EXPECT(plan_engine_allowed(PREC_TF32, PLAN_NOTE_TENSOR_CORE, 0));
  EXPECT(plan_engine_allowed(PREC_BF16, PLAN_NOTE_TENSOR_CORE | PLAN_NOTE_REDUCED_REDUCTION | winograd, 0));
  // fp16 down-conversion is refused in every precision (fp16 range is too small for gradients).
  EXPECT(!plan_engine_allowed(PREC_TF32, PLAN_NOTE_TENSOR_CORE | PLAN_NOTE_DOWN_CONVERT, 0));
  EXPECT(!plan_engine_allowed(PREC_BF16, PLAN_NOTE_TENSOR_CORE | PLAN_NOTE_DOWN_CONVERT, 0));
  // Unreadable notes: refused in fp32 only.
  EXPECT(plan_engine_allowed(PREC_TF32, PLAN_NOTES_UNKNOWN, 0));
  EXPECT(plan_engine_allowed(PREC_BF16, PLAN_NOTES_UNKNOWN, 0));
  // The precision names, and what is not a precision.
  EXPECT(strcmp(plan_precision_name(PREC_FP32), "fp32") == 0);
  EXPECT(strcmp(plan_precision_name(PREC_TF32), "tf32") == 0);
  EXPECT(strcmp(plan_precision_name(PREC_BF16), "bf16") == 0);
  EXPECT(plan_precision_valid(PREC_FP32) && plan_precision_valid(PREC_TF32) &&
         plan_precision_valid(PREC_BF16));
  EXPECT(!plan_precision_valid((precision_kind)3));
  EXPECT(!plan_precision_valid((precision_kind)-1));
  EXPECT(strcmp(plan_precision_name((precision_kind)3), "unknown") == 0);
}

TEST(cuda_autotune_pick_and_workspace) {
  float a[4] = {3.0f, 1.0f, 1.0f, 2.0f};
  EXPECT_EQ_INT(plan_pick_fastest(a, 4), 1); // first of equal times
  float b[3] = {-1.0f, 5.0f, -1.0f};
  EXPECT_EQ_INT(plan_pick_fastest(b, 3), 1); // failed candidates skipped
  float c[2] = {-1.0f, -1.0f};
  EXPECT_EQ_INT(plan_pick_fastest(c, 2), -1);
  EXPECT_EQ_INT(plan_pick_fastest(c, 0), -1);
  // The mode: fastest is plan_pick_fastest; first takes the first candidate that ran, whatever
  // the times (deterministic across processes), skipping failed ones.
  EXPECT_EQ_INT(plan_pick(AUTOTUNE_FASTEST, a, 4), 1);
  EXPECT_EQ_INT(plan_pick(AUTOTUNE_FIRST, a, 4), 0);
  EXPECT_EQ_INT(plan_pick(AUTOTUNE_FASTEST, b, 3), 1);
  EXPECT_EQ_INT(plan_pick(AUTOTUNE_FIRST, b, 3), 1);
  float first[3] = {PLAN_MS_FAILED, 0.0f, PLAN_MS_UNTRIED}; // what autotune notes in first mode
  EXPECT_EQ_INT(plan_pick(AUTOTUNE_FIRST, first, 3), 1);
  EXPECT_EQ_INT(plan_pick(AUTOTUNE_FASTEST, first, 3), 1);
  float none[2] = {PLAN_MS_FAILED, PLAN_MS_UNTRIED};
  EXPECT_EQ_INT(plan_pick(AUTOTUNE_FIRST, none, 2), -1);
  EXPECT_EQ_INT(plan_pick(AUTOTUNE_FASTEST, none, 2), -1);
  EXPECT_EQ_INT(plan_pick(AUTOTUNE_FIRST, none, 0), -1);
  const size_t mib = (size_t)1 << 20;
  EXPECT_EQ_INT(plan_workspace_grow(0, 0), 0);
  EXPECT_EQ_INT(plan_workspace_grow(0, 1), mib);
  EXPECT_EQ_INT(plan_workspace_grow(4 * mib, 3 * mib + 5), 4 * mib); // never shrinks
  EXPECT_EQ_INT(plan_workspace_grow(4 * mib, 4 * mib + 1), 5 * mib);
  // The max over a sequence of requests is what remains.
  size_t ws = 0;
  size_t req[5] = {10, 3 * mib, 100, 2 * mib + 7, 0};
  for (int i = 0; i < 5; i++) ws = plan_workspace_grow(ws, req[i]);
  EXPECT_EQ_INT(ws, 3 * mib);
}

// Row-major references for y = x w^T, dx = dy w, dw = dy^T x.
TEST(cuda_linear_gemm_plans) {
  const int N = 3, in = 5, out = 4;
  float x[N * in], w[out * in], dy[N * out];
  for (int i = 0; i < N * in; i++) x[i] = (float)((i * 7) % 11) - 5.0f;
  for (int i = 0; i < out * in; i++) w[i] = (float)((i * 5) % 9) - 4.0f;
  for (int i = 0; i < N * out; i++) dy[i] = (float)((i * 3) % 7) - 3.0f;
  float y[N * out], dx[N * in], dw[out * in];

  gemm_plan g = plan_linear_gemm(LINEAR_FWD, N, in, out);
  EXPECT_EQ_INT(g.m * g.n, N * out);
  plan_gemm_reference(y, w, x, &g);
  for (int n = 0; n < N; n++)
    for (int o = 0; o < out; o++) {
      double s = 0;
      for (int i = 0; i < in; i++) s += (double)x[n * in + i] * w[o * in + i];
      EXPECT_NEAR(y[n * out + o], s, 1e-6);
    }

  g = plan_linear_gemm(LINEAR_DX, N, in, out);
  plan_gemm_reference(dx, w, dy, &g);
  for (int n = 0; n < N; n++)
    for (int i = 0; i < in; i++) {
      double s = 0;
      for (int o = 0; o < out; o++) s += (double)dy[n * out + o] * w[o * in + i];
      EXPECT_NEAR(dx[n * in + i], s, 1e-6);
    }

  g = plan_linear_gemm(LINEAR_DW, N, in, out);
  plan_gemm_reference(dw, x, dy, &g);
  for (int o = 0; o < out; o++)
    for (int i = 0; i < in; i++) {
      double s = 0;
      for (int n = 0; n < N; n++) s += (double)dy[n * out + o] * x[n * in + i];
      EXPECT_NEAR(dw[o * in + i], s, 1e-6);
    }
  // Leading dimensions are never smaller than the stored rows (cuBLAS rejects that).
  for (int which = 0; which < 3; which++) {
    g = plan_linear_gemm((linear_product)which, N, in, out);
    EXPECT(g.lda >= (g.transa ? g.k : g.m));
    EXPECT(g.ldb >= (g.transb ? g.n : g.k));
    EXPECT(g.ldc >= g.m);
  }
}

TEST(cuda_launch_alignment_bf16) {
  EXPECT_EQ_INT(plan_blocks(0, 256, 1000), 0);
  EXPECT_EQ_INT(plan_blocks(1, 256, 1000), 1);
  EXPECT_EQ_INT(plan_blocks(256, 256, 1000), 1);
  EXPECT_EQ_INT(plan_blocks(257, 256, 1000), 2);
  EXPECT_EQ_INT(plan_blocks((size_t)1 << 40, 256, 1000), 1000);
  char buf[64] __attribute__((aligned(16)));
  EXPECT_EQ_INT(plan_alignment(buf), 16);
  EXPECT_EQ_INT(plan_alignment(buf + 4), 4);
  EXPECT_EQ_INT(plan_alignment(buf + 8), 8);
  EXPECT_EQ_INT(plan_alignment(buf + 2), 2);
  EXPECT_EQ_INT(plan_alignment(buf + 3), 1);
  EXPECT_EQ_INT(plan_alignment(buf + 48), 16);
  EXPECT_EQ_INT(plan_f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ_INT(plan_f32_to_bf16(-2.0f), 0xC000);
  float f;
  uint32_t u = 0x3F808000u; // exactly halfway: ties to even (down)
  memcpy(&f, &u, 4);
  EXPECT_EQ_INT(plan_f32_to_bf16(f), 0x3F80);
  u = 0x3F818000u; // halfway, odd: up
  memcpy(&f, &u, 4);
  EXPECT_EQ_INT(plan_f32_to_bf16(f), 0x3F82);
  u = 0x3F808001u; // above halfway: up
  memcpy(&f, &u, 4);
  EXPECT_EQ_INT(plan_f32_to_bf16(f), 0x3F81);
  EXPECT(isnan(plan_bf16_to_f32(plan_f32_to_bf16(NAN))));
  EXPECT(isinf(plan_bf16_to_f32(plan_f32_to_bf16(INFINITY))));
  EXPECT_NEAR(plan_bf16_to_f32(plan_f32_to_bf16(3.14159f)), 3.140625, 0);
}

// bias_act_kernel's loops (elementwise.cu) on the host: how often each (row, chunk) is visited.
static int row_shape_covers_once(size_t rows, unsigned chunks, unsigned max_blocks) {
  const row_shape s = row_shape_plan(rows, chunks, 256, max_blocks);
  if (s.bx < 1 || s.by < 1 || s.bx * s.by > 256 || s.gx < 1 || s.gy < 1 || s.gy > 65535) return 0;
  if ((size_t)s.gx * s.gy > (max_blocks > s.gx ? max_blocks : s.gx)) return 0;
  if (chunks <= 256 && s.bx != chunks) return 0; // a block's threads cover whole rows, in order
  unsigned char *seen = xcalloc(rows * chunks, 1);
  for (unsigned bx = 0; bx < s.gx; bx++)
    for (unsigned by = 0; by < s.gy; by++)
      for (unsigned ty = 0; ty < s.by; ty++)
        for (unsigned tx = 0; tx < s.bx; tx++) {
          unsigned c = bx * s.bx + tx;
          if (c >= chunks) continue;
          for (size_t r = (size_t)by * s.by + ty; r < rows; r += (size_t)s.gy * s.by)
            seen[r * chunks + c]++;
        }
  int ok = 1;
  for (size_t i = 0; i < rows * chunks; i++) ok &= seen[i] == 1;
  free(seen);
  return ok;
}

TEST(cuda_rowwise_shapes) {
  // Vector width: K a multiple of ROW_VEC and every tensor on a ROW_VEC-element boundary.
  char buf[64] __attribute__((aligned(16)));
  EXPECT_EQ_INT(ROW_VEC, 4);
  EXPECT_EQ_INT(row_vec_width(8, 4, buf, NULL), 4);
  EXPECT_EQ_INT(row_vec_width(64, 4, buf, buf + 32), 4);
  EXPECT_EQ_INT(row_vec_width(512, 2, buf + 8, buf + 48), 4); // bf16: 8-byte boundaries
  EXPECT_EQ_INT(row_vec_width(3, 4, buf, NULL), 1);           // the first conv's input C
  EXPECT_EQ_INT(row_vec_width(10, 4, buf, NULL), 1);          // the classifier's out
  EXPECT_EQ_INT(row_vec_width(10, 2, buf, NULL), 1);
  EXPECT_EQ_INT(row_vec_width(6, 2, buf, NULL), 1);
  EXPECT_EQ_INT(row_vec_width(0, 4, buf, NULL), 1);
  EXPECT_EQ_INT(row_vec_width(8, 4, buf + 4, NULL), 1); // fp32 needs 16 bytes
  EXPECT_EQ_INT(row_vec_width(8, 4, buf + 8, NULL), 1);
  EXPECT_EQ_INT(row_vec_width(8, 2, buf + 2, NULL), 1); // bf16 needs 8
  EXPECT_EQ_INT(row_vec_width(8, 2, buf + 4, NULL), 1);
  EXPECT_EQ_INT(row_vec_width(8, 4, buf, buf + 4), 1);  // either tensor decides
  EXPECT_EQ_INT(row_vec_width(8, 2, buf, buf + 2), 1);

  // bias + ReLU: every (row, column chunk) exactly once, whatever the shape and the block cap.
  const size_t rows[5] = {1, 3, 255, 1000, 4099};
  const unsigned chunks[8] = {1, 2, 3, 10, 16, 256, 257, 1024}; // K = 4 .. 4096 at ROW_VEC, 3, 10
  const unsigned caps[3] = {1, 7, 132 * 32};
  for (int r = 0; r < 5; r++)
    for (int c = 0; c < 8; c++)
      for (int m = 0; m < 3; m++)
        if (!row_shape_covers_once(rows[r], chunks[c], caps[m]))
          test_fail(__FILE__, __LINE__, "row_shape_plan(%zu, %u, 256, %u) misses or repeats", rows[r],
                    chunks[c], caps[m]);
  row_shape s = row_shape_plan((size_t)1 << 32, 2, 256, 1u << 30); // grid y limit
  EXPECT_EQ_INT(s.gy, 65535);
  EXPECT_EQ_INT(s.bx * s.by, 256);
  s = row_shape_plan(131072, 2, 256, 4224); // conv1 at width 0.125, fp32: K = 8 in chunks of 4
  EXPECT_EQ_INT(s.bx, 2);
  EXPECT_EQ_INT(s.by, 128);
  EXPECT_EQ_INT(s.gx, 1);
  EXPECT_EQ_INT(s.gy, 1024);

  // Column sums: the row chunks do not depend on the vector width (same order, same bits), they
  // cover the rows, and the blocks across cover the channels.
  const size_t crows[6] = {1, 63, 65, 1000, 131072, (size_t)1 << 26};
  const int cK[6] = {3, 8, 10, 64, 512, 4096};
  for (int r = 0; r < 6; r++)
    for (int k = 0; k < 6; k++)
      for (int sm = 0; sm <= 132; sm += 132) {
        colsum_shape a = colsum_plan(crows[r], cK[k], 1, sm);
        EXPECT(a.chunks >= 1 && a.chunks <= 65535);
        EXPECT((a.chunks - 1) * a.per < crows[r] && crows[r] <= a.chunks * a.per);
        EXPECT_EQ_INT(a.gx, (cK[k] + 31) / 32);
        if (cK[k] % ROW_VEC) continue;
        colsum_shape v = colsum_plan(crows[r], cK[k], ROW_VEC, sm);
        EXPECT_EQ_INT(v.chunks, a.chunks);
        EXPECT_EQ_INT(v.per, a.per);
        EXPECT((size_t)v.gx * COLSUM_TX * ROW_VEC >= (size_t)cK[k]);
        EXPECT((size_t)(v.gx - 1) * COLSUM_TX * ROW_VEC < (size_t)cK[k]);
      }
  // Values by hand from the formula (132 SMs): tiles of COLSUM_TX * ROW_VEC channels, about 4
  // blocks per SM on the vector path.
  colsum_shape a = colsum_plan((size_t)1 << 20, 512, ROW_VEC, 132); // 4 tiles: want 132 chunks
  EXPECT_EQ_INT(a.chunks, 132);
  EXPECT_EQ_INT(a.per, 7944);
  EXPECT_EQ_INT(a.gx, 4);
  EXPECT_EQ_INT(colsum_plan((size_t)1 << 20, 512, 1, 132).gx, 16);
  a = colsum_plan(131072, 8, ROW_VEC, 132); // 1 tile: want 528 chunks
  EXPECT_EQ_INT(a.per, 249);
  EXPECT_EQ_INT(a.chunks, 527);
  EXPECT_EQ_INT(a.gx, 1);
  a = colsum_plan(2048, 512, ROW_VEC, 132); // 4 tiles: want 132, at most 2048 / 64
  EXPECT_EQ_INT(a.chunks, 32);
  EXPECT_EQ_INT(a.per, 64);
  EXPECT_EQ_INT(a.gx, 4);
  a = colsum_plan(100, 10, 1, 0); // unknown SM count: 64
  EXPECT_EQ_INT(a.chunks, 2);
  EXPECT_EQ_INT(a.per, 50);
}

// The device kernel's resize arithmetic, on the host: must equal cpu_resize_plane bit for bit.
static void resize_like_kernel(float *dst, const uint8_t *src, int size, int flip) {
  for (int oy = 0; oy < size; oy++)
    for (int ox = 0; ox < size; ox++) {
      int y0, y1, x0, x1;
      float ly, lx;
      resize_coef(oy, 32, size, &y0, &y1, &ly);
      resize_coef(ox, 32, size, &x0, &x1, &lx);
#define PIX(yy, xx) ((float)src[(yy) * 32 + (flip ? 31 - (xx) : (xx))] / 255.0f)
      float v;
      if (size == 32) {
        v = PIX(oy, ox);
      } else {
        float l0y = 1.0f - ly, l0x = 1.0f - lx;
        float top = fmaf(l0x, PIX(y0, x0), lx * PIX(y0, x1));
        float bot = fmaf(l0x, PIX(y1, x0), lx * PIX(y1, x1));
        v = fmaf(l0y, top, ly * bot);
      }
#undef PIX
      dst[oy * size + ox] = v;
    }
}

TEST(cuda_resize_coefficients) {
  int i0, i1;
  float l1;
  resize_coef(0, 32, 64, &i0, &i1, &l1); // src -0.25 clamps to 0
  EXPECT_EQ_INT(i0, 0);
  EXPECT_EQ_INT(i1, 1);
  EXPECT_NEAR(l1, 0.0, 0);
  resize_coef(63, 32, 64, &i0, &i1, &l1); // src 31.25: i1 clamped to 31
  EXPECT_EQ_INT(i0, 31);
  EXPECT_EQ_INT(i1, 31);
  EXPECT_NEAR(l1, 0.25, 0);
  resize_coef(1, 32, 64, &i0, &i1, &l1); // src 0.25
  EXPECT_EQ_INT(i0, 0);
  EXPECT_NEAR(l1, 0.25, 0);
  for (int o = 0; o < 32; o++) { // identity size lands on source centres
    resize_coef(o, 32, 32, &i0, &i1, &l1);
    EXPECT_EQ_INT(i0, o);
    EXPECT_NEAR(l1, 0.0, 0);
  }
  uint8_t img[1024];
  for (int i = 0; i < 1024; i++) img[i] = (uint8_t)rng_bits(7, 9, 0, 0, (uint32_t)i);
  const int sizes[6] = {32, 64, 48, 40, 224, 512};
  float *a = xmalloc(512 * 512 * sizeof(float)), *b = xmalloc(512 * 512 * sizeof(float));
  for (int s = 0; s < 6; s++)
    for (int flip = 0; flip < 2; flip++) {
      int size = sizes[s];
      resize_like_kernel(a, img, size, flip);
      cpu_resize_plane(b, 1, img, size, flip);
      int same = memcmp(a, b, (size_t)size * size * sizeof(float)) == 0;
      if (!same) test_fail(__FILE__, __LINE__, "resize to %d (flip %d) differs from the CPU", size, flip);
    }
  free(a);
  free(b);
}

TEST(cuda_without_gpu) {
  int n = backend_cuda_device_count(); // must never abort
  EXPECT(n >= 0);
  if (n > 0) { // a GPU is present: the no-device message cannot be exercised here
    test_skip("a CUDA device is present");
    return;
  }
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    backend_cuda_create(0, PREC_FP32);
    _exit(0); // reaching here is the failure
  }
  close(fds[1]);
  char msg[1024];
  size_t got = 0;
  ssize_t r;
  while (got < sizeof(msg) - 1 && (r = read(fds[0], msg + got, sizeof(msg) - 1 - got)) > 0)
    got += (size_t)r;
  msg[got] = 0;
  close(fds[0]);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  EXPECT(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  EXPECT(strstr(msg, "--device cuda: no CUDA device visible (") != NULL);
}

// ---- the per-op profile's table (bench_step --profile), from made-up region times -------------

static prof_sample sample(prof_kind kind, const char *shape, float ms) {
  prof_sample s;
  memset(&s, 0, sizeof(s));
  s.kind = kind;
  snprintf(s.shape, sizeof(s.shape), "%s", shape);
  s.ms = ms;
  return s;
}

// The printed table as a string (free it).
static char *table_text(const prof_table *t) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = CHECK_PTR(open_memstream(&buf, &len));
  prof_table_print(t, f);
  fclose(f);
  return buf;
}

// Whether the needles appear in text in this order.
static int in_order(const char *text, const char *const *needles, int n) {
  const char *at = text;
  for (int i = 0; i < n; i++) {
    const char *hit = strstr(at, needles[i]);
    if (!hit) {
      printf("    '%s' missing (or out of order)\n", needles[i]);
      return 0;
    }
    at = hit + strlen(needles[i]);
  }
  return 1;
}

// Two warm-up and two timed steps of the same four regions, in step order (not sorted by time),
// and two timed steps with other regions, which are left out.
static void example_steps(prof_table *t) {
  memset(t, 0, sizeof(*t));
  prof_table_warmup(t, 900.0); // the step that built the plans
  prof_table_warmup(t, 8.0);
  prof_sample a[4] = {sample(PROF_PREP, "64 images 32x32", 1.0f), sample(PROF_CONV_FWD, "32x32 3->64", 2.0f),
                      sample(PROF_CONV_EPILOGUE, "32x32x64 bias+relu", 1.0f), sample(PROF_ADAM, "0.0M params", 0.5f)};
  EXPECT(prof_table_step(t, a, 4, 5.0));
  a[1].ms = 4.0f;
  EXPECT(prof_table_step(t, a, 4, 7.0));
  EXPECT(!prof_table_step(t, a, 3, 100.0));
  prof_sample b[4] = {a[0], a[1], a[2], sample(PROF_ADAM, "other", 0.5f)};
  EXPECT(!prof_table_step(t, b, 4, 100.0));
}

// A conv plan record: three candidates (two timed, one failed), configs refused for two reasons.
static void example_conv(prof_table *t) {
  prof_conv *r = prof_table_conv(t);
  r->kind = PROF_CONV_FWD;
  snprintf(r->shape, sizeof(r->shape), "32x32 3->64");
  r->N = 64;
  r->align[0] = r->align[1] = r->align[2] = 16;
  snprintf(r->heuristics, sizeof(r->heuristics), "mode A");
  EXPECT_EQ_INT(prof_conv_note(r, 25, PLAN_NOTE_TENSOR_CORE, 0, PROF_CAND_REFUSED_NOTES), 0);
  EXPECT_EQ_INT(prof_conv_note(r, 12, 0, 2 << 20, PROF_CAND_UNTRIED), 1);
  EXPECT_EQ_INT(prof_conv_note(r, 7, 0, 0, PROF_CAND_REFUSED_RTC), 2);
  EXPECT_EQ_INT(prof_conv_note(r, 31, PLAN_NOTE_NONDETERMINISTIC, 0, PROF_CAND_REFUSED_NOTES), 3);
  EXPECT_EQ_INT(prof_conv_note(r, 3, 0, 0, PROF_CAND_UNTRIED), 4);
  EXPECT_EQ_INT(prof_conv_note(r, 0, 0, 0, PROF_CAND_UNTRIED), 5);
  r->cand[1].status = PROF_CAND_TIMED;
  r->cand[1].ms = 0.105f;
  r->cand[4].status = PROF_CAND_TIMED;
  r->cand[4].ms = 0.220f;
  r->cand[5].status = PROF_CAND_FAILED;
  r->chosen = 1;
  r->build_ms = 35.25;
  r->tune_ms = 3.5;
}

// A record that filled up with refused configs before its candidates came.
static prof_conv *example_full_conv(prof_table *t) {
  prof_conv *full = prof_table_conv(t);
  full->kind = PROF_CONV_BWD_FILTER;
  for (int i = 0; i < PROF_MAX_CANDS; i++) prof_conv_note(full, i, 0, 0, PROF_CAND_REFUSED_RTC);
  EXPECT_EQ_INT(prof_conv_note(full, 98, 0, 0, PROF_CAND_REFUSED_RTC), -1); // full: counted only
  // A candidate still gets in, in place of the last refused config, and so does the next one.
  EXPECT_EQ_INT(prof_conv_note(full, 99, 0, 0, PROF_CAND_UNTRIED), PROF_MAX_CANDS - 1);
  EXPECT_EQ_INT(prof_conv_note(full, 97, 0, 0, PROF_CAND_UNTRIED), PROF_MAX_CANDS - 2);
  return full;
}

TEST(cuda_profile_steps) {
  prof_table t;
  example_steps(&t);
  EXPECT_EQ_INT(t.steps, 2);
  EXPECT_EQ_INT(t.skipped, 2);
  EXPECT_EQ_INT(t.warmups, 2);
  EXPECT_NEAR(t.first_wall_ms, 900.0, 0);
  REQUIRE(t.n_rows == 4);
  EXPECT_EQ_INT(t.rows[0].kind, PROF_PREP);
  EXPECT_EQ_INT(t.rows[1].kind, PROF_CONV_FWD);
  EXPECT_EQ_INT(t.rows[3].kind, PROF_ADAM);
  EXPECT_NEAR(prof_table_row_ms(&t, 0), 1.0, 1e-9);
  EXPECT_NEAR(prof_table_row_ms(&t, 1), 3.0, 1e-9); // mean of 2 and 4
  EXPECT_NEAR(prof_table_step_ms(&t), 6.0, 1e-9);  // mean wall of the kept steps
  EXPECT_NEAR(prof_table_pct(&t, prof_table_row_ms(&t, 1)), 50.0, 1e-9);
  EXPECT_NEAR(prof_table_sum_ms(&t), 5.5, 1e-9);
  EXPECT_NEAR(prof_table_pct(&t, prof_table_sum_ms(&t)), 100.0 * 5.5 / 6.0, 1e-9);
  prof_table_free(&t);
  prof_table_free(&t); // freed tables stay valid
  // Every kind has a name (the activation ops' included).
  for (int k = 0; k < PROF_KINDS; k++) EXPECT(strcmp(prof_kind_name((prof_kind)k), "?") != 0);
  EXPECT(strcmp(prof_kind_name(PROF_ACT_FWD), "act fwd") == 0);
  EXPECT(strcmp(prof_kind_name(PROF_ACT_BWD), "act bwd") == 0);
  EXPECT(strcmp(prof_kind_name(PROF_BN_FWD), "bn fwd") == 0 && strcmp(prof_kind_name(PROF_BN_BWD), "bn bwd") == 0);
}

TEST(cuda_profile_conv_record) {
  prof_table t;
  memset(&t, 0, sizeof(t));
  example_conv(&t);
  EXPECT_EQ_INT(prof_conv_note(NULL, 1, 0, 0, PROF_CAND_UNTRIED), -1); // profiling off
  prof_conv *full = example_full_conv(&t);
  EXPECT(full->cand[PROF_MAX_CANDS - 1].engine == 99 && full->cand[PROF_MAX_CANDS - 2].engine == 97);
  EXPECT_EQ_INT(full->n_cand, PROF_MAX_CANDS);
  EXPECT_EQ_INT(full->more, 3);
  EXPECT_NEAR(prof_table_build_ms(&t), 35.25, 1e-9);
  prof_table_free(&t);
}

TEST(cuda_profile_print) {
  prof_table t;
  example_steps(&t);
  example_conv(&t);
  example_full_conv(&t);
  char *text = table_text(&t);
  printf("%s", text);
  const char *const rows[] = {
      "2 timed eager steps after 2 warm-up",
      "2 more timed steps ran other regions than the first one, left out",
      "   1  prep 64 images 32x32", "1.000", "16.7%",
      "   2  conv fwd 32x32 3->64", "3.000", "50.0%",
      "   3  conv epilogue 32x32x64 bias+relu", "1.000", "16.7%",
      "   4  adam 0.0M params", "0.500", "8.3%",
      "all-reduce wait", "(no gradient reducer in this run)",
      "sum of the regions", "5.500", "91.7%",
      "step wall time (host)", "6.000", "100.0%", "(0.500 ms outside the regions",
      "by kind:", "prep", "conv fwd", "3.000", "50.0%", "(1 region)", "adam",
      "conv plans (autotune fastest",
      "conv fwd 32x32 3->64, N 64, align x16 w16 y16: engine 12 (tensor cores: no, deterministic: yes)",
      "workspace 2.00 MiB", "heuristics mode A", "built in 35.2 ms (autotune 3.5 ms)",
      "engine 12", "0.105 ms   <- kept",
      "engine 3", "0.220 ms\n",
      "engine 0", "failed to run\n",
      "refused (numerical notes not allowed): engine 25, 31\n",
      "refused (runtime-compiled): engine 7\n",
      "(3 more configs not recorded)",
      "plan building (host, at first use): 2 conv plans in 35.2 ms (autotune 3.5 ms of it)",
      "the first step took 900.0 ms wall, a timed step 6.000 ms",
  };
  EXPECT(in_order(text, rows, (int)(sizeof(rows) / sizeof(rows[0]))));
  free(text);
  prof_table_free(&t);

  // A reducer's wait is a row like any other; autotune first changes the heading.
  prof_table u;
  memset(&u, 0, sizeof(u));
  u.autotune_first = 1;
  prof_sample w[2] = {sample(PROF_ADAM, "1.0M params", 1.0f), sample(PROF_ALLREDUCE_WAIT, "bucket 0", 3.0f)};
  prof_table_step(&u, w, 2, 3.0); // the regions exceed the wall time (host and GPU overlap)
  prof_conv *fr = prof_table_conv(&u);
  fr->kind = PROF_CONV_BWD_DATA;
  prof_conv_note(fr, 5, PLAN_NOTES_UNKNOWN, 0, PROF_CAND_RAN);
  prof_conv_note(fr, 6, 0, 0, PROF_CAND_UNTRIED);
  fr->chosen = 0;
  text = table_text(&u);
  printf("%s", text);
  const char *const rows2[] = {"   2  all-reduce wait bucket 0", "3.000", "100.0%",
                               "(the regions exceed it by 1.000 ms)",
                               "conv plans (autotune first",
                               "conv bwd data", "engine 5 (numerical notes unknown)",
                               "ran, untimed   <- kept", "engine 6", "not run\n",
                               "1 conv plan in 0.0 ms (autotune 0.0 ms of it)\n"};
  EXPECT(in_order(text, rows2, (int)(sizeof(rows2) / sizeof(rows2[0]))));
  EXPECT(strstr(text, "no gradient reducer") == NULL);
  free(text);
  prof_table_free(&u);
}

// ---- GPU vs CPU (run only where a GPU is visible) ---------------------------------------------

typedef struct pair {
  backend *cpu, *gpu;
  precision_kind prec;
} pair;

static const precision_kind all_precs[3] = {PREC_FP32, PREC_TF32, PREC_BF16};

static float *rand_buf(size_t n, uint32_t stream, float scale) {
  float *h = xmalloc((n ? n : 1) * sizeof(float));
  for (size_t i = 0; i < n; i++) h[i] = scale * (float)rng_normal(42, stream, 0, 0, (uint32_t)i);
  return h;
}

// Activations on the GPU are act_bytes wide: convert on the host for bf16.
static void *up_act(pair *p, const float *h, size_t n) {
  void *d = p->gpu->ops->alloc(p->gpu, n * p->gpu->act_bytes);
  if (p->gpu->act_bytes == 2) {
    uint16_t *t = xmalloc((n ? n : 1) * 2);
    for (size_t i = 0; i < n; i++) t[i] = plan_f32_to_bf16(h[i]);
    p->gpu->ops->upload(p->gpu, d, t, n * 2);
    free(t);
  } else {
    p->gpu->ops->upload(p->gpu, d, h, n * 4);
  }
  return d;
}

static void down_act(pair *p, float *h, const void *d, size_t n) {
  if (p->gpu->act_bytes == 2) {
    uint16_t *t = xmalloc((n ? n : 1) * 2);
    p->gpu->ops->download(p->gpu, t, d, n * 2);
    for (size_t i = 0; i < n; i++) h[i] = plan_bf16_to_f32(t[i]);
    free(t);
  } else {
    p->gpu->ops->download(p->gpu, h, d, n * 4);
  }
}

static void *up_f32(pair *p, const float *h, size_t n) {
  void *d = p->gpu->ops->alloc(p->gpu, n * 4);
  p->gpu->ops->upload(p->gpu, d, h, n * 4);
  return d;
}

// max |a - b| relative to max |b|; reports and fails above tol.
static void expect_close(const char *what, precision_kind prec, const float *a, const float *b,
                         size_t n, double tol) {
  double md = 0, mb = 1e-20;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - b[i]);
    if (!(d <= md)) md = d; // NaN propagates
    if (fabs(b[i]) > mb) mb = fabs(b[i]);
  }
  printf("    %-24s %s: max |diff| / max |ref| = %.3g\n", what, plan_precision_name(prec), md / mb);
  if (!(md / mb <= tol))
    test_fail(__FILE__, __LINE__, "%s (%s): rel error %.3g > %.3g", what, plan_precision_name(prec),
              md / mb, tol);
}

// The same values element by element, a NaN matching a NaN (exact selections: ReLU and its
// backward; expect_close would call NaN against NaN a difference).
static void expect_same(const char *what, precision_kind prec, const float *a, const float *b,
                        size_t n) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < n; i++)
    if (!(a[i] == b[i] || (isnan(a[i]) && isnan(b[i]))) && bad++ == 0) first = i;
  printf("    %-24s %s: %zu of %zu elements differ\n", what, plan_precision_name(prec), bad, n);
  if (bad)
    test_fail(__FILE__, __LINE__, "%s (%s): %zu of %zu elements differ, the first [%zu] %g (expected %g)",
              what, plan_precision_name(prec), bad, n, first, a[first], b[first]);
}

static double prec_tol(precision_kind prec) {
  switch (prec) {
  case PREC_FP32: return 1e-4;
  case PREC_TF32: return 5e-3;
  case PREC_BF16: return 3e-2;
  }
  return 0.0;
}

static int pair_open(pair *p, precision_kind prec) {
  if (backend_cuda_device_count() <= 0) {
    test_skip("no CUDA device: runs in scripts/gpu_check.sh");
    return 0;
  }
  p->prec = prec;
  p->cpu = backend_cpu_create(1);
  p->gpu = backend_cuda_create(0, prec);
  return 1;
}

static void pair_close(pair *p) {
  p->gpu->ops->destroy(p->gpu);
  p->cpu->ops->destroy(p->cpu);
}

// A layer's backward through its activation, as the walker runs it: act_bwd into a buffer of
// its own (dx), whose result is what the layer's backward gets; without an activation, dy.
static const void *through_act(backend *b, void *dx, const void *dy, const void *y, op_shape s,
                               activation act) {
  if (act == ACT_NONE) return dy;
  b->ops->act_bwd(b, dx, dy, y, s, act);
  return dx;
}

// Downloads n activations of d into a fresh host buffer (free it).
static float *act_copy(pair *p, const void *d, size_t n) {
  float *h = xmalloc((n ? n : 1) * sizeof(float));
  down_act(p, h, d, n);
  return h;
}

// conv_linear_case: one conv layer (N, H, W, C) -> K and a linear layer on its flattened
// output -> out, both with the activation `act`; the parameters in one flat buffer (w, bias,
// lw, lb) as in the trainer, so bf16 takes its shadow path.
typedef struct cl_case {
  op_shape cs, ys, ls, zs; // conv, its output (act_bwd), linear, its output
  size_t nx, ny, nw, nl, np, nz;
  activation act;
} cl_case;

typedef struct cl_bufs { // one backend's tensors: host or device
  void *x, *y, *z, *gz, *gza, *gy, *gya, *dx;
  float *params, *grads;
} cl_bufs;

static cl_case cl_make(int N, int H, int C, int K, activation act, int out) {
  const int in = H * H * K;
  cl_case k = {{N, H, H, C, K}, {N, H, H, K, K}, {N, 1, 1, in, out}, {N, 1, 1, out, out},
               (size_t)N * H * H * C, (size_t)N * H * H * K, (size_t)K * 9 * C,
               (size_t)out * in, 0, (size_t)N * out, act};
  k.np = k.nw + K + k.nl + out;
  return k;
}

// One step in the walker's order on backend b: forward with the activation fused, backward
// from gz through act_bwd (into a buffer of its own) before linear_bwd and conv_bwd.
static void cl_step(backend *b, const cl_case *k, const cl_bufs *m) {
  const float *w = m->params, *bias = w + k->nw, *lw = bias + k->cs.K, *lb = lw + k->nl;
  float *lg = m->grads + k->nw + k->cs.K;
  b->ops->conv_fwd(b, m->y, m->x, w, bias, k->cs, k->act);
  b->ops->linear_fwd(b, m->z, m->y, lw, lb, k->ls, k->act);
  const void *gz = through_act(b, m->gza, m->gz, m->z, k->zs, k->act);
  b->ops->linear_bwd(b, m->gy, lg, lg + k->nl, gz, m->y, lw, k->ls);
  const void *gy = through_act(b, m->gya, m->gy, m->y, k->ys, k->act);
  b->ops->conv_bwd(b, m->dx, m->grads, m->grads + k->nw, gy, m->x, w, k->cs);
}

// The two backward ops again on the GPU, each between downloads of its dy: backend.h says they
// read dy only, so it must come back bit for bit.
static void cl_keeps_dy(pair *p, const cl_case *k, const cl_bufs *m) {
  backend *g = p->gpu;
  const float *lw = m->params + k->nw + k->cs.K;
  float *lg = m->grads + k->nw + k->cs.K;
  const void *gz = k->act == ACT_NONE ? m->gz : m->gza, *gy = k->act == ACT_NONE ? m->gy : m->gya;
  float *before = act_copy(p, gz, k->nz);
  g->ops->linear_bwd(g, m->gy, lg, lg + k->nl, gz, m->y, lw, k->ls);
  float *after = act_copy(p, gz, k->nz);
  expect_same("linear_bwd keeps dy", p->prec, after, before, k->nz);
  free(before);
  free(after);
  if (k->act != ACT_NONE) g->ops->act_bwd(g, m->gya, m->gy, m->y, k->ys, k->act);
  before = act_copy(p, gy, k->ny);
  g->ops->conv_bwd(g, m->dx, m->grads, m->grads + k->nw, gy, m->x, m->params, k->cs);
  after = act_copy(p, gy, k->ny);
  expect_same("conv_bwd keeps dy", p->prec, after, before, k->ny);
  free(before);
  free(after);
}

// The GPU's results against the CPU's (h: the CPU's tensors, host memory).
static void cl_compare(pair *p, const cl_case *k, const cl_bufs *h, const cl_bufs *d) {
  float *hy = act_copy(p, d->y, k->ny), *hz = act_copy(p, d->z, k->nz), *hdx = act_copy(p, d->dx, k->nx);
  float *hg = xmalloc(k->np * 4), *grads = h->grads;
  p->gpu->ops->download(p->gpu, hg, d->grads, k->np * 4);
  const double t = prec_tol(p->prec);
  const size_t nw = k->nw, K = (size_t)k->cs.K, nl = k->nl;
  expect_close("conv y", p->prec, hy, h->y, k->ny, t);
  expect_close("linear z", p->prec, hz, h->z, k->nz, t);
  expect_close("conv dx", p->prec, hdx, h->dx, k->nx, 2 * t);
  expect_close("conv dw", p->prec, hg, grads, nw, 2 * t);
  expect_close("conv db", p->prec, hg + nw, grads + nw, K, 2 * t);
  expect_close("linear dw", p->prec, hg + nw + K, grads + nw + K, nl, 2 * t);
  expect_close("linear db", p->prec, hg + nw + K + nl, grads + nw + K + nl, (size_t)k->ls.K, 2 * t);
  free(hy); free(hz); free(hdx); free(hg);
}

// The case through both backends (the GPU twice: the second pass runs the cached plans), then
// the GPU's dy check and N == 0 (weight gradients zeroed, nothing else).
static void conv_linear_case(precision_kind prec, int N, int H, int C, int K, activation act,
                             int out) {
  pair p;
  if (!pair_open(&p, prec)) return;
  const cl_case k = cl_make(N, H, C, K, act, out);
  cl_bufs h = {rand_buf(k.nx, 1, 1.0f), xcalloc(k.ny, 4), xcalloc(k.nz, 4), rand_buf(k.nz, 3, 1.0f),
               xcalloc(k.nz, 4), xcalloc(k.ny, 4), xcalloc(k.ny, 4), xcalloc(k.nx, 4),
               rand_buf(k.np, 2, 0.2f), xcalloc(k.np, 4)};
  p.cpu->ops->set_params(p.cpu, h.params, k.np);
  cl_step(p.cpu, &k, &h);
  backend *g = p.gpu;
  const size_t ab = g->act_bytes;
  cl_bufs d = {up_act(&p, h.x, k.nx), g->ops->alloc(g, k.ny * ab), g->ops->alloc(g, k.nz * ab),
               up_act(&p, h.gz, k.nz), g->ops->alloc(g, k.nz * ab), g->ops->alloc(g, k.ny * ab),
               g->ops->alloc(g, k.ny * ab), g->ops->alloc(g, k.nx * ab), up_f32(&p, h.params, k.np),
               g->ops->alloc(g, k.np * 4)};
  g->ops->set_params(g, d.params, k.np);
  for (int rep = 0; rep < 2; rep++) cl_step(g, &k, &d);
  cl_compare(&p, &k, &h, &d);
  cl_keeps_dy(&p, &k, &d);
  op_shape c0 = k.cs, l0 = k.ls;
  c0.N = l0.N = 0;
  const float *lw = d.params + k.nw + K;
  float *lg = d.grads + k.nw + K, *hg = xmalloc(k.np * 4);
  g->ops->conv_bwd(g, NULL, d.grads, d.grads + k.nw, d.gya, d.x, d.params, c0);
  g->ops->linear_bwd(g, NULL, lg, lg + k.nl, d.gza, d.y, lw, l0);
  g->ops->download(g, hg, d.grads, k.np * 4);
  int zero = 1;
  for (size_t i = 0; i < k.np; i++) zero &= hg[i] == 0.0f;
  EXPECT(zero);
  free(hg);
  void *dv[] = {d.x, d.y, d.z, d.gz, d.gza, d.gy, d.gya, d.dx, d.params, d.grads};
  void *hv[] = {h.x, h.y, h.z, h.gz, h.gza, h.gy, h.gya, h.dx, h.params, h.grads};
  for (int i = 0; i < 10; i++) {
    g->ops->release(g, dv[i]);
    free(hv[i]);
  }
  pair_close(&p);
}

TEST(cuda_gpu_conv_linear) {
  for (int i = 0; i < 3; i++) {
    precision_kind prec = all_precs[i];
    conv_linear_case(prec, 2, 8, 3, 16, ACT_RELU, 10);
    conv_linear_case(prec, 3, 4, 16, 32, ACT_RELU, 7);
    conv_linear_case(prec, 1, 4, 8, 8, ACT_NONE, 5);
    conv_linear_case(prec, 2, 4, 3, 10, ACT_RELU, 3); // odd K: 8-byte aligned tensors after the bias
    conv_linear_case(prec, 2, 4, 8, 64, ACT_RELU, 8); // K, out % 4 == 0: the row-wise vector paths
  }
}

// Uploads h (n) as activations one element past an aligned allocation when off = 1, so that a
// K % 4 == 0 tensor takes the scalar path of elementwise.cu; *base is what to release.
static void *up_act_at(pair *p, void **base, const float *h, size_t n, int off) {
  float *t = xcalloc(n + 1, sizeof(float));
  memcpy(t + off, h, n * sizeof(float));
  *base = up_act(p, t, n + 1);
  free(t);
  return (char *)*base + (size_t)off * p->gpu->act_bytes;
}

// An activation buffer of n elements at offset off (see up_act_at); *base is what to release.
static void *alloc_act_at(pair *p, void **base, size_t n, int off) {
  *base = p->gpu->ops->alloc(p->gpu, (n + 1) * p->gpu->act_bytes);
  return (char *)*base + (size_t)off * p->gpu->act_bytes;
}

static void bf16_round(float *h, size_t n) {
  for (size_t i = 0; i < n; i++) h[i] = plan_bf16_to_f32(plan_f32_to_bf16(h[i]));
}

// Zeros, -0 and NaNs among random values (the ReLU's edge cases), bf16-exact in bf16.
static float *act_input(size_t n, uint32_t stream, precision_kind prec) {
  float *h = rand_buf(n, stream, 1.0f);
  for (size_t i = 0; i < n; i += 7) h[i] = 0.0f;
  for (size_t i = 3; i < n; i += 11) h[i] = -0.0f;
  for (size_t i = 5; i < n; i += 13) h[i] = NAN;
  if (prec == PREC_BF16) bf16_round(h, n);
  return h;
}

// 1. ReLU backward (act_bwd) on (N, out) = (N, 1, 1, out), then the bias gradient of its result
//    (linear_bwd without dw and dx runs only the column sums), each on its vector path
//    (off 0 when out % 4 == 0) and its scalar path (off 1, or out % 4 != 0), against the CPU:
//    act_bwd is an exact selection (a NaN y passes dy, as threshold_backward), it leaves dy as it
//    was, and both paths give the same bits. ACT_NONE's backward is a copy of dy.
static void act_bwd_case(pair *p, int N, int out) {
  const precision_kind prec = p->prec;
  const size_t n = (size_t)N * out;
  const op_shape s = {N, 1, 1, out, out}, s1 = {N, 1, 1, 1, out};
  backend *g = p->gpu;
  float *dy = rand_buf(n, 11, 1.0f), *y = act_input(n, 12, prec), *x1 = rand_buf(N, 13, 1.0f);
  if (prec == PREC_BF16) bf16_round(dy, n);
  float *cdx = xmalloc(n * 4), *cdb = xmalloc(out * 4), *cdw = xmalloc(out * 4);
  p->cpu->ops->act_bwd(p->cpu, cdx, dy, y, s, ACT_RELU);
  p->cpu->ops->linear_bwd(p->cpu, NULL, cdw, cdb, cdx, x1, NULL, s1);
  float *hdx[2] = {xmalloc(n * 4), xmalloc(n * 4)}, *hdb[2] = {xmalloc(out * 4), xmalloc(out * 4)};
  float *hdy = xmalloc(n * 4);
  char what[64];
  for (int off = 0; off < 2; off++) {
    void *b_dy, *b_y, *b_dx;
    void *d_dy = up_act_at(p, &b_dy, dy, n, off), *d_y = up_act_at(p, &b_y, y, n, off);
    void *d_dx = alloc_act_at(p, &b_dx, n, off);
    float *d_db = g->ops->alloc(g, out * 4);
    g->ops->act_bwd(g, d_dx, d_dy, d_y, s, ACT_RELU);
    g->ops->linear_bwd(g, NULL, NULL, d_db, d_dx, NULL, NULL, s1);
    down_act(p, hdx[off], d_dx, n);
    down_act(p, hdy, d_dy, n);
    g->ops->download(g, hdb[off], d_db, out * 4);
    snprintf(what, sizeof(what), "act_bwd relu N %d K %d +%d", N, out, off);
    expect_same(what, prec, hdx[off], cdx, n);
    snprintf(what, sizeof(what), "act_bwd keeps dy +%d", off);
    expect_same(what, prec, hdy, dy, n);
    snprintf(what, sizeof(what), "bias grad N %d K %d +%d", N, out, off);
    expect_close(what, prec, hdb[off], cdb, out, prec_tol(prec));
    g->ops->act_bwd(g, d_dx, d_dy, d_y, s, ACT_NONE);
    down_act(p, hdx[off], d_dx, n);
    snprintf(what, sizeof(what), "act_bwd none +%d", off);
    expect_same(what, prec, hdx[off], dy, n);
    g->ops->release(g, d_db);
    g->ops->release(g, b_dx);
    g->ops->release(g, b_y);
    g->ops->release(g, b_dy);
  }
  if (memcmp(hdb[0], hdb[1], out * 4) != 0)
    test_fail(__FILE__, __LINE__, "%s N %d K %d: the vector and scalar bias gradients differ",
              plan_precision_name(prec), N, out);
  free(dy); free(y); free(x1); free(cdx); free(cdb); free(cdw); free(hdy);
  for (int i = 0; i < 2; i++) {
    free(hdx[i]);
    free(hdb[i]);
  }
}

// 2. Bias + activation (linear_fwd with a bias that is not 16-byte aligned: cuda_bias_act adds
//    it, not the cuBLASLt epilogue) on both paths, against the CPU.
static void bias_act_case(pair *p, int N, int out) {
  const precision_kind prec = p->prec;
  const int in = 16;
  const size_t n = (size_t)N * out, nw = (size_t)out * in, np = nw + 1 + out;
  const op_shape s = {N, 1, 1, in, out};
  backend *g = p->gpu;
  float *params = rand_buf(np, 14, 0.3f), *x = rand_buf((size_t)N * in, 15, 1.0f);
  float *cy = xmalloc(n * 4), *hy = xmalloc(n * 4);
  if (prec == PREC_BF16) { // the GPU reads bf16 x and the bf16 shadow of w; the bias stays fp32
    bf16_round(x, (size_t)N * in);
    bf16_round(params, nw);
  }
  float *d_params = up_f32(p, params, np);
  g->ops->set_params(g, d_params, np);
  void *d_x = up_act(p, x, (size_t)N * in);
  char what[64];
  for (int a = 0; a < 2; a++) {
    const activation act = a ? ACT_RELU : ACT_NONE;
    p->cpu->ops->linear_fwd(p->cpu, cy, x, params, params + nw + 1, s, act);
    for (int off = 0; off < 2; off++) {
      void *b_y, *d_y = alloc_act_at(p, &b_y, n, off);
      g->ops->linear_fwd(g, d_y, d_x, d_params, d_params + nw + 1, s, act);
      down_act(p, hy, d_y, n);
      snprintf(what, sizeof(what), "bias+%s N %d K %d +%d", a ? "relu" : "none", N, out, off);
      expect_close(what, prec, hy, cy, n, prec_tol(prec));
      g->ops->release(g, b_y);
    }
  }
  g->ops->release(g, d_x);
  g->ops->release(g, d_params);
  free(params); free(x); free(cy); free(hy);
}

// 3. act_fwd on (N, out), out of place and in place, on both paths: an exact selection (NaN
//    propagates, as torch.relu), the same as the CPU's; ACT_NONE copies.
static void act_fwd_case(pair *p, int N, int out) {
  const precision_kind prec = p->prec;
  const size_t n = (size_t)N * out;
  const op_shape s = {N, 1, 1, out, out};
  backend *g = p->gpu;
  float *x = act_input(n, 16, prec), *cy = xmalloc(n * 4), *hy = xmalloc(n * 4);
  p->cpu->ops->act_fwd(p->cpu, cy, x, s, ACT_RELU);
  char what[64];
  for (int off = 0; off < 2; off++) {
    void *b_x, *b_y;
    void *d_x = up_act_at(p, &b_x, x, n, off), *d_y = alloc_act_at(p, &b_y, n, off);
    g->ops->act_fwd(g, d_y, d_x, s, ACT_NONE);
    down_act(p, hy, d_y, n);
    snprintf(what, sizeof(what), "act_fwd none N %d K %d +%d", N, out, off);
    expect_same(what, prec, hy, x, n);
    g->ops->act_fwd(g, d_y, d_x, s, ACT_RELU);
    down_act(p, hy, d_y, n);
    snprintf(what, sizeof(what), "act_fwd relu N %d K %d +%d", N, out, off);
    expect_same(what, prec, hy, cy, n);
    g->ops->act_fwd(g, d_x, d_x, s, ACT_RELU); // in place
    down_act(p, hy, d_x, n);
    snprintf(what, sizeof(what), "act_fwd relu in place +%d", off);
    expect_same(what, prec, hy, cy, n);
    g->ops->release(g, b_y);
    g->ops->release(g, b_x);
  }
  free(x); free(cy); free(hy);
}

// The row-wise kernels of elementwise.cu (and the activation ops on them) on (N, out) tensors,
// each on its vector path (out % 4 == 0, aligned) and its scalar path (out = 3 or 10, or one
// element off), against the CPU.
TEST(cuda_gpu_rowwise_paths) {
  const int outs[4] = {3, 8, 10, 64}; // scalar, vector, scalar, vector (when aligned)
  const int Ns[2] = {5, 1000};
  for (int i = 0; i < 3; i++) {
    pair p;
    if (!pair_open(&p, all_precs[i])) return;
    for (int k = 0; k < 4; k++)
      for (int j = 0; j < 2; j++) {
        act_bwd_case(&p, Ns[j], outs[k]);
        bias_act_case(&p, Ns[j], outs[k]);
        act_fwd_case(&p, Ns[j], outs[k]);
      }
    pair_close(&p);
  }
}

// Max-pool forward and backward with ties, against the CPU (argmax identical).
static void pool_case(pair *p) {
  const precision_kind prec = p->prec;
  const int N = 3, H = 6, W = 4, C = 5;
  const op_shape s = {N, H, W, C, C};
  const size_t nx = (size_t)N * H * W * C, ny = nx / 4;
  float *x = rand_buf(nx, 5, 1.0f), *g = rand_buf(ny, 6, 1.0f);
  for (size_t i = 0; i + C < nx; i += 7) x[i + C] = x[i]; // ties inside pooling windows
  if (prec == PREC_BF16) bf16_round(x, nx); // first, so both backends see the same ties
  float *y = xmalloc(ny * 4), *dx = xmalloc(nx * 4), *hy = xmalloc(ny * 4), *hdx = xmalloc(nx * 4);
  int32_t *am = xmalloc(ny * 4), *ham = xmalloc(ny * 4);
  p->cpu->ops->maxpool_fwd(p->cpu, y, am, x, s);
  p->cpu->ops->maxpool_bwd(p->cpu, dx, g, am, x, y, s);
  backend *b = p->gpu;
  void *d_x = up_act(p, x, nx), *d_g = up_act(p, g, ny);
  void *d_y = b->ops->alloc(b, ny * b->act_bytes), *d_dx = b->ops->alloc(b, nx * b->act_bytes);
  int32_t *d_am = b->ops->alloc(b, ny * 4);
  b->ops->maxpool_fwd(b, d_y, d_am, d_x, s);
  b->ops->maxpool_bwd(b, d_dx, d_g, d_am, d_x, d_y, s);
  down_act(p, hy, d_y, ny);
  down_act(p, hdx, d_dx, nx);
  b->ops->download(b, ham, d_am, ny * 4);
  expect_close("maxpool y", prec, hy, y, ny, prec == PREC_BF16 ? 0 : 1e-7);
  expect_close("maxpool dx", prec, hdx, dx, nx, prec == PREC_BF16 ? 1e-2 : 1e-7);
  EXPECT(memcmp(ham, am, ny * 4) == 0);
  void *bufs[] = {d_x, d_g, d_y, d_dx, d_am};
  for (int i = 0; i < 5; i++) b->ops->release(b, bufs[i]);
  free(x); free(g); free(y); free(dx); free(hy); free(hdx); free(am); free(ham);
}

// Dropout: identical masks (ids are not 0..N-1 on purpose), over D = H * W * C features. Two
// steps queued back to back before either is read: each kernel must see its own step (the
// eager staging of the step variable, cuda_common.h), and the backward the forward's mask.
static void dropout_case(pair *p) {
  const precision_kind prec = p->prec;
  const int N = 3;
  const op_shape s = {N, 2, 4, 5, 5}; // D = 40
  const size_t n = (size_t)N * 40;
  int32_t ids[3] = {17, 4, 2999};
  float *a = rand_buf(n, 7, 1.0f), *b[3], *hb = xmalloc(n * 4);
  if (prec == PREC_BF16) bf16_round(a, n);
  dropout_key key[3] = {{123, 2, 77}, {123, 2, 78}, {123, 2, 77}};
  for (int k = 0; k < 3; k++) b[k] = xmalloc(n * 4);
  p->cpu->ops->dropout_fwd(p->cpu, b[0], a, ids, s, 0.5f, key[0]);
  p->cpu->ops->dropout_fwd(p->cpu, b[1], a, ids, s, 0.5f, key[1]);
  p->cpu->ops->dropout_bwd(p->cpu, b[2], a, ids, s, 0.5f, key[2]);
  backend *g = p->gpu;
  int32_t *d_ids = up_f32(p, (const float *)(const void *)ids, 3);
  void *d_a = up_act(p, a, n), *d_b[3];
  for (int k = 0; k < 3; k++) d_b[k] = g->ops->alloc(g, n * g->act_bytes);
  g->ops->dropout_fwd(g, d_b[0], d_a, d_ids, s, 0.5f, key[0]);
  g->ops->dropout_fwd(g, d_b[1], d_a, d_ids, s, 0.5f, key[1]);
  g->ops->dropout_bwd(g, d_b[2], d_a, d_ids, s, 0.5f, key[2]);
  const char *what[3] = {"dropout step 77", "dropout step 78", "dropout bwd step 77"};
  for (int k = 0; k < 3; k++) {
    down_act(p, hb, d_b[k], n);
    expect_close(what[k], prec, hb, b[k], n, prec == PREC_BF16 ? 1e-2 : 0);
    g->ops->release(g, d_b[k]);
    free(b[k]);
  }
  g->ops->release(g, d_a);
  g->ops->release(g, d_ids);
  free(a); free(hb);
}

// Cross-entropy: stats accumulate, dlogits scaled.
static void xent_case(pair *p) {
  const precision_kind prec = p->prec;
  const int N = 3, L = 10;
  float *lg = rand_buf((size_t)N * L, 8, 2.0f), *dl = xmalloc((size_t)N * L * 4), *hdl = xmalloc((size_t)N * L * 4);
  if (prec == PREC_BF16) bf16_round(lg, (size_t)N * L);
  int32_t lab[3] = {1, 9, 0};
  double st[2] = {1.0, 2.0}, hst[2];
  p->cpu->ops->xent(p->cpu, dl, st, lg, lab, N, L, 0.25f);
  backend *g = p->gpu;
  double *d_st = g->ops->alloc(g, 16);
  double init[2] = {1.0, 2.0};
  g->ops->upload(g, d_st, init, 16);
  int32_t *d_lab = up_f32(p, (const float *)(const void *)lab, 3);
  void *d_lg = up_act(p, lg, (size_t)N * L), *d_dl = g->ops->alloc(g, (size_t)N * L * g->act_bytes);
  g->ops->xent(g, d_dl, d_st, d_lg, d_lab, N, L, 0.25f);
  g->ops->download(g, hst, d_st, 16);
  down_act(p, hdl, d_dl, (size_t)N * L);
  EXPECT_NEAR(hst[0], st[0], 1e-9 * fabs(st[0]) + 1e-12);
  EXPECT_NEAR(hst[1], st[1], 0);
  expect_close("xent dlogits", prec, hdl, dl, (size_t)N * L, prec == PREC_BF16 ? 1e-2 : 1e-6);
  void *bufs[] = {d_st, d_lab, d_lg, d_dl};
  for (int i = 0; i < 4; i++) g->ops->release(g, bufs[i]);
  free(lg); free(dl); free(hdl);
}

TEST(cuda_gpu_pool_dropout_xent) {
  for (int i = 0; i < 3; i++) {
    pair p;
    if (!pair_open(&p, all_precs[i])) return;
    pool_case(&p);
    dropout_case(&p);
    xent_case(&p);
    pair_close(&p);
  }
}

// ---- batch norm (bn_fwd, bn_bwd) --------------------------------------------------------------
// One BatchNorm2d layer (N, H, H, C) with its fused activation on both backends: a training
// forward (y, save, the running statistics' update), the backward through act_bwd as the walker
// runs it (dgamma, dbeta, dx), then an evaluation forward from the updated running statistics.
// x sits 50 away from zero: a variance taken as E[x^2] - E[x]^2 in fp32 would lose about three
// digits there, the two-pass one keeps them.
typedef struct bn_bufs { // one backend's tensors: host or device
  void *x, *y, *ye, *dy, *dya, *dx;
  float *gb, *save, *run, *grads; // gamma then beta; mean, invstd; mean, var; dgamma then dbeta
} bn_bufs;

static void bn_step(backend *b, const bn_bufs *m, op_shape s, bn_params bp, activation act) {
  const int C = s.C;
  b->ops->bn_fwd(b, m->y, m->save, m->x, m->gb, m->gb + C, m->run, s, bp, 1, act);
  const void *g = through_act(b, m->dya, m->dy, m->y, s, act);
  b->ops->bn_bwd(b, m->dx, m->grads, m->grads + C, g, m->x, m->gb, m->save, s, bp);
  b->ops->bn_fwd(b, m->ye, m->save, m->x, m->gb, m->gb + C, m->run, s, bp, 0, act);
}

// Downloads n fp32 values of d into a fresh host buffer (free it).
static float *f32_copy(pair *p, const float *d, size_t n) {
  float *h = xmalloc((n ? n : 1) * sizeof(float));
  p->gpu->ops->download(p->gpu, h, d, n * sizeof(float));
  return h;
}

// The GPU's results against the CPU's (h: the CPU's tensors).
static void bn_compare(pair *p, const bn_bufs *h, const bn_bufs *d, size_t n, int C) {
  const double t = prec_tol(p->prec);
  float *y = act_copy(p, d->y, n), *ye = act_copy(p, d->ye, n), *dx = act_copy(p, d->dx, n);
  float *save = f32_copy(p, d->save, 2 * (size_t)C), *run = f32_copy(p, d->run, 2 * (size_t)C);
  float *grads = f32_copy(p, d->grads, 2 * (size_t)C);
  expect_close("bn train y", p->prec, y, h->y, n, t);
  expect_close("bn save mean", p->prec, save, h->save, C, 1e-5);
  expect_close("bn save invstd", p->prec, save + C, h->save + C, C, 1e-5);
  expect_close("bn running mean", p->prec, run, h->run, C, 1e-5);
  expect_close("bn running var", p->prec, run + C, h->run + C, C, 1e-5);
  expect_close("bn dgamma", p->prec, grads, h->grads, C, 2 * t);
  expect_close("bn dbeta", p->prec, grads + C, h->grads + C, C, 2 * t);
  expect_close("bn dx", p->prec, dx, h->dx, n, 2 * t);
  expect_close("bn eval y", p->prec, ye, h->ye, n, t);
  free(y); free(ye); free(dx); free(save); free(run); free(grads);
}

// On the GPU alone: bn_bwd leaves its dy as it was and writes (not accumulates) the same
// gradients again; evaluation touches neither save nor running; N = 0 (without sync: with it, a
// batch empty on every rank has no statistics) updates nothing and zeroes dgamma, dbeta.
static void bn_contract(pair *p, const bn_bufs *d, op_shape s, bn_params bp, activation act) {
  backend *g = p->gpu;
  const size_t n = (size_t)s.N * s.H * s.W * s.C, C2 = 2 * (size_t)s.C;
  const void *dy = act == ACT_NONE ? d->dy : d->dya;
  float *dy0 = act_copy(p, dy, n), *gr0 = f32_copy(p, d->grads, C2);
  float *save0 = f32_copy(p, d->save, C2), *run0 = f32_copy(p, d->run, C2);
  g->ops->bn_bwd(g, d->dx, d->grads, d->grads + s.C, dy, d->x, d->gb, d->save, s, bp);
  g->ops->bn_fwd(g, d->ye, d->save, d->x, d->gb, d->gb + s.C, d->run, s, bp, 0, act);
  float *dy1 = act_copy(p, dy, n), *gr1 = f32_copy(p, d->grads, C2);
  float *save1 = f32_copy(p, d->save, C2), *run1 = f32_copy(p, d->run, C2);
  expect_same("bn_bwd keeps dy", p->prec, dy1, dy0, n);
  expect_same("bn_bwd writes grads", p->prec, gr1, gr0, C2);
  expect_same("bn eval keeps save", p->prec, save1, save0, C2);
  expect_same("bn eval keeps running", p->prec, run1, run0, C2);
  free(dy0); free(gr0); free(save0); free(dy1); free(gr1); free(save1); free(run1);
  if (bp.sync) {
    free(run0);
    return;
  }
  op_shape s0 = s;
  s0.N = 0;
  g->ops->bn_fwd(g, d->y, d->save, d->x, d->gb, d->gb + s.C, d->run, s0, bp, 1, act);
  g->ops->bn_bwd(g, NULL, d->grads, d->grads + s.C, dy, d->x, d->gb, d->save, s0, bp);
  float *run2 = f32_copy(p, d->run, C2), *gr2 = f32_copy(p, d->grads, C2);
  expect_same("bn N = 0 keeps running", p->prec, run2, run0, C2);
  int zero = 1;
  for (size_t i = 0; i < C2; i++) zero &= gr2[i] == 0.0f;
  EXPECT(zero);
  free(run0); free(run2); free(gr2);
}

// Host tensors of the case: x (bf16-exact in bf16, as the GPU sees it), dy likewise, gamma and
// beta, running statistics with positive variances.
static bn_bufs bn_host(size_t n, int C, precision_kind prec) {
  bn_bufs h = {rand_buf(n, 21, 1.0f), xcalloc(n, 4), xcalloc(n, 4), rand_buf(n, 22, 1.0f),
               xcalloc(n, 4), xcalloc(n, 4), rand_buf(2 * (size_t)C, 23, 0.5f),
               xcalloc(2 * (size_t)C, 4), rand_buf(2 * (size_t)C, 24, 0.3f),
               xcalloc(2 * (size_t)C, 4)};
  float *x = h.x;
  for (size_t i = 0; i < n; i++) x[i] = 50.0f + 2.0f * x[i];
  for (int k = 0; k < C; k++) {
    h.gb[k] += 1.0f;                        // gamma around 1, beta around 0
    h.run[C + k] = 0.5f + fabsf(h.run[C + k]); // a variance
  }
  if (prec == PREC_BF16) {
    bf16_round(h.x, n);
    bf16_round(h.dy, n);
  }
  return h;
}

// The sum over the ranks of a world of one (--sync-bn on one GPU): the sums stay as they are,
// on either backend, but the statistics take the synchronised path (sums and count in double).
static void one_rank_sum(void *ctx, double *buf, size_t count) {}
static const rank_sum one_rank = {one_rank_sum, NULL};

static void bn_case(pair *p, int N, int H, int C, activation act, const rank_sum *sync) {
  const op_shape s = {N, H, H, C, C};
  const bn_params bp = {1e-5f, 0.1f, sync};
  const size_t n = (size_t)N * H * H * C, C2 = 2 * (size_t)C;
  printf("  bn N %d %dx%d C %d %s%s\n", N, H, H, C, act == ACT_RELU ? "relu" : "none",
         sync ? " sync" : "");
  bn_bufs h = bn_host(n, C, p->prec);
  backend *g = p->gpu;
  const size_t ab = g->act_bytes;
  bn_bufs d = {up_act(p, h.x, n), g->ops->alloc(g, n * ab), g->ops->alloc(g, n * ab),
               up_act(p, h.dy, n), g->ops->alloc(g, n * ab), g->ops->alloc(g, n * ab),
               up_f32(p, h.gb, C2), g->ops->alloc(g, C2 * 4), up_f32(p, h.run, C2),
               g->ops->alloc(g, C2 * 4)};
  bn_step(p->cpu, &h, s, bp, act);
  bn_step(g, &d, s, bp, act);
  bn_compare(p, &h, &d, n, C);
  bn_contract(p, &d, s, bp, act);
  void *dv[] = {d.x, d.y, d.ye, d.dy, d.dya, d.dx, d.gb, d.save, d.run, d.grads};
  void *hv[] = {h.x, h.y, h.ye, h.dy, h.dya, h.dx, h.gb, h.save, h.run, h.grads};
  for (int i = 0; i < 10; i++) {
    g->ops->release(g, dv[i]);
    free(hv[i]);
  }
}

// Shapes: the scalar column-sum path (C = 3, 10) and the vector one (C % 4 == 0), several row
// chunks (N * H * W = 2048), the smallest training batch (N * H * W = 2).
TEST(cuda_gpu_bn) {
  for (int i = 0; i < 3; i++) {
    pair p;
    if (!pair_open(&p, all_precs[i])) return;
    bn_case(&p, 2, 4, 8, ACT_RELU, NULL);
    bn_case(&p, 3, 3, 3, ACT_NONE, NULL);
    bn_case(&p, 2, 4, 10, ACT_RELU, NULL);
    bn_case(&p, 8, 16, 16, ACT_RELU, NULL);
    bn_case(&p, 4, 8, 64, ACT_NONE, NULL);
    bn_case(&p, 2, 1, 5, ACT_NONE, NULL);
    bn_case(&p, 8, 16, 16, ACT_RELU, &one_rank); // --sync-bn's path
    bn_case(&p, 3, 3, 3, ACT_NONE, &one_rank);
    pair_close(&p);
  }
}

// ---- an invalid label, reported by the GPU ------------------------------------------------------
// The CUDA cross-entropy records a label outside [0, classes) and the host FATALs with it once
// the kernel has run (loss.cu): at the next download or sync, cross-entropy or replay, or when
// a graph is freed. A FATAL ends the process, so each case runs in a child, and the child must be a fresh
// process: CUDA cannot be used in a child forked after its parent initialised CUDA (this process
// has: the device count, the GPU tests before). The child therefore execs this binary again on
// the fixture cuda_gpu_xent_fixture, the case in VGG_XENT_CHILD ("eager|graph fp32|bf16").

static void xent_child_exec(void *mode) {
  setenv("VGG_XENT_CHILD", (const char *)mode, 1);
  execl("/proc/self/exe", "test_unit", "cuda_gpu_xent_fixture", (char *)NULL);
  perror("execl /proc/self/exe");
  _exit(127);
}

TEST_FIXTURE(cuda_gpu_xent_fixture) {
  const char *mode = getenv("VGG_XENT_CHILD");
  REQUIRE(mode != NULL);
  char kind[16], name[16];
  REQUIRE(sscanf(mode, "%15s %15s", kind, name) == 2);
  const precision_kind prec = strcmp(name, "bf16") == 0 ? PREC_BF16 : PREC_FP32;
  enum { N = 4, L = 10 };
  pair p = {NULL, backend_cuda_create(0, prec), prec};
  backend *g = p.gpu;
  // Samples 1 (label 12) and 3 (label -1) are invalid: the first of them is the one reported.
  int32_t good[N] = {1, 9, 0, 5}, bad[N] = {1, 12, 0, -1};
  float *lg = rand_buf(N * L, 8, 2.0f), fill[N * L];
  for (int i = 0; i < N * L; i++) fill[i] = 7.0f; // no gradient is this large
  void *d_lg = up_act(&p, lg, N * L), *d_dl = up_act(&p, fill, N * L);
  int32_t *d_good = up_f32(&p, (const float *)(const void *)good, N);
  int32_t *d_bad = up_f32(&p, (const float *)(const void *)bad, N);
  double *d_st = g->ops->alloc(g, 2 * sizeof(double)), st[2];
  if (strcmp(kind, "eager") == 0) {
    g->ops->xent(g, d_dl, d_st, d_lg, d_bad, N, L, 0.25f);
    fprintf(stderr, "child: launched\n");
    g->ops->download(g, st, d_st, sizeof(st)); // synchronises, then reports
  } else {
    g->ops->xent(g, d_dl, d_st, d_lg, d_good, N, L, 0.25f); // eager and valid: nothing to report
    g->ops->sync(g);
    g->ops->capture_begin(g);
    g->ops->xent(g, d_dl, d_st, d_lg, d_bad, N, L, 0.25f);
    void *graph = g->ops->capture_end(g);
    step_vars v = {NULL, 0, 0, 0, {1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1, 0}};
    fprintf(stderr, "child: captured\n");
    g->ops->replay(g, graph, &v);
    g->ops->graph_free(g, graph); // synchronises, then reports
  }
  fprintf(stderr, "child: no error reported\n");
  free(lg);
}

TEST(cuda_gpu_xent_invalid_label) {
  if (backend_cuda_device_count() <= 0) {
    test_skip("no CUDA device: runs in scripts/gpu_check.sh");
    return;
  }
  const char *modes[4] = {"eager fp32", "eager bf16", "graph fp32", "graph bf16"};
  for (int m = 0; m < 4; m++) {
    char err[4096];
    int status = test_in_child(xent_child_exec, (void *)modes[m], err, sizeof(err));
    int ok = status != 0 && strstr(err, "xent: label 12 of sample 1 outside [0, 10)") != NULL &&
             strstr(err, "child: no error reported") == NULL;
    if (modes[m][0] == 'e')
      ok &= strstr(err, "child: launched") != NULL;
    else
      ok &= strstr(err, "child: captured") != NULL;
    if (!ok) test_fail(__FILE__, __LINE__, "%s: exit status %d, stderr:\n%s", modes[m], status, err);
  }
}

// Adam: bit-identical to the CPU backend over 3 steps queued back to back (each kernel reads
// its own step's coefficients: the eager staging of the step variables, cuda_common.h).
static void adam_case(pair *p) {
  enum { n = 1000 };
  float *w = rand_buf(n, 9, 1.0f), *g = rand_buf(n, 10, 0.1f), *m = xcalloc(n, 4), *v = xcalloc(n, 4);
  float *dw = up_f32(p, w, n), *dg = up_f32(p, g, n), *dm = up_f32(p, m, n), *dv = up_f32(p, v, n);
  for (int step = 1; step <= 3; step++) {
    adam_params ap = {1e-3f * step, 0.9f, 0.999f, 1e-8f, 1e-2f, step, step == 2};
    p->cpu->ops->adam(p->cpu, w, g, m, v, n, &ap);
    p->gpu->ops->adam(p->gpu, dw, dg, dm, dv, n, &ap);
  }
  float *hw = xmalloc(n * 4);
  p->gpu->ops->download(p->gpu, hw, dw, n * 4);
  expect_close("adam params", PREC_FP32, hw, w, n, 0);
  void *bufs[] = {dw, dg, dm, dv};
  for (int i = 0; i < 4; i++) p->gpu->ops->release(p->gpu, bufs[i]);
  free(w); free(g); free(m); free(v); free(hw);
}

// Batch prep: bit-identical, with flips and a resize, for two epochs queued back to back (each
// kernel reads its own epoch, the eager staging again) into buffers of their own.
static void prep_case(pair *p, const uint8_t *d_img, const uint8_t *d_lab, const uint8_t *img,
                      const uint8_t *lab, int size) {
  backend *b = p->gpu;
  const int32_t ids[4] = {4, 0, 2, 3};
  const size_t nx = (size_t)4 * size * size * 3;
  float *x = xmalloc(nx * 4), *hx = xmalloc(nx * 4);
  void *d_x[2];
  int32_t *d_l[2], *d_i[2];
  for (int e = 0; e < 2; e++) {
    prep_params pp = {size, 1, 0.5f, 99, (uint32_t)(3 + e), {0.49f, 0.48f, 0.45f}, {0.25f, 0.24f, 0.26f}};
    d_x[e] = b->ops->alloc(b, nx * 4);
    d_l[e] = b->ops->alloc(b, 16);
    d_i[e] = b->ops->alloc(b, 16);
    b->ops->prep_batch(b, d_x[e], d_l[e], d_i[e], d_img, d_lab, ids, 4, &pp);
  }
  for (int e = 0; e < 2; e++) {
    prep_params pp = {size, 1, 0.5f, 99, (uint32_t)(3 + e), {0.49f, 0.48f, 0.45f}, {0.25f, 0.24f, 0.26f}};
    int32_t labels[4], cids[4], hl[4], hids[4];
    cpu_prep_batch(p->cpu, x, labels, cids, img, lab, ids, 4, &pp);
    b->ops->download(b, hx, d_x[e], nx * 4);
    b->ops->download(b, hl, d_l[e], 16);
    b->ops->download(b, hids, d_i[e], 16);
    char what[64];
    snprintf(what, sizeof(what), "prep x %dx%d epoch %u", size, size, pp.epoch);
    expect_close(what, PREC_FP32, hx, x, nx, 0);
    EXPECT(memcmp(hl, labels, 16) == 0);
    EXPECT(memcmp(hids, cids, 16) == 0);
    b->ops->release(b, d_x[e]);
    b->ops->release(b, d_l[e]);
    b->ops->release(b, d_i[e]);
  }
  free(x);
  free(hx);
}

TEST(cuda_gpu_adam_prep) {
  pair p;
  if (!pair_open(&p, PREC_FP32)) return;
  adam_case(&p);
  uint8_t *img = xmalloc(5 * 3072), lab[5] = {3, 1, 4, 1, 5};
  for (int i = 0; i < 5 * 3072; i++) img[i] = (uint8_t)rng_bits(3, 3, 0, 0, (uint32_t)i);
  uint8_t *d_img = p.gpu->ops->alloc(p.gpu, 5 * 3072), *d_lab = p.gpu->ops->alloc(p.gpu, 5);
  p.gpu->ops->upload(p.gpu, d_img, img, 5 * 3072);
  p.gpu->ops->upload(p.gpu, d_lab, lab, 5);
  for (int size = 32; size <= 48; size += 16) prep_case(&p, d_img, d_lab, img, lab, size);
  p.gpu->ops->release(p.gpu, d_img);
  p.gpu->ops->release(p.gpu, d_lab);
  free(img);
  pair_close(&p);
}

// --autotune first: two fresh backends (as two processes would) keep the same engines, so two
// runs agree bit for bit (losses, gradients, parameters).
TEST(cuda_gpu_autotune_first_repeats) {
  if (backend_cuda_device_count() <= 0) {
    test_skip("no CUDA device: runs in scripts/gpu_check.sh");
    return;
  }
  const precision_kind precs[2] = {PREC_FP32, PREC_BF16};
  for (int i = 0; i < 2; i++) {
    const precision_kind prec = precs[i];
    steps_spec s = {.model = "vgg11", .width = 0.125f, .dropout = 0.5f, .lr = 1e-3f,
                    .weight_decay = 1e-4f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                    .size = 32, .n = 8, .steps = 2, .seed = 77, .vary = 1};
    model m;
    model_build(&m, s.model, s.width, s.size, 10, s.dropout, 0);
    steps_result r[2];
    for (int k = 0; k < 2; k++) {
      backend *g = backend_cuda_create(0, prec);
      backend_cuda_set_autotune(g, AUTOTUNE_FIRST);
      steps_run(&r[k], g, &m, &s);
      g->ops->destroy(g);
    }
    printf("    %s: losses %.9g %.9g and %.9g %.9g\n", plan_precision_name(prec), r[0].loss[0],
           r[0].loss[1], r[1].loss[0], r[1].loss[1]);
    EXPECT(memcmp(r[0].loss, r[1].loss, sizeof(double) * s.steps) == 0);
    EXPECT(memcmp(r[0].grads, r[1].grads, m.n_params * sizeof(float)) == 0);
    EXPECT(memcmp(r[0].params, r[1].params, m.n_params * sizeof(float)) == 0);
    steps_free(&r[0]);
    steps_free(&r[1]);
  }
}

// `steps` eager training steps of m (batch n) on b; returns the last step's mean loss. With
// profile, each step is handed to the profiler (the first as the warm-up that builds plans).
static double run_steps(backend *b, const model *m, int n, int steps, int profile) {
  net nt;
  net_init(&nt, m, b, n, (size_t)1 << 30);
  nt.graphs = 0;
  float *params = xmalloc(m->n_params * sizeof(float));
  model_init_params(m, params, INIT_TORCHVISION, 3);
  net_upload_params(&nt, params);
  int images = 2 * n;
  uint8_t *img = xmalloc((size_t)images * 3072), lab[64];
  for (int i = 0; i < images * 3072; i++) img[i] = (uint8_t)rng_bits(5, 9, 0, 0, (uint32_t)i);
  for (int i = 0; i < images; i++) lab[i] = (uint8_t)(i % 10);
  uint8_t *d_img = b->ops->alloc(b, (size_t)images * 3072), *d_lab = b->ops->alloc(b, images);
  b->ops->upload(b, d_img, img, (size_t)images * 3072);
  b->ops->upload(b, d_lab, lab, images);
  prep_params pp = {.size = m->image_size, .augment = 1, .flip_p = 0.5f, .seed = 3,
                    .mean = {0.49f, 0.48f, 0.45f}, .std = {0.25f, 0.24f, 0.26f}};
  int32_t ids[32];
  double loss = 0, correct = 0;
  for (int t = 0; t < steps; t++) {
    for (int i = 0; i < n; i++) ids[i] = (t * n + i) % images;
    train_step ts = {.d_images = d_img, .d_labels = d_lab, .h_ids = ids, .n = n,
                     .grad_scale = 1.0f / n, .pp = &pp, .seed = 3, .step = (uint32_t)t,
                     .adam = {1e-3f, 0.9f, 0.999f, 1e-8f, 1e-4f, t + 1, 0}, .full = 1};
    net_reset_stats(&nt);
    b->ops->sync(b);
    double t0 = now_s();
    net_train_step(&nt, &ts, NULL);
    b->ops->sync(b);
    if (profile) backend_cuda_profile_step(b, (now_s() - t0) * 1e3, t > 0);
    net_read_stats(&nt, &loss, &correct);
  }
  b->ops->release(b, d_lab);
  b->ops->release(b, d_img);
  free(img);
  free(params);
  net_free(&nt);
  return loss / n;
}

// The profiler on a GPU: a table with every part of every layer, conv engines with candidates,
// no capture entries while on, and the same numbers as an unprofiled run.
TEST(cuda_gpu_profile) {
  if (backend_cuda_device_count() <= 0) {
    test_skip("no CUDA device: runs in scripts/gpu_check.sh");
    return;
  }
  model m;
  model_build(&m, "vgg11", 0.125f, 32, 10, 0.5f, 0);
  const int n = 8;
  backend *plain = backend_cuda_create(0, PREC_FP32);
  backend_cuda_set_autotune(plain, AUTOTUNE_FIRST);
  double want = run_steps(plain, &m, n, 3, 0);
  plain->ops->destroy(plain);

  backend *g = backend_cuda_create(0, PREC_FP32);
  backend_cuda_set_autotune(g, AUTOTUNE_FIRST);
  backend_cuda_profile_enable(g);
  EXPECT(g->ops->capture_begin == NULL && g->ops->replay == NULL); // eager only
  double got = run_steps(g, &m, n, 3, 1);
  printf("    loss unprofiled %.9g, profiled %.9g\n", want, got);
  EXPECT(memcmp(&want, &got, sizeof(double)) == 0);
  char *text = NULL;
  size_t len = 0;
  FILE *f = CHECK_PTR(open_memstream(&text, &len));
  backend_cuda_profile_print(g, f);
  fclose(f);
  printf("%s", text);
  // vgg11 width 0.125: first conv 3->8 at 32x32, first FC 64 -> 512. Backwards, every ReLU's
  // backward is an act bwd region of its own (the FC's after the last FC's backward).
  const char *const rows[] = {"2 timed eager steps after 1 warm-up", "prep 8 images 32x32",
                              "conv fwd 32x32 3->8", "conv epilogue 32x32x8 bias+relu",
                              "pool fwd 32x32x8", "fc fwd 64->512 +relu", "dropout fwd 512",
                              "loss 10 classes +grad", "fc bwd", "act bwd relu",
                              "conv bias grad",
                              "conv bwd filter", "conv bwd data", "conv bwd filter 32x32 3->8",
                              "adam", "all-reduce wait", "sum of the regions",
                              "step wall time (host)", "by kind:",
                              "conv plans (autotune first", "conv fwd 32x32 3->8, N 8",
                              "<- kept", "plan building (host, at first use)"};
  EXPECT(in_order(text, rows, (int)(sizeof(rows) / sizeof(rows[0]))));
  EXPECT(strstr(text, "warning") == NULL);
  EXPECT(strstr(text, "left out") == NULL);
  EXPECT(strstr(text, "no engine kept") == NULL);
  free(text);
  g->ops->destroy(g);
}

#else
#include "test.h"

// A build without the CUDA backend (CUDA=0, or no toolkit found) has none of the tests above:
// say so with a skip line instead of letting them vanish from the count.
TEST(cuda_host_tests) {
  test_skip("built without the CUDA backend (CUDA=0 or no toolkit): the CUDA plan, profile and "
            "op tests are not compiled");
}
#endif

// ---- bench_step --profile refuses with one line where it cannot run (any build, no GPU) ------
// bench_step.c is included with its main renamed (as llama2.c's test.c includes run.c), so the
// test runs its real argument handling in a child.
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "backend.h"
#include "test.h"

#define main bench_step_main
#include "tools/bench_step.c"
#undef main

static void bench_child(void *line) {
  char buf[512], *argv[32];
  int argc = 0;
  snprintf(buf, sizeof(buf), "bench_step %s", (const char *)line);
  for (char *t = strtok(buf, " "); t && argc < 31; t = strtok(NULL, " ")) argv[argc++] = t;
  argv[argc] = NULL;
  exit(bench_step_main(argc, argv));
}

TEST(bench_profile_refusals) {
  // Small enough to finish at once should a refusal ever be lost.
  const char *tiny = "--model vgg11 --width 0.0625 --size 32 --batch 2 --steps 1";
  struct {
    const char *args, *needle;
    int needs_no_gpu;
  } cases[] = {
      {"--device cpu --profile", "--profile times CUDA ops with events: it needs --device cuda, not cpu", 0},
      {"--profile --graphs 1", "cannot run with --graphs 1", 0},
      {"--profile --warmup 0", "--profile needs --warmup 1 or more", 0},
      {"--profile --autotune soon", "--autotune: 'soon' is not one of fastest|first", 0},
      {"--profile", "--profile needs a CUDA GPU and none is visible here", 1},
      {"--profile --device cuda --graphs 0", "--profile needs a CUDA GPU and none is visible here", 1},
  };
  int gpus = backend_cuda_device_count();
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    if (cases[i].needs_no_gpu && gpus > 0) {
      printf("    (a CUDA device is present: '%s' not checked)\n", cases[i].args);
      continue;
    }
    char line[512], err[1024];
    snprintf(line, sizeof(line), "%s %s", tiny, cases[i].args);
    int status = test_in_child(bench_child, line, err, sizeof(err));
    if (status != 2) test_fail(__FILE__, __LINE__, "'%s': exit %d, expected 2 (%s)", cases[i].args, status, err);
    if (!strstr(err, cases[i].needle))
      test_fail(__FILE__, __LINE__, "'%s': message '%s' lacks '%s'", cases[i].args, err, cases[i].needle);
    if (strchr(err, '\n') != strrchr(err, '\n'))
      test_fail(__FILE__, __LINE__, "'%s': message is not one line: '%s'", cases[i].args, err);
  }
}
