//! Native Rust CPU engine: Whisper encoder and decoder forward passes.
//!
//! Weights are converted once at load time: encoder weights packed for the [`sgemm`] kernels
//! (or, with `ComputeType::Bf16`, rounded to bf16 for the [`amx`] kernels, which then also run
//! the encoder's attention products), decoder weights in f16 (lossless for f16 checkpoints) or
//! int8 for the few-row [`gemv`] kernels. Each encoder layer runs as one call on a
//! preallocated [`EncoderWorkspace`], its attention blocked by query rows; the decoder keeps
//! its self-attention KV cache and the cross-attention K/V (computed once per window, in f16,
//! laid out per head by [`cross`]) in a preallocated [`DecoderState`].

pub mod amx;
pub mod cross;
pub mod gemv;
pub mod math;
pub mod ops;
mod session;
pub mod sgemm;
pub mod vnni;

pub use session::{CpuDecoder, CpuEncoder};

use gemm::Parallelism;
use rayon::prelude::*;

use super::ComputeType;
use crate::error::ModelError;
use crate::model::Dims;
use crate::model::ct2::Ct2File;
use crate::model::source::TensorSource;
use amx::PackedBf16;
use cross::{CrossKv, KvPrecision};
use gemv::{MatLow, matmul_low, matmul_low_cols};
use math::gelu_inplace;
use ops::{AttendArgs, Linear, Output, layer_norm, matmul_bt, matmul_strided, softmax_row};
use sgemm::{Epilogue, MatRef, PackedB};

pub struct LayerNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

impl LayerNorm {
    fn forward(&self, x: &[f32], out: &mut [f32]) {
        layer_norm(x, &self.gamma, &self.beta, out);
    }
}

pub struct EncoderLayer {
    pub attn_ln: LayerNorm,
    /// Fused Q, K, V projection `[3d][d]`.
    pub qkv: Linear,
    pub attn_out: Linear,
    pub mlp_ln: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

pub struct DecoderLayer {
    pub self_ln: LayerNorm,
    pub self_qkv: Linear,
    pub self_out: Linear,
    pub cross_ln: LayerNorm,
    pub cross_q: Linear,
    /// Fused cross-attention K, V projection `[2d][d]`, applied to the encoder output.
    pub cross_kv: Linear,
    pub cross_out: Linear,
    pub mlp_ln: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

/// All weights of a model, f32, in the layout the kernels use.
pub struct Weights {
    pub dims: Dims,
    /// Conv1 as a matrix `[d][n_mels * 3]` (index `c * 3 + k`).
    pub conv1: Linear,
    /// Conv2 as a matrix `[d][d * 3]`.
    pub conv2: Linear,
    pub enc_pos: Vec<f32>,
    pub enc_layers: Vec<EncoderLayer>,
    pub enc_ln: LayerNorm,
    /// Token embeddings `[n_vocab][d]`, also the output projection (tied).
    pub tok_emb: Embedding,
    pub dec_pos: Vec<f32>,
    pub dec_layers: Vec<DecoderLayer>,
    pub dec_ln: LayerNorm,
    /// How the decoder stores each window's cross-attention K/V ([`CrossKv`]).
    pub cross_kv: KvPrecision,
    /// The tiled backend that also holds them in bf16 for calls of many queries (prompts,
    /// the alignment pass), where the decoder's prompts run in bf16 (int8 decoder layers with
    /// bf16 copies): base's prompt of 205 tokens 47 → 29 ms (Intel Xeon, AMX).
    pub cross_tiles: Option<amx::Backend>,
    /// An int8 copy of the f16 output projection for greedy decoding: the logits of a step are
    /// screened with it (half the bytes), then the few tokens that could still be the choice
    /// are recomputed exactly ([`DecoderState::refine`]). `None` when the projection is
    /// already int8 or f32.
    pub vocab_screen: Option<MatLow>,
}

/// Which half of the model `ComputeType::Int8Bf16` holds in int8, per CPU; the other half runs
/// its products in bf16 (encoder) or reads exact f16 weights (decoder). int8 in both halves
/// moved the benchmark WER past faster-whisper float32's + 0.5 on AMD Zen 4 (tiny.en 7.75 %,
/// base 3.88 %), so one half only, the one where int8 saves the most time on this CPU:
/// - `Decoder` where the encoder's bf16 products are fast next to the decoder's weight reads:
///   on Intel AMX tiles (bf16 faster than int8 on `vpdpbusd`: base's encoder 175 against 250
///   ms a window on an Intel Xeon with both), and on AMD Zen 5 and later (`cpu family` 26 on;
///   full-width 512-bit units: `scripts/bench-anchor` base 3.10× faster-whisper int8 with the
///   int8 decoder against 2.51× with the int8 encoder, tiny.en 4.23× against 3.04×, the same
///   day), and wherever the CPU has no AVX512-VNNI;
/// - `Encoder` on other CPUs with AVX512-VNNI (AMD Zen 4, measured 2026-12-04: the encoder's
///   linear layers on `vpdpbusd`, 292 → 242 ms a base window, are the larger saving there).
///
/// `WHISPERNPU_INT8_HALF=encoder|decoder` overrides the choice (to measure one against the
/// other on a new machine); any other value, or `encoder` without AVX512-VNNI, leaves the
/// CPU's rule in place, and [`ComputeType::resolution`] names the override when one applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Half {
    /// The encoder's linear layers in int8 on `vpdpbusd`, attention and convolutions in bf16,
    /// the decoder as with `ComputeType::F32`.
    Encoder,
    /// The decoder's layers, output projection and cross-attention K/V in int8 (exact f16
    /// copies for live steps, bf16 copies for prompts), the encoder in bf16.
    Decoder,
}

impl Int8Half {
    /// The half for this CPU (see the type's doc), decided once per process.
    pub fn detected() -> Int8Half {
        Self::detection().0
    }

    /// The half and whether `WHISPERNPU_INT8_HALF` chose it (rather than the CPU's rule).
    pub fn detection() -> (Int8Half, bool) {
        static DETECTED: std::sync::OnceLock<(Int8Half, bool)> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            match std::env::var("WHISPERNPU_INT8_HALF").as_deref() {
                Ok("encoder") if vnni::usable() => return (Int8Half::Encoder, true),
                Ok("decoder") => return (Int8Half::Decoder, true),
                _ => {}
            }
            let rule = Self::for_cpu(amx::Backend::detected(), vnni::usable(), amx::amd_family());
            (rule, false)
        })
    }

    /// The rule of [`detected`](Self::detected) for a bf16 backend, VNNI or not, and an AMD
    /// CPU family (`None`: not AMD).
    pub fn for_cpu(backend: amx::Backend, vnni: bool, amd_family: Option<u32>) -> Int8Half {
        match backend {
            amx::Backend::Amx => Int8Half::Decoder,
            _ if !vnni => Int8Half::Decoder,
            amx::Backend::Avx512Bf16 if amd_family.is_some_and(|f| f >= 26) => Int8Half::Decoder,
            _ => Int8Half::Encoder,
        }
    }
}

struct Loader<'a> {
    file: &'a dyn TensorSource,
    /// Decoder weights and output projection in int8 (`ComputeType::Int8`).
    int8: bool,
    /// Decoder layers in int8 with exact and bf16 copies ([`Linear::new_decoder_int8`]) and
    /// the output projection in int8: `ComputeType::Int8Bf16` where [`Int8Half::Decoder`] and
    /// the bf16 GEMM runs on AMX tiles or `vdpbf16ps`.
    dec_int8: bool,
    /// Encoder products in bf16 (`ComputeType::Bf16`, `ComputeType::Int8Bf16`).
    enc_bf16: bool,
    /// Encoder linear layers in int8 (`ComputeType::Int8Bf16` where [`Int8Half::Encoder`]).
    enc_int8: bool,
}

