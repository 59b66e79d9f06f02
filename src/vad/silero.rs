//! Silero VAD (v5/v6 ONNX models) through ONNX Runtime, loaded at run time.
//!
//! Each 512-sample frame goes to the network with the last 64 samples of the previous frame in
//! front of it (zeros after a reset), as the official `OnnxWrapper` and faster-whisper do; the
//! recurrent state is carried from one frame to the next. Two model layouts are understood:
//! - silero-vad's `silero_vad.onnx` / `silero_vad_16k_op15.onnx`: inputs `input` [1, 576] f32,
//!   `state` [2, 1, 128] f32, `sr` i64 scalar; outputs `output` [1, 1], `stateN` [2, 1, 128];
//! - the sequence exports (`silero_vad_16k_sequence.onnx`, faster-whisper's `silero_vad_v6.onnx`):
//!   inputs `input` [1, 576], `h` [1, 1, 128], `c` [1, 1, 128]; outputs `speech_probs` [1], `hn`, `cn`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use ort::logging::LogLevel;
use ort::memory::Allocator;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::Tensor;

use super::{EnergyVad, VAD_FRAME, VAD_SAMPLE_RATE, Vad};
pub use crate::engine::onnx::runtime::{
    LIBRARY_ENV, RUNTIME_ROOT_ENV, RuntimeError, library_search_dirs, resolve_library,
};
use crate::engine::onnx::runtime::{Runtime, list, runtime};

/// Samples of the previous frame fed again in front of each frame.
const CONTEXT: usize = 64;
/// Samples per network call: context + frame.
const WINDOW: usize = CONTEXT + VAD_FRAME;
/// LSTM width of every Silero v5/v6 model.
const HIDDEN: usize = 128;

/// Environment variable naming the Silero model file.
pub const MODEL_ENV: &str = "WHISPERNPU_VAD_MODEL";
const FIX: &str = "run scripts/fetch-runtime";
const MODEL_DIR: &str = "silero-vad";
const MODEL_FILE: &str = "silero_vad.onnx";

/// Why Silero could not be opened. Every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SileroError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(
        "Silero VAD model not found (looked for {}); {FIX}, or set {MODEL_ENV} to a silero_vad.onnx",
        list(tried)
    )]
    ModelNotFound { tried: Vec<PathBuf> },
    #[error("Silero VAD model {} (from {origin}) does not exist; {FIX}, or fix {origin}", path.display())]
    ModelMissing { path: PathBuf, origin: String },
    #[error("cannot run the Silero VAD model {}: {reason}; {FIX} to install a known-good copy", path.display())]
    Model { path: PathBuf, reason: String },
    /// Both the library and the model are missing.
    #[error("{library}; and {model}")]
    Both {
        library: Box<SileroError>,
        model: Box<SileroError>,
    },
}

/// Model files searched when neither an explicit path nor `WHISPERNPU_VAD_MODEL` is given, in
/// order: `$WHISPERNPU_MODELS/silero-vad/silero_vad.onnx`, `./models/...`, and this source tree's
/// `models/...` (as [`crate::model::search_dirs`] does for Whisper models).
pub fn model_search_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(root) = std::env::var_os("WHISPERNPU_MODELS").filter(|v| !v.is_empty()) {
        paths.push(PathBuf::from(root).join(MODEL_DIR).join(MODEL_FILE));
    }
    paths.push(PathBuf::from("models").join(MODEL_DIR).join(MODEL_FILE));
    paths.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(MODEL_DIR)
            .join(MODEL_FILE),
    );
    paths
}

