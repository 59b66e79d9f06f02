//! The long-form seek loop (openai/whisper `transcribe()`), fed incrementally.

use std::sync::Arc;
use std::time::Instant;

use super::schedule::{Turn, Workers, shared_workers};
use super::words::{self, get_end, is_segment_anomaly};
use super::{
    EncoderBackend, LIVE_LANGUAGE_LOCK, LIVE_LANGUAGE_MIN_SECONDS, LanguageDetection, Segment,
    SpeechFilter, TranscribeOptions,
};
use crate::audio::mel::{MelFrontend, MelStream};
use crate::audio::{FRAME_SECONDS, HOP_LENGTH, N_FRAMES, SAMPLE_RATE};
use crate::decode::{DecodeParams, DecodeResult, LogitFilters, Rng, WindowInput, decode_window};
use crate::engine::cpu::resident;
use crate::engine::npu::host::NpuEncoder;
use crate::engine::worker::{EncoderWorker, Guess, NpuStats};
use crate::engine::{Decoder, Encoder, WhisperModel};
use crate::error::Error;
use crate::transcribe::{TailPadding, Task};

/// Seconds per timestamp token.
const TIME_PRECISION: f64 = 0.02;
/// Mel frames per encoder position (and per timestamp step).
const INPUT_STRIDE: usize = 2;

/// Work counters, for benchmarks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub windows: u64,
    pub mel_seconds: f64,
    pub encoder_seconds: f64,
    pub decoder_seconds: f64,
    /// Decoder forward calls (one per generated token step, plus one per prompt).
    pub decoder_calls: u64,
    /// Tokens sampled (all beams/candidates counted once per step).
    pub decoder_tokens: u64,
    /// Windows decoded more than once by the temperature fallback.
    pub fallbacks: u64,
    /// Segments skipped as hallucinations between silences (`hallucination_silence_threshold`).
    pub hallucinations_skipped: u64,
    /// Offline VAD (`vad_filter`): seconds of audio passed to the decoder, and seconds left out
    /// as not speech.
    pub vad_speech_seconds: f64,
    pub vad_skipped_seconds: f64,
}

/// Incremental transcriber. Push 16 kHz mono f32 samples; every complete 30 s window is decoded
/// as soon as it is available; [`flush_available`](Self::flush_available) decodes what is
/// buffered now (live chunking) and [`finish`](Self::finish) drains at end of stream. Segment
/// times count from the first sample pushed since creation or the last [`reset`](Self::reset).
///
/// The log-mel of a window is normalised with the maximum over the audio up to the window's end
/// (openai uses the whole file's maximum, which only a non-streaming reader can know; the two are
/// equal for audio up to 30 s).
pub struct Transcriber {
    model: Arc<WhisperModel>,
    opts: TranscribeOptions,
    mel: MelStream,
    /// Next window start, in mel frames since the stream start.
    seek: usize,
    /// Windows decoded since the last reset (the first one takes the `prefix`).
    windows_since_reset: usize,
    /// Text tokens (with timestamps) of the stream so far, for conditioning.
    all_tokens: Vec<u32>,
    prompt_reset_since: usize,
    /// End of the last word (or segment) decoded, seconds: openai's `last_speech_timestamp`.
    last_speech_timestamp: f64,
    language: Option<String>,
    language_token: Option<u32>,
    /// The last language identification, when the language was not given.
    detection: Option<LanguageDetection>,
    /// The model's own encoder (native CPU or ONNX Runtime).
    encoder: Box<dyn Encoder>,
    /// The encoder output of the current window, `[n_audio_ctx][d]`.
    enc_out: Vec<f32>,
    /// The encoder on its worker thread (speculating the next window): the NPU's with
    /// `EncoderBackend::{Npu, NpuSim}`, or the model's own when ONNX Runtime runs it on an
    /// accelerator.
    npu: Option<EncoderWorker>,
    /// Why the NPU encoder was given up (a run failed or timed out); the CPU encodes since.
    npu_failure: Option<String>,
    /// The speculative next window's mel (see `crate::engine::npu::worker`).
    spec_window: Vec<f32>,
    dec: Box<dyn Decoder>,
    /// The first error of the engine (ONNX Runtime failing mid-stream): decoding stops and the
    /// next call of the public API returns it.
    failure: Option<Error>,
    mel_window: Vec<f32>,
    /// The process-wide workers of this thread count, shared by every transcriber (and element)
    /// of the process that asks for as many threads, with their live-decode scheduler
    /// ([`shared_workers`]).
    pool: Arc<Workers>,
    threads: usize,
    rng: Rng,
    stats: Stats,
    /// Offline VAD (`vad_filter`): opened by the first [`push`](Self::push) (live decoding,
    /// which has its own gate, never opens it).
    speech: Option<SpeechFilter>,
    /// Speech passed on by `speech`, reused between pushes.
    speech_buf: Vec<f32>,
    /// A problem to report once (the VAD fell back to another detector).
    warning: Option<String>,
}

impl Transcriber {
    pub fn new(model: Arc<WhisperModel>, opts: TranscribeOptions) -> Result<Self, Error> {
        Self::build(model, opts, None)
    }

    /// A transcriber whose encoder is `encoder`, an NPU host encoder the caller built (for
    /// example on a simulated device with a fault injected); `opts.backend` must be `npu` or
    /// `npu-sim`.
    pub fn with_npu_encoder(
        model: Arc<WhisperModel>,
        opts: TranscribeOptions,
        encoder: Box<dyn Encoder>,
    ) -> Result<Self, Error> {
        if !opts.backend.is_npu() {
            return Err(Error::InvalidOption {
                option: "backend",
                why: format!("`{}` does not take an NPU encoder", opts.backend.as_str()),
            });
        }
        Self::build(model, opts, Some(encoder))
    }

