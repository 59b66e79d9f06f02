//! Implementation of `whispernpu`: pads, properties, events, queries, the model loader and the
//! worker thread.
//!
//! Threads:
//! * the application thread converts no weights: NULL→READY checks the backend and opens and
//!   checks the model (headers, dimensions, every tensor's shape: milliseconds; a bad `backend`
//!   or `model` fails the state change with an element error naming the file and field), then
//!   starts a loader thread that converts the weights (Progress messages). READY→PAUSED waits
//!   for it: a model that fails there (a NaN weight, a panic) fails that state change with its
//!   error, so a stream never starts without a model. Weights are shared process-wide by
//!   `model::load_shared`;
//! * the streaming thread converts audio to f32, maps timestamps to output time and queues it,
//!   together with the serialized events, in arrival order. Non-live it waits while more than
//!   [`MAX_QUEUED_OFFLINE`] of audio is queued (back-pressure); live it never waits;
//! * the worker thread owns the engine, decodes according to a [`DecodePolicy`] and pushes text,
//!   GAP, tag and the queued events downstream, in order. EOS is pushed after the drain.
//!
//! Both threads of the element run their bodies under `catch_unwind`: a panic (a bug) becomes
//! an element error naming the stage, a Progress ERROR (loader) and a flow error upstream; the
//! worker goes on handling events, so EOS and flushes still pass and nothing hangs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gst::ClockTime;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use once_cell::sync::Lazy;

use super::arrival::ArrivalDelay;
use super::policy::{DecodePolicy, Offline, PolicyOutput, Streaming};
use super::timeline::{Placement, SAMPLE_RATE, Timeline, samples_to_time, time_to_samples};
use super::{
    Backend, CaptionPreset, ComputeTypeMode, ExecutionProvider, Mode, OutputMode, TaskMode,
};
use crate::engine::{EngineKind, LoadOptions, WhisperModel, onnx};
use crate::error::{Error, ModelError, panic_message};
use crate::model;
use crate::transcribe::{
    CaptionLayout, EncoderBackend, Partial, Segment, SpeechGate, Task, TranscribeOptions,
    Transcriber, VadFilterOptions, shape_captions,
};
use crate::vad::SegmenterOptions;

static CAT: Lazy<gst::DebugCategory> = Lazy::new(|| {
    gst::DebugCategory::new(
        "whispernpu",
        gst::DebugColorFlags::empty(),
        Some("Whisper speech-to-text"),
    )
});

const DEFAULT_MODEL: &str = "base";
const DEFAULT_BACKEND: Backend = Backend::Auto;
const DEFAULT_EXECUTION_PROVIDER: ExecutionProvider = ExecutionProvider::Auto;
const DEFAULT_COMPUTE_TYPE: ComputeTypeMode = ComputeTypeMode::Auto;
const DEFAULT_LANGUAGE_CODE: &str = "";
const DEFAULT_TASK: TaskMode = TaskMode::Transcribe;
const DEFAULT_LATENCY_MS: u32 = 4_000;
const DEFAULT_LATENESS_MS: u32 = 0;
const DEFAULT_BEAM_SIZE: u32 = 1;
const DEFAULT_N_THREADS: u32 = 0;
const DEFAULT_INITIAL_PROMPT: &str = "";
const DEFAULT_NO_SPEECH_THRESHOLD: f32 = 0.6;
const DEFAULT_CONDITION_ON_PREVIOUS_TEXT: bool = true;
const DEFAULT_MODE: Mode = Mode::Auto;
const DEFAULT_VAD: bool = true;
const DEFAULT_PARTIAL_RESULTS: bool = false;
const DEFAULT_OUTPUT: OutputMode = OutputMode::Segments;
const DEFAULT_HALLUCINATION_SILENCE_THRESHOLD: f32 = 0.0;
const DEFAULT_COMPRESSION_RATIO_THRESHOLD: f32 = 2.4;
const DEFAULT_LOGPROB_THRESHOLD: f32 = -1.0;
const DEFAULT_TEMPERATURE_INCREMENT: f32 = 0.2;
const DEFAULT_SUPPRESS_TOKENS: &str = "-1";
const DEFAULT_SUPPRESS_BLANK: bool = true;
const DEFAULT_HOTWORDS: &str = "";
const DEFAULT_PREFIX: &str = "";
const DEFAULT_CAPTION_PRESET: CaptionPreset = CaptionPreset::None;
const DEFAULT_VAD_THRESHOLD: f32 = 0.5;
/// `min-silence-duration` and `speech-pad`: -1 = the mode's default.
const DEFAULT_VAD_MS: i32 = -1;

/// Non-live: audio queued ahead of the worker before the streaming thread waits.
const MAX_QUEUED_OFFLINE: u64 = 10 * SAMPLE_RATE;
/// Shortest text buffer, when clamping to keep cues from overlapping leaves nothing.
const MIN_TEXT_DURATION: ClockTime = ClockTime::from_mseconds(100);
/// Segments over audio whose peak stays below this (−60 dBFS) are dropped: Whisper invents text
/// ("you", "Thank you.") over digital silence.
const SILENCE_PEAK: f32 = 0.001;
/// Live overload: seconds without audio left out, at least, before the element counts as caught
/// up (see `shed`).
const CALM_SECONDS: f64 = 10.0;
/// Offline mode reports one window as its latency when upstream is live anyway.
const WINDOW: ClockTime = ClockTime::from_seconds(30);

#[derive(Debug, Clone)]
struct Settings {
    model: String,
    backend: Backend,
    execution_provider: ExecutionProvider,
    /// `key=value;...` for the execution provider.
    execution_provider_options: String,
    compute_type: ComputeTypeMode,
    language_code: String,
    task: TaskMode,
    latency_ms: u32,
    lateness_ms: u32,
    beam_size: u32,
    n_threads: u32,
    initial_prompt: String,
    no_speech_threshold: f32,
    condition_on_previous_text: bool,
    mode: Mode,
    vad: bool,
    vad_threshold: f32,
    /// ms; -1 = the mode's default (live 400, files 2000).
    min_silence_ms: i32,
    /// ms; -1 = the mode's default (live 100, files 400).
    speech_pad_ms: i32,
    partial_results: bool,
    output: OutputMode,
    /// Seconds; 0 = off.
    hallucination_silence_threshold: f32,
    /// 0 = off.
    compression_ratio_threshold: f32,
    logprob_threshold: f32,
    /// 0 = temperature 0 only (no fallback).
    temperature_increment: f32,
    /// Comma-separated token ids; -1 = the model's list.
    suppress_tokens: String,
    suppress_blank: bool,
    hotwords: String,
    prefix: String,
    /// Caption shaping (`max-line-length`, `max-lines`, `max-words-per-line`); off by default.
    captions: CaptionLayout,
    /// The last preset set (`caption-preset`).
    caption_preset: CaptionPreset,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: DEFAULT_MODEL.into(),
            backend: DEFAULT_BACKEND,
            execution_provider: DEFAULT_EXECUTION_PROVIDER,
            execution_provider_options: String::new(),
            compute_type: DEFAULT_COMPUTE_TYPE,
            language_code: DEFAULT_LANGUAGE_CODE.into(),
            task: DEFAULT_TASK,
            latency_ms: DEFAULT_LATENCY_MS,
            lateness_ms: DEFAULT_LATENESS_MS,
            beam_size: DEFAULT_BEAM_SIZE,
            n_threads: DEFAULT_N_THREADS,
            initial_prompt: DEFAULT_INITIAL_PROMPT.into(),
            no_speech_threshold: DEFAULT_NO_SPEECH_THRESHOLD,
            condition_on_previous_text: DEFAULT_CONDITION_ON_PREVIOUS_TEXT,
            mode: DEFAULT_MODE,
            vad: DEFAULT_VAD,
            vad_threshold: DEFAULT_VAD_THRESHOLD,
            min_silence_ms: DEFAULT_VAD_MS,
            speech_pad_ms: DEFAULT_VAD_MS,
            partial_results: DEFAULT_PARTIAL_RESULTS,
            output: DEFAULT_OUTPUT,
            hallucination_silence_threshold: DEFAULT_HALLUCINATION_SILENCE_THRESHOLD,
            compression_ratio_threshold: DEFAULT_COMPRESSION_RATIO_THRESHOLD,
            logprob_threshold: DEFAULT_LOGPROB_THRESHOLD,
            temperature_increment: DEFAULT_TEMPERATURE_INCREMENT,
            suppress_tokens: DEFAULT_SUPPRESS_TOKENS.into(),
            suppress_blank: DEFAULT_SUPPRESS_BLANK,
            hotwords: DEFAULT_HOTWORDS.into(),
            prefix: DEFAULT_PREFIX.into(),
            captions: DEFAULT_CAPTION_PRESET.layout(),
            caption_preset: DEFAULT_CAPTION_PRESET,
        }
    }
}

impl Settings {
    /// The engine options these settings ask for; an unreadable `suppress-tokens` is an error
    /// naming it.
    fn options(&self) -> Result<TranscribeOptions, Error> {
        let prompt = self.initial_prompt.trim();
        let suppress_tokens = crate::transcribe::parse_suppress_tokens(&self.suppress_tokens)
            .map_err(|why| Error::InvalidOption {
                option: "suppress-tokens",
                why,
            })?;
        Ok(TranscribeOptions {
            language: language_from_code(&self.language_code),
            task: match self.task {
                TaskMode::Transcribe => Task::Transcribe,
                TaskMode::Translate => Task::Translate,
            },
            beam_size: self.beam_size as usize,
            n_threads: self.n_threads as usize,
            initial_prompt: (!prompt.is_empty()).then(|| prompt.to_string()),
            no_speech_threshold: Some(self.no_speech_threshold),
            condition_on_previous_text: self.condition_on_previous_text,
            // Replaced by the backend chosen at NULL→READY (`Chosen::encoder`).
            backend: EncoderBackend::Cpu,
            // Offline windows are aligned only when words are wanted, as buffers or to shape
            // captions (live mode always times its words).
            word_timestamps: self.output == OutputMode::Words || !self.captions.is_off(),
            hallucination_silence_threshold: (self.hallucination_silence_threshold > 0.0)
                .then_some(self.hallucination_silence_threshold),
            compression_ratio_threshold: (self.compression_ratio_threshold > 0.0)
                .then_some(self.compression_ratio_threshold),
            log_prob_threshold: Some(self.logprob_threshold),
            temperatures: crate::transcribe::temperature_schedule(self.temperature_increment),
            suppress_tokens,
            suppress_blank: self.suppress_blank,
            hotwords: Some(self.hotwords.trim().to_string()).filter(|h| !h.is_empty()),
            prefix: Some(self.prefix.trim().to_string()).filter(|p| !p.is_empty()),
            vad_filter: self.vad.then(|| {
                let files = VadFilterOptions::default();
                VadFilterOptions {
                    segments: self.vad_segments(files.segments),
                    ..files
                }
            }),
            ..TranscribeOptions::default()
        })
    }

    fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.into())
    }

    fn lateness(&self) -> Duration {
        Duration::from_millis(self.lateness_ms.into())
    }

    /// `latency` + `lateness`: how long live text may take.
    fn budget(&self) -> Duration {
        Duration::from_millis(u64::from(self.latency_ms) + u64::from(self.lateness_ms))
    }

    /// The live speech gate's segmenter options.
    fn live_gate(&self) -> SegmenterOptions {
        self.vad_segments(crate::transcribe::VadGate::live_options())
    }

    /// `mode`'s segmenter options (live or files) with the VAD properties applied: the
    /// threshold, and the two durations unless -1.
    fn vad_segments(&self, mode: SegmenterOptions) -> SegmenterOptions {
        let ms_or = |value: i32, default: u32| u32::try_from(value).unwrap_or(default);
        SegmenterOptions {
            threshold: self.vad_threshold,
            min_silence_ms: ms_or(self.min_silence_ms, mode.min_silence_ms),
            speech_pad_ms: ms_or(self.speech_pad_ms, mode.speech_pad_ms),
            ..mode
        }
    }
}

