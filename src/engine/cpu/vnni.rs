//! Int8 GEMM on AVX512-VNNI (`vpdpbusd`) for the encoder's linear layers.
//!
//! `C = act(A · Wᵀ + bias) (+ C)` with `W` (`[n][k]`, a layer's weights) quantised once to int8
//! per output column (`w ≈ sw[j] · qw`, symmetric, `|qw| ≤ 127`) and `A` quantised per row on
//! the fly (`a ≈ sa[i] · qa`, `|qa| ≤ 127`), as CTranslate2's int8 does. `vpdpbusd` multiplies
//! unsigned by signed bytes, so `A` is stored as `qa + 128` and `128 · Σ_p qw[j][p]` is taken
//! off each column's integer sum: the products are exact integer sums, and
//! `C[i][j] = sa[i] · sw[j] · Σ_p qa[i][p] qw[j][p]` up to the f32 rounding of the scaling.
//! One `vpdpbusd` does 64 multiply-adds, twice a `vdpbf16ps`: on AMD Zen 4 one thread reaches
//! about 460 G int8 multiply-adds ×2 per second against 230 GFLOP/s in bf16.
//!
//! Layout of the packed weights: panels of 32 columns; a panel holds `steps = ⌈k / 64⌉` steps
//! of two 1 KiB halves (columns 0–15 and 16–31), each 16 rows of 64 bytes, row `r` holding the
//! depths `64s + 4r .. 64s + 4r + 4` of its 16 columns (4 bytes per column), i.e. exactly the
//! vector `vpdpbusd` multiplies with a broadcast dword of one row of `A`. `A` is quantised into
//! row-major rows of `64 · steps` bytes (padding holds 128, i.e. zero).

use std::cell::RefCell;

use gemm::Parallelism;

use super::amx::{self, Activation};
use super::math::simd_dispatch;
use super::sgemm::{Epilogue, split_tasks, threads_of, with_scratch};

/// Columns per panel.
const NB: usize = 32;
/// Depths per step (16 dwords of 4 bytes).
const KS: usize = 64;
/// Bytes of one step of a panel: two halves of 16 rows × 64 bytes.
const STEP_BYTES: usize = 2 * 16 * 64;
/// Rows of `A` quantised at once per task (at most 512 KiB of int8 rows for `k = 2048`).
const MC: usize = 256;
/// Rows of one microkernel call (16 accumulators of 16 columns).
const G: usize = 8;

/// The CPU runs this module's kernels: AVX-512F/BW and AVX512-VNNI.
pub fn usable() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
            && std::env::var_os("WHISPERNPU_NO_VNNI").is_none()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The `vpdpbusd` peak of one thread in G int8 ops/s (a loop of 12 independent `vpdpbusd`,
/// 64 multiply-adds = 128 ops each, for about `duration`), the yardstick of [`gemm()`]; `None`
/// without AVX512-VNNI.
pub fn dpbusd_peak_gops(duration: std::time::Duration) -> Option<f64> {
    if !usable() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f,avx512vnni")]
        fn burst(iters: u64) -> i32 {
            let mut acc = [_mm512_set1_epi32(1); 12];
            let a = _mm512_set1_epi8(std::hint::black_box(3));
            let b = _mm512_set1_epi8(std::hint::black_box(-2));
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = _mm512_dpbusd_epi32(*x, a, b);
                }
            }
            acc.iter().map(|&x| _mm512_reduce_add_epi32(x)).sum()
        }
        let iters = 1 << 18;
        // SAFETY: AVX-512F and AVX512-VNNI checked by `usable`.
        Some(super::sgemm::peak_rate(duration, || {
            (iters * 12 * 128, unsafe { burst(iters) } as f32)
        }))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = duration;
        None
    }
}

/// A layer's weights `[n][k]` quantised to int8 per column and packed for [`gemm()`].
pub struct PackedI8 {
    n: usize,
    k: usize,
    steps: usize,
    data: Vec<i8>,
    /// Per column (padded to whole panels with 0): `w ≈ scale · q`.
    scale: Vec<f32>,
    /// Per column: `128 · Σ_p q[j][p]`, the offset of the unsigned `A`.
    offset: Vec<i32>,
}

