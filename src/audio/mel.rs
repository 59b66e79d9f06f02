//! Whisper log-mel front end, computed as openai/whisper `audio.py` does: periodic Hann window of
//! 400 samples, hop 160, STFT centred with reflect padding, 201 bins, last frame dropped, power,
//! Slaney mel filterbank (computed here in closed form, as librosa does), `log10(max(x, 1e-10))`,
//! clamp to `max - 8`, `(x + 4) / 4`.
//!
//! The STFT and the filterbank run in f64 (it costs little: 3000 frames per 30 s window) so the
//! result matches a float64 reference to ~1e-6.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use super::{HOP_LENGTH, N_FFT, N_FRAMES, SAMPLE_RATE};

/// Number of STFT bins kept.
const N_BINS: usize = N_FFT / 2 + 1;
/// Reflect padding on each side of the centred STFT.
const PAD: usize = N_FFT / 2;

/// A log-mel spectrogram, row-major `[n_mels][n_frames]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mel {
    pub n_mels: usize,
    pub n_frames: usize,
    pub data: Vec<f32>,
}

/// One triangular mel filter: weights for bins `first..first + weights.len()`.
struct Filter {
    first: usize,
    weights: Vec<f64>,
}

/// Mel filterbank, Hann window and FFT plan for one number of mel bins (80 or 128).
pub struct MelFrontend {
    pub n_mels: usize,
    filters: Vec<Filter>,
    window: Vec<f64>,
    fft: Arc<dyn Fft<f64>>,
}

/// Slaney mel scale (librosa `hz_to_mel(htk=False)`).
fn hz_to_mel(hz: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() / logstep
    } else {
        hz / f_sp
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        f_sp * mel
    }
}

/// Slaney-normalised triangular filters over the 201 FFT bins, dense `[n_mels][201]`: librosa's
/// `filters.mel(sr=16000, n_fft=400, n_mels, htk=False, norm="slaney")`, which openai ships as
/// `mel_filters.npz` (these match it to its f32 precision).
pub fn mel_filterbank(n_mels: usize) -> Vec<Vec<f64>> {
    let nyquist = SAMPLE_RATE as f64 / 2.0;
    let fft_freqs: Vec<f64> = (0..N_BINS)
        .map(|k| k as f64 * nyquist / (N_BINS - 1) as f64)
        .collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(nyquist));
    let points: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    (0..n_mels)
        .map(|i| {
            let (left, centre, right) = (points[i], points[i + 1], points[i + 2]);
            let norm = 2.0 / (right - left);
            fft_freqs
                .iter()
                .map(|&f| {
                    let rising = (f - left) / (centre - left);
                    let falling = (right - f) / (right - centre);
                    rising.min(falling).max(0.0) * norm
                })
                .collect()
        })
        .collect()
}

