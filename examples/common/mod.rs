//! Code shared by the examples: reading any audio GStreamer can decode as 16 kHz mono f32, a
//! small command-line parser, and time formatting.
//!
//! Each example includes this file with `mod common;`; not every example uses every item.
#![allow(dead_code)]

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gst::prelude::*;

/// Sample rate the engine expects.
pub const SAMPLE_RATE: u32 = 16_000;

/// Why audio could not be read. `Display` gives a one-line message for the user.
#[derive(Debug)]
pub enum AudioError {
    /// The path does not exist.
    NoSuchFile(String),
    /// The path exists but is not a regular file (a directory, ...).
    NotAFile(String),
    /// GStreamer could not be initialised or lacks an element we need.
    Setup(String),
    /// The pipeline failed: unknown format, corrupt data, no audio stream, ...
    Decode { input: String, why: String },
}

impl fmt::Display for AudioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AudioError::NoSuchFile(p) => write!(f, "no such file: {p}"),
            AudioError::NotAFile(p) => write!(f, "not a regular file: {p}"),
            AudioError::Setup(why) => write!(f, "GStreamer: {why}"),
            AudioError::Decode { input, why } => write!(f, "cannot decode {input}: {why}"),
        }
    }
}

impl std::error::Error for AudioError {}

/// Streams the audio of a file (or URI) as 16 kHz mono f32 chunks, as GStreamer decodes them:
/// `uridecodebin ! audioconvert ! audioresample ! appsink`. Only a few buffers are queued, so the
/// whole file is never held in memory; the decoder waits while the caller is busy.
pub struct AudioReader {
    input: String,
    pipeline: gst::Pipeline,
    appsink: gst_app::AppSink,
    bus: gst::Bus,
    /// Set when `uridecodebin` has exposed all its pads.
    no_more_pads: Arc<AtomicBool>,
    /// Set when an audio pad was linked to our converter.
    audio_linked: Arc<AtomicBool>,
    done: bool,
}

impl AudioReader {
    /// Opens `input`, a file path or a URI (`file:///...`, `http://...`), and starts decoding.
    pub fn open(input: &str) -> Result<Self, AudioError> {
        let uri = to_uri(input)?;
        gst::init().map_err(|e| AudioError::Setup(e.to_string()))?;

        let make = |factory: &str| {
            gst::ElementFactory::make(factory).build().map_err(|_| {
                AudioError::Setup(format!(
                    "element `{factory}` is missing (install gstreamer1.0-plugins-base; see scripts/setup)"
                ))
            })
        };
        let decode = make("uridecodebin")?;
        decode.set_property("uri", &uri);
        let convert = make("audioconvert")?;
        let resample = make("audioresample")?;
        let caps = gst::Caps::builder("audio/x-raw")
            .field("format", "F32LE")
            .field("rate", SAMPLE_RATE as i32)
            .field("channels", 1i32)
            .field("layout", "interleaved")
            .build();
        // A bounded queue: backpressure keeps memory flat whatever the file length.
        let appsink = gst_app::AppSink::builder()
            .caps(&caps)
            .max_buffers(32)
            .drop(false)
            .sync(false)
            .build();

        let pipeline = gst::Pipeline::new();
        pipeline
            .add_many([&decode, &convert, &resample, appsink.upcast_ref()])
            .map_err(|e| AudioError::Setup(e.to_string()))?;
        gst::Element::link_many([&convert, &resample, appsink.upcast_ref()])
            .map_err(|e| AudioError::Setup(e.to_string()))?;

        let no_more_pads = Arc::new(AtomicBool::new(false));
        let audio_linked = Arc::new(AtomicBool::new(false));
        {
            let convert = convert.downgrade();
            let pipeline = pipeline.downgrade();
            let audio_linked = Arc::clone(&audio_linked);
            decode.connect_pad_added(move |_, pad| {
                let (Some(convert), Some(pipeline)) = (convert.upgrade(), pipeline.upgrade())
                else {
                    return;
                };
                let is_audio = pad
                    .current_caps()
                    .or_else(|| Some(pad.query_caps(None)))
                    .and_then(|caps| caps.structure(0).map(|s| s.name().starts_with("audio/")))
                    .unwrap_or(false);
                let sink = convert.static_pad("sink");
                if let Some(sink) = sink.filter(|s| is_audio && !s.is_linked()) {
                    if pad.link(&sink).is_ok() {
                        audio_linked.store(true, Ordering::SeqCst);
                    }
                    return;
                }
                // Video, subtitles or a second audio stream: discard, so that stream does not
                // stop the pipeline with not-linked.
                if let Ok(fakesink) = gst::ElementFactory::make("fakesink")
                    .property("sync", false)
                    .property("async", false)
                    .build()
                    && pipeline.add(&fakesink).is_ok()
                {
                    let _ = fakesink.sync_state_with_parent();
                    if let Some(sinkpad) = fakesink.static_pad("sink") {
                        let _ = pad.link(&sinkpad);
                    }
                }
            });
        }
        {
            let no_more_pads = Arc::clone(&no_more_pads);
            decode.connect_no_more_pads(move |_| no_more_pads.store(true, Ordering::SeqCst));
        }

        let bus = pipeline
            .bus()
            .ok_or_else(|| AudioError::Setup("pipeline has no bus".into()))?;
        let reader = Self {
            input: input.to_string(),
            pipeline,
            appsink,
            bus,
            no_more_pads,
            audio_linked,
            done: false,
        };
        if reader.pipeline.set_state(gst::State::Playing).is_err() {
            // The bus usually says why (e.g. the file cannot be opened).
            return Err(reader.bus_error().unwrap_or_else(|| AudioError::Decode {
                input: reader.input.clone(),
                why: "the pipeline failed to start".into(),
            }));
        }
        Ok(reader)
    }

