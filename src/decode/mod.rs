//! Decoding of one 30 s window: logit filters (openai/whisper `decoding.py` semantics, applied in
//! a fixed order), greedy / beam search / sampling, ranking, and temperature fallback.

mod filters;
pub mod timing;

use std::collections::HashMap;
use std::io::Write;

use crate::engine::Decoder;
use crate::engine::cpu::ops::log_softmax;
use crate::error::Error;
use crate::model::{Dims, SpecialTokens};
pub use filters::LogitFilters;

/// Parameters of one decoding attempt.
#[derive(Debug, Clone)]
pub struct DecodeParams {
    pub temperature: f32,
    pub beam_size: usize,
    pub patience: f32,
    pub best_of: usize,
    pub length_penalty: Option<f32>,
    /// Maximum sampled tokens (openai: n_text_ctx / 2).
    pub sample_len: usize,
    /// Greedy, one sequence: stop as soon as the text ends in a loop ([`ends_in_loop`]) instead
    /// of sampling it to `sample_len` (live, where a looping tail is cut afterwards anyway;
    /// offline keeps openai's rule, the compression ratio of the whole text and a fallback).
    pub stop_at_loop: bool,
}

/// Outcome of decoding one window.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeResult {
    /// Sampled tokens, without the final end-of-text.
    pub tokens: Vec<u32>,
    pub text: String,
    pub sum_logprob: f32,
    pub avg_logprob: f32,
    pub no_speech_prob: f32,
    pub temperature: f32,
    pub compression_ratio: f32,
    /// Log-probability of each token after the forced prefix (`tokens[prefix + i]`), as the
    /// decoder chose it: greedy and sampling; empty for beam search.
    pub token_logprobs: Vec<f32>,
}

/// zlib compression ratio of a text, as openai computes it (`len(b) / len(zlib.compress(b))`).
pub fn compression_ratio(text: &str) -> f32 {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return 0.0;
    }
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(bytes);
    let compressed = enc.finish().map(|v| v.len()).unwrap_or(bytes.len());
    bytes.len() as f32 / compressed.max(1) as f32
}

/// Small deterministic PRNG (SplitMix64) for sampling at temperature > 0.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Everything a window decode needs besides the model state.
pub struct WindowInput<'a> {
    /// Full initial tokens: optional `[sot_prev, ...previous text]`, then the SOT sequence.
    pub prompt: &'a [u32],
    /// Index of `<|startoftranscript|>` in `prompt`.
    pub sot_index: usize,
    /// Tokens forced after the prompt (openai's `prefix`): they start every sequence, the logit
    /// filters see them as already sampled, and the result includes them; only the tokens after
    /// them count towards `avg_logprob`. Live decoding passes the text already committed.
    pub prefix: &'a [u32],
    /// Tokens expected after the prefix (live: what the previous decode of the same, shorter
    /// buffer chose after it), or empty. Greedy decoding on an engine that verifies drafts
    /// feeds the expected tokens that follow each agreeing token in one call and keeps them
    /// while the choices agree: the same tokens as step by step, fewer calls.
    pub draft: &'a [u32],
    pub filters: &'a LogitFilters,
    pub specials: &'a SpecialTokens,
}

/// Per-step scratch buffers.
struct Scratch {
    logits: Vec<f32>,
    logprobs: Vec<f32>,
    /// The text tokens generated so far ([`ends_in_loop`]).
    text: Vec<u32>,
}

/// Blocks of this many text tokens at most are looked for by [`ends_in_loop`].
const LOOP_MAX_PERIOD: usize = 32;

/// Whether `text` (text tokens, no timestamps) ends in a hallucination loop: one token 8 times
/// in a row, or a block of 2..=[`LOOP_MAX_PERIOD`] tokens 5 times in a row. Stricter than the
/// live transcriber's cut of the words afterwards (a word 4 times, 2..16 words 3 times): the
/// repeats a decode stopped here ends with are cut there too.
pub fn ends_in_loop(text: &[u32]) -> bool {
    (1..=LOOP_MAX_PERIOD).any(|n| {
        let reps = if n == 1 { 8 } else { 5 };
        let span = n * reps;
        span <= text.len() && {
            let tail = &text[text.len() - span..];
            (n..span).all(|i| tail[i] == tail[i - n])
        }
    })
}

