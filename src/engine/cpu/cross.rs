//! Decoder cross-attention over one window's encoder output, laid out for decoding.
//!
//! Every decoded token attends, in every layer and head, over all `n_audio_ctx` (1500) encoder
//! positions, so the cross-attention K/V are the decoder's largest per-token read after its
//! weights (base: 37 MB per token in f32). They are computed once per window and stored per
//! head as `Kᵀ [dh][keys]` (in contiguous tiles of 32 keys, `kt_index`) and `V [keys][dh]`:
//! scores for a query are then a sum of `dh` scaled rows of `Kᵀ` (vector FMAs along the keys, no
//! horizontal reduction per key, both read front to back) and the output a
//! sum of `keys` scaled rows of `V`. Stored in f32, in f16 (half the bytes, rounding every
//! value to 11 significant bits), or in int8 (a quarter: `K` scaled per feature, `V` per key,
//! the scales folded into the query and the probabilities).
//!
//! Calls of many queries at once (a prompt: the previous text, or a live buffer's words; the
//! word-alignment pass) are compute-bound instead: with a tiled backend (AMX, or `vdpbf16ps`;
//! the decoder takes one where its prompts already run in bf16), each head's `Kᵀ` and `V` are
//! also packed for [`amx::attention`] and such calls run there (Q, K, V and the probabilities
//! rounded to bf16), except for heads whose probabilities the caller reads.

use half::f16;
use rayon::prelude::*;

use super::amx::{self, Backend, PackedBf16};
use super::resident;
use super::sgemm::{Isa, MatRef, current_isa};

/// Precision of the stored cross-attention K and V.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvPrecision {
    F32,
    F16,
    /// int8 with a scale per feature of `K` (per head, over the window's keys: K's features
    /// differ in range, its keys less) and per key of `V` (over the head's features): a quarter
    /// of f32's bytes. The scales fold into the query and the probabilities.
    I8,
}

/// Most queries one pass of the scores kernel takes (its accumulators stay in registers).
const SCORE_GROUP: usize = 8;
/// Most queries one pass of the weighted-sum kernel takes.
const VALUE_GROUP: usize = 4;
/// Keys per step of the AVX-512 scores kernel (two zmm); `Kᵀ` rows are padded to a multiple.
const KEY_STEP: usize = 32;
/// Queries from which a call runs the bf16 tile attention, where there is one.
pub const TILED_MIN_QUERIES: usize = 16;

/// Where `Kᵀ[p][j]` (feature `p` of key `j`) sits in a head's `Kᵀ`: blocks of [`KEY_STEP`] keys,
/// each a contiguous `[dh][KEY_STEP]` tile, so the scores kernel reads every head's `Kᵀ` front
/// to back (row-major `[dh][keys]` made it read `dh` streams 3 KB apart: base spent 2.5× as
/// long in it as in the equally large V).
#[inline(always)]
fn kt_index(p: usize, j: usize, dh: usize) -> usize {
    (j / KEY_STEP) * dh * KEY_STEP + p * KEY_STEP + j % KEY_STEP
}

/// Cross-attention K/V of one layer for the current window.
pub struct CrossKv {
    heads: usize,
    dh: usize,
    keys: usize,
    /// Keys of `Kᵀ`: `keys` rounded up to whole tiles of [`KEY_STEP`], zero padded.
    keys_pad: usize,
    store: Store,
    /// Per head `Kᵀ` (`dh × keys`) and `V` (`keys × dh`) packed for [`amx::attention`]; empty
    /// without bf16 tiles.
    tiled: Vec<(PackedBf16, PackedBf16)>,
}

enum Store {
    F32 {
        kt: Vec<f32>,
        v: Vec<f32>,
    },
    F16 {
        kt: Vec<f16>,
        v: Vec<f16>,
    },
    I8 {
        kt: Vec<i8>,
        v: Vec<i8>,
        /// `[heads][dh]`: `K[j][p] ≈ k_scale[p] · kt[p][j]`.
        k_scale: Vec<f32>,
        /// `[heads][keys]`: `V[j][c] ≈ v_scale[j] · v[j][c]`.
        v_scale: Vec<f32>,
    },
}

/// Most features per head the int8 store's scaled-query buffer holds (Whisper's heads have 64).
const MAX_DH: usize = 128;

