//! Numeric kernels of the CPU engine. All write into caller-provided buffers: nothing here
//! allocates (beyond the GEMM's thread-local packing buffers, once).

use gemm::Parallelism;
use rayon::prelude::*;

use super::amx::{self, PackedBf16};
use super::gemv::{MatLow, matmul_low};
use super::math::{exp_nonpositive, gelu_inplace, simd_dispatch};
use super::sgemm::{self, Epilogue, MatRef, PackedB};
use super::vnni::{self, PackedI8};

/// Up to this many rows, a [`Linear`] with reduced-precision weights streams them directly
/// ([`matmul_low`]); more rows unpack them and run the packed GEMM.
pub const LOW_MAX_ROWS: usize = 16;

/// A dense layer `y = x W^T + b`, weights `[out][in]` row-major as stored by CTranslate2.
///
/// Either packed once, at construction, into the panel layout of [`sgemm`] (AVX-512 kernel where
/// the CPU has it, AVX2 or portable otherwise; `forward` packs only `x`), or, for the decoder,
/// held in reduced precision ([`MatLow`]: f16, lossless for f16 checkpoints, or int8): products
/// of at most [`LOW_MAX_ROWS`] rows (a row per beam) stream those weights directly; larger ones
/// (a prompt) unpack them into a per-thread scratch and run the packed GEMM. With
/// `ComputeType::Bf16` the encoder's layers hold their weights in bf16 ([`PackedBf16`]) and run
/// the bf16 GEMM ([`amx::gemm`]: AMX tiles, or f32 kernels on bf16-rounded operands).
pub struct Linear {
    weights: LinearWeights,
    pub bias: Option<Vec<f32>>,
    pub n_in: usize,
    pub n_out: usize,
}

enum LinearWeights {
    Packed(PackedB),
    Low(MatLow),
    Bf16(PackedBf16),
    /// int8 for offline work, and a bf16 copy for live captioning ([`Linear::product`] with
    /// `int8` false).
    Int8(Box<(PackedI8, PackedBf16)>),
    /// A decoder layer in int8 for decoding steps, with an exact copy for live captioning's
    /// steps and a bf16 copy for prompts ([`Linear::new_decoder_int8`]).
    Decoder(Box<DecoderWeights>),
}

/// The weights of a decoder layer with `ComputeType::Int8Bf16` ([`Linear::new_decoder_int8`]).
struct DecoderWeights {
    /// int8 with a scale per row: offline decoding steps.
    int8: MatLow,
    /// As stored (f16, lossless) when the checkpoint is f16 (Whisper's are), else none (then
    /// `int8` serves live too).
    exact: Option<MatLow>,
    /// bf16 for the bf16 GEMM: products of more than [`LOW_MAX_ROWS`] rows (a prompt).
    wide: PackedBf16,
}