/// Decodes one window whose cross-attention K/V are already set in `state`. Returns the best
/// sequence and the number of decoder forward calls made; an error when the engine fails.
///
/// `observe` sees the leading sequence (prefix included) after every step: with greedy
/// decoding (one sequence) the sequence itself, which only grows, so it is a prefix of the
/// result; with beam search the best live beam, which may change between steps; with
/// `best_of > 1` sampling nothing (which candidate wins is known only at the end). The
/// transcriber uses it to start the NPU's speculative encode of the next window early.
#[allow(clippy::too_many_arguments)]
pub fn decode_window(
    dims: &Dims,
    state: &mut dyn Decoder,
    input: &WindowInput<'_>,
    params: &DecodeParams,
    rng: &mut Rng,
    decode_text: &dyn Fn(&[u32]) -> String,
    threads: usize,
    observe: &mut dyn FnMut(&[u32]),
) -> Result<(DecodeResult, usize), Error> {
    crate::fault::point("decode");
    let vocab = dims.n_vocab;
    let eot = input.specials.eot;
    let n_ctx = dims.n_text_ctx;
    let group = if params.temperature > 0.0 {
        params.best_of.max(1)
    } else {
        params.beam_size.max(1)
    };
    let beam = params.temperature == 0.0 && params.beam_size > 1;

    state.reset(1);
    if input.prefix.is_empty() {
        state.forward(input.prompt, Some(input.sot_index), threads)?;
    } else {
        let mut initial = Vec::with_capacity(input.prompt.len() + input.prefix.len());
        initial.extend_from_slice(input.prompt);
        initial.extend_from_slice(input.prefix);
        state.forward(&initial, Some(input.sot_index), threads)?;
    }
    let mut calls = 1;
    // Greedy steps of one sequence screen the vocabulary (exact decisions; see
    // `DecoderState::refine`); beams and sampling need every log-probability exact.
    let screening = !beam && params.temperature == 0.0 && group == 1;
    state.set_screening(screening.then_some(input.specials.timestamp_begin as usize));
    let mut scratch = Scratch {
        logits: vec![0.0; vocab],
        logprobs: vec![0.0; vocab],
        text: Vec::with_capacity(params.sample_len),
    };
    let stop_at_loop = params.stop_at_loop && !beam && group == 1;

    // No-speech probability: softmax at the SOT position, before any filter.
    log_softmax(state.logits_row(1), &mut scratch.logprobs);
    let no_speech_prob = scratch.logprobs[input.specials.no_speech as usize].exp();

    // All sequences start from the single prompt pass.
    let first_logits = state.logits_row(0).to_vec();
    state.reorder(&vec![0; group]);
    let mut seqs: Vec<Vec<u32>> = vec![input.prefix.to_vec(); group];
    let mut sum_logprobs = vec![0.0f32; group];
    let mut token_logprobs: Vec<Vec<f32>> = vec![Vec::new(); if beam { 0 } else { group }];
    let mut logits_rows: Vec<Vec<f32>> = vec![first_logits; group];
    let max_candidates = ((params.beam_size as f32) * params.patience)
        .round()
        .max(1.0) as usize;
    let mut finished: Vec<(Vec<u32>, f32)> = Vec::new();
    // Draft verification (greedy, one sequence): the tokens of the last call (`fed`), the row
    // of it whose logits decide the next token (`verify_row`), the draft token expected next
    // (`draft_at`) and how many chosen tokens in a row differed from the draft (`misses`).
    let max_verify = if group == 1 && !beam && params.temperature == 0.0 && !input.draft.is_empty()
    {
        state.max_verify()
    } else {
        0
    };
    let mut fed: Vec<u32> = Vec::with_capacity(max_verify);
    let mut verify_row = 0;
    let mut draft_at = 0;
    let mut misses = 0;

    for _step in 0..params.sample_len {
        let mut next_tokens = Vec::with_capacity(group);
        let completed;
        if beam {
            // Candidates from every beam: top beam+1 tokens each.
            let mut candidates: Vec<(Vec<u32>, f32, usize)> = Vec::new();
            let mut index: HashMap<Vec<u32>, usize> = HashMap::new();
            for (j, seq) in seqs.iter().enumerate() {
                scratch.logits.copy_from_slice(&logits_rows[j]);
                input.filters.apply(&mut scratch.logits, seq);
                log_softmax(&scratch.logits, &mut scratch.logprobs);
                for (token, lp) in top_k(&scratch.logprobs, params.beam_size + 1) {
                    let mut s = seq.clone();
                    s.push(token);
                    let score = sum_logprobs[j] + lp;
                    match index.get(&s) {
                        Some(&at) => candidates[at] = (s, score, j),
                        None => {
                            index.insert(s.clone(), candidates.len());
                            candidates.push((s, score, j));
                        }
                    }
                }
            }
            candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut new_seqs = Vec::with_capacity(group);
            let mut new_sums = Vec::with_capacity(group);
            let mut sources = Vec::with_capacity(group);
            let mut newly_finished = Vec::new();
            for (s, score, src) in candidates {
                if s.last() == Some(&eot) {
                    newly_finished.push((s, score));
                } else {
                    new_seqs.push(s);
                    new_sums.push(score);
                    sources.push(src);
                    if new_seqs.len() == group {
                        break;
                    }
                }
            }
            for f in newly_finished {
                if finished.len() >= max_candidates {
                    break;
                }
                finished.push(f);
            }
            completed = finished.len() >= max_candidates || new_seqs.is_empty();
            if !new_seqs.is_empty() {
                state.reorder(&sources);
                next_tokens = new_seqs.iter().map(|s| *s.last().unwrap_or(&eot)).collect();
                seqs = new_seqs;
                sum_logprobs = new_sums;
                observe(&seqs[0]);
            }
        } else {
            for (k, seq) in seqs.iter_mut().enumerate() {
                if seq.last() == Some(&eot) {
                    next_tokens.push(eot);
                    seq.push(eot);
                    continue;
                }
                scratch.logits.copy_from_slice(&logits_rows[k]);
                input.filters.apply_with(&mut scratch.logits, seq, |l| {
                    state.refine(k + verify_row, l);
                });
                log_softmax(&scratch.logits, &mut scratch.logprobs);
                let token = if params.temperature > 0.0 {
                    sample(&scratch.logits, params.temperature, rng)
                } else {
                    argmax(&scratch.logits)
                };
                sum_logprobs[k] += scratch.logprobs[token as usize];
                token_logprobs[k].push(scratch.logprobs[token as usize]);
                seq.push(token);
                next_tokens.push(token);
            }
            completed = seqs.iter().all(|s| s.last() == Some(&eot))
                || (stop_at_loop && next_tokens[0] < eot && {
                    scratch.text.push(next_tokens[0]);
                    ends_in_loop(&scratch.text)
                });
            if group == 1 {
                observe(&seqs[0]);
            }
        }
        // Draft tokens fed but not (yet) accepted.
        let pending = fed.len().saturating_sub(verify_row + 1);
        if completed || state.len() - pending + 1 > n_ctx {
            break;
        }
        if max_verify > 1 {
            let token = next_tokens[0];
            if pending > 0 && fed[verify_row + 1] == token {
                // The draft's token, already fed: its logits are the call's next row.
                verify_row += 1;
                draft_at += 1;
                logits_rows[0].copy_from_slice(state.logits_row(verify_row));
                continue;
            }
            state.truncate(state.len() - pending);
            let ts_begin = input.specials.timestamp_begin;
            let (next, agreed) = follow_draft(input.draft, draft_at, token, ts_begin);
            draft_at = next;
            misses = if agreed { 0 } else { misses + 1 };
            fed.clear();
            fed.push(token);
            // A second difference in a row ends the draft.
            if misses < 2 {
                let room = (n_ctx - state.len()).min(max_verify);
                let ahead = input.draft.get(draft_at..).unwrap_or_default();
                fed.extend(ahead.iter().take(room - 1));
            }
            verify_row = 0;
            if fed.len() > 1 {
                state.forward_verify(&fed, threads)?;
                calls += 1;
                logits_rows[0].copy_from_slice(state.logits_row(0));
                continue;
            }
        }
        state.forward(&next_tokens, None, threads)?;
        calls += 1;
        for (k, row) in logits_rows.iter_mut().enumerate().take(state.batch()) {
            row.copy_from_slice(state.logits_row(k));
        }
    }

    state.set_screening(None);

    // Candidates: finished beams, or (greedy / sampling) every sequence.
    let mut candidates: Vec<(Vec<u32>, f32)> = if beam {
        if finished.len() < params.beam_size {
            let mut order: Vec<usize> = (0..seqs.len()).collect();
            order.sort_by(|&a, &b| sum_logprobs[b].total_cmp(&sum_logprobs[a]));
            for i in order {
                if finished.len() >= params.beam_size {
                    break;
                }
                finished.push((seqs[i].clone(), sum_logprobs[i]));
            }
        }
        finished
    } else {
        seqs.into_iter().zip(sum_logprobs).collect()
    };
    for (tokens, _) in &mut candidates {
        if let Some(end) = tokens.iter().position(|&t| t == eot) {
            tokens.truncate(end);
        }
    }
    let forced = input.prefix.len();
    let score = |(tokens, lp): &(Vec<u32>, f32)| {
        let len = tokens.len().saturating_sub(forced) as f32;
        let penalty = match params.length_penalty {
            None => len,
            Some(alpha) => ((5.0 + len) / 6.0).powf(alpha),
        };
        lp / penalty.max(f32::MIN_POSITIVE)
    };
    let best = candidates
        .iter()
        .enumerate()
        .max_by(|a, b| score(a.1).total_cmp(&score(b.1)).then(b.0.cmp(&a.0)))
        .map(|(i, _)| i)
        .unwrap_or(0);
    let (tokens, sum_logprob) = candidates.swap_remove(best);
    // Greedy and sampled candidates are the sequences in order; beams keep none.
    let mut token_logprobs = if beam {
        Vec::new()
    } else {
        token_logprobs.swap_remove(best)
    };
    token_logprobs.truncate(tokens.len().saturating_sub(forced));
    let text = decode_text(&tokens);
    let result = DecodeResult {
        avg_logprob: sum_logprob / (tokens.len().saturating_sub(forced) as f32 + 1.0),
        compression_ratio: compression_ratio(&text),
        tokens,
        text,
        sum_logprob,
        no_speech_prob,
        temperature: params.temperature,
        token_logprobs,
    };
    Ok((result, calls))
}

