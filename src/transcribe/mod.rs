//! Transcription drivers: the long-form (offline) seek loop over 30 s windows.

mod gate;
mod live;
mod offline;
mod options;

pub use gate::{LIVE_MIN_SILENCE_MS, VadGate};
pub use live::{
    AlwaysSpeech, GateEvent, LiveOptions, LiveOutput, LiveStats, LiveTranscriber, Partial,
    SpeechGate,
};
pub use offline::{Stats, Transcriber};
pub use options::{EncoderBackend, TailPadding, Task, TranscribeOptions};

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
}
