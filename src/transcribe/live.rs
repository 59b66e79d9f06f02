//! Live transcription: a speech-gated growing buffer, re-decoded as audio arrives, with text
//! committed when successive hypotheses agree (LocalAgreement-2), at the end of each utterance,
//! or when the latency budget runs out.
//!
//! * A [`SpeechGate`] (Silero VAD, an energy detector, or nothing) opens an utterance at speech
//!   onset and closes it after a pause. Audio outside utterances is never decoded: silence, noise
//!   and music cannot turn into text.
//! * While an utterance is open, its audio (from the buffer start to now) is decoded every
//!   `step` of new audio, greedily, with the committed text of the utterance forced as the
//!   decoder's prefix and the earlier committed text as the prompt. Words that two consecutive
//!   hypotheses agree on are committed, except the last word of a hypothesis (it is often cut at
//!   the buffer edge) and words the decoder was unsure of (a token below probability 0.5), which
//!   need three hypotheses in a row. Words whose start is about to exceed the `latency` budget
//!   are committed without agreement.
//! * When the utterance ends (a pause), its final hypothesis is committed whole. A hypothesis
//!   decoded at the start of the pause is reused, so the end of an utterance costs no decode.
//!   Speech resuming within `JOIN_GAP` continues the same buffer: it is first decoded after
//!   1.2 s (earlier hypotheses are mostly guesses at a new sentence), and once it has gone on
//!   for a second the decoder may not end its text at the committed prefix.
//! * A buffer longer than `max_buffer` is trimmed at the end of its committed text, which then
//!   becomes prompt context; never past speech that resumed after that text and has nothing
//!   committed yet.
//! * Guards: hypotheses that the model itself rates as no speech (`no_speech_prob` above
//!   `no_speech_threshold`, whatever their log-probability) commit nothing; n-gram loops are cut
//!   at their first occurrence, text faster than 6 words a second is cut, and a repetitive
//!   hypothesis (compression ratio above its threshold) adds nothing.
//!
//! Word times come from the hypothesis' timestamp tokens, interpolated within a segment by
//! character count, and clamped to the utterance's speech end.

use std::time::{Duration, Instant};

use super::schedule::Turn;
use super::{Segment, Transcriber, Word};
use crate::audio::{HOP_LENGTH, SAMPLE_RATE};
use crate::decode::DecodeResult;
use crate::error::Error;
use crate::model::tokenizer::Tokenizer;

/// Decodes that end an utterance go this far ahead of every other waiting decode.
const URGENT_AHEAD: Duration = Duration::from_secs(60);
/// Share of `latency + lateness` a decode's turn leaves free for the decode running slower
/// than measured (0.2 s at least): later than that, the wait gives up.
const GIVE_UP_MARGIN: f64 = 0.1;

/// Onset and end of speech, in samples since the stream start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateEvent {
    Start(u64),
    End(u64),
}

/// Decides which audio is speech.
pub trait SpeechGate: Send {
    /// Feeds 16 kHz mono samples (the stream continues from the previous call); returns the
    /// speech onsets and ends now known, in order.
    fn push(&mut self, samples: &[f32]) -> Vec<GateEvent>;
    /// End of stream: closes an open utterance.
    fn flush(&mut self) -> Vec<GateEvent>;
    /// Seconds of non-speech at the end of the audio pushed so far while an utterance is open
    /// (the start of a pause that may end it); 0 otherwise.
    fn trailing_silence(&self) -> f64;
    fn reset(&mut self);
    fn name(&self) -> &'static str;
    /// A problem met while running (e.g. the VAD runtime failed and a fallback took over),
    /// reported once.
    fn take_warning(&mut self) -> Option<String> {
        None
    }
}

/// No gating: everything is one utterance, closed only at the end of the stream.
#[derive(Debug, Default)]
pub struct AlwaysSpeech {
    started: bool,
    samples: u64,
}

impl SpeechGate for AlwaysSpeech {
    fn push(&mut self, samples: &[f32]) -> Vec<GateEvent> {
        self.samples += samples.len() as u64;
        if self.started || samples.is_empty() {
            return Vec::new();
        }
        self.started = true;
        vec![GateEvent::Start(0)]
    }

    fn flush(&mut self) -> Vec<GateEvent> {
        if std::mem::take(&mut self.started) {
            vec![GateEvent::End(self.samples)]
        } else {
            Vec::new()
        }
    }

    fn trailing_silence(&self) -> f64 {
        0.0
    }

    fn reset(&mut self) {
        *self = Self::default();
    }

    fn name(&self) -> &'static str {
        "none"
    }
}

/// Tuning of the live policy.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveOptions {
    /// Seconds of new audio between two decodes of an open utterance (a decode also waits for
    /// the previous one: on a slow machine the effective step is the decode time).
    pub step: f64,
    /// Seconds from the start of a word to its text leaving the element, at most: words about to
    /// miss it are committed without waiting for agreement.
    pub latency: f64,
    /// Seconds text may be later than `latency` (the element's `lateness`). Under overload a
    /// decode whose turn would come too late for its text to leave within `latency + lateness`
    /// of the audio is not waited for: a re-decode is left out, and the end of an utterance
    /// leaves its audio out ([`LiveOutput::skipped`]).
    pub lateness: f64,
    /// Buffer length (seconds) above which the committed part is cut off.
    pub max_buffer: f64,
    /// The step is at least this many times the last decodes' wall time, so that decoding
    /// leaves the cores some headroom (0: a fixed step, for reproducible runs).
    pub headroom: f64,
    /// Seconds of trailing non-speech after which an open utterance is decoded at once, so that
    /// its end (when the gate confirms the pause) is committed without another decode.
    pub early_final: f64,
    /// A re-decode passes the previous decode's tokens as a draft (`WindowInput::draft`): the
    /// same text, the tokens that come again verified in one decoder call. Off: step by step.
    pub draft: bool,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            step: 0.5,
            latency: 4.0,
            lateness: 0.0,
            max_buffer: 15.0,
            headroom: 1.25,
            early_final: 0.1,
            draft: true,
        }
    }
}

impl LiveOptions {
    /// Options for a `latency` budget in seconds: the step shrinks with it.
    pub fn for_latency(latency: f64) -> Self {
        Self {
            step: (latency * 0.12).clamp(0.3, 1.0),
            latency,
            ..Self::default()
        }
    }
}

/// Text not yet final: what the current hypothesis says after the committed words.
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    /// Seconds since the stream start.
    pub start: f64,
    pub end: f64,
    pub text: String,
}

/// What a call produced.
#[derive(Debug, Default)]
pub struct LiveOutput {
    /// Final text, in time order; never revised.
    pub segments: Vec<Segment>,
    /// The latest hypothesis beyond the committed text, when a decode ran.
    pub partial: Option<Partial>,
    /// No final text will start before this time (seconds since the stream start): everything
    /// earlier is committed or known not to be speech.
    pub settled: f64,
    /// Speech left out untranscribed (start, end; seconds since the stream start): under
    /// overload the decode of an utterance's end did not get the workers in time for its text
    /// to leave within `latency + lateness`.
    pub skipped: Vec<(f64, f64)>,
}

