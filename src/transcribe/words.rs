//! Word timestamps with openai/whisper's semantics (`timing.py`: `find_alignment`,
//! `merge_punctuations`, `add_word_timestamps`; `transcribe.py`: the hallucination scores).
//! The token times themselves come from [`crate::decode::timing::token_times`].

use super::{Segment, Word};
use crate::model::Tokenizer;

/// Punctuation merged into the following word (openai's `prepend_punctuations`).
const PREPEND_PUNCTUATIONS: &str = "\"'“¿([{-";
/// Punctuation merged into the preceding word (openai's `append_punctuations`).
const APPEND_PUNCTUATIONS: &str = "\"'.。,，!！?？:：”)]}、";
const SENTENCE_END_MARKS: &str = ".。!！?？";
/// Words that are only punctuation do not count in the hallucination score (openai's
/// `punctuation` in `transcribe()`).
const PUNCTUATION: &str = "\"'“¿([{-\"'.。,，!！?？:：”)]}、";

/// A word of the aligned text before it is assigned to its segment; times in seconds from the
/// window start.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WordTiming {
    pub word: String,
    pub tokens: Vec<u32>,
    pub start: f64,
    pub end: f64,
    pub probability: f32,
}

/// Python's `x in s` for strings: a substring test (the empty string is in every string).
fn is_in(x: &str, s: &str) -> bool {
    s.contains(x)
}

/// Words of `text` (text tokens) with times from `times` (one per text token and one for the
/// EOT, as [`token_times`](crate::decode::timing::token_times) returns them) and probabilities
/// from `probs` (one per text token): a word starts at its first token's time and ends at the
/// next word's (openai's jump times at the word boundaries).
pub(crate) fn word_timings(
    tok: &Tokenizer,
    text: &[u32],
    language: Option<&str>,
    times: &[f64],
    probs: &[f32],
) -> Vec<WordTiming> {
    let mut ids = Vec::with_capacity(text.len() + 1);
    ids.extend_from_slice(text);
    ids.push(tok.specials.eot);
    let (words, word_tokens) = tok.split_to_word_tokens(&ids, language);
    if word_tokens.len() <= 1 {
        return Vec::new();
    }
    let n = words.len() - 1;
    let mut out = Vec::with_capacity(n);
    let mut boundary = 0;
    for (word, tokens) in words.into_iter().zip(word_tokens).take(n) {
        let next = boundary + tokens.len();
        let (Some(&start), Some(&end)) = (times.get(boundary), times.get(next)) else {
            break;
        };
        let p = &probs[boundary.min(probs.len())..next.min(probs.len())];
        let probability = if p.is_empty() {
            0.0
        } else {
            p.iter().sum::<f32>() / p.len() as f32
        };
        out.push(WordTiming {
            word,
            tokens,
            start,
            end,
            probability,
        });
        boundary = next;
    }
    out
}

/// openai's `merge_punctuations`: a word that is a space and an opening mark joins the word
/// after it; a closing mark joins the word before it (unless that one ends with a space). The
/// emptied entries stay (with no text and no tokens) so that indices keep their meaning.
fn merge_punctuations(alignment: &mut [WordTiming], prepended: &str, appended: &str) {
    if alignment.len() < 2 {
        return;
    }
    // Opening marks, from the end backwards.
    let mut j = alignment.len() - 1;
    for i in (0..alignment.len() - 1).rev() {
        let previous = &alignment[i];
        if previous.word.starts_with(' ') && is_in(previous.word.trim(), prepended) {
            let word = std::mem::take(&mut alignment[i].word);
            let tokens = std::mem::take(&mut alignment[i].tokens);
            let following = &mut alignment[j];
            following.word.insert_str(0, &word);
            following.tokens.splice(0..0, tokens);
        } else {
            j = i;
        }
    }
    // Closing marks, from the start forwards.
    let mut i = 0;
    for j in 1..alignment.len() {
        if !alignment[i].word.ends_with(' ') && is_in(&alignment[j].word, appended) {
            let word = std::mem::take(&mut alignment[j].word);
            let tokens = std::mem::take(&mut alignment[j].tokens);
            let previous = &mut alignment[i];
            previous.word.push_str(&word);
            previous.tokens.extend(tokens);
        } else {
            i = j;
        }
    }
}

/// Rounds to hundredths of a second, as openai's `round(t, 2)` does (ties to even).
fn round2(t: f64) -> f64 {
    (t * 100.0).round_ties_even() / 100.0
}

