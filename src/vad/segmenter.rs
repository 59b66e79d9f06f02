//! Speech segments from frame probabilities, streaming.
//!
//! The rules are those of Silero's `get_speech_timestamps` (silero-vad `utils_vad.py`), applied as
//! the frames arrive:
//! - speech starts at the first frame with probability >= `threshold`;
//! - it ends at the first frame of a run of frames below `neg_threshold` (default
//!   `threshold - 0.15`) lasting at least `min_silence_ms`; frames between the two thresholds
//!   neither start nor end anything, and a frame >= `threshold` cancels a silence run;
//! - segments not longer than `min_speech_ms` are dropped;
//! - `speech_pad_ms` is added on both sides (never before sample 0, never before the previous
//!   segment's end).
//!
//! Streaming needs two differences from the offline function: [`VadEvent::Start`] is only emitted
//! once the segment is known to be longer than `min_speech_ms` (it then carries the sample where
//! speech began, already in the past), and [`Segmenter::flush`] ends an open segment at the end of
//! its last speech (plus padding) when a silence run was under way, at the end of the stream
//! otherwise. With `min_silence_ms >= 2 * speech_pad_ms` (the defaults) the offline function's
//! halving of short gaps between padded segments never applies.

use super::VAD_FRAME;

/// Samples per millisecond at 16 kHz.
const SAMPLES_PER_MS: u64 = 16;

/// Hysteresis and duration rules. Times in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmenterOptions {
    /// Probability at or above which a frame is speech (default 0.5).
    pub threshold: f32,
    /// Probability below which a frame counts towards the end of speech; `None` means
    /// `threshold - 0.15` (at least 0.01), as in Silero.
    pub neg_threshold: Option<f32>,
    /// Segments this long or shorter are dropped (default 250).
    pub min_speech_ms: u32,
    /// Silence needed to end a segment (default 500).
    pub min_silence_ms: u32,
    /// Padding added before and after each segment (default 100).
    pub speech_pad_ms: u32,
}

impl Default for SegmenterOptions {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            neg_threshold: None,
            min_speech_ms: 250,
            min_silence_ms: 500,
            speech_pad_ms: 100,
        }
    }
}

impl SegmenterOptions {
    /// The effective end-of-speech threshold.
    pub fn neg_threshold(&self) -> f32 {
        self.neg_threshold
            .unwrap_or((self.threshold - 0.15).max(0.01))
    }
}

/// A segment boundary, as a sample index (16 kHz) counted from the last reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    Start { sample: u64 },
    End { sample: u64 },
}

impl VadEvent {
    pub fn sample(&self) -> u64 {
        match *self {
            VadEvent::Start { sample } | VadEvent::End { sample } => sample,
        }
    }
}

/// Streaming speech segmenter; feed it one probability per [`VAD_FRAME`] samples.
#[derive(Debug, Clone)]
pub struct Segmenter {
    options: SegmenterOptions,
    neg_threshold: f32,
    min_speech: u64,
    min_silence: u64,
    pad: u64,
    /// Frames seen since the last reset.
    frames: u64,
    /// Sample where the current speech began (unpadded), while triggered.
    speech_start: Option<u64>,
    /// Whether `Start` was emitted for the current speech.
    confirmed: bool,
    /// First sample of the current run of silent frames, while triggered.
    silence_start: Option<u64>,
    /// End (padded) of the last emitted segment: the next start may not precede it.
    last_end: u64,
}

impl Segmenter {
    pub fn new(options: SegmenterOptions) -> Self {
        let ms = |v: u32| u64::from(v) * SAMPLES_PER_MS;
        Self {
            neg_threshold: options.neg_threshold(),
            min_speech: ms(options.min_speech_ms),
            min_silence: ms(options.min_silence_ms),
            pad: ms(options.speech_pad_ms),
            options,
            frames: 0,
            speech_start: None,
            confirmed: false,
            silence_start: None,
            last_end: 0,
        }
    }

    pub fn options(&self) -> &SegmenterOptions {
        &self.options
    }

    /// Samples covered by the frames seen since the last reset.
    pub fn position(&self) -> u64 {
        self.frames * VAD_FRAME as u64
    }

    /// True between an emitted `Start` and its `End`.
    pub fn in_speech(&self) -> bool {
        self.confirmed
    }