/// Counters, for benchmarks and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveStats {
    pub utterances: u64,
    pub decodes: u64,
    /// Units (words) committed by agreement, by the latency budget, and at utterance ends.
    pub agreed: u64,
    pub forced: u64,
    pub finals: u64,
    /// Utterance ends that reused the hypothesis decoded at the start of the pause.
    pub reused_finals: u64,
    /// Hypotheses dropped as no speech, and n-gram loops cut.
    pub no_speech: u64,
    pub loops_cut: u64,
    pub trims: u64,
    /// Re-decodes left out because other live transcribers sharing the workers were decoding
    /// and this one's words were not yet due (see [`super::schedule`]), or whose turn would
    /// have come too late.
    pub deferred: u64,
    /// Decodes that did not get a turn in time and left the speech of their buffer out (an
    /// utterance end, a full window), and that speech in seconds.
    pub given_up: u64,
    pub left_out: f64,
}

/// A word (or, for scripts without spaces, a token) of a hypothesis.
#[derive(Debug, Clone)]
struct Unit {
    /// Token range in the hypothesis.
    from: usize,
    to: usize,
    /// Comparison key: lowercase letters and digits.
    key: String,
    /// Seconds from the buffer start.
    start: f64,
    end: f64,
    /// The unit ends a segment closed by a timestamp token: that token's index.
    closes: Option<usize>,
}

struct Hypothesis {
    result: DecodeResult,
    units: Vec<Unit>,
    /// Units that survive the guards.
    valid: usize,
    /// Sample up to which the audio was decoded.
    audio_end: u64,
    /// Word times come from cross-attention alignment (else interpolation).
    aligned: bool,
}

/// An open utterance: the buffer being re-decoded.
struct Utterance {
    /// Buffer start, in samples (a multiple of the mel hop).
    start: u64,
    /// Hypothesis tokens already committed (the decoder's forced prefix).
    committed_tokens: Vec<u32>,
    /// Units committed from the buffer start.
    committed_units: usize,
    /// End (seconds since stream start) of the committed text.
    committed_end: f64,
    /// Keys of the previous hypothesis and of the one before it, for agreement (a word the
    /// decoder was unsure of needs both).
    prev_keys: [Vec<String>; 2],
    last: Option<Hypothesis>,
    /// Audio end (samples) of the last decode.
    decoded_to: u64,
    /// Set when the speech paused here: the buffer is kept (its text committed) in case the
    /// next utterance follows closely, to decode it with this audio and text as context.
    paused_at: Option<u64>,
    /// The last speech onset in this buffer (the start, or where speech resumed after a
    /// pause), samples.
    onset: u64,
    /// `onset` is where speech resumed after a pause in this buffer.
    resumed: bool,
}

/// The live policy's state; the engine is passed in on every call.
pub struct LiveTranscriber {
    opts: LiveOptions,
    gate: Box<dyn SpeechGate>,
    /// Samples pushed since the stream start.
    total: u64,
    utt: Option<Utterance>,
    /// Committed text tokens, the prompt of later decodes.
    context: Vec<u32>,
    /// Smoothed wall time of a decode, seconds.
    decode_seconds: f64,
    /// Smoothed wait for a turn when a decode was due (0 while the workers are free), seconds.
    turn_wait: f64,
    /// When the newest audio pushed arrived (the element's queue holds it until then): how
    /// late the stream is now. `None`: pushed as it arrives.
    arrived: Option<Instant>,
    /// Everything before this is settled (seconds since stream start).
    settled: f64,
    stats: LiveStats,
}

/// `WHISPERNPU_LIVE_TRACE=1` prints every decode and commit on stderr.
static TRACE: once_cell::sync::Lazy<bool> = once_cell::sync::Lazy::new(|| {
    std::env::var_os("WHISPERNPU_LIVE_TRACE").is_some_and(|v| v != "0")
});

macro_rules! trace {
    ($($arg:tt)*) => {
        if *TRACE {
            eprintln!("live[{:?}]: {}", std::thread::current().id(), format_args!($($arg)*));
        }
    };
}

/// Hard limit: one window holds 30 s.
const HARD_MAX_BUFFER: f64 = 28.0;
/// Words per second above which a hypothesis is cut (fast speech is ~4).
const MAX_WORDS_PER_SECOND: f64 = 6.0;
/// An utterance starting at most this long after the previous one ended continues its buffer.
const JOIN_GAP: f64 = 2.0;
/// How far back a speech onset can be reported (the gate's minimum speech, padding and frame).
const ONSET_LOOKBACK: f64 = 0.5;
/// Audio kept before a speech onset in case the gate's padding reaches back.
const KEEP_BEFORE: f64 = 1.0;
/// Audio a trim keeps at least between its cut and the end of the buffer (the committed part of
/// it stays as forced prefix): a buffer cut right after its committed text hears the next words
/// alone, with little speech, and decodes them worse than offline (base: "As not" for jfk's
/// "ask not" after a pause). Only a buffer over `max_buffer` is cut closer. (Cutting inside a
/// segment to keep more context made things worse: a prefix starting mid-sentence.)
const LEFT_CONTEXT: f64 = 2.0;

/// Audio a word must have after it, by its cross-attention alignment, to be committed by
/// agreement (an attention-based stop rule, as AlignAtt's last-frames threshold): two decodes
/// that hear a word at the very end of the audio agree on a guess as easily as on the word.
/// Measured with `live_sim --decode-cost` (jfk, the 111.9 s recording, two 37 s recordings with
/// pauses, 509 words): tiny.en live WER 10.6 → 9.2 % (offline 10.8), base unchanged at 7.3 %
/// (offline 6.1), p95 latency +0.1 s; 0.3 s did not help, 1.0 s made base worse.
const RIGHT_CONTEXT: f64 = 0.5;

/// A word whose least likely token the decoder chose with a probability below this (its log,
/// ln 0.5) is committed by agreement only when the two hypotheses before agree on it too
/// (LocalAgreement-3 for unsure words, -2 for the rest). Two short-buffer guesses agree on an
/// unsure word as easily as on a heard one: base committed "The old" from "The old city is
/// big." and "The old baby is real tired." (average log-probabilities −1.1 and −1.4) and went on
/// to "The old city is pale, so again, so pale" for "The old city is built on a gentle hill".
/// Measured with `live_sim --latency 5 --decode-cost 0.25` (base; tiny.en 0.1) on jfk.wav and
/// the three synthesised bench-live recordings (719 words): base pooled WER 6.95 → 5.01 %
/// (offline 4.17), tiny.en 10.71 → 9.59 % (offline 8.35), p95 latency within 0.1–1.0 s of
/// before (base 2.33, tiny.en 1.48 s at most); requiring three hypotheses for every word cost
/// more latency and read base 5.70 %; gating whole hypotheses by their average log-probability
/// held words back until the latency budget forced them (tiny.en p95 2.5 s).
const UNSURE_LOGPROB: f32 = -std::f32::consts::LN_2;

/// Seconds of speech after a pause, with nothing of it committed yet, after which the decoder
/// is not allowed to end its text at the committed prefix.
const GO_ON_AFTER: f64 = 1.0;

/// Seconds of speech resumed after a pause before its first step decode. A hypothesis of the
/// first few tenths of a second, after text closed by the pause, is mostly a guess at a new
/// sentence, and the next one tends to agree with it (tiny.en: "Watch out." after 0.37 s, then
/// "Watch your country", for jfk's "what your country"). The end of the utterance is decoded
/// whatever its length.
const RESUME_FIRST_DECODE: f64 = 1.2;