/// openai's `add_word_timestamps` after `find_alignment`: long words at sentence ends are
/// clipped to twice the median word duration, punctuation is merged, each segment takes its
/// words (by token count, `alignment` covering the segments' text tokens in order), words
/// after a pause are clipped, and each segment's start and end move to its words' (unless the
/// first/last word is too long, then the word is clipped to the segment instead). Times are
/// seconds from the window start at `time_offset`; `last_speech_timestamp` is the end of the
/// speech before this window.
pub(crate) fn add_word_timestamps(
    segments: &mut [Segment],
    mut alignment: Vec<WordTiming>,
    time_offset: f64,
    mut last_speech_timestamp: f64,
) {
    let mut durations: Vec<f64> = alignment
        .iter()
        .map(|t| t.end - t.start)
        .filter(|&d| d != 0.0)
        .collect();
    let median_duration = median(&mut durations).unwrap_or(0.0).min(0.7);
    let max_duration = median_duration * 2.0;

    // Clip long words at sentence boundaries.
    if !durations.is_empty() {
        for i in 1..alignment.len() {
            if alignment[i].end - alignment[i].start > max_duration {
                if is_in(&alignment[i].word, SENTENCE_END_MARKS) {
                    alignment[i].end = alignment[i].start + max_duration;
                } else if is_in(&alignment[i - 1].word, SENTENCE_END_MARKS) {
                    alignment[i].start = alignment[i].end - max_duration;
                }
            }
        }
    }
    merge_punctuations(&mut alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS);

    let mut word_index = 0;
    for segment in segments.iter_mut() {
        let mut saved_tokens = 0;
        let mut words: Vec<Word> = Vec::new();
        while word_index < alignment.len() && saved_tokens < segment.tokens.len() {
            let timing = &alignment[word_index];
            if !timing.word.is_empty() {
                words.push(Word {
                    text: timing.word.clone(),
                    start: round2(time_offset + timing.start),
                    end: round2(time_offset + timing.end),
                    probability: Some(timing.probability),
                });
            }
            saved_tokens += timing.tokens.len();
            word_index += 1;
        }
        if !words.is_empty() {
            let (n, l) = (words.len(), words.len() - 1);
            // The first (and second) word after a pause: no longer than twice the median.
            if words[0].end - last_speech_timestamp > median_duration * 4.0
                && (words[0].end - words[0].start > max_duration
                    || (n > 1 && words[1].end - words[0].start > max_duration * 2.0))
            {
                if n > 1 && words[1].end - words[1].start > max_duration {
                    let boundary = (words[1].end / 2.0).max(words[1].end - max_duration);
                    words[0].end = boundary;
                    words[1].start = boundary;
                }
                words[0].start = (words[0].end - max_duration).max(0.0);
            }
            // Prefer the segment's start when the first word is too long.
            if segment.start < words[0].end && segment.start - 0.5 > words[0].start {
                words[0].start = (words[0].end - median_duration).min(segment.start).max(0.0);
            } else {
                segment.start = words[0].start;
            }
            // Prefer the segment's end when the last word is too long.
            if segment.end > words[l].start && segment.end + 0.5 < words[l].end {
                words[l].end = (words[l].start + median_duration).max(segment.end);
            } else {
                segment.end = words[l].end;
            }
            last_speech_timestamp = segment.end;
        }
        segment.words = words;
    }
}

/// numpy's median (the mean of the middle two of an even count); `None` when empty.
fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// openai's `word_anomaly_score`: improbable, very short or very long words score.
fn word_anomaly_score(word: &Word) -> f64 {
    let probability = word.probability.unwrap_or(0.0);
    let duration = word.end - word.start;
    let mut score = 0.0;
    if probability < 0.15 {
        score += 1.0;
    }
    if duration < 0.133 {
        score += (0.133 - duration) * 15.0;
    }
    if duration > 2.0 {
        score += duration - 2.0;
    }
    score
}

/// openai's `is_segment_anomaly`: the first 8 non-punctuation words of the segment score 3 or
/// more, or about one per word.
pub(crate) fn is_segment_anomaly(segment: Option<&Segment>) -> bool {
    let Some(segment) = segment.filter(|s| !s.words.is_empty()) else {
        return false;
    };
    let words: Vec<&Word> = segment
        .words
        .iter()
        .filter(|w| !is_in(&w.text, PUNCTUATION))
        .take(8)
        .collect();
    let score: f64 = words.iter().map(|w| word_anomaly_score(w)).sum();
    score >= 3.0 || score + 0.01 >= words.len() as f64
}

