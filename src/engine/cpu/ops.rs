//! Numeric kernels of the CPU engine. All write into caller-provided buffers: nothing here
//! allocates.

use gemm::Parallelism;
use rayon::prelude::*;

/// A dense layer `y = x W^T + b`, weights `[out][in]` row-major as stored by CTranslate2.
pub struct Linear {
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub n_in: usize,
    pub n_out: usize,
}

impl Linear {
    /// `out[rows][n_out] = x[rows][n_in] W^T + b`.
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut [f32], par: Parallelism) {
        self.apply(x, rows, out, false, par);
    }

    /// `out += x W^T + b` (residual connection fused into the GEMM's accumulate).
    pub fn forward_accumulate(&self, x: &[f32], rows: usize, out: &mut [f32], par: Parallelism) {
        self.apply(x, rows, out, true, par);
    }

    fn apply(&self, x: &[f32], rows: usize, out: &mut [f32], accumulate: bool, par: Parallelism) {
        debug_assert!(x.len() >= rows * self.n_in && out.len() >= rows * self.n_out);
        let (n_in, n_out) = (self.n_in, self.n_out);
        matmul_bt(
            x,
            rows,
            n_in,
            &self.weight,
            n_out,
            out,
            n_out,
            accumulate,
            par,
        );
        if let Some(bias) = &self.bias {
            add_bias(&mut out[..rows * n_out], bias);
        }
    }
}

/// `c[m][n] (+)= a[m][k] · b[n][k]^T` with `c` row stride `ldc`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bt(
    a: &[f32],
    m: usize,
    k: usize,
    b: &[f32],
    n: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    par: Parallelism,
) {
    assert!(a.len() >= m * k && b.len() >= n * k && (m == 0 || c.len() >= (m - 1) * ldc + n));
    // SAFETY: bounds asserted above; strides describe row-major a, transposed b and c.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// General strided GEMM: `c = alpha * a · b` (+ c if accumulate); all strides in elements.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    c_rs: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    alpha: f32,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rs: usize, cs: usize, rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(c.len() > last(c_rs, 1, m, n));
    assert!(k == 0 || a.len() > last(a_rs, a_cs, m, k));
    assert!(k == 0 || b.len() > last(b_rs, b_cs, k, n));
    // SAFETY: the extents of every operand are asserted above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_rs as isize,
            false,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            0.0,
            alpha,
            false,
            false,
            false,
            par,
        );
    }
}

/// Dot product with 16 independent accumulators, so it vectorises.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

pub fn add_bias(out: &mut [f32], bias: &[f32]) {
    for row in out.chunks_exact_mut(bias.len()) {
        for (y, b) in row.iter_mut().zip(bias) {
            *y += b;
        }
    }
}

/// LayerNorm over rows of width `gamma.len()`, eps 1e-5, statistics in f64... f32 with two
/// passes (mean, then variance of the centred values) for accuracy.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], out: &mut [f32]) {
    let d = gamma.len();
    let rows = x.len() / d;
    let norm_row = |(xr, yr): (&[f32], &mut [f32])| {
        let mean = xr.iter().sum::<f32>() / d as f32;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let inv = 1.0 / (var + 1e-5).sqrt();
        for i in 0..d {
            yr[i] = (xr[i] - mean) * inv * gamma[i] + beta[i];
        }
    };
    if rows >= 64 {
        x.par_chunks_exact(d)
            .zip(out[..rows * d].par_chunks_exact_mut(d))
            .for_each(norm_row);
    } else {
        x.chunks_exact(d)
            .zip(out[..rows * d].chunks_exact_mut(d))
            .for_each(norm_row);
    }
}

/// `erf(x)` with absolute error below 1e-6 in f32 (A&S 7.1.26: 1.5e-7 exactly), branch-free so loops
/// over it vectorise; within f32 rounding of libm's `erff` for GELU's purposes.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_nonpositive(-a * a);
    y.copysign(x)
}

/// GELU in its erf form: `0.5 x (1 + erf(x / sqrt 2))`.
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

pub fn gelu_inplace(x: &mut [f32]) {
    if x.len() >= 1 << 16 {
        x.par_chunks_mut(4096)
            .for_each(|c| c.iter_mut().for_each(|v| *v = gelu(*v)));
    } else {
        x.iter_mut().for_each(|v| *v = gelu(*v));
    }
}

/// `e^x` for x ≤ 0 (softmax arguments), relative error below 3e-7 (a few ulp), branch-free so loops over it
/// vectorise. Range reduction `x = n ln2 + r`, |r| ≤ ln2/2, then a degree-6 Taylor polynomial.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    // Round to nearest by adding and removing 1.5 * 2^23 (no libm call, so loops vectorise).
    const SHIFT: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + SHIFT) - SHIFT;
    // ln 2 split in two parts for an exact reduction.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(((n as i32 + 127) as u32) << 23) * p
}

/// In-place softmax of one row.
#[inline]
pub fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = if *v == f32::NEG_INFINITY {
            0.0
        } else {
            exp_nonpositive(*v - max)
        };
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Log-softmax of `logits` into `out` (f64 accumulation of the normaliser).
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    for (o, &v) in out.iter_mut().zip(logits) {
        *o = v - lse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_nonpositive_is_accurate() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -(i as f32) * 0.0004; // 0 .. -80
            let exact = (x as f64).exp();
            let rel = ((exp_nonpositive(x) as f64 - exact) / exact).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    #[test]
    fn erf_and_gelu_match_libm() {
        let mut worst = 0.0f32;
        for i in -100_000..=100_000 {
            let x = i as f32 * 1e-4; // -10 .. 10
            worst = worst.max((erf(x) - libm::erff(x)).abs());
        }
        assert!(worst < 1e-6, "erf absolute error {worst}");
        for x in [-3.0f32, -0.5, 0.0, 0.7, 2.0] {
            let exact = 0.5 * x * (1.0 + libm::erff(x / 2f32.sqrt()));
            assert!((gelu(x) - exact).abs() < 1e-6, "gelu({x})");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_respects_masks() {
        let mut row = [1.0, f32::NEG_INFINITY, 3.0, -2.0];
        softmax_row(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(row[1], 0.0);
        assert!(row[2] > row[0] && row[0] > row[3]);
    }
}