/// "en", "en-US", "EN_gb" → "en"; "" or "auto" → detect.
fn language_from_code(code: &str) -> Option<String> {
    let primary = code
        .trim()
        .split(['-', '_'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    (!primary.is_empty() && primary != "auto").then_some(primary)
}

/// Why a model cannot be used, as an element error: the domain and the message, which names the
/// file (and field) at fault. Kept by the model slot, so a failed load is reported again at
/// every attempt to start streaming.
#[derive(Debug, Clone)]
struct ModelFailure {
    kind: gst::ResourceError,
    message: String,
}

impl ModelFailure {
    fn from_model_error(name: &str, e: &ModelError) -> Self {
        match e {
            ModelError::NotFound { .. } | ModelError::UnknownName { .. } => Self {
                kind: gst::ResourceError::NotFound,
                message: e.to_string(),
            },
            ModelError::Io { .. } => Self {
                kind: gst::ResourceError::OpenRead,
                message: e.to_string(),
            },
            _ => Self {
                kind: gst::ResourceError::Failed,
                message: format!("Cannot use Whisper model `{name}`: {e}"),
            },
        }
    }

    fn panic(name: &str, payload: &(dyn std::any::Any + Send)) -> Self {
        Self {
            kind: gst::ResourceError::Failed,
            message: format!(
                "Cannot load Whisper model `{name}`: the model loader thread panicked: {}",
                panic_message(payload)
            ),
        }
    }

    fn error_message(&self) -> gst::ErrorMessage {
        gst::error_msg!(self.kind, ("{}", self.message))
    }
}

/// Little-endian F32 or S16 bytes → f32 samples in [-1, 1].
fn to_f32(format: gst_audio::AudioFormat, bytes: &[u8]) -> Vec<f32> {
    match format {
        gst_audio::AudioFormat::S16le => bytes
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}

/// What the streaming thread hands the worker, in stream order.
enum Item {
    /// Audio; `time` is the output time of its first sample, `arrived` when the streaming
    /// thread queued it, moved earlier (live) by how much later than the source's usual delay
    /// it came ([`ArrivalDelay`]): its text's budget runs from there.
    Audio {
        samples: Vec<f32>,
        time: Option<ClockTime>,
        arrived: Instant,
    },
    /// An upstream GAP: silence, in output time.
    Gap {
        time: ClockTime,
        duration: ClockTime,
    },
    /// New sink caps: (re)negotiate the src caps; choose the decode policy.
    Caps { live: bool },
    /// Upstream SEGMENT.
    Segment(gst::Event),
    /// Drain, then forward the EOS.
    Eos(gst::Event),
    /// Another serialized event, forwarded as it is.
    Event(gst::Event),
    /// After a flush: forget audio, context and timing.
    Reset,
    /// Live: no audio came after output time `end` for longer than the stall timeout (armed
    /// by the worker on the pipeline clock while it waits).
    Stall { end: ClockTime },
}

impl Item {
    /// What the worker was doing, for errors.
    fn description(&self) -> &'static str {
        match self {
            Item::Audio { .. } => "audio",
            Item::Gap { .. } => "a gap",
            Item::Caps { .. } => "new caps",
            Item::Segment(_) => "a segment",
            Item::Eos(_) => "the end of the stream",
            Item::Event(_) => "an event",
            Item::Reset => "a flush",
            Item::Stall { .. } => "a stalled source",
        }
    }

    /// Kept across a flush: stream-start, caps and other sticky events except SEGMENT and EOS
    /// (a flush clears those downstream too).
    fn survives_flush(&self) -> bool {
        match self {
            Item::Caps { .. } => true,
            Item::Event(e) => {
                e.is_sticky() && !matches!(e.type_(), gst::EventType::Segment | gst::EventType::Eos)
            }
            _ => false,
        }
    }
}

struct Queue {
    items: VecDeque<Item>,
    /// Between FLUSH_START and FLUSH_STOP: the sticky items (stream-start, caps, ...) that were
    /// queued but not forwarded yet; they are re-queued after the FLUSH_STOP.
    held: Vec<Item>,
    queued_samples: u64,
    flushing: bool,
    shutdown: bool,
    /// The worker is handling an item.
    busy: bool,
    /// Result of the worker's last push downstream, returned upstream by `chain`.
    flow: Result<gst::FlowSuccess, gst::FlowError>,
    /// Live: the clock wait that reports a stalled source, while the worker waits for items.
    stall: Option<StallWait>,
    /// Tells a fired wait from a cancelled one.
    stall_token: u64,
}

struct StallWait {
    token: u64,
    id: gst::SingleShotClockId,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            held: Vec::new(),
            queued_samples: 0,
            flushing: false,
            shutdown: false,
            busy: false,
            flow: Ok(gst::FlowSuccess::Ok),
            stall: None,
            stall_token: 0,
        }
    }
}

/// Streaming-thread state.
#[derive(Default)]
struct Stream {
    format: Option<gst_audio::AudioFormat>,
    segment: gst::FormattedSegment<ClockTime>,
    live: bool,
    /// Live: the most any buffer arrived after the running time of its first sample on the
    /// pipeline clock (its duration plus the upstream latency, in practice): the next audio is
    /// due that long after the end of the last.
    arrival_lateness: ClockTime,
    /// Live: how much later than usual each buffer arrives (see [`ArrivalDelay`]).
    arrival_delay: ArrivalDelay,
}

enum ModelSlot {
    None,
    /// The loader thread (it posts the Progress messages).
    Loading(JoinHandle<Result<Arc<WhisperModel>, ModelFailure>>),
    Ready(Arc<WhisperModel>),
    /// Loading failed, or the loader panicked.
    Failed(ModelFailure),
}

/// What runs the model, chosen at NULL→READY.
#[derive(Debug, Clone, Default)]
struct Chosen {
    engine: EngineKind,
    encoder: EncoderBackend,
    name: &'static str,
    reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextFormat {
    Utf8,
    Pango,
}

impl TextFormat {
    fn caps(self) -> gst::Caps {
        gst::Caps::builder("text/x-raw")
            .field(
                "format",
                match self {
                    TextFormat::Utf8 => "utf8",
                    TextFormat::Pango => "pango-markup",
                },
            )
            .build()
    }
}

/// Worker-thread state.
struct Work {
    engine: Option<Transcriber>,
    policy: Box<dyn DecodePolicy>,
    live: bool,
    timeline: Timeline,
    /// Output time up to which text or GAP has been sent.
    covered_until: Option<ClockTime>,
    /// Non-live: the segment forwarded downstream.
    out_segment: Option<gst::FormattedSegment<ClockTime>>,
    /// Live: a running-time segment was sent.
    live_segment_sent: bool,
    format: Option<TextFormat>,
    language_sent: Option<String>,
    /// Language and lock state of the last `whispernpu-language` message.
    detection_sent: Option<(String, bool)>,
    settings_generation: u64,
    /// Live: an overload is under way (the backlog has not recovered yet).
    behind: bool,
    /// The falling-behind warning was posted (once per stream, until a flush).
    warned_behind: bool,
    /// Live overload: audio left out since the last catch-up, and the end of the last stretch
    /// left out (see `shed`).
    skipped: ClockTime,
    last_shed: Option<ClockTime>,
    /// Live overload: audio left out whose `whispernpu-skipped` message is not posted yet
    /// (start, end, seconds still queued): buffers shed one after another as they arrive make
    /// one message a second, not one per buffer (see `note_skipped`).
    skip_open: Option<(ClockTime, ClockTime, f64)>,
    /// The warning that the NPU encoder was given up was posted.
    npu_failure_sent: bool,
}

impl Work {
    fn new() -> Self {
        Self {
            engine: None,
            policy: Box::new(Offline),
            live: false,
            timeline: Timeline::default(),
            covered_until: None,
            out_segment: None,
            live_segment_sent: false,
            format: None,
            language_sent: None,
            detection_sent: None,
            settings_generation: 0,
            behind: false,
            warned_behind: false,
            skipped: ClockTime::ZERO,
            last_shed: None,
            skip_open: None,
            npu_failure_sent: false,
        }
    }

    /// Default output time of a run whose first buffer has no timestamp.
    fn default_base(&self) -> ClockTime {
        if self.live {
            return ClockTime::ZERO;
        }
        self.out_segment
            .as_ref()
            .and_then(|s| s.start())
            .unwrap_or(ClockTime::ZERO)
    }
}

pub struct WhisperNpu {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    /// Bumped on every change of a decoding property; the worker applies changes at its next item.
    settings_generation: AtomicU64,
    /// What runs the model, chosen at NULL→READY from `backend` (and for `auto`, what is
    /// found: NPU, ONNX export and accelerator).
    chosen: Mutex<Chosen>,
    stream: Mutex<Stream>,
    queue: Mutex<Queue>,
    queue_cond: Condvar,
    worker: Mutex<Option<JoinHandle<()>>>,
    model: Mutex<ModelSlot>,
}

/// A string property's value (`None` = empty).
fn text_value(value: &glib::Value) -> String {
    value
        .get::<Option<String>>()
        .expect("type checked upstream")
        .unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Unschedules a stall wait taken out of the queue (outside the queue lock: the clock may hold
/// its own lock while it calls back into the queue).
fn cancel_stall(stall: Option<StallWait>) {
    if let Some(s) = stall {
        s.id.unschedule();
    }
}

impl WhisperNpu {
    /// The loaded model (waits for the loader if it is still running).
    pub(super) fn loaded_model(&self) -> Option<Arc<WhisperModel>> {
        self.wait_model().ok()
    }

    /// The model, once the loader is done; why it failed otherwise.
    fn wait_model(&self) -> Result<Arc<WhisperModel>, ModelFailure> {
        let mut slot = lock(&self.model);
        if let ModelSlot::Loading(_) = &*slot {
            let ModelSlot::Loading(handle) = std::mem::replace(&mut *slot, ModelSlot::None) else {
                unreachable!()
            };
            let name = lock(&self.settings).model.clone();
            *slot = match handle.join() {
                Ok(Ok(model)) => ModelSlot::Ready(model),
                Ok(Err(failure)) => ModelSlot::Failed(failure),
                // The loader catches its own panics; this is a safety net.
                Err(payload) => ModelSlot::Failed(ModelFailure::panic(&name, &*payload)),
            };
        }
        match &*slot {
            ModelSlot::Ready(model) => Ok(Arc::clone(model)),
            ModelSlot::Failed(failure) => Err(failure.clone()),
            ModelSlot::None | ModelSlot::Loading(_) => Err(ModelFailure {
                kind: gst::ResourceError::Failed,
                message: "No Whisper model: the element is in the NULL state".into(),
            }),
        }
    }

    /// NULL→READY: checks the backend, then opens the model and checks it without converting a
    /// weight ([`model::inspect`]: headers, dimensions, every tensor's presence and shape; a few
    /// milliseconds), so that a missing, truncated or malformed model fails the state change at
    /// once with an element error naming the file and field. The weights are then converted
    /// on a loader thread (Progress messages), which READY→PAUSED waits for.
    fn start_loading(&self) -> Result<(), gst::StateChangeError> {
        let settings = lock(&self.settings).clone();
        let file = match model::inspect(&settings.model) {
            Ok(file) => file,
            Err(e) => {
                let failure = ModelFailure::from_model_error(&settings.model, &e);
                self.post_error_message(failure.error_message());
                return Err(gst::StateChangeError);
            }
        };
        let chosen = match self.choose_backend(&settings, &file) {
            Ok(chosen) => chosen,
            Err(why) => {
                gst::element_imp_error!(self, gst::LibraryError::Init, ("{}", why));
                return Err(gst::StateChangeError);
            }
        };
        gst::info!(
            CAT,
            imp = self,
            "Backend {}: {}",
            chosen.name,
            chosen.reason
        );
        self.post_element(
            gst::Structure::builder("whispernpu-backend")
                .field("backend", chosen.name)
                .field("reason", &chosen.reason)
                .build(),
        );
        let compute_type: crate::engine::ComputeType = settings.compute_type.into();
        let (resolved, why) = compute_type.resolution();
        gst::debug!(
            CAT,
            imp = self,
            "Compute type {} ({}): {}",
            resolved,
            compute_type,
            why
        );
        let load_options = LoadOptions {
            compute_type,
            engine: chosen.engine.clone(),
        };
        *lock(&self.chosen) = chosen;
        let obj = self.obj().clone();
        let handle = std::thread::Builder::new()
            .name("whispernpu-load".into())
            .spawn(move || {
                let imp = obj.imp();
                let name = settings.model.as_str();
                let load = || imp.load_model(name, &load_options);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)).unwrap_or_else(
                    |payload| {
                        let failure = ModelFailure::panic(name, &*payload);
                        imp.post_progress(gst::ProgressType::Error, &failure.message);
                        Err(failure)
                    },
                )
            });
        *lock(&self.model) = match handle {
            Ok(handle) => ModelSlot::Loading(handle),
            Err(e) => {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Thread,
                    ("Cannot start the model loader thread: {}", e)
                );
                return Err(gst::StateChangeError);
            }
        };
        Ok(())
    }

