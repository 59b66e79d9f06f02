//! Rust mirrors of the host paths of the AIE2 kernels in `kernels/*.cc`: the same operations in
//! the same order, so the results are identical bit for bit (the tests compare them with the C++
//! kernels compiled for the host). bf16 values are `u16` bit patterns; conversions to f32 are
//! exact, so where a mirror converts a whole tile up front instead of element by element the
//! values (and results) are the same.
//!
//! Literals are spelled as in `kernels/wnpu_common.h`, so both languages round them to the same
//! f32 values.
#![allow(clippy::excessive_precision)]

use super::tiling::{DH, KB, QB, TM, TN};

/// f32 → bf16 bits, round to nearest even; NaN stays a quiet NaN (`wnpu_f32_to_bf16`).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// bf16 bits → f32 (exact).
#[inline(always)]
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `wnpu_exp_nonpositive`: e^x for x ≤ 0.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    let x = if x < -87.0 { -87.0 } else { x };
    const SHIFT: f32 = 12_582_912.0;
    let shifted = x * 1.442_695_02 + SHIFT;
    let n = shifted - SHIFT;
    let r = x - n * 0.693_145_752 - n * 1.428_606_77e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(shifted.to_bits().wrapping_add(127) << 23) * p
}

/// `wnpu_erf` (A&S 7.1.26).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let y = 1.0 - poly * exp_nonpositive(-a * a);
    y.copysign(x)
}

/// `wnpu_gelu`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `wnpu_lane_tree`: pairwise sum of 16 lane partials.
#[inline(always)]
fn lane_tree(mut lanes: [f32; 16]) -> f32 {
    let mut w = 8;
    while w >= 1 {
        for i in 0..w {
            lanes[i] += lanes[i + w];
        }
        w /= 2;
    }
    lanes[0]
}

/// `wnpu_ln_stats`: (mean, 1 / sqrt(var + eps)) of one row.
#[inline]
fn ln_stats(x: &[f32]) -> (f32, f32) {
    let d = x.len();
    let mut lanes = [0.0f32; 16];
    for (i, &v) in x.iter().enumerate() {
        lanes[i % 16] += v;
    }
    let mean = lane_tree(lanes) / d as f32;
    let mut lanes = [0.0f32; 16];
    for (i, &v) in x.iter().enumerate() {
        let c = v - mean;
        lanes[i % 16] += c * c;
    }
    let var = lane_tree(lanes) / d as f32;
    (mean, 1.0 / (var + 1e-5).sqrt())
}

/// `wnpu_layer_norm_bf16` over the rows of `x` (width `gamma.len()`).
pub fn layer_norm_bf16(x: &[f32], gamma: &[f32], beta: &[f32], out: &mut [u16]) {
    let d = gamma.len();
    for (xr, yr) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let (mean, inv) = ln_stats(xr);
        for i in 0..d {
            yr[i] = to_bf16((xr[i] - mean) * inv * gamma[i] + beta[i]);
        }
    }
}

/// `wnpu_layer_norm_f32` over the rows of `x`.
pub fn layer_norm_f32(x: &[f32], gamma: &[f32], beta: &[f32], out: &mut [f32]) {
    let d = gamma.len();
    for (xr, yr) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let (mean, inv) = ln_stats(xr);
        for i in 0..d {
            yr[i] = (xr[i] - mean) * inv * gamma[i] + beta[i];
        }
    }
}

/// `wnpu_mm_32xKx64` on operands already widened to f32: `c[TM][TN] += a[TM][k] · b[k][TN]`,
/// each `c[i][j]` summed sequentially over `k` (products of bf16 values are exact in f32).
#[inline]
pub fn mm_f32(k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    let (a, b, c) = (&a[..TM * k], &b[..k * TN], &mut c[..TM * TN]);
    for i in 0..TM {
        let ci = &mut c[i * TN..(i + 1) * TN];
        for kk in 0..k {
            let av = a[i * k + kk];
            for (cv, &bv) in ci.iter_mut().zip(&b[kk * TN..(kk + 1) * TN]) {
                *cv += av * bv;
            }
        }
    }
}

/// `wnpu_mm_32xKx64` on bf16 operands.
pub fn mm(k: usize, a: &[u16], b: &[u16], c: &mut [f32]) {
    let af: Vec<f32> = a[..TM * k].iter().map(|&v| from_bf16(v)).collect();
    let bf: Vec<f32> = b[..k * TN].iter().map(|&v| from_bf16(v)).collect();
    mm_f32(k, &af, &bf, c);
}

/// `wnpu_bias_bf16`.
pub fn bias_bf16(c: &[f32], bias: &[f32], out: &mut [u16]) {
    for i in 0..TM {
        for j in 0..TN {
            out[i * TN + j] = to_bf16(c[i * TN + j] + bias[j]);
        }
    }
}