impl MelFrontend {
    /// Window, filterbank and FFT plan for `n_mels` bins (80, or 128 for large-v3 and turbo).
    pub fn new(n_mels: usize) -> Self {
        let filters = mel_filterbank(n_mels)
            .into_iter()
            .map(|row| {
                let first = row.iter().position(|&w| w > 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w > 0.0).map_or(first, |l| l + 1);
                Filter {
                    first,
                    weights: row[first..last.max(first)].to_vec(),
                }
            })
            .collect();
        // Periodic Hann window (torch.hann_window(400)).
        let window = (0..N_FFT)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos())
            .collect();
        let fft = FftPlanner::new().plan_fft_forward(N_FFT);
        Self {
            n_mels,
            filters,
            window,
            fft,
        }
    }

    fn scratch(&self) -> FrameScratch {
        FrameScratch {
            buf: vec![Complex::new(0.0, 0.0); N_FFT],
            fft: vec![Complex::new(0.0, 0.0); self.fft.get_inplace_scratch_len()],
            power: vec![0.0; N_BINS],
        }
    }

    /// Raw log10 mel values of one frame whose 400 windowed-input samples `sample(i)` gives.
    fn frame(&self, sample: impl Fn(usize) -> f32, s: &mut FrameScratch, out: &mut [f32]) {
        for (i, c) in s.buf.iter_mut().enumerate() {
            *c = Complex::new(sample(i) as f64 * self.window[i], 0.0);
        }
        self.fft.process_with_scratch(&mut s.buf, &mut s.fft);
        for (p, c) in s.power.iter_mut().zip(&s.buf) {
            *p = c.norm_sqr();
        }
        for (o, f) in out.iter_mut().zip(&self.filters) {
            let e: f64 = f
                .weights
                .iter()
                .zip(&s.power[f.first..])
                .map(|(w, p)| w * p)
                .sum();
            *o = e.max(1e-10).log10() as f32;
        }
    }

    /// Exactly openai's `log_mel_spectrogram(audio, n_mels, padding)`: `padding` zeros are
    /// appended before the STFT; the result has `(len + padding) / 160` frames, normalised
    /// (clamped to `max − 8`, then `(x + 4) / 4`).
    ///
    /// For inputs (with padding) shorter than 201 samples, where torch's reflect padding fails,
    /// reflected indices are clamped into the input; no input panics.
    pub fn log_mel_spectrogram(&self, samples: &[f32], padding: usize) -> Mel {
        let mut mel = self.log10_mel_spectrogram(samples, padding);
        let max = mel.data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for v in &mut mel.data {
            *v = (v.max(max - 8.0) + 4.0) / 4.0;
        }
        mel
    }

    /// [`log_mel_spectrogram`](Self::log_mel_spectrogram) before normalisation: the raw
    /// `log10(max(mel, 1e-10))` values, `[n_mels][n_frames]`. These are the values
    /// [`MelStream::raw_frame`] holds.
    pub fn log10_mel_spectrogram(&self, samples: &[f32], padding: usize) -> Mel {
        let n = samples.len() + padding;
        let n_frames = n / HOP_LENGTH;
        let get = |i: usize| samples.get(i).copied().unwrap_or(0.0);
        // Index into the reflect-padded signal of length n + 2 * PAD.
        let padded = |j: usize| -> f32 {
            if j < PAD {
                get((PAD - j).min(n.saturating_sub(1)))
            } else if j < PAD + n {
                get(j - PAD)
            } else {
                let k = j - PAD - n; // 0.. beyond the end: x[n - 2 - k]
                get((n as isize - 2 - k as isize).max(0) as usize)
            }
        };
        let mut s = self.scratch();
        let mut frame = vec![0.0f32; self.n_mels];
        let mut raw = vec![0.0f32; self.n_mels * n_frames];
        for t in 0..n_frames {
            self.frame(|i| padded(t * HOP_LENGTH + i), &mut s, &mut frame);
            for (m, v) in frame.iter().enumerate() {
                raw[m * n_frames + t] = *v;
            }
        }
        Mel {
            n_mels: self.n_mels,
            n_frames,
            data: raw,
        }
    }
}

struct FrameScratch {
    buf: Vec<Complex<f64>>,
    fft: Vec<Complex<f64>>,
    power: Vec<f64>,
}

/// Incremental log-mel: samples in, raw log10 mel frames out, normalised per window.
///
/// Whatever the chunk sizes, the raw frames are bit-identical to
/// [`MelFrontend::log10_mel_spectrogram`] over the whole stream followed by 30 s of zeros
/// (openai's `padding=N_SAMPLES`): frame `t` is computed once its window
/// `[160 t − 200, 160 t + 200)` has arrived (reflect padding at the stream start), and at
/// [`finish`](Self::finish) the stream continues with zeros. Frames are indexed from the start of
/// the stream; [`trim_before`](Self::trim_before) frees what is no longer needed.
pub struct MelStream {
    frontend: Arc<MelFrontend>,
    /// Samples from absolute index `sample_base` on.
    samples: Vec<f32>,
    sample_base: usize,
    pushed: u64,
    finished: bool,
    /// Raw log10 frames `[frame][n_mels]` from absolute frame `frame_base` on.
    frames: Vec<f32>,
    /// Per-frame maximum of `frames`.
    frame_max: Vec<f32>,
    frame_base: usize,
    /// Maximum of the frames trimmed away.
    trimmed_max: f32,
    scratch: FrameScratch,
    frame_buf: Vec<f32>,
}

