//! Live: how much later than usual a buffer reached the element.
//!
//! A live buffer's text is due within `latency + lateness` of its audio. The element counts the
//! time a buffer waits in its own queue; audio can also spend part of that budget before it
//! arrives, when the source or an element upstream is starved of CPU (many pipelines on a busy
//! machine). [`ArrivalDelay`] measures that part: a buffer's delay is the running time at which
//! it arrived minus the running time of its last sample, and what counts is the rise of the
//! delay over the least delay the stream has shown since it last re-based. The stream's usual
//! delay (the source's and the queues' latency, whatever they declare) is thus never counted,
//! only audio coming later than the same source delivered before.
//!
//! A source that stops for a while and then continues its timestamps (a network stall) is late
//! from then on by the length of the stall, for good: that is a new usual delay, not a starved
//! source, so the delay re-bases when audio arrives after a pause in arrivals longer than the
//! element's stall wait, when the timestamps do not continue, and on a flush. The least delay
//! may also creep up by 1 % of the elapsed time, so that a source clock slowly drifting from the
//! pipeline clock is never counted.

/// Timestamps closer than this to the end of the previous buffer continue it (sources re-align
/// their timestamps when they drift further: `audiobasesrc`'s `alignment-threshold` is 40 ms).
const CONTINUES: f64 = 0.040;

/// How fast the least delay may rise on its own (seconds per second of running time).
const CREEP: f64 = 0.01;

/// See the module documentation. Times are seconds of running time.
#[derive(Debug, Default, Clone)]
pub struct ArrivalDelay {
    /// The least delay since the last re-base (crept up), the running time of the last arrival
    /// and the end of the last buffer; `None`: re-base on the next buffer.
    last: Option<Last>,
}

#[derive(Debug, Clone, Copy)]
struct Last {
    least: f64,
    arrived: f64,
    end: f64,
}

impl ArrivalDelay {
    /// A buffer of audio from `start` to `end` arrived at running time `now`; `pause`: arrivals
    /// further apart than this are a stall. Returns how much later than the least delay it came
    /// (0 when it re-based).
    pub fn observe(&mut self, now: f64, start: f64, end: f64, pause: f64) -> f64 {
        let delay = now - end;
        let rise = match self.last {
            Some(l) if now - l.arrived <= pause && (start - l.end).abs() <= CONTINUES => {
                let least = (l.least + CREEP * (now - l.arrived).max(0.0)).min(delay);
                self.last = Some(Last {
                    least,
                    arrived: now,
                    end,
                });
                delay - least
            }
            _ => {
                self.last = Some(Last {
                    least: delay,
                    arrived: now,
                    end,
                });
                0.0
            }
        };
        rise.max(0.0)
    }

    /// Forgets the stream's delay (a flush): the next buffer re-bases.
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds 100 ms buffers from `from` (stream seconds) arriving `delay(i)` after their end;
    /// returns the rises.
    fn feed(
        a: &mut ArrivalDelay,
        from: f64,
        n: usize,
        offset: f64,
        delay: impl Fn(usize) -> f64,
    ) -> Vec<f64> {
        (0..n)
            .map(|i| {
                let start = from + i as f64 * 0.1;
                let end = start + 0.1;
                a.observe(end + offset + delay(i), start, end, 1.0)
            })
            .collect()
    }

    #[test]
    fn a_steady_source_is_never_late_whatever_its_usual_delay() {
        let mut a = ArrivalDelay::default();
        // 300 ms of upstream latency and a few ms of jitter.
        let rises = feed(&mut a, 0.0, 600, 0.3, |i| (i % 7) as f64 * 0.002);
        assert!(rises.iter().all(|&r| r <= 0.0125), "{rises:?}");
    }

    #[test]
    fn a_starved_source_counts_how_much_later_it_came() {
        let mut a = ArrivalDelay::default();
        feed(&mut a, 0.0, 100, 0.05, |_| 0.0);
        // Buffers 100.. come 0.1 s later each up to 0.8 s, then catch up: a starved feeder
        // thread, arrivals never more than 1 s apart.
        let rises = feed(&mut a, 10.0, 20, 0.05, |i| (0.1 * (i + 1) as f64).min(0.8));
        assert!((rises[0] - 0.1).abs() < 0.01, "{rises:?}");
        // The least delay crept up by 1 % of the 2.9 s in between.
        assert!((rises[19] - 0.8).abs() < 0.04, "{rises:?}");
        let after = feed(&mut a, 12.0, 10, 0.05, |_| 0.0);
        assert!(after.iter().all(|&r| r < 0.03), "{after:?}");
    }

    #[test]
    fn a_stall_with_continuing_timestamps_re_bases() {
        let mut a = ArrivalDelay::default();
        feed(&mut a, 0.0, 30, 0.0, |_| 0.0);
        // Nothing for 5 s, then the audio goes on from 3.0 s, 5 s behind the clock.
        let rises = feed(&mut a, 3.0, 30, 5.0, |_| 0.0);
        assert!(rises.iter().all(|&r| r == 0.0), "{rises:?}");
        // Faster than real time after it (catching up): never late either.
        let mut b = ArrivalDelay::default();
        feed(&mut b, 0.0, 30, 0.0, |_| 0.0);
        let rises: Vec<f64> = (0..30)
            .map(|i| {
                let start = 3.0 + i as f64 * 0.1;
                b.observe(8.0 + i as f64 * 0.01, start, start + 0.1, 1.0)
            })
            .collect();
        assert!(rises.iter().all(|&r| r == 0.0), "{rises:?}");
    }

    #[test]
    fn timestamps_that_jump_re_base_and_a_reset_forgets() {
        let mut a = ArrivalDelay::default();
        feed(&mut a, 0.0, 30, 0.0, |_| 0.0);
        // Timestamps going back 4 s without a pause in arrivals: a new run, not late.
        let rises = feed(&mut a, -1.0, 10, 4.0, |_| 0.0);
        assert!(rises.iter().all(|&r| r == 0.0), "{rises:?}");
        a.reset();
        assert_eq!(a.observe(100.0, 0.0, 0.1, 1.0), 0.0);
    }

    #[test]
    fn a_drifting_clock_is_not_counted() {
        let mut a = ArrivalDelay::default();
        // The source's clock runs 0.1 % slow: an hour later its audio arrives 3.6 s "late".
        let rises = feed(&mut a, 0.0, 36_000, 0.0, |i| i as f64 * 0.1 * 0.001);
        assert!(
            rises.iter().all(|&r| r < 0.002),
            "max {:?}",
            rises.iter().cloned().fold(0.0, f64::max)
        );
    }
}