    /// Total duration, once the demuxer knows it (after the first chunk), if the format says.
    pub fn duration_seconds(&self) -> Option<f64> {
        self.pipeline
            .query_duration::<gst::ClockTime>()
            .map(|d| d.nseconds() as f64 / 1e9)
    }

    /// The next chunk of samples; `Ok(None)` at end of stream.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<f32>>, AudioError> {
        if self.done {
            return Ok(None);
        }
        loop {
            if let Some(sample) = self
                .appsink
                .try_pull_sample(gst::ClockTime::from_mseconds(100))
            {
                let Some(buffer) = sample.buffer() else {
                    continue;
                };
                let map = buffer.map_readable().map_err(|_| AudioError::Decode {
                    input: self.input.clone(),
                    why: "cannot map a decoded buffer".into(),
                })?;
                let samples = map
                    .as_slice()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                return Ok(Some(samples));
            }
            if let Some(err) = self.bus_error() {
                self.stop();
                return Err(err);
            }
            if self.appsink.is_eos() {
                self.stop();
                return Ok(None);
            }
            if self.no_more_pads.load(Ordering::SeqCst) && !self.audio_linked.load(Ordering::SeqCst)
            {
                self.stop();
                return Err(AudioError::Decode {
                    input: self.input.clone(),
                    why: "it has no audio stream".into(),
                });
            }
        }
    }

    /// The first error message waiting on the bus, as a one-line error.
    fn bus_error(&self) -> Option<AudioError> {
        while let Some(msg) = self.bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(err) = msg.view() {
                return Some(AudioError::Decode {
                    input: self.input.clone(),
                    why: one_line(&err.error().to_string()),
                });
            }
        }
        None
    }

    fn stop(&mut self) {
        self.done = true;
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

impl Drop for AudioReader {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// A path becomes a `file://` URI after checking it exists; anything that looks like a URI is
/// passed through.
fn to_uri(input: &str) -> Result<String, AudioError> {
    if input.contains("://") {
        return Ok(input.to_string());
    }
    let path = Path::new(input);
    let meta = std::fs::metadata(path).map_err(|_| AudioError::NoSuchFile(input.to_string()))?;
    if !meta.is_file() {
        return Err(AudioError::NotAFile(input.to_string()));
    }
    let abs = std::fs::canonicalize(path).map_err(|_| AudioError::NoSuchFile(input.to_string()))?;
    // Percent-encode what a URI cannot hold literally.
    let mut uri = String::from("file://");
    for byte in abs.to_string_lossy().bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                uri.push(byte as char)
            }
            _ => uri.push_str(&format!("%{byte:02X}")),
        }
    }
    Ok(uri)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `MM:SS.mmm`, or `H:MM:SS.mmm` from one hour on: for progress lines.
