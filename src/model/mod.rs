//! Whisper models as files: CTranslate2 directories, whisper.cpp GGML files, Hugging Face
//! safetensors checkpoints and ONNX exports (Optimum's layout); their configuration, tokenizer
//! and tensors. Nothing here runs a model: each engine (`crate::engine`) prepares its own
//! weights from what these readers give.

mod bytes;
pub mod ct2;
pub mod export;
pub mod ggml;
pub mod safetensors;
pub mod source;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use crate::error::ModelError;
pub use tokenizer::{SpecialTokens, Tokenizer};

/// Model names `scripts/fetch-model` knows.
pub const KNOWN_MODELS: &[&str] = &["tiny.en", "base"];

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

/// Audio positions of every Whisper encoder: 30 s of 10 ms mel frames, halved by conv2.
pub const N_AUDIO_CTX: usize = 1500;

impl Dims {
    /// Checks the dimensions against each other and against what the engine runs: 1500 audio
    /// positions, 80 or 128 mel bins, heads that divide the widths, a text context long enough
    /// for a prompt and a reply, and bounds that keep every buffer sized from them plausible.
    /// `format` says how the file spells each field, for the error.
    pub fn validate(&self, path: &Path, format: ModelFormat) -> Result<(), ModelError> {
        let field = |f: DimField| -> String {
            use DimField::*;
            match format {
                ModelFormat::Ct2 => match f {
                    Mels => "encoder/conv1/weight has {} input channels".into(),
                    AudioCtx => "encoder/position_encodings/encodings has {} rows".into(),
                    AudioState => "encoder/conv1/weight has {} output channels".into(),
                    AudioHead => "encoder/num_heads (or width / 64) is {}".into(),
                    AudioLayer => "the encoder has {} layers".into(),
                    Vocab => "decoder/embeddings/weight has {} rows".into(),
                    TextCtx => "decoder/position_encodings/encodings has {} rows".into(),
                    TextState => "decoder/embeddings/weight has {} columns".into(),
                    TextHead => "decoder/num_heads (or width / 64) is {}".into(),
                    TextLayer => "the decoder has {} layers".into(),
                },
                ModelFormat::Ggml => format!("header field {} is {{}}", f.ggml()),
                ModelFormat::Safetensors | ModelFormat::Onnx => {
                    format!("config.json {} is {{}}", f.hf())
                }
            }
        };
        let bad = |f: DimField, value: usize, need: String| ModelError::Corrupt {
            path: path.to_path_buf(),
            what: format!(
                "{}, Whisper needs {need}",
                field(f).replace("{}", &value.to_string())
            ),
        };
        use DimField::*;
        if self.n_audio_ctx != N_AUDIO_CTX {
            return Err(bad(AudioCtx, self.n_audio_ctx, N_AUDIO_CTX.to_string()));
        }
        if self.n_mels != 80 && self.n_mels != 128 {
            return Err(bad(Mels, self.n_mels, "80 or 128".into()));
        }
        if !(51864..=51866).contains(&self.n_vocab) {
            return Err(bad(Vocab, self.n_vocab, "51864, 51865 or 51866".into()));
        }
        // A prompt takes up to half the context; the sot sequence and a reply need the rest.
        if !(32..=4096).contains(&self.n_text_ctx) {
            return Err(bad(
                TextCtx,
                self.n_text_ctx,
                "32 to 4096 (448 in every release)".into(),
            ));
        }
        for (layers, f) in [
            (self.n_audio_layer, AudioLayer),
            (self.n_text_layer, TextLayer),
        ] {
            if !(1..=128).contains(&layers) {
                return Err(bad(f, layers, "1 to 128".into()));
            }
        }
        for (state, heads, fs, fh) in [
            (self.n_audio_state, self.n_audio_head, AudioState, AudioHead),
            (self.n_text_state, self.n_text_head, TextState, TextHead),
        ] {
            if !(1..=16384).contains(&state) {
                return Err(bad(fs, state, "1 to 16384".into()));
            }
            if heads == 0 || !state.is_multiple_of(heads) || state / heads > 256 {
                return Err(bad(
                    fh,
                    heads,
                    format!("a head count dividing the width {state} into heads of at most 256"),
                ));
            }
        }
        Ok(())
    }
}

/// A dimension of [`Dims`], for errors that name it as the file spells it.
#[derive(Debug, Clone, Copy)]
enum DimField {
    Mels,
    AudioCtx,
    AudioState,
    AudioHead,
    AudioLayer,
    Vocab,
    TextCtx,
    TextState,
    TextHead,
    TextLayer,
}

