//! Whisper models: CTranslate2 directories, configuration, weights and tokenizer.

pub mod ct2;
pub mod tokenizer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use once_cell::sync::Lazy;

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

/// A loaded model: weights converted once, tokenizer and configuration. Immutable, shared by
/// every transcriber and element instance using it.
pub struct WhisperModel {
    pub dir: PathBuf,
    pub dims: Dims,
    pub tokenizer: Tokenizer,
    /// `suppress_ids` from config.json (what `suppress_tokens=[-1]` expands to).
    pub suppress_ids: Vec<u32>,
    /// `suppress_ids_begin` from config.json.
    pub suppress_ids_begin: Vec<u32>,
    /// `[layer, head]` pairs for word timing.
    pub alignment_heads: Vec<(usize, usize)>,
    pub weights: crate::engine::cpu::Weights,
}

impl WhisperModel {
    /// Loads a CTranslate2 model directory.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        ct2::load_model(dir)
    }

    pub fn is_multilingual(&self) -> bool {
        self.dims.n_vocab >= 51865
    }
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

/// Resolves a model name (`base`) or a path to a model directory.
pub fn resolve(name_or_path: &str) -> Result<PathBuf, ModelError> {
    let as_path = Path::new(name_or_path);
    if name_or_path.contains('/') || as_path.is_dir() {
        if as_path.is_dir() {
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

static SHARED: Lazy<Mutex<HashMap<PathBuf, Weak<WhisperModel>>>> =
    Lazy::new(|| Mutex::new(HashMap::new()));

/// Loads a model by name or path, sharing one copy of the weights per process: every caller
/// asking for the same directory while a copy is alive gets the same `Arc`.
pub fn load_shared(name_or_path: &str) -> Result<Arc<WhisperModel>, ModelError> {
    let dir = resolve(name_or_path)?;
    let key = dir.canonicalize().unwrap_or(dir.clone());
    // Hold the lock while loading so two elements starting together load once.
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(model) = shared.get(&key).and_then(Weak::upgrade) {
        return Ok(model);
    }
    let model = Arc::new(WhisperModel::load(&dir)?);
    shared.insert(key, Arc::downgrade(&model));
    Ok(model)
}