/// The products one call runs ([`Linear::path`]).
enum Path<'a> {
    Packed(&'a PackedB),
    Low(&'a MatLow),
    Bf16(&'a PackedBf16),
    Int8(&'a PackedI8),
}

thread_local! {
    /// Reduced-precision weights unpacked to f32 for a many-row product.
    static UNPACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Linear {
    /// A layer from row-major weights `[n_out][n_in]` and an optional bias `[n_out]`.
    pub fn new(weight: Vec<f32>, bias: Option<Vec<f32>>, n_in: usize, n_out: usize) -> Self {
        assert_eq!(weight.len(), n_out * n_in, "weight shape");
        Self::with(
            LinearWeights::Packed(PackedB::from_rows(&weight, n_out, n_in)),
            bias,
            n_in,
            n_out,
        )
    }

    /// A layer whose products run in bf16 ([`amx::gemm`]): weights `[n_out][n_in]` rounded to
    /// bf16 and packed for the detected backend; inputs rounded to bf16 on the fly, products
    /// accumulated in f32, bias added in f32.
    pub fn new_bf16(weight: Vec<f32>, bias: Option<Vec<f32>>, n_in: usize, n_out: usize) -> Self {
        assert_eq!(weight.len(), n_out * n_in, "weight shape");
        Self::with(
            LinearWeights::Bf16(PackedBf16::from_rows(&weight, n_out, n_in)),
            bias,
            n_in,
            n_out,
        )
    }

    /// A layer whose products run in int8 on AVX512-VNNI ([`vnni::gemm`]): weights
    /// `[n_out][n_in]` quantised per output once, inputs per row on the fly, products summed
    /// exactly in int32, scaled and biased in f32. Needs [`vnni::usable`]. Also holds the
    /// weights in bf16, for the products asked with `int8` false.
    pub fn new_int8(weight: Vec<f32>, bias: Option<Vec<f32>>, n_in: usize, n_out: usize) -> Self {
        assert_eq!(weight.len(), n_out * n_in, "weight shape");
        Self::with(
            LinearWeights::Int8(Box::new((
                PackedI8::from_rows(&weight, n_out, n_in),
                PackedBf16::from_rows(&weight, n_out, n_in),
            ))),
            bias,
            n_in,
            n_out,
        )
    }

    /// A layer holding its weights `[n_out][n_in]` in reduced precision only.
    pub fn new_low(weight: MatLow, bias: Option<Vec<f32>>) -> Self {
        let (n_in, n_out) = (weight.k(), weight.n());
        Self::with(LinearWeights::Low(weight), bias, n_in, n_out)
    }

    /// A decoder layer `[n_out][n_in]` for `ComputeType::Int8Bf16`, in three forms: int8 with a
    /// scale per row, streamed by the few-row products of offline decoding steps (at most
    /// [`LOW_MAX_ROWS`] rows, a row per beam: half the bytes of f16); the weights as stored
    /// (f16, lossless), streamed by the steps of live captioning ([`Linear::product`] with
    /// `int8` false), which reads worse with rounded weights; and bf16 for the many-row
    /// products of a prompt, on AMX tiles or `vdpbf16ps` several times the unpacked f32 GEMM
    /// (prompt precision changed neither the offline nor the live WER measured). Five bytes a
    /// weight in all. `int8` is `weight` quantised ([`MatLow::int8`]).
    pub fn new_decoder_int8(int8: MatLow, weight: &[f32], bias: Option<Vec<f32>>) -> Self {
        let (n_in, n_out) = (int8.k(), int8.n());
        assert_eq!(weight.len(), n_out * n_in, "weight shape");
        let exact = MatLow::lossless(weight, n_out, n_in);
        let wide = PackedBf16::from_rows(weight, n_out, n_in);
        Self::with(
            LinearWeights::Decoder(Box::new(DecoderWeights { int8, exact, wide })),
            bias,
            n_in,
            n_out,
        )
    }

    fn with(weights: LinearWeights, bias: Option<Vec<f32>>, n_in: usize, n_out: usize) -> Self {
        if let Some(b) = &bias {
            assert_eq!(b.len(), n_out, "bias shape");
        }
        Self {
            weights,
            bias,
            n_in,
            n_out,
        }
    }

    /// The products of a call of `rows` rows: an encoder layer held in int8 runs its bf16 copy
    /// unless `int8`; a decoder layer held in int8 runs its bf16 copy above [`LOW_MAX_ROWS`]
    /// rows, else its int8 weights, or unless `int8` its exact ones; a layer held in bf16 and
    /// f32 runs bf16 unless `int8`. (`int8` false: the precise products of live captioning.)
    fn path(&self, rows: usize, int8: bool) -> Path<'_> {
        match &self.weights {
            LinearWeights::Packed(w) => Path::Packed(w),
            LinearWeights::Low(w) => Path::Low(w),
            LinearWeights::Bf16(w) => Path::Bf16(w),
            LinearWeights::Int8(both) if int8 => Path::Int8(&both.0),
            LinearWeights::Int8(both) => Path::Bf16(&both.1),
            LinearWeights::Decoder(w) if rows > LOW_MAX_ROWS => Path::Bf16(&w.wide),
            LinearWeights::Decoder(w) => match (&w.exact, int8) {
                (Some(exact), false) => Path::Low(exact),
                _ => Path::Low(&w.int8),
            },
        }
    }

    /// Whether the weights are held in reduced precision.
    pub fn is_low(&self) -> bool {
        matches!(
            self.weights,
            LinearWeights::Low(_) | LinearWeights::Decoder(_)
        )
    }

    /// Whether this is a decoder layer held in int8 with exact and bf16 copies
    /// ([`Linear::new_decoder_int8`]).
    pub fn is_decoder_int8(&self) -> bool {
        matches!(self.weights, LinearWeights::Decoder(_))
    }

    /// Whether the products run in bf16.
    pub fn is_bf16(&self) -> bool {
        matches!(self.weights, LinearWeights::Bf16(_))
    }

    /// Whether the products run in int8.
    pub fn is_int8(&self) -> bool {
        matches!(self.weights, LinearWeights::Int8(..))
    }

    /// `out[rows][n_out] = x[rows][n_in] W^T + b`.
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut [f32], par: Parallelism) {
        self.product(x, rows, out, Output::Set, true, par);
    }

    /// `out += x W^T + b` (residual connection fused into the GEMM's accumulate).
    pub fn forward_accumulate(&self, x: &[f32], rows: usize, out: &mut [f32], par: Parallelism) {
        self.product(x, rows, out, Output::Accumulate, true, par);
    }

    /// `out = gelu(x W^T + b)`: GELU fused into the store of the bf16 and int8 GEMMs; otherwise
    /// the product, then [`gelu_inplace`] (the same values either way).
    pub fn forward_gelu(&self, x: &[f32], rows: usize, out: &mut [f32], par: Parallelism) {
        self.product(x, rows, out, Output::Gelu, true, par);
    }

    /// The product `x W^T + b` stored into `out` as `output` says; a layer held in int8 runs
    /// its bf16 copy unless `int8` (the `forward*` methods run int8).
    pub fn product(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        output: Output,
        int8: bool,
        par: Parallelism,
    ) {
        let (n_in, n_out) = (self.n_in, self.n_out);
        assert!(x.len() >= rows * n_in && out.len() >= rows * n_out);
        let bias = self.bias.as_deref();
        let accumulate = output == Output::Accumulate;
        let act = match output {
            Output::Gelu => amx::Activation::Gelu,
            Output::Set | Output::Accumulate => amx::Activation::None,
        };
        let ep = Epilogue {
            alpha: 1.0,
            accumulate,
            bias,
        };
        let fused = match self.path(rows, int8) {
            Path::Packed(w) => {
                matmul_packed(x, rows, n_in, w, out, n_out, accumulate, bias, par);
                false
            }
            Path::Bf16(w) => {
                let a = MatRef {
                    data: x,
                    rs: n_in,
                    cs: 1,
                };
                amx::gemm_act(rows, a, w, out, n_out, ep, act, par);
                true
            }
            Path::Int8(w) => {
                vnni::gemm(rows, x, n_in, w, out, n_out, ep, act, par);
                true
            }
            Path::Low(w) if rows <= LOW_MAX_ROWS => {
                matmul_low(x, rows, w, out, n_out, accumulate, bias, par);
                false
            }
            Path::Low(w) => {
                UNPACKED.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    buf.resize(n_out * n_in, 0.0);
                    for (j, row) in buf.chunks_exact_mut(n_in).enumerate() {
                        w.row_into(j, row);
                    }
                    let a = MatRef {
                        data: x,
                        rs: n_in,
                        cs: 1,
                    };
                    let b = MatRef {
                        data: &buf,
                        rs: 1,
                        cs: n_in,
                    };
                    sgemm::sgemm_strided(rows, n_out, n_in, out, n_out, a, b, 1.0, accumulate, par);
                    if let Some(bias) = bias {
                        add_bias(&mut out[..rows * n_out], bias);
                    }
                });
                false
            }
        };
        if output == Output::Gelu && !fused {
            gelu_inplace(&mut out[..rows * n_out]);
        }
    }
}

