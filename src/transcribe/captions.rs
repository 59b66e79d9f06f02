//! Caption shaping: a segment's words split at word boundaries into cues of a few short lines,
//! each cue timed by its own words (openai-whisper's `--max_line_width`, `--max_line_count`,
//! `--max_words_per_line`; whisper.cpp's `-ml`).
//!
//! The rules, per segment (a cue never spans two segments, so the element can send a segment's
//! cues as soon as the segment is final):
//! - words go on the current line while the line stays within `max_line_length` characters
//!   (words joined by one space; characters are Unicode scalar values) and `max_words_per_line`
//!   words; otherwise a new line starts;
//! - a cue holds at most `max_lines` lines; the line after that starts a new cue;
//! - a single word longer than `max_line_length` gets a line of its own (words are never cut);
//! - a cue runs from its first word's start to its last word's end; cues are kept in order and
//!   never overlap (a cue starts no earlier than the previous one ends).
//!
//! Without word times (a segment decoded without word timestamps) the words are timed in
//! proportion to their length over the segment's span.

use super::{Segment, Word};

/// How text is shaped into caption cues. A limit of 0 means none; all three 0 = off (one cue per
/// segment, on one line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CaptionLayout {
    /// Characters per line.
    pub max_line_length: usize,
    /// Lines per cue.
    pub max_lines: usize,
    /// Words per line.
    pub max_words_per_line: usize,
}

/// A named layout: `(name, layout, what it is for)`.
pub const CAPTION_PRESETS: &[(&str, CaptionLayout, &str)] = &[
    (
        "none",
        CaptionLayout {
            max_line_length: 0,
            max_lines: 0,
            max_words_per_line: 0,
        },
        "no shaping: one cue per segment",
    ),
    (
        "cea608-roll-up-2",
        CaptionLayout {
            max_line_length: 32,
            max_lines: 2,
            max_words_per_line: 0,
        },
        "CEA-608 roll-up, 2 rows of 32 columns",
    ),
    (
        "cea608-roll-up-3",
        CaptionLayout {
            max_line_length: 32,
            max_lines: 3,
            max_words_per_line: 0,
        },
        "CEA-608 roll-up, 3 rows of 32 columns",
    ),
];

impl CaptionLayout {
    /// No limit set: text is not shaped.
    pub fn is_off(&self) -> bool {
        self.max_line_length == 0 && self.max_words_per_line == 0
    }

    /// The layout of a preset name (see [`CAPTION_PRESETS`]).
    pub fn preset(name: &str) -> Option<Self> {
        CAPTION_PRESETS
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name.trim()))
            .map(|&(_, layout, _)| layout)
    }
}

/// One caption: lines joined with `\n`, times in the segment's seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Cue {
    pub start: f64,
    pub end: f64,
    pub lines: Vec<String>,
}

