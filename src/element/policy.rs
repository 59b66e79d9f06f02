//! When the element asks the engine to decode: the pluggable part between incoming audio and
//! segments.
//!
//! * [`Offline`]: every complete 30 s window is decoded as it fills; the tail at drain. This is
//!   openai's long-form algorithm and gives the same text as `examples/transcribe`.
//! * [`Chunked`] (live): additionally decodes whatever is buffered once `chunk` seconds are
//!   pending, with `chunk = latency − headroom`, where the headroom is the larger of 30 % of the
//!   latency and 1.5 × the last decode's wall time, capped at 70 % of the latency. Text of a chunk
//!   is final; context carries over to the next chunk.
//!
//! A later policy (VAD gating + agreement of successive hypotheses) implements the same trait.

use std::time::{Duration, Instant};

use crate::error::Error;
use crate::transcribe::{Segment, Transcriber};

/// Decides when the engine decodes.
pub trait DecodePolicy: Send {
    /// New audio (already placed on the timeline). Returns the segments now final.
    fn push(&mut self, engine: &mut Transcriber, samples: &[f32]) -> Result<Vec<Segment>, Error>;
    /// End of a run (EOS, discontinuity, segment change): decode everything. The engine is reset
    /// afterwards.
    fn drain(&mut self, engine: &mut Transcriber) -> Result<Vec<Segment>, Error>;
    /// The `latency` property changed.
    fn set_latency(&mut self, _latency: Duration) {}
    /// Name for logs.
    fn name(&self) -> &'static str;
}

/// Offline long-form decoding.
#[derive(Debug, Default)]
pub struct Offline;

impl DecodePolicy for Offline {
    fn push(&mut self, engine: &mut Transcriber, samples: &[f32]) -> Result<Vec<Segment>, Error> {
        engine.push(samples)
    }

    fn drain(&mut self, engine: &mut Transcriber) -> Result<Vec<Segment>, Error> {
        engine.finish()
    }

    fn name(&self) -> &'static str {
        "offline"
    }
}

/// Live chunking: decode every `latency − headroom` of audio.
#[derive(Debug)]
pub struct Chunked {
    latency: Duration,
    last_decode: Duration,
}

/// Shortest chunk: Whisper needs some context to say anything useful.
const MIN_CHUNK: Duration = Duration::from_millis(500);

impl Chunked {
    pub fn new(latency: Duration) -> Self {
        Self {
            latency,
            last_decode: Duration::ZERO,
        }
    }

    /// Audio to collect before decoding.
    pub fn chunk(&self) -> Duration {
        let min_headroom = self.latency.mul_f64(0.3);
        let max_headroom = self.latency.mul_f64(0.7);
        let headroom = self
            .last_decode
            .mul_f64(1.5)
            .clamp(min_headroom, max_headroom);
        self.latency.saturating_sub(headroom).max(MIN_CHUNK)
    }
}

impl DecodePolicy for Chunked {
    fn push(&mut self, engine: &mut Transcriber, samples: &[f32]) -> Result<Vec<Segment>, Error> {
        let mut out = engine.push(samples)?;
        if engine.pending_seconds() >= self.chunk().as_secs_f64() {
            let t0 = Instant::now();
            out.extend(engine.flush_available()?);
            self.last_decode = t0.elapsed();
        }
        Ok(out)
    }

    fn drain(&mut self, engine: &mut Transcriber) -> Result<Vec<Segment>, Error> {
        engine.finish()
    }

    fn set_latency(&mut self, latency: Duration) {
        self.latency = latency;
    }

    fn name(&self) -> &'static str {
        "chunked"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keeps_headroom() {
        let mut p = Chunked::new(Duration::from_secs(5));
        assert_eq!(p.chunk(), Duration::from_millis(3500));
        p.last_decode = Duration::from_secs(2);
        assert_eq!(p.chunk(), Duration::from_secs(2));
        p.last_decode = Duration::from_secs(10);
        assert_eq!(p.chunk(), Duration::from_millis(1500));
        p.set_latency(Duration::from_millis(200));
        assert_eq!(p.chunk(), MIN_CHUNK);
    }
}
