//! Products with reduced-precision weights for the decoder, where few rows (one per beam) meet
//! large weight matrices and the time goes to streaming the weights: stored as f16 (lossless
//! when the model file holds f16, as Whisper checkpoints do) the bytes read per token halve; as
//! int8 with a scale per row (lossy, experimental) they halve again.
//!
//! `out[r][j] (+)= Σ_p h[r][p] · W[j][p] (+ bias[j])` with `W` row-major `[n][k]`, the `Linear`
//! layout. The kernel walks four weight rows at a time along `k`, converting 16 (AVX-512) or 8
//! (AVX2) weights per load to f32 and multiplying them with up to four input rows held
//! in L1; accumulators are reduced once per output. Threads split the output columns.

use gemm::Parallelism;
use half::f16;
use rayon::prelude::*;

use super::sgemm::Isa;

/// A row-major `[n][k]` weight matrix in reduced precision: f16 (lossless for f16 checkpoints)
/// or int8 with one f32 scale per row (symmetric, `w ≈ q · scale`, `|q| ≤ 127`).
pub struct MatLow {
    data: Low,
    n: usize,
    k: usize,
}

enum Low {
    F16(Vec<f16>),
    I8 { q: Vec<i8>, scales: Vec<f32> },
}

impl MatLow {
    /// `w[n][k]` as f16 when every value survives the conversion exactly, else `None`.
    pub fn lossless(w: &[f32], n: usize, k: usize) -> Option<Self> {
        assert_eq!(w.len(), n * k);
        let data: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        data.iter()
            .zip(w)
            .all(|(h, &v)| h.to_f32() == v)
            .then_some(Self {
                data: Low::F16(data),
                n,
                k,
            })
    }

    /// `w[n][k]` quantised to int8 per row (lossy: about 0.4 % of the row's largest weight).
    pub fn int8(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        let mut q = vec![0i8; n * k];
        let mut scales = vec![0.0f32; n];
        for ((row, qrow), scale) in w
            .chunks_exact(k)
            .zip(q.chunks_exact_mut(k))
            .zip(&mut scales)
        {
            let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            *scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            for (d, &v) in qrow.iter_mut().zip(row) {
                *d = (v / *scale).round().clamp(-127.0, 127.0) as i8;
            }
        }
        Self {
            data: Low::I8 { q, scales },
            n,
            k,
        }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// The per-row scales of int8 weights (`w ≈ q · scale`, rounded to nearest: every weight is
    /// within `scale / 2` of the stored one); `None` for f16.
    pub fn int8_scales(&self) -> Option<&[f32]> {
        match &self.data {
            Low::F16(_) => None,
            Low::I8 { scales, .. } => Some(scales),
        }
    }

    /// Whether the weights are int8.
    pub fn is_int8(&self) -> bool {
        matches!(self.data, Low::I8 { .. })
    }

    /// Row `j` as f32 into `out` (dequantised for int8).
    pub fn row_into(&self, j: usize, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        let k = self.k;
        match &self.data {
            Low::F16(d) => d[j * k..(j + 1) * k].convert_to_f32_slice(&mut out[..k]),
            Low::I8 { q, scales } => {
                for (o, &v) in out[..k].iter_mut().zip(&q[j * k..(j + 1) * k]) {
                    *o = v as f32 * scales[j];
                }
            }
        }
    }
}

/// Output columns per task when threads split the work (a multiple of the 4-row step).
const COLS_PER_TASK: usize = 256;
/// Input rows handled together (the weights are re-read from L1 for every group).
const ROW_GROUP: usize = 4;

/// `out[r][j] (+)= h[r][..k] · W[j][..k] (+ bias[j])` for `r < rows`, `j < n`; `h` row stride
/// `k`, `out` row stride `ldo`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_low(
    h: &[f32],
    rows: usize,
    w: &MatLow,
    out: &mut [f32],
    ldo: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
    par: Parallelism,
) {
    matmul_low_cols(h, rows, w, 0..w.n, out, ldo, accumulate, bias, par);
}

