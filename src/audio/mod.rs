//! Audio front end: log-mel features (and, later, buffering and VAD).

pub mod mel;

/// Whisper's sample rate.
pub const SAMPLE_RATE: usize = 16_000;
/// STFT size.
pub const N_FFT: usize = 400;
/// STFT hop: one mel frame every 10 ms.
pub const HOP_LENGTH: usize = 160;
/// Samples in one 30 s window.
pub const CHUNK_SAMPLES: usize = 30 * SAMPLE_RATE;
/// Mel frames in one 30 s window.
pub const N_FRAMES: usize = CHUNK_SAMPLES / HOP_LENGTH;
/// Seconds per mel frame.
pub const FRAME_SECONDS: f64 = HOP_LENGTH as f64 / SAMPLE_RATE as f64;