/// Finds the Silero model: `explicit` (a file, or a directory holding `silero_vad.onnx`), else
/// `$WHISPERNPU_VAD_MODEL`, else the first of [`model_search_paths`] that exists.
pub fn resolve_model(explicit: Option<&Path>) -> Result<PathBuf, SileroError> {
    let given = explicit
        .map(|p| (p.to_path_buf(), "the model path given".to_string()))
        .or_else(|| {
            std::env::var_os(MODEL_ENV)
                .filter(|v| !v.is_empty())
                .map(|v| (PathBuf::from(v), MODEL_ENV.to_string()))
        });
    if let Some((path, origin)) = given {
        let path = if path.is_dir() {
            path.join(MODEL_FILE)
        } else {
            path
        };
        return if path.is_file() {
            Ok(path)
        } else {
            Err(SileroError::ModelMissing { path, origin })
        };
    }
    let tried = model_search_paths();
    tried
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(SileroError::ModelNotFound { tried })
}

fn msg(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// How the recurrent state enters and leaves the model.
enum Recurrent {
    /// `state` [2, 1, 128] in, `stateN` out; plus the `sr` scalar input.
    Joint {
        state: Tensor<f32>,
        sample_rate: Tensor<i64>,
    },
    /// `h`, `c` [1, 1, 128] in; `hn`, `cn` out.
    Split { h: Tensor<f32>, c: Tensor<f32> },
}

/// What each model input is, in the session's input order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Slot {
    Audio,
    State,
    SampleRate,
    H,
    C,
}

/// Silero VAD: one ONNX Runtime session (one intra-op thread) per instance.
pub struct SileroVad {
    session: Session,
    run_options: RunOptions<HasSelectedOutputs>,
    inputs: [Slot; 3],
    /// Output index of the new state(s) (`stateN`, or `hn` then `cn`); the probability is output 0.
    state_outputs: [usize; 2],
    recurrent: Recurrent,
    /// `[context | frame]`, fed to the model as `input` [1, 576]; the frame part fills up as samples
    /// arrive.
    audio: Tensor<f32>,
    filled: usize,
    model: PathBuf,
    library: PathBuf,
    /// Set when ONNX Runtime failed mid-stream: the rest of the stream goes to the energy VAD.
    fallback: Option<EnergyVad>,
    warning: Option<String>,
}

impl SileroVad {
    /// Opens the model and the runtime (see [`resolve_model`], [`resolve_library`]); returns the
    /// detector and, when ONNX Runtime was already loaded from another file, a note saying so.
    pub fn open(
        model: Option<&Path>,
        library: Option<&Path>,
    ) -> Result<(Self, Option<String>), SileroError> {
        let (library, model) = match (resolve_library(library), resolve_model(model)) {
            (Ok(library), Ok(model)) => (library, model),
            (Err(library), Err(model)) => {
                return Err(SileroError::Both {
                    library: Box::new(library.into()),
                    model: Box::new(model),
                });
            }
            (Err(e), _) => return Err(e.into()),
            (_, Err(e)) => return Err(e),
        };
        let (rt, note) = runtime(&library)?;
        let vad = Self::with_runtime(rt, &model)?;
        Ok((vad, note))
    }

    fn with_runtime(rt: &'static Runtime, model: &Path) -> Result<Self, SileroError> {
        let fail = |reason: String| SileroError::Model {
            path: model.to_path_buf(),
            reason,
        };
        let built = catch_unwind(AssertUnwindSafe(|| Self::build(rt, model)));
        let mut vad = match built {
            Ok(r) => r.map_err(fail)?,
            Err(panic) => {
                return Err(fail(format!(
                    "ONNX Runtime panicked: {}",
                    crate::error::panic_message(&*panic)
                )));
            }
        };
        // One silent frame through the network: shape or type mismatches show up now rather than
        // in the middle of a stream.
        let p = vad.run_frame().map_err(fail)?;
        if !(0.0..=1.0).contains(&p) {
            return Err(fail(format!(
                "the model's speech probability for silence is {p}, not in [0, 1]: not a Silero VAD model?"
            )));
        }
        vad.reset();
        Ok(vad)
    }

