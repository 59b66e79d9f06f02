//! Options of a transcription, with faster-whisper's defaults unless noted.

use super::VadFilterOptions;
use crate::error::Error;

/// What the decoder produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Task {
    /// Text in the spoken language.
    #[default]
    Transcribe,
    /// English text whatever the spoken language (multilingual models only).
    Translate,
}

impl std::str::FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "transcribe" => Ok(Task::Transcribe),
            "translate" => Ok(Task::Translate),
            _ => Err(Error::InvalidOption {
                option: "task",
                why: format!("`{s}` is not one of transcribe, translate"),
            }),
        }
    }
}

/// What the encoder sees past the end of the audio in the last (partial) window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TailPadding {
    /// The log-mel of digital silence, as if the audio went on silent (whisper.cpp's choice).
    #[default]
    Silence,
    /// Zeros after normalisation, as openai/whisper's `pad_or_trim` and faster-whisper do.
    Zero,
}

impl std::str::FromStr for TailPadding {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "silence" => Ok(TailPadding::Silence),
            "zero" => Ok(TailPadding::Zero),
            _ => Err(Error::InvalidOption {
                option: "tail-padding",
                why: format!("`{s}` is not one of silence, zero"),
            }),
        }
    }
}

/// Decoding options (see openai/whisper `DecodingOptions` and `transcribe()`).
/// Which engine runs the encoder (`--backend`).
///
/// - `cpu`: the native CPU encoder (default).
/// - `npu`: the NPU encoder through XRT ([`crate::engine::npu::host::NpuEncoder`] on
///   `crate::engine::npu::xrt::XrtDevice`, feature `npu`). [`Transcriber::new`](super::Transcriber::new)
///   fails with [`Error::BackendUnavailable`] naming what is missing (amdxdna device, XRT,
///   built encoder artifact).
/// - `npu-sim`: the same host encoder on the simulated device
///   ([`crate::engine::npu::sim::SimDevice`]), whose runs execute the NPU encoder's golden model: the
///   AIE2 kernels' arithmetic (bf16 operands, fp32 accumulation) and tile schedule run on the
///   CPU, one simulated dispatch per window. For checking the NPU design end to end; much slower
///   than `cpu`. Needs a model the design supports (80 mel bins, 64-wide heads).
///
/// With either NPU backend the encoder runs on its own thread and encodes the next window while
/// the CPU decodes this one ([`TranscribeOptions::npu_overlap`]). A run that fails or times out
/// is not used: that window and every later one are encoded on the CPU
/// (`Transcriber::npu_failure` says why).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncoderBackend {
    #[default]
    Cpu,
    Npu,
    NpuSim,
}

impl EncoderBackend {
    pub const NAMES: &'static str = "cpu, npu, npu-sim";

    pub fn as_str(self) -> &'static str {
        match self {
            EncoderBackend::Cpu => "cpu",
            EncoderBackend::Npu => "npu",
            EncoderBackend::NpuSim => "npu-sim",
        }
    }

    /// Runs the encoder on the NPU (or its simulation).
    pub fn is_npu(self) -> bool {
        self != EncoderBackend::Cpu
    }
}

impl std::str::FromStr for EncoderBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(EncoderBackend::Cpu),
            "npu" => Ok(EncoderBackend::Npu),
            "npu-sim" => Ok(EncoderBackend::NpuSim),
            _ => Err(format!("unknown backend `{s}` (known: {})", Self::NAMES)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TranscribeOptions {
    /// Language code ("en", "de", ...); `None` detects it from the first window.
    pub language: Option<String>,
    pub task: Task,
    /// 1 = greedy; > 1 = beam search with this many beams.
    pub beam_size: usize,
    /// Beam search patience (faster-whisper: 1.0).
    pub patience: f32,
    /// Candidates sampled at temperature > 0.
    pub best_of: usize,
    /// Fallback temperatures, tried in order.
    pub temperatures: Vec<f32>,
    pub compression_ratio_threshold: Option<f32>,
    pub log_prob_threshold: Option<f32>,
    pub no_speech_threshold: Option<f32>,
    /// Use the previous window's text as prompt.
    pub condition_on_previous_text: bool,
    /// Stop conditioning when a window needed a temperature at or above this.
    pub prompt_reset_on_temperature: f32,
    pub initial_prompt: Option<String>,
    /// Names and terms the model should spell as given (faster-whisper's `hotwords`): put at
    /// the front of every window's prompt, before the previous text, except in a window that
    /// has a [`prefix`](Self::prefix).
    pub hotwords: Option<String>,
    /// Text the transcript of the first window starts with (openai's and faster-whisper's
    /// `prefix`): forced as the start of its text, and kept in the output.
    pub prefix: Option<String>,
    pub suppress_blank: bool,
    /// Token ids to suppress; -1 expands to the model's `suppress_ids`.
    pub suppress_tokens: Vec<i64>,
    pub without_timestamps: bool,
    /// Latest allowed first timestamp, seconds.
    pub max_initial_timestamp: f32,
    /// `None` = length-normalised log-prob as in openai (simple length normalisation).
    pub length_penalty: Option<f32>,
    /// Worker threads for the engine; 0 = one per core.
    pub n_threads: usize,
    /// Padding of the last window past the end of the audio.
    pub tail_padding: TailPadding,
    /// Engine running the encoder.
    pub backend: EncoderBackend,
    /// NPU backends, offline windows: encode the likeliest next window (this one's start + its
    /// length) on the NPU while the CPU decodes this one; used when the decode lands there,
    /// discarded otherwise ([`crate::engine::npu::worker`]). Default on; no effect with `cpu`.
    pub npu_overlap: bool,
    /// Offline: time each word by cross-attention alignment (openai's `word_timestamps`):
    /// fills [`Segment::words`](super::Segment::words) and moves segment starts and ends to
    /// their words. Costs one more decoder pass over each window's text.
    pub word_timestamps: bool,
    /// Offline: seconds of silence around a segment whose words look invented (improbable,
    /// very short or very long) above which it is skipped and decoding resumes after the
    /// silence (openai's `hallucination_silence_threshold`). Needs word timing, so it also
    /// moves segment times to their words (as `word_timestamps` does). `None` = off.
    pub hallucination_silence_threshold: Option<f32>,
    /// Offline: decode only the speech a VAD finds (faster-whisper's `vad_filter`); segment
    /// and word times stay in stream time. `None` = everything is decoded. Live decoding has
    /// its own speech gate and ignores this.
    pub vad_filter: Option<VadFilterOptions>,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        Self {
            language: None,
            task: Task::Transcribe,
            beam_size: 1,
            patience: 1.0,
            best_of: 5,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            log_prob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            condition_on_previous_text: true,
            prompt_reset_on_temperature: 0.5,
            initial_prompt: None,
            hotwords: None,
            prefix: None,
            suppress_blank: true,
            suppress_tokens: vec![-1],
            without_timestamps: false,
            max_initial_timestamp: 1.0,
            length_penalty: None,
            n_threads: 0,
            tail_padding: TailPadding::Silence,
            backend: EncoderBackend::Cpu,
            npu_overlap: true,
            word_timestamps: false,
            hallucination_silence_threshold: None,
            vad_filter: None,
        }
    }
}