impl CrossKv {
    /// Storage for `heads` heads of size `dh` over `keys` positions.
    pub fn new(heads: usize, dh: usize, keys: usize, precision: KvPrecision) -> Self {
        Self::with_tiles(heads, dh, keys, precision, None)
    }

    /// [`new`](Self::new) with the bf16 tile copy packed for `tiles` (a tiled backend), or
    /// none.
    pub fn with_tiles(
        heads: usize,
        dh: usize,
        keys: usize,
        precision: KvPrecision,
        tiles: Option<Backend>,
    ) -> Self {
        let keys_pad = keys.div_ceil(KEY_STEP) * KEY_STEP;
        let (nk, nv) = (heads * dh * keys_pad, heads * keys * dh);
        let store = match precision {
            KvPrecision::F32 => Store::F32 {
                kt: resident(nk, 0.0),
                v: resident(nv, 0.0),
            },
            KvPrecision::F16 => Store::F16 {
                kt: resident(nk, f16::ZERO),
                v: resident(nv, f16::ZERO),
            },
            KvPrecision::I8 => {
                assert!(dh <= MAX_DH, "int8 cross K/V: head size {dh} over {MAX_DH}");
                Store::I8 {
                    kt: resident(nk, 0),
                    v: resident(nv, 0),
                    k_scale: vec![1.0; heads * dh],
                    v_scale: vec![1.0; heads * keys],
                }
            }
        };
        let tiled = tiles
            .filter(|&b| b != Backend::Emulated)
            .map(|b| {
                (0..heads)
                    .map(|_| {
                        (
                            PackedBf16::for_shape(b, dh, keys),
                            PackedBf16::for_shape(b, keys, dh),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            heads,
            dh,
            keys,
            keys_pad,
            store,
            tiled,
        }
    }

    /// Takes the window's K/V from `kv` (`[keys][2d]`: K in the first `d` columns, V in the next).
    pub fn fill(&mut self, kv: &[f32]) {
        let (heads, dh, keys, keys_pad) = (self.heads, self.dh, self.keys, self.keys_pad);
        let d = heads * dh;
        assert_eq!(kv.len(), keys * 2 * d, "cross K/V shape");
        fn fill_as<E: KvConvert>(
            kv: &[f32],
            kt: &mut [E],
            v: &mut [E],
            (heads, dh, keys, keys_pad): (usize, usize, usize, usize),
        ) {
            let d = heads * dh;
            kt.par_chunks_mut(dh * keys_pad)
                .zip(v.par_chunks_mut(keys * dh))
                .enumerate()
                .for_each(|(h, (kt, v))| {
                    // A tile of `Kᵀ` (`[dh][KEY_STEP]`, contiguous) gathered in f32, then
                    // converted in one slice call (vector conversions, not one call a value).
                    let mut tile = vec![0.0f32; dh * KEY_STEP];
                    for (jb, dst) in kt.chunks_exact_mut(dh * KEY_STEP).enumerate() {
                        tile.fill(0.0);
                        let j0 = jb * KEY_STEP;
                        for jj in 0..KEY_STEP.min(keys - j0) {
                            let row = &kv[(j0 + jj) * 2 * d + h * dh..][..dh];
                            for (p, &x) in row.iter().enumerate() {
                                tile[p * KEY_STEP + jj] = x;
                            }
                        }
                        E::convert(&tile, dst);
                    }
                    for (j, dst) in v.chunks_exact_mut(dh).enumerate() {
                        E::convert(&kv[j * 2 * d + d + h * dh..][..dh], dst);
                    }
                });
        }
        let shape = (heads, dh, keys, keys_pad);
        match &mut self.store {
            Store::F32 { kt, v } => fill_as(kv, kt, v, shape),
            Store::F16 { kt, v } => fill_as(kv, kt, v, shape),
            Store::I8 {
                kt,
                v,
                k_scale,
                v_scale,
            } => fill_i8(kv, kt, v, k_scale, v_scale, shape),
        }
        self.tiled
            .par_iter_mut()
            .enumerate()
            .for_each(|(h, (kt, v))| {
                let k = MatRef {
                    data: &kv[h * dh..],
                    rs: 1,
                    cs: 2 * d,
                };
                kt.pack_from(k, dh, keys);
                let vm = MatRef {
                    data: &kv[d + h * dh..],
                    rs: 2 * d,
                    cs: 1,
                };
                v.pack_from(vm, keys, dh);
            });
    }

    /// Attention of `n` queries (rows of `q`, stride `q_rs`, head `h` in columns `h * dh..`) over
    /// the window, scaled by `scale`. Leaves the outputs in `out[heads][n][dh]` and, for the
    /// heads in the bit set `need` (bit `h`; `u64::MAX`: all), the probabilities in
    /// `scores[heads][n][keys]`; other heads' rows of `scores` may be left as they were (a call
    /// of at least [`TILED_MIN_QUERIES`] queries runs them on the bf16 tiles). Heads run in
    /// parallel on the current rayon pool when `parallel`.
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        &self,
        q: &[f32],
        q_rs: usize,
        n: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
        parallel: bool,
        need: u64,
    ) {
        let (heads, dh, keys) = (self.heads, self.dh, self.keys);
        assert!(
            n >= 1 && q.len() >= (n - 1) * q_rs + heads * dh,
            "query shape"
        );
        let isa = current_isa();
        let scores = &mut scores[..heads * n * keys];
        let out = &mut out[..heads * n * dh];
        let tiled = n >= TILED_MIN_QUERIES && !self.tiled.is_empty();
        let run = |h: usize, s: &mut [f32], o: &mut [f32]| {
            let q = &q[h * dh..];
            let needed = need == u64::MAX || (h < 64 && need & (1 << h) != 0);
            if tiled && !needed {
                let (kt, v) = &self.tiled[h];
                let qm = MatRef {
                    data: q,
                    rs: q_rs,
                    cs: 1,
                };
                amx::attention(qm, n, kt, v, scale, o, dh);
                return;
            }
            match &self.store {
                Store::F32 { kt, v } => self.head(isa, kt, v, None, h, q, q_rs, n, scale, s, o),
                Store::F16 { kt, v } => self.head(isa, kt, v, None, h, q, q_rs, n, scale, s, o),
                Store::I8 {
                    kt,
                    v,
                    k_scale,
                    v_scale,
                } => {
                    let (dh, keys) = (self.dh, self.keys);
                    let scales = (&k_scale[h * dh..][..dh], &v_scale[h * keys..][..keys]);
                    self.head(isa, kt, v, Some(scales), h, q, q_rs, n, scale, s, o)
                }
            }
        };
        if parallel && heads > 1 {
            scores
                .par_chunks_mut(n * keys)
                .zip(out.par_chunks_mut(n * dh))
                .enumerate()
                .for_each(|(h, (s, o))| run(h, s, o));
        } else {
            for (h, (s, o)) in scores
                .chunks_mut(n * keys)
                .zip(out.chunks_mut(n * dh))
                .enumerate()
            {
                run(h, s, o);
            }
        }
    }

    /// One head: `scores[n][keys]`, `out[n][dh]`; `q` starts at the head's first column.
    /// `scales`: the int8 store's `K` feature and `V` key scales of this head.
    #[allow(clippy::too_many_arguments)]
    fn head<E: KvElem>(
        &self,
        isa: Isa,
        kt: &[E],
        v: &[E],
        scales: Option<(&[f32], &[f32])>,
        h: usize,
        q: &[f32],
        q_rs: usize,
        n: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let (dh, keys, keys_pad) = (self.dh, self.keys, self.keys_pad);
        let kt = &kt[h * dh * keys_pad..(h + 1) * dh * keys_pad];
        let v = &v[h * keys * dh..(h + 1) * keys * dh];
        // With K's feature scales, the queries scaled by them (a group at a time, on the stack).
        let mut scaled = scales.map(|(k_scale, _)| (k_scale, [0.0f32; SCORE_GROUP * MAX_DH]));
        let mut i = 0;
        while i < n {
            let g = SCORE_GROUP.min(n - i);
            let s = &mut scores[i * keys..(i + g) * keys];
            let (qg, q_rs) = match scaled.as_mut() {
                Some((k_scale, scaled)) => {
                    for r in 0..g {
                        let row = &q[(i + r) * q_rs..][..dh];
                        for ((d, &x), &ks) in scaled[r * dh..][..dh]
                            .iter_mut()
                            .zip(row)
                            .zip(k_scale.iter())
                        {
                            *d = x * ks;
                        }
                    }
                    (&scaled[..], dh)
                }
                None => (&q[i * q_rs..], q_rs),
            };
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 {
                // SAFETY: AVX-512F is present (`isa` comes from detection); shapes as asserted
                // in `attend` and by construction of `kt`.
                unsafe { avx512::scores(kt, keys_pad, keys, dh, qg, q_rs, g, scale, s) };
                i += g;
                continue;
            }
            let _ = isa;
            scores_portable(kt, keys, dh, qg, q_rs, g, scale, s);
            i += g;
        }
        for row in scores[..n * keys].chunks_exact_mut(keys) {
            super::ops::softmax_row(row);
        }
        let v_scale = scales.map(|(_, vs)| vs);
        let mut i = 0;
        while i < n {
            let g = VALUE_GROUP.min(n - i);
            let p = &scores[i * keys..(i + g) * keys];
            let o = &mut out[i * dh..(i + g) * dh];
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 && dh == 64 {
                // SAFETY: as above; `v` is `[keys][64]`, `v_scale` (when given) `[keys]`.
                unsafe { avx512::values64(v, keys, p, v_scale, g, o) };
                i += g;
                continue;
            }
            values_portable(v, keys, dh, p, v_scale, g, o);
            i += g;
        }
    }
}

/// [`CrossKv::fill`] for the int8 store: per head, `K`'s scale per feature (its largest
/// magnitude over the keys / 127) and `V`'s per key (over the features), values rounded to the
/// nearest step.
fn fill_i8(
    kv: &[f32],
    kt: &mut [i8],
    v: &mut [i8],
    k_scale: &mut [f32],
    v_scale: &mut [f32],
    (heads, dh, keys, keys_pad): (usize, usize, usize, usize),
) {
    let d = heads * dh;
    let step = |max: f32| if max > 0.0 { max / 127.0 } else { 1.0 };
    // Round to nearest (ties to even) by adding and taking away 1.5 · 2^23, exact for |x| ≤ 2^22:
    // plain arithmetic the compiler vectorises, where `round_ties_even` is a library call on
    // x86-64's baseline (this runs on 2 × 1500 × d values a window and layer).
    const ROUND: f32 = 12_582_912.0;
    let quantise = |x: f32| ((x + ROUND) - ROUND) as i8;
    kt.par_chunks_mut(dh * keys_pad)
        .zip(v.par_chunks_mut(keys * dh))
        .zip(k_scale.par_chunks_mut(dh))
        .zip(v_scale.par_chunks_mut(keys))
        .enumerate()
        .for_each(|(h, (((kt, v), ks), vs))| {
            let key = |j: usize| &kv[j * 2 * d + h * dh..][..dh];
            ks.fill(0.0);
            for j in 0..keys {
                for (m, &x) in ks.iter_mut().zip(key(j)) {
                    *m = m.max(x.abs());
                }
            }
            let mut inv = [0.0f32; MAX_DH];
            for (s, i) in ks.iter_mut().zip(inv.iter_mut()) {
                *s = step(*s);
                *i = 1.0 / *s;
            }
            // A tile of `Kᵀ` (`[dh][KEY_STEP]`, contiguous) gathered scaled, then rounded.
            let mut tile = [0.0f32; MAX_DH * KEY_STEP];
            let tile = &mut tile[..dh * KEY_STEP];
            for (jb, dst) in kt.chunks_exact_mut(dh * KEY_STEP).enumerate() {
                tile.fill(0.0);
                let j0 = jb * KEY_STEP;
                for jj in 0..KEY_STEP.min(keys - j0) {
                    for (p, (&x, &i)) in key(j0 + jj).iter().zip(&inv).enumerate() {
                        tile[p * KEY_STEP + jj] = x * i;
                    }
                }
                for (o, &x) in dst.iter_mut().zip(tile.iter()) {
                    *o = quantise(x);
                }
            }
            for (j, (dst, s)) in v.chunks_exact_mut(dh).zip(vs.iter_mut()).enumerate() {
                let row = &kv[j * 2 * d + d + h * dh..][..dh];
                *s = step(row.iter().fold(0.0f32, |m, &x| m.max(x.abs())));
                let inv = 1.0 / *s;
                for (o, &x) in dst.iter_mut().zip(row) {
                    *o = quantise(x * inv);
                }
            }
        });
}

/// An element type of the stored K/V.
trait KvElem: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    /// 16 consecutive values as f32 (AVX-512F).
    ///
    /// # Safety
    /// 16 values readable at `p`; only inlined into functions with AVX-512F enabled.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

/// An element type stored without scales (the int8 store has its own fill, [`fill_i8`]).
trait KvConvert: KvElem {
    /// `dst[i] = src[i]` rounded to this type, vectorised where the type allows.
    fn convert(src: &[f32], dst: &mut [Self]);
}

impl KvConvert for f32 {
    fn convert(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
}

impl KvConvert for f16 {
    fn convert(src: &[f32], dst: &mut [Self]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
}

impl KvElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        // SAFETY: forwarded to the caller.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

impl KvElem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: forwarded to the caller.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
}

impl KvElem for i8 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: forwarded to the caller.
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast()))) }
    }
}