    fn build(rt: &Runtime, model: &Path) -> Result<Self, String> {
        let session = Session::builder(&rt.environment)
            .map_err(msg)?
            .with_intra_threads(1)
            .map_err(msg)?
            .with_inter_threads(1)
            .map_err(msg)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(msg)?
            .with_log_level(LogLevel::Error)
            .map_err(msg)?
            .commit_from_file(model)
            .map_err(msg)?;

        let in_names: Vec<String> = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        let out_names: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let unsupported = || {
            format!(
                "unsupported model layout (inputs {in_names:?}, outputs {out_names:?}); expected Silero VAD v5/v6 \
                 with inputs input/state/sr or input/h/c"
            )
        };
        if in_names.len() != 3 {
            return Err(unsupported());
        }
        let mut inputs = [Slot::Audio; 3];
        for (slot, name) in inputs.iter_mut().zip(&in_names) {
            *slot = match name.as_str() {
                "input" => Slot::Audio,
                "state" => Slot::State,
                "sr" => Slot::SampleRate,
                "h" => Slot::H,
                "c" => Slot::C,
                _ => return Err(unsupported()),
            };
        }
        let has = |s: Slot| inputs.contains(&s);
        let has_output = |name: &str| out_names.iter().any(|n| n == name);
        let zeros = |shape: [usize; 3]| {
            Tensor::from_array((shape, vec![0.0f32; shape.iter().product()])).map_err(msg)
        };
        let alloc = Allocator::default();
        // Outputs come back in the order the selector names them: probability first.
        let (recurrent, selector, state_outputs) =
            if has(Slot::Audio) && has(Slot::State) && has(Slot::SampleRate) {
                if !(has_output("output") && has_output("stateN")) {
                    return Err(unsupported());
                }
                let selector = OutputSelector::no_default()
                    .with("output")
                    .with("stateN")
                    .preallocate(
                        "output",
                        Tensor::<f32>::new(&alloc, [1usize, 1]).map_err(msg)?,
                    )
                    .preallocate(
                        "stateN",
                        Tensor::<f32>::new(&alloc, [2usize, 1, HIDDEN]).map_err(msg)?,
                    );
                let recurrent = Recurrent::Joint {
                    state: zeros([2, 1, HIDDEN])?,
                    sample_rate: Tensor::from_array(((), vec![i64::from(VAD_SAMPLE_RATE)]))
                        .map_err(msg)?,
                };
                (recurrent, selector, [1, 1])
            } else if has(Slot::Audio) && has(Slot::H) && has(Slot::C) {
                if !(has_output("speech_probs") && has_output("hn") && has_output("cn")) {
                    return Err(unsupported());
                }
                let selector = OutputSelector::no_default()
                    .with("speech_probs")
                    .with("hn")
                    .with("cn")
                    .preallocate(
                        "speech_probs",
                        Tensor::<f32>::new(&alloc, [1usize]).map_err(msg)?,
                    )
                    .preallocate(
                        "hn",
                        Tensor::<f32>::new(&alloc, [1usize, 1, HIDDEN]).map_err(msg)?,
                    )
                    .preallocate(
                        "cn",
                        Tensor::<f32>::new(&alloc, [1usize, 1, HIDDEN]).map_err(msg)?,
                    );
                let recurrent = Recurrent::Split {
                    h: zeros([1, 1, HIDDEN])?,
                    c: zeros([1, 1, HIDDEN])?,
                };
                (recurrent, selector, [1, 2])
            } else {
                return Err(unsupported());
            };
        let run_options = RunOptions::new().map_err(msg)?.with_outputs(selector);
        let audio = Tensor::from_array(([1usize, WINDOW], vec![0.0f32; WINDOW])).map_err(msg)?;
        Ok(Self {
            session,
            run_options,
            inputs,
            state_outputs,
            recurrent,
            audio,
            filled: 0,
            model: model.to_path_buf(),
            library: rt.library.clone(),
            fallback: None,
            warning: None,
        })
    }

    /// The model file in use.
    pub fn model_path(&self) -> &Path {
        &self.model
    }

    /// The ONNX Runtime library in use.
    pub fn library_path(&self) -> &Path {
        &self.library
    }