    /// Samples before this index are settled by the events emitted so far: each lies inside a
    /// segment whose `Start` was emitted (still open while [`in_speech`](Self::in_speech)), or
    /// outside every segment for good. A later `Start` or `End` never falls before it.
    pub fn decided(&self) -> u64 {
        let position = self.position();
        let at = match (self.speech_start, self.confirmed) {
            // New speech starts at a frame not seen yet; its padding reaches back `pad`.
            (None, _) => position.saturating_sub(self.pad).max(self.last_end),
            // This speech may still be confirmed: its padded start is not settled.
            (Some(start), false) => start.saturating_sub(self.pad).max(self.last_end),
            // Speech at least until a pending silence (plus padding) would end it.
            (Some(_), true) => self.silence_start.map_or(position, |s| s + self.pad),
        };
        at.min(position)
    }

    /// Processes one probability per frame, in order; returns the boundaries they settle.
    pub fn push(&mut self, probs: &[f32]) -> Vec<VadEvent> {
        let mut events = Vec::new();
        for &p in probs {
            self.step(p, &mut events);
        }
        events
    }

    fn step(&mut self, p: f32, events: &mut Vec<VadEvent>) {
        let frame_start = self.position();
        self.frames += 1;
        let frame_end = self.position();
        let threshold = self.options.threshold;

        let Some(start) = self.speech_start else {
            if p >= threshold {
                self.speech_start = Some(frame_start);
                self.confirmed = false;
                self.silence_start = None;
                self.confirm(frame_end, events);
            }
            return;
        };
        if p >= threshold {
            self.silence_start = None;
        } else if p < self.neg_threshold {
            let silence = *self.silence_start.get_or_insert(frame_start);
            // Silero ends speech once the silence, counted from its first frame to the start of
            // the current one, reaches the minimum.
            if frame_start - silence >= self.min_silence {
                if self.confirmed {
                    self.close(silence, frame_end, events);
                }
                self.speech_start = None;
                self.silence_start = None;
                self.confirmed = false;
                return;
            }
        }
        if !self.confirmed {
            // The end will be no earlier than the pending silence or, without one, this frame's end.
            let earliest_end = self.silence_start.unwrap_or(frame_end);
            if earliest_end - start > self.min_speech {
                self.confirm(frame_end, events);
            }
        }
    }

    /// Emits `Start` if the current speech is long enough already.
    fn confirm(&mut self, frame_end: u64, events: &mut Vec<VadEvent>) {
        let Some(start) = self.speech_start else {
            return;
        };
        if self.confirmed || frame_end - start <= self.min_speech {
            return;
        }
        self.confirmed = true;
        let sample = start.saturating_sub(self.pad).max(self.last_end);
        events.push(VadEvent::Start { sample });
    }

    /// Emits `End` for speech whose last speech frame ended at `speech_end`; `limit` is the
    /// furthest sample seen.
    fn close(&mut self, speech_end: u64, limit: u64, events: &mut Vec<VadEvent>) {
        let sample = (speech_end + self.pad).min(limit);
        self.last_end = sample;
        events.push(VadEvent::End { sample });
    }

    /// End of stream: closes an open segment (see the module documentation). Speech not yet
    /// longer than `min_speech_ms` is dropped.
    pub fn flush(&mut self) -> Option<VadEvent> {
        let confirmed = self.confirmed;
        let silence = self.silence_start.take();
        self.speech_start = None;
        self.confirmed = false;
        if !confirmed {
            return None;
        }
        let end = self.position();
        let sample = match silence {
            Some(s) => (s + self.pad).min(end),
            None => end,
        };
        self.last_end = sample;
        Some(VadEvent::End { sample })
    }