impl Loader<'_> {
    fn ln(&self, prefix: &str, d: usize) -> Result<LayerNorm, ModelError> {
        Ok(LayerNorm {
            gamma: self.file.tensor(&format!("{prefix}/gamma"), &[d])?,
            beta: self.file.tensor(&format!("{prefix}/beta"), &[d])?,
        })
    }
    fn linear(&self, prefix: &str, n_out: usize, n_in: usize) -> Result<Linear, ModelError> {
        self.linear_with(prefix, n_out, n_in, false)
    }
    /// A decoder layer: also kept as f16 when lossless, for the few-row products of decoding.
    fn linear_dec(&self, prefix: &str, n_out: usize, n_in: usize) -> Result<Linear, ModelError> {
        self.linear_with(prefix, n_out, n_in, true)
    }
    fn linear_with(
        &self,
        prefix: &str,
        n_out: usize,
        n_in: usize,
        f16: bool,
    ) -> Result<Linear, ModelError> {
        let (weight, bias) = self.weight_bias(prefix, n_out, n_in)?;
        if f16
            && self.dec_int8
            && let Some(int8) = MatLow::int8(&weight, n_out, n_in)
        {
            return Ok(Linear::new_decoder_int8(int8, &weight, bias));
        }
        let low = match (f16, self.int8) {
            (false, _) => None,
            (true, false) => MatLow::lossless(&weight, n_out, n_in),
            (true, true) => MatLow::int8(&weight, n_out, n_in)
                .or_else(|| MatLow::lossless(&weight, n_out, n_in)),
        };
        Ok(match low {
            Some(low) => Linear::new_low(low, bias),
            None => Linear::new(weight, bias, n_in, n_out),
        })
    }
    /// The cross-attention K/V projection of a decoder layer (1500 rows per window): f32; bf16
    /// with the int8 decoder layers, offline and live. (Live kept an f32 copy until bf16 was
    /// measured live too: `live_sim --decode-cost` on jfk.wav and the three bench-live
    /// recordings read the same pooled WER, base 5.01 %, tiny.en 9.59 %, at 20 ms less a base
    /// decode.)
    fn cross_kv(&self, prefix: &str, n_out: usize, n_in: usize) -> Result<Linear, ModelError> {
        if !self.dec_int8 {
            return self.linear(prefix, n_out, n_in);
        }
        let (weight, bias) = self.weight_bias(prefix, n_out, n_in)?;
        Ok(Linear::new_bf16(weight, bias, n_in, n_out))
    }
    /// An encoder linear layer: f32; bf16 with `ComputeType::Bf16`; int8 with
    /// `ComputeType::Int8Bf16` where [`Int8Half::Encoder`] (else bf16).
    fn linear_enc(&self, prefix: &str, n_out: usize, n_in: usize) -> Result<Linear, ModelError> {
        if self.enc_int8 {
            let (weight, bias) = self.weight_bias(prefix, n_out, n_in)?;
            return Ok(Linear::new_int8(weight, bias, n_in, n_out));
        }
        self.linear_bf16(prefix, n_out, n_in)
    }
    /// An encoder linear layer in bf16 with `ComputeType::Bf16` or `Int8Bf16`, else f32.
    fn linear_bf16(&self, prefix: &str, n_out: usize, n_in: usize) -> Result<Linear, ModelError> {
        if !self.enc_bf16 {
            return self.linear(prefix, n_out, n_in);
        }
        let (weight, bias) = self.weight_bias(prefix, n_out, n_in)?;
        Ok(Linear::new_bf16(weight, bias, n_in, n_out))
    }
    /// `prefix/weight` `[n_out][n_in]` and `prefix/bias` `[n_out]` when present.
    fn weight_bias(
        &self,
        prefix: &str,
        n_out: usize,
        n_in: usize,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), ModelError> {
        let weight = self
            .file
            .tensor(&format!("{prefix}/weight"), &[n_out, n_in])?;
        let bias_name = format!("{prefix}/bias");
        let bias = if self.file.contains(&bias_name) {
            Some(self.file.tensor(&bias_name, &[n_out])?)
        } else {
            None
        };
        Ok((weight, bias))
    }
    fn conv(&self, prefix: &str, n_out: usize, n_in: usize) -> Result<Linear, ModelError> {
        let weight = self
            .file
            .tensor(&format!("{prefix}/weight"), &[n_out, n_in, 3])?;
        let bias = Some(self.file.tensor(&format!("{prefix}/bias"), &[n_out])?);
        Ok(if self.enc_bf16 {
            Linear::new_bf16(weight, bias, n_in * 3, n_out)
        } else {
            Linear::new(weight, bias, n_in * 3, n_out)
        })
    }
}

impl Weights {
    /// The weights of a CTranslate2 file prepared for `compute_type` (concrete, not `Auto`):
    /// `Int8`: decoder weights quantised to int8; `Bf16`: encoder products in bf16.
    pub fn from_ct2(
        file: &Ct2File,
        dims: &Dims,
        compute_type: ComputeType,
    ) -> Result<Self, ModelError> {
        Self::from_source(file, dims, compute_type)
    }