impl DimField {
    fn ggml(self) -> &'static str {
        match self {
            DimField::Mels => "n_mels",
            DimField::AudioCtx => "n_audio_ctx",
            DimField::AudioState => "n_audio_state",
            DimField::AudioHead => "n_audio_head",
            DimField::AudioLayer => "n_audio_layer",
            DimField::Vocab => "n_vocab",
            DimField::TextCtx => "n_text_ctx",
            DimField::TextState => "n_text_state",
            DimField::TextHead => "n_text_head",
            DimField::TextLayer => "n_text_layer",
        }
    }
    fn hf(self) -> &'static str {
        match self {
            DimField::Mels => "num_mel_bins",
            DimField::AudioCtx => "max_source_positions",
            DimField::AudioState | DimField::TextState => "d_model",
            DimField::AudioHead => "encoder_attention_heads",
            DimField::AudioLayer => "encoder_layers",
            DimField::Vocab => "vocab_size",
            DimField::TextCtx => "max_target_positions",
            DimField::TextHead => "decoder_attention_heads",
            DimField::TextLayer => "decoder_layers",
        }
    }
}

/// Everything about a model but its weights: where it is, its format and dimensions, the
/// tokenizer and the decoding configuration. Each engine prepares its weights beside it
/// (`crate::engine::WhisperModel`).
pub struct ModelConfig {
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
}

impl ModelConfig {
    pub fn is_multilingual(&self) -> bool {
        self.dims.n_vocab >= 51865
    }
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
    /// An ONNX export in Hugging Face Optimum's layout (`encoder_model.onnx` and a decoder, with
    /// `config.json`, `generation_config.json` and the tokenizer); only ONNX Runtime runs it.
    Onnx,
}

/// Which decoder files an ONNX export holds (detected from the files present, in this order of
/// preference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnnxLayout {
    /// `decoder_model_merged.onnx`: one decoder, with and without past, switched by
    /// `use_cache_branch` (Optimum's default).
    Merged,
    /// `decoder_model.onnx` + `decoder_with_past_model.onnx`.
    Split,
    /// `decoder_model.onnx` alone, no KV cache: the whole sequence is decoded at every step
    /// (static-shape exports for NPUs pad it to a fixed length).
    DecoderOnly,
}

impl OnnxLayout {
    pub const ENCODER: &'static str = "encoder_model.onnx";
    pub const DECODER: &'static str = "decoder_model.onnx";
    pub const DECODER_WITH_PAST: &'static str = "decoder_with_past_model.onnx";
    pub const DECODER_MERGED: &'static str = "decoder_model_merged.onnx";