fn seconds(samples: u64) -> f64 {
    samples as f64 / SAMPLE_RATE as f64
}

fn to_samples(seconds: f64) -> u64 {
    (seconds.max(0.0) * SAMPLE_RATE as f64).round() as u64
}

fn frame(sample: u64) -> usize {
    (sample / HOP_LENGTH as u64) as usize
}

impl LiveTranscriber {
    pub fn new(gate: Box<dyn SpeechGate>, opts: LiveOptions) -> Self {
        Self {
            opts,
            gate,
            total: 0,
            utt: None,
            context: Vec::new(),
            decode_seconds: 0.0,
            turn_wait: 0.0,
            arrived: None,
            settled: 0.0,
            stats: LiveStats::default(),
        }
    }

    pub fn options(&self) -> &LiveOptions {
        &self.opts
    }

    pub fn set_options(&mut self, opts: LiveOptions) {
        self.opts = opts;
    }

    pub fn stats(&self) -> &LiveStats {
        &self.stats
    }

    pub fn gate_name(&self) -> &'static str {
        self.gate.name()
    }

    /// A problem the speech gate met while running, reported once.
    pub fn take_warning(&mut self) -> Option<String> {
        self.gate.take_warning()
    }

    /// Recent wall time of a decode, seconds (a moving average). The wait for a turn on shared
    /// workers is not in it: the policy bounds that wait itself ([`Self::wait_turn`]).
    pub fn decode_seconds(&self) -> f64 {
        self.decode_seconds
    }

    /// When the audio pushed next arrived (it may have waited in a queue): its text has that
    /// much less time. Holds until the next call (also for [`Self::drain`]).
    pub fn set_arrival(&mut self, arrived: Option<Instant>) {
        self.arrived = arrived;
    }

    /// Seconds since the newest audio arrived.
    fn lag(&self) -> f64 {
        self.arrived.map_or(0.0, |a| a.elapsed().as_secs_f64())
    }

    /// Seconds of audio pushed since the stream start.
    pub fn seconds(&self) -> f64 {
        seconds(self.total)
    }

    /// Forgets audio and text (the engine is reset by its owner).
    pub fn reset(&mut self) {
        self.gate.reset();
        self.total = 0;
        self.utt = None;
        self.context.clear();
        self.settled = 0.0;
    }

    /// Appends audio; decodes when due. `backlog`: more audio is already waiting, so a regular
    /// step decode would be stale before it ends and is skipped (ends of utterances and full
    /// buffers are decoded anyway).
    pub fn push(
        &mut self,
        engine: &mut Transcriber,
        samples: &[f32],
        backlog: bool,
    ) -> Result<LiveOutput, Error> {
        if self.total == 0 && self.context.is_empty() {
            self.context = initial_context(engine);
        }
        engine.push_audio(samples);
        self.total += samples.len() as u64;
        let mut out = LiveOutput::default();
        for event in self.gate.push(samples) {
            self.handle_event(engine, event, &mut out);
        }
        if let Some(paused) = self.utt.as_ref().and_then(|u| u.paused_at)
            && self.total > paused + to_samples(JOIN_GAP)
        {
            self.close_buffer(engine);
        }
        if let Some(utt) = self.utt.as_ref().filter(|u| u.paused_at.is_none()) {
            let length = seconds(self.total - utt.start);
            let new_audio = seconds(self.total - utt.decoded_to);
            let silence = self.gate.trailing_silence();
            let due = if length >= HARD_MAX_BUFFER {
                true
            } else if silence >= self.opts.early_final {
                // Decode once at the start of a pause: its result ends the utterance.
                utt.decoded_to <= self.total.saturating_sub(to_samples(silence))
            } else if silence > 0.0 {
                false
            } else if length >= self.opts.max_buffer && new_audio >= self.opts.step {
                true
            } else {
                // Leave the cores some headroom: a step shorter than the decode only queues
                // audio behind it.
                !backlog
                    && new_audio >= self.opts.step.max(self.opts.headroom * self.decode_seconds)
                    && (!utt.resumed
                        || seconds(self.total.saturating_sub(utt.onset)) >= RESUME_FIRST_DECODE)
            };
            if due {
                self.step(engine, &mut out);
            }
        } else if self.utt.is_none() {
            engine.discard_before(frame(self.total.saturating_sub(to_samples(KEEP_BEFORE))));
        }
        out.settled = self.settled();
        // An engine that failed (ONNX Runtime erring mid-stream) stops the stream with its error.
        engine.take_failure()?;
        Ok(out)
    }

    /// End of stream: commits everything open. The caller resets the engine afterwards.
    pub fn drain(&mut self, engine: &mut Transcriber) -> Result<LiveOutput, Error> {
        let mut out = LiveOutput::default();
        for event in self.gate.flush() {
            self.handle_event(engine, event, &mut out);
        }
        if self.utt.as_ref().is_some_and(|u| u.paused_at.is_none()) {
            self.finish_utterance(engine, self.total, &mut out);
        }
        out.settled = seconds(self.total);
        self.reset();
        engine.take_failure()?;
        Ok(out)
    }

    fn settled(&self) -> f64 {
        // Outside speech, an onset may still be reported a little in the past.
        let quiet = (seconds(self.total) - ONSET_LOOKBACK).max(0.0);
        match &self.utt {
            Some(u) if u.paused_at.is_none() => {
                u.committed_end.max(seconds(u.start)).max(self.settled)
            }
            _ => quiet.max(self.settled),
        }
    }

    /// Drops the paused buffer: its text becomes prompt context, its audio is freed.
    fn close_buffer(&mut self, engine: &mut Transcriber) {
        let Some(utt) = self.utt.take() else {
            return;
        };
        let eot = engine.model().tokenizer.specials.eot;
        self.context
            .extend(utt.committed_tokens.iter().copied().filter(|&t| t < eot));
        self.trim_context(engine);
        let end = utt.paused_at.unwrap_or(self.total);
        engine.discard_before(frame(end.saturating_sub(to_samples(KEEP_BEFORE))));
    }

    fn handle_event(&mut self, engine: &mut Transcriber, event: GateEvent, out: &mut LiveOutput) {
        match event {
            GateEvent::Start(at) => {
                if let Some(u) = self.utt.as_mut() {
                    let Some(paused) = u.paused_at else {
                        return;
                    };
                    let joins = at <= paused + to_samples(JOIN_GAP)
                        && seconds(self.total - u.start) < self.opts.max_buffer;
                    if joins {
                        trace!("speech again from {:.2} s, same buffer", seconds(at));
                        self.stats.utterances += 1;
                        u.paused_at = None;
                        u.onset = at;
                        u.resumed = true;
                        return;
                    }
                    self.close_buffer(engine);
                }
                self.stats.utterances += 1;
                let first = (engine_first_sample(engine)).max(to_samples(self.settled));
                let start = at.max(first).min(self.total);
                let start = start - start % HOP_LENGTH as u64;
                trace!("speech from {:.2} s", seconds(start));
                self.utt = Some(Utterance {
                    start,
                    committed_tokens: Vec::new(),
                    committed_units: 0,
                    committed_end: seconds(start),
                    prev_keys: Default::default(),
                    last: None,
                    decoded_to: start,
                    paused_at: None,
                    onset: at,
                    resumed: false,
                });
            }
            GateEvent::End(at) => {
                if self.utt.as_ref().is_some_and(|u| u.paused_at.is_none()) {
                    self.finish_utterance(engine, at.min(self.total), out);
                }
            }
        }
    }

    /// Decodes the open utterance and commits what agrees or is due.
    fn step(&mut self, engine: &mut Transcriber, out: &mut LiveOutput) {
        let Some(mut utt) = self.utt.take() else {
            return;
        };
        // Sharing the workers with other live streams: a re-decode whose words are not yet due
        // is left out while another stream decodes (it comes again with the next audio); one
        // that is due, or ends the utterance, waits for its turn.
        // A due one whose turn would come too late for its text is left out too (under
        // overload: the utterance's end is decoded, or its audio left out, instead), and the
        // words that cannot wait go out as the last decode heard them.
        let slack = self.slack(&utt);
        let turn = match slack {
            Some(slack) if slack > 0.0 => {
                let turn = engine.try_decode_turn();
                if turn.is_some() {
                    self.turn_wait *= 0.7;
                }
                turn
            }
            Some(slack) => {
                let oldest = utt.committed_end.max(seconds(utt.start));
                self.wait_turn(engine, Some(slack), oldest)
            }
            None => {
                let speech_end = seconds(self.total) - self.gate.trailing_silence();
                self.wait_final(engine, &mut utt, speech_end, out)
            }
        };
        let Some(turn) = turn else {
            self.stats.deferred += 1;
            if slack.is_some() {
                // No turn now: the words the last decode heard that a decode starting now could
                // no longer get out in time go out as it heard them.
                self.force_from_last(engine, &mut utt, self.give_up_horizon(engine), out);
            }
            if seconds(self.total - utt.start) >= HARD_MAX_BUFFER {
                // The window is full and cannot wait for another turn.
                let end = self.total;
                self.leave_out(engine, utt, end, out);
                self.handle_event(engine, GateEvent::Start(end), out);
            } else {
                self.utt = Some(utt);
            }
            return;
        };
        let hyp = self.decode(engine, &utt, self.total, turn);
        let c = committed_count(&hyp, utt.committed_tokens.len());
        let valid = hyp.valid.max(c);

        // At the start of a pause the utterance probably ends here: its text then goes out whole
        // (one caption) when the gate confirms the pause, from this same hypothesis.
        let pausing = self.gate.trailing_silence() >= self.opts.early_final;
        let agreed = if pausing {
            0
        } else {
            let prefix = utt.committed_tokens.len();
            let words: Vec<Heard> = (c..valid)
                .map(|k| Heard {
                    key: &hyp.units[k].key,
                    end: hyp.units[k].end,
                    logprob: word_logprob(&hyp, k, prefix),
                })
                .collect();
            agreement(
                &words,
                utt.prev_keys[0].get(c..).unwrap_or_default(),
                utt.prev_keys[1].get(c..).unwrap_or_default(),
                seconds(hyp.audio_end - utt.start),
            )
        };
        let budget_from = self.forced_horizon();
        let base = seconds(utt.start);
        let forced = starting_before(&hyp, c..valid, base, budget_from);
        let k = agreed.max(forced);
        if k > 0 {
            self.stats.agreed += agreed as u64;
            self.stats.forced += (forced.saturating_sub(agreed)) as u64;
            self.commit(engine, &mut utt, &hyp, c, c + k, None, out);
        }
        if valid > c + k {
            let units = &hyp.units[c + k..valid];
            let text = text_of(
                engine,
                &hyp.result.tokens[hyp.units[c + k].from..units[units.len() - 1].to],
            );
            out.partial = Some(Partial {
                start: base + units[0].start,
                end: base + units[units.len() - 1].end,
                text,
            });
        }
        let keys = hyp.units[..valid].iter().map(|u| u.key.clone()).collect();
        utt.prev_keys = [keys, std::mem::take(&mut utt.prev_keys[0])];
        utt.decoded_to = hyp.audio_end;
        let uncommitted = valid > utt.committed_units;
        utt.last = Some(hyp);

        let length = seconds(self.total - utt.start);
        if length >= HARD_MAX_BUFFER {
            // Nothing agreed for a whole window: take the hypothesis as it is.
            let end = self.total;
            self.utt = Some(utt);
            self.finish_utterance(engine, end, out);
            self.handle_event(engine, GateEvent::Start(end), out);
            return;
        }
        if length >= self.opts.max_buffer || (!uncommitted && length >= 3.0) {
            self.trim(engine, &mut utt);
        }
        self.utt = Some(utt);
    }

    /// Cuts the buffer at the end of the last closed segment (a timestamp token) whose words are
    /// all committed and which leaves at least LEFT_CONTEXT of audio: the words there are
    /// reliable boundaries, unlike interpolated word times. Committed words after the cut stay
    /// the forced prefix, their timestamps re-based. With nothing heard in the buffer, keeps only
    /// its last second.
    fn trim(&mut self, engine: &mut Transcriber, utt: &mut Utterance) {
        let Some(hyp) = utt.last.as_ref() else {
            return;
        };
        let tok = &engine.model().tokenizer;
        let tb = tok.specials.timestamp_begin;
        let eot = tok.specials.eot;
        let committed = committed_count(hyp, utt.committed_tokens.len());
        // Cut points at most `limit` seconds into the buffer keep LEFT_CONTEXT after them;
        // a buffer over max_buffer without one takes the latest there is (cutting right at the
        // committed text leaves the next words alone: base heard the last 0.7 s of the long
        // recording, "ahead of them", alone after such a cut and wrote "fair.").
        let span = seconds(hyp.audio_end - utt.start);
        let closed_at = |u: &Unit, limit: f64| {
            u.closes
                .map(|at| (at, hyp.result.tokens[at].saturating_sub(tb)))
                .filter(|&(_, ts)| f64::from(ts) * 0.02 <= limit)
        };
        let latest_cut = |limit: f64| {
            hyp.units[..committed]
                .iter()
                .rposition(|u| closed_at(u, limit).is_some())
                .map(|i| (i, limit))
        };
        let mut limit = span - LEFT_CONTEXT;
        let mut cut = latest_cut(limit);
        if cut.is_none() && span >= self.opts.max_buffer {
            limit = f64::INFINITY;
            cut = latest_cut(limit);
        }
        let (offset_ts, keep_from) = match cut {
            Some((i, limit)) => {
                let (at, ts) = closed_at(&hyp.units[i], limit).unwrap_or_default();
                (ts, Some((i + 1, at + 1)))
            }
            None if hyp.valid == 0 && committed == 0 => {
                let secs = seconds(self.total - utt.start) - KEEP_BEFORE;
                ((secs / 0.02).floor().max(0.0) as u32, None)
            }
            None if hyp.aligned && committed > 0 && hyp.units[committed - 1].end <= limit => {
                // No closed segment: cut where the alignment puts the end of the committed
                // words; all of them leave the buffer.
                let secs = hyp.units[committed - 1].end;
                let at = utt.committed_tokens.len();
                ((secs / 0.02).floor().max(0.0) as u32, Some((committed, at)))
            }
            None => return,
        };
        if offset_ts == 0 {
            return;
        }
        // Timestamps past the audio decoded (the model may emit them) cannot be cut at, nor
        // past the onset of speech that resumed after the committed text: no word of it is
        // committed yet.
        let to = utt.start + to_samples(offset_ts as f64 * 0.02);
        let uncommitted_onset = seconds(utt.onset) >= utt.committed_end;
        if to > hyp.audio_end || (keep_from.is_some() && uncommitted_onset && to > utt.onset) {
            trace!(
                "no trim at {:.2} s: speech from {:.2} s, text committed to {:.2} s",
                seconds(to),
                seconds(utt.onset),
                utt.committed_end
            );
            return;
        }
        self.stats.trims += 1;
        trace!("trim {:.2} → {:.2} s", seconds(utt.start), seconds(to));
        let mut prefix = Vec::new();
        if let Some((units_gone, token_from)) = keep_from {
            // Text leaving the buffer becomes prompt context.
            let gone = &hyp.result.tokens[..token_from];
            self.context
                .extend(gone.iter().copied().filter(|&t| t < eot));
            let rest = &utt.committed_tokens[token_from.min(utt.committed_tokens.len())..];
            if rest.iter().any(|&t| t < eot) {
                if rest.first().is_none_or(|&t| t < tb) {
                    prefix.push(tb);
                }
                prefix.extend(rest.iter().map(|&t| {
                    if t >= tb {
                        tb + (t - tb).saturating_sub(offset_ts)
                    } else {
                        t
                    }
                }));
            }
            for keys in &mut utt.prev_keys {
                keys.drain(..units_gone.min(keys.len()));
            }
            utt.committed_units = utt.committed_units.saturating_sub(units_gone);
        } else {
            utt.prev_keys.iter_mut().for_each(Vec::clear);
            utt.committed_units = 0;
        }
        self.trim_context(engine);
        utt.committed_tokens = prefix;
        utt.last = None;
        utt.start = to;
        utt.committed_end = utt.committed_end.max(seconds(to));
        self.settled = self.settled.max(seconds(to).min(utt.committed_end));
        engine.discard_before(frame(to));
    }

    /// Keeps the prompt context within half the text context.
    fn trim_context(&mut self, engine: &Transcriber) {
        let keep = engine.model().dims.n_text_ctx / 2;
        if self.context.len() > keep {
            self.context.drain(..self.context.len() - keep);
        }
    }

    /// Ends the open utterance at sample `end`: commits its final hypothesis whole.
    fn finish_utterance(&mut self, engine: &mut Transcriber, end: u64, out: &mut LiveOutput) {
        let Some(mut utt) = self.utt.take() else {
            return;
        };
        let reusable = utt.last.take_if(|h| h.audio_end + to_samples(0.1) >= end);
        let hyp = match reusable {
            Some(h) => {
                self.stats.reused_finals += 1;
                h
            }
            None => match self.wait_final(engine, &mut utt, seconds(end), out) {
                Some(turn) => {
                    // Step by step, without the last hypothesis as a draft, as the final decode was
                    // measured for the live WER figures.
                    utt.last = None;
                    self.decode(engine, &utt, end, turn)
                }
                None => {
                    // Overload: its text could no longer leave in time.
                    self.leave_out(engine, utt, end, out);
                    return;
                }
            },
        };
        let c = committed_count(&hyp, utt.committed_tokens.len());
        let valid = hyp.valid.max(c);
        if valid > c {
            self.stats.finals += (valid - c) as u64;
            self.commit(engine, &mut utt, &hyp, c, valid, Some(seconds(end)), out);
        }
        // Close the last segment in the prefix, so that a joining utterance starts a new one.
        let tb = engine.model().tokenizer.specials.timestamp_begin;
        if utt.committed_tokens.last().is_some_and(|&t| t < tb) {
            let at = ((seconds(end - utt.start) / 0.02).round() as u32).min(1500);
            utt.committed_tokens.push(tb + at);
        }
        utt.committed_end = utt.committed_end.max(seconds(end));
        utt.paused_at = Some(end);
        utt.last = None;
        for keys in &mut utt.prev_keys {
            keys.truncate(utt.committed_units);
        }
        self.settled = self.settled.max(seconds(end));
        trace!("speech until {:.2} s", seconds(end));
        self.utt = Some(utt);
    }

    /// Emits units `from..to` of `hyp` as one segment and makes them the forced prefix.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        engine: &Transcriber,
        utt: &mut Utterance,
        hyp: &Hypothesis,
        from: usize,
        to: usize,
        speech_end: Option<f64>,
        out: &mut LiveOutput,
    ) {
        let base = seconds(utt.start);
        let first_token = utt.committed_tokens.len().min(hyp.units[from].from);
        let last_token = hyp.units[to - 1].to;
        let specials = &engine.model().tokenizer.specials;
        let text_tokens: Vec<u32> = hyp.result.tokens[first_token..last_token]
            .iter()
            .copied()
            .filter(|&t| t < specials.eot)
            .collect();
        let mut start = base + hyp.units[from].start;
        let mut end = base + hyp.units[to - 1].end;
        if let Some(limit) = speech_end {
            end = end.min(limit);
        }
        end = end.min(seconds(hyp.audio_end));
        start = start.max(utt.committed_end).min(end);
        // A segment the hypothesis closed stays closed in the prefix (its timestamp tokens
        // too): later hypotheses keep the segment structure, and trimming needs it.
        let tb = specials.timestamp_begin;
        let mut prefix_end = last_token;
        if hyp.units[to - 1].closes.is_some() {
            while prefix_end < hyp.result.tokens.len()
                && hyp.result.tokens[prefix_end] >= tb
                && prefix_end < last_token + 2
            {
                prefix_end += 1;
            }
        }
        utt.committed_tokens = hyp.result.tokens[..prefix_end].to_vec();
        utt.committed_units = to;
        utt.committed_end = end;
        // Tokens between the prefix and the first new word continue a word that is already
        // out: punctuation the model added after it (", and" once "coats" went out before its
        // comma), or the rest of the word ("farmers" then "' elbows"). They would start a
        // caption, so they are left out, and so is punctuation starting the first new word.
        let tokenizer = &engine.model().tokenizer;
        let new_text = tokenizer.decode(
            &hyp.result.tokens[hyp.units[from].from..last_token]
                .iter()
                .copied()
                .filter(|&t| t < specials.eot)
                .collect::<Vec<u32>>(),
        );
        let shown = without_leading_punctuation(new_text.trim());
        if shown.is_empty() {
            return;
        }
        let words = hyp.units[from..to]
            .iter()
            .enumerate()
            .filter_map(|(i, u)| {
                let mut text = tokenizer.decode(&hyp.result.tokens[u.from..u.to]);
                if i == 0 {
                    let kept = without_leading_punctuation(text.trim());
                    text = if kept.len() < text.trim().len() {
                        format!(" {kept}")
                    } else {
                        text
                    };
                }
                let word_start = (base + u.start).clamp(start, end);
                (!text.trim().is_empty()).then(|| Word {
                    text,
                    start: word_start,
                    end: (base + u.end).clamp(word_start, end),
                    probability: None,
                })
            })
            .collect();
        trace!(
            "commit {start:.2}–{end:.2} s{}, {:.2} s after its end (lag {:.2}): {shown:?}",
            if speech_end.is_some() {
                " (utterance end)"
            } else {
                ""
            },
            seconds(self.total) + self.lag() - end,
            self.lag()
        );
        out.segments.push(Segment {
            start,
            end,
            text: shown.to_string(),
            tokens: text_tokens,
            avg_logprob: hyp.result.avg_logprob,
            no_speech_prob: hyp.result.no_speech_prob,
            temperature: hyp.result.temperature,
            compression_ratio: hyp.result.compression_ratio,
            language: engine.language().unwrap_or_default().to_string(),
            words,
        });
    }

    /// How soon `utt` must be decoded: `None` when its text waits on the decode (the end of
    /// the utterance), else the seconds left before its oldest word not yet final would miss
    /// the latency budget (0 when already late).
    fn slack(&self, utt: &Utterance) -> Option<f64> {
        let finishing =
            utt.paused_at.is_some() || self.gate.trailing_silence() >= self.opts.early_final;
        if finishing {
            return None;
        }
        let oldest = utt.committed_end.max(seconds(utt.start));
        let ahead = self.decode_seconds + self.turn_wait + self.lag();
        Some((oldest + self.opts.latency - seconds(self.total) - ahead).max(0.0))
    }

    /// The latency budget: words starting before this (stream seconds) would leave after
    /// start + latency if they waited for the decode after the next one (the stream's recent
    /// decode time and wait for a turn, and how late its audio is, counted). A fixed step, for
    /// reproducible runs, also leaves the decode time out.
    fn forced_horizon(&self) -> f64 {
        let d = if self.opts.headroom > 0.0 {
            self.decode_seconds + self.turn_wait
        } else {
            0.0
        };
        seconds(self.total) + self.lag() + self.opts.step.max(d) + d - self.opts.latency
    }

    /// The audio time (stream seconds) before which a decode starting now could no longer have
    /// its text out within `latency + lateness`: the stream's lag, the slowest recent turn on
    /// the pool (this stream's decodes among them, their alignment pass included) and a margin
    /// for a decode that runs slower than measured (the cores oversubscribed) counted.
    fn give_up_horizon(&self, engine: &Transcriber) -> f64 {
        let budget = self.opts.latency + self.opts.lateness;
        let margin = (GIVE_UP_MARGIN * budget).max(0.2);
        seconds(self.total)
            + self.lag()
            + margin
            + self.decode_seconds.max(engine.decode_turn_seconds())
            - budget
    }

    /// The start (stream seconds) of the oldest word not yet final: as the last decode heard
    /// it, else the end of the committed text.
    fn oldest_pending(utt: &Utterance) -> f64 {
        let committed = utt.committed_end.max(seconds(utt.start));
        let heard = utt.last.as_ref().and_then(|h| {
            let c = committed_count(h, utt.committed_tokens.len());
            (c < h.valid).then(|| seconds(utt.start) + h.units[c].start)
        });
        heard.map_or(committed, |h| h.max(committed))
    }

    /// Commits, as the last decode heard them, the words not yet final that start before
    /// `horizon` (stream seconds): when no decode can come in time for them (the wait for a turn
    /// gave up), their text still leaves within the budget, forced, instead of late. Whether it
    /// committed any.
    fn force_from_last(
        &mut self,
        engine: &Transcriber,
        utt: &mut Utterance,
        horizon: f64,
        out: &mut LiveOutput,
    ) -> bool {
        let Some(hyp) = utt.last.take() else {
            return false;
        };
        let c = committed_count(&hyp, utt.committed_tokens.len());
        let valid = hyp.valid.max(c);
        let base = seconds(utt.start);
        let k = starting_before(&hyp, c..valid, base, horizon);
        if k > 0 {
            trace!("no turn in time: {k} words forced from the last decode");
            self.stats.forced += k as u64;
            self.commit(engine, utt, &hyp, c, c + k, None, out);
        }
        utt.last = Some(hyp);
        k > 0
    }

    /// Waits for the turn of a decode that ends the utterance (its text waits on it), measured
    /// from `speech_end` (see [`Self::wait_turn`]). Older words not yet final have earlier
    /// limits: while the oldest one's passes first, the words the last decode heard that can
    /// no longer wait go out as it heard them ([`Self::force_from_last`]) and the wait goes on
    /// for the rest.
    fn wait_final(
        &mut self,
        engine: &Transcriber,
        utt: &mut Utterance,
        speech_end: f64,
        out: &mut LiveOutput,
    ) -> Option<Turn> {
        while utt.last.is_some() {
            let oldest = Self::oldest_pending(utt);
            if oldest >= speech_end {
                break;
            }
            if let Some(turn) = self.wait_turn(engine, None, oldest) {
                return Some(turn);
            }
            if !self.force_from_last(engine, utt, self.give_up_horizon(engine), out) {
                break;
            }
        }
        self.wait_turn(engine, None, speech_end)
    }

    /// Waits for this stream's turn to decode among the live transcribers sharing the workers:
    /// utterance ends first (`slack` `None`), then by deadline (`slack` seconds from now; see
    /// [`super::schedule`]). `due`: the audio time (seconds) from which the decode's text is
    /// measured: the wait gives up (`None`) when the text could no longer leave within
    /// `latency + lateness` of it.
    fn wait_turn(&mut self, engine: &Transcriber, slack: Option<f64>, due: f64) -> Option<Turn> {
        let now = Instant::now();
        let give_up = {
            let left = due - self.give_up_horizon(engine);
            now + Duration::from_secs_f64(left.clamp(0.0, 3600.0))
        };
        let deadline = match slack {
            Some(slack) => now + Duration::from_secs_f64(slack),
            // Ahead of every re-decode; among utterance ends, the one whose text must leave
            // first goes first.
            None => give_up.checked_sub(URGENT_AHEAD).unwrap_or(now),
        };
        let turn = engine.decode_turn(deadline, give_up);
        let waited = now.elapsed().as_secs_f64();
        self.turn_wait = 0.7 * self.turn_wait + 0.3 * waited;
        trace!(
            "waited {:.0} ms for a turn{}",
            waited * 1000.0,
            if turn.is_none() { ", gave up" } else { "" }
        );
        turn
    }

    /// Leaves the utterance's speech not yet committed, up to sample `end`, untranscribed
    /// (reported in `out.skipped`) and closes its buffer: a later decode must not find that
    /// speech after its committed text.
    fn leave_out(
        &mut self,
        engine: &mut Transcriber,
        mut utt: Utterance,
        end: u64,
        out: &mut LiveOutput,
    ) {
        let from = utt.committed_end.max(seconds(utt.start));
        let to = seconds(end).max(from);
        trace!("left out {from:.2}–{to:.2} s: no turn in time");
        self.stats.given_up += 1;
        self.stats.left_out += to - from;
        if to > from {
            out.skipped.push((from, to));
        }
        utt.committed_end = to;
        utt.paused_at = Some(end);
        utt.last = None;
        self.settled = self.settled.max(to);
        self.utt = Some(utt);
        self.close_buffer(engine);
    }

    /// Decodes the utterance's buffer up to sample `end` on `turn`.
    fn decode(
        &mut self,
        engine: &mut Transcriber,
        utt: &Utterance,
        end: u64,
        turn: Turn,
    ) -> Hypothesis {
        let t0 = Instant::now();
        let opts = engine.options().clone();
        // The turn's threads: all of the pool, or one while other streams' decodes queue.
        let threads = engine.set_threads(turn.threads());
        let context: &[u32] = if opts.condition_on_previous_text {
            &self.context
        } else {
            &[]
        };
        // Speech resumed after the committed text and went on for GO_ON_AFTER: the decoder may
        // not end the text right after the prefix. (After a pause the prefix ends in a closed
        // segment, and the decoder often ended there, ignoring the new words for several
        // decodes.)
        let resumed = seconds(utt.onset) >= utt.committed_end;
        let go_on = !utt.committed_tokens.is_empty()
            && resumed
            && seconds(end.saturating_sub(utt.onset)) >= GO_ON_AFTER;
        // The previous decode's tokens after the committed ones: most of them come again, and
        // the decoder takes those that do in one call (`WindowInput::draft`).
        let draft = utt
            .last
            .as_ref()
            .filter(|_| self.opts.draft)
            .and_then(|h| {
                h.result
                    .tokens
                    .strip_prefix(utt.committed_tokens.as_slice())
            })
            .unwrap_or_default();
        let result = engine.decode_span(
            frame(utt.start),
            frame(end),
            context,
            &utt.committed_tokens,
            draft,
            &[0.0],
            go_on,
        );
        crate::fault::slow_decode(t0);
        let elapsed = t0.elapsed().as_secs_f64();
        self.decode_seconds = if self.stats.decodes == 0 {
            elapsed
        } else {
            0.7 * self.decode_seconds + 0.3 * elapsed
        };
        self.stats.decodes += 1;
        let span = seconds(end - utt.start);
        let tokenizer = &engine.model().tokenizer;
        let cjk = matches!(
            engine.language(),
            Some("zh" | "ja" | "th" | "lo" | "my" | "yue" | "km")
        );
        let mut units = split_units(tokenizer, &result.tokens, span, cjk);
        let aligned = self.align(
            engine,
            &result.tokens,
            &mut units,
            frame(end) - frame(utt.start),
            span,
        );
        engine.set_threads(threads);
        drop(turn);
        let prefix = utt.committed_tokens.len();
        let c = units.iter().take_while(|u| u.from < prefix).count();
        let mut valid = units.len();
        // Stricter than offline, where a confident decode (avg_logprob above its threshold)
        // overrides the no-speech probability: over short live buffers Whisper is often
        // confident about text it invents ("you", "Thank you.").
        let no_speech = opts
            .no_speech_threshold
            .is_some_and(|ns| result.no_speech_prob > ns);
        if no_speech {
            self.stats.no_speech += 1;
            valid = c;
        } else {
            let keys: Vec<&str> = units[c..].iter().map(|u| u.key.as_str()).collect();
            if let Some(cut) = repetition_cut(&keys) {
                self.stats.loops_cut += 1;
                valid = c + cut;
            } else if opts
                .compression_ratio_threshold
                .is_some_and(|cr| result.compression_ratio > cr)
            {
                // Repetitive without a clean n-gram loop: nothing new is trusted.
                self.stats.loops_cut += 1;
                valid = c;
            }
            // Nobody speaks faster than ~6 words a second: the rest is invented.
            let heard = span - units.get(c.wrapping_sub(1)).map_or(0.0, |u| u.end);
            let plausible = c + (heard.max(0.0) * MAX_WORDS_PER_SECOND).ceil() as usize + 2;
            if valid > plausible {
                self.stats.loops_cut += 1;
                valid = plausible;
            }
        }
        trace!(
            "decoded {:.2}–{:.2} s in {:.0} ms (no-speech {:.2}, logprob {:.2}): {:?}",
            seconds(utt.start),
            seconds(end),
            elapsed * 1000.0,
            result.no_speech_prob,
            result.avg_logprob,
            text_of(engine, &result.tokens)
        );
        Hypothesis {
            result,
            units,
            valid,
            audio_end: end,
            aligned,
        }
    }

    /// Word times from cross-attention alignment (openai's word timestamps) instead of the
    /// interpolation between timestamp tokens. Returns whether it applied.
    fn align(
        &mut self,
        engine: &mut Transcriber,
        tokens: &[u32],
        units: &mut [Unit],
        frames: usize,
        span: f64,
    ) -> bool {
        let eot = engine.model().tokenizer.specials.eot;
        let mut text = Vec::with_capacity(tokens.len());
        let mut index = vec![0usize; tokens.len()];
        for (i, &t) in tokens.iter().enumerate() {
            index[i] = text.len();
            if t < eot {
                text.push(t);
            }
        }
        let Some(times) = engine.align(&text, frames) else {
            return false;
        };
        for k in 0..units.len() {
            let first = index[units[k].from];
            let next = units.get(k + 1).map_or(text.len(), |u| index[u.from]);
            let (Some(&a), Some(&b)) = (times.get(first), times.get(next)) else {
                return false;
            };
            units[k].start = a.min(span);
            units[k].end = b.max(a).min(span);
        }
        true
    }
}

