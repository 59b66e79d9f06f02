//! The speech gate of live decoding built from a frame-level [`Vad`] and a [`Segmenter`].

use super::live::{GateEvent, SpeechGate};
use crate::vad::{self, Segmenter, SegmenterOptions, VAD_FRAME, Vad, VadEvent, VadKind};

/// Silence that ends an utterance, in ms: long enough to ride over the gaps between words, short
/// enough that a sentence's text follows it quickly.
pub const LIVE_MIN_SILENCE_MS: u32 = 400;

/// [`SpeechGate`] over a VAD: utterances are the segmenter's speech segments.
pub struct VadGate {
    vad: Box<dyn Vad>,
    segmenter: Segmenter,
    probs: Vec<f32>,
    threshold: f32,
    neg_threshold: f32,
    /// Frames since the last speech frame while a pause may be starting.
    trailing: u64,
}

impl VadGate {
    pub fn new(vad: Box<dyn Vad>, options: SegmenterOptions) -> Self {
        Self {
            vad,
            threshold: options.threshold,
            neg_threshold: options.neg_threshold(),
            segmenter: Segmenter::new(options),
            probs: Vec::new(),
            trailing: 0,
        }
    }

    /// Silero VAD (or, with a warning saying why, the energy detector) with the live defaults.
    pub fn open(kind: VadKind) -> (Self, Option<String>) {
        Self::open_with(kind, Self::live_options())
    }

    /// [`open`](Self::open) with other segmenter options.
    pub fn open_with(kind: VadKind, options: SegmenterOptions) -> (Self, Option<String>) {
        let (vad, warning) = vad::open(kind, None, None);
        (Self::new(vad, options), warning)
    }

    /// The live defaults: Silero's, but utterances end after [`LIVE_MIN_SILENCE_MS`].
    pub fn live_options() -> SegmenterOptions {
        SegmenterOptions {
            min_silence_ms: LIVE_MIN_SILENCE_MS,
            ..SegmenterOptions::default()
        }
    }

    /// The detector in use: `silero` or `energy`.
    pub fn detector(&self) -> &'static str {
        self.vad.name()
    }
}

impl SpeechGate for VadGate {
    fn push(&mut self, samples: &[f32]) -> Vec<GateEvent> {
        self.probs.clear();
        self.vad.push(samples, &mut self.probs);
        for &p in &self.probs {
            if p >= self.threshold {
                self.trailing = 0;
            } else if self.trailing > 0 || p < self.neg_threshold {
                self.trailing += 1;
            }
        }
        self.segmenter
            .push(&self.probs)
            .into_iter()
            .map(convert)
            .collect()
    }

    fn flush(&mut self) -> Vec<GateEvent> {
        self.segmenter.flush().map(convert).into_iter().collect()
    }

    fn trailing_silence(&self) -> f64 {
        if self.segmenter.in_speech() {
            (self.trailing * VAD_FRAME as u64) as f64 / 16_000.0
        } else {
            0.0
        }
    }

    fn reset(&mut self) {
        self.vad.reset();
        self.segmenter.reset();
        self.trailing = 0;
    }

    fn name(&self) -> &'static str {
        self.vad.name()
    }

    fn take_warning(&mut self) -> Option<String> {
        self.vad.take_warning()
    }
}

fn convert(e: VadEvent) -> GateEvent {
    match e {
        VadEvent::Start { sample } => GateEvent::Start(sample),
        VadEvent::End { sample } => GateEvent::End(sample),
    }
}
