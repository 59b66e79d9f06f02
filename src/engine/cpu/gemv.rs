//! Products with reduced-precision weights for the decoder, where few rows (one per beam) meet
//! large weight matrices and the time goes to streaming the weights: stored as f16 (lossless
//! when the model file holds f16, as Whisper checkpoints do) the bytes read per token halve; as
//! int8 with a scale per row (lossy) they halve again.
//!
//! `out[r][j] (+)= Σ_p h[r][p] · W[j][p] (+ bias[j])` with `W` given row-major `[n][k]`, the
//! `Linear` layout, and stored interleaved by groups of four rows (one 64-byte line of each in
//! turn, see [`MatLow`]) so that the weights stream from memory as one sequential run. The
//! kernels walk a group's four rows along `k` against up to four input rows held in L1;
//! accumulators are reduced once per output, so each output's sum has the same order whatever
//! the layout or the columns asked for. Threads split the output columns.
//!
//! - f16 weights: 16 (AVX-512) or 8 (AVX2) weights per load converted to f32, f32 FMAs.
//! - int8 weights: the input rows are first rounded to int16 with a scale per row (an error of
//!   at most 1/32 766 of the row's largest value per element, far below the weights' own
//!   rounding of 1/254), then the products are exact integer multiply-adds: `vpdpwssd` (32
//!   weights per instruction) with AVX-512 VNNI, `vpmaddwd` + add with AVX-512BW or AVX2 (32 /
//!   16), the same integer sums in portable Rust elsewhere, instead of three instructions per
//!   16 weights converting them to f32 before one FMA: faster while the weights are in cache
//!   (a decoder token streaming them from memory is bound by the memory). Every path computes
//!   the same integer sums, so the results are identical bit for bit whatever the CPU.

use gemm::Parallelism;
use half::f16;
use rayon::prelude::*;

use super::sgemm::Isa;

/// A `[n][k]` weight matrix in reduced precision: f16 (lossless for f16 checkpoints) or int8
/// with one f32 scale per row (symmetric, `w ≈ q · scale`, `|q| ≤ 127`), stored in the
/// kernels' group-interleaved layout (see `index`): the four rows a kernel call reads
/// together lie in one contiguous run, one 64-byte line of each in turn, so a product reads
/// its weights as one sequential stream. (Read as four row-major streams, the same bytes came
/// from memory at half the speed: 8.5 against 17.5 GB/s on one AMD EPYC Zen 4 core.)
pub struct MatLow {
    data: Low,
    n: usize,
    k: usize,
}

enum Low {
    F16(Vec<f16>),
    /// `abs_sum`: the largest `Σ_p |q[j][p]|` of any row (for error bounds).
    I8 {
        q: Vec<i8>,
        scales: Vec<f32>,
        abs_sum: i64,
    },
}

/// Rows per group of the layout (the kernels' four weight rows).
const GROUP: usize = 4;

/// Elements of one row per interleaved chunk: one 64-byte line.
const fn chunk<E>() -> usize {
    64 / std::mem::size_of::<E>()
}

/// Where `W[j][p]` of an `[n][k]` matrix of `E` lies in the layout: rows in groups of
/// [`GROUP`] (the last group may hold fewer, `gr`), a group's `gr · k` elements after the
/// previous groups; inside a group, `k` in chunks of `c` = [`chunk`] elements (the last chunk
/// shorter, `cl`), each chunk holding its `gr` rows one after the other.
#[inline(always)]
fn index<E>(j: usize, p: usize, n: usize, k: usize) -> usize {
    let c = chunk::<E>();
    let g = j / GROUP * GROUP;
    let gr = GROUP.min(n - g);
    let p0 = p / c * c;
    let cl = c.min(k - p0);
    g * k + p0 * gr + (j - g) * cl + (p - p0)
}