pub fn clock(seconds: f64) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}.{ms:03}")
    } else {
        format!("{m:02}:{s:02}.{ms:03}")
    }
}

/// `HH:MM:SS` + `sep` + `mmm`: subtitle timestamps (`,` for SRT, `.` for WebVTT).
pub fn timestamp(seconds: f64, sep: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    format!("{h:02}:{m:02}:{s:02}{sep}{ms:03}")
}

/// A minimal command-line parser: `--flag VALUE`, `--flag=VALUE`, boolean `--flag`, `-h`,
/// positionals, and `--` to end options.
pub struct Cli {
    args: std::vec::IntoIter<String>,
    only_positionals: bool,
}

/// One parsed command-line item.
pub enum Arg {
    /// `--name` with its value if the flag takes one.
    Flag {
        name: String,
        value: Option<String>,
    },
    Positional(String),
}

impl Cli {
    pub fn from_env() -> Self {
        Self {
            args: std::env::args().skip(1).collect::<Vec<_>>().into_iter(),
            only_positionals: false,
        }
    }

    /// The next item. `takes_value(name)` says which flags take a value; a missing value is an
    /// error message.
    pub fn next(&mut self, takes_value: impl Fn(&str) -> bool) -> Option<Result<Arg, String>> {
        let arg = self.args.next()?;
        if self.only_positionals || arg == "-" || !arg.starts_with('-') {
            return Some(Ok(Arg::Positional(arg)));
        }
        if arg == "--" {
            self.only_positionals = true;
            return self.next(takes_value);
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        if !takes_value(&name) {
            if inline.is_some() {
                return Some(Err(format!("{name} takes no value")));
            }
            return Some(Ok(Arg::Flag { name, value: None }));
        }
        let value = match inline {
            Some(v) => v,
            None => match self.args.next() {
                Some(v) => v,
                None => return Some(Err(format!("{name} needs a value"))),
            },
        };
        Some(Ok(Arg::Flag {
            name,
            value: Some(value),
        }))
    }
}

/// Parses a number option, naming the flag in the error.
pub fn parse_number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{flag}: `{value}` is not a valid number"))
}

/// The language option: a code, or `auto` for detection.
/// `true`/`false` (also `1`/`0`, `yes`/`no`) for `flag`.
pub fn parse_bool(flag: &str, value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{flag}: `{value}` is not true or false")),
    }
}

pub fn parse_language(value: &str) -> Option<String> {
    match value.trim() {
        "" | "auto" => None,
        code => Some(code.to_ascii_lowercase()),
    }
}

/// Message for a model that cannot be loaded, with how to fix it. (The engine's messages for a
/// directory or an unknown name already say what to do.)
pub fn model_error(name: &str, err: &dyn fmt::Display) -> String {
    if gstwhispernpu::model::KNOWN_MODELS.contains(&name) {
        format!("cannot load model {name}: {err}; install it with scripts/fetch-model {name}")
    } else {
        format!("cannot load model {name}: {err}")
    }
}