    /// READY→PAUSED: waits for the loader, so that the element starts streaming only with a
    /// usable model. A model that failed to load (or whose loader panicked) fails the state
    /// change with its element error, at every attempt: applications and `gst-launch-1.0` see
    /// the error at once and never wait on a stream that cannot start.
    fn check_model_slot(&self) -> Result<(), gst::StateChangeError> {
        match self.wait_model() {
            Ok(_) => Ok(()),
            Err(failure) => {
                self.post_error_message(failure.error_message());
                Err(gst::StateChangeError)
            }
        }
    }

    /// What runs the model of `file`, from the `backend` property:
    /// - cpu: the native engine; npu-sim: the native engine with the NPU encoder's golden model;
    /// - npu: the probe must find an amdxdna device, XRT and a matching encoder artifact, else
    ///   the error names what is missing;
    /// - onnx: ONNX Runtime with the `execution-provider` (the model must be an ONNX export, and
    ///   the library must have the provider);
    /// - auto: the NPU when the probe finds all three; else ONNX Runtime when the model holds an
    ///   ONNX export and the library has an accelerator (or the export is all there is); else
    ///   the native engine. The reason is logged and posted (`whispernpu-backend`).
    fn choose_backend(
        &self,
        settings: &Settings,
        file: &model::ModelFile,
    ) -> Result<Chosen, String> {
        use crate::engine::npu::probe::{self, BackendRequest, EncoderBackend as Npu};
        let onnx_options = || -> Result<onnx::OnnxOptions, String> {
            Ok(onnx::OnnxOptions {
                provider: settings.execution_provider.into(),
                provider_options: onnx::OnnxOptions::parse_provider_options(
                    &settings.execution_provider_options,
                )
                .map_err(|e| format!("execution-provider-options: {e}"))?,
                threads: settings.n_threads as usize,
            })
        };
        let has_onnx = file.format == model::ModelFormat::Onnx
            || file.path.join(model::OnnxLayout::ENCODER).is_file();
        let native = |encoder, name, reason: String| Chosen {
            engine: EngineKind::Native,
            encoder,
            name,
            reason,
        };
        let request = match settings.backend {
            Backend::Cpu => {
                return Ok(native(EncoderBackend::Cpu, "cpu", "backend=cpu".into()));
            }
            Backend::NpuSim => {
                return Ok(native(
                    EncoderBackend::NpuSim,
                    "npu-sim",
                    "backend=npu-sim".into(),
                ));
            }
            Backend::Onnx => {
                let unavailable = |why: String| {
                    Error::BackendUnavailable {
                        backend: "onnx".into(),
                        why,
                    }
                    .to_string()
                };
                if !has_onnx {
                    return Err(unavailable(format!(
                        "the model has no ONNX export (encoder_model.onnx and a decoder in {}); \
                         make one with scripts/export-onnx",
                        file.path.display()
                    )));
                }
                let options = onnx_options().map_err(unavailable)?;
                let provider = onnx::resolve_provider(options.provider).map_err(unavailable)?;
                return Ok(Chosen {
                    engine: EngineKind::Onnx(options),
                    encoder: EncoderBackend::Cpu,
                    name: "onnx",
                    reason: format!("backend=onnx, execution provider {}", provider.ort_name()),
                });
            }
            Backend::Auto => BackendRequest::Auto,
            Backend::Npu => BackendRequest::Npu,
        };
        let config = probe::ProbeConfig::system();
        let device = probe::find_device(&config);
        let xrt = probe::xrt_status();
        // The artifact is matched against the model's dimensions.
        let artifact = if device.is_ok() && xrt.is_ok() {
            let name = std::path::Path::new(&settings.model)
                .file_name()
                .map_or(settings.model.clone(), |n| n.to_string_lossy().into_owned());
            probe::find_artifact(&config, &name, &file.dims)
        } else {
            Err("not looked for without a device and XRT".into())
        };
        let report = probe::ProbeReport {
            device,
            xrt,
            artifact,
        };
        let note = match probe::choose_backend(request, &report) {
            Ok((Npu::Npu, _)) => {
                return Ok(native(EncoderBackend::Npu, "npu", report.to_string()));
            }
            Ok((Npu::Cpu, note)) => note.unwrap_or_else(|| report.to_string()),
            Err(e) => return Err(e.to_string()),
        };
        // auto, no NPU: ONNX Runtime when the model has an export and the library an
        // accelerator (or when the export is all the model has).
        if has_onnx {
            let mut options = onnx_options()?;
            let accelerator = onnx::resolve_provider(options.provider)
                .ok()
                .filter(|p| p.is_accelerator());
            if let Some(provider) = accelerator {
                options.provider = provider;
                return Ok(Chosen {
                    engine: EngineKind::Onnx(options),
                    encoder: EncoderBackend::Cpu,
                    name: "onnx",
                    reason: format!(
                        "{note}; the model has an ONNX export and ONNX Runtime has {}",
                        provider.ort_name()
                    ),
                });
            }
            if file.format == model::ModelFormat::Onnx {
                options.provider = onnx::Provider::Cpu;
                return Ok(Chosen {
                    engine: EngineKind::Onnx(options),
                    encoder: EncoderBackend::Cpu,
                    name: "onnx",
                    reason: format!(
                        "{note}; the model is an ONNX export only, and ONNX Runtime has no \
                         accelerator: ONNX Runtime on the CPU"
                    ),
                });
            }
        }
        Ok(native(EncoderBackend::Cpu, "cpu", note))
    }

    fn post_progress(&self, kind: gst::ProgressType, text: &str) {
        let msg = gst::message::Progress::builder(kind, "load-model", text)
            .src(&*self.obj())
            .build();
        let _ = self.obj().post_message(msg);
    }

    /// Runs on the loader thread: loads the weights (shared process-wide), posting Progress
    /// messages; the error is posted by READY→PAUSED ([`check_model_slot`](Self::check_model_slot)).
    fn load_model(
        &self,
        name: &str,
        options: &LoadOptions,
    ) -> Result<Arc<WhisperModel>, ModelFailure> {
        self.post_progress(
            gst::ProgressType::Start,
            &format!("Loading Whisper model `{name}`"),
        );
        let t0 = std::time::Instant::now();
        match crate::engine::load_shared_opts(name, options) {
            Ok(model) => {
                gst::info!(
                    CAT,
                    imp = self,
                    "Model `{}` ready ({}, {}) in {:.2} s",
                    name,
                    model.dir.display(),
                    model.engine_description(),
                    t0.elapsed().as_secs_f64()
                );
                self.post_progress(
                    gst::ProgressType::Complete,
                    &format!("Loaded Whisper model `{name}`"),
                );
                Ok(model)
            }
            Err(e) => {
                let failure = ModelFailure::from_model_error(name, &e);
                self.post_progress(gst::ProgressType::Error, &failure.message);
                Err(failure)
            }
        }
    }

    fn own_latency(&self) -> ClockTime {
        let s = lock(&self.settings);
        let lateness = ClockTime::from_mseconds(s.lateness_ms.into());
        if s.mode == Mode::Offline {
            WINDOW + lateness
        } else {
            ClockTime::from_mseconds(s.latency_ms.into()) + lateness
        }
    }

    fn upstream_is_live(&self) -> bool {
        let mut q = gst::query::Latency::new();
        self.sinkpad.peer_query(&mut q) && q.result().0
    }

    // ---- streaming thread ----

    fn enqueue(&self, item: Item) {
        let mut q = lock(&self.queue);
        if q.flushing {
            return;
        }
        q.items.push_back(item);
        self.release_queue(q);
    }

    /// Live, PLAYING, with a clock and audio received: while the worker waits for items, a
    /// clock wait until the stall timeout after the point where the next audio is due (the end
    /// of the last audio plus the largest arrival lateness seen). When it fires with still no
    /// audio queued, the worker takes the missing audio as silence (as an upstream GAP), so
    /// that an utterance cut off by a source that stopped sending (silence suppression,
    /// a network stall) is finalised, and GAPs keep downstream moving.
    fn arm_stall(&self, work: &Work) {
        if !work.live || work.engine.is_none() || self.failed() {
            return;
        }
        let Some(end) = work.timeline.end() else {
            return;
        };
        let obj = self.obj();
        if obj.current_state() != gst::State::Playing {
            return;
        }
        let (Some(clock), Some(base_time)) = (obj.clock(), obj.base_time()) else {
            return;
        };
        let deadline = base_time
            .saturating_add(end)
            .saturating_add(lock(&self.stream).arrival_lateness)
            .saturating_add(self.stall_after());
        let id = clock.new_single_shot_id(deadline);
        let token = {
            let mut q = lock(&self.queue);
            if !q.items.is_empty() || q.flushing || q.shutdown || q.stall.is_some() {
                return;
            }
            q.stall_token += 1;
            let token = q.stall_token;
            q.stall = Some(StallWait {
                token,
                id: id.clone(),
            });
            token
        };
        gst::trace!(
            CAT,
            imp = self,
            "Stall wait until {} (audio to {})",
            deadline,
            end
        );
        let weak = obj.downgrade();
        let res = id.wait_async(move |_clock, _time, _id| {
            let Some(obj) = weak.upgrade() else {
                return;
            };
            let imp = obj.imp();
            let mut q = lock(&imp.queue);
            if !q.flushing && q.stall.as_ref().is_some_and(|s| s.token == token) {
                q.stall = None;
                q.items.push_back(Item::Stall { end });
                imp.queue_cond.notify_all();
            }
        });
        if let Err(e) = res {
            gst::debug!(CAT, imp = self, "Stall wait not scheduled: {:?}", e);
        }
    }

    /// How long audio may be missing before it is taken as silence: a quarter of `latency`,
    /// 0.2–1 s.
    fn stall_after(&self) -> ClockTime {
        let latency = u64::from(lock(&self.settings).latency_ms);
        ClockTime::from_mseconds((latency / 4).clamp(200, 1000))
    }

    /// The source stopped sending after `end`: the audio missing up to the arrival lateness
    /// before now is silence.
    fn stalled(&self, work: &mut Work, end: ClockTime) -> Result<gst::FlowSuccess, gst::FlowError> {
        let obj = self.obj();
        if work.timeline.end() != Some(end) || obj.current_state() != gst::State::Playing {
            return Ok(gst::FlowSuccess::Ok);
        }
        let Some(now) = obj.current_running_time() else {
            return Ok(gst::FlowSuccess::Ok);
        };
        let due = now.saturating_sub(lock(&self.stream).arrival_lateness);
        if due <= end {
            return Ok(gst::FlowSuccess::Ok);
        }
        gst::debug!(
            CAT,
            imp = self,
            "No audio after {} at running time {}: {} taken as silence",
            end,
            now,
            due - end
        );
        self.handle_item(
            work,
            Item::Gap {
                time: end,
                duration: due - end,
            },
        )
    }