/// Where the draft goes on after the chosen `token`, the draft's next token being `draft[at]`,
/// and whether `token` agreed with it. The draft is followed past a difference: a timestamp
/// that moved (any timestamp for a timestamp, from `ts_begin` on), a word written differently
/// (taken as a substitution) or a draft token left out (`token` is the one after it).
fn follow_draft(draft: &[u32], at: usize, token: u32, ts_begin: u32) -> (usize, bool) {
    let ts = |t: u32| t >= ts_begin;
    match draft.get(at) {
        Some(&d) if d == token || (ts(d) && ts(token)) => (at + 1, true),
        _ if draft.get(at + 1) == Some(&token) => (at + 2, true),
        _ => (at + 1, false),
    }
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// The `k` largest entries, largest first.
fn top_k(x: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in x.iter().enumerate() {
        if v == f32::NEG_INFINITY || (top.len() == k && v <= top[k - 1].1) {
            continue;
        }
        let at = top.partition_point(|&(_, t)| t >= v);
        top.insert(at, (i as u32, v));
        top.truncate(k);
    }
    top
}

/// Samples from `softmax(logits / temperature)`.
fn sample(logits: &[f32], temperature: f32, rng: &mut Rng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights = logits
        .iter()
        .map(|&l| (((l - max) / temperature) as f64).exp());
    let total: f64 = weights.clone().sum();
    let mut target = rng.uniform() * total;
    let mut last = 0;
    for (i, w) in weights.enumerate() {
        if w > 0.0 {
            last = i;
            if target < w {
                return i as u32;
            }
            target -= w;
        }
    }
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_are_found_at_the_end_only_when_long_enough() {
        // " When the rain finally stopped." as 6 tokens.
        let sentence = [1, 2, 3, 4, 5, 6];
        let looped = |reps: usize| -> Vec<u32> {
            let mut t = vec![9, 8, 7];
            for _ in 0..reps {
                t.extend(sentence);
            }
            t
        };
        assert!(!ends_in_loop(&looped(4)));
        assert!(ends_in_loop(&looped(5)));
        // Not at the end: the text went on.
        let mut on = looped(5);
        on.push(10);
        assert!(!ends_in_loop(&on));
        // "no, no, no, no" (" no" ","): four times is speech.
        assert!(!ends_in_loop(&[20, 21, 20, 21, 20, 21, 20]));
        // One token: 8 times.
        assert!(!ends_in_loop(&[5; 7]));
        assert!(ends_in_loop(&[5; 8]));
        // A block of 33 tokens is longer than looked for.
        let block: Vec<u32> = (100..133).collect();
        assert!(!ends_in_loop(&block.repeat(5)));
        assert!(!ends_in_loop(&[]));
    }

    #[test]
    fn top_k_orders_and_skips_masked() {
        let x = [0.1, f32::NEG_INFINITY, 0.5, 0.3, 0.5];
        assert_eq!(top_k(&x, 3), vec![(2, 0.5), (4, 0.5), (3, 0.3)]);
    }

    #[test]
    fn compression_ratio_detects_repetition() {
        let varied = "And so my fellow Americans, ask not what your country can do for you.";
        let repeated = "thank you ".repeat(40);
        assert!(compression_ratio(varied) < 2.4);
        assert!(compression_ratio(&repeated) > 2.4);
    }

    #[test]
    fn sampling_respects_masks() {
        let mut rng = Rng::new(7);
        let logits = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, 1.0];
        for _ in 0..100 {
            let t = sample(&logits, 1.0, &mut rng);
            assert!(t == 1 || t == 3);
        }
    }
}