impl PackedI8 {
    /// Quantises and packs row-major weights `w[n][k]` (row `j` = output column `j`).
    pub fn from_rows(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight shape");
        let steps = k.div_ceil(KS);
        let panels = n.div_ceil(NB);
        let mut data = vec![0i8; panels * steps * STEP_BYTES];
        let mut scale = vec![0.0f32; panels * NB];
        let mut offset = vec![0i32; panels * NB];
        for (j, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
            let amax = row.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
            let s = amax / 127.0;
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            scale[j] = s;
            let (jp, h, c) = (j / NB, (j % NB) / 16, j % 16);
            let mut sum = 0i32;
            for (p, &x) in row.iter().enumerate() {
                let q = (x * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
                sum += q as i32;
                let (s_, r, t) = (p / KS, (p % KS) / 4, p % 4);
                data[((jp * steps + s_) * 2 + h) * 1024 + r * 64 + c * 4 + t] = q;
            }
            offset[j] = 128 * sum;
        }
        Self {
            n,
            k,
            steps,
            data,
            scale,
            offset,
        }
    }
}

thread_local! {
    /// Quantised rows of `A` (`qa + 128`) and their scales, for the tasks this thread runs.
    static A_Q: RefCell<(Vec<u8>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `C[m][n] = act(alpha · A · Wᵀ + bias) (+ C)` for `A` rows of `k` values at stride `lda`, `C`
/// at row stride `ldc`; the int8 products of the module doc. Parallel over rows (or column
/// panels when there are few rows) on the current rayon pool as `par` asks.
///
/// # Panics
/// Without [`usable`], or when the shapes do not fit the slices.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    a: &[f32],
    lda: usize,
    w: &PackedI8,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue<'_>,
    act: Activation,
    par: Parallelism,
) {
    assert!(usable(), "vnni::gemm without AVX512-VNNI");
    let (n, k) = (w.n, w.k);
    assert!(m == 0 || a.len() >= (m - 1) * lda + k, "A shape");
    assert!(m == 0 || c.len() >= (m - 1) * ldc + n, "C shape");
    assert!(ep.bias.is_none_or(|b| b.len() >= n), "bias shape");
    if m == 0 || n == 0 {
        return;
    }
    let job = Job {
        a: a.as_ptr(),
        lda,
        w,
        out: amx::Out::new(c, ldc, ep, act),
    };
    let small = m * n * k < (1 << 20);
    split_tasks(
        m,
        NB,
        n.div_ceil(NB),
        threads_of(par),
        small,
        |rows, panels| job.task(rows, panels),
    );
}

/// One call's operands as raw parts shared by its tasks.
struct Job<'w> {
    a: *const f32,
    lda: usize,
    w: &'w PackedI8,
    out: amx::Out,
}

// SAFETY: tasks write disjoint blocks of C and only read A, W and the bias, which outlive the
// call.
unsafe impl Send for Job<'_> {}
unsafe impl Sync for Job<'_> {}

impl Job<'_> {
    /// Rows `rows` × column panels `panels` of C.
    fn task(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        let kp = self.w.steps * KS;
        with_scratch(&A_Q, Default::default, |(qa, sa)| {
            let mut i0 = rows.start;
            while i0 < rows.end {
                let mc = MC.min(rows.end - i0);
                // Whole groups of G rows; rows past `mc` hold zeros (never stored).
                let mg = mc.next_multiple_of(G);
                qa.resize(mg * kp, 128);
                sa.resize(mg, 0.0);
                for r in 0..mg {
                    let dst = &mut qa[r * kp..(r + 1) * kp];
                    if r < mc {
                        // SAFETY: row i0 + r < m holds k values at a + (i0 + r) * lda.
                        let src = unsafe {
                            std::slice::from_raw_parts(self.a.add((i0 + r) * self.lda), self.w.k)
                        };
                        sa[r] = quantise_row(src, dst);
                    } else {
                        dst.fill(128);
                        sa[r] = 0.0;
                    }
                }
                for jp in panels.clone() {
                    for ib in (0..mc).step_by(NB) {
                        let rows_here = NB.min(mc - ib);
                        // SAFETY: `usable()` was asserted; the block lies inside A's quantised
                        // rows and W's panel; C rows/columns in range, owned by this task.
                        unsafe { self.block(qa, sa, kp, ib, rows_here, i0, jp) };
                    }
                }
                i0 += mc;
            }
        });
    }