/// `wnpu_bias_gelu_bf16`.
pub fn bias_gelu_bf16(c: &[f32], bias: &[f32], out: &mut [u16]) {
    for i in 0..TM {
        for j in 0..TN {
            out[i * TN + j] = to_bf16(gelu(c[i * TN + j] + bias[j]));
        }
    }
}

/// `wnpu_bias_gelu_pos_f32`.
pub fn bias_gelu_pos_f32(c: &[f32], bias: &[f32], pos: &[f32], out: &mut [f32]) {
    for i in 0..TM {
        for j in 0..TN {
            out[i * TN + j] = gelu(c[i * TN + j] + bias[j]) + pos[i * TN + j];
        }
    }
}

/// `wnpu_bias_residual_f32`.
pub fn bias_residual_f32(c: &[f32], bias: &[f32], x: &mut [f32]) {
    for i in 0..TM {
        for j in 0..TN {
            x[i * TN + j] += c[i * TN + j] + bias[j];
        }
    }
}

/// The online-softmax attention state of one query block (`wnpu_attn_*`), with the query
/// block widened to f32 once.
pub struct AttnState {
    pub m: [f32; QB],
    pub l: [f32; QB],
    pub o: Vec<f32>,
    q: Vec<f32>,
    kt: Vec<f32>,
    v: Vec<f32>,
    s: Vec<f32>,
}

impl Default for AttnState {
    fn default() -> Self {
        Self::new()
    }
}

impl AttnState {
    pub fn new() -> Self {
        Self {
            m: [f32::NEG_INFINITY; QB],
            l: [0.0; QB],
            o: vec![0.0; QB * DH],
            q: vec![0.0; QB * DH],
            kt: vec![0.0; DH * KB],
            v: vec![0.0; KB * DH],
            s: vec![0.0; KB],
        }
    }

    /// `wnpu_attn_init` with query block `q[QB][DH]` (row stride `ldq`).
    pub fn init(&mut self, q: &[u16], ldq: usize) {
        self.m = [f32::NEG_INFINITY; QB];
        self.l = [0.0; QB];
        self.o.fill(0.0);
        for i in 0..QB {
            for p in 0..DH {
                self.q[i * DH + p] = from_bf16(q[i * ldq + p]);
            }
        }
    }

    /// `wnpu_attn_block` with key and value rows `k[KB][DH]`, `v[KB][DH]` (row stride `ldk`).
    pub fn block(&mut self, k: &[u16], v: &[u16], ldk: usize, scale: f32, valid: usize) {
        for j in 0..KB {
            for p in 0..DH {
                self.kt[p * KB + j] = from_bf16(k[j * ldk + p]);
                self.v[j * DH + p] = from_bf16(v[j * ldk + p]);
            }
        }
        for i in 0..QB {
            // Scores: each s_j summed sequentially over p, as the kernel does.
            let s = &mut self.s[..KB];
            s.fill(0.0);
            let qi = &self.q[i * DH..(i + 1) * DH];
            for (p, &qv) in qi.iter().enumerate() {
                for (sj, &kv) in s.iter_mut().zip(&self.kt[p * KB..(p + 1) * KB]) {
                    *sj += qv * kv;
                }
            }
            let mut block_max = f32::NEG_INFINITY;
            for (j, sj) in s.iter_mut().enumerate() {
                *sj = if j < valid {
                    *sj * scale
                } else {
                    f32::NEG_INFINITY
                };
                if *sj > block_max {
                    block_max = *sj;
                }
            }
            let m_new = if self.m[i] > block_max {
                self.m[i]
            } else {
                block_max
            };
            if m_new == f32::NEG_INFINITY {
                continue;
            }
            let corr = if self.m[i] == f32::NEG_INFINITY {
                0.0
            } else {
                exp_nonpositive(self.m[i] - m_new)
            };
            let mut sum = 0.0f32;
            for (j, sj) in s.iter_mut().enumerate() {
                let p = if j < valid {
                    from_bf16(to_bf16(exp_nonpositive(*sj - m_new)))
                } else {
                    0.0
                };
                *sj = p;
                sum += p;
            }
            self.l[i] = self.l[i] * corr + sum;
            let oi = &mut self.o[i * DH..(i + 1) * DH];
            for c in oi.iter_mut() {
                *c *= corr;
            }
            for (j, &pj) in s.iter().enumerate() {
                for (oc, &vc) in oi.iter_mut().zip(&self.v[j * DH..(j + 1) * DH]) {
                    *oc += pj * vc;
                }
            }
            self.m[i] = m_new;
        }
    }

    /// `wnpu_attn_finish`: `out[i][c] = bf16(o / l)` (row stride `ldo`).
    pub fn finish(&self, out: &mut [u16], ldo: usize) {
        for i in 0..QB {
            for c in 0..DH {
                out[i * ldo + c] = to_bf16(self.o[i * DH + c] / self.l[i]);
            }
        }
    }
}
