//! Transcription drivers: the long-form (offline) seek loop over 30 s windows, the live policy,
//! and word timing.

mod captions;
mod gate;
mod live;
mod offline;
mod options;
pub mod schedule;
mod speech;
mod words;

pub use captions::{CAPTION_PRESETS, CaptionLayout, Cue, shape as shape_captions};
pub use gate::{LIVE_MIN_SILENCE_MS, VadGate};
pub use live::{
    AlwaysSpeech, GateEvent, LiveOptions, LiveOutput, LiveStats, LiveTranscriber, Partial,
    SpeechGate,
};
pub use offline::{Stats, Transcriber};
pub use options::{
    EncoderBackend, TailPadding, Task, TranscribeOptions, parse_suppress_tokens,
    temperature_schedule,
};
pub use speech::{SpeechFilter, VadFilterOptions};

/// The outcome of language identification on one window (openai's `detect_language`: the
/// decoder's first-step distribution over the language tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct LanguageDetection {
    /// The most probable language's code (e.g. "de").
    pub language: String,
    /// Its probability, over the model's languages.
    pub probability: f32,
    /// The five most probable languages, most probable first.
    pub top: Vec<(String, f32)>,
    /// Seconds of audio the detection heard.
    pub audio_seconds: f64,
    /// No later window changes the language (offline: detected on the first window; live: a
    /// confident detection, see [`LIVE_LANGUAGE_LOCK`]).
    pub locked: bool,
}

/// Live mode re-detects the language on every decode until a detection reaches this probability
/// (over at least [`LIVE_LANGUAGE_MIN_SECONDS`] of audio), then keeps it: a first detection over
/// half a second of speech is often wrong.
pub const LIVE_LANGUAGE_LOCK: f32 = 0.8;
/// See [`LIVE_LANGUAGE_LOCK`].
pub const LIVE_LANGUAGE_MIN_SECONDS: f64 = 2.0;

/// One transcribed phrase.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Start, seconds from the first sample pushed since the transcriber was created or reset.
    pub start: f64,
    /// End, seconds, same origin.
    pub end: f64,
    /// Text as the model wrote it, leading space removed.
    pub text: String,
    /// Text tokens (no special or timestamp tokens).
    pub tokens: Vec<u32>,
    /// Average log-probability of the window's tokens.
    pub avg_logprob: f32,
    /// Probability of `<|nospeech|>` for the window.
    pub no_speech_prob: f32,
    /// Temperature the window was decoded at.
    pub temperature: f32,
    /// zlib compression ratio of the window's text.
    pub compression_ratio: f32,
    /// Language code (e.g. "en").
    pub language: String,
    /// Words with their times, when word timestamps are on ([`TranscribeOptions::word_timestamps`]
    /// offline; always in live mode); empty otherwise.
    pub words: Vec<Word>,
}

/// One word of a [`Segment`] with its time (openai's word timestamps).
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// Text as the model wrote it, with its leading space and the punctuation merged into it
    /// (`" And"`, `" Americans,"`).
    pub text: String,
    /// Start and end, seconds, same origin as the segment's.
    pub start: f64,
    pub end: f64,
    /// Mean probability of the word's tokens in the alignment pass (softmax over the text
    /// tokens); `None` in live mode, where no such pass runs.
    pub probability: Option<f32>,
}
