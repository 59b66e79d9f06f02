// LayerNorm over rows of the fp32 residual stream (Whisper: eps 1e-5), fp32 statistics.
//
//   mean = tree16(lane sums of x) / d
//   var  = tree16(lane sums of (x - mean)^2) / d          (two passes: no cancellation)
//   y    = (x - mean) * (1 / sqrt(var + eps)) * gamma + beta
// Lane l accumulates the elements i with i % 16 == l in index order; tree16 reduces the 16
// lanes pairwise (see wnpu_lane_tree), the order an AIE2 16-lane fp32 reduction uses here.
// `wnpu_layer_norm_bf16` writes bf16 (the input of the next GEMM), `wnpu_layer_norm_f32`
// fp32 (the encoder's final LN, its output). d must be a multiple of 16.
#include "wnpu_common.h"

#define WNPU_LN_EPS 1e-5f

#ifndef __AIENGINE__
static inline void wnpu_ln_stats(const float *x, int d, float *mean_out, float *inv_out) {
  float lanes[WNPU_LANES] = {0};
  for (int i = 0; i < d; i++) lanes[i % WNPU_LANES] += x[i];
  float mean = wnpu_lane_tree(lanes) / (float)d;
  float lanes2[WNPU_LANES] = {0};
  for (int i = 0; i < d; i++) {
    float c = x[i] - mean;
    lanes2[i % WNPU_LANES] += c * c;
  }
  float var = wnpu_lane_tree(lanes2) / (float)d;
  *mean_out = mean;
  *inv_out = 1.0f / sqrtf(var + WNPU_LN_EPS);
}

extern "C" void wnpu_layer_norm_bf16(const float *x, const float *gamma, const float *beta,
                                     wnpu_bf16 *out, int rows, int d) {
  for (int r = 0; r < rows; r++) {
    float mean, inv;
    wnpu_ln_stats(x + r * d, d, &mean, &inv);
    for (int i = 0; i < d; i++)
      out[r * d + i] = wnpu_f32_to_bf16((x[r * d + i] - mean) * inv * gamma[i] + beta[i]);
  }
}

extern "C" void wnpu_layer_norm_f32(const float *x, const float *gamma, const float *beta,
                                    float *out, int rows, int d) {
  for (int r = 0; r < rows; r++) {
    float mean, inv;
    wnpu_ln_stats(x + r * d, d, &mean, &inv);
    for (int i = 0; i < d; i++) out[r * d + i] = (x[r * d + i] - mean) * inv * gamma[i] + beta[i];
  }
}
#else
template <typename OUT>
static inline void wnpu_layer_norm_rows(const float *x, const float *gamma, const float *beta,
                                        OUT *out, int rows, int d) {
  for (int r = 0; r < rows; r++) {
    const float *xr = x + r * d;
    aie::accum<accfloat, 16> acc = aie::zeros<accfloat, 16>();
    for (int i = 0; i < d; i += 16) acc = aie::add(acc, aie::load_v<16>(xr + i));
    float mean = aie::reduce_add(acc.to_vector<float>()) / (float)d;
    aie::accum<accfloat, 16> acc2 = aie::zeros<accfloat, 16>();
    for (int i = 0; i < d; i += 16) {
      auto c = aie::sub(aie::load_v<16>(xr + i), mean);
      acc2 = aie::mac(acc2, c, c);
    }
    float var = aie::reduce_add(acc2.to_vector<float>()) / (float)d;
    float inv = aie::invsqrt(var + WNPU_LN_EPS);
    for (int i = 0; i < d; i += 16) {
      auto c = aie::mul(aie::sub(aie::load_v<16>(xr + i), mean), inv).template to_vector<float>();
      auto y = aie::add(aie::mul(c, aie::load_v<16>(gamma + i)).template to_vector<float>(),
                        aie::load_v<16>(beta + i));
      if constexpr (sizeof(OUT) == 2)
        aie::store_v(out + r * d + i, aie::to_float<bfloat16>(y));
      else
        aie::store_v(out + r * d + i, y);
    }
  }
}
extern "C" void wnpu_layer_norm_bf16(const float *x, const float *gamma, const float *beta,
                                     bfloat16 *out, int rows, int d) {
  wnpu_layer_norm_rows(x, gamma, beta, out, rows, d);
}
extern "C" void wnpu_layer_norm_f32(const float *x, const float *gamma, const float *beta,
                                    float *out, int rows, int d) {
  wnpu_layer_norm_rows(x, gamma, beta, out, rows, d);
}
#endif

// Variants taking gamma and beta as one parameter block (gamma[d] then beta[d]), as the
// design's parameter FIFO delivers them.
extern "C" void wnpu_layer_norm_bf16_packed(const float *x, const float *params, wnpu_bf16 *out,
                                            int rows, int d) {
  wnpu_layer_norm_bf16(x, params, params + d, out, rows, d);
}
extern "C" void wnpu_layer_norm_f32_packed(const float *x, const float *params, float *out,
                                           int rows, int d) {
  wnpu_layer_norm_f32(x, params, params + d, out, rows, d);
}