/// What [`Linear::product`] does with its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// `out = x W^T + b`.
    Set,
    /// `out += x W^T + b` (a residual connection).
    Accumulate,
    /// `out = gelu(x W^T + b)`.
    Gelu,
}

/// `c[m][n] (+)= a[m][k] · B + bias` for B packed once ([`PackedB`], e.g. `Wᵀ` of a weight
/// `W[n][k]`), `a` row stride `lda`, `c` row stride `ldc`; the bias (length `n`) is fused into
/// the store. The fast path for weights: AVX-512/AVX2 kernels chosen at run time.
#[allow(clippy::too_many_arguments)]
pub fn matmul_packed(
    a: &[f32],
    m: usize,
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
    par: Parallelism,
) {
    sgemm::sgemm(
        m,
        MatRef {
            data: a,
            rs: lda,
            cs: 1,
        },
        b,
        c,
        ldc,
        Epilogue {
            alpha: 1.0,
            accumulate,
            bias,
        },
        par,
    );
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

/// From this many rows of `c` on, [`matmul_strided`] uses [`sgemm::sgemm_strided`] (which packs
/// `b` per call, `2m` flops per packed element); below, the `gemm` crate.
const STRIDED_SGEMM_MIN_ROWS: usize = 128;

/// General strided GEMM: `c = alpha * a · b`; all strides in elements.
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
    if m >= STRIDED_SGEMM_MIN_ROWS {
        let a = MatRef {
            data: a,
            rs: a_rs,
            cs: a_cs,
        };
        let b = MatRef {
            data: b,
            rs: b_rs,
            cs: b_cs,
        };
        sgemm::sgemm_strided(m, n, k, c, c_rs, a, b, alpha, false, par);
        return;
    }
    gemm_crate_strided(m, n, k, c, c_rs, a, a_rs, a_cs, b, b_rs, b_cs, alpha, par);
}