    fn build(
        model: Arc<WhisperModel>,
        opts: TranscribeOptions,
        encoder: Option<Box<dyn Encoder>>,
    ) -> Result<Self, Error> {
        opts.validate()?;
        let threads = if opts.n_threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            opts.n_threads
        };
        let pool = shared_workers(threads)?;
        let dims = model.dims.clone();
        let frontend = Arc::new(MelFrontend::new(dims.n_mels));
        let mut me = Self {
            mel: MelStream::new(frontend),
            seek: 0,
            windows_since_reset: 0,
            all_tokens: Vec::new(),
            prompt_reset_since: 0,
            last_speech_timestamp: 0.0,
            language: None,
            language_token: None,
            detection: None,
            encoder: model.new_encoder(),
            enc_out: resident(dims.n_audio_ctx * dims.n_audio_state, 0.0),
            npu: npu_for(&model, &opts, threads, encoder)?,
            npu_failure: None,
            spec_window: vec![0.0; dims.n_mels * N_FRAMES],
            dec: model.new_decoder(16),
            failure: None,
            mel_window: resident(dims.n_mels * N_FRAMES, 0.0),
            pool,
            threads,
            rng: Rng::new(0),
            stats: Stats::default(),
            speech: None,
            speech_buf: Vec::new(),
            warning: None,
            model,
            opts,
        };
        me.check_language()?;
        me.reset();
        Ok(me)
    }

    /// Dispatches of the NPU encoder so far, with an NPU backend: one per window, plus one per
    /// discarded speculative window ([`npu_stats`](Self::npu_stats)).
    pub fn npu_dispatches(&self) -> Option<u64> {
        self.npu_stats().map(|s| s.dispatches)
    }

    /// Counters of the NPU encoder (windows, dispatches, speculative hits and misses,
    /// failures), with an NPU backend.
    pub fn npu_stats(&self) -> Option<NpuStats> {
        self.npu.as_ref().map(EncoderWorker::stats)
    }

    /// Why the NPU encoder was given up, if it was: a run failed or timed out, so that window
    /// and every later one were encoded on the CPU instead.
    pub fn npu_failure(&self) -> Option<&str> {
        self.npu_failure.as_deref()
    }

    /// The model this transcriber runs.
    pub fn model(&self) -> &Arc<WhisperModel> {
        &self.model
    }

    pub fn options(&self) -> &TranscribeOptions {
        &self.opts
    }

    /// Replaces the options; they apply from the next window on. A change of language or of the
    /// initial prompt takes effect at the next reset.
    pub fn set_options(&mut self, opts: TranscribeOptions) -> Result<(), Error> {
        opts.validate()?;
        if opts.backend != self.opts.backend {
            self.npu = npu_for(&self.model, &opts, self.threads, None)?;
            self.npu_failure = None;
        }
        let old = std::mem::replace(&mut self.opts, opts);
        if let Err(e) = self.check_language() {
            self.opts = old;
            return Err(e);
        }
        Ok(())
    }

    /// Work counters since creation.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn check_language(&self) -> Result<(), Error> {
        let tok = &self.model.tokenizer;
        if let Some(code) = &self.opts.language {
            if !self.model.is_multilingual() {
                if !code.to_ascii_lowercase().starts_with("en") {
                    return Err(Error::InvalidOption {
                        option: "language",
                        why: format!("the model is English-only; `{code}` is not available"),
                    });
                }
            } else if tok.language_token(code).is_none() {
                return Err(Error::InvalidOption {
                    option: "language",
                    why: format!("`{code}` is not a language code Whisper knows (e.g. en, de, fr)"),
                });
            }
        }
        if self.opts.task == Task::Translate && !self.model.is_multilingual() {
            return Err(Error::InvalidOption {
                option: "task",
                why: "translate needs a multilingual model (e.g. base, not tiny.en)".into(),
            });
        }
        Ok(())
    }

    /// Appends samples and decodes every complete window. Returns the new segments. With
    /// `vad_filter`, only the speech among the samples reaches the decoder and the segments'
    /// times are the stream's.
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<Segment>, Error> {
        let Some(vad) = self.opts.vad_filter.clone() else {
            return self.push_engine(samples);
        };
        if self.speech.as_ref().is_none_or(|f| f.options() != &vad) {
            let mut f = SpeechFilter::new(vad);
            if let Some(w) = f.take_warning() {
                self.warning = Some(w);
            }
            self.speech = Some(f);
        }
        self.filtered(|f, speech| f.push(samples, speech))
    }

    /// Runs `step` on the offline VAD (it appends the speech it settles to a buffer), decodes
    /// that speech and maps the segments to stream time; nothing without the VAD.
    fn filtered(
        &mut self,
        step: impl FnOnce(&mut SpeechFilter, &mut Vec<f32>),
    ) -> Result<Vec<Segment>, Error> {
        let Some(f) = self.speech.as_mut() else {
            return Ok(Vec::new());
        };
        let mut speech = std::mem::take(&mut self.speech_buf);
        speech.clear();
        step(f, &mut speech);
        let out = self.push_engine(&speech);
        self.speech_buf = speech;
        self.mapped(out)
    }

    /// Stream times for segments decoded from the VAD's speech.
    fn mapped(&mut self, out: Result<Vec<Segment>, Error>) -> Result<Vec<Segment>, Error> {
        let mut out = out?;
        if let Some(f) = &mut self.speech {
            if let Some(w) = f.take_warning() {
                self.warning.get_or_insert(w);
            }
            for seg in &mut out {
                f.map_segment(seg);
            }
            self.stats.vad_speech_seconds = f.passed() as f64 / SAMPLE_RATE as f64;
            self.stats.vad_skipped_seconds = f.dropped() as f64 / SAMPLE_RATE as f64;
        }
        Ok(out)
    }

    /// A problem met while running, reported once: the offline VAD could not load Silero and
    /// uses the energy detector.
    pub fn take_warning(&mut self) -> Option<String> {
        self.warning.take()
    }

    /// The offline VAD's detector (`silero` or `energy`), once opened.
    pub fn vad_detector(&self) -> Option<&'static str> {
        self.speech.as_ref().map(SpeechFilter::detector)
    }

    /// [`push`](Self::push) without the VAD.
    fn push_engine(&mut self, samples: &[f32]) -> Result<Vec<Segment>, Error> {
        let t0 = Instant::now();
        self.mel.push(samples);
        self.stats.mel_seconds += t0.elapsed().as_secs_f64();
        let mut out = Vec::new();
        loop {
            let ready = self.mel.frames_available().min(self.mel.content_frames());
            if ready < self.seek + N_FRAMES {
                break;
            }
            self.decode_window(N_FRAMES, None, Horizon::Complete { ready }, &mut out);
            if self.failure.is_some() {
                break;
            }
        }
        self.mel.trim_before(self.seek);
        self.check_failure()?;
        Ok(out)
    }

    /// Records the engine's first error; decoding stops and the public API returns it.
    fn fail(&mut self, e: Error) {
        if self.failure.is_none() {
            self.failure = Some(e);
        }
    }

    /// The engine's error, if it failed (the transcriber is then reset).
    fn check_failure(&mut self) -> Result<(), Error> {
        match self.failure.take() {
            Some(e) => {
                self.reset();
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Live: the engine's error, if it failed since the last call.
    pub(crate) fn take_failure(&mut self) -> Result<(), Error> {
        self.check_failure()
    }

    /// Decodes all audio buffered so far (as if it ended here) but keeps the stream open and the
    /// text context: for live chunking.
    pub fn flush_available(&mut self) -> Result<Vec<Segment>, Error> {
        let content = self.mel.frames_available().min(self.mel.content_frames());
        let out = self.decode_until(content, false);
        self.mel.trim_before(self.seek);
        self.check_failure()?;
        self.mapped(Ok(out))
    }

    /// End of stream: decodes everything left. The transcriber is then reset.
    pub fn finish(&mut self) -> Result<Vec<Segment>, Error> {
        let mut out = self.filtered(SpeechFilter::finish)?;
        let t0 = Instant::now();
        self.mel.finish();
        self.stats.mel_seconds += t0.elapsed().as_secs_f64();
        let content = self.mel.content_frames();
        let rest = self.decode_until(content, true);
        let rest = self.mapped(Ok(rest));
        self.reset();
        self.check_failure()?;
        out.extend(rest?);
        Ok(out)
    }

    /// Decodes windows until `seek` reaches `content` frames, the last one possibly partial;
    /// `at_end`: the audio ends there.
    fn decode_until(&mut self, content: usize, at_end: bool) -> Vec<Segment> {
        let mut out = Vec::new();
        while self.seek < content && self.failure.is_none() {
            let size = (content - self.seek).min(N_FRAMES);
            self.decode_window(
                size,
                at_end.then_some(content),
                Horizon::Until { content },
                &mut out,
            );
        }
        out
    }

    /// Forgets audio, text context and the detected language.
    pub fn reset(&mut self) {
        if let Some(npu) = self.npu.as_mut()
            && let Err(e) = npu.cancel()
        {
            npu.count_failure();
            self.npu_failure = Some(e.to_string());
        }
        self.mel.reset();
        if let Some(f) = &mut self.speech {
            f.reset();
        }
        self.seek = 0;
        self.windows_since_reset = 0;
        self.all_tokens.clear();
        self.prompt_reset_since = 0;
        self.last_speech_timestamp = 0.0;
        if let Some(prompt) = self.opts.initial_prompt.as_deref().map(str::trim)
            && !prompt.is_empty()
        {
            let tokens = self.model.tokenizer.encode(&format!(" {prompt}"));
            self.all_tokens.extend(tokens);
        }
        self.language = None;
        self.language_token = None;
        if !self.model.is_multilingual() {
            self.language = Some("en".into());
        } else if let Some(code) = &self.opts.language {
            self.language_token = self.model.tokenizer.language_token(code);
            self.language = self
                .language_token
                .and_then(|t| self.model.tokenizer.language_code(t))
                .map(str::to_string);
        }
        self.rng = Rng::new(0);
    }

    /// Samples pushed since creation or reset (with `vad_filter`, before the VAD).
    pub fn samples_received(&self) -> u64 {
        match &self.speech {
            Some(f) => f.received(),
            None => self.mel.samples_pushed(),
        }
    }

    /// Seconds of audio pushed but not yet decoded (with `vad_filter`: of stream time, the
    /// stretches the VAD left out counting as decoded).
    pub fn pending_seconds(&self) -> f64 {
        let pushed = self.mel.samples_pushed();
        let consumed = (self.seek as u64 * HOP_LENGTH as u64).min(pushed);
        let seconds = |samples: u64| samples as f64 / SAMPLE_RATE as f64;
        match &self.speech {
            Some(f) => (seconds(f.received()) - f.settled_seconds(consumed)).max(0.0),
            None => seconds(pushed - consumed),
        }
    }

    /// Language detected (or fixed by the options), once known.
    pub fn language(&self) -> Option<&str> {
        self.language.as_deref()
    }

    /// The most recent language identification with its probabilities (still readable after
    /// [`finish`](Self::finish) or a reset, which make the next window identify the language
    /// again); `None` when nothing was identified: the language is given by the options, the
    /// model is English-only, or no window was decoded yet.
    pub fn language_detection(&self) -> Option<&LanguageDetection> {
        self.detection.as_ref()
    }

    // --- Live decoding (`super::live`): the caller chooses the spans and keeps the text state. ---

    /// Live: appends samples to the front end without decoding anything.
    pub(crate) fn push_audio(&mut self, samples: &[f32]) {
        let t0 = Instant::now();
        self.mel.push(samples);
        self.stats.mel_seconds += t0.elapsed().as_secs_f64();
    }

    /// Live: mel frames whose audio has fully arrived.
    pub(crate) fn frames_ready(&self) -> usize {
        self.mel.frames_available().min(self.mel.content_frames())
    }

    /// Live: the first mel frame still held.
    pub(crate) fn first_frame(&self) -> usize {
        self.mel.first_frame()
    }

    /// Live: frees the front end's frames before `frame` (they are never decoded again).
    pub(crate) fn discard_before(&mut self, frame: usize) {
        self.mel.trim_before(frame.min(self.frames_ready()));
    }

    /// Live: encodes mel frames `start..end` (at most one window; the rest of the window is the
    /// log-mel of silence) and decodes them conditioned on `previous` text, continuing the
    /// forced `prefix`. Detects the language first when it is not known. The result's tokens
    /// start with `prefix`; timestamps count from `start`. With `go_on`, the decoder may not end
    /// the text right after the prefix (speech was heard beyond it). `draft`: the tokens
    /// expected after the prefix (see [`WindowInput::draft`]), or empty.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decode_span(
        &mut self,
        start: usize,
        end: usize,
        previous: &[u32],
        prefix: &[u32],
        draft: &[u32],
        temperatures: &[f32],
        go_on: bool,
    ) -> DecodeResult {
        let model = Arc::clone(&self.model);
        let t0 = Instant::now();
        let end = end.min(self.frames_ready());
        let start = start.max(self.mel.first_frame()).min(end);
        let columns = (end - start).min(N_FRAMES);
        let pad = match self.opts.tail_padding {
            TailPadding::Silence => self.mel.silence_value(start + columns),
            TailPadding::Zero => 0.0,
        };
        self.mel.window(start, columns, pad, &mut self.mel_window);
        self.encoder.set_live(true);
        self.dec.set_live(true);
        self.encode_window(start);
        self.set_audio();
        self.stats.encoder_seconds += t0.elapsed().as_secs_f64();
        self.stats.windows += 1;
        let unlocked =
            self.detection.as_ref().is_some_and(|d| !d.locked) && self.opts.language.is_none();
        if self.language.is_none() || unlocked {
            let seconds = columns as f64 * FRAME_SECONDS;
            let locks = |d: &LanguageDetection| {
                d.probability >= LIVE_LANGUAGE_LOCK && seconds >= LIVE_LANGUAGE_MIN_SECONDS
            };
            self.detect_language(seconds, locks);
        }
        let t1 = Instant::now();
        // The prompt and the prefix share half the text context.
        let keep = (model.dims.n_text_ctx / 2 - 1).saturating_sub(prefix.len());
        let previous = self.prompt(previous, keep, true);
        // A looping decode stops at the loop (the live transcriber cuts it anyway): a decode
        // that would otherwise run to its token limit takes the time of a normal one.
        let result =
            self.decode_with_fallback(&previous, prefix, draft, temperatures, go_on, true, None);
        self.stats.decoder_seconds += t1.elapsed().as_secs_f64();
        result
    }

    /// Live: waits for this transcriber's turn to decode among the live transcribers sharing its
    /// workers, earliest `deadline` first (see [`super::schedule`]); `None` if it did not come
    /// by `give_up`.
    pub(crate) fn decode_turn(&self, deadline: Instant, give_up: Instant) -> Option<Turn> {
        self.pool.scheduler().turn_until(deadline, Some(give_up))
    }

    /// Live: how long a live decode on these workers lasts, as the slow ones go (seconds).
    pub(crate) fn decode_turn_seconds(&self) -> f64 {
        self.pool.scheduler().turn_seconds()
    }

    /// Live: a turn now if a thread of these workers is free and no other live decode waits.
    pub(crate) fn try_decode_turn(&self) -> Option<Turn> {
        self.pool.scheduler().try_turn()
    }

    /// Live: the threads the next decodes use (a turn's), returning the previous count.
    pub(crate) fn set_threads(&mut self, threads: usize) -> usize {
        std::mem::replace(&mut self.threads, threads.max(1))
    }

    /// Live: times (seconds from the window start) of `text` tokens in the window whose
    /// cross-attention K/V are set (the last [`decode_span`](Self::decode_span)) of
    /// `content_frames` mel frames: one per text token, then one for the end of the text.
    /// `None` when the model has no alignment heads or the text does not fit.
    pub(crate) fn align(&mut self, text: &[u32], content_frames: usize) -> Option<Vec<f64>> {
        self.align_tokens(text, content_frames, false)
            .map(|(times, _)| times)
    }

    /// [`align`](Self::align), and with `probabilities` also each text token's probability in
    /// the alignment pass (openai's word probabilities; one more output projection per token).
    fn align_tokens(
        &mut self,
        text: &[u32],
        content_frames: usize,
        probabilities: bool,
    ) -> Option<(Vec<f64>, Vec<f32>)> {
        let model = Arc::clone(&self.model);
        if model.alignment_heads.is_empty() || text.is_empty() {
            return None;
        }
        let specials = &model.tokenizer.specials;
        let mut tokens = vec![specials.sot];
        if model.is_multilingual() {
            tokens.extend(self.language_token);
            tokens.push(match self.opts.task {
                Task::Transcribe => specials.transcribe,
                Task::Translate => specials.translate,
            });
        }
        let sot_len = tokens.len();
        tokens.push(specials.no_timestamps);
        tokens.extend_from_slice(text);
        tokens.push(specials.eot);
        if tokens.len() > model.dims.n_text_ctx {
            return None;
        }
        let frames = (content_frames / INPUT_STRIDE).clamp(1, model.dims.n_audio_ctx);
        let heads = &model.alignment_heads;
        let t0 = Instant::now();
        if !self.dec.can_capture() {
            return None;
        }
        let (dec, threads) = (&mut self.dec, self.threads);
        let result = self
            .pool
            .install(|| -> Result<(Vec<f32>, Vec<f32>), Error> {
                let weights = dec.forward_capture(&tokens, heads, frames, threads)?;
                let probs = if probabilities {
                    // Rows from no_timestamps on predict the text tokens (the last one, EOT, is
                    // not a word's).
                    let mut p = dec.next_token_probabilities(
                        &tokens,
                        sot_len,
                        specials.eot as usize,
                        threads,
                    )?;
                    p.truncate(text.len());
                    p
                } else {
                    Vec::new()
                };
                Ok((weights, probs))
            });
        let (weights, probs) = match result {
            Ok(r) => r,
            Err(e) => {
                self.fail(e);
                return None;
            }
        };
        let times = crate::decode::timing::token_times(
            &weights,
            heads.len(),
            tokens.len(),
            frames,
            sot_len,
        );
        self.stats.decoder_seconds += t0.elapsed().as_secs_f64();
        Some((times, probs))
    }

    /// Word timestamps of the window's `segments` (openai's `add_word_timestamps`); the
    /// window's cross-attention K/V must still be set.
    fn add_words(&mut self, segments: &mut [Segment], time_offset: f64, segment_size: usize) {
        let text: Vec<u32> = segments
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let Some((times, probs)) = self.align_tokens(&text, segment_size, true) else {
            return;
        };
        let alignment = words::word_timings(
            &self.model.tokenizer,
            &text,
            self.language.as_deref(),
            &times,
            &probs,
        );
        words::add_word_timestamps(segments, alignment, time_offset, self.last_speech_timestamp);
    }

    /// Decodes the window at `self.seek` holding `segment_size` frames of content, appends its
    /// segments to `out` and advances `seek` as openai's loop does. `content_end`: the frame
    /// where the audio ends, once known (end of stream).
    /// `horizon`: which window could follow (for the NPU's speculative encode).
    fn decode_window(
        &mut self,
        segment_size: usize,
        content_end: Option<usize>,
        horizon: Horizon,
        out: &mut Vec<Segment>,
    ) {
        let model = Arc::clone(&self.model);
        let specials = &model.tokenizer.specials;
        let t0 = Instant::now();
        fill_window(
            &self.mel,
            self.opts.tail_padding,
            self.seek,
            segment_size,
            &mut self.mel_window,
        );
        self.encode_window(self.seek);
        // While the CPU decodes this window, the NPU encodes candidates for the next one (see
        // `crate::engine::npu::worker`): the window end now when the window's tail is quiet (it then
        // likely ends on a single timestamp, or is skipped as silence: openai's loop moves by
        // the whole window), and each consecutive timestamp pair as the decoder emits it
        // (`decode_with_fallback`). With word timestamps or the hallucination threshold the
        // seek comes from the word alignment, which no pair predicts: only the window end is
        // tried then.
        let watch = (self.opts.npu_overlap && self.npu_failure.is_none() && self.npu.is_some())
            .then_some(SeekWatch {
                seek: self.seek,
                horizon,
                pairs: !self.opts.word_timestamps
                    && self.opts.hallucination_silence_threshold.is_none(),
            });
        if let Some(watch) = watch
            && let Some(npu) = self.npu.as_mut()
        {
            let next = self.seek + segment_size;
            let floor = self.mel.silence_value(next);
            let quiet = tail_is_quiet(&self.mel_window, model.dims.n_mels, segment_size, floor);
            if (quiet || !watch.pairs)
                && let Some(size) = horizon.next_size(next)
            {
                fill_window(
                    &self.mel,
                    self.opts.tail_padding,
                    next,
                    size,
                    &mut self.spec_window,
                );
                npu.speculate(next, &self.spec_window, Guess::WindowEnd);
            }
        }
        self.set_audio();
        self.stats.encoder_seconds += t0.elapsed().as_secs_f64();
        self.stats.windows += 1;

        if self.language.is_none() {
            let seconds = segment_size as f64 * FRAME_SECONDS;
            self.detect_language(seconds, |_| true);
        }

        let t1 = Instant::now();
        // The first window starts with the prefix, if any (its prompt then holds no hotwords,
        // as in faster-whisper).
        let prefix = if self.windows_since_reset == 0 {
            self.prefix_tokens()
        } else {
            Vec::new()
        };
        let previous = self.previous_context(prefix.is_empty());
        self.windows_since_reset += 1;
        let temperatures = self.opts.temperatures.clone();
        let result =
            self.decode_with_fallback(&previous, &prefix, &[], &temperatures, false, false, watch);
        let decode_seconds = t1.elapsed().as_secs_f64();
        self.stats.decoder_seconds += decode_seconds;
        if let Some(npu) = self.npu.as_mut() {
            npu.note_decode_seconds(decode_seconds);
        }

        let previous_seek = self.seek;
        let time_offset = self.seek as f64 * FRAME_SECONDS;
        let window_end_time = (self.seek + N_FRAMES) as f64 * FRAME_SECONDS;
        let segment_duration = segment_size as f64 * FRAME_SECONDS;
        let language = self.language.clone().unwrap_or_default();

        if let Some(threshold) = self.opts.no_speech_threshold {
            let mut skip = result.no_speech_prob > threshold;
            if let Some(lp) = self.opts.log_prob_threshold
                && result.avg_logprob > lp
            {
                skip = false;
            }
            if skip {
                self.seek += segment_size;
                return;
            }
        }

        let tokens = &result.tokens;
        let tb = specials.timestamp_begin;
        let is_ts: Vec<bool> = tokens.iter().map(|&t| t >= tb).collect();
        let n = tokens.len();
        let single_timestamp_ending = n >= 2 && !is_ts[n - 2] && is_ts[n - 1];
        // A window whose text ends with a timestamp says no speech follows it, so openai skips
        // the rest of the window. Behind the offline VAD, where the rest holds the start of
        // another stretch of speech, decoding resumes at that timestamp instead: the model does
        // skip a sentence that follows another without a pause.
        let last_ts = tokens
            .iter()
            .rev()
            .find(|&&t| t >= tb)
            .map(|&t| (t - tb) as usize);
        let hop = HOP_LENGTH as u64;
        let resume_at = last_ts.map(|t| t * INPUT_STRIDE).filter(|&at| {
            at > 0
                && self.speech.as_ref().is_some_and(|f| {
                    let from = (self.seek + at) as u64 * hop;
                    let to = (self.seek + segment_size) as u64 * hop;
                    f.piece_starts_between(from, to.saturating_sub(SAMPLE_RATE as u64 / 2))
                })
        });
        let resume_at_last = single_timestamp_ending && resume_at.is_some();
        let consecutive: Vec<usize> = (1..n).filter(|&i| is_ts[i - 1] && is_ts[i]).collect();

        let mut current: Vec<(f64, f64, Vec<u32>)> = Vec::new();
        if !consecutive.is_empty() {
            let mut slices = consecutive;
            if single_timestamp_ending {
                slices.push(n);
            }
            let mut last_slice = 0;
            for &cur in &slices {
                let sliced = &tokens[last_slice..cur];
                let start = (sliced[0].saturating_sub(tb)) as f64;
                let end = (sliced[sliced.len() - 1].saturating_sub(tb)) as f64;
                current.push((
                    time_offset + start * TIME_PRECISION,
                    time_offset + end * TIME_PRECISION,
                    sliced.to_vec(),
                ));
                last_slice = cur;
            }
            if single_timestamp_ending && !resume_at_last {
                self.seek += segment_size;
            } else {
                let last_timestamp_pos = (tokens[last_slice - 1].saturating_sub(tb)) as usize;
                self.seek += last_timestamp_pos * INPUT_STRIDE;
            }
        } else {
            let mut duration = segment_duration;
            if let Some(&last) = tokens.iter().rev().find(|&&t| t >= tb)
                && last != tb
            {
                duration = (last - tb) as f64 * TIME_PRECISION;
            }
            current.push((time_offset, time_offset + duration, tokens.clone()));
            self.seek += resume_at.unwrap_or(segment_size);
        }

        let mut segments = Vec::with_capacity(current.len());
        let mut segment_tokens = Vec::with_capacity(current.len());
        for (start, end, seg_tokens) in current {
            let text_tokens: Vec<u32> = seg_tokens
                .iter()
                .copied()
                .filter(|&t| t < specials.eot)
                .collect();
            segments.push(Segment {
                start,
                end,
                text: model.tokenizer.decode(&text_tokens).trim().to_string(),
                tokens: text_tokens,
                avg_logprob: result.avg_logprob,
                no_speech_prob: result.no_speech_prob,
                temperature: result.temperature,
                compression_ratio: result.compression_ratio,
                language: language.clone(),
                words: Vec::new(),
            });
            segment_tokens.push(seg_tokens);
        }

        let threshold = self.opts.hallucination_silence_threshold.map(f64::from);
        if self.opts.word_timestamps || threshold.is_some() {
            // openai's word-timestamp branch of `transcribe()`.
            let seek_at = |t: f64| (t / FRAME_SECONDS).round_ties_even().max(0.0) as usize;
            self.add_words(&mut segments, time_offset, segment_size);
            if (!single_timestamp_ending || resume_at_last)
                && let Some(end) = get_end(&segments)
                && end > time_offset
            {
                self.seek = seek_at(end);
            }
            if let Some(threshold) = threshold {
                // Resume right after the last word when silence follows it.
                if !single_timestamp_ending
                    && let Some(end) = get_end(&segments)
                    && end > time_offset
                {
                    self.seek = if window_end_time - end > threshold {
                        seek_at(end)
                    } else {
                        previous_seek + segment_size
                    };
                }
                // A first segment that may be invented after a long silence: skip the silence
                // and decode again from there, dropping this window's text.
                let first = segments.iter().find(|s| !s.words.is_empty());
                if let Some(first) = first.filter(|s| is_segment_anomaly(Some(s))) {
                    let gap = first.start - time_offset;
                    if gap > threshold {
                        self.seek = previous_seek + seek_at(gap);
                        self.stats.hallucinations_skipped += 1;
                        return;
                    }
                }
                // An invented segment between silences (or more invented text): drop it and
                // what follows, resume after it.
                let mut hal_last_end = self.last_speech_timestamp;
                for si in 0..segments.len() {
                    let segment = &segments[si];
                    if segment.words.is_empty() {
                        continue;
                    }
                    if is_segment_anomaly(Some(segment)) {
                        let next = segments[si + 1..].iter().find(|s| !s.words.is_empty());
                        let hal_next_start =
                            next.map_or(time_offset + segment_duration, |s| s.words[0].start);
                        let silence_before = segment.start - hal_last_end > threshold
                            || segment.start < threshold
                            || segment.start - time_offset < 2.0;
                        let silence_after = hal_next_start - segment.end > threshold
                            || is_segment_anomaly(next)
                            || window_end_time - segment.end < 2.0;
                        if silence_before && silence_after {
                            self.seek = seek_at((time_offset + 1.0).max(segment.start));
                            if let Some(content) = content_end
                                && content as f64 * FRAME_SECONDS - segment.end < threshold
                            {
                                self.seek = content;
                            }
                            self.stats.hallucinations_skipped += 1;
                            segments.truncate(si);
                            segment_tokens.truncate(si);
                            break;
                        }
                    }
                    hal_last_end = segment.end;
                }
            }
            if let Some(end) = get_end(&segments) {
                self.last_speech_timestamp = end;
            }
            if !self.opts.word_timestamps {
                segments.iter_mut().for_each(|s| s.words.clear());
            }
        }

        // Behind the offline VAD, a segment whose text runs from one stretch of speech into the
        // next is split at the cut by its words (aligned for that, when they are not already),
        // so that no text is timed over the audio left out.
        let straddles = self.speech.as_ref().is_some_and(|f| {
            segments
                .iter()
                .any(|s| f.piece_index(s.start, false) != f.piece_index(s.end, true))
        });
        if straddles && !self.opts.word_timestamps && threshold.is_none() {
            self.add_words(&mut segments, time_offset, segment_size);
        }
        let mut pairs: Vec<(Segment, Vec<u32>)> =
            segments.into_iter().zip(segment_tokens).collect();
        if straddles && let Some(f) = &self.speech {
            // The window's tokens stay whole for the next prompt: with the first part.
            pairs = pairs
                .into_iter()
                .flat_map(|(s, tokens)| {
                    let mut tokens = Some(tokens);
                    split_at_cuts(s, f, &model.tokenizer)
                        .into_iter()
                        .map(move |p| (p, tokens.take().unwrap_or_default()))
                })
                .collect();
            if !self.opts.word_timestamps {
                pairs.iter_mut().for_each(|(s, _)| s.words.clear());
            }
        }

        for (segment, seg_tokens) in pairs {
            // Instantaneous or empty segments are dropped (openai clears them).
            if segment.start == segment.end || segment.text.is_empty() {
                continue;
            }
            self.all_tokens.extend(&seg_tokens);
            out.push(segment);
        }
        if !self.opts.condition_on_previous_text
            || result.temperature > self.opts.prompt_reset_on_temperature
        {
            self.prompt_reset_since = self.all_tokens.len();
        }
    }

    /// Identifies the spoken language from the encoded window (openai's `detect_language`):
    /// softmax of the first decoding step's logits over the language tokens. `locks` decides
    /// whether later windows keep this language.
    fn detect_language(&mut self, audio_seconds: f64, locks: impl Fn(&LanguageDetection) -> bool) {
        let model = Arc::clone(&self.model);
        let tok = &model.tokenizer;
        let (dec, threads) = (&mut self.dec, self.threads);
        let result = self.pool.install(|| {
            dec.reset(1);
            dec.forward(&[tok.specials.sot], None, threads)
        });
        if let Err(e) = result {
            self.fail(e);
            return;
        }
        let logits = self.dec.logits_row(0);
        let range = tok.language_tokens();
        let max = range
            .clone()
            .map(|t| logits[t as usize])
            .fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f32)> = range
            .clone()
            .map(|t| (t, (logits[t as usize] - max).exp()))
            .collect();
        let sum: f32 = probs.iter().map(|p| p.1).sum();
        for p in &mut probs {
            p.1 /= sum;
        }
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let Some(&(best, probability)) = probs.first() else {
            return;
        };
        let code = |t: u32| tok.language_code(t).unwrap_or_default().to_string();
        let mut detection = LanguageDetection {
            language: code(best),
            probability,
            top: probs.iter().take(5).map(|&(t, p)| (code(t), p)).collect(),
            audio_seconds,
            locked: false,
        };
        detection.locked = locks(&detection);
        self.language_token = Some(best);
        self.language = Some(detection.language.clone());
        self.detection = Some(detection);
    }

    /// The text since the last prompt reset that conditions the next window (at most half the
    /// text context), after the `hotwords` when `hotwords`.
    fn previous_context(&self, hotwords: bool) -> Vec<u32> {
        let keep = self.model.dims.n_text_ctx / 2 - 1;
        self.prompt(&self.all_tokens[self.prompt_reset_since..], keep, hotwords)
    }

    /// The prompt of a window: the option's `hotwords` (when set and `hotwords`), then as much
    /// of `previous` as fits in `keep` tokens (faster-whisper's order).
    fn prompt(&self, previous: &[u32], keep: usize, hotwords: bool) -> Vec<u32> {
        let mut prompt = match self.opts.hotwords.as_deref().map(str::trim) {
            Some(h) if hotwords && !h.is_empty() => {
                let mut t = self.model.tokenizer.encode(&format!(" {h}"));
                t.truncate(keep);
                t
            }
            _ => Vec::new(),
        };
        let room = keep - prompt.len();
        prompt.extend_from_slice(&previous[previous.len().saturating_sub(room)..]);
        prompt
    }

    /// The forced start of the first window's text (`prefix`), after its first timestamp.
    fn prefix_tokens(&self) -> Vec<u32> {
        match self.opts.prefix.as_deref().map(str::trim) {
            Some(p) if !p.is_empty() => {
                let specials = &self.model.tokenizer.specials;
                let mut t = Vec::new();
                if !self.opts.without_timestamps {
                    t.push(specials.timestamp_begin);
                }
                let mut text = self.model.tokenizer.encode(&format!(" {p}"));
                text.truncate(self.model.dims.n_text_ctx / 2 - 1);
                t.extend(text);
                t
            }
            _ => Vec::new(),
        }
    }

    /// Decodes the window whose encoder output is set, conditioned on `previous` text and
    /// continuing the forced `prefix`, trying `temperatures` in turn (openai's fallback);
    /// `go_on`: end-of-text is suppressed right after the prefix; `stop_at_loop`: see
    /// [`DecodeParams::stop_at_loop`]. With `watch`, every
    /// consecutive timestamp pair the leading sequence forms starts the NPU's speculative
    /// encode of the window at that pair's seek (every attempt's: a re-decode may move it; only
    /// an exact start + mel match is ever used).
    #[allow(clippy::too_many_arguments)]
    fn decode_with_fallback(
        &mut self,
        previous: &[u32],
        prefix: &[u32],
        draft: &[u32],
        temperatures: &[f32],
        go_on: bool,
        stop_at_loop: bool,
        watch: Option<SeekWatch>,
    ) -> DecodeResult {
        let model = Arc::clone(&self.model);
        let specials = &model.tokenizer.specials;
        let opts = self.opts.clone();

        // Prompt: [sot_prev, previous text...] + SOT sequence (+ no_timestamps).
        let mut prompt = Vec::new();
        if !previous.is_empty() {
            let keep = model.dims.n_text_ctx / 2 - 1;
            prompt.push(specials.sot_prev);
            prompt.extend_from_slice(&previous[previous.len().saturating_sub(keep)..]);
        }
        let sot_index = prompt.len();
        prompt.push(specials.sot);
        if model.is_multilingual() {
            if let Some(lang) = self.language_token {
                prompt.push(lang);
            }
            prompt.push(match opts.task {
                Task::Transcribe => specials.transcribe,
                Task::Translate => specials.translate,
            });
        }
        if opts.without_timestamps {
            prompt.push(specials.no_timestamps);
        }

        let mut suppress: Vec<u32> = Vec::new();
        for &t in &opts.suppress_tokens {
            if t == -1 {
                suppress.extend(&model.suppress_ids);
            } else if t >= 0 {
                suppress.push(t as u32);
            }
        }
        suppress.extend([
            specials.transcribe,
            specials.translate,
            specials.sot,
            specials.sot_prev,
            specials.sot_lm,
            specials.no_speech,
        ]);
        suppress.sort_unstable();
        suppress.dedup();
        let mut filters = LogitFilters::new(
            specials,
            opts.suppress_blank
                .then_some(model.suppress_ids_begin.as_slice()),
            suppress,
            !opts.without_timestamps,
            Some(opts.max_initial_timestamp),
        );
        if go_on && !prefix.is_empty() {
            filters.eot_after = Some((prefix.len(), specials.eot));
        }
        let input = WindowInput {
            prompt: &prompt,
            sot_index,
            prefix,
            draft,
            filters: &filters,
            specials,
        };
        let tokenizer = &model.tokenizer;
        let decode_text = |ids: &[u32]| {
            let text: Vec<u32> = ids.iter().copied().filter(|&t| t < specials.eot).collect();
            tokenizer.decode(&text)
        };

        let mut results: Vec<DecodeResult> = Vec::new();
        for (attempt, &temperature) in temperatures.iter().enumerate() {
            if attempt > 0 {
                self.stats.fallbacks += 1;
            }
            let params = DecodeParams {
                temperature,
                beam_size: if temperature > 0.0 { 1 } else { opts.beam_size },
                patience: opts.patience,
                best_of: if temperature > 0.0 { opts.best_of } else { 1 },
                length_penalty: opts.length_penalty,
                sample_len: model.dims.n_text_ctx / 2,
                stop_at_loop,
            };
            let (dec, rng, threads) = (&mut self.dec, &mut self.rng, self.threads);
            let npu_ok = self.npu_failure.is_none();
            let mut speculator = match (watch, self.npu.as_mut()) {
                (Some(w), Some(npu)) if w.pairs && npu_ok => Some((w, npu)),
                _ => None,
            };
            let (mel, spec_window, tb) =
                (&self.mel, &mut self.spec_window, specials.timestamp_begin);
            let mut observe = |tokens: &[u32]| {
                let Some((w, npu)) = speculator.as_mut() else {
                    return;
                };
                // A new consecutive pair: the next seek is its first timestamp (the end of the
                // closed segment) unless a later pair follows or the window ends on a single
                // timestamp (the `seek` rule below in `decode_window`).
                let n = tokens.len();
                if n < 2 || tokens[n - 1] < tb || tokens[n - 2] < tb {
                    return;
                }
                let next = w.seek + (tokens[n - 2] - tb) as usize * INPUT_STRIDE;
                if next > w.seek
                    && let Some(size) = w.horizon.next_size(next)
                {
                    fill_window(mel, opts.tail_padding, next, size, spec_window);
                    npu.speculate(next, spec_window, Guess::Pair);
                }
            };
            let decoded = self.pool.install(|| {
                decode_window(
                    &model.dims,
                    &mut **dec,
                    &input,
                    &params,
                    rng,
                    &decode_text,
                    threads,
                    &mut observe,
                )
            });
            let (result, calls) = match decoded {
                Ok(decoded) => decoded,
                Err(e) => {
                    // No text from a failed engine: the caller stops on the recorded error.
                    self.fail(e);
                    return DecodeResult {
                        tokens: prefix.to_vec(),
                        text: String::new(),
                        sum_logprob: 0.0,
                        avg_logprob: 0.0,
                        no_speech_prob: 1.0,
                        temperature,
                        compression_ratio: 0.0,
                        token_logprobs: Vec::new(),
                    };
                }
            };
            self.stats.decoder_calls += calls as u64;
            self.stats.decoder_tokens += result.tokens.len() as u64 + 1;

            let mut needs_fallback = false;
            if let Some(cr) = opts.compression_ratio_threshold
                && result.compression_ratio > cr
            {
                needs_fallback = true;
            }
            if let Some(lp) = opts.log_prob_threshold
                && result.avg_logprob < lp
            {
                needs_fallback = true;
            }
            if let (Some(ns), Some(lp)) = (opts.no_speech_threshold, opts.log_prob_threshold)
                && result.no_speech_prob > ns
                && result.avg_logprob < lp
            {
                needs_fallback = false;
            }
            results.push(result);
            if !needs_fallback {
                return results.pop().unwrap_or_else(|| unreachable!());
            }
        }
        // Every temperature failed: like faster-whisper, keep the likeliest result among those
        // that are not too repetitive (or among all if none qualifies).
        let not_repetitive: Vec<&DecodeResult> = results
            .iter()
            .filter(|r| {
                opts.compression_ratio_threshold
                    .is_none_or(|cr| r.compression_ratio <= cr)
            })
            .collect();
        let pool: Vec<&DecodeResult> = if not_repetitive.is_empty() {
            results.iter().collect()
        } else {
            not_repetitive
        };
        pool.into_iter()
            .max_by(|a, b| a.avg_logprob.total_cmp(&b.avg_logprob))
            .cloned()
            .unwrap_or_else(|| unreachable!("at least one temperature is tried"))
    }
}

