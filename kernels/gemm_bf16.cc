// bf16 GEMM microkernel with fused epilogues for the encoder's projections (QKV, out-proj,
// FC1, FC2, and the two convolutions as im2col products).
//
// One call accumulates one tile product `C[M][N] += A[M][K] · B[K][N]`: A row-major (the DMA
// delivers an activation tile), B row-major (the weights BO stores every K×N weight tile
// contiguously, see src/npu/tiling.rs), C fp32 and kept in the core across the K steps of an
// output tile. An epilogue then adds the bias and writes the tile out:
//   - wnpu_bias_bf16:          out = bf16(c + bias)                       (QKV)
//   - wnpu_bias_gelu_bf16:     out = bf16(gelu(c + bias))                 (FC1, conv1)
//   - wnpu_bias_gelu_pos_f32:  out = gelu(c + bias) + pos                 (conv2 + positions)
//   - wnpu_bias_residual_f32:  x   = x + (c + bias)                       (out-proj, FC2)
// Tile sizes are compile-time (M = 32 rows, N = 64 columns, K = 64, or 80 for conv1's taps);
// the AIE2 path uses the 4x8x4 bf16 MAC (aie::mmul<4, 8, 4>).
//
// Host order (what the golden model reproduces): for each row i, for each k, for each column
// j: c[i][j] += a[i][k] * b[k][j]. A bf16 x bf16 product is exact in fp32, so each c[i][j] is
// the fp32 sequential sum over k of exact products.
#include "wnpu_common.h"

#define WNPU_TM 32
#define WNPU_TN 64

#ifdef __AIENGINE__

template <int M, int K, int N>
static inline void wnpu_mm_tile(const bfloat16 *__restrict a, const bfloat16 *__restrict b,
                                float *__restrict c) {
  // Operands are re-tiled to 4x8 (A), 8x4 (B), 4x4 (C) sub-blocks by the DMA (see the design);
  // this loop walks those sub-blocks, two rows and two columns of them per iteration.
  using MMUL = aie::mmul<4, 8, 4, bfloat16, bfloat16, accfloat>;
  constexpr int R = 4, S = 8, T = 4;
  for (int z = 0; z < M / R; z += 2)
    chess_prepare_for_pipelining {
      float *c0 = c + (z * (N / T)) * MMUL::size_C;
      float *c1 = c0 + (N / T) * MMUL::size_C;
      for (int j = 0; j < N / T; j += 2) {
        const bfloat16 *a0 = a + z * (K / S) * MMUL::size_A;
        const bfloat16 *a1 = a0 + (K / S) * MMUL::size_A;
        const bfloat16 *b0 = b + j * MMUL::size_B;
        const bfloat16 *b1 = b0 + MMUL::size_B;
        MMUL m00(aie::load_v<MMUL::size_C>(c0)), m01(aie::load_v<MMUL::size_C>(c0 + MMUL::size_C));
        MMUL m10(aie::load_v<MMUL::size_C>(c1)), m11(aie::load_v<MMUL::size_C>(c1 + MMUL::size_C));
        for (int p = 0; p < K / S; p++) {
          auto va0 = aie::load_v<MMUL::size_A>(a0), va1 = aie::load_v<MMUL::size_A>(a1);
          auto vb0 = aie::load_v<MMUL::size_B>(b0), vb1 = aie::load_v<MMUL::size_B>(b1);
          m00.mac(va0, vb0); m01.mac(va0, vb1); m10.mac(va1, vb0); m11.mac(va1, vb1);
          a0 += MMUL::size_A; a1 += MMUL::size_A;
          b0 += (N / T) * MMUL::size_B; b1 += (N / T) * MMUL::size_B;
        }
        aie::store_v(c0, m00.template to_vector<float>());
        aie::store_v(c0 + MMUL::size_C, m01.template to_vector<float>());
        aie::store_v(c1, m10.template to_vector<float>());
        aie::store_v(c1 + MMUL::size_C, m11.template to_vector<float>());
        c0 += 2 * MMUL::size_C; c1 += 2 * MMUL::size_C;
      }
    }
}

#else

template <int M, int K, int N>
static inline void wnpu_mm_tile(const wnpu_bf16 *a, const wnpu_bf16 *b, float *c) {
  for (int i = 0; i < M; i++)
    for (int k = 0; k < K; k++) {
      float av = wnpu_bf16_to_f32(a[i * K + k]);
      for (int j = 0; j < N; j++) c[i * N + j] += av * wnpu_bf16_to_f32(b[k * N + j]);
    }
}

#endif