/// `s[i][j] = scale · Σ_p q[i][p] · Kᵀ[p][j]` for `i < g`, `j < keys`.
#[allow(clippy::too_many_arguments)]
fn scores_portable<E: KvElem>(
    kt: &[E],
    keys: usize,
    dh: usize,
    q: &[f32],
    q_rs: usize,
    g: usize,
    scale: f32,
    s: &mut [f32],
) {
    for i in 0..g {
        let qi = &q[i * q_rs..][..dh];
        let row = &mut s[i * keys..(i + 1) * keys];
        row.fill(0.0);
        for (p, &qp) in qi.iter().enumerate() {
            for (j, o) in row.iter_mut().enumerate() {
                *o += qp * kt[kt_index(p, j, dh)].to_f32();
            }
        }
        row.iter_mut().for_each(|x| *x *= scale);
    }
}

/// `o[i][c] = Σ_j p[i][j] · s[j] · V[j][c]` for `i < g` (`s`: the int8 store's key scales, else
/// 1).
fn values_portable<E: KvElem>(
    v: &[E],
    keys: usize,
    dh: usize,
    p: &[f32],
    v_scale: Option<&[f32]>,
    g: usize,
    o: &mut [f32],
) {
    for i in 0..g {
        let oi = &mut o[i * dh..(i + 1) * dh];
        oi.fill(0.0);
        for (j, &pj) in p[i * keys..(i + 1) * keys].iter().enumerate() {
            let pj = v_scale.map_or(pj, |s| pj * s[j]);
            for (x, e) in oi.iter_mut().zip(&v[j * dh..(j + 1) * dh]) {
                *x += pj * e.to_f32();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{KEY_STEP, KvElem, SCORE_GROUP, VALUE_GROUP, kt_index};

    /// [`super::scores_portable`] with `g ≤ SCORE_GROUP` queries held in registers: per step of
    /// 32 keys, `2g` accumulators gather `dh` broadcast-query × key-row FMAs.
    ///
    /// # Safety
    /// AVX-512F present; `kt` holds `dh × keys_pad` values (`keys_pad` a multiple of
    /// [`KEY_STEP`]) laid out by [`kt_index`];
    /// `q` rows `0..g` (stride `q_rs`) hold `dh` values; `s` holds `g · keys`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn scores<E: KvElem>(
        kt: &[E],
        keys_pad: usize,
        keys: usize,
        dh: usize,
        q: &[f32],
        q_rs: usize,
        g: usize,
        scale: f32,
        s: &mut [f32],
    ) {
        debug_assert!(kt.len() >= dh * keys_pad && keys_pad.is_multiple_of(KEY_STEP));
        debug_assert!(s.len() >= g * keys && g <= SCORE_GROUP);
        // SAFETY: forwarded.
        unsafe {
            match g {
                1 => scores_n::<E, 1>(kt, keys, dh, q, q_rs, scale, s),
                2 => scores_n::<E, 2>(kt, keys, dh, q, q_rs, scale, s),
                3 => scores_n::<E, 3>(kt, keys, dh, q, q_rs, scale, s),
                4 => scores_n::<E, 4>(kt, keys, dh, q, q_rs, scale, s),
                5 => scores_n::<E, 5>(kt, keys, dh, q, q_rs, scale, s),
                6 => scores_n::<E, 6>(kt, keys, dh, q, q_rs, scale, s),
                7 => scores_n::<E, 7>(kt, keys, dh, q, q_rs, scale, s),
                _ => scores_n::<E, 8>(kt, keys, dh, q, q_rs, scale, s),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn scores_n<E: KvElem, const G: usize>(
        kt: &[E],
        keys: usize,
        dh: usize,
        q: &[f32],
        q_rs: usize,
        scale: f32,
        s: &mut [f32],
    ) {
        let (kt, q, s) = (kt.as_ptr(), q.as_ptr(), s.as_mut_ptr());
        let vscale = _mm512_set1_ps(scale);
        let mut j = 0;
        while j < keys {
            let mut a0 = [_mm512_setzero_ps(); G];
            let mut a1 = [_mm512_setzero_ps(); G];
            for p in 0..dh {
                // SAFETY: j + 32 ≤ keys_pad and p < dh: inside `kt`; q[i][p] inside `q`.
                unsafe {
                    let row = kt.add(kt_index(p, j, dh));
                    let (k0, k1) = (E::load16(row), E::load16(row.add(16)));
                    for i in 0..G {
                        let qb = _mm512_set1_ps(*q.add(i * q_rs + p));
                        a0[i] = _mm512_fmadd_ps(qb, k0, a0[i]);
                        a1[i] = _mm512_fmadd_ps(qb, k1, a1[i]);
                    }
                }
            }
            for (half, acc) in [(0usize, &a0), (16, &a1)] {
                let start = j + half;
                if start >= keys {
                    break;
                }
                let count = (keys - start).min(16);
                let mask: __mmask16 = if count == 16 {
                    0xffff
                } else {
                    (1u16 << count) - 1
                };
                for (i, &a) in acc.iter().enumerate() {
                    // SAFETY: start + count ≤ keys: inside row i of `s`.
                    unsafe {
                        _mm512_mask_storeu_ps(
                            s.add(i * keys + start),
                            mask,
                            _mm512_mul_ps(a, vscale),
                        )
                    };
                }
            }
            j += KEY_STEP;
        }
    }

    /// [`super::values_portable`] for `dh = 64`, `g ≤ VALUE_GROUP` queries: per key, four zmm
    /// of `V` feed `4g` accumulators.
    ///
    /// # Safety
    /// AVX-512F present; `v` is `[keys][64]`, `p` holds `g · keys`, `v_scale` (when given)
    /// `keys`, `o` holds `g · 64`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn values64<E: KvElem>(
        v: &[E],
        keys: usize,
        p: &[f32],
        v_scale: Option<&[f32]>,
        g: usize,
        o: &mut [f32],
    ) {
        debug_assert!(v.len() >= keys * 64 && p.len() >= g * keys && o.len() >= g * 64);
        debug_assert!(g <= VALUE_GROUP && v_scale.is_none_or(|s| s.len() >= keys));
        // SAFETY: forwarded.
        unsafe {
            match (g, v_scale) {
                (1, None) => values_n::<E, 1, false>(v, keys, p, &[], o),
                (2, None) => values_n::<E, 2, false>(v, keys, p, &[], o),
                (3, None) => values_n::<E, 3, false>(v, keys, p, &[], o),
                (_, None) => values_n::<E, 4, false>(v, keys, p, &[], o),
                (1, Some(s)) => values_n::<E, 1, true>(v, keys, p, s, o),
                (2, Some(s)) => values_n::<E, 2, true>(v, keys, p, s, o),
                (3, Some(s)) => values_n::<E, 3, true>(v, keys, p, s, o),
                (_, Some(s)) => values_n::<E, 4, true>(v, keys, p, s, o),
            }
        }
    }

    /// `SCALED`: each probability times its key's scale (`s`, the int8 store's).
    #[target_feature(enable = "avx512f")]
    unsafe fn values_n<E: KvElem, const G: usize, const SCALED: bool>(
        v: &[E],
        keys: usize,
        p: &[f32],
        s: &[f32],
        o: &mut [f32],
    ) {
        let (v, p, s, o) = (v.as_ptr(), p.as_ptr(), s.as_ptr(), o.as_mut_ptr());
        let mut acc = [[_mm512_setzero_ps(); 4]; G];
        for j in 0..keys {
            // SAFETY: j < keys: row j of `v`, p[i][j] and (when SCALED) s[j] exist.
            unsafe {
                let row = v.add(j * 64);
                let r = [
                    E::load16(row),
                    E::load16(row.add(16)),
                    E::load16(row.add(32)),
                    E::load16(row.add(48)),
                ];
                let sj = if SCALED { *s.add(j) } else { 1.0 };
                for (i, a) in acc.iter_mut().enumerate() {
                    let pb = _mm512_set1_ps(if SCALED {
                        *p.add(i * keys + j) * sj
                    } else {
                        *p.add(i * keys + j)
                    });
                    for c in 0..4 {
                        a[c] = _mm512_fmadd_ps(pb, r[c], a[c]);
                    }
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (c, &x) in a.iter().enumerate() {
                // SAFETY: i < g, c < 4: inside `o`.
                unsafe { _mm512_storeu_ps(o.add(i * 64 + c * 16), x) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::sgemm::with_isa;

    /// Naive attention from the `[keys][2d]` K/V, in f64.
    fn naive(kv: &[f32], q: &[f32], n: usize, heads: usize, dh: usize, keys: usize) -> Vec<f64> {
        let d = heads * dh;
        let scale = 1.0 / (dh as f64).sqrt();
        let mut out = vec![0.0f64; heads * n * dh];
        for h in 0..heads {
            for i in 0..n {
                let s: Vec<f64> = (0..keys)
                    .map(|j| {
                        (0..dh)
                            .map(|p| {
                                q[i * d + h * dh + p] as f64 * kv[j * 2 * d + h * dh + p] as f64
                            })
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..dh {
                    out[(h * n + i) * dh + c] = (0..keys)
                        .map(|j| e[j] / sum * kv[j * 2 * d + d + h * dh + c] as f64)
                        .sum();
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_attention_on_every_path() {
        let tiles = match Backend::detected() {
            Backend::Emulated => None,
            b => Some(b),
        };
        // Key counts around the 16/32-key steps, query groups past the kernels' group sizes, and
        // calls from `TILED_MIN_QUERIES` queries (the bf16 tiles, where the CPU has them).
        for (heads, dh, keys, n) in [
            (2, 64, 1500, 1),
            (3, 64, 45, 11),
            (1, 16, 33, 3),
            (2, 64, 17, 5),
            (2, 64, 1500, 40),
            (3, 64, 45, TILED_MIN_QUERIES),
        ] {
            let d = heads * dh;
            let kv: Vec<f32> = (0..keys * 2 * d).map(|i| (i as f32 * 0.37).sin()).collect();
            let q: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.11).cos()).collect();
            let want = naive(&kv, &q, n, heads, dh, keys);
            for precision in [KvPrecision::F32, KvPrecision::F16, KvPrecision::I8] {
                for tiles in [None, tiles] {
                    let mut c = CrossKv::with_tiles(heads, dh, keys, precision, tiles);
                    c.fill(&kv);
                    for isa in [Isa::Avx512, Isa::Portable] {
                        if !isa.supported() {
                            continue;
                        }
                        for (parallel, need) in [(false, u64::MAX), (true, u64::MAX), (true, 0b10)]
                        {
                            let tiled = |h: usize| {
                                tiles.is_some() && n >= TILED_MIN_QUERIES && need & (1 << h) == 0
                            };
                            let mut scores = vec![f32::NAN; heads * n * keys];
                            let mut out = vec![f32::NAN; heads * n * dh];
                            with_isa(isa, || {
                                c.attend(
                                    &q,
                                    d,
                                    n,
                                    1.0 / (dh as f32).sqrt(),
                                    &mut scores,
                                    &mut out,
                                    parallel,
                                    need,
                                )
                            });
                            for (k, (&got, &w)) in out.iter().zip(&want).enumerate() {
                                let h = k / (n * dh);
                                let tol = if tiled(h) || precision == KvPrecision::I8 {
                                    2e-2
                                } else if precision == KvPrecision::F32 {
                                    1e-4
                                } else {
                                    4e-3
                                };
                                assert!(
                                    (got as f64 - w).abs() < tol,
                                    "{precision:?} {tiles:?} {isa:?} shape {heads}x{dh}x{keys}x{n} \
                                     [{k}]: {got} vs {w}"
                                );
                            }
                            for (h, head) in scores.chunks_exact(n * keys).enumerate() {
                                if tiled(h) {
                                    continue;
                                }
                                for row in head.chunks_exact(keys) {
                                    let sum: f32 = row.iter().sum();
                                    assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