/// [`matmul_low`] for the output columns `cols` only (`out[r][j]` for `j` in `cols`; the
/// others untouched). Each output is summed in the same order whatever `cols` is, so a column
/// computed alone equals the same column of the whole product bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn matmul_low_cols(
    h: &[f32],
    rows: usize,
    w: &MatLow,
    cols: std::ops::Range<usize>,
    out: &mut [f32],
    ldo: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
    par: Parallelism,
) {
    let (n, k) = (w.n, w.k);
    assert!(
        cols.start <= cols.end && cols.end <= n,
        "columns out of range"
    );
    if rows == 0 || cols.is_empty() {
        return;
    }
    assert!(h.len() >= rows * k, "h too small");
    assert!(
        ldo >= n && out.len() >= (rows - 1) * ldo + n,
        "out too small"
    );
    if let Some(b) = bias {
        assert!(b.len() >= n, "bias too short");
    }
    let isa = super::sgemm::current_isa();
    let (w, scales) = match &w.data {
        Low::F16(d) => (Weights::F16(d.as_ptr(), kernel_f16(isa)), std::ptr::null()),
        Low::I8 { q, scales } => (Weights::I8(q.as_ptr(), kernel_i8(isa)), scales.as_ptr()),
    };
    let job = Job {
        h: h.as_ptr(),
        rows,
        w,
        scales,
        k,
        out: out.as_mut_ptr(),
        ldo,
        accumulate,
        bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
    };
    let threads = super::sgemm::threads_of(par);
    let (c0, nc) = (cols.start, cols.len());
    if threads <= 1 || nc * k * rows < (1 << 17) {
        job.columns(cols);
    } else {
        let per = COLS_PER_TASK.min(nc.div_ceil(threads).next_multiple_of(4));
        (0..nc.div_ceil(per))
            .into_par_iter()
            .for_each(|t| job.columns(c0 + t * per..c0 + nc.min((t + 1) * per)));
    }
}

/// A `dots` kernel for weights of type `E` (see [`Job::dots`]).
type Dots<E> =
    unsafe fn(*const f32, usize, usize, usize, *const E, usize, usize, &mut [[f32; 4]; 4]);

/// The weights and the kernel for them, chosen once per product.
#[derive(Clone, Copy)]
enum Weights {
    F16(*const f16, Dots<f16>),
    I8(*const i8, Dots<i8>),
}

/// The fastest f16 kernel `isa` (detected or forced, see `sgemm::with_isa`) allows.
fn kernel_f16(isa: Isa) -> Dots<f16> {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 => return dots_avx512,
        Isa::Avx2 if std::arch::is_x86_feature_detected!("f16c") => return dots_avx2,
        _ => {}
    }
    let _ = isa;
    dots_portable::<f16>
}

/// The fastest int8 kernel `isa` allows.
fn kernel_i8(isa: Isa) -> Dots<i8> {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 => return dots_avx512_i8,
        Isa::Avx2 => return dots_avx2_i8,
        Isa::Portable => {}
    }
    let _ = isa;
    dots_portable::<i8>
}

#[derive(Clone, Copy)]
struct Job {
    h: *const f32,
    rows: usize,
    w: Weights,
    /// Per-row scales of int8 weights, else null.
    scales: *const f32,
    k: usize,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
    bias: *const f32,
}

// SAFETY: tasks write disjoint columns of `out` and only read `h`, `w`, `bias`, which outlive
// the call (asserted sizes in `matmul_low`).
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    fn columns(&self, cols: std::ops::Range<usize>) {
        let mut j = cols.start;
        while j < cols.end {
            let nj = 4.min(cols.end - j);
            let mut r = 0;
            while r < self.rows {
                let nr = ROW_GROUP.min(self.rows - r);
                let mut acc = [[0.0f32; 4]; ROW_GROUP];
                // SAFETY: rows r..r+nr of h and weight rows j..j+nj exist (asserted by the caller).
                unsafe { self.dots(r, nr, j, nj, &mut acc) };
                for (ri, row) in acc.iter().enumerate().take(nr) {
                    for (jj, &v) in row.iter().enumerate().take(nj) {
                        // SAFETY: (r + ri, j + jj) is inside `out`, in this task's columns.
                        unsafe {
                            let o = self.out.add((r + ri) * self.ldo + j + jj);
                            let mut v = v;
                            if !self.scales.is_null() {
                                v *= *self.scales.add(j + jj);
                            }
                            if !self.bias.is_null() {
                                v += *self.bias.add(j + jj);
                            }
                            if self.accumulate {
                                v += *o;
                            }
                            *o = v;
                        }
                    }
                }
                r += nr;
            }
            j += nj;
        }
    }

    /// `acc[ri][jj] = h[r + ri] · W[j + jj]` for `ri < nr`, `jj < nj`.
    ///
    /// # Safety
    /// Rows `r..r+nr` of `h` and `j..j+nj` of `w` exist.
    unsafe fn dots(&self, r: usize, nr: usize, j: usize, nj: usize, acc: &mut [[f32; 4]; 4]) {
        let (h, k) = (self.h, self.k);
        // SAFETY: forwarded; the kernel was chosen for this CPU in `matmul_low`.
        unsafe {
            match self.w {
                Weights::F16(w, kernel) => kernel(h, k, r, nr, w, j, nj, acc),
                Weights::I8(w, kernel) => kernel(h, k, r, nr, w, j, nj, acc),
            }
        }
    }
}

