//! Engines: what runs a Whisper model. One interface, three implementations:
//!
//! - [`cpu`]: the native Rust engine (default; no external runtime). Its weights are prepared
//!   from any file the readers of [`crate::model`] open (CTranslate2, GGML, safetensors).
//! - [`onnx`]: ONNX Runtime (loaded at run time) on an ONNX export in Hugging Face Optimum's
//!   layout, with an execution provider: CPU, Vitis AI (Ryzen AI NPUs), OpenVINO, CUDA, ROCm,
//!   MIGraphX, CoreML, DirectML.
//! - [`npu`]: the one-dispatch AIE2 encoder for AMD Ryzen AI NPUs (host code over a device trait:
//!   the simulated device of `npu-sim`, XRT); it replaces the native engine's encoder.
//!
//! The transcriber sees an engine as an [`Encoder`] (one 30 s window's log-mel → the encoder's
//! output) and a [`Decoder`] (a KV-cached decoder over a batch of token sequences); everything
//! above (mel, seek loop, decoding, fallbacks, word timing, live policy) is the same code for
//! every engine. A model is loaded once per process per engine configuration
//! ([`load_shared`]) and shared by every transcriber and element using it.

pub mod cpu;
pub mod npu;
pub mod onnx;
pub mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use once_cell::sync::Lazy;

use crate::error::{Error, ModelError};
use crate::model::{ModelConfig, ModelFile, ModelFormat, resolve};

/// Numeric precision of the engine (`compute-type` property, `--compute-type` flag).
///
/// - `f32`: weights exactly as stored (f16 checkpoints are held in f16 for the decoder, which is
///   lossless); encoder and activations f32.
/// - `int8`: decoder weights and the tied output projection quantised to int8 with a scale per
///   row (lossy; activations stay f32); encoder f32.
/// - `bf16`: the encoder's matrix products (convolutions as im2col, QKV, attention scores and
///   `P · V`, output projection, MLP) take bf16-rounded inputs (round to nearest even) and
///   accumulate in f32; LayerNorm, GELU, softmax, bias and residuals stay f32. Runs on Intel AMX
///   tiles where the CPU has them (several times faster than the f32 encoder), else on AVX-512
///   `vdpbf16ps` where the CPU has AVX512_BF16 (AMD Zen 4 and 5: the encoder's products about
///   1.9x f32's); elsewhere the f32 kernels run on bf16-rounded operands, which gives the same
///   numbers up to summation order but no speed-up. The decoder is as with `f32`.
/// - `int8-bf16`: int8 weights in one half of the model, the one where they save the most time
///   on this CPU ([`cpu::Int8Half`]), bf16 products elsewhere. Where the CPU has AVX512-VNNI,
///   no AMX and half-width 512-bit units (AMD Zen 4): the encoder's linear layers (QKV, output
///   projection, MLP) in int8 on `vpdpbusd` (weights quantised once per output, inputs per row
///   on the fly, exact integer sums, as CTranslate2's int8), its attention and convolutions as
///   with `bf16`, the decoder as with `f32`. Where the encoder's bf16 products are fast (AMX
///   tiles, faster there than `vpdpbusd`; AMD Zen 5's full-width `vdpbf16ps`): the encoder as
///   with `bf16`, and the decoder's layers in int8 with a scale per row for the steps of
///   offline decoding (half the bytes a token reads), their f16 weights (exact) for the steps
///   of live captioning, and a
///   bf16 copy for prompts (many-row products on the tiles); the output projection in int8
///   as with `int8`; the cross-attention K/V projection in bf16. int8 in both halves moved the
///   benchmark WER past faster-whisper float32's + 0.5 on AMD Zen 4 (tiny.en 7.75 %). Live
///   captioning encodes with the encoder layers' bf16 copy ([`Encoder::set_live`]) and decodes
///   with the exact weights ([`Decoder::set_live`]): rounded decoder weights read tiny.en 2.3
///   to 3.3 points worse live on the 111.9 s recording, not worse offline. Without VNNI or a
///   fast bf16 backend, as with `bf16`.
/// - `auto`: the fastest type whose accuracy holds (WER no worse than faster-whisper float32's
///   plus 0.5 point on `scripts/bench-anchor`, see [`ComputeType::resolution`]): `int8-bf16`
///   where the encoder runs on AMX tiles (Intel) or where the CPU has AVX512_BF16 and
///   AVX512-VNNI (AMD Zen 4 and 5, with the int8 half [`cpu::Int8Half`] chooses); `bf16` with
///   AVX512_BF16 alone; `f32` elsewhere (emulated bf16 is no faster). Neither bf16 nor int8
///   is bit-faithful; the README's Performance section has each machine class's WER for each
///   type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ComputeType {
    #[default]
    Auto,
    F32,
    Int8,
    Bf16,
    Int8Bf16,
}

