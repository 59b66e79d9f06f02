// Self-attention of one head for a block of 64 queries over the keys, one block of 32 keys per
// call, with an online (max-subtracted) softmax: fp32 running max m, sum l and output o.
//
//   wnpu_attn_init(m, l, o)                        m = -inf, l = 0, o = 0
//   wnpu_attn_block(q, k, v, scale, valid, m, l, o, s)   per key block:
//       s_ij   = scale * sum_p q_ip k_jp        (fp32, sequential over p; keys j >= valid: -inf)
//       m'_i   = max(m_i, max_j s_ij)
//       c_i    = exp(m_i - m'_i)                (0 while m_i is still -inf)
//       p_ij   = bf16(exp(s_ij - m'_i))         (0 for masked keys; bf16: the P·V MAC operand)
//       l_i    = l_i * c_i + sum_j p_ij         (sequential over j)
//       o_ic   = o_ic * c_i + sum_j p_ij v_jc   (sequential over j)
//   wnpu_attn_finish(l, o, out)                    out = bf16(o / l)
// q: [64][64] bf16 (query rows of one head), k, v: [32][64] bf16 (key rows), s: [64][32] fp32
// scratch. The last key block of a 1500-position window has valid = 28 (1500 = 46 * 32 + 28);
// its padding rows must hold finite values (the design zeroes the scratch BO once).
#include "wnpu_common.h"

#define WNPU_QB 64
#define WNPU_KB 32
#define WNPU_DH 64

#ifndef __AIENGINE__
extern "C" {

void wnpu_attn_init(float *m, float *l, float *o) {
  for (int i = 0; i < WNPU_QB; i++) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
  }
  for (int i = 0; i < WNPU_QB * WNPU_DH; i++) o[i] = 0.0f;
}

void wnpu_attn_block(const wnpu_bf16 *q, const wnpu_bf16 *k, const wnpu_bf16 *v, float scale,
                     int valid, float *m, float *l, float *o, float *s) {
  for (int i = 0; i < WNPU_QB; i++) {
    float *si = s + i * WNPU_KB;
    float block_max = -INFINITY;
    for (int j = 0; j < WNPU_KB; j++) {
      float acc = 0.0f;
      for (int p = 0; p < WNPU_DH; p++)
        acc += wnpu_bf16_to_f32(q[i * WNPU_DH + p]) * wnpu_bf16_to_f32(k[j * WNPU_DH + p]);
      si[j] = j < valid ? acc * scale : -INFINITY;
      if (si[j] > block_max) block_max = si[j];
    }
    float m_new = m[i] > block_max ? m[i] : block_max;
    if (m_new == -INFINITY) continue;  // no valid key yet
    float corr = m[i] == -INFINITY ? 0.0f : wnpu_exp_nonpositive(m[i] - m_new);
    float sum = 0.0f;
    for (int j = 0; j < WNPU_KB; j++) {
      float p = j < valid ? wnpu_bf16_to_f32(wnpu_f32_to_bf16(wnpu_exp_nonpositive(si[j] - m_new)))
                          : 0.0f;
      si[j] = p;
      sum += p;
    }
    l[i] = l[i] * corr + sum;
    float *oi = o + i * WNPU_DH;
    for (int c = 0; c < WNPU_DH; c++) oi[c] = oi[c] * corr;
    for (int j = 0; j < WNPU_KB; j++)
      for (int c = 0; c < WNPU_DH; c++) oi[c] += si[j] * wnpu_bf16_to_f32(v[j * WNPU_DH + c]);
    m[i] = m_new;
  }
}