/// A weight element the kernels read.
trait Elem: Copy {
    fn to_f32(self) -> f32;
}

impl Elem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl Elem for i8 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
}

/// Portable fallback.
///
/// # Safety
/// As [`Job::dots`].
#[allow(clippy::too_many_arguments)]
unsafe fn dots_portable<E: Elem>(
    h: *const f32,
    k: usize,
    r: usize,
    nr: usize,
    w: *const E,
    j: usize,
    nj: usize,
    acc: &mut [[f32; 4]; 4],
) {
    for jj in 0..nj {
        // SAFETY: row j + jj of w has k halves.
        let wr = unsafe { std::slice::from_raw_parts(w.add((j + jj) * k), k) };
        for (ri, a) in acc.iter_mut().enumerate().take(nr) {
            // SAFETY: row r + ri of h has k floats.
            let hr = unsafe { std::slice::from_raw_parts(h.add((r + ri) * k), k) };
            a[jj] = hr.iter().zip(wr).map(|(x, y)| x * y.to_f32()).sum();
        }
    }
}

/// Defines an x86 `dots` kernel (see [`Job::dots`]) for one vector width: `$lanes` floats per
/// vector, `$cvt` converting `$lanes` halves at a pointer, `$sum` reducing a vector.
macro_rules! dots_kernel {
    ($name:ident, $features:literal, $wty:ty, $lanes:literal, $zero:expr, $cvt:expr, $load:expr, $fma:expr, $sum:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            h: *const f32,
            k: usize,
            r: usize,
            nr: usize,
            w: *const $wty,
            j: usize,
            nj: usize,
            acc: &mut [[f32; 4]; 4],
        ) {
            #[allow(unused_imports)]
            use std::arch::x86_64::*;
            let mut s = [[$zero; 4]; 4];
            let main = k / $lanes * $lanes;
            // SAFETY (whole body): reads stay inside rows r..r+nr of h and j..j+nj of w
            // (caller); rows past nj / nr are clamped to the last valid one, their sums unused.
            unsafe {
                let wrow = |jj: usize| w.add((j + jj.min(nj - 1)) * k);
                let hrow = |ri: usize| h.add((r + ri.min(nr - 1)) * k);
                let (w0, w1, w2, w3) = (wrow(0), wrow(1), wrow(2), wrow(3));
                // The next 4 rows (the next call's), fetched ahead one cache line per row
                // per line consumed: every group starts a new 4 KiB page at k = 512 (f16), where
                // the hardware prefetcher stops, so without this each group waits on memory.
                let ahead = 4 * k;
                let line = 64 / std::mem::size_of::<$wty>();
                let mut p = 0;
                while p < main {
                    if p % line == 0 {
                        for jj in 0..4 {
                            _mm_prefetch::<_MM_HINT_T0>(wrow(jj).wrapping_add(p + ahead).cast());
                        }
                    }
                    let b = [
                        $cvt(w0.add(p)),
                        $cvt(w1.add(p)),
                        $cvt(w2.add(p)),
                        $cvt(w3.add(p)),
                    ];
                    for (ri, srow) in s.iter_mut().enumerate() {
                        if ri < nr {
                            let a = $load(hrow(ri).add(p));
                            for jj in 0..4 {
                                srow[jj] = $fma(a, b[jj], srow[jj]);
                            }
                        }
                    }
                    p += $lanes;
                }
                for ri in 0..nr {
                    for jj in 0..nj {
                        let mut v = $sum(s[ri][jj]);
                        for q in main..k {
                            v += *hrow(ri).add(q) * Elem::to_f32(*wrow(jj).add(q));
                        }
                        acc[ri][jj] = v;
                    }
                }
            }
        }
    };
}

