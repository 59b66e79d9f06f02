//! Whisper models: CTranslate2 directories, whisper.cpp GGML files and Hugging Face safetensors
//! checkpoints; configuration, weights and tokenizer.

mod bytes;
pub mod ct2;
pub mod export;
pub mod ggml;
pub mod safetensors;
pub mod source;
pub mod tokenizer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use once_cell::sync::Lazy;

use crate::error::ModelError;
pub use tokenizer::{SpecialTokens, Tokenizer};

/// Model names `scripts/fetch-model` knows.
pub const KNOWN_MODELS: &[&str] = &["tiny.en", "base"];

/// Numeric precision of the engine (`compute-type` property, `--compute-type` flag).
///
/// - `f32`: weights exactly as stored (f16 checkpoints are held in f16 for the decoder, which is
///   lossless); encoder and activations f32.
/// - `int8`: decoder weights and the tied output projection quantised to int8 with a scale per
///   row (lossy; activations stay f32); encoder f32.
/// - `bf16`: the encoder's matrix products (convolutions as im2col, QKV, attention scores and
///   `P · V`, output projection, MLP) take bf16-rounded inputs (round to nearest even) and
///   accumulate in f32; LayerNorm, GELU, softmax, bias and residuals stay f32. Runs on Intel AMX
///   tiles where the CPU has them (several times faster than the f32 encoder); elsewhere the
///   f32 kernels run on bf16-rounded operands, which gives the same numbers up to summation
///   order but no speed-up. The decoder is as with `f32`.
/// - `auto`: the fastest type whose accuracy holds (WER no worse than faster-whisper float32's
///   plus 0.5 point on `scripts/bench-anchor`): `bf16` where the encoder runs on AMX tiles, `f32`
///   elsewhere (emulated bf16 is no faster). bf16 is not bit-faithful: on the 295 s benchmark
///   audio base gives f32's words (two segment times 0.04 s apart) while tiny.en re-segments
///   and changes a few words at a WER of 7.00 % against f32's 7.12 %; jfk.wav is identical
///   for both. `int8` also keeps the WER but is slower than `bf16` (its encoder is f32), so it
///   stays opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ComputeType {
    #[default]
    Auto,
    F32,
    Int8,
    Bf16,
}

impl ComputeType {
    pub const NAMES: &'static str = "auto, f32, int8, bf16";

    /// The concrete type `auto` stands for.
    pub fn resolved(self) -> ComputeType {
        match self {
            ComputeType::Auto => {
                if crate::engine::cpu::amx::Backend::detected()
                    == crate::engine::cpu::amx::Backend::Amx
                {
                    ComputeType::Bf16
                } else {
                    ComputeType::F32
                }
            }
            other => other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ComputeType::Auto => "auto",
            ComputeType::F32 => "f32",
            ComputeType::Int8 => "int8",
            ComputeType::Bf16 => "bf16",
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

/// Model dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dims {
    pub n_mels: usize,
    pub n_audio_ctx: usize,
    pub n_audio_state: usize,
    pub n_audio_head: usize,
    pub n_audio_layer: usize,
    pub n_vocab: usize,
    pub n_text_ctx: usize,
    pub n_text_state: usize,
    pub n_text_head: usize,
    pub n_text_layer: usize,
}

/// A loaded model: weights converted once, tokenizer and configuration. Immutable, shared by
/// every transcriber and element instance using it.
pub struct WhisperModel {
    /// The model directory, or the file for a GGML or single safetensors file.
    pub dir: PathBuf,
    /// The format it was read from.
    pub format: ModelFormat,
    pub dims: Dims,
    pub tokenizer: Tokenizer,
    /// `suppress_ids` from config.json (what `suppress_tokens=[-1]` expands to).
    pub suppress_ids: Vec<u32>,
    /// `suppress_ids_begin` from config.json.
    pub suppress_ids_begin: Vec<u32>,
    /// `[layer, head]` pairs for word timing.
    pub alignment_heads: Vec<(usize, usize)>,
    pub weights: crate::engine::cpu::Weights,
    /// The concrete compute type the weights were prepared for (never `Auto`).
    pub compute_type: ComputeType,
}

/// The formats a model can be read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFormat {
    /// A CTranslate2 directory (`model.bin`, `config.json`, `vocabulary.txt`/`tokenizer.json`).
    Ct2,
    /// A whisper.cpp GGML file (f32, f16, or quantised: dequantised on load).
    Ggml,
    /// A Hugging Face checkpoint: `*.safetensors` with `config.json` and `tokenizer.json`.
    Safetensors,
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Ct2 => "ct2",
            ModelFormat::Ggml => "ggml",
            ModelFormat::Safetensors => "safetensors",
        }
    }

    /// The format of the model at `path`: a directory with `model.bin` is CTranslate2, a
    /// directory with `*.safetensors` files (or such a file) a Hugging Face checkpoint, a file
    /// starting with the GGML magic a whisper.cpp model.
    pub fn detect(path: &Path) -> Result<Self, ModelError> {
        if path.is_dir() {
            if path.join("model.bin").is_file() {
                return Ok(ModelFormat::Ct2);
            }
            if !safetensors::shard_paths(path)?.is_empty() {
                return Ok(ModelFormat::Safetensors);
            }
            return Err(ModelError::NotFound {
                path: path.join("model.bin"),
            });
        }
        if !path.is_file() {
            return Err(ModelError::NotFound {
                path: path.to_path_buf(),
            });
        }
        if path.extension().is_some_and(|e| e == "safetensors") {
            return Ok(ModelFormat::Safetensors);
        }
        if ggml::is_ggml(path) {
            return Ok(ModelFormat::Ggml);
        }
        // Neither: let the GGML reader say what the file starts with.
        match ggml::GgmlFile::open(path) {
            Err(e) => Err(e),
            Ok(_) => Ok(ModelFormat::Ggml),
        }
    }
}

