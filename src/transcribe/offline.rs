//! The long-form seek loop (openai/whisper `transcribe()`), fed incrementally.

use std::sync::Arc;

use super::{Segment, TranscribeOptions};
use crate::error::Error;
use crate::model::WhisperModel;

/// Incremental transcriber. Push 16 kHz mono f32 samples; every complete 30 s window is decoded as
/// it becomes available; `flush_available` decodes what is buffered now (live chunking) and
/// `finish` drains at end of stream. Segment times count from the first sample pushed since
/// creation or the last `reset`.
pub struct Transcriber {
    _model: Arc<WhisperModel>,
    _opts: TranscribeOptions,
}

impl Transcriber {
    pub fn new(model: Arc<WhisperModel>, opts: TranscribeOptions) -> Result<Self, Error> {
        opts.validate()?;
        Ok(Self { _model: model, _opts: opts })
    }

    /// The model this transcriber runs.
    pub fn model(&self) -> &Arc<WhisperModel> {
        &self._model
    }

    /// Replaces the options; they apply from the next window on.
    pub fn set_options(&mut self, opts: TranscribeOptions) -> Result<(), Error> {
        opts.validate()?;
        self._opts = opts;
        Ok(())
    }

    /// Appends samples and decodes every complete window. Returns the new segments.
    pub fn push(&mut self, _samples: &[f32]) -> Result<Vec<Segment>, Error> {
        todo!()
    }

    /// Decodes all audio buffered so far (as if it ended here) but keeps the stream open and the
    /// text context: for live chunking.
    pub fn flush_available(&mut self) -> Result<Vec<Segment>, Error> {
        todo!()
    }

    /// End of stream: decodes everything left. The transcriber is then reset.
    pub fn finish(&mut self) -> Result<Vec<Segment>, Error> {
        todo!()
    }

    /// Forgets audio, text context and detected language.
    pub fn reset(&mut self) {
        todo!()
    }

    /// Samples pushed since creation or reset.
    pub fn samples_received(&self) -> u64 {
        todo!()
    }

    /// Seconds of audio pushed but not yet decoded.
    pub fn pending_seconds(&self) -> f64 {
        todo!()
    }

    /// Language detected (or fixed by the options), once known.
    pub fn language(&self) -> Option<&str> {
        todo!()
    }
}
