//! Typed errors of the engine. Each names the file or parameter at fault.

use std::path::PathBuf;

/// Problems with a model directory or file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file not found: {path} (install a model with `scripts/fetch-model NAME`)")]
    NotFound { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is truncated: {what}")]
    Truncated { path: PathBuf, what: String },
    #[error("{path} is corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("{path}: unsupported {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: missing weight `{name}`")]
    MissingWeight { path: PathBuf, name: String },
    #[error("{path}: weight `{name}` has shape {found:?}, expected {expected:?}")]
    BadShape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("unknown model `{name}`: known names are {known}; or pass a model directory")]
    UnknownName { name: String, known: String },
}

/// Errors of transcription.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("invalid option `{option}`: {why}")]
    InvalidOption { option: &'static str, why: String },
    #[error("backend `{backend}` is not available: {why}")]
    BackendUnavailable { backend: String, why: String },
    /// An engine failed while running (ONNX Runtime returned an error, the NPU's worker stopped).
    #[error("the {engine} failed: {why}")]
    Engine { engine: String, why: String },
}

/// The text of a caught panic's payload (`panic!("...")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}