    /// The layout of the export in `dir`; an error naming the missing file otherwise.
    pub fn detect(dir: &Path) -> Result<Self, ModelError> {
        if !dir.join(Self::ENCODER).is_file() {
            return Err(ModelError::NotFound {
                path: dir.join(Self::ENCODER),
            });
        }
        if dir.join(Self::DECODER_MERGED).is_file() {
            Ok(Self::Merged)
        } else if dir.join(Self::DECODER).is_file() {
            Ok(if dir.join(Self::DECODER_WITH_PAST).is_file() {
                Self::Split
            } else {
                Self::DecoderOnly
            })
        } else {
            Err(ModelError::MissingWeight {
                path: dir.to_path_buf(),
                name: format!(
                    "the decoder: no {} or {} (an incomplete ONNX export?)",
                    Self::DECODER_MERGED,
                    Self::DECODER
                ),
            })
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Merged => "merged",
            Self::Split => "split",
            Self::DecoderOnly => "decoder-only",
        }
    }
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Ct2 => "ct2",
            ModelFormat::Ggml => "ggml",
            ModelFormat::Safetensors => "safetensors",
            ModelFormat::Onnx => "onnx",
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
            if path.join(OnnxLayout::ENCODER).is_file() {
                return Ok(ModelFormat::Onnx);
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

/// What a model needs besides its weights, whatever the format.
struct ModelParts {
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
    /// The configuration, defaults filled in and every token id and head checked.
    fn into_config(self) -> Result<ModelConfig, ModelError> {
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
        // Token lists and alignment heads come from configuration files: out-of-range entries
        // would index past the logits or the attention weights.
        let n_vocab = self.dims.n_vocab as u32;
        for (list, key) in [
            (&suppress_ids, "suppressed tokens"),
            (&suppress_ids_begin, "tokens suppressed at the first step"),
        ] {
            if let Some(&id) = list.iter().find(|&&id| id >= n_vocab) {
                return Err(ModelError::Corrupt {
                    path: self.dir.join("config.json"),
                    what: format!("{key} list token {id}, the vocabulary has {n_vocab} tokens"),
                });
            }
        }
        if let Some(&(l, h)) = self
            .alignment_heads
            .iter()
            .flatten()
            .find(|&&(l, h)| l >= layers || h >= heads)
        {
            return Err(ModelError::Corrupt {
                path: self.dir.join("config.json"),
                what: format!(
                    "alignment head [{l}, {h}] is outside the decoder's {layers} layers of {heads} heads"
                ),
            });
        }
        let alignment_heads = self.alignment_heads.unwrap_or_else(|| {
            (layers / 2..layers)
                .flat_map(|l| (0..heads).map(move |h| (l, h)))
                .collect()
        });
        Ok(ModelConfig {
            dir: self.dir,
            format: self.format,
            dims: self.dims,
            tokenizer,
            suppress_ids,
            suppress_ids_begin,
            alignment_heads,
        })
    }
}

/// Token ids of a Hugging Face list (negative entries, such as `-1`, dropped).
fn token_ids(list: &[i64]) -> Vec<u32> {
    list.iter().filter_map(|&t| u32::try_from(t).ok()).collect()
}

/// A model opened and checked without converting a weight: the file's headers are read, the
/// dimensions validated ([`Dims::validate`]) and every tensor the engine needs found with its
/// shape. Cheap (milliseconds), so it can run where a user waits for an answer (the element's
/// NULL→READY); an engine then prepares its weights from it (`crate::engine::WhisperModel`).
pub struct ModelFile {
    /// The path as given: a directory, or the file of a GGML or single safetensors model.
    pub path: PathBuf,
    pub format: ModelFormat,
    pub dims: Dims,
    file: Opened,
}

enum Opened {
    Ct2(ct2::Ct2File),
    Ggml(ggml::GgmlFile),
    Safetensors {
        checkpoint: safetensors::SafetensorsCheckpoint,
        config: Box<safetensors::HfConfig>,
        generation: Box<safetensors::HfConfig>,
    },
    Onnx {
        layout: OnnxLayout,
        config: Box<safetensors::HfConfig>,
        generation: Box<safetensors::HfConfig>,
    },
}

impl ModelFile {
    /// Opens and checks the model at `path` (any [`ModelFormat`]).
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let format = ModelFormat::detect(path)?;
        let (file, dims, dims_path) = match format {
            ModelFormat::Ct2 => {
                let bin = path.join("model.bin");
                let file = ct2::Ct2File::open(&bin)?;
                let dims = ct2::dims_of(&file)?;
                (Opened::Ct2(file), dims, bin)
            }
            ModelFormat::Ggml => {
                let file = ggml::GgmlFile::open(path)?;
                if file.names.is_empty() {
                    return Err(ModelError::MissingWeight {
                        path: path.to_path_buf(),
                        name: "encoder.conv1.weight (the file has no tensors: a whisper.cpp test file?)"
                            .into(),
                    });
                }
                let dims = file.header.dims.clone();
                (Opened::Ggml(file), dims, path.to_path_buf())
            }
            ModelFormat::Safetensors | ModelFormat::Onnx => {
                let dir = config_dir(path);
                let config_path = dir.join("config.json");
                let config = safetensors::read_config(&config_path)?.ok_or_else(|| {
                    ModelError::NotFound {
                        path: config_path.clone(),
                    }
                })?;
                let generation = safetensors::read_config(&dir.join("generation_config.json"))?
                    .unwrap_or_default();
                let dims = config.dims(&config_path)?;
                let (config, generation) = (Box::new(config), Box::new(generation));
                let opened = if format == ModelFormat::Onnx {
                    Opened::Onnx {
                        layout: OnnxLayout::detect(path)?,
                        config,
                        generation,
                    }
                } else {
                    Opened::Safetensors {
                        checkpoint: safetensors::SafetensorsCheckpoint::open(path)?,
                        config,
                        generation,
                    }
                };
                (opened, dims, config_path)
            }
        };
        dims.validate(&dims_path, format)?;
        let model = Self {
            path: path.to_path_buf(),
            format,
            dims,
            file,
        };
        model.check_tensors()?;
        Ok(model)
    }

    /// The tensors by CTranslate2 name, as the native engine reads them. An ONNX export has
    /// none to give: its weights live in ONNX graphs only ONNX Runtime runs.
    pub fn source(&self) -> Result<Box<dyn source::TensorSource + '_>, ModelError> {
        Ok(match &self.file {
            Opened::Ct2(file) => Box::new(source::Borrowed(file)),
            Opened::Ggml(file) => Box::new(source::OpenaiLayout(file)),
            Opened::Safetensors { checkpoint, .. } => Box::new(source::OpenaiLayout(checkpoint)),
            Opened::Onnx { .. } => {
                return Err(ModelError::Unsupported {
                    path: self.path.clone(),
                    what: "weights for the native engine: this is an ONNX export, which only \
                           ONNX Runtime runs (backend=onnx, --backend onnx)"
                        .into(),
                });
            }
        })
    }

