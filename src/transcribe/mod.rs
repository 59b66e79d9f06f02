//! Transcription drivers: the long-form (offline) seek loop over 30 s windows, the live policy,
//! and word timing.

mod gate;
mod live;
mod offline;
mod options;
mod words;

pub use gate::{LIVE_MIN_SILENCE_MS, VadGate};
pub use live::{
    AlwaysSpeech, GateEvent, LiveOptions, LiveOutput, LiveStats, LiveTranscriber, Partial,
    SpeechGate,
};
pub use offline::{Stats, Transcriber};
pub use options::{TailPadding, Task, TranscribeOptions};

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