impl std::fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl WhisperModel {
    /// Loads a model (directory or file, any [`ModelFormat`]) for the default compute type.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::load_with(path, ComputeType::Auto)
    }

    /// Loads a model (directory or file, any [`ModelFormat`]), preparing the weights for
    /// `compute_type`.
    pub fn load_with(path: &Path, compute_type: ComputeType) -> Result<Self, ModelError> {
        let compute_type = compute_type.resolved();
        match ModelFormat::detect(path)? {
            ModelFormat::Ct2 => ct2::load_model(path, compute_type),
            ModelFormat::Ggml => load_ggml(path, compute_type),
            ModelFormat::Safetensors => load_safetensors(path, compute_type),
        }
    }

    pub fn is_multilingual(&self) -> bool {
        self.dims.n_vocab >= 51865
    }
}

/// What a model needs besides its weights, whatever the format.
pub(crate) struct ModelParts {
    pub dir: PathBuf,
    pub format: ModelFormat,
    pub dims: Dims,
    pub tokenizer: Tokenizer,
    /// `None`: openai's non-speech tokens.
    pub suppress_ids: Option<Vec<u32>>,
    /// Empty: `" "` and end of text.
    pub suppress_ids_begin: Vec<u32>,
    /// `None`: every head of the last half of the decoder layers (openai's default).
    pub alignment_heads: Option<Vec<(usize, usize)>>,
}

impl ModelParts {
    pub(crate) fn build(
        self,
        source: &dyn source::TensorSource,
        compute_type: ComputeType,
    ) -> Result<WhisperModel, ModelError> {
        let weights = crate::engine::cpu::Weights::from_source(source, &self.dims, compute_type)?;
        let tokenizer = self.tokenizer;
        // What Hugging Face's `suppress_tokens` (and so CTranslate2's `suppress_ids`) lists:
        // openai's non-speech tokens and the task and start tokens.
        let suppress_ids = self.suppress_ids.unwrap_or_else(|| {
            let s = &tokenizer.specials;
            let mut ids = tokenizer.non_speech_tokens();
            ids.extend([
                s.sot,
                s.translate,
                s.transcribe,
                s.sot_lm,
                s.sot_prev,
                s.no_speech,
            ]);
            ids.sort_unstable();
            ids.dedup();
            ids
        });
        let suppress_ids_begin = if self.suppress_ids_begin.is_empty() {
            tokenizer
                .single_token(" ")
                .into_iter()
                .chain([tokenizer.specials.eot])
                .collect()
        } else {
            self.suppress_ids_begin
        };
        let (layers, heads) = (self.dims.n_text_layer, self.dims.n_text_head);
        let alignment_heads = self.alignment_heads.unwrap_or_else(|| {
            (layers / 2..layers)
                .flat_map(|l| (0..heads).map(move |h| (l, h)))
                .collect()
        });
        Ok(WhisperModel {
            dir: self.dir,
            format: self.format,
            dims: self.dims,
            tokenizer,
            suppress_ids,
            suppress_ids_begin,
            alignment_heads,
            weights,
            compute_type,
        })
    }
}

/// Token ids of a Hugging Face list (negative entries, such as `-1`, dropped).
fn token_ids(list: &[i64]) -> Vec<u32> {
    list.iter().filter_map(|&t| u32::try_from(t).ok()).collect()
}