    /// Runs the network on the window in `self.audio`, carries the recurrent state, shifts the
    /// context, and returns the speech probability.
    fn run_frame(&mut self) -> Result<f32, String> {
        let value = |slot: Slot| -> SessionInputValue<'_> {
            match (slot, &self.recurrent) {
                (Slot::Audio, _) => (&self.audio).into(),
                (Slot::State, Recurrent::Joint { state, .. }) => state.into(),
                (Slot::SampleRate, Recurrent::Joint { sample_rate, .. }) => sample_rate.into(),
                (Slot::H, Recurrent::Split { h, .. }) => h.into(),
                (Slot::C, Recurrent::Split { c, .. }) => c.into(),
                // `build` only pairs slots with their own layout.
                _ => unreachable!("input slot {slot:?} does not belong to this model layout"),
            }
        };
        let inputs = [
            value(self.inputs[0]),
            value(self.inputs[1]),
            value(self.inputs[2]),
        ];
        let outputs = self
            .session
            .run_with_options(inputs, &self.run_options)
            .map_err(msg)?;
        let prob = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(msg)?
            .1
            .first()
            .copied()
            .ok_or("the model returned an empty probability")?;
        let copy_state = |out: usize, into: &mut Tensor<f32>| -> Result<(), String> {
            let new = outputs[out].try_extract_tensor::<f32>().map_err(msg)?.1;
            let dst = into.extract_tensor_mut().1;
            if new.len() != dst.len() {
                return Err(format!(
                    "the model returned a state of {} values, expected {}",
                    new.len(),
                    dst.len()
                ));
            }
            dst.copy_from_slice(new);
            Ok(())
        };
        match &mut self.recurrent {
            Recurrent::Joint { state, .. } => copy_state(self.state_outputs[0], state)?,
            Recurrent::Split { h, c } => {
                copy_state(self.state_outputs[0], h)?;
                copy_state(self.state_outputs[1], c)?;
            }
        }
        drop(outputs);
        let window = self.audio.extract_tensor_mut().1;
        window.copy_within(VAD_FRAME.., 0);
        Ok(prob.clamp(0.0, 1.0))
    }

    fn clear_state(&mut self) {
        match &mut self.recurrent {
            Recurrent::Joint { state, .. } => state.extract_tensor_mut().1.fill(0.0),
            Recurrent::Split { h, c } => {
                h.extract_tensor_mut().1.fill(0.0);
                c.extract_tensor_mut().1.fill(0.0);
            }
        }
    }
}

impl Vad for SileroVad {
    fn push(&mut self, mut samples: &[f32], out: &mut Vec<f32>) {
        if let Some(energy) = &mut self.fallback {
            energy.push(samples, out);
            return;
        }
        while !samples.is_empty() {
            let take = (VAD_FRAME - self.filled).min(samples.len());
            let window = self.audio.extract_tensor_mut().1;
            let dst = &mut window[CONTEXT + self.filled..CONTEXT + self.filled + take];
            // A NaN would poison the recurrent state for the rest of the stream.
            for (d, &x) in dst.iter_mut().zip(&samples[..take]) {
                *d = if x.is_finite() { x } else { 0.0 };
            }
            self.filled += take;
            samples = &samples[take..];
            if self.filled < VAD_FRAME {
                break;
            }
            self.filled = 0;
            match self.run_frame() {
                Ok(p) => out.push(p),
                Err(reason) => {
                    // Not expected after the check in `open`; keep the stream going rather than
                    // stop detecting speech.
                    self.warning = Some(format!(
                        "Silero VAD failed ({reason}); using the energy VAD for the rest of the stream"
                    ));
                    let mut energy = EnergyVad::new();
                    energy.push(samples, out);
                    self.fallback = Some(energy);
                    return;
                }
            }
        }
    }

    fn reset(&mut self) {
        self.clear_state();
        self.audio.extract_tensor_mut().1.fill(0.0);
        self.filled = 0;
        self.fallback = None;
    }

    fn name(&self) -> &'static str {
        if self.fallback.is_some() {
            "energy"
        } else {
            "silero"
        }
    }

    fn take_warning(&mut self) -> Option<String> {
        self.warning.take()
    }
}
