// rng.h - counter-based randomness (Philox4x32-10), identical on host and device.
//
// Every random decision in training is a pure function of a key and a counter:
//   flip of a sample      = rng_uniform(seed, RNG_STREAM_FLIP,    epoch, sample_id, 0)
//   dropout of one unit   = rng_uniform(seed, RNG_STREAM_DROPOUT + layer, step, sample_id, unit)
//   initial weights       = rng_normal (seed, RNG_STREAM_INIT + tensor, 0, 0, i)
// sample_id is the image's index in the training file set, so no decision depends on the
// rank that processes the sample or on the world size. Nothing here has state.
#ifndef VGG_RNG_H
#define VGG_RNG_H

#include <stdint.h>

#include "hostdev.h"

enum {
  RNG_STREAM_FLIP = 1,
  RNG_STREAM_SPLIT = 2,
  RNG_STREAM_SHUFFLE = 3,
  RNG_STREAM_INIT = 100,     // + tensor index
  RNG_STREAM_DROPOUT = 1000, // + layer index
};

VGG_HD uint32_t rng_mulhilo(uint32_t a, uint32_t b, uint32_t *hi) {
  uint64_t p = (uint64_t)a * b;
  *hi = (uint32_t)(p >> 32);
  return (uint32_t)p;
}

// Philox4x32 with 10 rounds (Salmon et al., SC'11). Key (k0, k1), counter (c0..c3).
VGG_HD void rng_philox(uint32_t out[4], uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1,
                       uint32_t c2, uint32_t c3) {
  for (int r = 0; r < 10; r++) {
    uint32_t hi0, hi1;
    uint32_t lo0 = rng_mulhilo(0xD2511F53u, c0, &hi0);
    uint32_t lo1 = rng_mulhilo(0xCD9E8D57u, c2, &hi1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

// 32 random bits for (seed, stream, a, b, c). The seed is 64-bit; a is typically epoch/step.
VGG_HD uint32_t rng_bits(uint64_t seed, uint32_t stream, uint32_t a, uint32_t b, uint32_t c) {
  uint32_t o[4];
  rng_philox(o, (uint32_t)seed, (uint32_t)(seed >> 32), stream, a, b, c);
  return o[0];
}

// Uniform in [0, 1) with 24 bits of resolution: exactly representable in float.
VGG_HD float rng_uniform(uint64_t seed, uint32_t stream, uint32_t a, uint32_t b, uint32_t c) {
  return (float)(rng_bits(seed, stream, a, b, c) >> 8) * (1.0f / 16777216.0f);
}

// Standard normal via Box-Muller on one Philox block (double on the host for init).
VGG_HD double rng_normal(uint64_t seed, uint32_t stream, uint32_t a, uint32_t b, uint32_t c) {
  uint32_t o[4];
  rng_philox(o, (uint32_t)seed, (uint32_t)(seed >> 32), stream, a, b, c);
  double u1 = ((double)o[0] + 1.0) * (1.0 / 4294967297.0); // (0, 1]
  double u2 = (double)o[1] * (1.0 / 4294967296.0);
#ifdef __CUDACC__
  return sqrt(-2.0 * log(u1)) * cospi(2.0 * u2);
#else
  return __builtin_sqrt(-2.0 * __builtin_log(u1)) * __builtin_cos(6.283185307179586 * u2);
#endif
}

// Dropout keep decision and the scale applied to kept units (inverted dropout, as PyTorch).
VGG_HD int rng_dropout_keep(uint64_t seed, uint32_t layer, uint32_t step, uint32_t sample_id,
                            uint32_t unit, float p) {
  return rng_uniform(seed, RNG_STREAM_DROPOUT + layer, step, sample_id, unit) >= p;
}

#endif
