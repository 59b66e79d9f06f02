//! Voice activity detection (VAD) on 16 kHz mono audio, engine side (no GStreamer).
//!
//! A [`Vad`] turns samples into one speech probability per 32 ms frame ([`VAD_FRAME`] samples); a
//! [`Segmenter`] turns those probabilities into speech start/end events with hysteresis, the way
//! Silero's `get_speech_timestamps` does.
//!
//! Two detectors:
//! - [`SileroVad`]: the Silero VAD network (MIT) run by ONNX Runtime. The runtime library is loaded
//!   at run time (the `ort` crate's `load-dynamic`), so neither building nor running needs it unless
//!   Silero is asked for. `scripts/fetch-runtime` installs the library into `runtime/onnxruntime/`
//!   and the model into `models/silero-vad/silero_vad.onnx`.
//! - [`EnergyVad`]: a statistical detector (per-bin noise tracking and a likelihood ratio test, with a
//!   stationarity check) that needs nothing; [`open`] falls back to it when Silero cannot be loaded.
//!
//! ```no_run
//! use gstwhispernpu::vad::{self, Segmenter, SegmenterOptions, VadKind};
//! let (mut vad, warning) = vad::open(VadKind::Silero, None, None);
//! if let Some(w) = warning {
//!     eprintln!("{w}");
//! }
//! let mut segmenter = Segmenter::new(SegmenterOptions::default());
//! let mut probs = Vec::new();
//! # let samples = vec![0.0f32; 16000];
//! vad.push(&samples, &mut probs);
//! for event in segmenter.push(&probs) {
//!     println!("{event:?}");
//! }
//! ```

mod energy;
mod segmenter;
mod silero;

use std::path::Path;

pub use energy::EnergyVad;
pub use segmenter::{Segmenter, SegmenterOptions, VadEvent};
pub use silero::{
    LIBRARY_ENV, MODEL_ENV, RUNTIME_ROOT_ENV, SileroError, SileroVad, library_search_dirs,
    model_search_paths, resolve_library, resolve_model,
};

/// Sample rate every detector here expects, in Hz.
pub const VAD_SAMPLE_RATE: u32 = 16_000;

/// Frame = 512 samples at 16 kHz (32 ms).
pub const VAD_FRAME: usize = 512;

/// A frame-level speech detector.
pub trait Vad: Send {
    /// Feeds 16 kHz mono f32 samples (any count; an incomplete frame is kept for the next call)
    /// and appends one speech probability in `[0, 1]` per completed frame to `out`. The
    /// probabilities do not depend on how the samples are split between calls.
    fn push(&mut self, samples: &[f32], out: &mut Vec<f32>);
    /// Forgets all state (recurrent state, noise estimate, buffered samples): the next sample
    /// starts a new stream.
    fn reset(&mut self);
    /// `"silero"` or `"energy"`.
    fn name(&self) -> &'static str;
    /// A problem met while running (for instance ONNX Runtime failing mid-stream, after which the
    /// Silero detector carries on with the energy detector), reported once.
    fn take_warning(&mut self) -> Option<String> {
        None
    }
}

/// Which detector [`open`] should try to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VadKind {
    /// Silero VAD through ONNX Runtime, falling back to [`VadKind::Energy`] when unavailable.
    #[default]
    Silero,
    /// The built-in statistical detector.
    Energy,
}

/// Opens a detector. For [`VadKind::Silero`] the runtime library and the model are found, in
/// order, through: the explicit paths; the environment (`ORT_DYLIB_PATH`, `WHISPERNPU_VAD_MODEL`);
/// `$WHISPERNPU_RUNTIME` and `$WHISPERNPU_MODELS` (where `scripts/fetch-runtime` installs); `<cwd>/runtime`
/// and `<cwd>/models`; this source tree's `runtime` and `models` (as
/// [`crate::model::search_dirs`] does for Whisper models). On any failure this returns the energy
/// detector and a warning saying what was missing and how to fix it (`scripts/fetch-runtime`);
/// it never panics, whatever the library found.
///
/// `model` may name the `.onnx` file or a directory holding `silero_vad.onnx`; `runtime` may name
/// the library file or a directory holding `libonnxruntime.so` (directly or under `onnxruntime/`).
/// An explicit path, `ORT_DYLIB_PATH` or `WHISPERNPU_VAD_MODEL` is used alone: when it is wrong
/// the warning names it rather than another copy being used silently. ONNX Runtime is loaded once
/// per process; a warning (with a working Silero detector) also says when it was already loaded
/// from another file than the one asked for.
pub fn open(
    kind: VadKind,
    model: Option<&Path>,
    runtime: Option<&Path>,
) -> (Box<dyn Vad>, Option<String>) {
    match kind {
        VadKind::Energy => (Box::new(EnergyVad::new()), None),
        VadKind::Silero => match SileroVad::open(model, runtime) {
            Ok((vad, note)) => (Box::new(vad), note),
            Err(e) => (
                Box::new(EnergyVad::new()),
                Some(format!(
                    "Silero VAD unavailable, using the energy VAD instead: {e}"
                )),
            ),
        },
    }
}