/// What the NPU's speculative encode of the next window needs while a window decodes.
#[derive(Debug, Clone, Copy)]
struct SeekWatch {
    /// Start of the window being decoded (mel frames).
    seek: usize,
    horizon: Horizon,
    /// Whether timestamp pairs predict the next seek (not with word timestamps or the
    /// hallucination threshold, whose seek comes from the word alignment).
    pairs: bool,
}

/// Mel frames at the end of a window's content looked at by [`tail_is_quiet`] (1 s).
const QUIET_TAIL_FRAMES: usize = 100;

/// Whether the last second of the window's content (`content` frames of `mel`, `[n_mels][3000]`)
/// is quiet: on average its frames' loudest bin is within 1.0 (40 dB) of the normalisation
/// floor `floor`, which lies 2.0 (80 dB) below the loudest frame so far. Speech that ends
/// before the window does makes the decoder close its last segment and stop on a single
/// timestamp, so the next window starts at this one's end.
fn tail_is_quiet(mel: &[f32], n_mels: usize, content: usize, floor: f32) -> bool {
    let frames = mel.len() / n_mels.max(1);
    let end = content.min(frames);
    let start = end.saturating_sub(QUIET_TAIL_FRAMES);
    if end == start {
        return false;
    }
    let loudest: f32 = (start..end)
        .map(|f| {
            (0..n_mels)
                .map(|c| mel[c * frames + f])
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .sum();
    loudest / ((end - start) as f32) <= floor + 1.0
}

/// Which window could follow the one being decoded.
#[derive(Debug, Clone, Copy)]
enum Horizon {
    /// Only complete windows, of audio up to frame `ready` (`push`).
    Complete { ready: usize },
    /// Windows up to the content end (`flush_available`, `finish`), the last one partial.
    Until { content: usize },
}

impl Horizon {
    /// The content frames of a window starting at `start`, if there is one.
    fn next_size(self, start: usize) -> Option<usize> {
        match self {
            Horizon::Complete { ready } => (start + N_FRAMES <= ready).then_some(N_FRAMES),
            Horizon::Until { content } => {
                (start < content).then(|| (content - start).min(N_FRAMES))
            }
        }
    }
}

/// The encoder's input for the window at `seek` holding `segment_size` frames of content.
/// Columns past the content: zeros (openai, faster-whisper) or the log-mel of silence
/// (whisper.cpp). After `finish` the frames of the zero-extended audio exist and are used as
/// they are; otherwise silence is its normalised floor value.
fn fill_window(
    mel: &MelStream,
    tail_padding: TailPadding,
    seek: usize,
    segment_size: usize,
    out: &mut [f32],
) {
    let mut columns = segment_size;
    let mut pad = 0.0;
    if tail_padding == TailPadding::Silence && segment_size < N_FRAMES {
        columns = (mel.frames_available() - seek).clamp(segment_size, N_FRAMES);
        pad = mel.silence_value(seek + columns);
    }
    mel.window(seek, columns, pad, out);
}

impl Transcriber {
    /// Encodes `self.mel_window`, the window starting at mel frame `seek`, into `enc_out`: on
    /// the NPU encoder when there is one and it has not failed, else on the model's own engine.
    /// A failed or timed-out NPU run is never used: the window is encoded by the model's engine,
    /// and so are the later ones (the device's state is unknown after a failure).
    fn encode_window(&mut self, seek: usize) {
        if self.npu_failure.is_none()
            && let Some(npu) = self.npu.as_mut()
        {
            match npu.encode(seek, &self.mel_window, &mut self.enc_out) {
                Ok(_) => return,
                Err(e) => {
                    npu.count_failure();
                    self.npu_failure = Some(e.to_string());
                }
            }
        }
        let (encoder, mel_window, enc_out, threads) = (
            &mut self.encoder,
            &self.mel_window,
            &mut self.enc_out,
            self.threads,
        );
        let result = self
            .pool
            .install(|| encoder.encode(mel_window, enc_out, threads));
        if let Err(e) = result {
            self.fail(e);
        }
    }

    /// The decoder's cross-attention K/V from the encoder output in `enc_out`.
    fn set_audio(&mut self) {
        let (enc_out, dec, threads) = (&self.enc_out, &mut self.dec, self.threads);
        let result = self.pool.install(|| dec.set_audio(enc_out, threads));
        if let Err(e) = result {
            self.fail(e);
        }
    }
}

/// The NPU encoder (`given`, else a new one) on its worker thread when `opts` ask for `npu` or
/// `npu-sim`.
fn npu_for(
    model: &Arc<WhisperModel>,
    opts: &TranscribeOptions,
    threads: usize,
    given: Option<Box<dyn Encoder>>,
) -> Result<Option<EncoderWorker>, Error> {
    let unavailable = |why: String| Error::BackendUnavailable {
        backend: opts.backend.as_str().into(),
        why,
    };
    let encoder: Box<dyn Encoder> = match (opts.backend, given) {
        // ONNX Runtime on an accelerator (GPU, NPU) encodes on its own thread too, so that the
        // next window is encoded while the CPU decodes this one.
        (EncoderBackend::Cpu, _) if opts.npu_overlap && model.runs_on_accelerator() => {
            model.new_encoder()
        }
        (EncoderBackend::Cpu, _) => return Ok(None),
        (_, _) if model.cpu_weights().is_none() => {
            return Err(unavailable(
                "the NPU encoder runs native models (CTranslate2); this one is an ONNX export"
                    .into(),
            ));
        }
        (_, Some(encoder)) => encoder,
        (EncoderBackend::NpuSim, None) => {
            Box::new(NpuEncoder::sim(model).map_err(|e| unavailable(e.to_string()))?)
        }
        (EncoderBackend::Npu, None) => open_npu(model).map_err(unavailable)?,
    };
    let dims = &model.dims;
    EncoderWorker::new(
        encoder,
        threads,
        dims.n_mels * N_FRAMES,
        dims.n_audio_ctx * dims.n_audio_state,
    )
    .map(Some)
    .map_err(|e| unavailable(format!("cannot start the NPU worker thread: {e}")))
}

/// `backend=npu`: the probe first (it names everything missing: amdxdna device, XRT, built
/// encoder artifact), then the encoder on XRT.
fn open_npu(model: &WhisperModel) -> Result<Box<dyn Encoder>, String> {
    use crate::engine::npu::probe;
    let name = model.dir.file_name().map_or_else(
        || model.dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let config = probe::ProbeConfig::system();
    let report = probe::probe(&config, &name, &model.dims);
    if !report.ready() {
        return Err(report.to_string());
    }
    #[cfg(feature = "npu")]
    {
        crate::engine::npu::xrt::open(model, &name, &config.artifact_dir)
            .map(|e| Box::new(e) as Box<dyn Encoder>)
            .map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "npu"))]
    {
        Err(format!(
            "{report}, but this build has no XRT support (rebuild with --features npu)"
        ))
    }
}

/// Splits `segment` (engine time) where its words pass from one piece of the VAD's speech to the
/// next; each part keeps its words, its text is theirs. A segment without words is kept whole.
fn split_at_cuts(
    segment: Segment,
    filter: &SpeechFilter,
    tokenizer: &crate::model::tokenizer::Tokenizer,
) -> Vec<Segment> {
    let piece = |w: &super::Word| filter.piece_index(w.start, false);
    if segment.words.len() < 2
        || segment
            .words
            .iter()
            .all(|w| piece(w) == piece(&segment.words[0]))
    {
        return vec![segment];
    }
    let mut parts: Vec<Segment> = Vec::new();
    for w in &segment.words {
        match parts.last_mut() {
            Some(p) if piece(&p.words[0]) == piece(w) => {
                p.end = w.end;
                p.words.push(w.clone());
            }
            _ => parts.push(Segment {
                start: w.start,
                end: w.end,
                words: vec![w.clone()],
                ..segment.clone()
            }),
        }
    }
    for p in &mut parts {
        let text: String = p.words.iter().map(|w| w.text.as_str()).collect();
        p.text = text.trim().to_string();
        p.tokens = tokenizer.encode(&format!(" {}", p.text));
    }
    parts
}
