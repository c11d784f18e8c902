// rowwise.h - how elementwise.cu's row-wise kernels cover a (rows, K) activation tensor: the
// bias + activation epilogue (cuda_bias_act, also act_fwd), the ReLU backward (act_bwd), both
// with (row, column chunk) threads, and the bias-gradient column sums (cuda_bias_grad). Pure
// host logic (plain C, static inline), so that tests/test_cuda_host.c checks it without a GPU;
// elementwise.cu launches what it returns.
//
// Vector width: a thread moves ROW_VEC consecutive channels of one row as one aligned access (a
// float4 in fp32, 8 bytes of bf16) when K is a multiple of ROW_VEC and every tensor starts on a
// ROW_VEC-element boundary: then every row does too (row r starts r * K elements in), and no row
// has a tail. Otherwise the whole tensor takes the scalar path (width 1), the same code with
// single-element accesses. Column chunk c of a row holds channels c * vec .. c * vec + vec - 1.
#ifndef VGG_CUDA_ROWWISE_H
#define VGG_CUDA_ROWWISE_H

#include <stddef.h>
#include <stdint.h>

#define ROW_VEC 4 // elements per vector access

// ROW_VEC when K % ROW_VEC == 0 and a (and b unless NULL), tensors of elem_bytes-byte elements,
// are aligned to ROW_VEC * elem_bytes bytes; else 1.
static inline int row_vec_width(int K, size_t elem_bytes, const void *a, const void *b) {
  const uintptr_t align = (uintptr_t)(ROW_VEC * elem_bytes);
  if (K <= 0 || K % ROW_VEC != 0) return 1;
  if ((uintptr_t)a % align != 0) return 1;
  if (b && (uintptr_t)b % align != 0) return 1;
  return ROW_VEC;
}

// ---- bias + activation, ReLU backward: (row, column chunk) threads ---------------------------
// Blocks of bx * by <= `threads` threads: threadIdx.x walks the column chunks of a row (all of a
// row's chunks when there are at most `threads`), threadIdx.y the rows, so consecutive threads
// touch consecutive memory. gx blocks across the chunks (chunk = blockIdx.x * bx + threadIdx.x;
// threads past the last chunk do nothing), gy across the rows, capped at max_blocks in all and at
// the grid's y limit; the kernel's loop over rows strides by gy * by to cover the rest.
typedef struct row_shape {
  unsigned bx, by, gx, gy;
} row_shape;

// rows >= 1, chunks >= 1, threads >= 1.
static inline row_shape row_shape_plan(size_t rows, unsigned chunks, unsigned threads,
                                       unsigned max_blocks) {
  row_shape s;
  s.bx = chunks < threads ? chunks : threads;
  s.by = threads / s.bx;
  s.gx = (chunks + s.bx - 1) / s.bx;
  size_t want = (rows + s.by - 1) / s.by;
  size_t cap = max_blocks / s.gx;
  if (cap < 1) cap = 1;
  if (cap > 65535) cap = 65535;
  s.gy = (unsigned)(want < cap ? want : cap);
  return s;
}

// ---- column sums (bias gradients): the deterministic two-pass reduction ----------------------
// Pass 1: block (COLSUM_TX, COLSUM_TY) owns COLSUM_TX column chunks (COLSUM_TX * vec channels) of
// one row chunk of `per` rows; thread (tx, ty) sums rows r0 + ty, r0 + ty + COLSUM_TY, ... of its
// channels in order, a fixed tree over ty combines the COLSUM_TY sums, and partial[chunk][k]
// holds the result. Pass 2 adds the chunks of each channel in order.
// Each channel's sum therefore depends only on (rows, chunks, per): they are computed from the
// vector tile count ceil(K / (COLSUM_TX * ROW_VEC)) whatever the width in use, so the vector path
// adds the same numbers in the same order as the scalar one, and the bits do not change with vec.
// Only gx (the blocks across the channels) depends on vec. (Counting tiles of the vector width
// lets the vector path, the common one, fill the GPU: about 4 blocks per SM.)
#define COLSUM_TX 32
#define COLSUM_TY 8

typedef struct colsum_shape {
  unsigned gx;   // blocks across the channels: ceil((K / vec) / COLSUM_TX)
  size_t chunks; // row chunks (blocks down the rows, <= 65535)
  size_t per;    // rows per chunk; the last chunk may be shorter
} colsum_shape;

// rows >= 1, K >= 1, vec 1 or ROW_VEC (dividing K); sm_count <= 0 when unknown.
static inline colsum_shape colsum_plan(size_t rows, int K, int vec, int sm_count) {
  colsum_shape s;
  const unsigned tiles = (unsigned)((K + COLSUM_TX * ROW_VEC - 1) / (COLSUM_TX * ROW_VEC));
  // Enough chunks to fill the GPU, each at least 64 rows long, at most 65535 (grid y limit).
  size_t want = ((size_t)(sm_count > 0 ? sm_count : 64) * 4 + tiles - 1) / tiles;
  size_t max_chunks = (rows + 63) / 64;
  size_t chunks = want < max_chunks ? want : max_chunks;
  if (chunks < 1) chunks = 1;
  if (chunks > 65535) chunks = 65535;
  s.per = (rows + chunks - 1) / chunks;
  s.chunks = (rows + s.per - 1) / s.per;
  s.gx = (unsigned)((K / vec + COLSUM_TX - 1) / COLSUM_TX);
  return s;
}

#endif
