// Shared definitions of the whispernpu AIE2 kernels.
//
// Every kernel has two paths: the AIE2 path (`__AIENGINE__`, aie_api vectors, built by
// kernels/build.sh with llvm-aie / peano) and a scalar host path, compiled by the `cc` crate in
// kernels/host for the Rust tests. The host path defines the arithmetic the golden model
// (src/npu/golden.rs) reproduces bit for bit: bf16 operands rounded to nearest even, fp32
// accumulation in the order written here, the exp/erf approximations below. Build the host path
// with -ffp-contract=off so the compiler does not fuse multiply-adds the golden model keeps apart.
#pragma once

#include <stdint.h>

#ifdef __AIENGINE__
#include <aie_api/aie.hpp>
typedef bfloat16 wnpu_bf16;
#else
#include <math.h>
#include <string.h>
// bf16 as its bit pattern on the host.
typedef uint16_t wnpu_bf16;
#endif

// fp32 statistics are reduced over this many lanes (one AIE2 fp32 accumulator register).
#define WNPU_LANES 16

#ifndef __AIENGINE__
static inline float wnpu_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static inline uint32_t wnpu_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
static inline float wnpu_bf16_to_f32(wnpu_bf16 b) { return wnpu_bits_f32((uint32_t)b << 16); }
// Round to nearest even; NaN stays a quiet NaN.
static inline wnpu_bf16 wnpu_f32_to_bf16(float f) {
  uint32_t u = wnpu_f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (wnpu_bf16)((u >> 16) | 0x40);
  return (wnpu_bf16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// e^x for x <= 0: x = n ln2 + r, degree-6 Taylor polynomial in r, 2^n built in the exponent
// bits (n from the 1.5 * 2^23 rounding trick). Relative error below 3e-7.
static inline float wnpu_exp_nonpositive(float x) {
  if (x < -87.0f) x = -87.0f;
  const float shift = 12582912.0f;
  float shifted = x * 1.44269502f + shift;
  float n = shifted - shift;
  float r = x - n * 0.693145752f - n * 1.42860677e-6f;
  float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6.0f + r * (1.0f / 24.0f +
                    r * (1.0f / 120.0f + r * (1.0f / 720.0f))))));
  uint32_t two_n = (wnpu_f32_bits(shifted) + 127u) << 23;
  return wnpu_bits_f32(two_n) * p;
}

// erf(x), Abramowitz & Stegun 7.1.26 (absolute error 1.5e-7 in exact arithmetic).
static inline float wnpu_erf(float x) {
  float a = fabsf(x);
  float t = 1.0f / (1.0f + 0.3275911f * a);
  float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f +
                    t * (-1.453152027f + t * 1.061405429f))));
  float y = 1.0f - poly * wnpu_exp_nonpositive(-a * a);
  return copysignf(y, x);
}

// GELU in its erf form, 0.5 x (1 + erf(x / sqrt 2)).
static inline float wnpu_gelu(float x) {
  return 0.5f * x * (1.0f + wnpu_erf(x * 0.707106781f));
}

// Sum of 16 lane partials as a pairwise tree (lane i + lane i + 8, then + 4, + 2, + 1).
static inline float wnpu_lane_tree(float lanes[WNPU_LANES]) {
  for (int w = WNPU_LANES / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; i++) lanes[i] = lanes[i] + lanes[i + w];
  return lanes[0];
}
#endif