    /// The 32 × 32 block of C at rows `i0 + ib ..` (`rows` valid) and panel `jp`.
    ///
    /// # Safety
    /// AVX-512F/BW and AVX512-VNNI; `qa` holds whole groups of `G` rows from `ib` on (`kp`
    /// bytes each), `sa` their scales.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        qa: &[u8],
        sa: &[f32],
        kp: usize,
        ib: usize,
        rows: usize,
        i0: usize,
        jp: usize,
    ) {
        let w = self.w;
        let cols = NB.min(w.n - jp * NB);
        let mut acc = amx::Acc([0.0; amx::MB * amx::MB]);
        let b = w.data[jp * w.steps * STEP_BYTES..].as_ptr();
        let scale = &w.scale[jp * NB..(jp + 1) * NB];
        let offset = &w.offset[jp * NB..(jp + 1) * NB];
        for g in (0..rows).step_by(G) {
            let a = qa[(ib + g) * kp..].as_ptr();
            // SAFETY: rows ib + g .. ib + g + G of `qa` exist (whole groups), the panel holds
            // `steps` steps; the outputs are rows g .. g + G of `acc`.
            unsafe {
                kernel_8x32(
                    a,
                    kp,
                    b,
                    w.steps,
                    &sa[ib + g..ib + g + G],
                    scale,
                    offset,
                    acc.0[g * NB..].as_mut_ptr(),
                )
            };
        }
        // SAFETY: AVX-512F (caller); rows and columns in range (asserted by `gemm`), owned by
        // this task.
        unsafe { self.out.store(&mut acc, i0 + ib, rows, jp, cols) };
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(&self, _: &[u8], _: &[f32], _: usize, _: usize, _: usize, _: usize, _: usize) {
        unreachable!("VNNI on a non-x86_64 target")
    }
}

/// Quantises one row `src` into `dst` (`qa + 128`, the tail past `src` filled with 128) and
/// returns its scale (`a ≈ scale · qa`; 0 for a zero row).
fn quantise_row(src: &[f32], dst: &mut [u8]) -> f32 {
    let (amax, nonfinite) = super::gemv::abs_max(src);
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    quantise_u8(src, inv, &mut dst[..src.len()]);
    dst[src.len()..].fill(128);
    // A NaN or an infinity makes the row's every product NaN, as in f32.
    if nonfinite { f32::NAN } else { amax / 127.0 }
}

simd_dispatch! {
    /// `dst[i] = round(src[i] · inv) + 128` (nearest, ties to even; clamped to ±127 first): an
    /// int8 quantisation stored unsigned, as `vpdpbusd` reads it.
    fn quantise_u8(src: &[f32], inv: f32, dst: &mut [u8]) => quantise_u8_body
}

#[inline(always)]
fn quantise_u8_body(src: &[f32], inv: f32, dst: &mut [u8]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = ((x * inv).round_ties_even().clamp(-127.0, 127.0) as i32 + 128) as u8;
    }
}