impl ComputeType {
    pub const NAMES: &'static str = "auto, f32, int8, bf16, int8-bf16";

    /// The concrete type `auto` stands for.
    pub fn resolved(self) -> ComputeType {
        self.resolution().0
    }

    /// The concrete type and why: `auto` picks, per CPU, the fastest type whose WER stays within
    /// faster-whisper float32's + 0.5 point on `scripts/bench-anchor` (measured per machine
    /// class, see the README's Performance section): `int8-bf16` where Intel AMX tiles or
    /// AVX-512 `vdpbf16ps` and `vpdpbusd` run it; `bf16` with `vdpbf16ps` alone; else `f32`
    /// (`int8` is faster offline at the same benchmark WER, but its live WER is at the edge of
    /// the live target: opt-in).
    pub fn resolution(self) -> (ComputeType, &'static str) {
        let (resolved, why) = self.rule();
        match cpu::Int8Half::detection() {
            (half, true) if self == ComputeType::Auto && resolved == ComputeType::Int8Bf16 => (
                resolved,
                match half {
                    cpu::Int8Half::Encoder => {
                        "WHISPERNPU_INT8_HALF=encoder: the encoder's linear layers in int8 on \
                         vpdpbusd, the decoder's weights as stored"
                    }
                    cpu::Int8Half::Decoder => {
                        "WHISPERNPU_INT8_HALF=decoder: the encoder in bf16, the decoder's \
                         weights in int8"
                    }
                },
            ),
            _ => (resolved, why),
        }
    }

    /// [`resolution`](Self::resolution) by the CPU's features alone.
    fn rule(self) -> (ComputeType, &'static str) {
        match self {
            ComputeType::Auto => match cpu::amx::Backend::detected() {
                cpu::amx::Backend::Amx => (
                    ComputeType::Int8Bf16,
                    "this CPU has Intel AMX: the encoder runs in bf16 on its tiles (about 3x the \
                         f32 encoder) and the decoder streams int8 weights (half the bytes a token \
                         reads), at a WER within faster-whisper float32's + 0.5",
                ),
                cpu::amx::Backend::Avx512Bf16
                    if cpu::vnni::usable()
                        && cpu::Int8Half::detected() == cpu::Int8Half::Decoder =>
                {
                    (
                        ComputeType::Int8Bf16,
                        "this CPU has AVX512_BF16 and AVX512-VNNI, no AMX, and full-width 512-bit \
                         units (AMD Zen 5 or later): the encoder runs in bf16 on vdpbf16ps and the \
                         decoder streams int8 weights (base on Zen 5: 1.5 against 2.7 ms a token \
                         with f16 layers, the int8 encoder only 8 % faster than bf16), at a WER \
                         within faster-whisper float32's + 0.5",
                    )
                }
                cpu::amx::Backend::Avx512Bf16 if cpu::vnni::usable() => (
                    ComputeType::Int8Bf16,
                    "this CPU has AVX512_BF16 and AVX512-VNNI (no AMX; AMD Zen 4): the encoder's \
                         linear layers run in int8 on vpdpbusd and its attention in bf16 on \
                         vdpbf16ps, about 2.1x the f32 encoder, at a WER within faster-whisper \
                         float32's + 0.5",
                ),
                cpu::amx::Backend::Avx512Bf16 => (
                    ComputeType::Bf16,
                    "this CPU has AVX512_BF16 (no AMX): the bf16 encoder runs on vdpbf16ps, \
                         about 1.7x the f32 encoder, at a WER within faster-whisper float32's + 0.5",
                ),
                cpu::amx::Backend::Emulated => (
                    ComputeType::F32,
                    "neither Intel AMX nor AVX512_BF16 on this CPU (bf16 would be emulated, at \
                         f32 speed); int8 is faster offline at the same benchmark WER, but live it \
                         reads 2.0 points above offline on the 111.9 s test recording (f32: 0.3), \
                         so it stays opt-in (compute-type=int8)",
                ),
            },
            other => (other, "as asked"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ComputeType::Auto => "auto",
            ComputeType::F32 => "f32",
            ComputeType::Int8 => "int8",
            ComputeType::Bf16 => "bf16",
            ComputeType::Int8Bf16 => "int8-bf16",
        }
    }
}

impl std::str::FromStr for ComputeType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ComputeType::Auto),
            "f32" => Ok(ComputeType::F32),
            "int8" => Ok(ComputeType::Int8),
            "bf16" => Ok(ComputeType::Bf16),
            "int8-bf16" => Ok(ComputeType::Int8Bf16),
            _ => Err(format!(
                "unknown compute type `{s}` (known: {})",
                Self::NAMES
            )),
        }
    }
}