/// Words of `text` after openai-style light normalisation: lower case, every character that is
/// neither alphanumeric nor an apostrophe becomes a space, apostrophes at word ends are dropped,
/// numbers stay as they are. The same rules as `wer_percent` in tests/common/mod.rs.
pub fn normalized_words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .map(|w| w.trim_matches('\'').to_string())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Word error rate in percent of `hyp` against `reference` (word-level Levenshtein distance over
/// the reference's word count, after [`normalized_words`]); copied from tests/common/mod.rs. An
/// empty reference gives 0 for an empty hypothesis, else 100.
pub fn wer_percent(reference: &str, hyp: &str) -> f64 {
    let r = normalized_words(reference);
    let h = normalized_words(hyp);
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 100.0 };
    }
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    let mut cur = vec![0; h.len() + 1];
    for i in 1..=r.len() {
        cur[0] = i;
        for j in 1..=h.len() {
            let sub = prev[j - 1] + usize::from(r[i - 1] != h[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    100.0 * prev[h.len()] as f64 / r.len() as f64
}

/// A `kB` field of /proc/self/status (`VmRSS`, `VmHWM`, ...), in KiB; `None` where there is none.
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Runs a program's body so that a panic anywhere in it (a bug, or a fault injected with
/// `WHISPERNPU_TEST_FAULT`) ends the program with one line on stderr naming the cause and where it
/// happened, and exit status 1, instead of Rust's multi-line panic report.
pub fn guard_panics(
    program: &str,
    body: impl FnOnce() -> std::process::ExitCode,
) -> std::process::ExitCode {
    use std::sync::Mutex;
    static WHERE: Mutex<Option<String>> = Mutex::new(None);
    std::panic::set_hook(Box::new(|info| {
        let mut at = WHERE.lock().unwrap_or_else(|e| e.into_inner());
        if at.is_none() {
            *at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()));
        }
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(code) => code,
        Err(payload) => {
            let message = gstwhispernpu::error::panic_message(&*payload);
            let at = WHERE.lock().unwrap_or_else(|e| e.into_inner()).take();
            eprintln!(
                "{program}: internal error: {message}{} (a bug: please report it)",
                at.map(|a| format!(" at {a}")).unwrap_or_default()
            );
            std::process::ExitCode::from(1)
        }
    }
}

/// The engine flags shared by the CLIs: `--backend cpu|onnx|npu|npu-sim`,
/// `--execution-provider P` and `--execution-provider-options K=V;...`.
#[derive(Debug, Clone, Default)]
pub struct EngineArgs {
    pub backend: Option<String>,
    pub provider: Option<String>,
    pub provider_options: Option<String>,
}

impl EngineArgs {
    pub const FLAGS: [&'static str; 3] = [
        "--backend",
        "--execution-provider",
        "--execution-provider-options",
    ];

    /// Takes one of [`FLAGS`](Self::FLAGS); `false` for another flag.
    pub fn take(&mut self, name: &str, value: &str) -> bool {
        let slot = match name {
            "--backend" => &mut self.backend,
            "--execution-provider" => &mut self.provider,
            "--execution-provider-options" => &mut self.provider_options,
            _ => return false,
        };
        *slot = Some(value.to_string());
        true
    }

    /// How to load the model and which encoder runs it; the message names the flag at fault.
    pub fn resolve(
        &self,
        compute_type: gstwhispernpu::engine::ComputeType,
        threads: usize,
    ) -> Result<
        (
            gstwhispernpu::engine::LoadOptions,
            gstwhispernpu::transcribe::EncoderBackend,
        ),
        String,
    > {
        use gstwhispernpu::engine::onnx::{OnnxOptions, Provider};
        use gstwhispernpu::engine::{EngineKind, LoadOptions};
        use gstwhispernpu::transcribe::EncoderBackend;
        let backend = self.backend.as_deref().unwrap_or("cpu");
        let onnx = backend == "onnx";
        if !onnx && (self.provider.is_some() || self.provider_options.is_some()) {
            return Err(
                "--execution-provider and --execution-provider-options go with --backend onnx"
                    .into(),
            );
        }
        let encoder = match backend {
            "cpu" | "onnx" => EncoderBackend::Cpu,
            other => other.parse::<EncoderBackend>().map_err(|_| {
                format!("--backend: `{other}` is not one of cpu, onnx, npu, npu-sim")
            })?,
        };
        let engine = if onnx {
            let provider = match &self.provider {
                Some(p) => p
                    .parse::<Provider>()
                    .map_err(|e| format!("--execution-provider: {e}"))?,
                None => Provider::Auto,
            };
            let provider_options =
                OnnxOptions::parse_provider_options(self.provider_options.as_deref().unwrap_or(""))
                    .map_err(|e| format!("--execution-provider-options: {e}"))?;
            EngineKind::Onnx(OnnxOptions {
                provider,
                provider_options,
                threads,
            })
        } else {
            EngineKind::Native
        };
        Ok((
            LoadOptions {
                compute_type,
                engine,
            },
            encoder,
        ))
    }
}

/// The CPU, as figures are reported with: `/proc/cpuinfo`'s model name, family and model
/// numbers, and the CPUs this process may use.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{} (family {} model {}, {cpus} CPUs)",
        field("model name").unwrap_or_else(|| "unknown CPU".into()),
        field("cpu family").unwrap_or_else(|| "?".into()),
        field("model").unwrap_or_else(|| "?".into()),
    )
}
