//! Offline VAD: only the speech of a file reaches the decoder (faster-whisper's `vad_filter`,
//! whisper.cpp's `--vad`), streaming.
//!
//! A [`SpeechFilter`] runs a frame-level [`Vad`] and a [`Segmenter`] over the stream as it is
//! pushed and passes on only the samples inside speech segments (each padded by `speech_pad_ms`),
//! joined without the stretches between them. It remembers where each passed piece came from, so
//! the engine's segment and word times are mapped back to stream time
//! ([`SpeechFilter::to_stream`]). It holds back only the samples whose fate the segmenter has not
//! settled yet ([`Segmenter::decided`]): the padding before possible speech, or the end of a
//! pause that may still close the segment.

use super::Segment;
use crate::vad::{self, Segmenter, SegmenterOptions, Vad, VadEvent, VadKind};

/// Settings of the offline VAD ([`super::TranscribeOptions::vad_filter`]). The defaults are
/// faster-whisper's `VadOptions` (a pause of 2000 ms splits the audio, 400 ms of padding; but
/// `min_speech_ms`, Silero's default).
#[derive(Debug, Clone, PartialEq)]
pub struct VadFilterOptions {
    /// How frame probabilities become stretches of speech.
    pub segments: SegmenterOptions,
    /// The detector: Silero (ONNX Runtime; the energy detector, with a warning, when it cannot
    /// be loaded) or the built-in energy detector.
    pub detector: VadKind,
}

impl Default for VadFilterOptions {
    fn default() -> Self {
        Self {
            segments: SegmenterOptions {
                min_silence_ms: 2000,
                speech_pad_ms: 400,
                ..SegmenterOptions::default()
            },
            detector: VadKind::Silero,
        }
    }
}

/// Streaming speech filter; see the module documentation.
pub struct SpeechFilter {
    options: VadFilterOptions,
    vad: Box<dyn Vad>,
    segmenter: Segmenter,
    probs: Vec<f32>,
    /// Stream samples from `next` on, neither passed on nor dropped yet.
    held: Vec<f32>,
    /// Stream index of `held[0]`.
    next: u64,
    /// Stream samples pushed.
    received: u64,
    /// Samples up to `next` belong to an open speech segment.
    speaking: bool,
    /// Passed-on pieces, `(engine sample, stream sample)` where each starts, in order.
    pieces: Vec<(u64, u64)>,
    /// Samples passed on.
    passed: u64,
    /// Detector problems (Silero unavailable), reported once.
    warning: Option<String>,
}

impl SpeechFilter {
    /// Opens the detector of `options` (a Silero failure falls back to the energy detector with
    /// a warning, [`take_warning`](Self::take_warning)).
    pub fn new(options: VadFilterOptions) -> Self {
        let (vad, warning) = vad::open(options.detector, None, None);
        Self::with_vad(vad, options, warning)
    }

    /// A filter on a detector the caller made.
    pub fn with_vad(vad: Box<dyn Vad>, options: VadFilterOptions, warning: Option<String>) -> Self {
        Self {
            segmenter: Segmenter::new(options.segments.clone()),
            options,
            vad,
            probs: Vec::new(),
            held: Vec::new(),
            next: 0,
            received: 0,
            speaking: false,
            pieces: Vec::new(),
            passed: 0,
            warning,
        }
    }

    pub fn options(&self) -> &VadFilterOptions {
        &self.options
    }

