//! When the element asks the engine to decode: the pluggable part between incoming audio and
//! segments.
//!
//! * [`Offline`]: every complete 30 s window is decoded as it fills; the tail at drain. This is
//!   openai's long-form algorithm and gives the same text as `examples/transcribe`.
//! * [`Streaming`] (live): a speech-gated buffer re-decoded as audio arrives, text committed
//!   when consecutive hypotheses agree, at pauses, or when the latency budget runs out
//!   ([`LiveTranscriber`]).

use std::time::{Duration, Instant};

use crate::error::Error;
use crate::transcribe::{LiveOptions, LiveTranscriber, Partial, Segment, SpeechGate, Transcriber};

/// What a policy call produced.
#[derive(Debug, Default)]
pub struct PolicyOutput {
    /// Final text.
    pub segments: Vec<Segment>,
    /// Live: the not-yet-final rest of the latest hypothesis.
    pub partial: Option<Partial>,
    /// Seconds since the run start before which no more text will come; `None`: everything the
    /// engine has decoded.
    pub settled: Option<f64>,
    /// Live, under overload: speech left out untranscribed (start, end; seconds since the run
    /// start) because its text could no longer leave within `latency + lateness`.
    pub skipped: Vec<(f64, f64)>,
}

impl From<Vec<Segment>> for PolicyOutput {
    fn from(segments: Vec<Segment>) -> Self {
        Self {
            segments,
            ..Self::default()
        }
    }
}

/// Decides when the engine decodes.
pub trait DecodePolicy: Send {
    /// New audio (already placed on the timeline). `backlog`: more audio is already queued
    /// behind this buffer.
    fn push(
        &mut self,
        engine: &mut Transcriber,
        samples: &[f32],
        backlog: bool,
    ) -> Result<PolicyOutput, Error>;
    /// End of a run (EOS, discontinuity, segment change): decode everything. The engine is reset
    /// afterwards.
    fn drain(&mut self, engine: &mut Transcriber) -> Result<PolicyOutput, Error>;
    /// The `latency` or `lateness` property changed.
    fn set_latency(&mut self, _latency: Duration, _lateness: Duration) {}
    /// When the audio of the next push arrived (it may have waited in the element's queue).
    fn set_arrival(&mut self, _arrived: Instant) {}
    /// Seconds of audio received but not yet looked at by the engine.
    fn pending_seconds(&self, engine: &Transcriber) -> f64 {
        engine.pending_seconds()
    }
    /// A problem met while running, reported once (e.g. the VAD fell back to another detector).
    fn take_warning(&mut self) -> Option<String> {
        None
    }
    /// Recent decode time, seconds (live: how long text takes once audio is decoded).
    fn decode_seconds(&self) -> f64 {
        0.0
    }
    /// Name for logs.
    fn name(&self) -> &'static str;
}

/// Offline long-form decoding.
#[derive(Debug, Default)]
pub struct Offline;

impl DecodePolicy for Offline {
    fn push(
        &mut self,
        engine: &mut Transcriber,
        samples: &[f32],
        _backlog: bool,
    ) -> Result<PolicyOutput, Error> {
        engine.push(samples).map(Into::into)
    }

    fn drain(&mut self, engine: &mut Transcriber) -> Result<PolicyOutput, Error> {
        let out = engine.finish()?;
        Ok(out.into())
    }

    fn name(&self) -> &'static str {
        "offline"
    }
}

/// Live: [`LiveTranscriber`] behind a speech gate.
pub struct Streaming {
    live: LiveTranscriber,
}

impl Streaming {
    pub fn new(gate: Box<dyn SpeechGate>, latency: Duration, lateness: Duration) -> Self {
        Self {
            live: LiveTranscriber::new(gate, live_options(latency, lateness)),
        }
    }
}

fn live_options(latency: Duration, lateness: Duration) -> LiveOptions {
    LiveOptions {
        lateness: lateness.as_secs_f64(),
        ..LiveOptions::for_latency(latency.as_secs_f64())
    }
}

impl DecodePolicy for Streaming {
    fn push(
        &mut self,
        engine: &mut Transcriber,
        samples: &[f32],
        backlog: bool,
    ) -> Result<PolicyOutput, Error> {
        let out = self.live.push(engine, samples, backlog)?;
        Ok(PolicyOutput {
            segments: out.segments,
            partial: out.partial,
            settled: Some(out.settled),
            skipped: out.skipped,
        })
    }

    fn drain(&mut self, engine: &mut Transcriber) -> Result<PolicyOutput, Error> {
        let out = self.live.drain(engine)?;
        engine.reset();
        Ok(PolicyOutput {
            segments: out.segments,
            partial: None,
            settled: Some(out.settled),
            skipped: out.skipped,
        })
    }

    fn set_latency(&mut self, latency: Duration, lateness: Duration) {
        self.live.set_options(live_options(latency, lateness));
    }

    fn set_arrival(&mut self, arrived: Instant) {
        self.live.set_arrival(Some(arrived));
    }

    fn take_warning(&mut self) -> Option<String> {
        self.live.take_warning()
    }

    fn decode_seconds(&self) -> f64 {
        self.live.decode_seconds()
    }

    fn pending_seconds(&self, _engine: &Transcriber) -> f64 {
        // The live buffer is bounded; what can pile up is the element's queue.
        0.0
    }

    fn name(&self) -> &'static str {
        "streaming"
    }
}