/// [`matmul_strided`] through the `gemm` crate (AVX2/FMA kernels; the engine's path for fewer
/// than [`STRIDED_SGEMM_MIN_ROWS`] rows, and the baseline `examples/gemm_bench` compares with).
#[allow(clippy::too_many_arguments)]
pub fn gemm_crate_strided(
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
#[inline(always)]
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
    let norm_row = |(xr, yr): (&[f32], &mut [f32])| layer_norm_row(xr, gamma, beta, yr);
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

/// Lanes of the per-lane accumulators in the vectorised reductions (one zmm).
const LANES: usize = 16;

/// The sum of `x`, accumulated per lane (vectorises; a different rounding order from a serial sum).
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let (chunks, tail) = x.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for c in chunks {
        for i in 0..LANES {
            acc[i] += f(c[i]);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|&v| f(v)).sum::<f32>()
}

simd_dispatch! {
    /// One row of [`layer_norm`] (ε = 1e-5, biased variance, as PyTorch).
    fn layer_norm_row(xr: &[f32], gamma: &[f32], beta: &[f32], yr: &mut [f32]) => layer_norm_row_body
}

#[inline(always)]
fn layer_norm_row_body(xr: &[f32], gamma: &[f32], beta: &[f32], yr: &mut [f32]) {
    let d = gamma.len();
    let mean = lane_sum(xr, |v| v) / d as f32;
    let var = lane_sum(xr, |v| (v - mean) * (v - mean)) / d as f32;
    let inv = 1.0 / (var + 1e-5).sqrt();
    for (((y, &x), &g), &b) in yr[..d].iter_mut().zip(&xr[..d]).zip(gamma).zip(beta) {
        *y = (x - mean) * inv * g + b;
    }
}

simd_dispatch! {
    /// In-place softmax of one row; `-inf` entries (masks) become exactly 0. The maximum and the
    /// sum are kept per lane and reduced at the end, so the loops vectorise.
    pub fn softmax_row(row: &mut [f32]) => softmax_row_lanes
}

#[inline(always)]
fn softmax_row_lanes(row: &mut [f32]) {
    const L: usize = LANES;
    let ninf = f32::NEG_INFINITY;
    let max = lane_max(row);
    if max == ninf {
        return;
    }
    let exp = |v: f32| {
        let e = exp_nonpositive(v - max);
        if v == ninf { 0.0 } else { e }
    };
    let mut sums = [0.0f32; L];
    let (chunks, tail) = row.as_chunks_mut::<L>();
    for c in chunks {
        for i in 0..L {
            let e = exp(c[i]);
            c[i] = e;
            sums[i] += e;
        }
    }
    let mut sum = 0.0f32;
    for v in tail.iter_mut() {
        *v = exp(*v);
        sum += *v;
    }
    sum += sums.iter().sum::<f32>();
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Multi-head attention of `n` queries (rows of `q`, stride `q_rs`, head `h` in columns
/// `h * dh ..`) over `keys` keys (feature `p` of key `j` at `k[p * k_ps + j * k_rs]`: rows with
/// `k_ps` 1, the transposed cache of decoding with `k_rs` 1) and values (rows of `v`, stride
/// `v_rs`), scaled by `scale`.
#[derive(Clone, Copy)]
pub struct AttendArgs<'a> {
    pub q: &'a [f32],
    pub q_rs: usize,
    pub k: &'a [f32],
    pub k_rs: usize,
    pub k_ps: usize,
    pub v: &'a [f32],
    pub v_rs: usize,
    pub n: usize,
    pub keys: usize,
    pub heads: usize,
    pub dh: usize,
    pub scale: f32,
    /// For self-attention: query `i` sees keys `0..=offset + i`.
    pub causal_offset: Option<usize>,
}

simd_dispatch! {
    /// Attention of head `h` for a few queries (decoding), straight from the K/V rows with no
    /// packing. Leaves the probabilities in `scores[n][keys]` (masked keys 0) and the outputs in
    /// `out[n][dh]`.
    pub fn attend_head(a: &AttendArgs<'_>, h: usize, scores: &mut [f32], out: &mut [f32]) => attend_head_body
}

#[inline(always)]
fn attend_head_body(a: &AttendArgs<'_>, h: usize, scores: &mut [f32], out: &mut [f32]) {
    let AttendArgs {
        q,
        q_rs,
        k,
        k_rs,
        k_ps,
        v,
        v_rs,
        n,
        keys,
        dh,
        scale,
        causal_offset: causal,
        ..
    } = *a;
    let (q, k, v) = (&q[h * dh..], &k[h * dh * k_ps..], &v[h * dh..]);
    for i in 0..n {
        let qi = &q[i * q_rs..][..dh];
        let visible = causal.map_or(keys, |offset| (offset + i + 1).min(keys));
        let row = &mut scores[i * keys..][..keys];
        if k_rs == 1 {
            // Transposed keys: one pass a feature over the visible keys, in vector lanes.
            let s = &mut row[..visible];
            s.fill(0.0);
            for (p, &qp) in qi.iter().enumerate() {
                for (s, &kj) in s.iter_mut().zip(&k[p * k_ps..][..visible]) {
                    *s += qp * kj;
                }
            }
            s.iter_mut().for_each(|s| *s *= scale);
        } else {
            // Key rows (`k_ps` 1).
            assert_eq!(k_ps, 1, "keys neither rows nor transposed");
            for (j, s) in row[..visible].iter_mut().enumerate() {
                *s = scale * dot(qi, &k[j * k_rs..][..dh]);
            }
        }
        row[visible..].fill(f32::NEG_INFINITY);
        softmax_row_lanes(row);
        let o = &mut out[i * dh..][..dh];
        o.fill(0.0);
        for (j, &pj) in row[..visible].iter().enumerate() {
            for (o, &vj) in o.iter_mut().zip(&v[j * v_rs..][..dh]) {
                *o += pj * vj;
            }
        }
    }
}

simd_dispatch! {
    /// `ln Σ eˣ` over `x` (f64 result, per-lane f32 sums of exponentials taken from the maximum);
    /// `-inf` entries (masks) add nothing; `-inf` when every entry is.
    pub fn log_sum_exp(x: &[f32]) -> f64 => log_sum_exp_body
}

#[inline(always)]
fn log_sum_exp_body(x: &[f32]) -> f64 {
    let max = lane_max(x);
    if max == f32::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let sum = lane_sum(x, |v| {
        let e = exp_nonpositive(v - max);
        if v == f32::NEG_INFINITY { 0.0 } else { e }
    });
    max as f64 + (sum as f64).ln()
}

/// The maximum of `x` (`-inf` when empty), per lane so it vectorises.
#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let greater = |a: f32, b: f32| if b > a { b } else { a };
    let (chunks, tail) = x.as_chunks::<LANES>();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for i in 0..LANES {
            lanes[i] = greater(lanes[i], c[i]);
        }
    }
    lanes
        .into_iter()
        .chain(tail.iter().copied())
        .fold(f32::NEG_INFINITY, greater)
}

/// Log-softmax of `logits` into `out`.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    let lse = log_sum_exp(logits) as f32;
    for (o, &v) in out.iter_mut().zip(logits) {
        *o = v - lse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_naive_product() {
        let (rows, n_in, n_out) = (37, 45, 70);
        let w: Vec<f32> = (0..n_out * n_in)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5)
            .collect();
        let b: Vec<f32> = (0..n_out).map(|i| i as f32 * 0.01).collect();
        let x: Vec<f32> = (0..rows * n_in)
            .map(|i| ((i * 104_729 % 997) as f32 / 997.0) - 0.5)
            .collect();
        let lin = Linear::new(w.clone(), Some(b.clone()), n_in, n_out);
        let naive = |r: usize, o: usize| -> f32 {
            (0..n_in)
                .map(|i| x[r * n_in + i] * w[o * n_in + i])
                .sum::<f32>()
                + b[o]
        };
        for par in [Parallelism::None, Parallelism::Rayon(2)] {
            let mut out = vec![0.0f32; rows * n_out];
            lin.forward(&x, rows, &mut out, par);
            for r in 0..rows {
                for o in 0..n_out {
                    assert!((out[r * n_out + o] - naive(r, o)).abs() < 1e-5, "({r},{o})");
                }
            }
            let mut acc = vec![1.0f32; rows * n_out];
            lin.forward_accumulate(&x, rows, &mut acc, par);
            for (a, o) in acc.iter().zip(&out) {
                assert!((a - 1.0 - o).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn low_precision_linear_matches_naive_product_for_few_and_many_rows() {
        let (n_in, n_out) = (45, 70);
        // f16-exact weights: the f16 layer must equal the f32 one up to summation order.
        let w: Vec<f32> = (0..n_out * n_in)
            .map(|i| half::f16::from_f32(((i * 7919 % 1013) as f32 / 1013.0) - 0.5).to_f32())
            .collect();
        let b: Vec<f32> = (0..n_out).map(|i| i as f32 * 0.01).collect();
        let low = Linear::new_low(MatLow::lossless(&w, n_out, n_in).unwrap(), Some(b.clone()));
        assert!(low.is_low());
        for rows in [1, LOW_MAX_ROWS, LOW_MAX_ROWS + 21] {
            let x: Vec<f32> = (0..rows * n_in).map(|i| (i as f32 * 0.61).cos()).collect();
            for par in [Parallelism::None, Parallelism::Rayon(2)] {
                let mut out = vec![1.0f32; rows * n_out];
                low.forward_accumulate(&x, rows, &mut out, par);
                for r in 0..rows {
                    for o in 0..n_out {
                        let want = 1.0
                            + b[o]
                            + (0..n_in)
                                .map(|i| x[r * n_in + i] * w[o * n_in + i])
                                .sum::<f32>();
                        assert!(
                            (out[r * n_out + o] - want).abs() < 1e-4,
                            "rows {rows} ({r},{o})"
                        );
                    }
                }
            }
        }
    }

    /// `ComputeType::Int8Bf16`'s decoder layer: steps (few rows) stream the int8 weights, or
    /// with `int8` false (live) the exact ones, bit for bit as the int8 and f16 layers do;
    /// prompts (many rows) run the bf16 GEMM, within bf16 rounding of the exact product.
    #[test]
    fn decoder_int8_layer_picks_int8_exact_and_bf16_products() {
        let (n_in, n_out) = (96, 80);
        let w: Vec<f32> = (0..n_out * n_in)
            .map(|i| half::f16::from_f32(((i * 7919 % 1013) as f32 / 1013.0) - 0.5).to_f32())
            .collect();
        let b: Vec<f32> = (0..n_out).map(|i| i as f32 * 0.01).collect();
        let int8 = || MatLow::int8(&w, n_out, n_in).unwrap();
        let dec = Linear::new_decoder_int8(int8(), &w, Some(b.clone()));
        assert!(dec.is_decoder_int8() && dec.is_low());
        let as_int8 = Linear::new_low(int8(), Some(b.clone()));
        let as_f16 = Linear::new_low(MatLow::lossless(&w, n_out, n_in).unwrap(), Some(b.clone()));
        let par = Parallelism::Rayon(2);
        for rows in [1, 5, LOW_MAX_ROWS, LOW_MAX_ROWS + 19] {
            let x: Vec<f32> = (0..rows * n_in).map(|i| (i as f32 * 0.61).cos()).collect();
            let run = |l: &Linear, int8: bool| {
                let mut out = vec![0.0f32; rows * n_out];
                l.product(&x, rows, &mut out, Output::Set, int8, par);
                out
            };
            if rows <= LOW_MAX_ROWS {
                assert_eq!(run(&dec, true), run(&as_int8, true), "rows {rows}, int8");
                assert_eq!(run(&dec, false), run(&as_f16, true), "rows {rows}, exact");
                assert_ne!(
                    run(&dec, true),
                    run(&dec, false),
                    "rows {rows}: int8 is not exact"
                );
            } else {
                for int8 in [true, false] {
                    let got = run(&dec, int8);
                    for r in 0..rows {
                        for o in 0..n_out {
                            let exact = b[o]
                                + (0..n_in)
                                    .map(|i| x[r * n_in + i] * w[o * n_in + i])
                                    .sum::<f32>();
                            let bound = 0.01
                                * (0..n_in)
                                    .map(|i| (x[r * n_in + i] * w[o * n_in + i]).abs())
                                    .sum::<f32>();
                            let g = got[r * n_out + o];
                            assert!(
                                (g - exact).abs() <= bound,
                                "rows {rows} ({r},{o}): {g} vs {exact}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Naive attention of head `h` for query `i`: (probabilities over all keys, output).
    fn naive_attention(a: &AttendArgs<'_>, h: usize, i: usize) -> (Vec<f32>, Vec<f32>) {
        let c = h * a.dh;
        let visible = a.causal_offset.map_or(a.keys, |o| (o + i + 1).min(a.keys));
        let logits: Vec<f64> = (0..visible)
            .map(|j| {
                (0..a.dh)
                    .map(|p| {
                        a.q[i * a.q_rs + c + p] as f64 * a.k[j * a.k_rs + (c + p) * a.k_ps] as f64
                    })
                    .sum::<f64>()
                    * a.scale as f64
            })
            .collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = logits.iter().map(|l| (l - max).exp()).sum();
        let mut probs: Vec<f32> = logits
            .iter()
            .map(|l| ((l - max).exp() / sum) as f32)
            .collect();
        probs.resize(a.keys, 0.0);
        let out = (0..a.dh)
            .map(|p| {
                (0..visible)
                    .map(|j| probs[j] as f64 * a.v[j * a.v_rs + c + p] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        (probs, out)
    }

    #[test]
    fn attend_head_matches_naive_attention() {
        let (heads, dh, keys, n) = (3, 20, 37, 4);
        let d = heads * dh;
        let q: Vec<f32> = (0..n * 3 * d).map(|i| (i as f32 * 0.71).sin()).collect();
        let kv: Vec<f32> = (0..keys * 2 * d).map(|i| (i as f32 * 0.37).cos()).collect();
        // The same keys transposed, `[d][keys + 3]` (the decoder's cache layout).
        let stride = keys + 3;
        let mut kt = vec![f32::NAN; d * stride];
        for j in 0..keys {
            for p in 0..d {
                kt[p * stride + j] = kv[j * 2 * d + p];
            }
        }
        let layouts: [(&[f32], usize, usize); 2] = [(&kv, 2 * d, 1), (&kt, 1, stride)];
        for ((k, k_rs, k_ps), causal_offset) in layouts
            .into_iter()
            .flat_map(|l| [None, Some(5)].map(|c| (l, c)))
        {
            let a = AttendArgs {
                q: &q,
                q_rs: 3 * d,
                k,
                k_rs,
                k_ps,
                v: &kv[d..],
                v_rs: 2 * d,
                n,
                keys,
                heads,
                dh,
                scale: 0.3,
                causal_offset,
            };
            for h in 0..heads {
                let (mut scores, mut out) = (vec![9.0; n * keys], vec![9.0; n * dh]);
                attend_head(&a, h, &mut scores, &mut out);
                for i in 0..n {
                    let (probs, want) = naive_attention(&a, h, i);
                    for (g, w) in scores[i * keys..(i + 1) * keys].iter().zip(&probs) {
                        assert!(
                            (g - w).abs() < 1e-5,
                            "{causal_offset:?} h {h} i {i}: p {g} vs {w}"
                        );
                    }
                    for (g, w) in out[i * dh..(i + 1) * dh].iter().zip(&want) {
                        assert!(
                            (g - w).abs() < 1e-4,
                            "{causal_offset:?} h {h} i {i}: {g} vs {w}"
                        );
                    }
                }
            }
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