    /// The decoder files of an ONNX export.
    pub fn onnx_layout(&self) -> Option<OnnxLayout> {
        match &self.file {
            Opened::Onnx { layout, .. } => Some(*layout),
            _ => None,
        }
    }

    /// Every tensor the engine reads is present with the shape the dimensions give (biases of
    /// linear layers may be absent), checked without reading data. (An ONNX export's graphs
    /// are checked by ONNX Runtime when the sessions are made.)
    fn check_tensors(&self) -> Result<(), ModelError> {
        if self.format == ModelFormat::Onnx {
            return Ok(());
        }
        let source = self.source()?;
        for (name, shape) in source::engine_tensors(&self.dims) {
            let optional = name.ends_with("/bias") && !name.contains("/conv");
            if optional && !source.contains(&name) {
                continue;
            }
            source.check(&name, &shape)?;
        }
        Ok(())
    }

    /// The tokenizer (from the model directory, or embedded in a GGML file).
    pub fn tokenizer(&self) -> Result<Tokenizer, ModelError> {
        match &self.file {
            Opened::Ggml(file) => file.tokenizer(),
            _ => Tokenizer::load(config_dir(&self.path), self.dims.n_vocab),
        }
    }

    /// The configuration: tokenizer, suppressed tokens, alignment heads (from the model's
    /// configuration files, or openai's defaults), each checked against the dimensions.
    pub fn config(&self) -> Result<ModelConfig, ModelError> {
        let tokenizer = self.tokenizer()?;
        let parts = match &self.file {
            Opened::Ct2(_) => {
                let config = ct2::read_config(&self.path)?;
                ModelParts {
                    dir: self.path.clone(),
                    format: self.format,
                    dims: self.dims.clone(),
                    tokenizer,
                    // As CTranslate2 does: what config.json lists (nothing when it is absent).
                    suppress_ids: Some(config.suppress_ids),
                    suppress_ids_begin: config.suppress_ids_begin,
                    alignment_heads: Some(config.alignment_heads),
                }
            }
            Opened::Ggml(_) => ModelParts {
                dir: self.path.clone(),
                format: self.format,
                dims: self.dims.clone(),
                tokenizer,
                suppress_ids: None,
                suppress_ids_begin: Vec::new(),
                alignment_heads: None,
            },
            Opened::Safetensors {
                config, generation, ..
            }
            | Opened::Onnx {
                config, generation, ..
            } => {
                let pick = |a: &[i64], b: &[i64]| token_ids(if a.is_empty() { b } else { a });
                let suppress_ids = pick(&generation.suppress_tokens, &config.suppress_tokens);
                let alignment_heads = if generation.alignment_heads.is_empty() {
                    config.alignment_heads.clone()
                } else {
                    generation.alignment_heads.clone()
                };
                ModelParts {
                    dir: self.path.clone(),
                    format: self.format,
                    dims: self.dims.clone(),
                    tokenizer,
                    suppress_ids: (!suppress_ids.is_empty()).then_some(suppress_ids),
                    suppress_ids_begin: pick(
                        &generation.begin_suppress_tokens,
                        &config.begin_suppress_tokens,
                    ),
                    alignment_heads: (!alignment_heads.is_empty()).then_some(alignment_heads),
                }
            }
        };
        parts.into_config()
    }
}

/// The directory holding a model's configuration and tokenizer: the path itself, or the
/// directory of a model file.
fn config_dir(path: &Path) -> &Path {
    if path.is_dir() {
        path
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }
}

/// Resolves and opens a model by name or path (see [`ModelFile::open`]): what the element checks
/// at NULL→READY before loading the weights on its loader thread.
pub fn inspect(name_or_path: &str) -> Result<ModelFile, ModelError> {
    ModelFile::open(&resolve(name_or_path)?)
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
        if dir.join("model.bin").is_file() || dir.join(OnnxLayout::ENCODER).is_file() {
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