impl std::fmt::Display for ComputeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The encoder of an engine: one 30 s window's log-mel `[n_mels][3000]` → the encoder output
/// `[n_audio_ctx][d]`, in one call (per window, never per layer or operator from here).
pub trait Encoder: Send {
    fn encode(&mut self, mel: &[f32], out: &mut [f32], threads: usize) -> Result<(), Error>;
    /// Live captioning (short buffers decoded again and again, padded to the window) is more
    /// sensitive to the encoder's rounding than whole windows: an engine with a faster, less
    /// precise choice for offline work (the native engine's int8 linear layers with
    /// `compute-type=int8-bf16`) takes its more precise one for every window encoded after
    /// `set_live(true)`.
    fn set_live(&mut self, _live: bool) {}
    /// Device dispatches so far, for engines that count them (the NPU).
    fn dispatches(&self) -> u64 {
        0
    }
}

/// The decoder of an engine: a batch of token sequences of equal length over one window's
/// encoder output, with their self-attention caches.
pub trait Decoder: Send {
    /// Takes a window's encoder output `[n_audio_ctx][d]` (the cross-attention K/V are
    /// computed from it once) and empties the caches.
    fn set_audio(&mut self, encoder_out: &[f32], threads: usize) -> Result<(), Error>;
    /// Empties the caches and sets the number of sequences.
    fn reset(&mut self, batch: usize);
    /// New sequence `i` continues old sequence `sources[i]`; `sources.len()` becomes the batch.
    fn reorder(&mut self, sources: &[usize]);
    /// Feeds `n` new tokens to each sequence (`tokens` is `[batch][n]`) and computes the logits
    /// of each sequence's last position (rows `0..batch`), then, with `extra`, of that position
    /// among the new tokens (rows `batch..2 * batch`).
    fn forward(
        &mut self,
        tokens: &[u32],
        extra: Option<usize>,
        threads: usize,
    ) -> Result<(), Error>;
    /// Most draft tokens [`forward_verify`](Self::forward_verify) takes; 0: the engine cannot
    /// verify drafts.
    fn max_verify(&self) -> usize {
        0
    }
    /// Greedy decoding with a draft (the tokens a previous decode of the same audio chose):
    /// feeds `tokens` to the one sequence (at most [`max_verify`](Self::max_verify)) and
    /// computes the logits of every new position (row `r`: after `tokens[..=r]`), so the
    /// tokens that agree cost one call instead of one each.
    fn forward_verify(&mut self, _tokens: &[u32], _threads: usize) -> Result<(), Error> {
        Err(Error::Engine {
            engine: "decoder".into(),
            why: "this engine cannot verify drafts".into(),
        })
    }
    /// Keeps the first `len` positions of the caches (drops draft tokens not accepted).
    fn truncate(&mut self, _len: usize) {}
    /// Logits row `i` of the last [`forward`](Self::forward).
    fn logits_row(&self, i: usize) -> &[f32];
    /// Tokens held per sequence.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn batch(&self) -> usize;
    /// Greedy single-sequence steps may compute the logits below `exact_from` approximately
    /// and [`refine`](Self::refine) the ones that matter (the native engine's int8 vocabulary
    /// screen); `None` turns that off. Engines without it ignore the call.
    fn set_screening(&mut self, _exact_from: Option<usize>) {}
    /// Live captioning: as [`Encoder::set_live`], a decoder with a faster, less precise choice
    /// for offline work (the native engine's int8 layers with `compute-type=int8-bf16`) takes
    /// its more precise one for every call after `set_live(true)`.
    fn set_live(&mut self, _live: bool) {}
    /// Makes a screened logits row exact where it can decide the choice; returns how many
    /// entries were recomputed.
    fn refine(&self, _row: usize, _logits: &mut [f32]) -> usize {
        0
    }
    /// Whether [`forward_capture`](Self::forward_capture) can give cross-attention weights.
    fn can_capture(&self) -> bool;
    /// One sequence of `tokens` from empty caches, returning the cross-attention weights of
    /// `heads` (`(layer, head)` pairs) over the first `frames` encoder positions, renormalised
    /// to sum to one there: `[heads.len()][tokens.len()][frames]`.
    fn forward_capture(
        &mut self,
        tokens: &[u32],
        heads: &[(usize, usize)],
        frames: usize,
        threads: usize,
    ) -> Result<Vec<f32>, Error>;
    /// After [`forward_capture`](Self::forward_capture) of `tokens`: for each row `r` in
    /// `from..tokens.len() - 1`, the probability of `tokens[r + 1]` there, the softmax taken
    /// over the text tokens `..eot` only.
    fn next_token_probabilities(
        &mut self,
        tokens: &[u32],
        from: usize,
        eot: usize,
        threads: usize,
    ) -> Result<Vec<f32>, Error>;
}