impl TranscribeOptions {
    /// Checks ranges; errors name the option at fault.
    pub fn validate(&self) -> Result<(), Error> {
        if self.beam_size == 0 || self.beam_size > 16 {
            return Err(Error::InvalidOption {
                option: "beam-size",
                why: format!("{} is outside 1..=16", self.beam_size),
            });
        }
        if self.patience.is_nan() || self.patience <= 0.0 {
            return Err(Error::InvalidOption {
                option: "patience",
                why: format!("{} must be > 0", self.patience),
            });
        }
        if self.temperatures.is_empty()
            || self.temperatures.iter().any(|t| !(0.0..=2.0).contains(t))
        {
            return Err(Error::InvalidOption {
                option: "temperatures",
                why: "need one or more values in 0..=2".into(),
            });
        }
        if let Some(t) = self.no_speech_threshold
            && !(0.0..=1.0).contains(&t)
        {
            return Err(Error::InvalidOption {
                option: "no-speech-threshold",
                why: format!("{t} is outside 0..=1"),
            });
        }
        if let Some(t) = self.compression_ratio_threshold
            && !(t.is_finite() && t > 0.0)
        {
            return Err(Error::InvalidOption {
                option: "compression-ratio-threshold",
                why: format!("{t} must be > 0 (or none)"),
            });
        }
        if self.log_prob_threshold.is_some_and(f32::is_nan) {
            return Err(Error::InvalidOption {
                option: "logprob-threshold",
                why: "must be a number (or none)".into(),
            });
        }
        if let Some(&t) = self.suppress_tokens.iter().find(|&&t| t < -1) {
            return Err(Error::InvalidOption {
                option: "suppress-tokens",
                why: format!("{t} is not a token id (>= 0, or -1 for the model's list)"),
            });
        }
        if let Some(t) = self.hallucination_silence_threshold
            && !(t.is_finite() && t > 0.0)
        {
            return Err(Error::InvalidOption {
                option: "hallucination-silence-threshold",
                why: format!("{t} must be a number of seconds > 0"),
            });
        }
        if let Some(v) = &self.vad_filter
            && !(v.segments.threshold > 0.0 && v.segments.threshold <= 1.0)
        {
            return Err(Error::InvalidOption {
                option: "vad-threshold",
                why: format!("{} is outside (0, 1]", v.segments.threshold),
            });
        }
        Ok(())
    }
}

/// openai's fallback temperatures for `increment` (`temperature_increment_on_fallback`):
/// 0, increment, 2 × increment, … up to 1; only 0 when `increment` is 0 (no fallback).
pub fn temperature_schedule(increment: f32) -> Vec<f32> {
    if increment.is_nan() || increment <= 0.0 {
        return vec![0.0];
    }
    (0..)
        .map(|i| i as f32 * increment)
        .take_while(|t| *t <= 1.0 + 1e-6)
        .map(|t| (t * 1e6).round() / 1e6)
        .collect()
}

/// A `suppress-tokens` list: comma-separated token ids, `-1` for the model's list of symbols,
/// empty for none.
pub fn parse_suppress_tokens(list: &str) -> Result<Vec<i64>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| match t.parse::<i64>() {
            Ok(id) if id >= -1 => Ok(id),
            _ => Err(format!(
                "`{t}` is not a token id (comma-separated integers >= 0, or -1 for the model's \
                 list)"
            )),
        })
        .collect()
}
