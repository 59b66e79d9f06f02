//! Whisper log-mel front end (openai/whisper `audio.py`). (Interface fixed; implementation in progress.)

/// A log-mel spectrogram, row-major `[n_mels][n_frames]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mel {
    pub n_mels: usize,
    pub n_frames: usize,
    pub data: Vec<f32>,
}

/// Mel filterbank, Hann window and FFT plan for one number of mel bins (80 or 128).
pub struct MelFrontend {
    pub n_mels: usize,
}

impl MelFrontend {
    pub fn new(_n_mels: usize) -> Self {
        todo!()
    }
    /// Exactly openai's `log_mel_spectrogram(audio, n_mels, padding)`.
    pub fn log_mel_spectrogram(&self, _samples: &[f32], _padding: usize) -> Mel {
        todo!()
    }
}

/// Incremental log-mel: samples in, log10 mel frames out (see docs on each method).
pub struct MelStream {}

impl MelStream {
    pub fn new(_frontend: std::sync::Arc<MelFrontend>) -> Self {
        todo!()
    }
    pub fn push(&mut self, _samples: &[f32]) {
        todo!()
    }
    pub fn finish(&mut self) {
        todo!()
    }
    pub fn content_frames(&self) -> usize {
        todo!()
    }
    pub fn frames_available(&self) -> usize {
        todo!()
    }
    pub fn trim_before(&mut self, _frame: usize) {
        todo!()
    }
    pub fn window(&self, _start: usize, _n_content: usize, _out: &mut [f32]) {
        todo!()
    }
    pub fn reset(&mut self) {
        todo!()
    }
}