/// `C[g][c] = sa[g] · scale[c] · (Σ_p A[g][p] · B[p][c] − offset[c])` for `G` rows × 32
/// columns into `out` (row stride 32 floats): per step, 16 dword rows × 2 halves of `B` feed
/// `2G` accumulators.
///
/// # Safety
/// AVX-512F/BW, AVX512-VNNI; `a` holds `G` rows of `kp = 64 · steps` bytes at stride `lda`;
/// `b` a panel of `steps` steps; `scale`, `offset` 32 values; `out` 32 × `G` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_8x32(
    a: *const u8,
    lda: usize,
    b: *const i8,
    steps: usize,
    sa: &[f32],
    scale: &[f32],
    offset: &[i32],
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): as the contract says.
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); 2]; G];
        for s in 0..steps {
            let bt = b.add(s * STEP_BYTES);
            for r in 0..16 {
                let b0 = _mm512_loadu_si512(bt.add(r * 64).cast());
                let b1 = _mm512_loadu_si512(bt.add(1024 + r * 64).cast());
                for (i, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_epi32(
                        a.add(i * lda + s * KS + 4 * r)
                            .cast::<i32>()
                            .read_unaligned(),
                    );
                    acc[0] = _mm512_dpbusd_epi32(acc[0], av, b0);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], av, b1);
                }
            }
        }
        let sc = [
            _mm512_loadu_ps(scale.as_ptr()),
            _mm512_loadu_ps(scale.as_ptr().add(16)),
        ];
        let off = [
            _mm512_loadu_si512(offset.as_ptr().cast()),
            _mm512_loadu_si512(offset.as_ptr().add(16).cast()),
        ];
        for (i, acc) in acc.iter().enumerate() {
            let si = _mm512_set1_ps(sa[i]);
            for h in 0..2 {
                let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[h], off[h]));
                _mm512_storeu_ps(
                    out.add(i * NB + 16 * h),
                    _mm512_mul_ps(v, _mm512_mul_ps(si, sc[h])),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The quantised product in f64 from the same integer values the kernel sees.
    fn reference(m: usize, a: &[f32], w: &[f32], n: usize, k: usize) -> Vec<f64> {
        let quant = |row: &[f32]| -> (f64, Vec<i32>) {
            let amax = row.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            let q = row
                .iter()
                .map(|&x| (x * inv).round_ties_even().clamp(-127.0, 127.0) as i32)
                .collect();
            ((amax / 127.0) as f64, q)
        };
        let qa: Vec<_> = a.chunks_exact(k).take(m).map(quant).collect();
        let qw: Vec<_> = w.chunks_exact(k).take(n).map(quant).collect();
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: i64 = qa[i]
                    .1
                    .iter()
                    .zip(&qw[j].1)
                    .map(|(&x, &y)| (x * y) as i64)
                    .sum();
                out[i * n + j] = qa[i].0 * qw[j].0 * dot as f64;
            }
        }
        out
    }

    #[test]
    fn matches_the_quantised_reference_on_odd_shapes() {
        if !usable() {
            crate::test_support::skip("no AVX512-VNNI on this CPU");
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (7, 33, 65),
            (40, 64, 128),
            (300, 96, 200),
            (1500, 64, 512),
        ] {
            let a = fill(m * k, 1 + m as u64);
            let w = fill(n * k, 7 + n as u64);
            let bias = fill(n, 3);
            let packed = PackedI8::from_rows(&w, n, k);
            let want = reference(m, &a, &w, n, k);
            for accumulate in [false, true] {
                for par in [Parallelism::None, Parallelism::Rayon(2)] {
                    let mut c = vec![0.5f32; m * n];
                    let ep = Epilogue {
                        alpha: 1.0,
                        accumulate,
                        bias: Some(&bias),
                    };
                    gemm(m, &a, k, &packed, &mut c, n, ep, Activation::None, par);
                    for (idx, (&got, &r)) in c.iter().zip(&want).enumerate() {
                        let j = idx % n;
                        let exp = r + bias[j] as f64 + if accumulate { 0.5 } else { 0.0 };
                        assert!(
                            (got as f64 - exp).abs() <= 1e-5 * (1.0 + exp.abs()),
                            "{m}x{n}x{k} acc {accumulate} [{idx}]: {got} vs {exp}"
                        );
                    }
                }
            }
            // Within the quantisation error of the f32 product.
            let mut c = vec![0.0f32; m * n];
            let ep = Epilogue {
                alpha: 1.0,
                accumulate: false,
                bias: None,
            };
            gemm(
                m,
                &a,
                k,
                &packed,
                &mut c,
                n,
                ep,
                Activation::None,
                Parallelism::None,
            );
            // Worst case: every value off by half a quantisation step of its row.
            let step = |row: &[f32]| row.iter().fold(0.0f32, |m, &x| m.max(x.abs())) / 127.0;
            for i in 0..m {
                let ai = &a[i * k..(i + 1) * k];
                for j in 0..n {
                    let wj = &w[j * k..(j + 1) * k];
                    let exact: f32 = ai.iter().zip(wj).map(|(x, y)| x * y).sum();
                    let (sa, sw) = (step(ai), step(wj));
                    let tol: f32 = ai
                        .iter()
                        .zip(wj)
                        .map(|(x, y)| x.abs() * sw / 2.0 + y.abs() * sa / 2.0 + sa * sw / 4.0)
                        .sum::<f32>()
                        * 1.01
                        + 1e-5;
                    assert!(
                        (c[i * n + j] - exact).abs() <= tol,
                        "{m}x{n}x{k} [{i}][{j}]: {} vs f32 {exact}",
                        c[i * n + j]
                    );
                }
            }
        }
    }

    #[test]
    fn fused_gelu_is_gelu_of_the_product() {
        if !usable() {
            crate::test_support::skip("no AVX512-VNNI on this CPU");
            return;
        }
        let (m, n, k) = (70, 80, 96);
        let a = fill(m * k, 11);
        let w = fill(n * k, 12);
        let packed = PackedI8::from_rows(&w, n, k);
        let ep = Epilogue {
            alpha: 1.0,
            accumulate: false,
            bias: None,
        };
        let mut plain = vec![0.0f32; m * n];
        gemm(
            m,
            &a,
            k,
            &packed,
            &mut plain,
            n,
            ep,
            Activation::None,
            Parallelism::None,
        );
        let mut fused = vec![0.0f32; m * n];
        gemm(
            m,
            &a,
            k,
            &packed,
            &mut fused,
            n,
            ep,
            Activation::Gelu,
            Parallelism::Rayon(2),
        );
        for (&f, &p) in fused.iter().zip(&plain) {
            let g = super::super::math::gelu(p);
            assert!((f - g).abs() <= 1e-5 * (1.0 + g.abs()), "{f} vs gelu {g}");
        }
    }
}