/// `text` without the sentence punctuation (and spaces) it starts with.
fn without_leading_punctuation(text: &str) -> &str {
    text.trim_start_matches(|c: char| {
        matches!(
            c,
            ',' | '.' | ';' | ':' | '!' | '?' | '，' | '、' | '。' | '！' | '？'
        ) || c.is_whitespace()
    })
}

/// The initial prompt's tokens, when set.
fn initial_context(engine: &Transcriber) -> Vec<u32> {
    match engine.options().initial_prompt.as_deref().map(str::trim) {
        Some(p) if !p.is_empty() => engine.model().tokenizer.encode(&format!(" {p}")),
        _ => Vec::new(),
    }
}

fn engine_first_sample(engine: &Transcriber) -> u64 {
    engine.first_frame() as u64 * HOP_LENGTH as u64
}

/// A word of a hypothesis after its committed ones, as agreement sees it.
struct Heard<'a> {
    key: &'a str,
    /// Seconds from the buffer start (cross-attention alignment).
    end: f64,
    /// [`word_logprob`].
    logprob: f32,
}

/// How many of `words` (a hypothesis after its committed words, those that passed the guards)
/// are final by agreement, `prev` and `prev2` being the two hypotheses before it from the same
/// place on and `span` the seconds of audio decoded: LocalAgreement-2, the longest common
/// prefix with the previous hypothesis, except the hypothesis' last word and words that end
/// less than RIGHT_CONTEXT before the audio does; a word the decoder was unsure of
/// (UNSURE_LOGPROB) also needs `prev2`.
fn agreement(words: &[Heard<'_>], prev: &[String], prev2: &[String], span: f64) -> usize {
    let heard = span - RIGHT_CONTEXT;
    let agreed = words
        .iter()
        .enumerate()
        .take_while(|&(i, w)| {
            prev.get(i).is_some_and(|p| p == w.key)
                && w.end <= heard
                && (w.logprob >= UNSURE_LOGPROB || prev2.get(i).is_some_and(|p| p == w.key))
        })
        .count();
    if agreed == words.len() {
        agreed.saturating_sub(1)
    } else {
        agreed
    }
}

/// The lowest log-probability the decoder gave a token of unit `k` of `hyp` (0 for the forced
/// prefix, and when the decoder kept none: beam search).
fn word_logprob(hyp: &Hypothesis, k: usize, prefix: usize) -> f32 {
    let u = &hyp.units[k];
    (u.from.max(prefix)..u.to)
        .filter_map(|i| hyp.result.token_logprobs.get(i - prefix))
        .fold(0.0, |m, &lp| m.min(lp))
}

/// How many of `hyp`'s units `units` (in order) start before `horizon`, `base` being the
/// buffer's start (stream seconds).
fn starting_before(
    hyp: &Hypothesis,
    units: std::ops::Range<usize>,
    base: f64,
    horizon: f64,
) -> usize {
    units
        .take_while(|&k| base + hyp.units[k].start < horizon)
        .count()
}

/// Units of `hyp` made of forced-prefix tokens.
fn committed_count(hyp: &Hypothesis, prefix: usize) -> usize {
    hyp.units.iter().take_while(|u| u.from < prefix).count()
}

fn text_of(engine: &Transcriber, tokens: &[u32]) -> String {
    let eot = engine.model().tokenizer.specials.eot;
    let text: Vec<u32> = tokens.iter().copied().filter(|&t| t < eot).collect();
    engine.model().tokenizer.decode(&text).trim().to_string()
}

/// Splits a hypothesis (text and timestamp tokens, no EOT) into words with times: a word starts
/// at a token beginning with a space (every token when `each_token`); a word's time is
/// interpolated by byte count within its segment (between the segment's timestamp tokens; an
/// open last segment ends at `span`).
fn split_units(tok: &Tokenizer, tokens: &[u32], span: f64, each_token: bool) -> Vec<Unit> {
    let tb = tok.specials.timestamp_begin;
    let eot = tok.specials.eot;
    let ts = |t: u32| (t - tb) as f64 * 0.02;
    let mut units: Vec<Unit> = Vec::new();
    // Current segment: start time, first unit index, byte offsets of its units.
    let mut seg_start = 0.0f64;
    let mut seg_first = 0usize;
    let mut seg_bytes: Vec<(usize, usize)> = Vec::new();
    let mut seg_len = 0usize;
    let mut last_end = 0.0f64;

    let close = |units: &mut Vec<Unit>,
                 seg_first: usize,
                 seg_bytes: &[(usize, usize)],
                 seg_len: usize,
                 start: f64,
                 end: f64| {
        let end = end.max(start);
        let total = seg_len.max(1) as f64;
        for (u, &(b0, b1)) in units[seg_first..].iter_mut().zip(seg_bytes) {
            u.start = start + (end - start) * b0 as f64 / total;
            u.end = start + (end - start) * b1 as f64 / total;
        }
    };

    for (i, &t) in tokens.iter().enumerate() {
        if t >= tb {
            let time = ts(t);
            if seg_bytes.is_empty() {
                seg_start = time.max(last_end);
            } else {
                close(&mut units, seg_first, &seg_bytes, seg_len, seg_start, time);
                if let Some(u) = units.last_mut() {
                    u.closes = Some(i);
                }
                last_end = time;
                seg_bytes.clear();
                seg_len = 0;
                seg_first = units.len();
                seg_start = time;
            }
            continue;
        }
        if t >= eot {
            continue;
        }
        let bytes = tok.token_bytes(t);
        let starts_word = each_token || bytes.first() == Some(&b' ') || seg_bytes.is_empty();
        let n = bytes.len();
        if starts_word {
            units.push(Unit {
                from: i,
                to: i + 1,
                key: String::new(),
                start: 0.0,
                end: 0.0,
                closes: None,
            });
            seg_bytes.push((seg_len, seg_len + n));
        } else if let (Some(u), Some(b)) = (units.last_mut(), seg_bytes.last_mut()) {
            u.to = i + 1;
            b.1 += n;
        }
        seg_len += n;
    }
    if !seg_bytes.is_empty() {
        close(
            &mut units,
            seg_first,
            &seg_bytes,
            seg_len,
            seg_start,
            span.max(seg_start),
        );
    }
    for u in &mut units {
        let text = tok.decode(&tokens[u.from..u.to]);
        u.key = text
            .chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect();
    }
    units
}

/// Where an n-gram loop starts repeating: `Some(i)` keeps `keys[..i]` (the first occurrence).
/// A loop is a 1-gram repeated 4 times or a 2..16-gram repeated 3 times in a row.
fn repetition_cut(keys: &[&str]) -> Option<usize> {
    for i in 0..keys.len() {
        for n in 1..=16 {
            let needed = if n == 1 { 4 } else { 3 };
            if i + n * needed > keys.len() {
                break;
            }
            let gram = &keys[i..i + n];
            if gram.iter().all(|k| k.is_empty()) {
                continue;
            }
            let mut reps = 1;
            while i + (reps + 1) * n <= keys.len()
                && keys[i + reps * n..i + (reps + 1) * n] == *gram
            {
                reps += 1;
            }
            if reps >= needed {
                return Some(i + n);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsure_words_need_three_hypotheses() {
        let w = |key: &'static str, end: f64, logprob: f32| Heard { key, end, logprob };
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let sure = -0.1;
        let unsure = -1.0;
        // "the old city" heard 3 s: "the" is sure, "old" unsure, "city" the last word.
        let words = [
            w("the", 0.5, sure),
            w("old", 1.0, unsure),
            w("city", 1.6, sure),
        ];
        let prev = keys(&["the", "old", "baby"]);
        // Two hypotheses agree: only the sure word is final.
        assert_eq!(agreement(&words, &prev, &[], 3.0), 1);
        // A third one agrees too: the unsure word is final as well.
        assert_eq!(agreement(&words, &prev, &keys(&["the", "old"]), 3.0), 2);
        // ... but not when the one before said something else.
        assert_eq!(agreement(&words, &prev, &keys(&["the", "cold"]), 3.0), 1);
        // Sure words agreeing with the previous hypothesis, never the last word.
        let all_sure = [
            w("the", 0.5, sure),
            w("old", 1.0, sure),
            w("city", 1.6, sure),
        ];
        assert_eq!(
            agreement(&all_sure, &keys(&["the", "old", "city"]), &[], 3.0),
            2
        );
        // A word ending less than RIGHT_CONTEXT before the audio does waits.
        assert_eq!(
            agreement(&all_sure, &keys(&["the", "old", "city"]), &[], 1.3),
            1
        );
        assert_eq!(agreement(&all_sure, &[], &[], 3.0), 0);
        assert_eq!(agreement(&[], &prev, &prev, 3.0), 0);
    }

    #[test]
    fn captions_do_not_start_with_punctuation() {
        assert_eq!(without_leading_punctuation(", and nobody"), "and nobody");
        assert_eq!(without_leading_punctuation(". The sky"), "The sky");
        assert_eq!(without_leading_punctuation(","), "");
        assert_eq!(
            without_leading_punctuation("\"Quoted\", she said"),
            "\"Quoted\", she said"
        );
        assert_eq!(without_leading_punctuation("...and so"), "and so");
    }

    #[test]
    fn loops_are_cut_at_the_first_occurrence() {
        let k = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        let cut = |s: &str| {
            let keys = k(s);
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            repetition_cut(&refs)
        };
        assert_eq!(cut("thank you thank you thank you"), Some(2));
        assert_eq!(cut("so i said you you you you you"), Some(4));
        assert_eq!(cut("no no no we will not"), None);
        assert_eq!(
            cut("ask not what your country can do for you ask what you can do"),
            None
        );
        assert_eq!(cut("a b c d a b c d a b c d e"), Some(4));
    }

    #[test]
    fn always_speech_opens_once_and_closes_at_flush() {
        let mut g = AlwaysSpeech::default();
        assert_eq!(g.push(&[0.0; 10]), vec![GateEvent::Start(0)]);
        assert!(g.push(&[0.0; 10]).is_empty());
        assert_eq!(g.flush(), vec![GateEvent::End(20)]);
        assert!(g.flush().is_empty());
    }
}
