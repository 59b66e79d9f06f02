//! The mapping between engine sample indices and output time.
//!
//! The engine counts seconds from the first sample pushed since its last reset. The element keeps
//! one *run* per stretch of contiguous audio: the output time of the run's first sample (`base`)
//! and how many samples the engine has received in it. Output time is the input segment's
//! timeline (buffer timestamps) for non-live streams and running time for live ones.
//!
//! Policy for timestamps that do not follow on (a DISCONT, a GAP event, a jump):
//! * within [`TOLERANCE`] of the expected time: treated as contiguous (timestamp jitter);
//! * a forward jump of up to [`MAX_SILENCE_FILL`]: the hole is filled with digital silence, so
//!   the engine's clock stays aligned and context is kept;
//! * anything else (backwards, or a longer hole): the run is drained (everything received is
//!   transcribed, as at EOS) and a new run starts at the new timestamp.
//!
//! No sample is ever dropped.

use gst::ClockTime;

/// Engine sample rate.
pub const SAMPLE_RATE: u64 = 16_000;
/// Timestamp differences up to this are jitter, not gaps.
pub const TOLERANCE: ClockTime = ClockTime::from_mseconds(40);
/// Longest hole filled with silence; longer ones restart the run.
pub const MAX_SILENCE_FILL: ClockTime = ClockTime::from_seconds(30);

/// Where new audio goes relative to the current run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Follows on (or starts the first run).
    Contiguous,
    /// Follows a hole of this many samples, to be filled with silence.
    Silence(u64),
    /// Does not fit: drain the run and start a new one at the new time.
    Restart,
}

/// Samples per loudness frame (20 ms).
const FRAME: usize = 320;

/// The current run.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    base: Option<ClockTime>,
    samples: u64,
    /// Peak |sample| of each complete 20 ms frame of the run, for the silence guard.
    frame_peaks: Vec<f32>,
    partial_peak: f32,
    partial_len: usize,
}

impl Timeline {
    /// Output time of the run's first sample, once audio arrived.
    pub fn base(&self) -> Option<ClockTime> {
        self.base
    }

    /// Samples the engine received in this run (silence fill included).
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Output time just after the last sample received.
    pub fn end(&self) -> Option<ClockTime> {
        self.base
            .map(|b| b.saturating_add(samples_to_time(self.samples)))
    }

    /// Where audio starting at `time` goes. `None` (no timestamp) always follows on.
    pub fn place(&self, time: Option<ClockTime>) -> Placement {
        let (Some(time), Some(expected)) = (time, self.end()) else {
            return Placement::Contiguous;
        };
        if time.saturating_add(TOLERANCE) < expected {
            return Placement::Restart;
        }
        if time <= expected.saturating_add(TOLERANCE) {
            return Placement::Contiguous;
        }
        let hole = time - expected;
        if hole > MAX_SILENCE_FILL {
            Placement::Restart
        } else {
            Placement::Silence(time_to_samples(hole))
        }
    }

    /// Starts the first run at `time` if none has started.
    pub fn start_if_needed(&mut self, time: ClockTime) {
        if self.base.is_none() {
            self.base = Some(time);
            self.samples = 0;
        }
    }

    /// Counts samples handed to the engine.
    pub fn advance(&mut self, samples: &[f32]) {
        self.samples += samples.len() as u64;
        for &s in samples {
            self.partial_peak = self.partial_peak.max(s.abs());
            self.partial_len += 1;
            if self.partial_len == FRAME {
                self.frame_peaks.push(self.partial_peak);
                self.partial_peak = 0.0;
                self.partial_len = 0;
            }
        }
    }

    /// Peak |sample| of the audio between two engine times (seconds since the run start).
    pub fn peak_between(&self, start: f64, end: f64) -> f32 {
        let frame_seconds = FRAME as f64 / SAMPLE_RATE as f64;
        let first = (start.max(0.0) / frame_seconds).floor() as usize;
        let last = (end.max(0.0) / frame_seconds).ceil() as usize;
        let mut peak = self
            .frame_peaks
            .get(first.min(self.frame_peaks.len())..last.min(self.frame_peaks.len()))
            .unwrap_or_default()
            .iter()
            .fold(0.0f32, |a, &b| a.max(b));
        if last > self.frame_peaks.len() {
            peak = peak.max(self.partial_peak);
        }
        peak
    }

    /// Seconds of audio in the run.
    pub fn seconds(&self) -> f64 {
        self.samples as f64 / SAMPLE_RATE as f64
    }

    /// Output time of an engine time (seconds since the run start).
    pub fn time_of(&self, seconds: f64) -> Option<ClockTime> {
        let seconds = seconds.max(0.0);
        self.base.map(|b| {
            b.saturating_add(ClockTime::from_nseconds(
                ((seconds * 1e9).round() as u64).min(u64::MAX - 1),
            ))
        })
    }

    /// Forgets the run; the next audio starts a new one.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

pub fn samples_to_time(samples: u64) -> ClockTime {
    ClockTime::from_nseconds((samples as u128 * 1_000_000_000 / SAMPLE_RATE as u128) as u64)
}

pub fn time_to_samples(time: ClockTime) -> u64 {
    (time.nseconds() as u128 * SAMPLE_RATE as u128 / 1_000_000_000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_jitter_and_holes() {
        let mut t = Timeline::default();
        assert_eq!(
            t.place(Some(ClockTime::from_seconds(5))),
            Placement::Contiguous
        );
        t.start_if_needed(ClockTime::from_seconds(5));
        t.advance(&[0.0; 16_000]);
        assert_eq!(t.peak_between(0.0, 1.0), 0.0);
        assert_eq!(t.end(), Some(ClockTime::from_seconds(6)));
        assert_eq!(t.place(None), Placement::Contiguous);
        assert_eq!(
            t.place(Some(ClockTime::from_mseconds(6_010))),
            Placement::Contiguous
        );
        assert_eq!(
            t.place(Some(ClockTime::from_seconds(8))),
            Placement::Silence(32_000)
        );
        assert_eq!(
            t.place(Some(ClockTime::from_seconds(100))),
            Placement::Restart
        );
        assert_eq!(
            t.place(Some(ClockTime::from_seconds(5))),
            Placement::Restart
        );
        assert_eq!(t.time_of(0.5), Some(ClockTime::from_mseconds(5_500)));
        t.reset();
        assert_eq!(t.base(), None);
    }

    /// Timestamps from upstream can be anything up to `ClockTime::MAX`: arithmetic on them
    /// saturates instead of panicking (gstreamer-rs panics on overflow).
    #[test]
    fn timestamps_near_the_end_of_time_saturate() {
        let mut t = Timeline::default();
        let late = ClockTime::MAX - ClockTime::from_seconds(1);
        t.start_if_needed(late);
        t.advance(&[0.0; 48_000]);
        assert_eq!(t.end(), Some(ClockTime::MAX));
        assert_eq!(t.place(Some(ClockTime::MAX)), Placement::Contiguous);
        assert_eq!(t.time_of(1e12), Some(ClockTime::MAX));
        assert_eq!(
            time_to_samples(ClockTime::MAX) / 16_000 / 3600 / 24 / 365,
            584
        );
    }
}