void wnpu_attn_finish(const float *l, const float *o, wnpu_bf16 *out) {
  for (int i = 0; i < WNPU_QB; i++)
    for (int c = 0; c < WNPU_DH; c++)
      out[i * WNPU_DH + c] = wnpu_f32_to_bf16(o[i * WNPU_DH + c] / l[i]);
}

}  // extern "C"
#else
// AIE2 path: scores and P·V through the 4x8x4 bf16 MAC, exp through aie::exp2 on
// (s - m) * log2(e); the running statistics stay fp32 as on the host.
extern "C" {
void wnpu_attn_init(float *m, float *l, float *o) {
  for (int i = 0; i < WNPU_QB; i += 16) {
    aie::store_v(m + i, aie::broadcast<float, 16>(-INFINITY));
    aie::store_v(l + i, aie::zeros<float, 16>());
  }
  for (int i = 0; i < WNPU_QB * WNPU_DH; i += 16) aie::store_v(o + i, aie::zeros<float, 16>());
}
void wnpu_attn_block(const bfloat16 *q, const bfloat16 *k, const bfloat16 *v, float scale,
                     int valid, float *m, float *l, float *o, float *s) {
  for (int i = 0; i < WNPU_QB; i++) {
    float *si = s + i * WNPU_KB;
    for (int j = 0; j < WNPU_KB; j++) {
      aie::accum<accfloat, 16> acc = aie::zeros<accfloat, 16>();
      for (int p = 0; p < WNPU_DH; p += 16)
        acc = aie::mac(acc, aie::load_v<16>(q + i * WNPU_DH + p), aie::load_v<16>(k + j * WNPU_DH + p));
      si[j] = j < valid ? aie::reduce_add(acc.to_vector<float>()) * scale : -INFINITY;
    }
    float block_max = aie::reduce_max(aie::load_v<WNPU_KB>(si));
    float m_new = m[i] > block_max ? m[i] : block_max;
    if (m_new == -INFINITY) continue;
    float corr = m[i] == -INFINITY ? 0.0f : aie::exp2<float>(aie::broadcast<float, 16>((m[i] - m_new) * 1.44269502f))[0];
    auto sv = aie::load_v<WNPU_KB>(si);
    auto e = aie::exp2<float>(aie::mul(aie::sub(sv, m_new), 1.44269502f).template to_vector<float>());
    auto pb = aie::to_float<bfloat16>(e);
    float sum = 0.0f;
    for (int j = 0; j < WNPU_KB; j++) {
      float p = j < valid ? (float)pb[j] : 0.0f;
      si[j] = p;
      sum += p;
    }
    l[i] = l[i] * corr + sum;
    for (int c = 0; c < WNPU_DH; c += 16) {
      aie::accum<accfloat, 16> acc(aie::mul(aie::load_v<16>(o + i * WNPU_DH + c), corr));
      for (int j = 0; j < WNPU_KB; j++)
        acc = aie::mac(acc, aie::load_v<16>(v + j * WNPU_DH + c), (bfloat16)si[j]);
      aie::store_v(o + i * WNPU_DH + c, acc.to_vector<float>());
    }
    m[i] = m_new;
  }
}
void wnpu_attn_finish(const float *l, const float *o, bfloat16 *out) {
  for (int i = 0; i < WNPU_QB; i++) {
    float inv = aie::inv(l[i]);
    for (int c = 0; c < WNPU_DH; c += 16)
      aie::store_v(out + i * WNPU_DH + c,
                   aie::to_float<bfloat16>(aie::mul(aie::load_v<16>(o + i * WNPU_DH + c), inv).template to_vector<float>()));
  }
}
}  // extern "C"
#endif

// Variants keeping the running state in one local buffer (the design's per-core scratch):
// o[QB][DH], then s[QB][KB], then m[QB], then l[QB], all fp32.
extern "C" {
static inline float *wnpu_local_o(float *st) { return st; }
static inline float *wnpu_local_s(float *st) { return st + WNPU_QB * WNPU_DH; }
static inline float *wnpu_local_m(float *st) { return st + WNPU_QB * WNPU_DH + WNPU_QB * WNPU_KB; }
static inline float *wnpu_local_l(float *st) { return wnpu_local_m(st) + WNPU_QB; }

void wnpu_attn_init_local(float *st) {
  wnpu_attn_init(wnpu_local_m(st), wnpu_local_l(st), wnpu_local_o(st));
}
void wnpu_attn_block_local(const wnpu_bf16 *q, const wnpu_bf16 *k, const wnpu_bf16 *v, float scale,
                           int valid, float *st) {
  wnpu_attn_block(q, k, v, scale, valid, wnpu_local_m(st), wnpu_local_l(st), wnpu_local_o(st),
                  wnpu_local_s(st));
}
void wnpu_attn_finish_local(float *st, wnpu_bf16 *out) {
  wnpu_attn_finish(wnpu_local_l(st), wnpu_local_o(st), out);
}
}  // extern "C"