/// `f(j, w[j][p])` for every element of the row-major `w[n][k]`, stored in the layout of
/// [`index`] (built in place: no row-major copy of the result is ever held).
fn interleave_map<T: Copy, E>(
    w: &[T],
    n: usize,
    k: usize,
    mut f: impl FnMut(usize, T) -> E,
) -> Vec<E> {
    let c = chunk::<E>();
    let mut out = Vec::with_capacity(n * k);
    for g in (0..n).step_by(GROUP) {
        let gr = GROUP.min(n - g);
        for p0 in (0..k).step_by(c) {
            let cl = c.min(k - p0);
            for r in g..g + gr {
                out.extend(w[r * k + p0..r * k + p0 + cl].iter().map(|&v| f(r, v)));
            }
        }
    }
    out
}

impl MatLow {
    /// `w[n][k]` as f16 when every value survives the conversion exactly, else `None`.
    pub fn lossless(w: &[f32], n: usize, k: usize) -> Option<Self> {
        assert_eq!(w.len(), n * k);
        let mut exact = true;
        let data = interleave_map(w, n, k, |_, v| {
            let h = f16::from_f32(v);
            exact &= h.to_f32() == v;
            h
        });
        exact.then_some(Self {
            data: Low::F16(data),
            n,
            k,
        })
    }

