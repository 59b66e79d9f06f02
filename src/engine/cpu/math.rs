//! Elementwise math of the CPU engine, shared by the f32 kernels ([`super::ops`]) and the bf16
//! GEMM's fused epilogues ([`super::amx`]): the run-time ISA dispatch macro, `exp` for softmax
//! arguments, `erf` and GELU. A leaf: it imports no other kernel module.

use rayon::prelude::*;

/// Defines `$name(args)` that runs `$body(args)` compiled for the widest vector ISA the CPU has
/// (AVX-512, AVX2 + FMA, else the baseline target). `$body` must be `#[inline(always)]` and
/// written so its loops vectorise (per-lane accumulators, no serial reductions).
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn narrow($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                use $crate::engine::cpu::sgemm::Isa;
                match Isa::detected() {
                    // SAFETY: the CPU has the features (detected at run time).
                    Isa::Avx512 => return unsafe { wide($($arg),*) },
                    Isa::Avx2 => return unsafe { narrow($($arg),*) },
                    Isa::Portable => {}
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

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
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

pub fn gelu_inplace(x: &mut [f32]) {
    if x.len() >= 1 << 16 {
        x.par_chunks_mut(4096).for_each(gelu_slice);
    } else {
        gelu_slice(x);
    }
}

simd_dispatch! {
    fn gelu_slice(x: &mut [f32]) => gelu_slice_body
}

#[inline(always)]
fn gelu_slice_body(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = gelu(*v));
}

/// `e^x` for x ≤ 0 (softmax arguments), relative error below 3e-7 (a few ulp), branch-free so loops over it
/// vectorise. Range reduction `x = n ln2 + r`, |r| ≤ ln2/2, then a degree-6 Taylor polynomial.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    // Round to nearest by adding and removing 1.5 * 2^23 (no libm call, so loops vectorise).
    const SHIFT: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + SHIFT;
    let n = shifted - SHIFT;
    // ln 2 split in two parts for an exact reduction.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n without a float-to-int conversion (which would not vectorise): `shifted`'s low
    // mantissa bits hold n (-126 ≤ n ≤ 0), and shifting by 23 drops every bit above them.
    f32::from_bits(shifted.to_bits().wrapping_add(127) << 23) * p
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
}