fn load_ggml(path: &Path, compute_type: ComputeType) -> Result<WhisperModel, ModelError> {
    let file = ggml::GgmlFile::open(path)?;
    let dims = file.header.dims.clone();
    if file.names.is_empty() {
        return Err(ModelError::MissingWeight {
            path: path.to_path_buf(),
            name: "encoder.conv1.weight (the file has no tensors: a whisper.cpp test file?)".into(),
        });
    }
    let parts = ModelParts {
        dir: path.to_path_buf(),
        format: ModelFormat::Ggml,
        tokenizer: file.tokenizer()?,
        dims,
        suppress_ids: None,
        suppress_ids_begin: Vec::new(),
        alignment_heads: None,
    };
    parts.build(&source::OpenaiLayout(&file), compute_type)
}

fn load_safetensors(path: &Path, compute_type: ComputeType) -> Result<WhisperModel, ModelError> {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    let config_path = dir.join("config.json");
    let config = safetensors::read_config(&config_path)?.ok_or_else(|| ModelError::NotFound {
        path: config_path.clone(),
    })?;
    let generation =
        safetensors::read_config(&dir.join("generation_config.json"))?.unwrap_or_default();
    let dims = config.dims(&config_path)?;
    let checkpoint = safetensors::SafetensorsCheckpoint::open(path)?;
    let pick = |a: &[i64], b: &[i64]| token_ids(if a.is_empty() { b } else { a });
    let suppress_ids = pick(&generation.suppress_tokens, &config.suppress_tokens);
    let alignment_heads = if generation.alignment_heads.is_empty() {
        config.alignment_heads
    } else {
        generation.alignment_heads
    };
    let parts = ModelParts {
        dir: path.to_path_buf(),
        format: ModelFormat::Safetensors,
        tokenizer: Tokenizer::load(dir, dims.n_vocab)?,
        suppress_ids: (!suppress_ids.is_empty()).then_some(suppress_ids),
        suppress_ids_begin: pick(
            &generation.begin_suppress_tokens,
            &config.begin_suppress_tokens,
        ),
        alignment_heads: (!alignment_heads.is_empty()).then_some(alignment_heads),
        dims,
    };
    parts.build(&source::OpenaiLayout(&checkpoint), compute_type)
}

/// Directories searched for a model given by name, in order: `$WHISPERNPU_MODELS/NAME`,
/// `./models/NAME`, and this source tree's `models/NAME`.
pub fn search_dirs(name: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(root) = std::env::var_os("WHISPERNPU_MODELS") {
        dirs.push(PathBuf::from(root).join(name));
    }
    dirs.push(PathBuf::from("models").join(name));
    dirs.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(name),
    );
    dirs
}

/// Resolves a model name (`base`) or a path to a model directory or file.
pub fn resolve(name_or_path: &str) -> Result<PathBuf, ModelError> {
    let as_path = Path::new(name_or_path);
    if name_or_path.contains('/') || as_path.exists() {
        if as_path.exists() {
            return Ok(as_path.to_path_buf());
        }
        return Err(ModelError::NotFound {
            path: as_path.to_path_buf(),
        });
    }
    for dir in search_dirs(name_or_path) {
        if dir.join("model.bin").is_file() {
            return Ok(dir);
        }
    }
    if KNOWN_MODELS.contains(&name_or_path) {
        let tried = search_dirs(name_or_path);
        return Err(ModelError::NotFound {
            path: tried.last().cloned().unwrap_or_default(),
        });
    }
    Err(ModelError::UnknownName {
        name: name_or_path.into(),
        known: KNOWN_MODELS.join(", "),
    })
}

type SharedKey = (PathBuf, ComputeType);

static SHARED: Lazy<Mutex<HashMap<SharedKey, Weak<WhisperModel>>>> =
    Lazy::new(|| Mutex::new(HashMap::new()));

/// Loads a model by name or path for the default compute type, sharing one copy of the weights
/// per process (see [`load_shared_with`]).
pub fn load_shared(name_or_path: &str) -> Result<Arc<WhisperModel>, ModelError> {
    load_shared_with(name_or_path, ComputeType::Auto)
}

/// Loads a model by name or path, sharing one copy of the weights per process and compute type:
/// every caller asking for the same directory and type while a copy is alive gets the same `Arc`.
pub fn load_shared_with(
    name_or_path: &str,
    compute_type: ComputeType,
) -> Result<Arc<WhisperModel>, ModelError> {
    let dir = resolve(name_or_path)?;
    let key = (
        dir.canonicalize().unwrap_or(dir.clone()),
        compute_type.resolved(),
    );
    // Hold the lock while loading so two elements starting together load once.
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(model) = shared.get(&key).and_then(Weak::upgrade) {
        return Ok(model);
    }
    let model = Arc::new(WhisperModel::load_with(&dir, compute_type)?);
    shared.insert(key, Arc::downgrade(&model));
    Ok(model)
}