    /// `w[n][k]` quantised to int8 per row (lossy: about 0.4 % of the row's largest weight);
    /// `None` when rows are longer than [`INT8_MAX_K`].
    pub fn int8(w: &[f32], n: usize, k: usize) -> Option<Self> {
        assert_eq!(w.len(), n * k);
        if k > INT8_MAX_K {
            return None;
        }
        let scales: Vec<f32> = (0..n)
            .map(|j| {
                let row = &w[j * k..(j + 1) * k];
                let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                if max > 0.0 { max / 127.0 } else { 1.0 }
            })
            .collect();
        let mut row_abs = vec![0i64; n];
        let q = interleave_map(w, n, k, |j, v| {
            let q = (v / scales[j]).round().clamp(-127.0, 127.0) as i8;
            row_abs[j] += (q as i64).abs();
            q
        });
        let abs_sum = row_abs.into_iter().max().unwrap_or(0);
        Some(Self {
            data: Low::I8 { q, scales, abs_sum },
            n,
            k,
        })
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

    /// For int8 weights, a bound on how far a product row `h · W[j]` computed here can be from
    /// the same product with `h` unrounded (the int16 rounding of the input, see the module
    /// documentation), in units of `scale[j]`: `input_scale(h) · max_j Σ_p |q[j][p]| / 2`.
    /// 0 for f16.
    pub fn input_rounding_bound(&self, h: &[f32]) -> f32 {
        match &self.data {
            Low::F16(_) => 0.0,
            Low::I8 { abs_sum, .. } => 0.5 * input_scale(h) * *abs_sum as f32,
        }
    }

    /// Whether the weights are int8.
    pub fn is_int8(&self) -> bool {
        matches!(self.data, Low::I8 { .. })
    }

    /// Row `j` as f32 into `out` (dequantised for int8).
    pub fn row_into(&self, j: usize, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        let (n, k) = (self.n, self.k);
        assert!(j < n && out.len() >= k);
        match &self.data {
            Low::F16(d) => {
                for p0 in (0..k).step_by(chunk::<f16>()) {
                    let (at, cl) = (index::<f16>(j, p0, n, k), chunk::<f16>().min(k - p0));
                    d[at..at + cl].convert_to_f32_slice(&mut out[p0..p0 + cl]);
                }
            }
            Low::I8 { q, scales, .. } => {
                for p0 in (0..k).step_by(chunk::<i8>()) {
                    let (at, cl) = (index::<i8>(j, p0, n, k), chunk::<i8>().min(k - p0));
                    for (o, &v) in out[p0..p0 + cl].iter_mut().zip(&q[at..at + cl]) {
                        *o = v as f32 * scales[j];
                    }
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
    let out = out.as_mut_ptr();
    let run = |w: Weights, scales: *const f32, hq: *const i16, hscale: *const f32| {
        let job = Job {
            h: h.as_ptr(),
            hq,
            hscale,
            rows,
            w,
            scales,
            n,
            k,
            out,
            ldo,
            accumulate,
            bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
        };
        let threads = super::sgemm::threads_of(par);
        let (c0, nc) = (cols.start, cols.len());
        if threads <= 1 || nc * k * rows < (1 << 17) {
            job.columns(cols.clone());
        } else {
            let per = COLS_PER_TASK.min(nc.div_ceil(threads).next_multiple_of(4));
            (0..nc.div_ceil(per))
                .into_par_iter()
                .for_each(|t| job.columns(c0 + t * per..c0 + nc.min((t + 1) * per)));
        }
    };
    match &w.data {
        Low::F16(d) => run(
            Weights::F16(d.as_ptr(), kernel_f16(isa)),
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null(),
        ),
        Low::I8 { q, scales, .. } => with_quantised(&h[..rows * k], rows, k, |hq, hscale| {
            run(
                Weights::I8(q.as_ptr(), kernel_i8(isa)),
                scales.as_ptr(),
                hq.as_ptr(),
                hscale.as_ptr(),
            )
        }),
    }
}

/// The largest magnitude of an input rounded to int16 for the int8 kernels: 2^14 − 1, so that
/// the int32 sums cannot overflow for any `k` below 8 256 (AVX2 lanes add `k / 16` pairs of
/// products of at most 16 383 · 127 each; Whisper's widest product has `k` = 5 120).
const ACT_MAX: f32 = 16_383.0;

/// Longest `k` the int8 kernels take (see [`ACT_MAX`]); [`MatLow::int8`] refuses longer rows.
pub const INT8_MAX_K: usize = 8_192;

/// The scale of one input row rounded to int16: its largest magnitude / [`ACT_MAX`] (1 for a
/// row of zeros; NaN when the row holds a NaN or an infinity, so that every output of the
/// product is NaN, as in f32, instead of a finite value computed from a clamped input).
pub fn input_scale(row: &[f32]) -> f32 {
    let (max, nonfinite) = abs_max(row);
    if nonfinite {
        f32::NAN
    } else if max == 0.0 {
        1.0
    } else {
        max / ACT_MAX
    }
}

/// The largest `|v|` of the finite values of `row`, and whether it holds a NaN or an infinity
/// (vectorised where the CPU allows; the int8 inputs' scales here and in [`super::vnni`]).
pub(super) fn abs_max(row: &[f32]) -> (f32, bool) {
    #[cfg(target_arch = "x86_64")]
    if super::sgemm::current_isa() == Isa::Avx512 {
        // SAFETY: the AVX-512 path is only chosen (or forced) where the CPU has AVX-512F.
        return unsafe { abs_max_avx512(row) };
    }
    abs_max_portable(row)
}

/// [`abs_max`] in portable Rust.
fn abs_max_portable(row: &[f32]) -> (f32, bool) {
    let mut max = 0.0f32;
    let mut nonfinite = false;
    for &v in row {
        let a = v.abs();
        nonfinite |= !a.is_finite();
        if a > max && a <= f32::MAX {
            max = a;
        }
    }
    (max, nonfinite)
}

/// [`abs_max_portable`] with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn abs_max_avx512(row: &[f32]) -> (f32, bool) {
    use std::arch::x86_64::*;
    let main = row.len() / 16 * 16;
    let fmax = _mm512_set1_ps(f32::MAX);
    let mut m = _mm512_setzero_ps();
    let mut bad: __mmask16 = 0;
    let mut p = 0;
    while p < main {
        // SAFETY: p + 16 <= row.len().
        let a = _mm512_abs_ps(unsafe { _mm512_loadu_ps(row.as_ptr().add(p)) });
        // Not (a <= MAX), unordered included: NaN or infinity.
        bad |= _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(a, fmax);
        // A NaN in `a` leaves `m` unchanged (maxps returns its second operand).
        m = _mm512_max_ps(a, m);
        p += 16;
    }
    let (tail_max, tail_bad) = abs_max_portable(&row[main..]);
    let finite_max = _mm512_reduce_max_ps(_mm512_min_ps(m, fmax));
    (finite_max.max(tail_max), bad != 0 || tail_bad)
}

/// `q[p] = round_ties_even(row[p] · inv)` clamped to ±[`ACT_MAX`] (0 for NaN), vectorised
/// where the CPU allows; every path gives the same values.
fn quantise_row(row: &[f32], inv: f32, q: &mut [i16]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::sgemm::current_isa() == Isa::Avx512 {
            // SAFETY: the AVX-512 path is only chosen (or forced) where the CPU has AVX-512F.
            return unsafe { quantise_avx512(row, inv, q) };
        }
    }
    quantise_portable(row, inv, q);
}

fn quantise_portable(row: &[f32], inv: f32, q: &mut [i16]) {
    for (d, &v) in q.iter_mut().zip(row) {
        *d = (v * inv).round_ties_even().clamp(-ACT_MAX, ACT_MAX) as i16;
    }
}

/// [`quantise_row`] with AVX-512F: `vcvtps2dq` rounds to nearest even (the default MXCSR
/// mode), the clamp is done in f32 before it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn quantise_avx512(row: &[f32], inv: f32, q: &mut [i16]) {
    use std::arch::x86_64::*;
    let n = row.len().min(q.len());
    let main = n / 16 * 16;
    let (vi, hi, lo) = (
        _mm512_set1_ps(inv),
        _mm512_set1_ps(ACT_MAX),
        _mm512_set1_ps(-ACT_MAX),
    );
    let mut p = 0;
    while p < main {
        // SAFETY: p + 16 <= n for both slices.
        unsafe {
            let y = _mm512_mul_ps(_mm512_loadu_ps(row.as_ptr().add(p)), vi);
            // max/min return the second operand for NaN: NaN becomes -ACT_MAX here, as
            // clamp does not (it keeps NaN, cast to 0); NaN rows have a NaN scale anyway.
            let y = _mm512_min_ps(_mm512_max_ps(y, lo), hi);
            let i = _mm512_cvtps_epi32(y);
            _mm256_storeu_si256(q.as_mut_ptr().add(p).cast(), _mm512_cvtepi32_epi16(i));
        }
        p += 16;
    }
    quantise_portable(&row[main..n], inv, &mut q[main..n]);
}

/// Runs `f` with `h` (`rows` rows of `k`) rounded to int16 per row, `h[r][p] ≈ hq[r][p] ·
/// hscale[r]`, `|hq| ≤ ACT_MAX`, in a buffer reused by the calling thread (a fresh one when
/// that is in use, e.g. by a product that called this one's caller on the same thread).
fn with_quantised<R>(h: &[f32], rows: usize, k: usize, f: impl FnOnce(&[i16], &[f32]) -> R) -> R {
    use std::cell::RefCell;
    thread_local! {
        static BUF: RefCell<(Vec<i16>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }
    let fill = |buf: &mut (Vec<i16>, Vec<f32>)| {
        let (hq, hs) = buf;
        hq.clear();
        hs.clear();
        hq.resize(rows * k, 0);
        hs.resize(rows, 0.0);
        for ((row, q), s) in h
            .chunks_exact(k)
            .zip(hq.chunks_exact_mut(k))
            .zip(hs.iter_mut())
        {
            *s = input_scale(row);
            quantise_row(row, 1.0 / *s, q);
        }
    };
    super::sgemm::with_scratch(&BUF, Default::default, |buf| {
        fill(buf);
        f(&buf.0, &buf.1)
    })
}

/// The weight rows of one kernel call: rows `group + first .. group + first + nj`, inside the
/// layout's group that starts at row `group`.
#[derive(Clone, Copy)]
struct WRows {
    group: usize,
    first: usize,
    nj: usize,
}

/// A `dots` kernel for f16 weights (see [`Job::dots`]): `(h, k, r, nr, w, n, rows, acc)`.
type Dots<E> =
    unsafe fn(*const f32, usize, usize, usize, *const E, usize, WRows, &mut [[f32; 4]; 4]);

/// A `dots` kernel for int8 weights and int16 inputs: `acc[ri][jj] = Σ_p hq[r + ri][p] ·
/// w[j + jj][p]` exactly (see [`Job::dots`]; each vector lane stays within i32 for `k` up to
/// [`INT8_MAX_K`], the lanes are added in i64).
type DotsQ =
    unsafe fn(*const i16, usize, usize, usize, *const i8, usize, WRows, &mut [[i64; 4]; 4]);

/// The weights and the kernel for them, chosen once per product.
#[derive(Clone, Copy)]
enum Weights {
    F16(*const f16, Dots<f16>),
    I8(*const i8, DotsQ),
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
    dots_portable
}

/// The fastest int8 kernel `isa` allows, and its name: AVX-512 with VNNI (`vpdpwssd`),
/// AVX-512BW, AVX2 (both `vpmaddwd`), portable.
fn select_i8(isa: Isa) -> (DotsQ, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if isa == Isa::Avx512 && has!("avx512bw") {
            return if has!("avx512vnni") {
                (dots_q_avx512_vnni, "avx512-vnni (vpdpwssd)")
            } else {
                (dots_q_avx512, "avx512bw (vpmaddwd)")
            };
        }
        if matches!(isa, Isa::Avx512 | Isa::Avx2) && has!("avx2") {
            return (dots_q_avx2, "avx2 (vpmaddwd)");
        }
    }
    let _ = isa;
    (dots_q_portable, "portable")
}

fn kernel_i8(isa: Isa) -> DotsQ {
    select_i8(isa).0
}

/// The int8 kernel this thread uses, for benchmarks and reports.
pub fn int8_kernel_name() -> &'static str {
    select_i8(super::sgemm::current_isa()).1
}

#[derive(Clone, Copy)]
struct Job {
    h: *const f32,
    /// `h` rounded to int16 (int8 weights), row stride `k`, else null.
    hq: *const i16,
    /// The scale of each row of `hq`, else null.
    hscale: *const f32,
    rows: usize,
    w: Weights,
    /// Per-row scales of int8 weights, else null.
    scales: *const f32,
    n: usize,
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
            // Up to the end of j's group of the layout.
            let nj = (j / GROUP * GROUP + GROUP).min(cols.end) - j;
            let mut r = 0;
            while r < self.rows {
                let nr = ROW_GROUP.min(self.rows - r);
                let mut acc = [[0.0f32; 4]; ROW_GROUP];
                // SAFETY: rows r..r+nr of h and weight rows j..j+nj exist (asserted by the caller).
                unsafe { self.dots(r, nr, j, nj, &mut acc) };
                for (ri, row) in acc.iter().enumerate().take(nr) {
                    for (jj, &v) in row.iter().enumerate().take(nj) {
                        // SAFETY: (r + ri, j + jj) is inside `out`, in this task's columns;
                        // scales exist for every row of h and w when not null.
                        unsafe {
                            let o = self.out.add((r + ri) * self.ldo + j + jj);
                            let mut v = v;
                            if !self.scales.is_null() {
                                v *= *self.hscale.add(r + ri) * *self.scales.add(j + jj);
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
    /// Rows `r..r+nr` of `h` and `j..j+nj` of `w` exist, the latter in one group of the layout.
    unsafe fn dots(&self, r: usize, nr: usize, j: usize, nj: usize, acc: &mut [[f32; 4]; 4]) {
        let (h, n, k) = (self.h, self.n, self.k);
        let rows = WRows {
            group: j / GROUP * GROUP,
            first: j % GROUP,
            nj,
        };
        // SAFETY: forwarded; the kernel was chosen for this CPU in `matmul_low`.
        unsafe {
            match self.w {
                Weights::F16(w, kernel) => kernel(h, k, r, nr, w, n, rows, acc),
                Weights::I8(w, kernel) => {
                    let mut sums = [[0i64; 4]; 4];
                    kernel(self.hq, k, r, nr, w, n, rows, &mut sums);
                    for (a, s) in acc.iter_mut().zip(&sums) {
                        for (a, &s) in a.iter_mut().zip(s) {
                            *a = s as f32;
                        }
                    }
                }
            }
        }
    }
}

/// The sums of a `dots` kernel in portable Rust, one output at a time: `acc[ri][jj] =
/// Σ_p mul(h[r + ri][p], W[j][p])` in `p` order.
///
/// # Safety
/// As [`Job::dots`], `h` of `X`.
#[allow(clippy::too_many_arguments)]
unsafe fn dots_portable_with<X: Copy, E: Copy, A: std::iter::Sum>(
    h: *const X,
    k: usize,
    r: usize,
    nr: usize,
    w: *const E,
    n: usize,
    rows: WRows,
    acc: &mut [[A; 4]; 4],
    mul: impl Fn(X, E) -> A,
) {
    for jj in 0..rows.nj {
        let j = rows.group + rows.first + jj;
        for (ri, a) in acc.iter_mut().enumerate().take(nr) {
            // SAFETY: row r + ri of h has k values; W[j][p] is inside w (caller).
            a[jj] = (0..k)
                .map(|p| unsafe { mul(*h.add((r + ri) * k + p), *w.add(index::<E>(j, p, n, k))) })
                .sum();
        }
    }
}

/// Portable fallback for f16 weights.
///
/// # Safety
/// As [`Job::dots`].
#[allow(clippy::too_many_arguments)]
unsafe fn dots_portable(
    h: *const f32,
    k: usize,
    r: usize,
    nr: usize,
    w: *const f16,
    n: usize,
    rows: WRows,
    acc: &mut [[f32; 4]; 4],
) {
    // SAFETY: forwarded.
    unsafe { dots_portable_with(h, k, r, nr, w, n, rows, acc, |x, y: f16| x * y.to_f32()) }
}

/// Defines an x86 `dots` kernel (see [`Job::dots`], [`DotsQ`]): inputs of type `$xty`,
/// weights of type `$wty`, sums of type `$acc`; `$lanes` products per step, `$cvt` widening
/// `$lanes` weights at a pointer, `$load` loading `$lanes` inputs, `$fma(a, b, c)` adding the
/// products of `a` and `b` to `c`, `$sum` reducing a vector to `$acc`, `$tail(x, w)` one product
/// past the last full step.
macro_rules! dots_kernel {
    ($name:ident, $features:literal, $xty:ty, $wty:ty, $acc:ty, $lanes:literal, $zero:expr,
     $cvt:expr, $load:expr, $fma:expr, $sum:expr, $tail:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            h: *const $xty,
            k: usize,
            r: usize,
            nr: usize,
            w: *const $wty,
            n: usize,
            rows: WRows,
            acc: &mut [[$acc; 4]; 4],
        ) {
            #[allow(unused_imports)]
            use std::arch::x86_64::*;
            let mut s = [[$zero; 4]; 4];
            // Whole chunks of the layout (`c` elements of each row, rows one after the other).
            let c = chunk::<$wty>();
            let main = k / c * c;
            let WRows { group, first, nj } = rows;
            let gr = GROUP.min(n - group);
            // SAFETY (whole body): reads stay inside rows r..r+nr of h and the group's rows of
            // w (caller); rows past nj / nr are clamped to the last valid one, their sums
            // unused.
            unsafe {
                let base = w.add(group * k);
                // Row jj's offset in a whole chunk.
                let wrow = |jj: usize| (first + jj.min(nj - 1)) * c;
                let hrow = |ri: usize| h.add((r + ri.min(nr - 1)) * k);
                let (o0, o1, o2, o3) = (wrow(0), wrow(1), wrow(2), wrow(3));
                // The weights two groups ahead, one line per line consumed: the stream is
                // sequential, this only starts it early (a call reads 2-4 KiB).
                let ahead = 2 * GROUP * k;
                let mut p = 0;
                while p < main {
                    let cb = base.add(p / c * c * gr + p % c);
                    if p % c == 0 {
                        for l in 0..gr {
                            _mm_prefetch::<_MM_HINT_T0>(cb.wrapping_add(l * c + ahead).cast());
                        }
                    }
                    let b = [
                        $cvt(cb.add(o0)),
                        $cvt(cb.add(o1)),
                        $cvt(cb.add(o2)),
                        $cvt(cb.add(o3)),
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
                // The last, shorter chunk: `k - main` elements of each row.
                let tail = base.add(main * gr);
                for ri in 0..nr {
                    for jj in 0..nj {
                        let mut v: $acc = $sum(s[ri][jj]);
                        let wt = tail.add((first + jj) * (k - main));
                        for q in main..k {
                            v += $tail(*hrow(ri).add(q), *wt.add(q - main));
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
    f32,
    f16,
    f32,
    16,
    _mm512_setzero_ps(),
    |p: *const f16| _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
    |p: *const f32| _mm512_loadu_ps(p),
    |a, b, c| _mm512_fmadd_ps(a, b, c),
    |v| _mm512_reduce_add_ps(v),
    |x: f32, w: f16| x * w.to_f32()
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
    f32,
    f16,
    f32,
    8,
    _mm256_setzero_ps(),
    |p: *const f16| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
    |p: *const f32| _mm256_loadu_ps(p),
    |a, b, c| _mm256_fmadd_ps(a, b, c),
    |v| hsum256(v),
    |x: f32, w: f16| x * w.to_f32()
);

/// The integer sums of [`DotsQ`] in portable Rust.
///
/// # Safety
/// As [`Job::dots`], with `hq` for `h`.
#[allow(clippy::too_many_arguments)]
unsafe fn dots_q_portable(
    hq: *const i16,
    k: usize,
    r: usize,
    nr: usize,
    w: *const i8,
    n: usize,
    rows: WRows,
    acc: &mut [[i64; 4]; 4],
) {
    // SAFETY: forwarded.
    unsafe { dots_portable_with(hq, k, r, nr, w, n, rows, acc, |x, y| x as i64 * y as i64) }
}

/// The 16 int32 lanes of `v` added in i64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn hsum512_i64(v: std::arch::x86_64::__m512i) -> i64 {
    use std::arch::x86_64::*;
    let lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
    let hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(v));
    _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi))
}

/// The 8 int32 lanes of `v` added in i64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn hsum256_i64(v: std::arch::x86_64::__m256i) -> i64 {
    use std::arch::x86_64::*;
    let lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v));
    let hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(v));
    let s = _mm256_add_epi64(lo, hi);
    let q = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
    _mm_cvtsi128_si64(q) + _mm_extract_epi64::<1>(q)
}

dots_kernel!(
    dots_q_avx512_vnni,
    "avx512f,avx512bw,avx512vnni",
    i16,
    i8,
    i64,
    32,
    _mm512_setzero_si512(),
    |p: *const i8| _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.cast())),
    |p: *const i16| _mm512_loadu_si512(p.cast()),
    |a, b, c| _mm512_dpwssd_epi32(c, a, b),
    |v| hsum512_i64(v),
    |x: i16, w: i8| x as i64 * w as i64
);

dots_kernel!(
    dots_q_avx512,
    "avx512f,avx512bw",
    i16,
    i8,
    i64,
    32,
    _mm512_setzero_si512(),
    |p: *const i8| _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.cast())),
    |p: *const i16| _mm512_loadu_si512(p.cast()),
    |a, b, c| _mm512_add_epi32(c, _mm512_madd_epi16(a, b)),
    |v| hsum512_i64(v),
    |x: i16, w: i8| x as i64 * w as i64
);

dots_kernel!(
    dots_q_avx2,
    "avx2",
    i16,
    i8,
    i64,
    16,
    _mm256_setzero_si256(),
    |p: *const i8| _mm256_cvtepi8_epi16(_mm_loadu_si128(p.cast())),
    |p: *const i16| _mm256_loadu_si256(p.cast()),
    |a, b, c| _mm256_add_epi32(c, _mm256_madd_epi16(a, b)),
    |v| hsum256_i64(v),
    |x: i16, w: i8| x as i64 * w as i64
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
        for (rows, n, k) in [
            (1, 70, 45),
            (5, 33, 512),
            (2, 9, 7),
            (3, 12, 2048),
            (1, 5, 100),
        ] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5)
                .collect();
            let m = MatLow::int8(&w, n, k).expect("k fits");
            assert!(m.is_int8());
            let scales = m.int8_scales().expect("int8").to_vec();
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
            // Inputs with an outlier (as in real activations) in every other row.
            let h: Vec<f32> = (0..rows * k)
                .map(|i| {
                    let v = (i as f32 * 0.37).sin();
                    if i % k == 3 && (i / k) % 2 == 1 {
                        40.0
                    } else {
                        v
                    }
                })
                .collect();
            let mut first: Option<Vec<f32>> = None;
            for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
                if !isa.supported() {
                    continue;
                }
                for par in [Parallelism::None, Parallelism::Rayon(2)] {
                    let mut out = vec![0.0f32; rows * n];
                    with_isa(isa, || {
                        matmul_low(&h, rows, &m, &mut out, n, false, None, par)
                    });
                    for r in 0..rows {
                        let hr = &h[r * k..(r + 1) * k];
                        for j in 0..n {
                            let want: f64 =
                                (0..k).map(|p| hr[p] as f64 * deq[j * k + p] as f64).sum();
                            let bound = scales[j] as f64 * m.input_rounding_bound(hr) as f64;
                            let got = out[r * n + j] as f64;
                            assert!(
                                (got - want).abs() <= bound + 1e-5 * (1.0 + want.abs()),
                                "{isa:?} k {k} ({r},{j}): {got} vs {want}, bound {bound}"
                            );
                        }
                    }
                    // Integer sums: every path and split gives the same bits.
                    match &first {
                        None => first = Some(out),
                        Some(f) => assert!(
                            f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{isa:?} {par:?} differs from the first path"
                        ),
                    }
                }
            }
        }
    }

    #[test]
    fn int8_keeps_non_finite_inputs_visible_and_refuses_long_rows() {
        let (n, k) = (8, 64);
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.1).cos()).collect();
        let m = MatLow::int8(&w, n, k).expect("k fits");
        let mut h = vec![0.5f32; 2 * k];
        h[k + 7] = f32::NAN;
        let mut out = vec![0.0f32; 2 * n];
        matmul_low(&h, 2, &m, &mut out, n, false, None, Parallelism::None);
        assert!(
            out[..n].iter().all(|v| v.is_finite()),
            "finite row stays finite"
        );
        assert!(
            out[n..].iter().all(|v| v.is_nan()),
            "a NaN input makes its row NaN"
        );
        let kk = INT8_MAX_K + 1;
        assert!(MatLow::int8(&vec![0.0; kk], 1, kk).is_none());
    }
}