    /// Forgets everything; sample indices restart at 0.
    pub fn reset(&mut self) {
        *self = Self::new(self.options.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: u64 = VAD_FRAME as u64;

    /// `decided` only moves forward and no event falls before it.
    #[test]
    fn decided_never_passes_a_later_event() {
        let probs = frames(&[
            (0.0, 20),
            (0.9, 4),
            (0.0, 3),
            (0.9, 30),
            (0.4, 5),
            (0.0, 40),
            (0.9, 3),
            (0.0, 60),
            (0.9, 50),
        ]);
        let mut s = Segmenter::new(SegmenterOptions::default());
        let mut decided = 0;
        for p in &probs {
            for e in s.push(&[*p]) {
                assert!(e.sample() >= decided, "{e:?} before {decided}");
            }
            let d = s.decided();
            assert!(d >= decided && d <= s.position());
            decided = d;
        }
        if let Some(e) = s.flush() {
            assert!(e.sample() >= decided, "{e:?} before {decided}");
        }
    }

    fn run(probs: &[f32], options: SegmenterOptions) -> Vec<VadEvent> {
        let mut s = Segmenter::new(options);
        let mut events = s.push(probs);
        events.extend(s.flush());
        events
    }

    fn frames(spec: &[(f32, usize)]) -> Vec<f32> {
        spec.iter()
            .flat_map(|&(p, n)| std::iter::repeat_n(p, n))
            .collect()
    }

    #[test]
    fn one_segment_with_padding() {
        // 10 silent frames, 20 speech frames, 40 silent frames (1.28 s > 500 ms).
        let probs = frames(&[(0.0, 10), (0.9, 20), (0.0, 40)]);
        let events = run(&probs, SegmenterOptions::default());
        assert_eq!(
            events,
            vec![
                VadEvent::Start {
                    sample: 10 * F - 1600
                },
                VadEvent::End {
                    sample: 30 * F + 1600
                },
            ]
        );
    }

    #[test]
    fn short_blips_are_dropped() {
        // 7 frames = 224 ms <= 250 ms.
        let probs = frames(&[(0.0, 5), (0.9, 7), (0.0, 40)]);
        assert!(run(&probs, SegmenterOptions::default()).is_empty());
        // 8 frames = 256 ms > 250 ms.
        let probs = frames(&[(0.0, 5), (0.9, 8), (0.0, 40)]);
        assert_eq!(run(&probs, SegmenterOptions::default()).len(), 2);
    }

    #[test]
    fn start_is_emitted_once_min_speech_has_passed() {
        let mut s = Segmenter::new(SegmenterOptions::default());
        // 7 frames = 224 ms: not yet; the 8th makes it 256 ms > 250 ms.
        assert!(s.push(&frames(&[(0.9, 7)])).is_empty());
        assert!(!s.in_speech());
        assert_eq!(s.push(&[0.9]), vec![VadEvent::Start { sample: 0 }]);
        assert!(s.in_speech());
    }

    #[test]
    fn hysteresis_between_thresholds_keeps_speech() {
        // Frames at 0.4 (between 0.35 and 0.5) do not end the segment.
        let probs = frames(&[(0.9, 10), (0.4, 30), (0.9, 10), (0.0, 40)]);
        let events = run(&probs, SegmenterOptions::default());
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1],
            VadEvent::End {
                sample: 50 * F + 1600
            }
        );
    }

    #[test]
    fn short_gaps_are_bridged_long_gaps_split() {
        // 15 frames = 480 ms < 500 ms: one segment.
        let probs = frames(&[(0.9, 10), (0.1, 15), (0.9, 10), (0.0, 40)]);
        assert_eq!(run(&probs, SegmenterOptions::default()).len(), 2);
        // 17 frames = 544 ms: two segments.
        let probs = frames(&[(0.9, 10), (0.1, 17), (0.9, 10), (0.0, 40)]);
        let events = run(&probs, SegmenterOptions::default());
        assert_eq!(events.len(), 4);
        assert_eq!(
            events[1],
            VadEvent::End {
                sample: 10 * F + 1600
            }
        );
        assert_eq!(
            events[2],
            VadEvent::Start {
                sample: 27 * F - 1600
            }
        );
    }

    #[test]
    fn a_speech_frame_cancels_a_silence_run() {
        let probs = frames(&[
            (0.9, 10),
            (0.1, 10),
            (0.9, 1),
            (0.1, 10),
            (0.9, 10),
            (0.0, 40),
        ]);
        assert_eq!(run(&probs, SegmenterOptions::default()).len(), 2);
    }

    #[test]
    fn flush_ends_open_speech() {
        let probs = frames(&[(0.9, 20)]);
        assert_eq!(
            run(&probs, SegmenterOptions::default()),
            vec![
                VadEvent::Start { sample: 0 },
                VadEvent::End { sample: 20 * F }
            ]
        );
        let probs = frames(&[(0.9, 20), (0.0, 5)]);
        assert_eq!(
            run(&probs, SegmenterOptions::default())[1],
            VadEvent::End {
                sample: 20 * F + 1600
            }
        );
    }

    #[test]
    fn start_never_precedes_previous_end() {
        let options = SegmenterOptions {
            min_silence_ms: 100,
            speech_pad_ms: 200,
            ..Default::default()
        };
        let probs = frames(&[(0.9, 10), (0.0, 5), (0.9, 10), (0.0, 40)]);
        let events = run(&probs, options);
        assert_eq!(events.len(), 4);
        assert!(events[2].sample() >= events[1].sample());
    }
}