impl Cue {
    /// The cue's text, lines joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// The segment's words with times: its own, or, without word timing, its text's words timed in
/// proportion to their length over `[start, end]`.
fn timed_words(segment: &Segment, end: f64) -> Vec<(f64, f64, String)> {
    let own: Vec<(f64, f64, String)> = segment
        .words
        .iter()
        .filter_map(|w: &Word| {
            let text = w.text.trim();
            (!text.is_empty()).then(|| (w.start, w.end.min(end).max(w.start), text.to_string()))
        })
        .collect();
    if !own.is_empty() {
        return own;
    }
    let words: Vec<&str> = segment.text.split_whitespace().collect();
    let total: usize = words.iter().map(|w| w.chars().count() + 1).sum();
    let span = (end - segment.start).max(0.0);
    let mut at = 0usize;
    words
        .into_iter()
        .map(|w| {
            let n = w.chars().count() + 1;
            let t0 = segment.start + span * at as f64 / total as f64;
            at += n;
            let t1 = segment.start + span * at as f64 / total as f64;
            (t0, t1, w.to_string())
        })
        .collect()
}

/// Splits one segment into cues by `layout` (see the module documentation). `end` caps the
/// times (the audio received so far). With the layout off: one cue, the segment's text as it is.
pub fn shape(segment: &Segment, layout: &CaptionLayout, end: f64) -> Vec<Cue> {
    let end = end.min(segment.end).max(segment.start);
    if layout.is_off() {
        let text = segment.text.trim().to_string();
        if text.is_empty() {
            return Vec::new();
        }
        return vec![Cue {
            start: segment.start,
            end,
            lines: vec![text],
        }];
    }
    let mut cues: Vec<Cue> = Vec::new();
    // The cue being filled and its last line's length in characters and words.
    let mut cue: Option<Cue> = None;
    let (mut line_chars, mut line_words) = (0usize, 0usize);
    for (start, word_end, word) in timed_words(segment, end) {
        let n = word.chars().count();
        let fits = |cue: &Option<Cue>| {
            cue.is_some()
                && (layout.max_line_length == 0 || line_chars + 1 + n <= layout.max_line_length)
                && (layout.max_words_per_line == 0 || line_words < layout.max_words_per_line)
        };
        if fits(&cue) {
            let c = cue.as_mut().expect("checked by fits");
            let line = c.lines.last_mut().expect("a cue has a line");
            line.push(' ');
            line.push_str(&word);
            c.end = c.end.max(word_end);
            line_chars += 1 + n;
            line_words += 1;
            continue;
        }
        let full = cue
            .as_ref()
            .is_none_or(|c| layout.max_lines > 0 && c.lines.len() >= layout.max_lines);
        if full {
            cues.extend(cue.take());
            cue = Some(Cue {
                start,
                end: word_end,
                lines: vec![word],
            });
        } else {
            let c = cue.as_mut().expect("not full means a cue");
            c.lines.push(word);
            c.end = c.end.max(word_end);
        }
        line_chars = n;
        line_words = 1;
    }
    cues.extend(cue);
    // In order and never overlapping, each at least as long as it starts.
    let mut last_end = f64::NEG_INFINITY;
    for c in &mut cues {
        c.start = c.start.max(last_end).min(end);
        c.end = c.end.max(c.start);
        last_end = c.end;
    }
    cues
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(words: &[(&str, f64, f64)]) -> Segment {
        Segment {
            start: words.first().map_or(0.0, |w| w.1),
            end: words.last().map_or(0.0, |w| w.2),
            text: words.iter().map(|w| format!(" {}", w.0)).collect(),
            tokens: Vec::new(),
            avg_logprob: 0.0,
            no_speech_prob: 0.0,
            temperature: 0.0,
            compression_ratio: 1.0,
            language: "en".into(),
            words: words
                .iter()
                .map(|&(text, start, end)| Word {
                    text: format!(" {text}"),
                    start,
                    end,
                    probability: None,
                })
                .collect(),
        }
    }

    fn jfk() -> Segment {
        let text = "And so my fellow Americans, ask not what your country can do for you, \
                    ask what you can do for your country.";
        let words: Vec<(&str, f64, f64)> = text
            .split(' ')
            .enumerate()
            .map(|(i, w)| (w, i as f64 * 0.5, i as f64 * 0.5 + 0.4))
            .collect();
        segment(&words)
    }

    fn all_words(cues: &[Cue]) -> Vec<String> {
        cues.iter()
            .flat_map(|c| c.lines.iter())
            .flat_map(|l| l.split(' '))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn lines_stay_within_the_width_and_cues_within_the_line_count() {
        let seg = jfk();
        for width in [10, 16, 20, 32, 42] {
            for lines in [1, 2, 3] {
                let layout = CaptionLayout {
                    max_line_length: width,
                    max_lines: lines,
                    max_words_per_line: 0,
                };
                let cues = shape(&seg, &layout, seg.end);
                for c in &cues {
                    assert!(c.lines.len() <= lines, "{c:?}");
                    for l in &c.lines {
                        assert!(l.chars().count() <= width, "{width}: {l:?}");
                    }
                }
                // Every word once, in order.
                let words: Vec<String> = seg.text.split_whitespace().map(String::from).collect();
                assert_eq!(all_words(&cues), words);
                // Greedy: a line and its next word would exceed the width.
                for c in &cues {
                    for pair in c.lines.windows(2) {
                        let next = pair[1].split(' ').next().unwrap();
                        assert!(pair[0].chars().count() + 1 + next.chars().count() > width);
                    }
                }
            }
        }
    }

    #[test]
    fn cues_take_their_words_times_in_order_without_overlap() {
        let seg = jfk();
        let layout = CaptionLayout::preset("cea608-roll-up-2").unwrap();
        let cues = shape(&seg, &layout, seg.end);
        assert!(cues.len() >= 2, "{cues:?}");
        // The first cue starts with the first word, the last ends with the last word.
        assert_eq!(cues[0].start, 0.0);
        assert_eq!(cues.last().unwrap().end, seg.end);
        let mut word = 0;
        for (i, c) in cues.iter().enumerate() {
            let n: usize = c.lines.iter().map(|l| l.split(' ').count()).sum();
            assert_eq!(c.start, seg.words[word].start, "cue {i}");
            assert_eq!(c.end, seg.words[word + n - 1].end, "cue {i}");
            word += n;
            if i > 0 {
                assert!(c.start >= cues[i - 1].end);
            }
        }
        assert_eq!(word, seg.words.len());
    }

    #[test]
    fn words_per_line_and_long_words() {
        let seg = jfk();
        let layout = CaptionLayout {
            max_line_length: 0,
            max_lines: 1,
            max_words_per_line: 3,
        };
        let cues = shape(&seg, &layout, seg.end);
        assert_eq!(cues.len(), seg.words.len().div_ceil(3));
        assert!(cues.iter().all(|c| c.lines.len() == 1));
        assert!(cues.iter().all(|c| c.lines[0].split(' ').count() <= 3));
        // A word longer than the width keeps a line of its own, uncut.
        let seg = segment(&[
            ("a", 0.0, 0.1),
            ("Pneumonoultramicroscopicsilicovolcanoconiosis", 0.2, 1.0),
            ("b", 1.1, 1.2),
        ]);
        let layout = CaptionLayout {
            max_line_length: 10,
            max_lines: 3,
            max_words_per_line: 0,
        };
        let cues = shape(&seg, &layout, seg.end);
        assert_eq!(cues.len(), 1);
        assert_eq!(
            cues[0].lines,
            ["a", "Pneumonoultramicroscopicsilicovolcanoconiosis", "b"]
        );
    }

    #[test]
    fn without_word_times_words_share_the_span_by_length() {
        let mut seg = jfk();
        seg.words.clear();
        seg.start = 10.0;
        seg.end = 20.0;
        let layout = CaptionLayout {
            max_line_length: 20,
            max_lines: 1,
            max_words_per_line: 0,
        };
        let cues = shape(&seg, &layout, seg.end);
        assert!(cues.len() > 3);
        assert_eq!(cues[0].start, 10.0);
        assert!((cues.last().unwrap().end - 20.0).abs() < 1e-9);
        for pair in cues.windows(2) {
            assert!(pair[1].start >= pair[0].end && pair[0].end > pair[0].start);
        }
        // The layout off: the segment's text on one line; `end` caps the times.
        let cues = shape(&seg, &CaptionLayout::default(), 15.0);
        assert_eq!(cues.len(), 1);
        assert_eq!(cues[0].end, 15.0);
        assert_eq!(cues[0].text(), seg.text.trim());
    }

    #[test]
    fn presets_by_name() {
        assert_eq!(
            CaptionLayout::preset("CEA608-roll-up-3"),
            Some(CaptionLayout {
                max_line_length: 32,
                max_lines: 3,
                max_words_per_line: 0
            })
        );
        assert!(CaptionLayout::preset("none").unwrap().is_off());
        assert_eq!(CaptionLayout::preset("teletext"), None);
    }
}