impl MelStream {
    /// An empty stream sharing `frontend`'s filterbank and FFT plan.
    pub fn new(frontend: Arc<MelFrontend>) -> Self {
        let scratch = frontend.scratch();
        let frame_buf = vec![0.0; frontend.n_mels];
        Self {
            frontend,
            samples: Vec::new(),
            sample_base: 0,
            pushed: 0,
            finished: false,
            frames: Vec::new(),
            frame_max: Vec::new(),
            frame_base: 0,
            trimmed_max: f32::NEG_INFINITY,
            scratch,
            frame_buf,
        }
    }

    /// Mel bins per frame.
    pub fn n_mels(&self) -> usize {
        self.frontend.n_mels
    }

    /// Appends audio (any chunk size, empty included) and computes the raw log10 mel values of
    /// every frame `t` whose STFT window `[160 t − 200, 160 t + 200)` has fully arrived. Frame 0
    /// reflects samples `1..=200` into its left half (torch's `center=True`), so it waits for 201
    /// samples; frame `t ≥ 1` is ready once `160 t + 200` samples have been pushed. The frames are
    /// bit-identical to [`MelFrontend::log10_mel_spectrogram`] of the whole stream. Samples
    /// pushed after [`finish`](Self::finish) are ignored until [`reset`](Self::reset).
    ///
    /// Computing a frame allocates nothing: scratch buffers are preallocated, and the frame store
    /// grows amortised.
    pub fn push(&mut self, samples: &[f32]) {
        if self.finished {
            return;
        }
        self.samples.extend_from_slice(samples);
        self.pushed += samples.len() as u64;
        let pushed = self.pushed as usize;
        let ready = if pushed > PAD {
            (pushed - PAD) / HOP_LENGTH + 1
        } else {
            0
        };
        self.compute_until(ready);
    }