/// openai's `get_end`: the end of the last word, else of the last segment.
pub(crate) fn get_end(segments: &[Segment]) -> Option<f64> {
    segments
        .iter()
        .rev()
        .flat_map(|s| s.words.iter().rev())
        .map(|w| w.end)
        .next()
        .or_else(|| segments.last().map(|s| s.end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(word: &str, tokens: usize, start: f64, end: f64) -> WordTiming {
        WordTiming {
            word: word.into(),
            tokens: vec![0; tokens],
            start,
            end,
            probability: 0.9,
        }
    }

    fn segment(start: f64, end: f64, tokens: usize) -> Segment {
        Segment {
            start,
            end,
            text: String::new(),
            tokens: vec![0; tokens],
            avg_logprob: 0.0,
            no_speech_prob: 0.0,
            temperature: 0.0,
            compression_ratio: 1.0,
            language: "en".into(),
            words: Vec::new(),
        }
    }

    #[test]
    fn punctuation_joins_its_word() {
        let mut a = vec![
            timing(" \"", 1, 0.0, 0.1),
            timing(" Hello", 1, 0.1, 0.5),
            timing(",", 1, 0.5, 0.6),
            timing(" world", 2, 0.6, 1.0),
            timing(".", 1, 1.0, 1.1),
        ];
        merge_punctuations(&mut a, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS);
        let words: Vec<&str> = a.iter().map(|t| t.word.as_str()).collect();
        assert_eq!(words, ["", " \" Hello,", "", " world.", ""]);
        assert_eq!(a[1].tokens.len(), 3);
        assert_eq!(a[3].tokens.len(), 3);
        // Times are not merged: each word keeps its own.
        assert_eq!((a[1].start, a[1].end), (0.1, 0.5));
    }

    #[test]
    fn segment_times_follow_their_words() {
        // Two segments over 2 + 2 words; durations 0.4, 0.4, 0.4, 0.4: median 0.4, max 0.8.
        let alignment = vec![
            timing(" a", 1, 0.2, 0.6),
            timing(" b", 1, 0.6, 1.0),
            timing(" c", 1, 3.0, 3.4),
            timing(" d", 1, 3.4, 3.8),
        ];
        let mut segs = vec![segment(10.0, 11.2, 2), segment(13.0, 13.8, 2)];
        add_word_timestamps(&mut segs, alignment, 10.0, 10.0);
        // First segment: start → first word (10.2); end 11.2 is not < the last word's end −
        // 0.5, so the end → 11.0.
        assert_eq!((segs[0].start, segs[0].end), (10.2, 11.0));
        assert_eq!(segs[0].words.len(), 2);
        assert_eq!(segs[1].words[0].text, " c");
        assert_eq!((segs[1].start, segs[1].end), (13.0, 13.8));
        assert!(segs[1].words.iter().all(|w| w.probability == Some(0.9)));
    }

    #[test]
    fn long_words_are_clipped() {
        // Median 0.3 (max 0.6): the sentence end "." spanning 1.0 s is cut to 0.6, and the
        // first word after a long pause (end − last speech > 4 × median) is cut to 0.6.
        let alignment = vec![
            timing(" one", 1, 2.0, 4.0),
            timing(" two", 1, 4.0, 4.3),
            timing(" three", 1, 4.3, 4.6),
            timing(".", 1, 4.6, 5.6),
            timing(" four", 1, 5.6, 5.9),
        ];
        let mut segs = vec![segment(2.0, 6.0, 5)];
        add_word_timestamps(&mut segs, alignment, 0.0, 0.0);
        let w = &segs[0].words;
        assert_eq!(w.len(), 4);
        assert_eq!(w[2].text, " three.");
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(w[0].start, 3.4) && near(w[0].end, 4.0), "{w:?}");
        assert!(near(w[2].end, 4.6), "{w:?}");
        assert!(
            near(segs[0].start, 3.4) && near(segs[0].end, 5.9),
            "{segs:?}"
        );
    }

    #[test]
    fn anomalies_score_like_openai() {
        let mut s = segment(0.0, 1.0, 2);
        let word = |text: &str, start: f64, end: f64, p: f32| Word {
            text: text.into(),
            start,
            end,
            probability: Some(p),
        };
        s.words = vec![word(" Thank", 0.0, 0.4, 0.9), word(" you.", 0.4, 0.8, 0.9)];
        assert!(!is_segment_anomaly(Some(&s)));
        // Two improbable words: one point each, so the score reaches the word count.
        s.words = vec![word(" Thank", 0.0, 0.4, 0.1), word(" you.", 0.4, 0.8, 0.1)];
        assert!(is_segment_anomaly(Some(&s)));
        // Instantaneous words: (0.133 − 0) × 15 ≈ 2 each.
        s.words = vec![word(" Thank", 0.0, 0.0, 0.9), word(" you.", 0.4, 0.4, 0.9)];
        assert!(is_segment_anomaly(Some(&s)));
        assert!(!is_segment_anomaly(None));
        assert_eq!(get_end(std::slice::from_ref(&s)), Some(0.4));
    }
}
