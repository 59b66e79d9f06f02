//! Logit filters, applied in openai's order: suppress blank, suppress tokens, timestamp rules.

use crate::engine::cpu::ops::log_sum_exp;
use crate::model::SpecialTokens;

/// The filters of one window's decoding, prepared once per window.
#[derive(Debug, Clone)]
pub struct LogitFilters {
    /// Suppressed at the first sampled position (`" "` and end-of-text).
    pub suppress_blank: Vec<u32>,
    /// Always suppressed.
    pub suppress: Vec<u32>,
    /// End-of-text suppressed when this many tokens (the forced prefix) are sampled: live
    /// decoding asks the decoder to go on after its committed text when speech was heard
    /// beyond it.
    pub eot_after: Option<(usize, u32)>,
    /// `None` when decoding without timestamps.
    pub timestamps: Option<TimestampRules>,
}

/// openai's `ApplyTimestampRules`.
#[derive(Debug, Clone)]
pub struct TimestampRules {
    pub eot: u32,
    pub no_timestamps: u32,
    pub timestamp_begin: u32,
    /// Index of the latest timestamp allowed first (`round(max_initial_timestamp / 0.02)`).
    pub max_initial_timestamp_index: Option<u32>,
}

impl LogitFilters {
    pub fn new(
        specials: &SpecialTokens,
        suppress_blank: Option<&[u32]>,
        suppress: Vec<u32>,
        with_timestamps: bool,
        max_initial_timestamp: Option<f32>,
    ) -> Self {
        Self {
            suppress_blank: suppress_blank.map(<[u32]>::to_vec).unwrap_or_default(),
            suppress,
            eot_after: None,
            timestamps: with_timestamps.then(|| TimestampRules {
                eot: specials.eot,
                no_timestamps: specials.no_timestamps,
                timestamp_begin: specials.timestamp_begin,
                max_initial_timestamp_index: max_initial_timestamp
                    .map(|t| (t / 0.02).round().max(0.0) as u32),
            }),
        }
    }

    /// Applies all filters to one sequence's logits; `sampled` are the tokens sampled so far
    /// in this window (after the prompt).
    pub fn apply(&self, logits: &mut [f32], sampled: &[u32]) {
        self.apply_with(logits, sampled, |_| {});
    }

    /// [`apply`](Self::apply), calling `refine` on the logits once every mask is set and
    /// before the one rule that compares logits (timestamps likelier than any text token):
    /// screened logits are made exact there (`DecoderState::refine`).
    pub fn apply_with(&self, logits: &mut [f32], sampled: &[u32], refine: impl FnOnce(&mut [f32])) {
        let vocab = logits.len();
        let mask = |logits: &mut [f32], ids: &[u32]| {
            for &id in ids {
                if (id as usize) < vocab {
                    logits[id as usize] = f32::NEG_INFINITY;
                }
            }
        };
        if sampled.is_empty() {
            mask(logits, &self.suppress_blank);
        }
        mask(logits, &self.suppress);
        if let Some((at, eot)) = self.eot_after
            && sampled.len() == at
        {
            mask(logits, &[eot]);
        }
        match &self.timestamps {
            Some(rules) => {
                rules.mask(logits, sampled);
                refine(logits);
                rules.force_likely(logits);
            }
            None => refine(logits),
        }
    }
}

impl TimestampRules {
    /// The masks: pairing, monotonic timestamps, the initial timestamp.
    fn mask(&self, logits: &mut [f32], sampled: &[u32]) {
        let tb = self.timestamp_begin as usize;
        let eot = self.eot as usize;
        let vocab = logits.len();
        let neg = f32::NEG_INFINITY;
        if (self.no_timestamps as usize) < vocab {
            logits[self.no_timestamps as usize] = neg;
        }
        let is_ts = |t: u32| t >= self.timestamp_begin;
        let n = sampled.len();
        let last_was_timestamp = n >= 1 && is_ts(sampled[n - 1]);
        let penultimate_was_timestamp = n < 2 || is_ts(sampled[n - 2]);
        if last_was_timestamp {
            if penultimate_was_timestamp {
                // A pair is complete: next comes text (or end of text).
                logits[tb..].fill(neg);
            } else {
                // An open pair must be closed by a timestamp (or end of text).
                logits[..eot].fill(neg);
            }
        }
        if let Some(&last_ts) = sampled.iter().rev().find(|&&t| is_ts(t)) {
            // Timestamps never decrease, and a segment has non-zero length.
            let bound = if last_was_timestamp && !penultimate_was_timestamp {
                last_ts
            } else {
                last_ts + 1
            };
            logits[tb..(bound as usize).min(vocab)].fill(neg);
        }
        if n == 0 {
            // The first token is a timestamp, no later than max_initial_timestamp.
            logits[..tb].fill(neg);
            if let Some(max_index) = self.max_initial_timestamp_index {
                let last_allowed = tb + max_index as usize;
                if last_allowed + 1 < vocab {
                    logits[last_allowed + 1..].fill(neg);
                }
            }
        }
    }