    /// `"silero"` or `"energy"`.
    pub fn detector(&self) -> &'static str {
        self.vad.name()
    }

    /// A detector problem, once.
    pub fn take_warning(&mut self) -> Option<String> {
        self.warning.take().or_else(|| self.vad.take_warning())
    }

    /// Stream samples pushed since the last reset.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Samples passed on to the engine since the last reset.
    pub fn passed(&self) -> u64 {
        self.passed
    }

    /// Stream samples settled as not speech and dropped since the last reset.
    pub fn dropped(&self) -> u64 {
        self.next - self.passed
    }

    /// Pushes stream samples; appends the speech among them that is settled to `out`.
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<f32>) {
        self.held.extend_from_slice(samples);
        self.received += samples.len() as u64;
        self.probs.clear();
        self.vad.push(samples, &mut self.probs);
        for event in self.segmenter.push(&self.probs) {
            self.apply(event, out);
        }
        self.advance_to(self.segmenter.decided(), out);
    }

    /// End of stream: appends the rest of the speech to `out` and drops the rest of the audio.
    pub fn finish(&mut self, out: &mut Vec<f32>) {
        let frames_end = self.segmenter.position();
        if let Some(event) = self.segmenter.flush() {
            // Speech up to the last whole VAD frame takes the samples after it too.
            let event = match event {
                VadEvent::End { sample } if sample >= frames_end => VadEvent::End {
                    sample: self.received,
                },
                other => other,
            };
            self.apply(event, out);
        }
        self.advance_to(self.received, out);
        self.speaking = false;
    }

    /// Forgets everything: the next sample starts a new stream.
    pub fn reset(&mut self) {
        self.vad.reset();
        self.segmenter.reset();
        self.held.clear();
        self.next = 0;
        self.received = 0;
        self.speaking = false;
        self.pieces.clear();
        self.passed = 0;
    }

    fn apply(&mut self, event: VadEvent, out: &mut Vec<f32>) {
        match event {
            VadEvent::Start { sample } => {
                self.advance_to(sample, out);
                self.speaking = true;
                let stream = self.next;
                if self
                    .pieces
                    .last()
                    .is_none_or(|&(e, s)| s + (self.passed - e) != stream)
                {
                    self.pieces.push((self.passed, stream));
                }
            }
            VadEvent::End { sample } => {
                self.advance_to(sample, out);
                self.speaking = false;
            }
        }
    }

    /// Passes on (while speaking) or drops the held samples before stream sample `to`.
    fn advance_to(&mut self, to: u64, out: &mut Vec<f32>) {
        let to = to.clamp(self.next, self.received);
        let n = (to - self.next) as usize;
        if n == 0 {
            return;
        }
        if self.speaking {
            out.extend_from_slice(&self.held[..n]);
            self.passed += n as u64;
        }
        self.held.drain(..n);
        self.next = to;
    }

    /// The stream time of engine time `seconds`. `end`: the time ends something (a segment or a
    /// word). The first `speech_pad_ms` of a piece is padding before its speech, so an end there
    /// belongs to the end of the previous piece; likewise a start in the last `speech_pad_ms` of a
    /// piece belongs to the start of the next one.
    pub fn to_stream(&self, seconds: f64, end: bool) -> f64 {
        self.locate(seconds, end).map_or(seconds, |(_, t)| t)
    }

    /// The passed-on piece engine time `seconds` belongs to (by the rule of
    /// [`to_stream`](Self::to_stream)); 0 before anything was passed on.
    pub fn piece_index(&self, seconds: f64, end: bool) -> usize {
        self.locate(seconds, end).map_or(0, |(i, _)| i)
    }

    /// The piece and the stream time of engine time `seconds`.
    fn locate(&self, seconds: f64, end: bool) -> Option<(usize, f64)> {
        let rate = f64::from(vad::VAD_SAMPLE_RATE);
        if self.pieces.is_empty() {
            return None;
        }
        let sample = seconds * rate;
        let pad = f64::from(self.options.segments.speech_pad_ms) * rate / 1000.0;
        let i = self
            .pieces
            .partition_point(|&(e, _)| e as f64 <= sample)
            .saturating_sub(1);
        let (e, s) = self.pieces[i];
        if end && i > 0 && sample - (e as f64) < pad {
            // The end of the previous piece.
            let (pe, ps) = self.pieces[i - 1];
            return Some((i - 1, (ps + (e - pe)) as f64 / rate));
        }
        if !end
            && let Some(&(ne, ns)) = self.pieces.get(i + 1)
            && (ne as f64) - sample < pad
        {
            return Some((i + 1, ns as f64 / rate));
        }
        Some((i, (s as f64 + sample - e as f64) / rate))
    }

    /// Whether a passed-on piece (after the first) starts in engine samples `[from, to)`.
    pub fn piece_starts_between(&self, from: u64, to: u64) -> bool {
        self.pieces
            .iter()
            .skip(1)
            .any(|&(e, _)| from <= e && e < to)
    }

    /// Maps a segment's times (and its words') from engine time to stream time.
    pub fn map_segment(&self, segment: &mut Segment) {
        segment.start = self.to_stream(segment.start, false);
        segment.end = self.to_stream(segment.end, true).max(segment.start);
        for w in &mut segment.words {
            w.start = self.to_stream(w.start, false);
            w.end = self.to_stream(w.end, true).max(w.start);
        }
    }

    /// Seconds of stream time up to which the engine has everything it will get, given that it
    /// has consumed `engine_samples` of what was passed on.
    pub fn settled_seconds(&self, engine_samples: u64) -> f64 {
        let rate = f64::from(vad::VAD_SAMPLE_RATE);
        if engine_samples >= self.passed {
            // Everything passed on is consumed: settled up to what the filter decided.
            return self.next as f64 / rate;
        }
        self.to_stream(engine_samples as f64 / rate, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vad::VAD_FRAME;

    /// A detector that calls a frame speech when its mean absolute value is above 0.1.
    struct Loud(Vec<f32>);

    impl Vad for Loud {
        fn push(&mut self, samples: &[f32], out: &mut Vec<f32>) {
            self.0.extend_from_slice(samples);
            let whole = self.0.len() / VAD_FRAME * VAD_FRAME;
            for frame in self.0[..whole].chunks(VAD_FRAME) {
                let mean = frame.iter().map(|x| x.abs()).sum::<f32>() / VAD_FRAME as f32;
                out.push(if mean > 0.1 { 0.9 } else { 0.0 });
            }
            self.0.drain(..whole);
        }
        fn reset(&mut self) {
            self.0.clear();
        }
        fn name(&self) -> &'static str {
            "loud"
        }
    }

    /// 16 kHz audio of `(loud, seconds)` stretches: 0.5 when loud, 0 otherwise.
    fn audio(spec: &[(bool, f64)]) -> Vec<f32> {
        let mut out = Vec::new();
        for &(loud, seconds) in spec {
            for _ in 0..(seconds * 16_000.0) as usize {
                out.push(if loud { 0.5 } else { 0.0 });
            }
        }
        out
    }

    fn filter() -> SpeechFilter {
        SpeechFilter::with_vad(
            Box::new(Loud(Vec::new())),
            VadFilterOptions {
                segments: SegmenterOptions {
                    min_silence_ms: 1000,
                    speech_pad_ms: 200,
                    ..SegmenterOptions::default()
                },
                ..VadFilterOptions::default()
            },
            None,
        )
    }

    #[test]
    fn passes_padded_speech_and_maps_times_back() {
        // 5 s quiet, 2 s speech, 10 s quiet, 3 s speech, 4 s quiet.
        let samples = audio(&[
            (false, 5.0),
            (true, 2.0),
            (false, 10.0),
            (true, 3.0),
            (false, 4.0),
        ]);
        for chunk in [333, 16_000, samples.len()] {
            let mut f = filter();
            let mut out = Vec::new();
            for c in samples.chunks(chunk) {
                f.push(c, &mut out);
                assert!(f.received() - f.next <= 3 * 16_000, "holds too much");
            }
            f.finish(&mut out);
            // Speech ± 0.2 s, at frame resolution (32 ms).
            let seconds = out.len() as f64 / 16_000.0;
            assert!((5.7..=6.0).contains(&seconds), "{seconds} s passed");
            assert_eq!(f.passed() + f.dropped(), samples.len() as u64);
            assert!(out.iter().filter(|&&x| x > 0.0).count() >= 5 * 16_000);
            // Engine time 1.0 s is inside the first piece, 3.0 s inside the second.
            let first = f.to_stream(1.0, false);
            assert!((5.7..6.1).contains(&first), "{first}");
            let second = f.to_stream(3.0, false);
            assert!((17.0..17.4).contains(&second), "{second}");
            // The boundary: the end of the first piece, or the start of the second; within the
            // padding of either side likewise.
            let boundary = f.pieces[1].0 as f64 / 16_000.0;
            for t in [boundary - 0.1, boundary, boundary + 0.1] {
                let as_end = f.to_stream(t, true);
                let as_start = f.to_stream(t, false);
                assert!((7.1..7.3).contains(&as_end), "{t}: {as_end}");
                assert!((16.7..16.9).contains(&as_start), "{t}: {as_start}");
            }
            assert_eq!(
                f.settled_seconds(f.passed()),
                samples.len() as f64 / 16_000.0
            );
        }
    }

    #[test]
    fn short_pauses_stay_in_and_silence_passes_nothing() {
        let mut f = filter();
        let mut out = Vec::new();
        f.push(&audio(&[(true, 1.0), (false, 0.5), (true, 1.0)]), &mut out);
        f.finish(&mut out);
        assert_eq!(f.pieces.len(), 1);
        assert!(out.len() as f64 / 16_000.0 >= 2.5);
        f.reset();
        out.clear();
        f.push(&audio(&[(false, 30.0)]), &mut out);
        f.finish(&mut out);
        assert!(out.is_empty());
        assert_eq!(f.dropped(), 30 * 16_000);
        // Nothing passed: times are the stream's.
        assert_eq!(f.to_stream(3.0, false), 3.0);
    }
}