extern "C" {

void wnpu_zero_f32(float *c, int n) {
  for (int i = 0; i < n; i++) c[i] = 0.0f;
}

void wnpu_mm_32x64x64(const wnpu_bf16 *a, const wnpu_bf16 *b, float *c) {
  wnpu_mm_tile<WNPU_TM, 64, WNPU_TN>(a, b, c);
}

void wnpu_mm_32x80x64(const wnpu_bf16 *a, const wnpu_bf16 *b, float *c) {
  wnpu_mm_tile<WNPU_TM, 80, WNPU_TN>(a, b, c);
}

#ifndef __AIENGINE__
void wnpu_bias_bf16(const float *c, const float *bias, wnpu_bf16 *out) {
  for (int i = 0; i < WNPU_TM; i++)
    for (int j = 0; j < WNPU_TN; j++)
      out[i * WNPU_TN + j] = wnpu_f32_to_bf16(c[i * WNPU_TN + j] + bias[j]);
}

void wnpu_bias_gelu_bf16(const float *c, const float *bias, wnpu_bf16 *out) {
  for (int i = 0; i < WNPU_TM; i++)
    for (int j = 0; j < WNPU_TN; j++)
      out[i * WNPU_TN + j] = wnpu_f32_to_bf16(wnpu_gelu(c[i * WNPU_TN + j] + bias[j]));
}

void wnpu_bias_gelu_pos_f32(const float *c, const float *bias, const float *pos, float *out) {
  for (int i = 0; i < WNPU_TM; i++)
    for (int j = 0; j < WNPU_TN; j++)
      out[i * WNPU_TN + j] = wnpu_gelu(c[i * WNPU_TN + j] + bias[j]) + pos[i * WNPU_TN + j];
}

void wnpu_bias_residual_f32(const float *c, const float *bias, float *x) {
  for (int i = 0; i < WNPU_TM; i++)
    for (int j = 0; j < WNPU_TN; j++) x[i * WNPU_TN + j] = x[i * WNPU_TN + j] + (c[i * WNPU_TN + j] + bias[j]);
}
#else
// AIE2 epilogues: 16-lane fp32 vectors; GELU through the same erf polynomial with aie::exp2
// standing in for the host's exp (documented difference: the golden model follows the host).
void wnpu_bias_bf16(const float *c, const float *bias, bfloat16 *out) {
  for (int i = 0; i < WNPU_TM; i++)
    for (int j = 0; j < WNPU_TN; j += 16) {
      auto v = aie::add(aie::load_v<16>(c + i * WNPU_TN + j), aie::load_v<16>(bias + j));
      aie::store_v(out + i * WNPU_TN + j, aie::to_float<bfloat16>(v));
    }
}
static inline aie::vector<float, 16> wnpu_gelu_v(aie::vector<float, 16> x) {
  auto a = aie::abs(aie::mul(x, 0.707106781f).template to_vector<float>());
  auto t = aie::inv(aie::add(aie::mul(a, 0.3275911f).template to_vector<float>(), 1.0f));
  auto poly = aie::broadcast<float, 16>(1.061405429f);
  const float coef[4] = {-1.453152027f, 1.421413741f, -0.284496736f, 0.254829592f};
  for (int q = 0; q < 4; q++)
    poly = aie::add(aie::mul(poly, t).template to_vector<float>(), coef[q]);
  poly = aie::mul(poly, t).template to_vector<float>();
  auto e = aie::exp2<float>(aie::mul(aie::mul(a, a).template to_vector<float>(), -1.44269502f).template to_vector<float>());
  auto erf_abs = aie::sub(1.0f, aie::mul(poly, e).template to_vector<float>());
  auto erf = aie::select(erf_abs, aie::neg(erf_abs), aie::lt(x, 0.0f));
  return aie::mul(aie::mul(x, 0.5f).template to_vector<float>(), aie::add(erf, 1.0f)).template to_vector<float>();
}
void wnpu_bias_gelu_bf16(const float *c, const float *bias, bfloat16 *out) {
  for (int i = 0; i < WNPU_TM; i++)
    for (int j = 0; j < WNPU_TN; j += 16) {
      auto v = aie::add(aie::load_v<16>(c + i * WNPU_TN + j), aie::load_v<16>(bias + j));
      aie::store_v(out + i * WNPU_TN + j, aie::to_float<bfloat16>(wnpu_gelu_v(v)));
    }
}
void wnpu_bias_gelu_pos_f32(const float *c, const float *bias, const float *pos, float *out) {
  for (int i = 0; i < WNPU_TM; i++)
    for (int j = 0; j < WNPU_TN; j += 16) {
      auto v = aie::add(aie::load_v<16>(c + i * WNPU_TN + j), aie::load_v<16>(bias + j));
      aie::store_v(out + i * WNPU_TN + j, aie::add(wnpu_gelu_v(v), aie::load_v<16>(pos + i * WNPU_TN + j)));
    }
}
void wnpu_bias_residual_f32(const float *c, const float *bias, float *x) {
  for (int i = 0; i < WNPU_TM; i++)
    for (int j = 0; j < WNPU_TN; j += 16) {
      auto v = aie::add(aie::load_v<16>(c + i * WNPU_TN + j), aie::load_v<16>(bias + j));
      aie::store_v(x + i * WNPU_TN + j, aie::add(aie::load_v<16>(x + i * WNPU_TN + j), v));
    }
}
#endif

// The residual epilogue with separate input and output tiles (the design's object FIFOs: the
// residual arrives in one, the result leaves in another): out = x + (c + bias).
void wnpu_bias_residual_f32_to(const float *c, const float *bias, const float *x, float *out) {
  for (int i = 0; i < WNPU_TM * WNPU_TN; i++) out[i] = x[i];
  wnpu_bias_residual_f32(c, bias, out);
}

}  // extern "C"