    /// If the timestamps together are likelier than any text token, forces a timestamp. (openai
    /// compares log-probabilities; the normaliser is the same on both sides, so logits are
    /// compared directly.)
    fn force_likely(&self, logits: &mut [f32]) {
        let tb = (self.timestamp_begin as usize).min(logits.len());
        let neg = f32::NEG_INFINITY;
        let timestamps = log_sum_exp(&logits[tb..]);
        let text_max = logits[..tb].iter().copied().fold(neg, f32::max) as f64;
        if timestamps != f64::NEG_INFINITY && timestamps > text_max {
            logits[..tb].fill(neg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> LogitFilters {
        let specials = SpecialTokens {
            eot: 10,
            sot: 11,
            translate: 12,
            transcribe: 13,
            sot_lm: 14,
            sot_prev: 15,
            no_speech: 16,
            no_timestamps: 17,
            timestamp_begin: 18,
            language_begin: 12,
            n_languages: 0,
        };
        LogitFilters::new(&specials, Some(&[1, 10]), vec![5], true, Some(0.04))
    }

    #[test]
    fn first_token_is_an_early_timestamp() {
        let mut logits = vec![0.0; 30];
        rules().apply(&mut logits, &[]);
        let allowed: Vec<usize> = (0..30).filter(|&i| logits[i] > f32::NEG_INFINITY).collect();
        assert_eq!(allowed, vec![18, 19, 20]);
    }

    #[test]
    fn open_pair_must_close_with_a_later_timestamp_or_end() {
        let mut logits = vec![0.0; 30];
        logits[10] = 5.0; // end-of-text likelier than the timestamps together
        rules().apply(&mut logits, &[18, 3, 4, 22]);
        // Text is masked, end-of-text allowed, timestamps before the open one masked.
        assert!(logits[..10].iter().all(|&l| l == f32::NEG_INFINITY));
        assert!(logits[10] > f32::NEG_INFINITY);
        assert!(logits[18..22].iter().all(|&l| l == f32::NEG_INFINITY));
        assert!(logits[22..].iter().all(|&l| l > f32::NEG_INFINITY));
    }

    #[test]
    fn end_of_text_is_suppressed_right_after_the_prefix_only() {
        // A prefix ending a segment ("text <|t|>"): a new segment's timestamp or the end.
        let prefix = [18, 3, 22];
        let mut f = rules();
        // End-of-text likelier than the timestamps together.
        let fresh = || {
            let mut logits = vec![0.0; 30];
            logits[10] = 5.0;
            logits
        };
        let mut logits = fresh();
        f.apply(&mut logits, &prefix);
        assert!(
            logits[10] > f32::NEG_INFINITY,
            "end allowed without eot_after"
        );
        f.eot_after = Some((prefix.len(), 10));
        let mut logits = fresh();
        f.apply(&mut logits, &prefix);
        assert_eq!(logits[10], f32::NEG_INFINITY);
        assert!(logits[22..].iter().all(|&l| l > f32::NEG_INFINITY));
        // One token later the text may end.
        let mut logits = fresh();
        f.apply(&mut logits, &[18, 3, 22, 23, 4]);
        assert!(logits[10] > f32::NEG_INFINITY);
    }

    #[test]
    fn closed_pair_is_followed_by_text() {
        let mut logits = vec![0.0; 30];
        logits[3] = 5.0;
        rules().apply(&mut logits, &[18, 3, 22, 22]);
        assert!(logits[18..].iter().all(|&l| l == f32::NEG_INFINITY));
        assert!(logits[3] > 0.0 && logits[5] == f32::NEG_INFINITY);
    }

    #[test]
    fn likely_timestamps_are_forced() {
        let mut logits = vec![0.0; 30];
        for l in &mut logits[18..] {
            *l = 1.0;
        }
        rules().apply(&mut logits, &[18, 3]);
        assert!(logits[..18].iter().all(|&l| l == f32::NEG_INFINITY));
    }
}