    /// The weights of any [`TensorSource`] (CTranslate2, GGML or safetensors), as
    /// [`from_ct2`](Self::from_ct2).
    pub fn from_source(
        file: &dyn TensorSource,
        dims: &Dims,
        compute_type: ComputeType,
    ) -> Result<Self, ModelError> {
        let int8 = compute_type == ComputeType::Int8;
        let backend = amx::Backend::detected();
        // int8 in one half of the model, not both (see `Int8Half`).
        let half = (compute_type == ComputeType::Int8Bf16).then(Int8Half::detected);
        let enc_int8 = half == Some(Int8Half::Encoder);
        let l = Loader {
            file,
            int8,
            dec_int8: half == Some(Int8Half::Decoder) && backend != amx::Backend::Emulated,
            enc_bf16: matches!(compute_type, ComputeType::Bf16 | ComputeType::Int8Bf16),
            enc_int8,
        };
        let (da, dt) = (dims.n_audio_state, dims.n_text_state);
        // The token embedding first: its f32 copy (base: 106 MB) is the largest transient of
        // loading, and is gone before the other weights are made.
        let (tok_emb, vocab_screen) = {
            let w = file.tensor("decoder/embeddings/weight", &[dims.n_vocab, dt])?;
            // int8 with the int8 decoder layers too: the f16 projection screened in int8 (exact
            // decisions) read the benchmark 0.4–0.6 point worse (tiny.en 7.50 against 6.88 %,
            // base 3.88 against 3.50 %: within the limit, at its edge); live, about the same
            // (`tests/live.rs`).
            match (int8 || l.dec_int8, MatLow::int8(&w, dims.n_vocab, dt)) {
                (true, Some(q)) => (Embedding::Low(q), None),
                (_, screen) => {
                    let emb = Embedding::new(w, dt);
                    let f16 = matches!(&emb, Embedding::Low(m) if !m.is_int8());
                    (emb, screen.filter(|_| f16))
                }
            }
        };
        // Layers are prepared in parallel (conversion, quantisation and packing are CPU-bound:
        // the model load is part of every run's wall time).
        let enc_layers = (0..dims.n_audio_layer)
            .into_par_iter()
            .map(|i| {
                let p = format!("encoder/layer_{i}");
                Ok(EncoderLayer {
                    attn_ln: l.ln(&format!("{p}/self_attention/layer_norm"), da)?,
                    qkv: l.linear_enc(&format!("{p}/self_attention/linear_0"), 3 * da, da)?,
                    attn_out: l.linear_enc(&format!("{p}/self_attention/linear_1"), da, da)?,
                    mlp_ln: l.ln(&format!("{p}/ffn/layer_norm"), da)?,
                    fc1: l.linear_enc(&format!("{p}/ffn/linear_0"), 4 * da, da)?,
                    fc2: l.linear_enc(&format!("{p}/ffn/linear_1"), da, 4 * da)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let dec_layers = (0..dims.n_text_layer)
            .into_par_iter()
            .map(|i| {
                let p = format!("decoder/layer_{i}");
                Ok(DecoderLayer {
                    self_ln: l.ln(&format!("{p}/self_attention/layer_norm"), dt)?,
                    self_qkv: l.linear_dec(&format!("{p}/self_attention/linear_0"), 3 * dt, dt)?,
                    self_out: l.linear_dec(&format!("{p}/self_attention/linear_1"), dt, dt)?,
                    cross_ln: l.ln(&format!("{p}/attention/layer_norm"), dt)?,
                    cross_q: l.linear_dec(&format!("{p}/attention/linear_0"), dt, dt)?,
                    cross_kv: l.cross_kv(&format!("{p}/attention/linear_1"), 2 * dt, da)?,
                    cross_out: l.linear_dec(&format!("{p}/attention/linear_2"), dt, dt)?,
                    mlp_ln: l.ln(&format!("{p}/ffn/layer_norm"), dt)?,
                    fc1: l.linear_dec(&format!("{p}/ffn/linear_0"), 4 * dt, dt)?,
                    fc2: l.linear_dec(&format!("{p}/ffn/linear_1"), dt, 4 * dt)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Weights {
            dims: dims.clone(),
            conv1: l.conv("encoder/conv1", da, dims.n_mels)?,
            conv2: l.conv("encoder/conv2", da, da)?,
            enc_pos: file.tensor(
                "encoder/position_encodings/encodings",
                &[dims.n_audio_ctx, da],
            )?,
            enc_layers,
            enc_ln: l.ln("encoder/layer_norm", da)?,
            tok_emb,
            vocab_screen,
            dec_pos: file.tensor(
                "decoder/position_encodings/encodings",
                &[dims.n_text_ctx, dt],
            )?,
            dec_layers,
            dec_ln: l.ln("decoder/layer_norm", dt)?,
            // f16 halves the bytes every decoded token reads; transcripts and times of the
            // 295 s benchmark audio (greedy) and the 112 s test audio (beam 5) are identical
            // to f32 storage for tiny.en and base (log-probabilities within 5e-5). int8 with the
            // int8 decoder layers halves them again (base: 9 of the 18 MB a token read there):
            // benchmark WER tiny.en 6.88 → 7.00 % (condition on previous text false: 6.75 →
            // 7.00), base 3.50 and 3.88 % unchanged; live (`live_sim`, four recordings) the same
            // pooled WER as f16, tiny.en 9.59 %, base 4.31 %.
            cross_kv: if l.dec_int8 {
                KvPrecision::I8
            } else {
                KvPrecision::F16
            },
            cross_tiles: l.dec_int8.then_some(backend),
        })
    }
}

/// The token embedding matrix `[n_vocab][d]`, which is also the tied output projection. Kept in
/// f16 when that is lossless (the weights were stored as f16), halving the bytes the decoder
/// streams for every token's logits (int8 with `ComputeType::Int8`); f32 otherwise.
pub enum Embedding {
    F32 { data: Vec<f32>, d: usize },
    Low(MatLow),
}

impl Embedding {
    pub fn new(data: Vec<f32>, d: usize) -> Self {
        match MatLow::lossless(&data, data.len() / d, d) {
            Some(m) => Embedding::Low(m),
            None => Embedding::F32 { data, d },
        }
    }

    /// Row `token` as f32 into `out`.
    pub fn row_into(&self, token: usize, out: &mut [f32]) {
        match self {
            Embedding::F32 { data, d } => out.copy_from_slice(&data[token * d..(token + 1) * d]),
            Embedding::Low(m) => m.row_into(token, out),
        }
    }

    /// [`logits`](Self::logits) for the tokens `cols` only (the same values bit for bit).
    pub fn logits_cols(
        &self,
        h: &[f32],
        rows: usize,
        cols: std::ops::Range<usize>,
        logits: &mut [f32],
        p: Parallelism,
    ) {
        match self {
            Embedding::F32 { data, d } => {
                let vocab = data.len() / d;
                let n = cols.len();
                matmul_bt(
                    h,
                    rows,
                    *d,
                    &data[cols.start * d..cols.end * d],
                    n,
                    &mut logits[cols.start..],
                    vocab,
                    false,
                    p,
                );
            }
            Embedding::Low(m) => matmul_low_cols(h, rows, m, cols, logits, m.n(), false, None, p),
        }
    }

    /// `logits[rows][n_vocab] = h[rows][d] · E^T`.
    pub fn logits(&self, h: &[f32], rows: usize, logits: &mut [f32], p: Parallelism) {
        match self {
            Embedding::F32 { data, d } => {
                let vocab = data.len() / d;
                matmul_bt(h, rows, *d, data, vocab, logits, vocab, false, p);
            }
            Embedding::Low(m) => matmul_low(h, rows, m, logits, m.n(), false, None, p),
        }
    }
}

fn par(threads: usize) -> Parallelism {
    if threads <= 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// Buffers of one encoder pass, allocated once per transcriber.
pub struct EncoderWorkspace {
    im2col1: Vec<f32>,
    conv1_out: Vec<f32>,
    im2col2: Vec<f32>,
    /// Residual stream `[n_ctx][d]`; holds the encoder output after [`Encoder::forward`].
    pub x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    /// Per-head attention outputs `[heads][n_ctx][dh]`.
    heads_out: Vec<f32>,
    /// Per head, `Kᵀ` and `V` packed for the GEMM kernel (refilled every layer).
    k_packed: Vec<PackedB>,
    v_packed: Vec<PackedB>,
    /// The same for the bf16 attention (allocated on first use).
    k_bf16: Vec<PackedBf16>,
    v_bf16: Vec<PackedBf16>,
    hidden: Vec<f32>,
    /// Linear layers held in int8 run in int8 (else their bf16 copy: live captioning, see
    /// [`crate::engine::Encoder::set_live`]).
    pub int8: bool,
}

/// `n` copies of `value` in memory that is resident now: written once here, where `vec!` of
/// zeros would map pages the first decode faults in. A live stream that joins a loaded process
/// (many streams, one engine) faulted its buffers in during its first decode: 0.9–1.9 s instead
/// of about 0.2 s (24 tiny.en streams, the streams started once the cores were busy), so that
/// decode ran past the time limit its wait for a turn had been given.
pub(crate) fn resident<T: Copy>(n: usize, value: T) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, value);
    v
}

/// Makes the pages of `buf` (zeroed, e.g. by `vec!`) resident now, as [`resident`] does for a
/// new buffer: one volatile write of zero a page (a plain fill of zeros may be dropped by the
/// compiler, which knows the allocation is zeroed).
fn touch(buf: &mut [f32]) {
    // Chunk starts are a page apart, so together with the last element every page is written.
    let last = buf.len().saturating_sub(1);
    for i in (0..buf.len())
        .step_by(1024)
        .chain((!buf.is_empty()).then_some(last))
    {
        // SAFETY: a valid, aligned `&mut f32`.
        unsafe { std::ptr::write_volatile(&mut buf[i], 0.0) };
    }
}

/// One operand per encoder head for the tiled bf16 backend, where there is one.
fn tiled_heads(dims: &Dims, make: impl Fn(amx::Backend, usize) -> PackedBf16) -> Vec<PackedBf16> {
    let backend = amx::Backend::detected();
    if backend == amx::Backend::Emulated {
        return Vec::new();
    }
    let dh = dims.n_audio_state / dims.n_audio_head;
    (0..dims.n_audio_head).map(|_| make(backend, dh)).collect()
}

impl EncoderWorkspace {
    pub fn new(dims: &Dims) -> Self {
        let (t, d, frames) = (dims.n_audio_ctx, dims.n_audio_state, 2 * dims.n_audio_ctx);
        Self {
            im2col1: resident(frames * dims.n_mels * 3, 0.0),
            conv1_out: resident(frames * d, 0.0),
            im2col2: resident(t * d * 3, 0.0),
            x: resident(t * d, 0.0),
            h: resident(t * d, 0.0),
            qkv: resident(t * 3 * d, 0.0),
            attn: resident(t * d, 0.0),
            heads_out: resident(t * d, 0.0),
            k_packed: (0..dims.n_audio_head).map(|_| PackedB::default()).collect(),
            v_packed: (0..dims.n_audio_head).map(|_| PackedB::default()).collect(),
            // Resident now where the bf16 attention can run (see `resident`).
            k_bf16: tiled_heads(dims, |b, dh| PackedBf16::for_shape(b, dh, t)),
            v_bf16: tiled_heads(dims, |b, dh| PackedBf16::for_shape(b, t, dh)),
            hidden: resident(t * 4 * d, 0.0),
            int8: true,
        }
    }
}

/// Runs the encoder over one window's mel `[n_mels][2 * n_audio_ctx]`; the output `[n_ctx][d]`
/// is left in `ws.x`.
pub fn encode(w: &Weights, mel: &[f32], ws: &mut EncoderWorkspace, threads: usize) {
    let dims = &w.dims;
    let (t, d, frames, n_mels) = (
        dims.n_audio_ctx,
        dims.n_audio_state,
        2 * dims.n_audio_ctx,
        dims.n_mels,
    );
    let p = par(threads);
    assert_eq!(mel.len(), n_mels * frames);

    // conv1 (stride 1, pad 1) as im2col + GEMM: row t holds x[c][t + k - 1] at c * 3 + k.
    ws.im2col1
        .par_chunks_mut(n_mels * 3)
        .enumerate()
        .for_each(|(ti, row)| {
            for c in 0..n_mels {
                for k in 0..3 {
                    let src = ti as isize + k as isize - 1;
                    row[c * 3 + k] = if src < 0 || src >= frames as isize {
                        0.0
                    } else {
                        mel[c * frames + src as usize]
                    };
                }
            }
        });
    w.conv1
        .forward_gelu(&ws.im2col1, frames, &mut ws.conv1_out, p);

    // conv2 (stride 2, pad 1) on the time-major conv1 output.
    let conv1_out = &ws.conv1_out;
    ws.im2col2
        .par_chunks_mut(d * 3)
        .enumerate()
        .for_each(|(ti, row)| {
            for k in 0..3 {
                let src = 2 * ti as isize + k as isize - 1;
                for c in 0..d {
                    row[c * 3 + k] = if src < 0 || src >= frames as isize {
                        0.0
                    } else {
                        conv1_out[src as usize * d + c]
                    };
                }
            }
        });
    w.conv2.forward_gelu(&ws.im2col2, t, &mut ws.x, p);
    for (x, pos) in ws.x.iter_mut().zip(&w.enc_pos) {
        *x += pos;
    }

    for layer in &w.enc_layers {
        encoder_layer(layer, dims, ws, threads);
    }
    w.enc_ln.forward(&ws.x, &mut ws.h);
    std::mem::swap(&mut ws.x, &mut ws.h);
}

/// One pre-norm encoder block, in place on `ws.x`.
pub fn encoder_layer(layer: &EncoderLayer, dims: &Dims, ws: &mut EncoderWorkspace, threads: usize) {
    let (t, d, heads) = (dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head);
    let dh = d / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let p = par(threads);

    layer.attn_ln.forward(&ws.x, &mut ws.h);
    let int8 = ws.int8;
    layer
        .qkv
        .product(&ws.h, t, &mut ws.qkv, Output::Set, int8, p);
    // Attention in bf16 with bf16 layers, and with int8 ones where bf16 runs natively.
    let bf16_attention = layer.qkv.is_bf16()
        || (layer.qkv.is_int8() && amx::Backend::detected() != amx::Backend::Emulated);
    if bf16_attention {
        if ws.k_bf16.len() != heads {
            ws.k_bf16 = (0..heads).map(|_| PackedBf16::default()).collect();
            ws.v_bf16 = (0..heads).map(|_| PackedBf16::default()).collect();
        }
        encoder_self_attention(
            &ws.qkv,
            t,
            heads,
            dh,
            scale,
            &mut ws.k_bf16,
            &mut ws.v_bf16,
            &mut ws.heads_out,
            threads,
        );
    } else {
        encoder_self_attention(
            &ws.qkv,
            t,
            heads,
            dh,
            scale,
            &mut ws.k_packed,
            &mut ws.v_packed,
            &mut ws.heads_out,
            threads,
        );
    }
    scatter_heads(&ws.heads_out, t, heads, dh, &mut ws.attn);
    let add = Output::Accumulate;
    layer.attn_out.product(&ws.attn, t, &mut ws.x, add, int8, p);

    layer.mlp_ln.forward(&ws.x, &mut ws.h);
    layer
        .fc1
        .product(&ws.h, t, &mut ws.hidden, Output::Gelu, int8, p);
    layer.fc2.product(&ws.hidden, t, &mut ws.x, add, int8, p);
}

/// Query rows per attention task: a `ROWS × n_ctx` block of scores (500 KiB for 1500 keys)
/// stays in L2 between the two products; a multiple of the AVX-512 kernel's 14 rows.
const ATTN_BLOCK_ROWS: usize = 84;

/// Most draft tokens one [`DecoderState::forward_verify`] call takes: the few-row products of
/// decoding steps (at most [`ops::LOW_MAX_ROWS`] rows) and the step's cross-attention (below
/// [`cross::TILED_MIN_QUERIES`] queries).
pub const MAX_VERIFY: usize = 15;
const _: () = assert!(MAX_VERIFY <= ops::LOW_MAX_ROWS && MAX_VERIFY < cross::TILED_MIN_QUERIES);

/// Query rows per bf16 attention task: a multiple of the AMX kernel's 32 rows.
const ATTN_BLOCK_ROWS_BF16: usize = 96;

/// A per-head operand of the encoder's attention (`Kᵀ` or `V`) and the attention that reads
/// it: f32 ([`PackedB`]: two [`sgemm`] products around [`softmax_row`]) or bf16 ([`PackedBf16`],
/// [`amx::attention`]).
trait HeadOperand: Send + Sync {
    /// Query rows per task.
    const BLOCK_ROWS: usize;
    /// Packs `B` (`k × n`) into this operand.
    fn pack(&mut self, b: MatRef<'_>, k: usize, n: usize);
    /// `out[rows][dh] = softmax(scale · q · kt) · v` on the calling thread (`kt`: `Kᵀ`,
    /// `dh × t`; `v`: `t × dh`).
    fn attend(kt: &Self, v: &Self, q: MatRef<'_>, rows: usize, scale: f32, out: &mut [f32]);
}

thread_local! {
    /// One task's block of attention scores.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl HeadOperand for PackedB {
    const BLOCK_ROWS: usize = ATTN_BLOCK_ROWS;
    fn pack(&mut self, b: MatRef<'_>, k: usize, n: usize) {
        self.pack_from(b, k, n);
    }
    fn attend(kt: &Self, v: &Self, q: MatRef<'_>, rows: usize, scale: f32, out: &mut [f32]) {
        let (t, dh) = (kt.n(), kt.k());
        SCORES.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < rows * t {
                buf.resize(rows * t, 0.0);
            }
            let s = &mut buf[..rows * t];
            let ep = Epilogue {
                alpha: scale,
                ..Epilogue::default()
            };
            sgemm::sgemm(rows, q, kt, s, t, ep, Parallelism::None);
            s.chunks_exact_mut(t).for_each(softmax_row);
            let p = MatRef {
                data: s,
                rs: t,
                cs: 1,
            };
            let ep = Epilogue::default();
            sgemm::sgemm(rows, p, v, out, dh, ep, Parallelism::None);
        });
    }
}

impl HeadOperand for PackedBf16 {
    const BLOCK_ROWS: usize = ATTN_BLOCK_ROWS_BF16;
    fn pack(&mut self, b: MatRef<'_>, k: usize, n: usize) {
        self.pack_from(b, k, n);
    }
    fn attend(kt: &Self, v: &Self, q: MatRef<'_>, rows: usize, scale: f32, out: &mut [f32]) {
        amx::attention(q, rows, kt, v, scale, out, kt.k());
    }
}

/// Unmasked multi-head self-attention over `t` positions, blocked by query rows so the full
/// `t × t` score matrix is never materialised: per head, `Kᵀ` and `V` are packed once; then every
/// (head, block of [`HeadOperand::BLOCK_ROWS`] queries) task computes its scores `Q Kᵀ · scale`,
/// the softmax, and `P V` while the scores are still in cache. Tasks run on the current rayon
/// pool (single-threaded GEMMs inside); outputs go to `out[heads][t][dh]`. With bf16 operands,
/// Q, K, V and the probabilities are rounded to bf16; scores and softmax stay f32 (see
/// [`amx::attention`]).
#[allow(clippy::too_many_arguments)]
fn encoder_self_attention<B: HeadOperand>(
    qkv: &[f32],
    t: usize,
    heads: usize,
    dh: usize,
    scale: f32,
    k_packed: &mut [B],
    v_packed: &mut [B],
    out: &mut [f32],
    threads: usize,
) {
    let block_rows = B::BLOCK_ROWS;
    let d = heads * dh;
    let pack = |h: usize, kp: &mut B, vp: &mut B| {
        // Kᵀ[p][j] = K[j][p]: row stride 1, column stride 3d.
        let k = MatRef {
            data: &qkv[d + h * dh..],
            rs: 1,
            cs: 3 * d,
        };
        kp.pack(k, dh, t);
        let v = MatRef {
            data: &qkv[2 * d + h * dh..],
            rs: 3 * d,
            cs: 1,
        };
        vp.pack(v, t, dh);
    };
    if threads <= 1 {
        for (h, (kp, vp)) in k_packed.iter_mut().zip(v_packed.iter_mut()).enumerate() {
            pack(h, kp, vp);
        }
    } else {
        k_packed
            .par_iter_mut()
            .zip(v_packed.par_iter_mut())
            .enumerate()
            .for_each(|(h, (kp, vp))| pack(h, kp, vp));
    }
    let (k_packed, v_packed) = (&*k_packed, &*v_packed);
    let block = |h: usize, r0: usize, o: &mut [f32]| {
        let q = MatRef {
            data: &qkv[r0 * 3 * d + h * dh..],
            rs: 3 * d,
            cs: 1,
        };
        B::attend(&k_packed[h], &v_packed[h], q, o.len() / dh, scale, o);
    };
    let out = &mut out[..heads * t * dh];
    if threads <= 1 {
        for (h, o) in out.chunks_mut(t * dh).enumerate() {
            for (b, ob) in o.chunks_mut(block_rows * dh).enumerate() {
                block(h, b * block_rows, ob);
            }
        }
    } else {
        out.par_chunks_mut(t * dh).enumerate().for_each(|(h, o)| {
            o.par_chunks_mut(block_rows * dh)
                .enumerate()
                .for_each(|(b, ob)| block(h, b * block_rows, ob));
        });
    }
}

/// Decoder runtime state: KV caches for `batch` sequences of equal length, the cross-attention
/// K/V of the current window, and scratch buffers. Allocated once per transcriber for the
/// largest batch it will use.
pub struct DecoderState {
    dims: Dims,
    max_batch: usize,
    batch: usize,
    /// Tokens held in the self-attention cache (same for every sequence).
    len: usize,
    /// Per layer, V `[max_batch][n_text_ctx][d]` and K transposed, `[max_batch][d][n_text_ctx]`
    /// (a step's scores are then one vector pass a feature over the keys).
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    /// Per layer, the window's cross-attention K/V.
    cross_kv: Vec<CrossKv>,
    /// The projection `[n_audio_ctx][2d]` of one layer's cross K/V before [`CrossKv::fill`].
    cross_proj: Vec<f32>,
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    hidden: Vec<f32>,
    scores: Vec<f32>,
    head_out: Vec<f32>,
    last: Vec<f32>,
    reorder_tmp: Vec<f32>,
    /// Logits of the last call, `[rows][n_vocab]`.
    pub logits: Vec<f32>,
    /// Screened greedy steps: tokens from this one on get exact logits ([`Self::set_screening`]).
    screen_exact_from: Option<usize>,
    /// Whether the last call's logits were screened (approximate below `screen_exact_from`).
    screened: bool,
    /// Per logits row of a screened call: `|exact − screened| ≤ scale[j] · screen_err[r]`.
    screen_err: Vec<f32>,
    /// Cross-attention capture for word alignment (see [`forward_capture`](Self::forward_capture)).
    capture: Option<Capture>,
    /// Live captioning: the steps of layers held in int8 stream their exact weights
    /// ([`Self::set_precise`]).
    precise: bool,
}

/// Cross-attention weights of chosen heads over the first `frames` encoder positions.
struct Capture {
    heads: Vec<(usize, usize)>,
    frames: usize,
    /// `[heads.len()][n][frames]`.
    out: Vec<f32>,
}

impl DecoderState {
    /// State for batches of up to `max_batch` sequences; cross-attention K/V stored in `cross`
    /// (and for many-query calls in bf16 tiles of `cross_tiles`).
    pub fn new(
        dims: &Dims,
        max_batch: usize,
        cross: KvPrecision,
        cross_tiles: Option<amx::Backend>,
    ) -> Self {
        let d = dims.n_text_state;
        let ctx = dims.n_text_ctx;
        let rows = max_batch.max(1) * ctx;
        let layers = dims.n_text_layer;
        let keys = ctx.max(dims.n_audio_ctx);
        // Logits rows a call can leave: two a sequence, or a draft's.
        let out_rows = (2 * max_batch.max(1)).max(MAX_VERIFY);
        // Each layer's cache allocated zeroed on its own (`vec![vec![..]; n]` would clone the
        // first, writing every page of the copies): pages become resident only as sequences
        // reach them, so greedy decoding never holds the caches of `max_batch` sequences.
        let cache = || {
            (0..layers)
                .map(|_| vec![0.0; max_batch.max(1) * ctx * d])
                .collect()
        };
        let mut me = Self {
            dims: dims.clone(),
            max_batch: max_batch.max(1),
            batch: 1,
            len: 0,
            k_cache: cache(),
            v_cache: cache(),
            cross_kv: (0..layers)
                .map(|_| {
                    CrossKv::with_tiles(
                        dims.n_text_head,
                        d / dims.n_text_head,
                        dims.n_audio_ctx,
                        cross,
                        cross_tiles,
                    )
                })
                .collect(),
            cross_proj: resident(dims.n_audio_ctx * 2 * d, 0.0),
            x: vec![0.0; rows * d],
            h: vec![0.0; rows * d],
            qkv: vec![0.0; rows * 3 * d],
            attn: vec![0.0; rows * d],
            hidden: vec![0.0; rows * 4 * d],
            scores: vec![0.0; dims.n_text_head * ctx * keys],
            head_out: vec![0.0; rows * d],
            last: resident(out_rows * d, 0.0),
            reorder_tmp: vec![0.0; max_batch.max(1) * ctx * d],
            logits: resident(out_rows * dims.n_vocab, 0.0),
            screen_exact_from: None,
            screened: false,
            screen_err: resident(out_rows, 0.0),
            capture: None,
            precise: false,
        };
        // One sequence's share of the per-row buffers and caches resident now (see
        // `resident`); the other sequences' pages only when a batch reaches them.
        for buf in [&mut me.x, &mut me.h, &mut me.attn, &mut me.head_out]
            .into_iter()
            .chain(me.k_cache.iter_mut())
            .chain(me.v_cache.iter_mut())
        {
            touch(&mut buf[..ctx * d]);
        }
        touch(&mut me.qkv[..ctx * 3 * d]);
        touch(&mut me.hidden[..ctx * 4 * d]);
        // Attention probabilities of calls of up to half the context (prompts, the alignment
        // pass).
        touch(&mut me.scores[..dims.n_text_head * ctx / 2 * keys]);
        me
    }

    /// Whether the decoding steps of layers held in int8 (`ComputeType::Int8Bf16`) stream their
    /// exact (f16) weights, as live captioning needs: it decodes short, growing buffers again
    /// and again and commits what successive decodes agree on, and read tiny.en 2.3 to 3.3
    /// points worse than offline on the 111.9 s recording with int8 (or bf16) steps
    /// (`tests/live.rs`), 0.0 to 1.3 with the exact ones. Prompts keep the bf16 copy (their
    /// precision did not change the live WER).
    pub fn set_precise(&mut self, precise: bool) {
        self.precise = precise;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Computes the cross-attention K/V of a window's encoder output (once per window) and
    /// clears the self-attention cache.
    pub fn set_audio(&mut self, w: &Weights, encoder_out: &[f32], threads: usize) {
        let t = self.dims.n_audio_ctx;
        for (layer, kv) in w.dec_layers.iter().zip(self.cross_kv.iter_mut()) {
            layer.cross_kv.product(
                encoder_out,
                t,
                &mut self.cross_proj,
                Output::Set,
                // The same products live and offline (see `Loader::cross_kv`).
                true,
                par(threads),
            );
            kv.fill(&self.cross_proj);
        }
        self.reset(1);
    }

    /// Empties the self-attention cache and sets the number of sequences.
    pub fn reset(&mut self, batch: usize) {
        assert!(batch >= 1 && batch <= self.max_batch);
        self.batch = batch;
        self.len = 0;
    }

    /// Rearranges the cached sequences: new sequence `i` continues old sequence `sources[i]`.
    /// `sources.len()` becomes the batch size (it may grow, e.g. from one prompt to n beams).
    pub fn reorder(&mut self, sources: &[usize]) {
        assert!(!sources.is_empty() && sources.len() <= self.max_batch);
        assert!(sources.iter().all(|&s| s < self.batch));
        let d = self.dims.n_text_state;
        let stride = self.dims.n_text_ctx * d;
        let used = self.len * d;
        let identity =
            sources.len() == self.batch && sources.iter().enumerate().all(|(i, &s)| i == s);
        if !identity && used > 0 {
            // V rows `[n_text_ctx][d]`: the first `len` rows; K transposed `[d][n_text_ctx]`:
            // the first `len` entries of each of its `d` rows.
            let ctx = self.dims.n_text_ctx;
            let (len, tmp) = (self.len, &mut self.reorder_tmp);
            // (rows, row step, entries a row) of one sequence's used part.
            let (k_part, v_part) = ((d, ctx, len), (1, 0, used));
            for (cache, (rows, step, n)) in self
                .k_cache
                .iter_mut()
                .map(|c| (c, k_part))
                .chain(self.v_cache.iter_mut().map(|c| (c, v_part)))
            {
                for (i, &s) in sources.iter().enumerate() {
                    for at in (0..rows).map(|r| r * step) {
                        tmp[i * stride + at..][..n].copy_from_slice(&cache[s * stride + at..][..n]);
                    }
                }
                for i in 0..sources.len() {
                    for at in (0..rows).map(|r| r * step) {
                        cache[i * stride + at..][..n].copy_from_slice(&tmp[i * stride + at..][..n]);
                    }
                }
            }
        }
        self.batch = sources.len();
    }

    /// Feeds `n` new tokens to each of the `batch` sequences (`tokens` is `[batch][n]`) and
    /// computes logits for the last position of each sequence, plus for position `extra` (an
    /// index among the new tokens, e.g. the SOT position for the no-speech probability) when
    /// given. Logits land in `self.logits`: rows `0..batch` for the last positions, then row
    /// `batch..2*batch` for `extra`.
    pub fn forward(&mut self, w: &Weights, tokens: &[u32], extra: Option<usize>, threads: usize) {
        self.run(w, tokens, extra, false, threads);
    }

    /// Feeds the `n` tokens of a draft (one sequence, `n ≤ MAX_VERIFY`) and computes the logits
    /// of every new position: row `r` is what the model says after `tokens[..=r]`. The products
    /// are those of single-token steps (at most [`LOW_MAX_ROWS`](ops::LOW_MAX_ROWS) rows, below
    /// [`TILED_MIN_QUERIES`](cross::TILED_MIN_QUERIES) queries), so a draft token's logits are
    /// the ones a step would compute, up to the order of float sums. Screened like a step.
    pub fn forward_verify(&mut self, w: &Weights, tokens: &[u32], threads: usize) {
        assert!(self.batch == 1 && tokens.len() <= MAX_VERIFY);
        self.run(w, tokens, None, true, threads);
    }

    /// Drops the cached positions from `len` on (draft tokens that were not accepted).
    pub fn truncate(&mut self, len: usize) {
        assert!(len <= self.len, "truncate past the cache");
        self.len = len;
    }

    fn run(
        &mut self,
        w: &Weights,
        tokens: &[u32],
        extra: Option<usize>,
        all: bool,
        threads: usize,
    ) {
        let dims = &self.dims;
        let (d, heads, ctx) = (dims.n_text_state, dims.n_text_head, dims.n_text_ctx);
        let batch = self.batch;
        let n = tokens.len() / batch;
        assert!(n >= 1 && n * batch == tokens.len());
        assert!(self.len + n <= ctx, "decoder context overflow");
        let rows = batch * n;
        let dh = d / heads;
        let scale = 1.0 / (dh as f32).sqrt();
        let p = par(threads);
        let offset = self.len;

        for (r, &tok) in tokens.iter().enumerate() {
            let pos = offset + r % n;
            let x = &mut self.x[r * d..(r + 1) * d];
            w.tok_emb.row_into(tok as usize, x);
            for (x, pe) in x.iter_mut().zip(&w.dec_pos[pos * d..(pos + 1) * d]) {
                *x += pe;
            }
        }

        let stride = ctx * d;
        let t_audio = dims.n_audio_ctx;
        // Layers held in int8 run it, or (live captioning) their exact weights.
        let int8 = !self.precise;
        for (li, layer) in w.dec_layers.iter().enumerate() {
            // Self-attention with KV cache.
            layer.self_ln.forward(&self.x[..rows * d], &mut self.h);
            layer
                .self_qkv
                .product(&self.h, rows, &mut self.qkv, Output::Set, int8, p);
            for b in 0..batch {
                for i in 0..n {
                    let src = &self.qkv[(b * n + i) * 3 * d..(b * n + i + 1) * 3 * d];
                    let at = b * stride + (offset + i) * d;
                    self.v_cache[li][at..at + d].copy_from_slice(&src[2 * d..3 * d]);
                    // K transposed, `[d][n_text_ctx]` per sequence (see `k_cache`).
                    let kt = &mut self.k_cache[li][b * stride + offset + i..];
                    for (p, &kp) in src[d..2 * d].iter().enumerate() {
                        kt[p * ctx] = kp;
                    }
                }
            }
            let keys = offset + n;
            for b in 0..batch {
                let q = &self.qkv[b * n * 3 * d..];
                let kc = &self.k_cache[li][b * stride..];
                let vc = &self.v_cache[li][b * stride..];
                attend(
                    AttendArgs {
                        q,
                        q_rs: 3 * d,
                        k: kc,
                        k_rs: 1,
                        k_ps: ctx,
                        v: vc,
                        v_rs: d,
                        n,
                        keys,
                        heads,
                        dh,
                        scale,
                        causal_offset: Some(offset),
                    },
                    &mut self.scores,
                    &mut self.head_out,
                );
                scatter_heads(&self.head_out, n, heads, dh, &mut self.attn[b * n * d..]);
            }
            layer
                .self_out
                .product(&self.attn, rows, &mut self.x, Output::Accumulate, int8, p);

            // Cross-attention over the window's encoder output.
            layer.cross_ln.forward(&self.x[..rows * d], &mut self.h);
            layer
                .cross_q
                .product(&self.h, rows, &mut self.qkv, Output::Set, int8, p);
            // The heads of this layer whose probabilities a capture records (the first
            // sequence's).
            let captured = self.capture.as_ref().map_or(0, |c| {
                c.heads
                    .iter()
                    .filter(|&&(l, h)| l == li && h < 64)
                    .fold(0u64, |m, &(_, h)| m | 1 << h)
            });
            for b in 0..batch {
                self.cross_kv[li].attend(
                    &self.qkv[b * n * d..],
                    d,
                    n,
                    scale,
                    &mut self.scores,
                    &mut self.head_out,
                    threads > 1,
                    if b == 0 { captured } else { 0 },
                );
                scatter_heads(&self.head_out, n, heads, dh, &mut self.attn[b * n * d..]);
                if b == 0
                    && let Some(c) = self.capture.as_mut()
                {
                    let f = c.frames;
                    for (k, &(l, h)) in c.heads.iter().enumerate() {
                        if l != li || h >= heads {
                            continue;
                        }
                        for i in 0..n {
                            let row = &self.scores[(h * n + i) * t_audio..][..f];
                            let sum: f32 = row.iter().sum::<f32>().max(f32::MIN_POSITIVE);
                            let dst = &mut c.out[(k * n + i) * f..][..f];
                            for (o, &p) in dst.iter_mut().zip(row) {
                                *o = p / sum;
                            }
                        }
                    }
                }
            }
            layer
                .cross_out
                .product(&self.attn, rows, &mut self.x, Output::Accumulate, int8, p);

            // MLP.
            layer.mlp_ln.forward(&self.x[..rows * d], &mut self.h);
            layer
                .fc1
                .product(&self.h, rows, &mut self.hidden, Output::Set, int8, p);
            gelu_inplace(&mut self.hidden[..rows * 4 * d]);
            layer
                .fc2
                .product(&self.hidden, rows, &mut self.x, Output::Accumulate, int8, p);
        }
        self.len += n;

        // Final LayerNorm and tied output projection, only for the rows we need logits of.
        let mut out_rows = 0;
        for r in (0..rows).filter(|r| all || r % n == n - 1) {
            w.dec_ln.forward(
                &self.x[r * d..(r + 1) * d],
                &mut self.last[out_rows * d..(out_rows + 1) * d],
            );
            out_rows += 1;
        }
        if let Some(e) = extra {
            assert!(e < n);
            for b in 0..batch {
                let r = b * n + e;
                w.dec_ln.forward(
                    &self.x[r * d..(r + 1) * d],
                    &mut self.last[out_rows * d..(out_rows + 1) * d],
                );
                out_rows += 1;
            }
        }
        let h = &self.last[..out_rows * d];
        self.screened = false;
        match (self.screen_exact_from, &w.vocab_screen) {
            (Some(exact_from), Some(screen)) if extra.is_none() && batch == 1 => {
                let vocab = dims.n_vocab;
                let exact_from = exact_from.min(vocab);
                matmul_low_cols(
                    h,
                    out_rows,
                    screen,
                    0..exact_from,
                    &mut self.logits,
                    vocab,
                    false,
                    None,
                    p,
                );
                w.tok_emb
                    .logits_cols(h, out_rows, exact_from..vocab, &mut self.logits, p);
                for (e, row) in self.screen_err.iter_mut().zip(h.chunks_exact(d)) {
                    *e = screen_error(row, screen);
                }
                self.screened = true;
            }
            _ => w.tok_emb.logits(h, out_rows, &mut self.logits, p),
        }
    }

    /// One sequence of `tokens` from an empty cache, recording the cross-attention weights of
    /// `heads` (`(layer, head)` pairs) over the first `frames` encoder positions, renormalised
    /// to sum to one there (as a softmax over those positions only). Returns
    /// `[heads.len()][tokens.len()][frames]`.
    pub fn forward_capture(
        &mut self,
        w: &Weights,
        tokens: &[u32],
        heads: &[(usize, usize)],
        frames: usize,
        threads: usize,
    ) -> Vec<f32> {
        let frames = frames.clamp(1, self.dims.n_audio_ctx);
        self.capture = Some(Capture {
            heads: heads.to_vec(),
            frames,
            out: vec![0.0; heads.len() * tokens.len() * frames],
        });
        self.reset(1);
        self.forward(w, tokens, None, threads);
        self.capture.take().map(|c| c.out).unwrap_or_default()
    }

    /// After [`forward_capture`](Self::forward_capture) of `tokens`: for each row `r` in
    /// `from..tokens.len() - 1`, the probability the model gave `tokens[r + 1]` there, the
    /// softmax taken over the text tokens `..eot` only (openai's word probabilities). The
    /// output projection runs over a few rows at a time in the logits buffer.
    pub fn next_token_probabilities(
        &mut self,
        w: &Weights,
        tokens: &[u32],
        from: usize,
        eot: usize,
        threads: usize,
    ) -> Vec<f32> {
        let d = self.dims.n_text_state;
        let vocab = self.dims.n_vocab;
        assert!(self.batch == 1 && self.len == tokens.len());
        let eot = eot.min(vocab);
        let chunk = (self.last.len() / d).min(self.logits.len() / vocab).max(1);
        let rows: Vec<usize> = (from..tokens.len().saturating_sub(1)).collect();
        let mut out = Vec::with_capacity(rows.len());
        for group in rows.chunks(chunk) {
            for (k, &r) in group.iter().enumerate() {
                w.dec_ln.forward(
                    &self.x[r * d..(r + 1) * d],
                    &mut self.last[k * d..(k + 1) * d],
                );
            }
            w.tok_emb.logits(
                &self.last[..group.len() * d],
                group.len(),
                &mut self.logits,
                par(threads),
            );
            for (k, &r) in group.iter().enumerate() {
                let row = &self.logits[k * vocab..k * vocab + eot];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = row.iter().map(|&l| (l - max).exp()).sum();
                let target = tokens[r + 1] as usize;
                out.push(row.get(target).map_or(0.0, |&l| (l - max).exp() / sum));
            }
        }
        out
    }

    /// Screens the logits of later single-sequence calls without `extra` (greedy decoding)
    /// with the int8 copy of the output projection, when the model has one
    /// ([`Weights::vocab_screen`]), keeping tokens from `exact_from` on (the timestamps) exact;
    /// `None` turns screening off. A screened row must go through [`Self::refine`] before any
    /// decision is taken on it.
    pub fn set_screening(&mut self, exact_from: Option<usize>) {
        self.screen_exact_from = exact_from;
    }

    /// Makes a screened logits row exact where it matters: after masking (`-inf` entries are
    /// skipped), every token whose screened logit, raised by its error bound, reaches the best
    /// lower bound of any unmasked token is recomputed with the f16 projection, bit for bit as
    /// an unscreened call computes it. The argmax of the row is then the exact one. The other
    /// entries stay within their error bound (a few tenths of a logit) of the exact values.
    /// `row` is the row index of the last call; no-op when that call was not screened.
    pub fn refine(&self, w: &Weights, row: usize, logits: &mut [f32]) -> usize {
        match (self.screen_exact_from, &w.vocab_screen, self.screened) {
            (Some(exact_from), Some(screen), true) => {
                let d = self.dims.n_text_state;
                let h = &self.last[row * d..(row + 1) * d];
                let vocab = logits.len().min(self.dims.n_vocab);
                refine_screened(
                    &w.tok_emb,
                    screen,
                    h,
                    self.screen_err[row],
                    exact_from,
                    &mut logits[..vocab],
                )
            }
            _ => 0,
        }
    }

    /// Logits row `i` of the last forward call.
    pub fn logits_row(&self, i: usize) -> &[f32] {
        let v = self.dims.n_vocab;
        &self.logits[i * v..(i + 1) * v]
    }
}

/// The error bound factor of screened logits for the row `h`: each weight is within
/// `scale / 2` of its int8 value, so the weights add at most `scale[j] · ‖h‖₁ / 2`, and the
/// int16 rounding of `h` at most `scale[j] · input_rounding_bound(h)`; the 5 % margin covers
/// the f32 rounding of both sums (at most ~1 % of the bound for `d ≤ 1280`).
fn screen_error(h: &[f32], screen: &MatLow) -> f32 {
    1.05 * (0.5 * h.iter().map(|v| v.abs()).sum::<f32>() + screen.input_rounding_bound(h))
}

/// [`DecoderState::refine`] for one row `h` whose logits below `exact_from` were screened with
/// `screen` (error bound `scale[j] · err`): recomputes exactly every unmasked token that could
/// be the maximum. Returns how many were recomputed.
fn refine_screened(
    emb: &Embedding,
    screen: &MatLow,
    h: &[f32],
    err: f32,
    exact_from: usize,
    logits: &mut [f32],
) -> usize {
    let Some(scales) = screen.int8_scales() else {
        return 0;
    };
    let vocab = logits.len();
    let exact_from = exact_from.min(vocab);
    let ninf = f32::NEG_INFINITY;
    // The best lower bound of any unmasked token.
    let mut lower = ninf;
    for (&l, &s) in logits[..exact_from].iter().zip(scales) {
        if l != ninf {
            lower = lower.max(l - s * err);
        }
    }
    for &l in &logits[exact_from..] {
        lower = lower.max(l);
    }
    if lower == ninf {
        return 0;
    }
    let mut recomputed = 0;
    for j in 0..exact_from {
        let l = logits[j];
        if l != ninf && l + scales[j] * err >= lower {
            emb.logits_cols(h, 1, j..j + 1, logits, Parallelism::None);
            recomputed += 1;
        }
    }
    recomputed
}

/// Up to this many queries per sequence, [`attend`] reads K and V in place ([`ops::attend_head`])
/// instead of running two GEMMs per head.
const ATTEND_DIRECT_MAX_QUERIES: usize = 8;

/// Multi-head attention of `n` queries over `keys` keys; per-head outputs `[heads][n][dh]`.
fn attend(a: AttendArgs<'_>, scores: &mut [f32], head_out: &mut [f32]) {
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
        heads,
        dh,
        scale,
        causal_offset,
    } = a;
    scores[..heads * n * keys]
        .par_chunks_mut(n * keys)
        .zip(head_out[..heads * n * dh].par_chunks_mut(n * dh))
        .enumerate()
        .for_each(|(h, (s, out))| {
            let c = h * dh;
            if n <= ATTEND_DIRECT_MAX_QUERIES {
                ops::attend_head(&a, h, s, out);
                return;
            }
            matmul_strided(
                n,
                keys,
                dh,
                s,
                keys,
                &q[c..],
                q_rs,
                1,
                &k[c * k_ps..],
                k_ps,
                k_rs,
                scale,
                Parallelism::None,
            );
            for (i, row) in s.chunks_exact_mut(keys).enumerate() {
                if let Some(offset) = causal_offset {
                    row[offset + i + 1..]
                        .iter_mut()
                        .for_each(|x| *x = f32::NEG_INFINITY);
                }
                softmax_row(row);
            }
            matmul_strided(
                n,
                dh,
                keys,
                out,
                dh,
                s,
                keys,
                1,
                &v[c..],
                v_rs,
                1,
                1.0,
                Parallelism::None,
            );
        });
}

/// `[heads][n][dh]` → rows `[n][heads * dh]`.
fn scatter_heads(head_out: &[f32], n: usize, heads: usize, dh: usize, out: &mut [f32]) {
    let d = heads * dh;
    for h in 0..heads {
        for i in 0..n {
            out[i * d + h * dh..i * d + (h + 1) * dh]
                .copy_from_slice(&head_out[(h * n + i) * dh..(h * n + i + 1) * dh]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_half_follows_the_measured_machine_classes() {
        use Int8Half::{Decoder, Encoder};
        use amx::Backend::{Amx, Avx512Bf16, Emulated};
        // (backend, VNNI, AMD cpu family, the half)
        let classes = [
            // Intel with AMX tiles: the bf16 encoder on the tiles, the int8 decoder.
            (Amx, true, None, Decoder),
            // AMD Zen 4 (cpu family 25): the int8 encoder on vpdpbusd.
            (Avx512Bf16, true, Some(25), Encoder),
            // AMD Zen 5 (cpu family 26) and later: the int8 decoder behind the bf16 encoder.
            (Avx512Bf16, true, Some(26), Decoder),
            (Avx512Bf16, true, Some(27), Decoder),
            // No VNNI: no int8 encoder to choose.
            (Avx512Bf16, false, Some(25), Decoder),
            (Emulated, false, None, Decoder),
            // VNNI without a fast bf16 backend (e.g. Intel Ice Lake): the int8 encoder.
            (Emulated, true, None, Encoder),
        ];
        for (backend, vnni, family, want) in classes {
            assert_eq!(
                Int8Half::for_cpu(backend, vnni, family),
                want,
                "{backend:?}, VNNI {vnni}, AMD family {family:?}"
            );
        }
        // What this machine uses, for the test log.
        eprintln!(
            "this CPU: backend {:?}, VNNI {}, AMD family {:?} -> {:?}",
            amx::Backend::detected(),
            vnni::usable(),
            amx::amd_family(),
            Int8Half::detected()
        );
    }

    #[test]
    fn blocked_encoder_attention_matches_naive() {
        // More rows than one block, a ragged last block, on one thread and on two.
        let (t, heads, dh) = (2 * ATTN_BLOCK_ROWS + 13, 2, 16);
        let d = heads * dh;
        let qkv: Vec<f32> = (0..t * 3 * d).map(|i| (i as f32 * 0.113).sin()).collect();
        let scale = 1.0 / (dh as f32).sqrt();
        let want = |h: usize, i: usize, p: usize| -> f32 {
            let c = h * dh;
            let logits: Vec<f64> = (0..t)
                .map(|j| {
                    (0..dh)
                        .map(|x| qkv[i * 3 * d + c + x] as f64 * qkv[j * 3 * d + d + c + x] as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            (0..t)
                .map(|j| (logits[j] - max).exp() / sum * qkv[j * 3 * d + 2 * d + c + p] as f64)
                .sum::<f64>() as f32
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for threads in [1, 2] {
            let mut kp: Vec<PackedB> = (0..heads).map(|_| PackedB::default()).collect();
            let mut vp: Vec<PackedB> = (0..heads).map(|_| PackedB::default()).collect();
            let mut out = vec![0.0; heads * t * dh];
            pool.install(|| {
                encoder_self_attention(
                    &qkv, t, heads, dh, scale, &mut kp, &mut vp, &mut out, threads,
                )
            });
            for h in 0..heads {
                for i in [0, 1, ATTN_BLOCK_ROWS - 1, ATTN_BLOCK_ROWS, t - 1] {
                    for p in [0, dh - 1] {
                        let got = out[(h * t + i) * dh + p];
                        assert!(
                            (got - want(h, i, p)).abs() < 1e-4,
                            "threads {threads} h {h} i {i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn blocked_encoder_attention_bf16_matches_rounded_reference() {
        // Q, K, V and the unnormalised probabilities rounded to bf16, scores and softmax exact,
        // the output divided by the sum of the rounded probabilities: the bf16 attention on
        // both backends, more rows than one block, a ragged last block.
        let (t, heads, dh) = (2 * ATTN_BLOCK_ROWS_BF16 + 13, 2, 16);
        let d = heads * dh;
        let qkv: Vec<f32> = (0..t * 3 * d).map(|i| (i as f32 * 0.113).sin()).collect();
        let r = |x: f32| amx::round_bf16(x) as f64;
        let scale = 1.0 / (dh as f32).sqrt();
        let want = |h: usize, i: usize, p: usize| -> f64 {
            let c = h * dh;
            let logits: Vec<f64> = (0..t)
                .map(|j| {
                    (0..dh)
                        .map(|x| r(qkv[i * 3 * d + c + x]) * r(qkv[j * 3 * d + d + c + x]))
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| r((l - max).exp() as f32)).collect();
            let sum: f64 = e.iter().sum();
            (0..t)
                .map(|j| e[j] * r(qkv[j * 3 * d + 2 * d + c + p]))
                .sum::<f64>()
                / sum
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for backend in [
            amx::Backend::Amx,
            amx::Backend::Avx512Bf16,
            amx::Backend::Emulated,
        ] {
            if !backend.supported() {
                continue;
            }
            for threads in [1, 2] {
                let new = || -> Vec<PackedBf16> {
                    (0..heads).map(|_| PackedBf16::empty(backend)).collect()
                };
                let (mut kp, mut vp) = (new(), new());
                let mut out = vec![0.0; heads * t * dh];
                pool.install(|| {
                    encoder_self_attention(
                        &qkv, t, heads, dh, scale, &mut kp, &mut vp, &mut out, threads,
                    )
                });
                let b = ATTN_BLOCK_ROWS_BF16;
                for h in 0..heads {
                    for i in [0, 1, b - 1, b, 2 * b + 1, t - 1] {
                        for p in [0, 7, dh - 1] {
                            let got = out[(h * t + i) * dh + p] as f64;
                            assert!(
                                (got - want(h, i, p)).abs() < 2e-3,
                                "{backend:?} threads {threads} h {h} i {i} p {p}: {got} vs {}",
                                want(h, i, p)
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn f16_embedding_is_lossless_and_matches_f32_logits() {
        let (vocab, d, rows) = (131, 24, 3);
        // Values exactly representable in f16 select the f16 path.
        let data: Vec<f32> = (0..vocab * d)
            .map(|i| half::f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 64.0).to_f32())
            .collect();
        let emb = Embedding::new(data.clone(), d);
        assert!(matches!(emb, Embedding::Low(_)));
        let mut row = vec![0.0; d];
        emb.row_into(77, &mut row);
        assert_eq!(row, data[77 * d..78 * d]);

        let h: Vec<f32> = (0..rows * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut got = vec![0.0; vocab * rows];
        emb.logits(&h, rows, &mut got, Parallelism::None);
        let reference = Embedding::F32 { data, d };
        let mut want = vec![0.0; vocab * rows];
        reference.logits(&h, rows, &mut want, Parallelism::None);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{g} vs {w}");
        }

        // A value f16 cannot hold keeps the f32 path.
        assert!(matches!(
            Embedding::new(vec![0.1; d], d),
            Embedding::F32 { .. }
        ));
    }

    #[test]
    fn screened_logits_refine_to_the_exact_choice() {
        // Many near-equal logits (the hard case for screening), masks, an exact tail.
        let (vocab, d, exact_from) = (4001, 64, 3900);
        let data: Vec<f32> = (0..vocab * d)
            .map(|i| {
                let x = ((i as u64 * 2654435761) % 1_000_003) as f32 / 1_000_003.0 - 0.5;
                half::f16::from_f32(x * 0.2).to_f32()
            })
            .collect();
        let emb = Embedding::new(data.clone(), d);
        let screen = MatLow::int8(&data, vocab, d).expect("d fits the int8 kernels");
        let mut total_recomputed = 0;
        for trial in 0..40 {
            let h: Vec<f32> = (0..d)
                .map(|i| ((i * 7 + trial * 13) as f32 * 0.71).sin() * 2.0)
                .collect();
            let mut exact = vec![0.0; vocab];
            emb.logits(&h, 1, &mut exact, Parallelism::None);
            let mut logits = vec![0.0; vocab];
            matmul_low_cols(
                &h,
                1,
                &screen,
                0..exact_from,
                &mut logits,
                vocab,
                false,
                None,
                Parallelism::None,
            );
            emb.logits_cols(&h, 1, exact_from..vocab, &mut logits, Parallelism::None);
            let err = screen_error(&h, &screen);
            let scales = screen.int8_scales().expect("int8");
            for j in 0..vocab {
                let bound = if j < exact_from { scales[j] * err } else { 0.0 };
                assert!(
                    (logits[j] - exact[j]).abs() <= bound,
                    "token {j}: bound violated"
                );
            }
            // Mask every third token, and in some trials the exact maximum itself.
            let masked: Vec<bool> = (0..vocab).map(|j| (j + trial) % 3 == 0).collect();
            let mut want = exact.clone();
            for j in 0..vocab {
                if masked[j] {
                    want[j] = f32::NEG_INFINITY;
                    logits[j] = f32::NEG_INFINITY;
                }
            }
            total_recomputed += refine_screened(&emb, &screen, &h, err, exact_from, &mut logits);
            let best = |x: &[f32]| (0..vocab).fold(0, |b, j| if x[j] > x[b] { j } else { b });
            assert_eq!(best(&logits), best(&want), "trial {trial}: argmax differs");
            assert_eq!(
                logits[best(&want)],
                want[best(&want)],
                "the choice is exact"
            );
        }
        // Screening only pays when few tokens need recomputing.
        assert!(
            total_recomputed < 40 * vocab / 20,
            "recomputed {total_recomputed}"
        );
    }
}