dots_kernel!(
    dots_avx512,
    "avx512f",
    f16,
    16,
    _mm512_setzero_ps(),
    |p: *const f16| _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
    |p: *const f32| _mm512_loadu_ps(p),
    |a, b, c| _mm512_fmadd_ps(a, b, c),
    |v| _mm512_reduce_add_ps(v)
);

/// Sum of the 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn hsum256(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)))
}

dots_kernel!(
    dots_avx2,
    "avx2,fma,f16c",
    f16,
    8,
    _mm256_setzero_ps(),
    |p: *const f16| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
    |p: *const f32| _mm256_loadu_ps(p),
    |a, b, c| _mm256_fmadd_ps(a, b, c),
    |v| hsum256(v)
);

dots_kernel!(
    dots_avx512_i8,
    "avx512f",
    i8,
    16,
    _mm512_setzero_ps(),
    |p: *const i8| _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast()))),
    |p: *const f32| _mm512_loadu_ps(p),
    |a, b, c| _mm512_fmadd_ps(a, b, c),
    |v| _mm512_reduce_add_ps(v)
);

dots_kernel!(
    dots_avx2_i8,
    "avx2,fma",
    i8,
    8,
    _mm256_setzero_ps(),
    |p: *const i8| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))),
    |p: *const f32| _mm256_loadu_ps(p),
    |a, b, c| _mm256_fmadd_ps(a, b, c),
    |v| hsum256(v)
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::sgemm::with_isa;

    #[test]
    fn matches_f32_product_on_every_path() {
        for (rows, n, k) in [(1, 70, 45), (5, 33, 512), (9, 130, 24), (3, 4, 16)] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| f16::from_f32(((i * 7919 % 1013) as f32 / 1013.0) - 0.5).to_f32())
                .collect();
            let m = MatLow::lossless(&w, n, k).expect("f16-exact weights");
            let h: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            let want = |r: usize, j: usize| -> f32 {
                (0..k).map(|p| h[r * k + p] * w[j * k + p]).sum::<f32>() + bias[j]
            };
            for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
                if !isa.supported() {
                    continue;
                }
                for par in [Parallelism::None, Parallelism::Rayon(2)] {
                    let ldo = n + 3;
                    let mut out = vec![1.0f32; rows * ldo];
                    with_isa(isa, || {
                        matmul_low(&h, rows, &m, &mut out, ldo, true, Some(&bias), par)
                    });
                    for r in 0..rows {
                        for j in 0..n {
                            let got = out[r * ldo + j] - 1.0;
                            assert!(
                                (got - want(r, j)).abs() < 1e-4,
                                "{isa:?} rows {rows} ({r},{j}): {got} vs {}",
                                want(r, j)
                            );
                        }
                        assert_eq!(out[r * ldo + n], 1.0, "padding untouched");
                    }
                }
            }
        }
        assert!(MatLow::lossless(&[0.1], 1, 1).is_none());
    }

    #[test]
    fn int8_matches_its_dequantised_weights_on_every_path() {
        for (rows, n, k) in [(1, 70, 45), (5, 33, 512), (2, 9, 7)] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5)
                .collect();
            let m = MatLow::int8(&w, n, k);
            assert!(m.is_int8());
            let mut deq = vec![0.0f32; n * k];
            for (j, row) in deq.chunks_exact_mut(k).enumerate() {
                m.row_into(j, row);
                for (d, o) in row.iter().zip(&w[j * k..(j + 1) * k]) {
                    let max = w[j * k..(j + 1) * k]
                        .iter()
                        .fold(0.0f32, |a, v| a.max(v.abs()));
                    assert!((d - o).abs() <= max / 254.0 + 1e-7, "quantisation error");
                }
            }
            let h: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
            for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
                if !isa.supported() {
                    continue;
                }
                let mut out = vec![0.0f32; rows * n];
                with_isa(isa, || {
                    matmul_low(&h, rows, &m, &mut out, n, false, None, Parallelism::None)
                });
                for r in 0..rows {
                    for j in 0..n {
                        let want: f32 = (0..k).map(|p| h[r * k + p] * deq[j * k + p]).sum();
                        assert!((out[r * n + j] - want).abs() < 1e-4, "{isa:?} ({r},{j})");
                    }
                }
            }
        }
    }
}