/// Which engine runs a model, and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum EngineKind {
    /// The native CPU engine (any format but ONNX).
    #[default]
    Native,
    /// ONNX Runtime on an ONNX export.
    Onnx(onnx::OnnxOptions),
}

impl EngineKind {
    pub fn name(&self) -> &'static str {
        match self {
            EngineKind::Native => "cpu",
            EngineKind::Onnx(_) => "onnx",
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LoadOptions {
    pub compute_type: ComputeType,
    pub engine: EngineKind,
}

/// The weights an engine prepared.
pub enum ModelWeights {
    Cpu(cpu::Weights),
    Onnx(onnx::OnnxModel),
}

/// A model ready to run: its configuration ([`ModelConfig`], which this dereferences to) and
/// the weights its engine prepared. Immutable, shared by every transcriber and element using it.
pub struct WhisperModel {
    pub config: ModelConfig,
    pub weights: ModelWeights,
    /// The concrete compute type of the native engine's weights (never `Auto`).
    pub compute_type: ComputeType,
}

impl std::ops::Deref for WhisperModel {
    type Target = ModelConfig;
    fn deref(&self) -> &ModelConfig {
        &self.config
    }
}

impl WhisperModel {
    /// Loads a model (directory or file, any [`ModelFormat`] the native engine reads) for the
    /// default compute type.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::load_with(path, ComputeType::Auto)
    }

    /// Loads a model for the native engine, preparing its weights for `compute_type`.
    pub fn load_with(path: &Path, compute_type: ComputeType) -> Result<Self, ModelError> {
        Self::load_opts(
            path,
            &LoadOptions {
                compute_type,
                engine: EngineKind::Native,
            },
        )
    }

    /// Opens the model at `path` ([`ModelFile::open`]: headers, dimensions, tensors checked)
    /// and prepares its weights for the engine of `opts`.
    pub fn load_opts(path: &Path, opts: &LoadOptions) -> Result<Self, ModelError> {
        crate::fault::point("load");
        let file = ModelFile::open(path)?;
        let config = file.config()?;
        let compute_type = opts.compute_type.resolved();
        let weights = match &opts.engine {
            EngineKind::Native => {
                let source = file.source()?;
                ModelWeights::Cpu(cpu::Weights::from_source(
                    &*source,
                    &file.dims,
                    compute_type,
                )?)
            }
            EngineKind::Onnx(onnx_opts) => {
                if file.format != ModelFormat::Onnx {
                    return Err(ModelError::Unsupported {
                        path: path.to_path_buf(),
                        what: format!(
                            "{} model for ONNX Runtime: backend=onnx needs an ONNX export \
                             (make one with scripts/export-onnx)",
                            file.format
                        ),
                    });
                }
                let layout = file
                    .onnx_layout()
                    .unwrap_or(crate::model::OnnxLayout::Merged);
                ModelWeights::Onnx(onnx::OnnxModel::load(path, layout, &file.dims, onnx_opts)?)
            }
        };
        Ok(Self {
            config,
            weights,
            compute_type,
        })
    }

    /// The native engine's weights (`None` for an ONNX model).
    pub fn cpu_weights(&self) -> Option<&cpu::Weights> {
        match &self.weights {
            ModelWeights::Cpu(w) => Some(w),
            ModelWeights::Onnx(_) => None,
        }
    }

    /// What runs this model, for messages: `cpu (f32)`, `onnx (CPUExecutionProvider)`.
    pub fn engine_description(&self) -> String {
        match &self.weights {
            ModelWeights::Cpu(_) => format!("cpu ({})", self.compute_type),
            ModelWeights::Onnx(o) => format!("onnx ({})", o.description()),
        }
    }

    /// Whether the engine runs on something other than the CPU cores the decoder uses (ONNX
    /// Runtime with an accelerator execution provider).
    pub fn runs_on_accelerator(&self) -> bool {
        match &self.weights {
            ModelWeights::Cpu(_) => false,
            ModelWeights::Onnx(o) => o.provider().is_accelerator(),
        }
    }

    /// A new encoder of this model's engine.
    pub fn new_encoder(self: &Arc<Self>) -> Box<dyn Encoder> {
        match &self.weights {
            ModelWeights::Cpu(_) => Box::new(cpu::CpuEncoder::new(Arc::clone(self))),
            ModelWeights::Onnx(_) => Box::new(onnx::OnnxEncoder::new(Arc::clone(self))),
        }
    }

    /// A new decoder of this model's engine, for batches of up to `max_batch` sequences.
    pub fn new_decoder(self: &Arc<Self>, max_batch: usize) -> Box<dyn Decoder> {
        match &self.weights {
            ModelWeights::Cpu(_) => Box::new(cpu::CpuDecoder::new(Arc::clone(self), max_batch)),
            ModelWeights::Onnx(_) => Box::new(onnx::OnnxDecoder::new(Arc::clone(self), max_batch)),
        }
    }
}

type SharedKey = (PathBuf, LoadOptions);

static SHARED: Lazy<Mutex<HashMap<SharedKey, Weak<WhisperModel>>>> =
    Lazy::new(|| Mutex::new(HashMap::new()));

/// Loads a model by name or path for the native engine and the default compute type, sharing
/// one copy of the weights per process (see [`load_shared_opts`]).
pub fn load_shared(name_or_path: &str) -> Result<Arc<WhisperModel>, ModelError> {
    load_shared_with(name_or_path, ComputeType::Auto)
}

/// [`load_shared`] for a compute type.
pub fn load_shared_with(
    name_or_path: &str,
    compute_type: ComputeType,
) -> Result<Arc<WhisperModel>, ModelError> {
    load_shared_opts(
        name_or_path,
        &LoadOptions {
            compute_type,
            engine: EngineKind::Native,
        },
    )
}

/// Loads a model by name or path, sharing one copy of the weights per process and load
/// options: every caller asking for the same model and options while a copy is alive gets the
/// same `Arc`.
pub fn load_shared_opts(
    name_or_path: &str,
    opts: &LoadOptions,
) -> Result<Arc<WhisperModel>, ModelError> {
    let dir = resolve(name_or_path)?;
    let mut opts = opts.clone();
    opts.compute_type = opts.compute_type.resolved();
    let key = (dir.canonicalize().unwrap_or(dir.clone()), opts.clone());
    // Hold the lock while loading so two elements starting together load once.
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(model) = shared.get(&key).and_then(Weak::upgrade) {
        return Ok(model);
    }
    let model = Arc::new(WhisperModel::load_opts(&dir, &opts)?);
    shared.insert(key, Arc::downgrade(&model));
    Ok(model)
}
