//! Transcribes an audio file (any format GStreamer decodes) and prints the transcript.
//!
//! ```text
//! cargo run --release --example transcribe -- [OPTIONS] AUDIO
//! ```
//! Run with `--help` for the options. The audio is streamed through the engine window by window,
//! so memory stays flat however long the file is.

mod common;

use std::io::Write;
use std::process::ExitCode;

use common::{Arg, AudioReader, Cli, SAMPLE_RATE};
use gstwhispernpu::engine::ComputeType;
use gstwhispernpu::transcribe::{
    CaptionLayout, Segment, TailPadding, Task, TranscribeOptions, Transcriber, shape_captions,
};

const USAGE: &str = "\
usage: transcribe [OPTIONS] AUDIO

Transcribes AUDIO (a file or URI; any format GStreamer can decode) with Whisper.

options:
  --model NAME|DIR        model name (tiny.en, base) or model directory [default: base]
  --language CODE|auto    spoken language, e.g. en, de; auto detects it [default: auto]
  --task transcribe|translate
                          translate = English text from any language [default: transcribe]
  --beam-size N           1 = greedy decoding, N > 1 = beam search [default: 1]
  --threads N             worker threads, 0 = one per core [default: 0]
  --compute-type auto|f32|int8|bf16|int8-bf16
                          numeric precision: f32 = weights as stored, int8 = int8 decoder
                          weights, bf16 = bf16 encoder products (Intel AMX or AVX512_BF16
                          where available), int8-bf16 = encoder linear layers in int8
                          (AVX512-VNNI), attention bf16 (on Intel AMX: encoder bf16, decoder
                          layers int8); auto = the fastest whose accuracy holds: int8-bf16 on
                          Intel AMX or with AVX512_BF16 and VNNI (AMD Zen 4/5), bf16 with
                          AVX512_BF16 alone, else f32 [default: auto]
  --backend cpu|onnx|npu|npu-sim
                          engine: cpu = the native engine; onnx = ONNX Runtime on an ONNX
                          export of the model (scripts/export-onnx; Optimum's layout), with
                          --execution-provider; npu = AMD Ryzen AI NPU through XRT (needs an
                          amdxdna device, a build with --features npu and the built encoder
                          artifact; fails naming what is missing); npu-sim = the NPU host
                          code on a simulated device running the golden model (the AIE2
                          kernels' bf16 arithmetic and tile schedule on the CPU, one
                          dispatch per window; slow, for checking) [default: cpu]
  --execution-provider auto|cpu|vitisai|openvino|cuda|rocm|migraphx|coreml|directml
                          onnx: ONNX Runtime's execution provider; the library is
                          $ORT_DYLIB_PATH or the one scripts/fetch-runtime installs; auto =
                          the first accelerator it has, else cpu [default: auto]
  --execution-provider-options KEY=VALUE;...
                          onnx: options for the provider (Vitis AI: config_file, cache_dir,
                          cache_key; OpenVINO: device_type)
  --no-npu-overlap        npu, npu-sim: do not encode the next window while decoding this
                          one (on by default)
  --initial-prompt TEXT   text that precedes the audio (names, spelling, style)
  --condition-on-previous-text true|false
                          prompt each 30 s window with the text of the previous ones (openai's
                          and faster-whisper's default); false decodes each window on its own,
                          which keeps a repetition from carrying over [default: true]
  --tail-padding silence|zero
                          what follows the end of the audio in the last 30 s window:
                          log-mel of silence (whisper.cpp) or zeros (openai) [default: silence]
  --format txt|srt|vtt|json
                          output format on stdout [default: txt]
  --word-timestamps       time each word (cross-attention alignment): json gets
                          \"words\", srt one cue per word, vtt a cue per segment
                          with an inline <hh:mm:ss.mmm> timestamp before each word
  --vad                   decode only the speech Silero VAD finds (faster-whisper's vad_filter):
                          pauses of --min-silence-duration or more, music and noise are left
                          out, times stay those of the file [default: off]
  --vad-threshold P       speech probability at or above which a 32 ms frame is speech
                          [default: 0.5]
  --min-silence-duration MS
                          a pause this long is left out [default: 2000]
  --speech-pad MS         audio kept before and after each stretch of speech [default: 400]
  --max-line-width N      srt, vtt: split each segment at word boundaries into cues whose
                          lines hold at most N characters (openai-whisper's meaning; turns
                          word timing on; each cue timed by its words) [default: off]
  --max-line-count N      ... at most N lines per cue [default: no limit]
  --max-words-per-line N  ... at most N words per line [default: no limit]
  --caption-preset NAME   cea608-roll-up-2 (32 columns, 2 lines), cea608-roll-up-3 (32, 3),
                          none; the three limits above, set at once (later flags override)
  --hallucination-silence-threshold SECONDS
                          skip segments that look invented (improbable, very short or
                          long words) between silences longer than SECONDS, and resume
                          after the silence (uses word timing) [default: off]
  --hotwords TEXT         names and terms to spell as given (faster-whisper's hotwords): put at
                          the front of every window's prompt
  --prefix TEXT           text the transcript starts with (forced start of the first window)
  --compression-ratio-threshold X|none
                          decode a window again at the next temperature when its text
                          compresses (gzip) better than X: repetitive [default: 2.4]
  --logprob-threshold X|none
                          ... or when its average token log-probability is below X
                          [default: -1]
  --temperature-increment X
                          fallback temperatures 0, X, 2X, ... up to 1 (openai's
                          temperature_increment_on_fallback); 0 = greedy only [default: 0.2]
  --suppress-tokens LIST  comma-separated token ids never emitted; -1 = the model's list of
                          symbols, empty = none [default: -1]
  --suppress-blank true|false
                          the first token of a window's text may not be a blank
                          [default: true]
  -q, --quiet             no progress lines on stderr
  -h, --help              print this help

Progress (one line per decoded 30 s window) goes to stderr when the audio is longer than 60 s.
Models are installed with scripts/fetch-model NAME.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Txt,
    Srt,
    Vtt,
    Json,
}

struct Config {
    model: String,
    captions: CaptionLayout,
    load: gstwhispernpu::engine::LoadOptions,
    format: Format,
    quiet: bool,
    input: String,
    options: TranscribeOptions,
}

/// How the program ends.
enum Failure {
    /// Bad command line: the message and the usage, exit 2.
    Usage(String),
    /// A bad option value: the message, exit 2.
    BadValue(String),
    /// Anything else: the message, exit 1.
    Runtime(String),
}

fn main() -> ExitCode {
    common::guard_panics("transcribe", transcribe_main)
}

fn transcribe_main() -> ExitCode {
    let config = match parse_args() {
        Ok(Some(config)) => config,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(failure) => return fail(failure),
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => fail(failure),
    }
}

fn fail(failure: Failure) -> ExitCode {
    let mut stderr = std::io::stderr().lock();
    match failure {
        Failure::Usage(why) => {
            let _ = writeln!(stderr, "transcribe: {why}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Failure::BadValue(why) => {
            let _ = writeln!(stderr, "transcribe: {why} (see --help)");
            ExitCode::from(2)
        }
        Failure::Runtime(why) => {
            let _ = writeln!(stderr, "transcribe: {why}");
            ExitCode::from(1)
        }
    }
}

/// The offline VAD's segmentation settings, turning the VAD on (`--vad` and its three flags).
fn vad_segments(options: &mut TranscribeOptions) -> &mut gstwhispernpu::vad::SegmenterOptions {
    &mut options
        .vad_filter
        .get_or_insert_with(Default::default)
        .segments
}

/// `Ok(None)` when help was asked for.
fn parse_args() -> Result<Option<Config>, Failure> {
    let mut options = TranscribeOptions::default();
    let mut model = "base".to_string();
    let mut compute_type = ComputeType::Auto;
    let mut engine = common::EngineArgs::default();
    let mut format = Format::Txt;
    let mut captions = CaptionLayout::default();
    let mut quiet = false;
    let mut inputs = Vec::new();
    let takes_value = |name: &str| {
        matches!(
            name,
            "--model"
                | "--language"
                | "--task"
                | "--beam-size"
                | "--threads"
                | "--compute-type"
                | "--backend"
                | "--execution-provider"
                | "--execution-provider-options"
                | "--initial-prompt"
                | "--tail-padding"
                | "--format"
                | "--hallucination-silence-threshold"
                | "--condition-on-previous-text"
                | "--compression-ratio-threshold"
                | "--logprob-threshold"
                | "--temperature-increment"
                | "--suppress-tokens"
                | "--suppress-blank"
                | "--hotwords"
                | "--prefix"
                | "--max-line-width"
                | "--max-line-count"
                | "--max-words-per-line"
                | "--caption-preset"
                | "--vad-threshold"
                | "--min-silence-duration"
                | "--speech-pad"
        )
    };
    let mut cli = Cli::from_env();
    while let Some(arg) = cli.next(takes_value) {
        let (name, value) = match arg.map_err(Failure::Usage)? {
            Arg::Positional(p) => {
                inputs.push(p);
                continue;
            }
            Arg::Flag { name, value } => (name, value.unwrap_or_default()),
        };
        let bad = Failure::BadValue;
        match name.as_str() {
            "-h" | "--help" => return Ok(None),
            "-q" | "--quiet" => quiet = true,
            "--word-timestamps" => options.word_timestamps = true,
            "--vad" => {
                options.vad_filter.get_or_insert_with(Default::default);
            }
            "--vad-threshold" => {
                vad_segments(&mut options).threshold = value
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|p| *p > 0.0 && *p <= 1.0)
                    .ok_or_else(|| {
                        bad(format!(
                            "--vad-threshold: `{value}` is not a probability in (0, 1]"
                        ))
                    })?;
            }
            "--min-silence-duration" => {
                vad_segments(&mut options).min_silence_ms =
                    common::parse_number(&name, &value).map_err(bad)?
            }
            "--speech-pad" => {
                vad_segments(&mut options).speech_pad_ms =
                    common::parse_number(&name, &value).map_err(bad)?
            }
            "--condition-on-previous-text" => {
                options.condition_on_previous_text =
                    common::parse_bool(&name, &value).map_err(bad)?
            }
            "--no-npu-overlap" => options.npu_overlap = false,
            "--compression-ratio-threshold" | "--logprob-threshold" => {
                let v = match value.trim() {
                    "none" => None,
                    v => Some(v.parse::<f32>().ok().filter(|x| x.is_finite()).ok_or_else(
                        || bad(format!("{name}: `{value}` is not a number (or none)")),
                    )?),
                };
                if name == "--logprob-threshold" {
                    options.log_prob_threshold = v;
                } else {
                    options.compression_ratio_threshold = v;
                }
            }
            "--temperature-increment" => {
                let inc = value
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|x| (0.0..=1.0).contains(x))
                    .ok_or_else(|| {
                        bad(format!(
                            "--temperature-increment: `{value}` is not a number in 0..=1"
                        ))
                    })?;
                options.temperatures = gstwhispernpu::transcribe::temperature_schedule(inc);
            }
            "--suppress-tokens" => {
                options.suppress_tokens = gstwhispernpu::transcribe::parse_suppress_tokens(&value)
                    .map_err(|why| bad(format!("--suppress-tokens: {why}")))?;
            }
            "--max-line-width" => {
                captions.max_line_length = common::parse_number(&name, &value).map_err(bad)?
            }
            "--max-line-count" => {
                captions.max_lines = common::parse_number(&name, &value).map_err(bad)?
            }
            "--max-words-per-line" => {
                captions.max_words_per_line = common::parse_number(&name, &value).map_err(bad)?
            }
            "--caption-preset" => {
                captions = CaptionLayout::preset(&value).ok_or_else(|| {
                    let names: Vec<&str> = gstwhispernpu::transcribe::CAPTION_PRESETS
                        .iter()
                        .map(|p| p.0)
                        .collect();
                    bad(format!(
                        "--caption-preset: `{value}` is not one of {}",
                        names.join(", ")
                    ))
                })?
            }
            "--hotwords" => options.hotwords = Some(value).filter(|v| !v.trim().is_empty()),
            "--prefix" => options.prefix = Some(value).filter(|v| !v.trim().is_empty()),
            "--suppress-blank" => {
                options.suppress_blank = common::parse_bool(&name, &value).map_err(bad)?
            }
            "--hallucination-silence-threshold" => {
                let seconds: f32 = value.trim().parse().map_err(|_| {
                    bad(format!(
                        "--hallucination-silence-threshold: `{value}` is not a number of seconds"
                    ))
                })?;
                options.hallucination_silence_threshold = Some(seconds);
            }
            "--model" => {
                if value.trim().is_empty() {
                    return Err(bad("--model: empty model name".into()));
                }
                model = value;
            }
            "--language" => options.language = common::parse_language(&value),
            "--task" => {
                options.task = value.parse::<Task>().map_err(|_| {
                    bad(format!(
                        "--task: `{value}` is not one of transcribe, translate"
                    ))
                })?
            }
            "--beam-size" => {
                options.beam_size = common::parse_number(&name, &value).map_err(bad)?
            }
            "--threads" => options.n_threads = common::parse_number(&name, &value).map_err(bad)?,
            "--compute-type" => {
                compute_type = value
                    .parse::<ComputeType>()
                    .map_err(|e| bad(format!("--compute-type: {e}")))?
            }
            "--backend" | "--execution-provider" | "--execution-provider-options" => {
                engine.take(&name, &value);
            }
            "--initial-prompt" => {
                options.initial_prompt = Some(value).filter(|p| !p.trim().is_empty())
            }
            "--tail-padding" => {
                options.tail_padding = value.parse::<TailPadding>().map_err(|_| {
                    bad(format!(
                        "--tail-padding: `{value}` is not one of silence, zero"
                    ))
                })?
            }
            "--format" => {
                format = match value.as_str() {
                    "txt" => Format::Txt,
                    "srt" => Format::Srt,
                    "vtt" => Format::Vtt,
                    "json" => Format::Json,
                    _ => {
                        return Err(bad(format!(
                            "--format: `{value}` is not one of txt, srt, vtt, json"
                        )));
                    }
                }
            }
            _ => return Err(Failure::Usage(format!("unknown option {name}"))),
        }
    }
    let input = match inputs.len() {
        0 => return Err(Failure::Usage("missing AUDIO file".into())),
        1 => inputs.remove(0),
        _ => {
            return Err(Failure::Usage(format!(
                "expected one AUDIO file, got {}",
                inputs.len()
            )));
        }
    };
    // Range checks before the (slow) model load; the model-dependent ones come with it.
    options
        .validate()
        .map_err(|e| Failure::BadValue(e.to_string()))?;
    let (load, encoder) = engine
        .resolve(compute_type, options.n_threads)
        .map_err(Failure::BadValue)?;
    options.backend = encoder;
    if !captions.is_off() {
        if !matches!(format, Format::Srt | Format::Vtt) {
            return Err(Failure::BadValue(
                "--max-line-width, --max-line-count, --max-words-per-line and --caption-preset \
                 shape srt and vtt cues: add --format srt or --format vtt"
                    .into(),
            ));
        }
        // Cues are timed by their words.
        options.word_timestamps = true;
    }
    Ok(Some(Config {
        model,
        captions,
        load,
        format,
        quiet,
        input,
        options,
    }))
}

fn run(config: &Config) -> Result<(), Failure> {
    let runtime = |e: &dyn std::fmt::Display| Failure::Runtime(e.to_string());

    // Open the audio first: a missing or undecodable file is reported before the model loads.
    let mut reader = AudioReader::open(&config.input).map_err(|e| runtime(&e))?;
    let first = reader.next_chunk().map_err(|e| runtime(&e))?;

    let model = gstwhispernpu::engine::load_shared_opts(&config.model, &config.load)
        .map_err(|e| Failure::Runtime(common::model_error(&config.model, &e)))?;
    if !config.quiet {
        let (resolved, why) = config.load.compute_type.resolution();
        eprintln!(
            "transcribe: {}; compute type {resolved} ({}: {why})",
            model.engine_description(),
            config.load.compute_type
        );
    }
    // What the model rules out (a language it lacks, translate with an English-only model) is a
    // bad option value, like the checks made while parsing.
    let mut transcriber = Transcriber::new(model, config.options.clone()).map_err(|e| match e {
        gstwhispernpu::Error::InvalidOption { .. } => Failure::BadValue(e.to_string()),
        e => runtime(&e),
    })?;

    let total_seconds = reader.duration_seconds();
    let mut progress = Progress {
        enabled: !config.quiet,
        long: total_seconds.is_some_and(|d| d > 60.0),
        windows: 0,
    };

    let mut segments: Vec<Segment> = Vec::new();
    let mut samples: u64 = 0;
    let mut chunk = first;
    while let Some(audio) = chunk {
        samples += audio.len() as u64;
        let new = transcriber.push(&audio).map_err(|e| runtime(&e))?;
        progress.report(samples, transcriber.stats().windows, &new);
        segments.extend(new);
        chunk = reader.next_chunk().map_err(|e| runtime(&e))?;
    }
    // `finish` resets the transcriber, so read the language first.
    let language = transcriber.language().map(str::to_string);
    let new = transcriber.finish().map_err(|e| runtime(&e))?;
    progress.report(samples, transcriber.stats().windows, &new);
    segments.extend(new);
    if let Some(d) = transcriber.language_detection()
        && !config.quiet
    {
        let others: Vec<String> = d.top[1..]
            .iter()
            .take(3)
            .map(|(code, p)| format!("{code} {p:.2}"))
            .collect();
        eprintln!(
            "transcribe: detected language {} (probability {:.2}; then {})",
            d.language,
            d.probability,
            others.join(", ")
        );
    }
    if let Some(why) = transcriber.take_warning() {
        eprintln!("transcribe: warning: {why}");
    }
    if config.options.vad_filter.is_some() && !config.quiet {
        let stats = transcriber.stats();
        eprintln!(
            "transcribe: VAD ({}): {:.1} s of speech decoded, {:.1} s left out",
            transcriber.vad_detector().unwrap_or("none"),
            stats.vad_speech_seconds,
            stats.vad_skipped_seconds
        );
    }
    if let Some(why) = transcriber.npu_failure() {
        eprintln!("transcribe: warning: NPU encoder given up, the CPU encoded from then on: {why}");
    }
    if let Some(npu) = transcriber.npu_stats()
        && !config.quiet
    {
        eprintln!(
            "transcribe: NPU encoder: {} windows, {} dispatches, speculative next-window encodes: \
             {} used, {} discarded",
            npu.windows, npu.dispatches, npu.speculative_hits, npu.speculative_misses
        );
    }

    let language = segments
        .first()
        .map(|s| s.language.clone())
        .or(language)
        .or_else(|| config.options.language.clone())
        .unwrap_or_default();
    let duration = samples as f64 / SAMPLE_RATE as f64;
    let text = match config.format {
        Format::Txt => to_txt(&segments),
        Format::Srt => to_srt(&segments, &config.captions),
        Format::Vtt => to_vtt(&segments, &config.captions),
        Format::Json => to_json(&config.model, &segments, &language, duration),
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        Ok(()) => Ok(()),
        // The reader went away (`| head`): not our failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::Runtime(format!("cannot write the output: {e}"))),
    }
}

/// Progress lines on stderr, one per decoded 30 s window, for audio longer than 60 s (when the
/// format says how long the audio is; otherwise from the moment it passes 60 s).
struct Progress {
    enabled: bool,
    /// The audio is (or has turned out to be) longer than 60 s.
    long: bool,
    /// Windows already reported.
    windows: u64,
}

impl Progress {
    fn report(&mut self, samples: u64, windows: u64, new: &[Segment]) {
        let received = samples as f64 / SAMPLE_RATE as f64;
        self.long |= received > 60.0;
        if !self.enabled || !self.long || windows == self.windows {
            return;
        }
        self.windows = windows;
        // How far the transcript reaches: the end of the newest segment, or the window's end.
        let upto = new
            .last()
            .map(|s| s.end)
            .unwrap_or_else(|| (windows as f64 * 30.0).min(received));
        let mut line = new
            .last()
            .map(|s| s.text.trim().to_string())
            .unwrap_or_default();
        if line.chars().count() > 60 {
            line = line.chars().take(57).collect::<String>() + "...";
        }
        let _ = writeln!(
            std::io::stderr(),
            "[{}] decoded up to {} (window {windows}){}{line}",
            common::clock(received),
            common::clock(upto),
            if line.is_empty() { "" } else { ": " },
        );
    }
}

/// Cue text on one line (SRT and WebVTT end a cue at a blank line).
fn cue_text(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn to_txt(segments: &[Segment]) -> String {
    let mut out = segments
        .iter()
        .map(|s| s.text.trim())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    out.push('\n');
    out
}

/// One cue per segment, or per word when the segments have words (SubRip has no timing
/// inside a cue); with a caption `layout`, one cue per shaped caption, its lines as the cue's.
fn to_srt(segments: &[Segment], layout: &CaptionLayout) -> String {
    let cues: Vec<(f64, f64, String)> = if !layout.is_off() {
        shaped(segments, layout, cue_text)
    } else {
        segments
            .iter()
            .flat_map(|s| {
                if s.words.is_empty() {
                    vec![(s.start, s.end, cue_text(&s.text))]
                } else {
                    s.words
                        .iter()
                        .map(|w| (w.start, w.end, cue_text(&w.text)))
                        .collect()
                }
            })
            .collect()
    };
    let mut out = String::new();
    for (i, (start, end, text)) in cues.into_iter().enumerate() {
        out += &format!(
            "{}\n{} --> {}\n{}\n\n",
            i + 1,
            common::timestamp(start, ','),
            common::timestamp(end, ','),
            text
        );
    }
    out
}

/// The segments shaped into caption cues: `(start, end, text)`, each line passed through
/// `line` and the lines joined with `\n`.
fn shaped(
    segments: &[Segment],
    layout: &CaptionLayout,
    line: fn(&str) -> String,
) -> Vec<(f64, f64, String)> {
    segments
        .iter()
        .flat_map(|s| shape_captions(s, layout, s.end))
        .map(|c| {
            let lines: Vec<String> = c.lines.iter().map(|l| line(l)).collect();
            (c.start, c.end, lines.join("\n"))
        })
        .collect()
}

/// WebVTT cue text is markup: escape it (then `-->` cannot appear either).
fn vtt_escape(text: &str) -> String {
    cue_text(text)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One cue per segment; with words, each word after the first is preceded by its start as a
/// WebVTT cue timestamp (`<00:00:01.500>`), which players use to reveal or highlight the text
/// word by word. With a caption `layout`, one cue per shaped caption instead.
fn to_vtt(segments: &[Segment], layout: &CaptionLayout) -> String {
    let cues: Vec<(f64, f64, String)> = if !layout.is_off() {
        shaped(segments, layout, vtt_escape)
    } else {
        segments
            .iter()
            .map(|s| (s.start, s.end, vtt_timed_text(s)))
            .collect()
    };
    let mut out = String::from("WEBVTT\n\n");
    for (start, end, text) in cues {
        out += &format!(
            "{} --> {}\n{}\n\n",
            common::timestamp(start, '.'),
            common::timestamp(end, '.'),
            text
        );
    }
    out
}

/// A segment's WebVTT cue text, with a cue timestamp before each word after the first.
fn vtt_timed_text(s: &Segment) -> String {
    if s.words.is_empty() {
        return vtt_escape(&s.text);
    }
    let mut text = String::new();
    let mut last = s.start;
    for (i, w) in s.words.iter().enumerate() {
        // Cue timestamps must lie strictly inside the cue and increase.
        if i > 0 && w.start > last && w.start < s.end {
            text += &format!("<{}>", common::timestamp(w.start, '.'));
            last = w.start;
        }
        if i > 0 {
            text.push(' ');
        }
        text += &vtt_escape(&w.text);
    }
    text
}

/// One segment in the JSON output, fields in the documented order.
#[derive(serde::Serialize)]
struct JsonSegment<'a> {
    id: usize,
    start: f64,
    end: f64,
    text: &'a str,
    tokens: &'a [u32],
    avg_logprob: f32,
    no_speech_prob: f32,
    temperature: f32,
    compression_ratio: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    words: Option<Vec<JsonWord<'a>>>,
}

/// One word in the JSON output (openai's `word`, `start`, `end`, `probability`).
#[derive(serde::Serialize)]
struct JsonWord<'a> {
    word: &'a str,
    start: f64,
    end: f64,
    probability: Option<f32>,
}

/// `{"model", "language", "duration", "segments": [...]}`, one segment per line. serde_json
/// writes non-finite floats as null, so the output is always valid JSON.
fn to_json(model: &str, segments: &[Segment], language: &str, duration: f64) -> String {
    let ms = |t: f64| (t * 1000.0).round() / 1000.0;
    let mut out = format!(
        "{{\n  \"model\": {},\n  \"language\": {},\n  \"duration\": {},\n  \"segments\": [",
        json(model),
        json(language),
        json(&ms(duration))
    );
    for (id, s) in segments.iter().enumerate() {
        let segment = JsonSegment {
            id,
            start: ms(s.start),
            end: ms(s.end),
            text: &s.text,
            tokens: &s.tokens,
            avg_logprob: s.avg_logprob,
            no_speech_prob: s.no_speech_prob,
            temperature: s.temperature,
            compression_ratio: s.compression_ratio,
            words: (!s.words.is_empty()).then(|| {
                s.words
                    .iter()
                    .map(|w| JsonWord {
                        word: &w.text,
                        start: ms(w.start),
                        end: ms(w.end),
                        probability: w.probability,
                    })
                    .collect()
            }),
        };
        out += if id == 0 { "\n    " } else { ",\n    " };
        out += &json(&segment);
    }
    out += if segments.is_empty() {
        "]\n}\n"
    } else {
        "\n  ]\n}\n"
    };
    out
}

/// Compact JSON of one value (a string, number or segment).
fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}