    /// End of stream: the audio is taken to continue with zeros — exactly openai's
    /// `log_mel_spectrogram(audio, padding=N_SAMPLES)` — and frames are computed up to
    /// `content_frames() + 3000`, so that any 30 s window may extend past the content. After
    /// this the stream ignores [`push`](Self::push) until [`reset`](Self::reset). Idempotent.
    pub fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.compute_until(self.content_frames() + N_FRAMES);
        }
    }

    fn compute_until(&mut self, end: usize) {
        let n_mels = self.frontend.n_mels;
        let pushed = self.pushed as usize;
        let more = end.saturating_sub(self.frames_available());
        self.frames.reserve(more * n_mels);
        self.frame_max.reserve(more);
        while self.frames_available() < end {
            let t = self.frames_available();
            let (samples, base) = (&self.samples, self.sample_base);
            let sample = |i: usize| -> f32 {
                // Absolute index in the unpadded stream; reflect at the start, zeros past the end.
                let j = (t * HOP_LENGTH + i) as isize - PAD as isize;
                let j = j.unsigned_abs();
                if j >= pushed {
                    return 0.0;
                }
                samples.get(j.wrapping_sub(base)).copied().unwrap_or(0.0)
            };
            self.frontend
                .frame(sample, &mut self.scratch, &mut self.frame_buf);
            self.frames.extend_from_slice(&self.frame_buf);
            let max = self
                .frame_buf
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            self.frame_max.push(max);
            debug_assert_eq!(self.frames.len(), self.frame_max.len() * n_mels);
        }
    }

    /// Frames that carry content: samples pushed / 160, integer division (openai's
    /// `content_frames`). Before [`finish`](Self::finish) the last one or two of them may not be
    /// computed yet (see [`frames_available`](Self::frames_available)).
    pub fn content_frames(&self) -> usize {
        self.pushed as usize / HOP_LENGTH
    }

    /// One past the last computed frame. Frames are indexed from the start of the stream, not
    /// from the trim point.
    pub fn frames_available(&self) -> usize {
        self.frame_base + self.frame_max.len()
    }

    /// Total samples pushed since the start (or the last [`reset`](Self::reset)).
    pub fn samples_pushed(&self) -> u64 {
        self.pushed
    }

    /// Whether [`finish`](Self::finish) has been called since the last reset.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// First frame still held (everything before it was trimmed).
    pub fn first_frame(&self) -> usize {
        self.frame_base
    }

    /// Raw `log10(max(mel, 1e-10))` values of frame `frame` (absolute index), one per mel bin,
    /// before any normalisation; `None` when it was trimmed or is not computed yet.
    pub fn raw_frame(&self, frame: usize) -> Option<&[f32]> {
        let n_mels = self.frontend.n_mels;
        let i = frame.checked_sub(self.frame_base)?;
        self.frames.get(i * n_mels..(i + 1) * n_mels)
    }

    /// Frees frames before `frame` and the samples no later frame needs; later calls may only
    /// ask for frames `>= frame`. Their maximum is remembered, so [`window`](Self::window) and
    /// [`prefix_max`](Self::prefix_max) still see it. Frames not computed yet are never freed
    /// (the trim point is capped at [`frames_available`](Self::frames_available)), and the sample
    /// context of every frame still to be computed is kept.
    pub fn trim_before(&mut self, frame: usize) {
        let n_mels = self.frontend.n_mels;
        let frame = frame.min(self.frames_available());
        if frame > self.frame_base {
            let drop = frame - self.frame_base;
            let dropped_max = self.frame_max[..drop]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            self.trimmed_max = self.trimmed_max.max(dropped_max);
            self.frame_max.drain(..drop);
            self.frames.drain(..drop * n_mels);
            self.frame_base = frame;
        }
        // The next frame to compute reads from 160 t − 200; frames 0 and 1 also read the
        // reflected samples 1..=200, so keep everything until frame 2 is computed.
        let next = self.frames_available();
        let keep_from = if next < 2 {
            0
        } else {
            (next * HOP_LENGTH).saturating_sub(PAD)
        };
        if keep_from > self.sample_base {
            let drop = (keep_from - self.sample_base).min(self.samples.len());
            self.samples.drain(..drop);
            self.sample_base += drop;
        }
    }

    /// Maximum raw log10 value over frames `[0, end)` (trimmed frames included). `end` is capped
    /// at [`frames_available`](Self::frames_available); `-inf` for an empty prefix.
    pub fn prefix_max(&self, end: usize) -> f32 {
        let end = end.clamp(self.frame_base, self.frames_available());
        self.frame_max[..end - self.frame_base]
            .iter()
            .copied()
            .fold(self.trimmed_max, f32::max)
    }

    /// Fills `out` (`[n_mels][3000]`, row-major) with frames `start..start + n_content`
    /// (`n_content ≤ 3000`) normalised as openai does — clamp at `M − 8`, then `(x + 4) / 4`,
    /// where `M` is the maximum raw value over frames `[0, start + n_content)`, a prefix maximum
    /// that survives trimming — and `pad` in columns `n_content..3000`. openai's `pad_or_trim`
    /// pads the normalised mel with `pad = 0.0`; [`silence_value`](Self::silence_value) gives the
    /// value digital silence would have instead.
    ///
    /// Asking for frames that are trimmed or not computed yet is a programming error: it fails
    /// a debug assertion, and in release builds those columns get `pad`.
    pub fn window(&self, start: usize, n_content: usize, pad: f32, out: &mut [f32]) {
        let n_mels = self.frontend.n_mels;
        debug_assert_eq!(out.len(), n_mels * N_FRAMES);
        let n_content = n_content.min(N_FRAMES);
        debug_assert!(
            start >= self.frame_base && start + n_content <= self.frames_available(),
            "window {start}+{n_content} outside the held frames {}..{}",
            self.frame_base,
            self.frames_available()
        );
        let floor = self.prefix_max(start + n_content) - 8.0;
        // Columns of the window backed by held frames; the rest (only on misuse) is padding.
        let held_from = self.frame_base.saturating_sub(start).min(n_content);
        let held_to = (self.frames_available().saturating_sub(start)).clamp(held_from, n_content);
        for (m, row) in out.chunks_exact_mut(N_FRAMES).take(n_mels).enumerate() {
            row[..held_from].fill(pad);
            for (j, v) in row[held_from..held_to].iter_mut().enumerate() {
                let frame = start + held_from + j - self.frame_base;
                *v = (self.frames[frame * n_mels + m].max(floor) + 4.0) / 4.0;
            }
            row[held_to..].fill(pad);
        }
    }

    /// Normalised value of digital silence (raw `log10(1e-10) = −10`) in a window ending at frame
    /// `end`: an alternative to openai's zero padding for [`window`](Self::window).
    pub fn silence_value(&self, end: usize) -> f32 {
        let floor = self.prefix_max(end) - 8.0;
        ((-10.0f32).max(floor) + 4.0) / 4.0
    }

    /// Back to an empty stream (keeps the allocations).
    pub fn reset(&mut self) {
        self.samples.clear();
        self.sample_base = 0;
        self.pushed = 0;
        self.finished = false;
        self.frames.clear();
        self.frame_max.clear();
        self.frame_base = 0;
        self.trimmed_max = f32::NEG_INFINITY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_triangles_in_order() {
        let bank = mel_filterbank(80);
        let mut last_peak = 0;
        for (i, row) in bank.iter().enumerate() {
            assert!(row.iter().all(|&w| w >= 0.0));
            let peak = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|p| p.0)
                .unwrap();
            assert!(
                i == 0 || peak >= last_peak,
                "filter {i} peaks at {peak} before {last_peak}"
            );
            last_peak = peak;
        }
        assert_eq!(mel_filterbank(128).len(), 128);
    }

    #[test]
    fn stream_frames_equal_one_shot() {
        let fe = Arc::new(MelFrontend::new(80));
        let audio: Vec<f32> = (0..40_000)
            .map(|i| ((i as f32) * 0.01).sin() * 0.3 + ((i * 7919) % 13) as f32 * 0.01)
            .collect();
        let one_shot = fe.log_mel_spectrogram(&audio, 2 * 160);
        let mut s = MelStream::new(fe.clone());
        let mut at = 0;
        for (k, size) in [1usize, 7, 160, 4000, 333, 12_000]
            .iter()
            .cycle()
            .enumerate()
        {
            if at >= audio.len() {
                break;
            }
            let end = (at + size).min(audio.len());
            s.push(&audio[at..end]);
            at = end;
            if k % 3 == 2 {
                s.trim_before(s.frames_available().saturating_sub(10));
            }
        }
        s.finish();
        // Compare the raw values of the frames still held with the one-shot's (same global max
        // since padding frames are quieter).
        let start = s.frame_base;
        let n = one_shot.n_frames - 2;
        let m_max = s.prefix_max(s.frames_available());
        for t in start..n {
            for m in 0..80 {
                let raw = s.frames[(t - start) * 80 + m];
                let norm = (raw.max(m_max - 8.0) + 4.0) / 4.0;
                let reference = one_shot.data[m * one_shot.n_frames + t];
                assert!(
                    (norm - reference).abs() < 1e-6,
                    "frame {t} bin {m}: {norm} vs {reference}"
                );
            }
        }
    }
}