    fn sink_chain(
        &self,
        _pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let (format, time, live) = {
            let st = lock(&self.stream);
            let Some(format) = st.format else {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Negotiation,
                    ("Audio arrived before caps")
                );
                return Err(gst::FlowError::NotNegotiated);
            };
            let time = buffer.pts().and_then(|pts| {
                if st.live {
                    st.segment.to_running_time(pts)
                } else {
                    Some(pts)
                }
            });
            (format, time, st.live)
        };
        let samples = {
            let map = buffer.map_readable().map_err(|_| {
                gst::element_imp_error!(self, gst::StreamError::Format, ("Unreadable buffer"));
                gst::FlowError::Error
            })?;
            to_f32(format, &map)
        };
        gst::trace!(
            CAT,
            imp = self,
            "Queueing {} samples at {}",
            samples.len(),
            time.display()
        );
        let n = samples.len() as u64;
        let mut arrived = Instant::now();
        if live && let (Some(time), Some(now)) = (time, self.obj().current_running_time()) {
            let late = now.saturating_sub(time);
            let pause = self.stall_after();
            let mut st = lock(&self.stream);
            st.arrival_lateness = st.arrival_lateness.max(late);
            // Audio that came later than this source's usual delay (a feeder starved of CPU)
            // has spent that much of its text's budget before it got here: counted as if it
            // had waited in the queue.
            let end = time.saturating_add(samples_to_time(n));
            let rise = st.arrival_delay.observe(
                now.seconds_f64(),
                time.seconds_f64(),
                end.seconds_f64(),
                pause.seconds_f64(),
            );
            if rise > 0.0 {
                arrived = arrived
                    .checked_sub(Duration::from_secs_f64(rise))
                    .unwrap_or(arrived);
            }
        }
        let mut q = lock(&self.queue);
        loop {
            if q.flushing {
                return Err(gst::FlowError::Flushing);
            }
            q.flow?;
            if live || q.queued_samples < MAX_QUEUED_OFFLINE {
                break;
            }
            q = self.queue_cond.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        q.queued_samples += n;
        q.items.push_back(Item::Audio {
            samples,
            time,
            arrived,
        });
        self.release_queue(q);
        Ok(gst::FlowSuccess::Ok)
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "Handling event {:?}", event);
        match event.view() {
            EventView::FlushStart(_) => {
                {
                    let mut q = lock(&self.queue);
                    q.flushing = true;
                    let items = std::mem::take(&mut q.items);
                    if q.queued_samples > 0 {
                        // A flush drops data in flight (a seek): said, not silent.
                        gst::info!(
                            CAT,
                            imp = self,
                            "Flush: {:.2} s of audio not yet transcribed dropped",
                            q.queued_samples as f64 / SAMPLE_RATE as f64
                        );
                    }
                    q.held
                        .extend(items.into_iter().filter(Item::survives_flush));
                    q.queued_samples = 0;
                    self.release_queue(q);
                }
                self.srcpad.push_event(event)
            }
            EventView::FlushStop(_) => {
                let mut q = lock(&self.queue);
                // The worker finishes what it is decoding (its pushes fail: downstream flushes).
                while q.busy {
                    q = self.queue_cond.wait(q).unwrap_or_else(|e| e.into_inner());
                }
                let items = std::mem::take(&mut q.items);
                let mut held = std::mem::take(&mut q.held);
                held.extend(items.into_iter().filter(Item::survives_flush));
                q.queued_samples = 0;
                q.flow = Ok(gst::FlowSuccess::Ok);
                q.flushing = false;
                {
                    let mut st = lock(&self.stream);
                    st.arrival_lateness = ClockTime::ZERO;
                    st.arrival_delay.reset();
                }
                q.items.push_back(Item::Reset);
                q.items.push_back(Item::Event(event));
                // Sticky events the worker had not forwarded yet (a flush right after start).
                q.items.extend(held);
                self.queue_cond.notify_all();
                true
            }
            EventView::Caps(c) => {
                let info = match gst_audio::AudioInfo::from_caps(c.caps()) {
                    Ok(info) => info,
                    Err(e) => {
                        gst::warning!(CAT, imp = self, "Refusing caps {:?}: {}", c.caps(), e);
                        return false;
                    }
                };
                if info.rate() != SAMPLE_RATE as u32 || info.channels() != 1 {
                    gst::warning!(CAT, imp = self, "Refusing caps {:?}", c.caps());
                    return false;
                }
                let mode = lock(&self.settings).mode;
                let live = match mode {
                    Mode::Auto => self.upstream_is_live(),
                    Mode::Offline => false,
                    Mode::Live => true,
                };
                gst::debug!(
                    CAT,
                    imp = self,
                    "Caps {:?}, {} processing",
                    c.caps(),
                    if live { "live" } else { "offline" }
                );
                {
                    let mut st = lock(&self.stream);
                    st.format = Some(info.format());
                    st.live = live;
                }
                self.enqueue(Item::Caps { live });
                true
            }
            EventView::Segment(s) => {
                let Some(segment) = s.segment().downcast_ref::<ClockTime>() else {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ("Only TIME segments are supported, got {:?}", s.segment())
                    );
                    return false;
                };
                lock(&self.stream).segment = segment.clone();
                self.enqueue(Item::Segment(event.clone()));
                true
            }
            EventView::Gap(g) => {
                let (ts, duration) = g.get();
                let (live, segment) = {
                    let st = lock(&self.stream);
                    (st.live, st.segment.clone())
                };
                let time = if live {
                    segment.to_running_time(ts)
                } else {
                    Some(ts)
                };
                if let (Some(time), Some(duration)) = (time, duration) {
                    self.enqueue(Item::Gap { time, duration });
                }
                true
            }
            EventView::Eos(_) => {
                self.enqueue(Item::Eos(event));
                true
            }
            // Upstream tags describe the audio, not the text (and would replace our language tag).
            EventView::Tag(_) => true,
            _ if event.is_serialized() => {
                self.enqueue(Item::Event(event));
                true
            }
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        use gst::QueryViewMut;
        match query.view_mut() {
            QueryViewMut::Latency(q) => {
                let mut upstream = gst::query::Latency::new();
                if !self.sinkpad.peer_query(&mut upstream) {
                    // Some sources answer only once they have caps (audiotestsrc); transcriberbin
                    // asks before. Answer with our own latency, as for a live stream.
                    let ours = self.own_latency();
                    gst::debug!(CAT, imp = self, "Upstream gave no latency; ours: {}", ours);
                    q.set(true, ours, gst::ClockTime::NONE);
                    return true;
                }
                let (live, min, max) = upstream.result();
                if live {
                    let ours = self.own_latency();
                    q.set(
                        true,
                        min.saturating_add(ours),
                        max.map(|m| m.saturating_add(ours)),
                    );
                } else {
                    q.set(false, min, max);
                }
                gst::debug!(CAT, imp = self, "Latency: {:?}", q);
                true
            }
            _ => gst::Pad::query_default(pad, Some(&*self.obj()), query),
        }
    }

    // ---- worker thread ----

    fn start_worker(&self) -> Result<(), gst::StateChangeError> {
        *lock(&self.queue) = Queue::default();
        let obj = self.obj().clone();
        let handle = std::thread::Builder::new()
            .name("whispernpu-worker".into())
            .spawn(move || obj.imp().worker_loop())
            .map_err(|e| {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Thread,
                    ("Cannot start the worker thread: {}", e)
                );
                gst::StateChangeError
            })?;
        *lock(&self.worker) = Some(handle);
        Ok(())
    }

    fn stop_worker_begin(&self) {
        let mut q = lock(&self.queue);
        q.shutdown = true;
        q.flushing = true;
        q.items.clear();
        q.queued_samples = 0;
        self.release_queue(q);
    }

    /// Wakes the worker and releases the queue; a stall wait is cancelled (new items or a
    /// flush: the source is not stalled, or it no longer matters).
    fn release_queue(&self, mut q: MutexGuard<'_, Queue>) {
        let stall = q.stall.take();
        self.queue_cond.notify_all();
        drop(q);
        cancel_stall(stall);
    }

    /// PLAYING→PAUSED: running time stops, so audio is not missing.
    fn cancel_stall_wait(&self) {
        let stall = lock(&self.queue).stall.take();
        cancel_stall(stall);
    }

    fn stop_worker_join(&self) {
        if let Some(handle) = lock(&self.worker).take() {
            let _ = handle.join();
        }
    }

    fn worker_loop(&self) {
        let mut work = Work::new();
        loop {
            let item = {
                let mut q = lock(&self.queue);
                let mut armed = false;
                loop {
                    if q.shutdown {
                        drop(q);
                        self.post_skipped(&mut work);
                        return;
                    }
                    if let Some(item) = q.items.pop_front() {
                        if let Item::Audio { samples, .. } = &item {
                            q.queued_samples -= samples.len() as u64;
                        }
                        q.busy = true;
                        self.queue_cond.notify_all();
                        break item;
                    }
                    if !armed && q.stall.is_none() && !q.flushing {
                        armed = true;
                        drop(q);
                        self.arm_stall(&work);
                        q = lock(&self.queue);
                        continue;
                    }
                    q = self.queue_cond.wait(q).unwrap_or_else(|e| e.into_inner());
                    // Woken without an item (PLAYING again, a cancelled wait): arm anew.
                    armed = false;
                }
            };
            let res = self.handle_item_guarded(&mut work, item);
            let mut q = lock(&self.queue);
            q.busy = false;
            if let Err(e) = res {
                gst::debug!(CAT, imp = self, "Worker: {:?}", e);
                if !q.flushing && q.flow.is_ok() {
                    q.flow = Err(e);
                }
            }
            self.queue_cond.notify_all();
        }
    }

    /// [`handle_item`](Self::handle_item), with a panic (a bug, or an injected fault) turned
    /// into an element error and a flow error: the worker goes on, so EOS and flushes are
    /// still handled, and the stream stops cleanly instead of hanging.
    fn handle_item_guarded(
        &self,
        work: &mut Work,
        item: Item,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let what = item.description();
        let eos = match &item {
            Item::Eos(event) => Some(event.clone()),
            _ => None,
        };
        let handle = std::panic::AssertUnwindSafe(|| self.handle_item(work, item));
        match std::panic::catch_unwind(handle) {
            Ok(res) => res,
            Err(payload) => {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Failed,
                    (
                        "Internal error in the whispernpu worker while handling {}: {}",
                        what,
                        panic_message(&*payload)
                    )
                );
                // Its state may be half-updated: a new engine is made after a flush.
                work.engine = None;
                work.timeline.reset();
                if let Some(eos) = eos {
                    self.srcpad.push_event(eos);
                }
                Err(gst::FlowError::Error)
            }
        }
    }

    fn failed(&self) -> bool {
        lock(&self.queue).flow.is_err()
    }

    fn handle_item(&self, work: &mut Work, item: Item) -> Result<gst::FlowSuccess, gst::FlowError> {
        // Audio left out and not reported yet is reported before anything else happens, unless
        // this is more audio that may be left out with it.
        if !matches!(item, Item::Audio { .. }) {
            self.post_skipped(work);
        }
        match item {
            Item::Audio {
                samples,
                time,
                arrived,
            } => {
                if self.failed() {
                    return Ok(gst::FlowSuccess::Ok);
                }
                self.prepare_engine(work)?;
                if self.shed(work, time, samples.len(), arrived)? {
                    return Ok(gst::FlowSuccess::Ok);
                }
                self.post_skipped(work);
                self.place(work, time)?;
                work.policy.set_arrival(arrived);
                self.feed(work, &samples)?;
                self.check_backlog(work);
                Ok(gst::FlowSuccess::Ok)
            }
            Item::Gap { time, duration } => {
                if self.failed() || work.engine.is_none() {
                    // Nothing to keep aligned yet: pass the gap on.
                    return self.cover_to(work, time, time.saturating_add(duration));
                }
                self.prepare_engine(work)?;
                self.place(work, Some(time))?;
                let n = time_to_samples(duration);
                if samples_to_time(n) > super::timeline::MAX_SILENCE_FILL {
                    self.drain(work)?;
                    let from = work.covered_until.unwrap_or(time);
                    return self.cover_to(work, from, time.saturating_add(duration));
                }
                // (When the gap arrived is not recorded: counted as now.)
                work.policy.set_arrival(Instant::now());
                self.feed(work, &vec![0.0; n as usize])
            }
            Item::Caps { live } => {
                if live != work.live {
                    self.drain(work)?;
                    self.set_live(work, live);
                }
                gst::debug!(CAT, imp = self, "Decode policy: {}", work.policy.name());
                let format = self.negotiate();
                if work.format != Some(format) {
                    work.format = Some(format);
                    if !self
                        .srcpad
                        .push_event(gst::event::Caps::new(&format.caps()))
                    {
                        gst::warning!(CAT, imp = self, "Downstream refused {:?}", format.caps());
                    }
                }
                Ok(gst::FlowSuccess::Ok)
            }
            Item::Segment(event) => {
                if work.live {
                    // Live output is in running time.
                    if !work.live_segment_sent {
                        work.live_segment_sent = true;
                        let segment = gst::FormattedSegment::<ClockTime>::new();
                        self.srcpad.push_event(gst::event::Segment::new(&segment));
                    }
                    return Ok(gst::FlowSuccess::Ok);
                }
                let gst::EventView::Segment(s) = event.view() else {
                    unreachable!()
                };
                let Some(segment) = s.segment().downcast_ref::<ClockTime>().cloned() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                if work.out_segment.as_ref() != Some(&segment) {
                    if work.out_segment.is_some() {
                        // The old timeline ends here: transcribe what it holds first.
                        self.drain(work)?;
                    }
                    work.out_segment = Some(segment);
                    work.covered_until = None;
                    self.srcpad.push_event(event);
                }
                Ok(gst::FlowSuccess::Ok)
            }
            Item::Eos(event) => {
                let res = self.drain(work);
                self.srcpad.push_event(event);
                res
            }
            Item::Event(event) => {
                self.srcpad.push_event(event);
                Ok(gst::FlowSuccess::Ok)
            }
            Item::Stall { end } => self.stalled(work, end),
            Item::Reset => {
                gst::debug!(CAT, imp = self, "Reset after flush");
                if let Some(engine) = work.engine.as_mut() {
                    engine.reset();
                }
                work.timeline.reset();
                work.covered_until = None;
                work.out_segment = None;
                work.live_segment_sent = false;
                work.language_sent = None;
                work.detection_sent = None;
                work.behind = false;
                work.warned_behind = false;
                work.skipped = ClockTime::ZERO;
                work.last_shed = None;
                self.set_live(work, work.live);
                Ok(gst::FlowSuccess::Ok)
            }
        }
    }

    /// Chooses utf8 unless downstream only takes Pango markup.
    fn negotiate(&self) -> TextFormat {
        let templ = self.srcpad.pad_template_caps();
        let peer = self.srcpad.peer_query_caps(Some(&templ));
        if peer.can_intersect(&TextFormat::Utf8.caps()) {
            TextFormat::Utf8
        } else if peer.can_intersect(&TextFormat::Pango.caps()) {
            TextFormat::Pango
        } else {
            TextFormat::Utf8
        }
    }

    /// Creates the engine on first use; applies property changes.
    fn prepare_engine(&self, work: &mut Work) -> Result<(), gst::FlowError> {
        let generation = self.settings_generation.load(Ordering::Acquire);
        if work.engine.is_some() && generation == work.settings_generation {
            return Ok(());
        }
        let settings = lock(&self.settings).clone();
        work.settings_generation = generation;
        work.policy
            .set_latency(settings.latency(), settings.lateness());
        let mut opts = match settings.options() {
            Ok(opts) => opts,
            Err(e) if work.engine.is_some() => {
                gst::element_imp_warning!(
                    self,
                    gst::LibraryError::Settings,
                    ("Property change ignored: {}", e)
                );
                return Ok(());
            }
            Err(e) => {
                gst::element_imp_error!(self, gst::LibraryError::Settings, ("{}", e));
                return Err(gst::FlowError::Error);
            }
        };
        opts.backend = lock(&self.chosen).encoder;
        if let Some(engine) = work.engine.as_mut() {
            if let Err(e) = engine.set_options(opts) {
                gst::element_imp_warning!(
                    self,
                    gst::LibraryError::Settings,
                    ("Property change ignored: {}", e)
                );
            }
            return Ok(());
        }
        let model = match self.wait_model() {
            Ok(model) => model,
            Err(failure) => {
                self.post_error_message(failure.error_message());
                return Err(gst::FlowError::Error);
            }
        };
        match Transcriber::new(model, opts) {
            Ok(engine) => {
                work.engine = Some(engine);
                Ok(())
            }
            Err(e) => {
                gst::element_imp_error!(self, gst::LibraryError::Settings, ("{}", e));
                Err(gst::FlowError::Error)
            }
        }
    }

    /// Places audio starting at `time` on the timeline: silence fill or a new run.
    fn place(
        &self,
        work: &mut Work,
        time: Option<ClockTime>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        match work.timeline.place(time) {
            Placement::Contiguous => {}
            Placement::Silence(n) => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "Hole of {} before {}: filling with silence",
                    samples_to_time(n),
                    time.display()
                );
                self.feed(work, &vec![0.0; n as usize])?;
            }
            Placement::Restart => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "Discontinuity at {} (expected {}): draining, new run",
                    time.display(),
                    work.timeline.end().display()
                );
                self.drain(work)?;
            }
        }
        if work.timeline.base().is_none() {
            let start = time.unwrap_or_else(|| work.default_base());
            work.timeline.start_if_needed(start);
            if let Some(from) = work.covered_until {
                self.cover_to(work, from, start)?;
            }
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// Posts an element message with `structure` on the bus.
    fn post_element(&self, structure: gst::Structure) {
        let _ = self.obj().post_message(
            gst::message::Element::builder(structure)
                .src(&*self.obj())
                .build(),
        );
    }

    fn engine_error(&self, e: Error) -> gst::FlowError {
        gst::element_imp_error!(
            self,
            gst::StreamError::Failed,
            ("Transcription failed: {}", e)
        );
        gst::FlowError::Error
    }

    fn feed(&self, work: &mut Work, samples: &[f32]) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Some(engine) = work.engine.as_mut() else {
            return Err(gst::FlowError::Error);
        };
        work.timeline.advance(samples);
        let backlog =
            work.live && matches!(lock(&self.queue).items.front(), Some(Item::Audio { .. }));
        let out = work
            .policy
            .push(engine, samples, backlog)
            .map_err(|e| self.engine_error(e))?;
        let decoded = out
            .settled
            .unwrap_or_else(|| work.timeline.seconds() - engine.pending_seconds());
        let language = engine.language().map(str::to_string);
        if let Some(why) = engine.npu_failure()
            && !work.npu_failure_sent
        {
            gst::element_imp_warning!(
                self,
                gst::LibraryError::Failed,
                (
                    "NPU encoder given up, encoding on the CPU from now on: {}",
                    why
                )
            );
            work.npu_failure_sent = true;
        }
        self.send_detection(work);
        self.send_language(work, language.as_deref());
        if let Some(warning) = work
            .policy
            .take_warning()
            .or_else(|| work.engine.as_mut().and_then(Transcriber::take_warning))
        {
            gst::element_imp_warning!(self, gst::LibraryError::Failed, ("{}", warning));
        }
        let PolicyOutput {
            segments,
            partial,
            skipped,
            ..
        } = out;
        self.report_skipped(work, &skipped);
        self.output(work, segments, decoded)?;
        if let Some(partial) = partial {
            self.send_partial(work, &partial);
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// Creates the decode policy for the stream (live or offline), opening the speech
    /// gate; a VAD that cannot be loaded falls back with a warning.
    fn set_live(&self, work: &mut Work, live: bool) {
        work.live = live;
        if !live {
            work.policy = Box::new(Offline);
            return;
        }
        let (vad, latency, lateness) = {
            let s = lock(&self.settings);
            (s.vad.then(|| s.live_gate()), s.latency(), s.lateness())
        };
        let (gate, warning) = open_gate(vad);
        if let Some(warning) = warning {
            gst::element_imp_warning!(self, gst::LibraryError::Init, ("{}", warning));
        }
        gst::info!(
            CAT,
            imp = self,
            "Live decoding, speech gate: {}",
            gate.name()
        );
        work.policy = Box::new(Streaming::new(gate, latency, lateness));
    }

    /// Live, `partial-results=true`: the not-yet-final text as an element message and a
    /// custom downstream event, both named `whispernpu-partial`.
    fn send_partial(&self, work: &Work, partial: &Partial) {
        if !lock(&self.settings).partial_results {
            return;
        }
        let (Some(start), Some(end)) = (
            work.timeline.time_of(partial.start),
            work.timeline.time_of(partial.end.max(partial.start)),
        ) else {
            return;
        };
        let structure = gst::Structure::builder("whispernpu-partial")
            .field("start", start)
            .field("end", end)
            .field("text", &partial.text)
            .build();
        self.post_element(structure.clone());
        self.srcpad
            .push_event(gst::event::CustomDownstream::new(structure));
    }

    /// Transcribes everything of the current run and ends it.
    fn drain(&self, work: &mut Work) -> Result<gst::FlowSuccess, gst::FlowError> {
        let (Some(engine), Some(_)) = (work.engine.as_mut(), work.timeline.base()) else {
            return Ok(gst::FlowSuccess::Ok);
        };
        gst::debug!(
            CAT,
            imp = self,
            "Draining {:.2} s",
            engine.pending_seconds()
        );
        let out = work
            .policy
            .drain(engine)
            .map_err(|e| self.engine_error(e))?;
        self.send_detection(work);
        self.report_skipped(work, &out.skipped);
        let end = work.timeline.seconds();
        let res = self.output(work, out.segments, end);
        work.timeline.reset();
        res
    }

    /// Posts the engine's language identification as an element message `whispernpu-language`
    /// (language, probability, locked, audio-seconds, and the most probable candidates as
    /// parallel arrays `candidates` / `probabilities`) when its language or lock state changed.
    fn send_detection(&self, work: &mut Work) {
        let Some(d) = work.engine.as_ref().and_then(|e| e.language_detection()) else {
            return;
        };
        let key = (d.language.clone(), d.locked);
        if work.detection_sent.as_ref() == Some(&key) {
            return;
        }
        gst::info!(
            CAT,
            imp = self,
            "Language identified: {} (p {:.2}, {:.1} s of audio{})",
            d.language,
            d.probability,
            d.audio_seconds,
            if d.locked { ", locked" } else { "" }
        );
        let candidates = gst::Array::new(d.top.iter().map(|(code, _)| code.as_str()));
        let probabilities = gst::Array::new(d.top.iter().map(|&(_, p)| f64::from(p)));
        let structure = gst::Structure::builder("whispernpu-language")
            .field("language", &d.language)
            .field("probability", f64::from(d.probability))
            .field("locked", d.locked)
            .field("audio-seconds", d.audio_seconds)
            .field("candidates", candidates)
            .field("probabilities", probabilities)
            .build();
        self.post_element(structure);
        work.detection_sent = Some(key);
    }

    fn send_language(&self, work: &mut Work, language: Option<&str>) {
        let Some(language) = language.filter(|l| !l.is_empty()) else {
            return;
        };
        if work.language_sent.as_deref() == Some(language) {
            return;
        }
        gst::info!(CAT, imp = self, "Language: {}", language);
        let mut tags = gst::TagList::new();
        if let Some(tags) = tags.get_mut() {
            tags.add::<gst::tags::LanguageCode>(&language, gst::TagMergeMode::Replace);
        }
        self.srcpad.push_event(gst::event::Tag::new(tags));
        work.language_sent = Some(language.to_string());
    }

    /// Sends a GAP over `[from, to)` minus what is already covered.
    fn cover_to(
        &self,
        work: &mut Work,
        from: ClockTime,
        to: ClockTime,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let from = work.covered_until.map_or(from, |c| c.max(from));
        if to > from {
            gst::log!(CAT, imp = self, "GAP {} + {}", from, to - from);
            self.srcpad
                .push_event(gst::event::Gap::builder(from).duration(to - from).build());
            work.covered_until = Some(to);
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// Pushes segments (as text buffers, one per segment, per word with `output=words`, or per
    /// caption cue with `max-line-length`, `max-words-per-line`; bus
    /// messages) and a GAP up to `decoded` seconds.
    fn output(
        &self,
        work: &mut Work,
        segments: Vec<Segment>,
        decoded: f64,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let (words, layout) = {
            let s = lock(&self.settings);
            (s.output == OutputMode::Words, s.captions)
        };
        for seg in segments {
            self.send_language(work, Some(&seg.language));
            // Timestamps past the audio received come from the padding of a partial window.
            let seg_end = seg.end.min(work.timeline.seconds());
            if work.timeline.peak_between(seg.start, seg_end) < SILENCE_PEAK {
                gst::debug!(
                    CAT,
                    imp = self,
                    "Dropping `{}` ({:.2}–{:.2} s): the audio there is silent",
                    seg.text,
                    seg.start,
                    seg.end
                );
                continue;
            }
            let (Some(seg_start_time), Some(seg_end_time)) = (
                work.timeline.time_of(seg.start),
                work.timeline.time_of(seg_end),
            ) else {
                continue;
            };
            // The times the segment's buffer gets with `output=segments`.
            let msg_start = work
                .covered_until
                .map_or(seg_start_time, |c| c.max(seg_start_time));
            let msg_end = seg_end_time.max(msg_start.saturating_add(MIN_TEXT_DURATION));
            let structure = gst::Structure::builder("whispernpu-segment")
                .field("start", msg_start)
                .field("end", msg_end)
                .field("text", &seg.text)
                .field("language", &seg.language)
                .field("avg-logprob", f64::from(seg.avg_logprob))
                .field("no-speech-prob", f64::from(seg.no_speech_prob))
                .build();
            self.post_element(structure);
            // One buffer for the segment, one per word, or one per caption cue.
            let pieces: Vec<(f64, f64, String)> = if words && !seg.words.is_empty() {
                seg.words
                    .iter()
                    .map(|w| (w.start, w.end.min(seg_end), w.text.trim().to_string()))
                    .filter(|w| !w.2.is_empty())
                    .collect()
            } else {
                shape_captions(&seg, &layout, seg_end)
                    .into_iter()
                    .map(|cue| (cue.start, cue.end, cue.text()))
                    .collect()
            };
            for (piece_start, piece_end, piece_text) in pieces {
                let (Some(start), Some(end)) = (
                    work.timeline.time_of(piece_start),
                    work.timeline.time_of(piece_end),
                ) else {
                    continue;
                };
                // Cues never overlap: a player shows one at a time.
                let mut start = start;
                if let Some(covered) = work.covered_until {
                    if covered > start {
                        start = covered;
                    } else {
                        self.cover_to(work, covered, start)?;
                    }
                }
                let end = end.max(start.saturating_add(MIN_TEXT_DURATION));
                gst::debug!(CAT, imp = self, "Text {} – {}: {}", start, end, piece_text);
                let text = match work.format {
                    Some(TextFormat::Pango) => glib::markup_escape_text(&piece_text).to_string(),
                    _ => piece_text,
                };
                let mut buffer = gst::Buffer::from_mut_slice(text.into_bytes());
                {
                    let buffer = buffer.get_mut().expect("new buffer is writable");
                    buffer.set_pts(start);
                    buffer.set_duration(end - start);
                }
                work.covered_until = Some(end);
                self.srcpad.push(buffer)?;
            }
        }
        if let Some(to) = work.timeline.time_of(decoded) {
            let from = work.covered_until.or(work.timeline.base()).unwrap_or(to);
            self.cover_to(work, from, to)?;
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// Live overload: audio that has waited in the element's queue so long that its text could
    /// no longer leave within `latency` + `lateness` of its arrival (the wait plus the recent
    /// decode time exceed them) is not decoded. The open utterance is made final first (its
    /// text goes out), then this buffer and every queued one as late are left out: a GAP covers
    /// them, an element message `whispernpu-skipped` (`start`, `duration`: output time;
    /// `queued`: seconds of audio still waiting) names them (buffers left out one after
    /// another as they arrive are joined into one message a second: `note_skipped`), and the
    /// first of an overload posts one warning. The queue thus never holds more than the budget
    /// plus a decode's worth of audio. Returns whether the buffer (`n` samples at `time`) was
    /// left out.
    fn shed(
        &self,
        work: &mut Work,
        time: Option<ClockTime>,
        n: usize,
        arrived: Instant,
    ) -> Result<bool, gst::FlowError> {
        if !work.live {
            return Ok(false);
        }
        let budget = lock(&self.settings).budget();
        // At most half the budget: fresh audio is always decoded, so a decode time measured
        // under load is measured again once the load drops.
        let decode = Duration::from_secs_f64(work.policy.decode_seconds()).min(budget / 2);
        let late = |arrived: &Instant| arrived.elapsed() + decode > budget;
        if !late(&arrived) {
            return Ok(false);
        }
        let waited = arrived.elapsed();
        // What the live buffer holds becomes final now, before its deadline passes too.
        self.drain(work)?;
        let start = time
            .or(work.covered_until)
            .unwrap_or_else(|| work.default_base());
        let mut end = start + samples_to_time(n as u64);
        let queued = {
            let mut q = lock(&self.queue);
            while let Some(Item::Audio {
                samples,
                time,
                arrived,
            }) = q.items.front()
            {
                if !late(arrived) {
                    break;
                }
                let from = time.unwrap_or(end);
                end = end.max(from + samples_to_time(samples.len() as u64));
                q.queued_samples -= samples.len() as u64;
                q.items.pop_front();
            }
            q.queued_samples as f64 / SAMPLE_RATE as f64
        };
        let from = work.covered_until.map_or(start, |c| c.max(start));
        self.cover_to(work, from, end)?;
        work.skipped += end - start;
        work.last_shed = Some(end);
        gst::debug!(
            CAT,
            imp = self,
            "Overload: {} of audio from {} left out ({:.1} s still waiting)",
            end - start,
            start,
            queued
        );
        self.note_skipped(work, start, end, queued);
        if !work.behind {
            self.falling_behind(
                work,
                format!(
                    "audio waited {:.1} s for the engine (queued here, or delivered late by \
                     upstream), latency + lateness is {:.1} s",
                    waited.as_secs_f64(),
                    budget.as_secs_f64()
                ),
            );
        }
        Ok(true)
    }

    /// Audio from `start` to `end` was left out of the queue (`queued`: seconds still waiting):
    /// joined to the stretch not yet reported when it continues it and that stretch is under a
    /// second long, else that stretch is reported and this one opens the next.
    fn note_skipped(&self, work: &mut Work, start: ClockTime, end: ClockTime, queued: f64) {
        if let Some((from, to, _)) = work.skip_open
            && start.saturating_sub(to) <= ClockTime::from_mseconds(1)
            && to.saturating_sub(start) <= ClockTime::from_mseconds(1)
            && to - from < ClockTime::SECOND
        {
            work.skip_open = Some((from, end, queued));
            return;
        }
        self.post_skipped(work);
        work.skip_open = Some((start, end, queued));
    }

    /// Posts the `whispernpu-skipped` message of the stretch left out not yet reported.
    fn post_skipped(&self, work: &mut Work) {
        if let Some((start, end, queued)) = work.skip_open.take() {
            self.post_skipped_span(start, end, queued);
        }
    }

    /// The `whispernpu-skipped` element message: audio from `start` to `end` (output time) was
    /// not transcribed; `queued`: seconds of audio still waiting.
    fn post_skipped_span(&self, start: ClockTime, end: ClockTime, queued: f64) {
        let structure = gst::Structure::builder("whispernpu-skipped")
            .field("start", start)
            .field("duration", end.saturating_sub(start))
            .field("queued", queued)
            .build();
        self.post_element(structure);
    }

    /// Live: speech the policy left out because its decode could not get the shared workers in
    /// time (`whispernpu-skipped` per span, as for audio left out of the queue; the first
    /// overload of a stream warns). The text around it goes out as usual, a GAP covers it.
    fn report_skipped(&self, work: &mut Work, spans: &[(f64, f64)]) {
        for &(from, to) in spans {
            let (Some(start), Some(end)) = (work.timeline.time_of(from), work.timeline.time_of(to))
            else {
                continue;
            };
            let queued = lock(&self.queue).queued_samples as f64 / SAMPLE_RATE as f64;
            gst::debug!(
                CAT,
                imp = self,
                "Overload: speech {} – {} left out, its decode got no turn in time",
                start,
                end
            );
            work.skipped += end.saturating_sub(start);
            work.last_shed = Some(work.last_shed.map_or(end, |l| l.max(end)));
            self.post_skipped_span(start, end, queued);
            if !work.behind {
                let budget = lock(&self.settings).budget().as_secs_f64();
                self.falling_behind(
                    work,
                    format!(
                        "the engine, shared with other streams, had no turn for {:.1} s of speech \
                         before its text would be later than latency + lateness ({budget:.1} s)",
                        (end.saturating_sub(start)).seconds_f64()
                    ),
                );
            }
        }
    }

    /// An overload starts: one warning per stream (until a flush), an INFO line for the later
    /// ones (the `whispernpu-skipped` and `whispernpu-caught-up` messages mark each).
    fn falling_behind(&self, work: &mut Work, detail: String) {
        work.behind = true;
        if work.warned_behind {
            gst::info!(CAT, imp = self, "Falling behind realtime again: {}", detail);
            return;
        }
        work.warned_behind = true;
        gst::element_imp_warning!(
            self,
            gst::ResourceError::Busy,
            (
                "Falling behind realtime: {}; audio that waits longer is left out \
                 (whispernpu-skipped messages) until the element catches up",
                detail
            ),
            ["Use a smaller model, beam-size=1, or raise latency/lateness"]
        );
    }

    /// Live: warns once when the audio waiting for the engine exceeds latency + lateness.
    fn check_backlog(&self, work: &mut Work) {
        if !work.live {
            return;
        }
        let queued = lock(&self.queue).queued_samples as f64 / SAMPLE_RATE as f64;
        let pending = work
            .engine
            .as_ref()
            .map_or(0.0, |e| work.policy.pending_seconds(e));
        let backlog = queued + pending;
        let allowed = lock(&self.settings).budget().as_secs_f64();
        if !work.behind && backlog > allowed + 1.0 {
            self.falling_behind(
                work,
                format!("{backlog:.1} s of audio waiting, latency + lateness is {allowed:.1} s"),
            );
        } else if work.behind
            && backlog < allowed / 2.0
            && work.last_shed.is_none_or(|shed| {
                // Caught up: nothing left out for a while (twice the budget, 10 s at least).
                let calm = ClockTime::from_seconds_f64((2.0 * allowed).max(CALM_SECONDS));
                work.timeline.end().is_some_and(|end| end >= shed + calm)
            })
        {
            work.behind = false;
            work.last_shed = None;
            gst::info!(
                CAT,
                imp = self,
                "Caught up with realtime ({} of audio left out)",
                work.skipped
            );
            let structure = gst::Structure::builder("whispernpu-caught-up")
                .field(
                    "skipped",
                    std::mem::replace(&mut work.skipped, ClockTime::ZERO),
                )
                .build();
            self.post_element(structure);
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for WhisperNpu {
    const NAME: &'static str = "GstWhisperNpu";
    type Type = super::WhisperNpu;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let templ = klass.pad_template("sink").expect("sink template");
        let sinkpad = gst::Pad::builder_from_template(&templ)
            .chain_function(|pad, parent, buffer| {
                WhisperNpu::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.sink_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                WhisperNpu::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_event(pad, event),
                )
            })
            .build();
        let templ = klass.pad_template("src").expect("src template");
        let srcpad = gst::Pad::builder_from_template(&templ)
            .query_function(|pad, parent, query| {
                WhisperNpu::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_query(pad, query),
                )
            })
            .flags(gst::PadFlags::FIXED_CAPS)
            .build();
        Self {
            sinkpad,
            srcpad,
            settings: Mutex::new(Settings::default()),
            settings_generation: AtomicU64::new(0),
            chosen: Mutex::new(Chosen::default()),
            stream: Mutex::new(Stream::default()),
            queue: Mutex::new(Queue::default()),
            queue_cond: Condvar::new(),
            worker: Mutex::new(None),
            model: Mutex::new(ModelSlot::None),
        }
    }
}

impl ObjectImpl for WhisperNpu {
    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.add_pad(&self.sinkpad).expect("add sink pad");
        obj.add_pad(&self.srcpad).expect("add src pad");
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: Lazy<Vec<glib::ParamSpec>> = Lazy::new(|| {
            vec![
                glib::ParamSpecString::builder("model")
                    .nick("Model")
                    .blurb(
                        "Whisper model: a name (tiny.en, base; looked up in $WHISPERNPU_MODELS/NAME, \
                         ./models/NAME and this source tree's models/NAME, installed by \
                         scripts/fetch-model) or a path: a CTranslate2 model directory, a \
                         whisper.cpp GGML file, or a Hugging Face safetensors directory or \
                         .safetensors file (the format is detected from the path). Default: base. \
                         Read at NULL→READY; a change takes effect at the next NULL→READY",
                    )
                    .default_value(Some(DEFAULT_MODEL))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("backend", DEFAULT_BACKEND)
                    .nick("Backend")
                    .blurb(
                        "Inference backend: auto (the NPU when an amdxdna device, XRT and a built encoder \
                         artifact for the model are all present, else cpu with an INFO log; no \
                         encoder artifact has been built yet, so cpu), cpu (native Rust), npu (AMD \
                         Ryzen AI through XRT, never run on an NPU; fails at NULL→READY naming \
                         what is missing; needs a build with --features npu), onnx (not in this \
                         build: fails), npu-sim (the NPU encoder's host code on a simulated device \
                         whose runs execute the golden model on the CPU: the NPU kernels' bf16 \
                         arithmetic, one dispatch per window; slow, for checking). With npu and \
                         npu-sim the next window is encoded while the CPU decodes this one; a \
                         failed NPU run is not used: the CPU encodes from then on, with a warning. \
                         Default: auto. Read at NULL→READY",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default(
                    "execution-provider",
                    DEFAULT_EXECUTION_PROVIDER,
                )
                .nick("Execution provider")
                .blurb(
                    "backend=onnx (and auto with an ONNX export): ONNX Runtime's execution \
                     provider: auto (the first accelerator the library has: Vitis AI, CUDA, ROCm, \
                     MIGraphX, DirectML, CoreML, OpenVINO; else cpu, logged), cpu, vitisai (AMD \
                     Ryzen AI NPU; Ryzen AI Software's ONNX Runtime), openvino, cuda, rocm, \
                     migraphx, coreml, directml. The library is $ORT_DYLIB_PATH, else the one \
                     scripts/fetch-runtime installs; a provider it lacks fails NULL→READY naming \
                     both. Default: auto. Read at NULL→READY",
                )
                .mutable_ready()
                .build(),
                glib::ParamSpecString::builder("execution-provider-options")
                    .nick("Execution provider options")
                    .blurb(
                        "Options passed to the execution provider, as key=value;key=value (Vitis \
                         AI: config_file, cache_dir, cache_key; OpenVINO: device_type=CPU|GPU|NPU, \
                         ...; MIGraphX, DirectML: device_id). Default: none. Read at NULL→READY",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("compute-type", DEFAULT_COMPUTE_TYPE)
                    .nick("Compute type")
                    .blurb(
                        "Numeric precision: auto (the fastest type whose accuracy holds, per CPU: bf16 where Intel AMX runs it, else f32; logged with the reason), \
                         f32 (weights as stored; f16 checkpoints are kept in f16, losslessly), \
                         int8 (decoder weights in int8 with a scale per row; the encoder stays \
                         f32), bf16 (the encoder's matrix products on bf16-rounded inputs with \
                         f32 accumulation, on Intel AMX where available; decoder as f32). \
                         Default: auto. Read at NULL→READY",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("language-code")
                    .nick("Language code")
                    .blurb(
                        "Spoken language: an ISO 639-1 code (\"en\", \"de\") or a BCP 47 tag \
                         (\"en-US\": only the language part is used); empty = detect from the first \
                         window. Default: \"\". A change takes effect after the next flush, \
                         discontinuity or EOS",
                    )
                    .default_value(Some(DEFAULT_LANGUAGE_CODE))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("task", DEFAULT_TASK)
                    .nick("Task")
                    .blurb(
                        "transcribe = text in the spoken language; translate = English text \
                         (multilingual models only). Default: transcribe. Applies from the next \
                         window",
                    )
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("latency")
                    .nick("Latency")
                    .blurb(
                        "Live: the budget in milliseconds from the start of a word to its text \
                         leaving the element. Text is final once two successive hypotheses agree \
                         or at a pause, usually well within it; words about to exceed it are \
                         made final without agreement (less stable). The buffer is re-decoded \
                         every 12 % of it (0.3–1 s of new audio). The element adds latency + \
                         lateness to the LATENCY query answer. Ignored for non-live streams. \
                         Range 500–60000 ms, default 4000 ms. Applies at once (posts a LATENCY \
                         message)",
                    )
                    .minimum(500)
                    .maximum(60_000)
                    .default_value(DEFAULT_LATENCY_MS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("lateness")
                    .nick("Lateness")
                    .blurb(
                        "Live: extra milliseconds added to the reported latency as slack for slow \
                         decoding; under overload, audio whose text could no longer leave within \
                         latency + lateness is left out (whispernpu-skipped) and a warning is \
                         posted. Range 0–60000 ms, default 0 ms. Applies \
                         at once (posts a LATENCY message)",
                    )
                    .minimum(0)
                    .maximum(60_000)
                    .default_value(DEFAULT_LATENESS_MS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("beam-size")
                    .nick("Beam size")
                    .blurb(
                        "1 = greedy decoding; 2–16 = beam search with this many beams (slower, \
                         sometimes more accurate). Range 1–16, default 1. Applies from the next \
                         window",
                    )
                    .minimum(1)
                    .maximum(16)
                    .default_value(DEFAULT_BEAM_SIZE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("n-threads")
                    .nick("Threads")
                    .blurb(
                        "Engine worker threads; 0 = one per core. Elements of one process asking \
                         for the same number share one pool of that many threads, on which live \
                         elements decode in turn, nearest deadline first. Range 0–256, default 0. \
                         Read when the engine starts (first audio after READY→PAUSED)",
                    )
                    .minimum(0)
                    .maximum(256)
                    .default_value(DEFAULT_N_THREADS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("initial-prompt")
                    .nick("Initial prompt")
                    .blurb(
                        "Text given to the model as if it preceded the audio (names, spellings, \
                         style); empty = none. Default: \"\". A change takes effect after the next \
                         flush, discontinuity or EOS",
                    )
                    .default_value(Some(DEFAULT_INITIAL_PROMPT))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecFloat::builder("no-speech-threshold")
                    .nick("No-speech threshold")
                    .blurb(
                        "A window whose no-speech probability exceeds this (and whose average \
                         token log-probability is below −1) is treated as silence: no text. \
                         Range 0–1, default 0.6. Applies from the next window",
                    )
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_NO_SPEECH_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("condition-on-previous-text")
                    .nick("Condition on previous text")
                    .blurb(
                        "Prompt each window with the text of the previous ones (more consistent \
                         style; a mistake can repeat). Default: true. Applies from the next window",
                    )
                    .default_value(DEFAULT_CONDITION_ON_PREVIOUS_TEXT)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("mode", DEFAULT_MODE)
                    .nick("Mode")
                    .blurb(
                        "auto = live processing when upstream answers the LATENCY query as live, \
                         else offline; offline = openai's long-form algorithm over 30 s windows \
                         (the same text as examples/transcribe); live = a speech-gated buffer \
                         re-decoded as audio arrives, text final when successive hypotheses \
                         agree, at pauses, or at the latency budget; timestamps in running time. \
                         Default: auto. Read at each caps event",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("vad")
                    .nick("Voice activity detection")
                    .blurb(
                        "Decode only speech, found by Silero VAD (ONNX Runtime, installed by \
                         scripts/fetch-runtime; an energy detector with a warning if it cannot \
                         be loaded). Live: utterances are gated; files (offline): music, noise \
                         and pauses of min-silence-duration or more are left out and times stay \
                         the stream's (faster-whisper's vad_filter). Off: everything is decoded \
                         and the model's no-speech probability is the only guard. Default: true. \
                         Read when decoding starts (caps, flush)",
                    )
                    .default_value(DEFAULT_VAD)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecFloat::builder("vad-threshold")
                    .nick("VAD threshold")
                    .blurb(
                        "Speech probability (Silero) at or above which a 32 ms frame is speech; \
                         speech ends below this minus 0.15. Range 0.01–1, default 0.5. Read when \
                         decoding starts",
                    )
                    .minimum(0.01)
                    .maximum(1.0)
                    .default_value(DEFAULT_VAD_THRESHOLD)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("min-silence-duration")
                    .nick("Minimum silence duration")
                    .blurb(
                        "ms of non-speech that end a stretch of speech: live, an utterance ends \
                         (default 400); files, a pause this long is left out (default 2000, \
                         faster-whisper's). -1 = the mode's default. Read when decoding starts",
                    )
                    .minimum(-1)
                    .maximum(60_000)
                    .default_value(DEFAULT_VAD_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("speech-pad")
                    .nick("Speech padding")
                    .blurb(
                        "ms of audio kept before and after each stretch of speech (live default \
                         100, files 400, faster-whisper's). -1 = the mode's default. Read when \
                         decoding starts",
                    )
                    .minimum(-1)
                    .maximum(10_000)
                    .default_value(DEFAULT_VAD_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("output", DEFAULT_OUTPUT)
                    .nick("Output")
                    .blurb(
                        "segments: one text buffer per transcribed segment; words: one buffer per \
                         word, PTS and duration the word's (cross-attention alignment, openai's \
                         word timestamps; offline this adds one decoder pass per window). \
                         Default: segments. Applies from the next window",
                    )
                    .mutable_playing()
                    .build(),
                glib::ParamSpecFloat::builder("hallucination-silence-threshold")
                    .nick("Hallucination silence threshold")
                    .blurb(
                        "Offline: seconds; a segment whose words look invented (improbable, very \
                         short or very long) and that is surrounded by more silence than this is \
                         dropped and decoding resumes after the silence (openai's \
                         hallucination_silence_threshold; uses word timing). 0 = off (default). \
                         Applies from the next window",
                    )
                    .minimum(0.0)
                    .maximum(60.0)
                    .default_value(DEFAULT_HALLUCINATION_SILENCE_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecFloat::builder("compression-ratio-threshold")
                    .nick("Compression-ratio threshold")
                    .blurb(
                        "A window whose text compresses (gzip) better than this is repetitive: it \
                         is decoded again at the next temperature. 0 = off. Range 0–100, default \
                         2.4 (openai's). Applies from the next window",
                    )
                    .minimum(0.0)
                    .maximum(100.0)
                    .default_value(DEFAULT_COMPRESSION_RATIO_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecFloat::builder("logprob-threshold")
                    .nick("Log-probability threshold")
                    .blurb(
                        "A window whose average token log-probability is below this is decoded \
                         again at the next temperature (a very negative value, e.g. -1e9, turns \
                         it off). Default −1 (openai's). Applies from the next window",
                    )
                    .minimum(f32::MIN)
                    .maximum(0.0)
                    .default_value(DEFAULT_LOGPROB_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecFloat::builder("temperature-increment")
                    .nick("Temperature increment")
                    .blurb(
                        "Fallback temperatures 0, x, 2x, … up to 1 for windows that fail the \
                         compression-ratio or log-probability check (openai's \
                         temperature_increment_on_fallback); 0 = greedy only, no fallback. \
                         Range 0–1, default 0.2. Applies from the next window",
                    )
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_TEMPERATURE_INCREMENT)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("suppress-tokens")
                    .nick("Suppressed tokens")
                    .blurb(
                        "Comma-separated token ids the decoder never emits; -1 = the model's \
                         list of symbols (openai's default), empty = none. Default \"-1\". A \
                         list that is not integers ≥ -1 is an error naming this property. \
                         Applies from the next window",
                    )
                    .default_value(Some(DEFAULT_SUPPRESS_TOKENS))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("suppress-blank")
                    .nick("Suppress blank")
                    .blurb(
                        "The first token of a window's text may not be a blank or end of text \
                         (openai's suppress_blank). Default true. Applies from the next window",
                    )
                    .default_value(DEFAULT_SUPPRESS_BLANK)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("hotwords")
                    .nick("Hotwords")
                    .blurb(
                        "Names and terms to spell as given (faster-whisper's hotwords): put at the \
                         front of every window's prompt, before the previous text, live and \
                         offline; empty = none. Default: \"\". Applies from the next window",
                    )
                    .default_value(Some(DEFAULT_HOTWORDS))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("prefix")
                    .nick("Prefix")
                    .blurb(
                        "Offline: text the transcript starts with (openai's and faster-whisper's \
                         prefix): forced as the start of the first window's text, and kept in \
                         the output; empty = none. Default: \"\". A change takes effect after \
                         the next flush, discontinuity or EOS",
                    )
                    .default_value(Some(DEFAULT_PREFIX))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-line-length")
                    .nick("Maximum line length")
                    .blurb(
                        "Caption shaping: characters per line (openai-whisper's max_line_width); a \
                         segment's text is split at word boundaries into buffers of at most \
                         max-lines lines joined with \\n, each timed by its own words (word \
                         timing turns on offline). A word longer than this gets a line of its \
                         own. 0 = off (default). Applies from the next segment, live too",
                    )
                    .maximum(10_000)
                    .default_value(0)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-lines")
                    .nick("Maximum lines")
                    .blurb(
                        "Caption shaping: lines per text buffer (openai-whisper's \
                         max_line_count); 0 = no limit (one buffer per segment, split into \
                         lines). Default 0. Applies from the next segment",
                    )
                    .maximum(100)
                    .default_value(0)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-words-per-line")
                    .nick("Maximum words per line")
                    .blurb(
                        "Caption shaping: words per line (openai-whisper's max_words_per_line); \
                         0 = no limit (default). Applies from the next segment",
                    )
                    .maximum(1_000)
                    .default_value(0)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("caption-preset", DEFAULT_CAPTION_PRESET)
                    .nick("Caption preset")
                    .blurb(
                        "Sets max-line-length, max-lines and max-words-per-line at once: \
                         cea608-roll-up-2 = 32 columns, 2 lines (CEA-608 roll-up, e.g. for \
                         tttocea608 mode=roll-up2); cea608-roll-up-3 = 32 columns, 3 lines; \
                         none = no shaping. Properties set after it override it. Default: none",
                    )
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("partial-results")
                    .nick("Partial results")
                    .blurb(
                        "Live: after each decode, post the not-yet-final rest of the hypothesis as \
                         an element message `whispernpu-partial` (start, end: running time; text) \
                         and send it downstream as a custom event of the same name. Text buffers \
                         carry final text only. Default: false",
                    )
                    .default_value(DEFAULT_PARTIAL_RESULTS)
                    .mutable_playing()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = lock(&self.settings);
        let mut latency_changed = false;
        match pspec.name() {
            "model" => {
                s.model = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| DEFAULT_MODEL.into());
            }
            "backend" => s.backend = value.get().expect("type checked upstream"),
            "execution-provider" => {
                s.execution_provider = value.get().expect("type checked upstream")
            }
            "execution-provider-options" => s.execution_provider_options = text_value(value),
            "compute-type" => s.compute_type = value.get().expect("type checked upstream"),
            "language-code" => s.language_code = text_value(value),
            "task" => s.task = value.get().expect("type checked upstream"),
            "latency" => {
                s.latency_ms = value.get().expect("type checked upstream");
                latency_changed = true;
            }
            "lateness" => {
                s.lateness_ms = value.get().expect("type checked upstream");
                latency_changed = true;
            }
            "beam-size" => s.beam_size = value.get().expect("type checked upstream"),
            "n-threads" => s.n_threads = value.get().expect("type checked upstream"),
            "initial-prompt" => s.initial_prompt = text_value(value),
            "no-speech-threshold" => {
                s.no_speech_threshold = value.get().expect("type checked upstream");
            }
            "condition-on-previous-text" => {
                s.condition_on_previous_text = value.get().expect("type checked upstream");
            }
            "mode" => s.mode = value.get().expect("type checked upstream"),
            "vad" => s.vad = value.get().expect("type checked upstream"),
            "vad-threshold" => s.vad_threshold = value.get().expect("type checked upstream"),
            "min-silence-duration" => {
                s.min_silence_ms = value.get().expect("type checked upstream")
            }
            "speech-pad" => s.speech_pad_ms = value.get().expect("type checked upstream"),
            "partial-results" => s.partial_results = value.get().expect("type checked upstream"),
            "output" => s.output = value.get().expect("type checked upstream"),
            "hallucination-silence-threshold" => {
                s.hallucination_silence_threshold = value.get().expect("type checked upstream");
            }
            "compression-ratio-threshold" => {
                s.compression_ratio_threshold = value.get().expect("type checked upstream");
            }
            "logprob-threshold" => {
                s.logprob_threshold = value.get().expect("type checked upstream");
            }
            "temperature-increment" => {
                s.temperature_increment = value.get().expect("type checked upstream");
            }
            "suppress-tokens" => s.suppress_tokens = text_value(value),
            "suppress-blank" => s.suppress_blank = value.get().expect("type checked upstream"),
            "hotwords" => s.hotwords = text_value(value),
            "prefix" => s.prefix = text_value(value),
            "max-line-length" => {
                s.captions.max_line_length =
                    value.get::<u32>().expect("type checked upstream") as usize
            }
            "max-lines" => {
                s.captions.max_lines = value.get::<u32>().expect("type checked upstream") as usize
            }
            "max-words-per-line" => {
                s.captions.max_words_per_line =
                    value.get::<u32>().expect("type checked upstream") as usize
            }
            "caption-preset" => {
                s.caption_preset = value.get().expect("type checked upstream");
                s.captions = s.caption_preset.layout();
            }
            other => unimplemented!("property {other}"),
        }
        gst::debug!(CAT, imp = self, "{} = {:?}", pspec.name(), value);
        drop(s);
        self.settings_generation.fetch_add(1, Ordering::AcqRel);
        if latency_changed {
            let _ = self
                .obj()
                .post_message(gst::message::Latency::builder().src(&*self.obj()).build());
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = lock(&self.settings);
        match pspec.name() {
            "model" => s.model.to_value(),
            "backend" => s.backend.to_value(),
            "execution-provider" => s.execution_provider.to_value(),
            "execution-provider-options" => s.execution_provider_options.to_value(),
            "compute-type" => s.compute_type.to_value(),
            "language-code" => s.language_code.to_value(),
            "task" => s.task.to_value(),
            "latency" => s.latency_ms.to_value(),
            "lateness" => s.lateness_ms.to_value(),
            "beam-size" => s.beam_size.to_value(),
            "n-threads" => s.n_threads.to_value(),
            "initial-prompt" => s.initial_prompt.to_value(),
            "no-speech-threshold" => s.no_speech_threshold.to_value(),
            "condition-on-previous-text" => s.condition_on_previous_text.to_value(),
            "mode" => s.mode.to_value(),
            "vad" => s.vad.to_value(),
            "vad-threshold" => s.vad_threshold.to_value(),
            "min-silence-duration" => s.min_silence_ms.to_value(),
            "speech-pad" => s.speech_pad_ms.to_value(),
            "partial-results" => s.partial_results.to_value(),
            "output" => s.output.to_value(),
            "hallucination-silence-threshold" => s.hallucination_silence_threshold.to_value(),
            "compression-ratio-threshold" => s.compression_ratio_threshold.to_value(),
            "logprob-threshold" => s.logprob_threshold.to_value(),
            "temperature-increment" => s.temperature_increment.to_value(),
            "suppress-tokens" => s.suppress_tokens.to_value(),
            "suppress-blank" => s.suppress_blank.to_value(),
            "hotwords" => s.hotwords.to_value(),
            "prefix" => s.prefix.to_value(),
            "max-line-length" => (s.captions.max_line_length as u32).to_value(),
            "max-lines" => (s.captions.max_lines as u32).to_value(),
            "max-words-per-line" => (s.captions.max_words_per_line as u32).to_value(),
            "caption-preset" => s.caption_preset.to_value(),
            other => unimplemented!("property {other}"),
        }
    }
}

impl GstObjectImpl for WhisperNpu {}

impl ElementImpl for WhisperNpu {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: Lazy<gst::subclass::ElementMetadata> = Lazy::new(|| {
            gst::subclass::ElementMetadata::new(
                "Whisper speech-to-text",
                "Audio/Text/Filter",
                "Transcribes or translates speech into timed text (one buffer per phrase) with \
                 OpenAI Whisper on the CPU (native Rust engine); the AMD Ryzen AI NPU backend \
                 is written but has never run on an NPU",
                "whispernpu developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: Lazy<Vec<gst::PadTemplate>> = Lazy::new(|| {
            let sink_caps = gst_audio::AudioCapsBuilder::new_interleaved()
                .format_list([gst_audio::AudioFormat::F32le, gst_audio::AudioFormat::S16le])
                .rate(SAMPLE_RATE as i32)
                .channels(1)
                .build();
            let src_caps = gst::Caps::builder("text/x-raw")
                .field("format", gst::List::new(["utf8", "pango-markup"]))
                .build();
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &sink_caps,
                )
                .expect("sink template"),
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &src_caps,
                )
                .expect("src template"),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        gst::debug!(CAT, imp = self, "Changing state {:?}", transition);
        match transition {
            gst::StateChange::NullToReady => self.start_loading()?,
            gst::StateChange::ReadyToPaused => {
                self.check_model_slot()?;
                *lock(&self.stream) = Stream::default();
                self.start_worker()?;
            }
            gst::StateChange::PausedToReady => self.stop_worker_begin(),
            gst::StateChange::PlayingToPaused => self.cancel_stall_wait(),
            _ => {}
        }
        let res = self.parent_change_state(transition);
        match transition {
            gst::StateChange::PausedToReady => self.stop_worker_join(),
            // A worker waiting for audio arms its stall wait again.
            gst::StateChange::PausedToPlaying => self.queue_cond.notify_all(),
            gst::StateChange::ReadyToNull => {
                let slot = std::mem::replace(&mut *lock(&self.model), ModelSlot::None);
                if let ModelSlot::Loading(handle) = slot {
                    let _ = handle.join();
                }
            }
            _ => {}
        }
        if res.is_err() && transition == gst::StateChange::ReadyToPaused {
            self.stop_worker_begin();
            self.stop_worker_join();
        }
        res
    }
}

/// The speech gate for live decoding: Silero VAD when `vad` is set (an energy detector, with the
/// reason, when it cannot be loaded), or none.
fn open_gate(vad: Option<SegmenterOptions>) -> (Box<dyn SpeechGate>, Option<String>) {
    let Some(options) = vad else {
        return (Box::new(crate::transcribe::AlwaysSpeech::default()), None);
    };
    let (gate, warning) =
        crate::transcribe::VadGate::open_with(crate::vad::VadKind::Silero, options);
    (Box::new(gate), warning)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_codes() {
        assert_eq!(language_from_code(""), None);
        assert_eq!(language_from_code("auto"), None);
        assert_eq!(language_from_code("en"), Some("en".into()));
        assert_eq!(language_from_code("en-US"), Some("en".into()));
        assert_eq!(language_from_code("DE_at"), Some("de".into()));
    }

    #[test]
    fn decoding_knobs_reach_the_options() {
        let mut s = Settings::default();
        let o = s.options().unwrap();
        assert_eq!(o.compression_ratio_threshold, Some(2.4));
        assert_eq!(o.log_prob_threshold, Some(-1.0));
        assert_eq!(o.temperatures, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(o.suppress_tokens, [-1]);
        assert!(o.suppress_blank);
        s.compression_ratio_threshold = 0.0;
        s.logprob_threshold = -0.5;
        s.temperature_increment = 0.5;
        s.suppress_tokens = " -1, 11 ,13".into();
        s.suppress_blank = false;
        let o = s.options().unwrap();
        assert_eq!(o.compression_ratio_threshold, None);
        assert_eq!(o.log_prob_threshold, Some(-0.5));
        assert_eq!(o.temperatures, [0.0, 0.5, 1.0]);
        assert_eq!(o.suppress_tokens, [-1, 11, 13]);
        assert!(!o.suppress_blank);
        s.temperature_increment = 0.0;
        s.suppress_tokens = String::new();
        let o = s.options().unwrap();
        assert_eq!(o.temperatures, [0.0]);
        assert!(o.suppress_tokens.is_empty());
        assert_eq!((o.hotwords, o.prefix), (None, None));
        s.hotwords = " Tadhg Mac Giolla ".into();
        s.prefix = "Yesterday".into();
        let o = s.options().unwrap();
        assert_eq!(o.hotwords.as_deref(), Some("Tadhg Mac Giolla"));
        assert_eq!(o.prefix.as_deref(), Some("Yesterday"));
        s.suppress_tokens = "-2".into();
        let e = s.options().unwrap_err().to_string();
        assert!(e.contains("suppress-tokens"), "{e}");
    }

    /// `vad` and its three properties reach the offline VAD (files' defaults: faster-whisper's
    /// 2000 ms / 400 ms) and the live gate (400 ms / 100 ms); shaping turns word timing on.
    #[test]
    fn vad_and_caption_settings_reach_the_options() {
        let mut s = Settings::default();
        let o = s.options().unwrap();
        let files = o
            .vad_filter
            .expect("vad is on by default, for files too")
            .segments;
        assert_eq!((files.min_silence_ms, files.speech_pad_ms), (2000, 400));
        let live = s.live_gate();
        assert_eq!((live.min_silence_ms, live.speech_pad_ms), (400, 100));
        assert!(!o.word_timestamps);
        s.vad_threshold = 0.7;
        s.min_silence_ms = 1000;
        s.speech_pad_ms = 50;
        let files = s.options().unwrap().vad_filter.unwrap().segments;
        assert_eq!(
            (files.threshold, files.min_silence_ms, files.speech_pad_ms),
            (0.7, 1000, 50)
        );
        let live = s.live_gate();
        assert_eq!(
            (live.threshold, live.min_silence_ms, live.speech_pad_ms),
            (0.7, 1000, 50)
        );
        s.vad = false;
        assert_eq!(s.options().unwrap().vad_filter, None);
        s.captions = CaptionPreset::Cea608RollUp3.layout();
        assert!(s.options().unwrap().word_timestamps);
        assert_eq!((s.captions.max_line_length, s.captions.max_lines), (32, 3));
    }

    #[test]
    fn s16_to_f32() {
        let bytes = [0x00, 0x80, 0x00, 0x40, 0xff, 0x7f];
        let f = to_f32(gst_audio::AudioFormat::S16le, &bytes);
        assert_eq!(f[0], -1.0);
        assert_eq!(f[1], 0.5);
        assert!((f[2] - 1.0).abs() < 1e-4);
    }
}
