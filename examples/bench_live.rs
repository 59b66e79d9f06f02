//! Live-captioning benchmark: plays speech into the `whispernpu` element in real time from a live
//! source and measures what a captioning user sees.
//!
//! ```text
//! cargo run --release --example bench_live -- [--model tiny.en,base] [--audio FILE] [OPTIONS]
//! scripts/bench-live            # both models on the synthesised recording and jfk.wav, one table
//! ```
//! Run with `--help` for the options.
//!
//! Pipeline: `appsrc is-live=true format=time ! whispernpu mode=live ! appsink sync=false`
//! (`text/x-raw, format=utf8`). A feeder thread paces 20 ms buffers of F32LE 16 kHz mono against
//! the pipeline clock, as a capture source does: buffer `i` carries PTS `t0 + i × 20 ms` (running
//! time of its first sample) and is pushed when the clock reaches the running time of its last
//! sample. With `--speed X` the buffers are pushed X times faster but keep their audio timestamps,
//! so the element still sees one contiguous live stream.
//!
//! Latency of a text buffer = its arrival at the appsink (pipeline clock time − base time) minus
//! the running time at which the last sample it covers was pushed (its PTS + duration in running
//! time; at `--speed X` the audio offset is divided by X). Live WER is measured against the
//! offline transcript of the same audio made in the same run with the library's `Transcriber`
//! (same model, default options) and, with `--reference FILE`, against a known text.
//!
//! The element is registered statically from the `gstwhispernpu` library this example links
//! (`--plugin static`, the default: the measured element is exactly the compiled source, and it
//! shares the loaded weights with the offline reference), or taken from the GStreamer registry
//! (`--plugin path`: `GST_PLUGIN_PATH`, which `scripts/bench-live` points at the release dir).

mod common;
#[path = "bench_live/streams.rs"]
mod streams;

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Arg, AudioReader, Cli, SAMPLE_RATE};
use gst::ClockTime;
use gst::glib;
use gst::prelude::*;
use gstwhispernpu::transcribe::{TranscribeOptions, Transcriber};

const USAGE: &str = "\
usage: bench_live [OPTIONS]
       bench_live --table FILE...

Plays speech (or noise) into the whispernpu element in real time from a live source and reports
caption latency, words per buffer and WER of the live text.

options:
  --model NAME[,NAME...]  models to run in turn (repeatable) [default: tiny.en,base]
  --latency MS            the element's latency property [default: 5000]
  --audio FILE            speech to play [default: target/bench-live/multiwindow.wav, made from
                          tests/fixtures/multiwindow.txt by scripts/synth-speech if missing;
                          its reference text is then multiwindow.txt]
  --reference FILE        known text of the audio: also report WER against it
  --speed X               play X times faster than real time (0.1..=100) [default: 1]
  --noise SECONDS         play SECONDS of generated non-speech instead (digital silence, white
                          noise at -30 dBFS, pink noise, 100 Hz hum, quiet room tone, mixes; fixed
                          seed) and count the text buffers: the target is zero
  --soak SECONDS          loop the speech with 2 s of silence between passes until at least
                          SECONDS were played (whole passes); RSS at start, every 5 min, at end
  --set PROP=VALUE        set an element property (repeatable; applied last)
  --vad BOOL              the element's vad property, when it has one [default: true]
  --partial-results BOOL  the element's partial-results property, when it has one [default: true]
  --plugin static|path    static: register the element linked into this program; path: use the
                          one GStreamer finds through GST_PLUGIN_PATH [default: static]
  --idle-timeout SECONDS  after the last buffer, fail when the element sends nothing downstream
                          (no text, GAP or EOS) for this long: a hang [default: 120]
  --eos-timeout SECONDS   after the last buffer, fail when EOS has not come within this long even
                          though output continues [default: 300 + 4 x played seconds / speed]
  --streams N             run N live elements at once in one process (one shared model), each
                          fed in real time by its own live source, started --stagger seconds
                          apart; report per stream latency against the true end of the speech,
                          WER, and CPU cores per stream [default audio: target/bench-live/
                          sentences.wav with --times target/bench-live/sentences.tsv, made by
                          scripts/bench-live --streams N]
  --stagger SECONDS       between the starts of two streams [default: 1.7]
  --times FILE            with --streams: start, end and text of each sentence of the audio
                          (scripts/synth-speech with SYNTH_TIMES): latency per sentence = arrival
                          of its last word - end of its speech; without it, a text buffer's end
                          is pulled back to the end of the speech when it falls in a pause
  --json                  one JSON summary line per run on stdout (the report goes to stderr)
  --table FILE...         print the summary table of JSON lines written by --json, and exit
  -v, --verbose           print every text buffer and partial as it arrives
  -h, --help              print this help

Errors are one line on stderr: exit 1 for a missing model, plugin or file or a failed run (an
element error, no EOS in time), exit 2 for a bad command line.";

/// Samples per buffer: 20 ms.
const BLOCK: usize = 320;
/// Silence between passes in `--soak` mode.
const SOAK_GAP_SECONDS: f64 = 2.0;
/// RSS report period in `--soak` mode.
const SOAK_REPORT: Duration = Duration::from_secs(300);
/// Progress line period for long runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// Longest wait for the element's model loader.
const MODEL_LOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// The known text of jfk.wav (also written by scripts/bench-live).
const JFK_TEXT: &str = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";

// ---------------------------------------------------------------------------------------------
// Command line

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PluginSource {
    Static,
    Path,
}

#[derive(Debug, Clone)]
enum Program {
    /// Speech from a file, played `--soak` or once.
    Speech,
    /// `--noise SECONDS`.
    Noise(f64),
}

struct Config {
    /// `--streams N`: N elements at once (see `streams`).
    streams: Option<streams::StreamsConfig>,
    models: Vec<String>,
    latency_ms: u32,
    audio: Option<String>,
    reference: Option<String>,
    speed: f64,
    program: Program,
    soak: Option<f64>,
    sets: Vec<(String, String)>,
    vad: bool,
    partial_results: bool,
    plugin: PluginSource,
    eos_timeout: Option<f64>,
    idle_timeout: f64,
    json: bool,
    verbose: bool,
}

enum Failure {
    /// Bad command line, exit 2.
    Usage(String),
    /// Anything else, exit 1.
    Runtime(String),
}

fn usage(why: impl Into<String>) -> Failure {
    Failure::Usage(why.into())
}

fn runtime(why: impl Into<String>) -> Failure {
    Failure::Runtime(why.into())
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|parsed| match parsed {
        Parsed::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Parsed::Table(files) => print_table(&files),
        Parsed::Run(config) => run(&config),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(why)) => {
            let _ = writeln!(std::io::stderr(), "bench_live: {why} (see --help)");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(why)) => {
            let _ = writeln!(std::io::stderr(), "bench_live: {why}");
            ExitCode::from(1)
        }
    }
}

enum Parsed {
    Help,
    Table(Vec<String>),
    Run(Config),
}

fn parse_bool(flag: &str, value: &str) -> Result<bool, Failure> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(usage(format!(
            "{flag}: `{value}` is not a boolean (true/false)"
        ))),
    }
}

fn parse_seconds(flag: &str, value: &str, min: f64, max: f64) -> Result<f64, Failure> {
    let x: f64 = common::parse_number(flag, value).map_err(usage)?;
    if !x.is_finite() || x < min || x > max {
        return Err(usage(format!("{flag}: {value} is not in {min}..={max}")));
    }
    Ok(x)
}

fn parse_args() -> Result<Parsed, Failure> {
    let mut models: Vec<String> = Vec::new();
    let mut latency_ms: u32 = 5000;
    let mut audio = None;
    let mut reference = None;
    let mut speed = 1.0;
    let mut noise = None;
    let mut soak = None;
    let mut sets = Vec::new();
    let mut vad = true;
    let mut partial_results = true;
    let mut plugin = PluginSource::Static;
    let mut eos_timeout = None;
    let mut idle_timeout = 120.0;
    let mut json = false;
    let mut verbose = false;
    let mut table = false;
    let mut streams = None;
    let mut stagger = 1.7;
    let mut times = None;
    let mut positionals = Vec::new();
    let takes_value = |name: &str| {
        matches!(
            name,
            "--model"
                | "--latency"
                | "--audio"
                | "--reference"
                | "--speed"
                | "--noise"
                | "--soak"
                | "--set"
                | "--vad"
                | "--partial-results"
                | "--plugin"
                | "--eos-timeout"
                | "--idle-timeout"
                | "--streams"
                | "--stagger"
                | "--times"
        )
    };
    let mut cli = Cli::from_env();
    while let Some(arg) = cli.next(takes_value) {
        let (name, value) = match arg.map_err(usage)? {
            Arg::Positional(p) => {
                positionals.push(p);
                continue;
            }
            Arg::Flag { name, value } => (name, value.unwrap_or_default()),
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-v" | "--verbose" => verbose = true,
            "--json" => json = true,
            "--table" => table = true,
            "--model" => {
                for m in value.split(',').map(str::trim) {
                    if m.is_empty() {
                        return Err(usage("--model: empty model name"));
                    }
                    models.push(m.to_string());
                }
            }
            "--latency" => latency_ms = common::parse_number(&name, &value).map_err(usage)?,
            "--audio" => audio = Some(value),
            "--reference" => reference = Some(value),
            "--speed" => speed = parse_seconds(&name, &value, 0.1, 100.0)?,
            "--noise" => noise = Some(parse_seconds(&name, &value, 1.0, 86_400.0)?),
            "--soak" => soak = Some(parse_seconds(&name, &value, 1.0, 7.0 * 86_400.0)?),
            "--eos-timeout" => eos_timeout = Some(parse_seconds(&name, &value, 1.0, 86_400.0)?),
            "--idle-timeout" => idle_timeout = parse_seconds(&name, &value, 1.0, 86_400.0)?,
            "--streams" => {
                let n: usize = common::parse_number(&name, &value).map_err(usage)?;
                if !(1..=64).contains(&n) {
                    return Err(usage(format!("--streams {n}: between 1 and 64")));
                }
                streams = Some(n);
            }
            "--stagger" => stagger = parse_seconds(&name, &value, 0.0, 60.0)?,
            "--times" => times = Some(value),
            "--set" => {
                let Some((prop, val)) = value.split_once('=') else {
                    return Err(usage(format!("--set: `{value}` is not PROP=VALUE")));
                };
                let prop = prop.trim();
                if prop.is_empty() {
                    return Err(usage(format!("--set: `{value}` names no property")));
                }
                if prop == "model" {
                    return Err(usage("--set: use --model to choose the model"));
                }
                sets.push((prop.to_string(), val.to_string()));
            }
            "--vad" => vad = parse_bool(&name, &value)?,
            "--partial-results" => partial_results = parse_bool(&name, &value)?,
            "--plugin" => {
                plugin = match value.as_str() {
                    "static" => PluginSource::Static,
                    "path" => PluginSource::Path,
                    _ => {
                        return Err(usage(format!(
                            "--plugin: `{value}` is not one of static, path"
                        )));
                    }
                }
            }
            _ => return Err(usage(format!("unknown option {name}"))),
        }
    }
    if table {
        if positionals.is_empty() {
            return Err(usage("--table needs at least one FILE"));
        }
        return Ok(Parsed::Table(positionals));
    }
    if let Some(p) = positionals.first() {
        return Err(usage(format!(
            "unexpected argument `{p}` (the audio is given with --audio FILE)"
        )));
    }
    let program = match (noise, soak) {
        (Some(_), Some(_)) => return Err(usage("--noise and --soak exclude each other")),
        (Some(seconds), None) => {
            if audio.is_some() || reference.is_some() {
                return Err(usage(
                    "--noise plays generated noise: no --audio or --reference",
                ));
            }
            Program::Noise(seconds)
        }
        _ => Program::Speech,
    };
    if models.is_empty() {
        models = vec!["tiny.en".into(), "base".into()];
    }
    if streams.is_some() && (soak.is_some() || matches!(program, Program::Noise(_))) {
        return Err(usage(
            "--streams plays a speech file once: no --soak or --noise",
        ));
    }
    if streams.is_some() && speed != 1.0 {
        return Err(usage("--streams plays in real time: no --speed"));
    }
    if times.is_some() && streams.is_none() {
        return Err(usage("--times goes with --streams"));
    }
    Ok(Parsed::Run(Config {
        streams: streams.map(|streams| streams::StreamsConfig {
            streams,
            stagger,
            times,
        }),
        models,
        latency_ms,
        audio,
        reference,
        speed,
        program,
        soak,
        sets,
        vad,
        partial_results,
        plugin,
        eos_timeout,
        idle_timeout,
        json,
        verbose,
    }))
}

// ---------------------------------------------------------------------------------------------
// Audio sources

/// What the feeder plays, 20 ms at a time; generated on the fly so memory stays flat in long runs.
enum Player {
    /// `passes` passes over `samples` with `gap` samples of silence between them.
    Speech {
        samples: Arc<Vec<f32>>,
        passes: usize,
        gap: usize,
        pos: u64,
    },
    Noise(NoiseGen),
}

impl Player {
    fn total_samples(&self) -> u64 {
        match self {
            Player::Speech {
                samples,
                passes,
                gap,
                ..
            } => (*passes * samples.len() + passes.saturating_sub(1) * gap) as u64,
            Player::Noise(g) => g.total,
        }
    }

    /// Fills `out` with the next samples; returns how many (0 at the end).
    fn next_block(&mut self, out: &mut [f32]) -> usize {
        match self {
            Player::Speech {
                samples,
                passes,
                gap,
                pos,
            } => {
                let period = (samples.len() + *gap) as u64;
                let total = (*passes * samples.len() + passes.saturating_sub(1) * *gap) as u64;
                let n = (total - (*pos).min(total)).min(out.len() as u64) as usize;
                for (i, o) in out[..n].iter_mut().enumerate() {
                    let at = (*pos + i as u64) % period;
                    *o = samples.get(at as usize).copied().unwrap_or(0.0);
                }
                *pos += n as u64;
                n
            }
            Player::Noise(g) => g.fill(out),
        }
    }
}

/// Deterministic non-speech: 5 s blocks cycling through digital silence, white noise at −30 dBFS
/// RMS, pink noise at −30 dBFS, a 100 Hz hum (with 200/300 Hz harmonics) at −30 dBFS, quiet room
/// tone (low-passed brown + pink noise at −50 dBFS), and room tone + hum at −45 dBFS; 10 ms fades
/// between blocks. SplitMix64 with a fixed seed.
struct NoiseGen {
    rng: u64,
    total: u64,
    pos: u64,
    pink: [f32; 7],
    brown: f32,
    lowpass: f32,
    pink_scale: f32,
    room_scale: f32,
    /// Sum of squares of the current block, and the RMS (dBFS) of each completed block by kind.
    sumsq: f64,
    levels: Arc<Mutex<Vec<(usize, f64)>>>,
}

const NOISE_KINDS: [&str; 6] = [
    "digital silence",
    "white noise -30 dBFS",
    "pink noise -30 dBFS",
    "100 Hz hum -30 dBFS",
    "room tone -50 dBFS",
    "room tone + hum about -45 dBFS",
];

/// The kind of noise played `offset` seconds after the start.
fn noise_kind_at(offset: f64) -> &'static str {
    let block = (offset.max(0.0) / NOISE_BLOCK_SECONDS as f64) as usize;
    NOISE_KINDS[block % NOISE_KINDS.len()]
}
const NOISE_BLOCK_SECONDS: u64 = 5;
/// Fixed seed: every `--noise` run plays the same samples.
const NOISE_SEED: u64 = 0x5EED_B1A5_0F0F_1234;

impl NoiseGen {
    fn new(seconds: f64) -> Self {
        let mut g = Self {
            rng: NOISE_SEED,
            total: (seconds * SAMPLE_RATE as f64).round() as u64,
            pos: 0,
            pink: [0.0; 7],
            brown: 0.0,
            lowpass: 0.0,
            pink_scale: 1.0,
            room_scale: 1.0,
            sumsq: 0.0,
            levels: Arc::default(),
        };
        // Calibrate the coloured noises to unit RMS on 10 s of their own output, then restart
        // the generator so the output depends on the seed alone.
        let n = 10 * SAMPLE_RATE as usize;
        let (mut sp, mut sr) = (0.0f64, 0.0f64);
        for _ in 0..n {
            let p = g.pink_raw();
            let r = g.room_raw();
            sp += f64::from(p * p);
            sr += f64::from(r * r);
        }
        g.pink_scale = (1.0 / (sp / n as f64).sqrt()) as f32;
        g.room_scale = (1.0 / (sr / n as f64).sqrt()) as f32;
        g.rng = NOISE_SEED;
        g.pink = [0.0; 7];
        g.brown = 0.0;
        g.lowpass = 0.0;
        g
    }

    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Standard normal (Box–Muller, one of the pair).
    fn gauss(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// Paul Kellet's pink filter over white noise (unnormalised).
    fn pink_raw(&mut self) -> f32 {
        let w = self.gauss();
        let b = &mut self.pink;
        b[0] = 0.99886 * b[0] + w * 0.0555179;
        b[1] = 0.99332 * b[1] + w * 0.0750759;
        b[2] = 0.96900 * b[2] + w * 0.153_852;
        b[3] = 0.86650 * b[3] + w * 0.3104856;
        b[4] = 0.55000 * b[4] + w * 0.5329522;
        b[5] = -0.7616 * b[5] - w * 0.0168980;
        let out = b[0] + b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + w * 0.5362;
        b[6] = w * 0.115926;
        out
    }

    /// Room tone: leaky brown noise, low-passed near 300 Hz, plus a little pink (unnormalised).
    fn room_raw(&mut self) -> f32 {
        let w = self.gauss();
        self.brown = 0.995 * self.brown + 0.05 * w;
        self.lowpass += 0.11 * (self.brown - self.lowpass);
        self.lowpass + 0.02 * self.pink_raw()
    }

    fn fill(&mut self, out: &mut [f32]) -> usize {
        let n = (self.total - self.pos).min(out.len() as u64) as usize;
        let block = NOISE_BLOCK_SECONDS * SAMPLE_RATE as u64;
        let fade = (SAMPLE_RATE / 100) as u64;
        let db = |d: f32| 10f32.powf(d / 20.0);
        for o in out[..n].iter_mut() {
            let kind = (self.pos / block) as usize % NOISE_KINDS.len();
            let in_block = self.pos % block;
            let gain = (in_block.min(block - 1 - in_block) as f32 / fade as f32).min(1.0);
            let t = self.pos as f64 / SAMPLE_RATE as f64;
            let hum = |rms: f32| {
                let w = 2.0 * std::f64::consts::PI * 100.0 * t;
                // Unit-RMS mix of 100, 200 and 300 Hz (amplitudes 1, 0.5, 0.25).
                let s = w.sin() + 0.5 * (2.0 * w).sin() + 0.25 * (3.0 * w).sin();
                (s / (0.5f64 * (1.0 + 0.25 + 0.0625)).sqrt()) as f32 * rms
            };
            let v = match kind {
                0 => 0.0,
                1 => self.gauss() * db(-30.0),
                2 => self.pink_raw() * self.pink_scale * db(-30.0),
                3 => hum(db(-30.0)),
                4 => self.room_raw() * self.room_scale * db(-50.0),
                _ => self.room_raw() * self.room_scale * db(-50.0) + hum(db(-46.0)),
            };
            *o = (v * gain).clamp(-1.0, 1.0);
            self.sumsq += f64::from(*o) * f64::from(*o);
            self.pos += 1;
            if self.pos.is_multiple_of(block) || self.pos == self.total {
                let len = (self.pos - 1) % block + 1;
                let rms = (self.sumsq / len as f64).sqrt();
                lock(&self.levels).push((kind, 20.0 * rms.max(1e-10).log10()));
                self.sumsq = 0.0;
            }
        }
        n
    }
}

/// Speech onsets (seconds into the audio): the first loud 20 ms frame (peak ≥ −50 dBFS) after at
/// least 0.4 s of quiet, or at the start.
fn speech_onsets(samples: &[f32]) -> Vec<f64> {
    const LOUD: f32 = 0.003;
    const QUIET_FRAMES: usize = 20;
    let mut onsets = Vec::new();
    let mut quiet = QUIET_FRAMES;
    for (i, frame) in samples.chunks(BLOCK).enumerate() {
        let peak = frame.iter().fold(0.0f32, |a, &s| a.max(s.abs()));
        if peak >= LOUD {
            if quiet >= QUIET_FRAMES {
                onsets.push((i * BLOCK) as f64 / SAMPLE_RATE as f64);
            }
            quiet = 0;
        } else {
            quiet += 1;
        }
    }
    onsets
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// One text buffer at the appsink. Times in seconds of running time.
#[derive(Debug, Clone)]
struct TextBuf {
    arrival: f64,
    pts: Option<f64>,
    duration: Option<f64>,
    /// PTS as carried by the buffer (differs from `pts` when the segment is not running time).
    raw_pts: Option<f64>,
    text: String,
}

/// One `whispernpu-partial*` bus message.
#[derive(Debug, Clone)]
struct PartialMsg {
    name: String,
    arrival: f64,
    start: Option<f64>,
    end: Option<f64>,
    text: String,
}

/// Shared between the feeder, the appsink and bus callbacks, and the main thread.
#[derive(Default)]
struct Shared {
    texts: Mutex<Vec<TextBuf>>,
    partials: Mutex<Vec<PartialMsg>>,
    /// Running time of the first sample (ns), set before the first push.
    t0: Mutex<Option<u64>>,
    /// Samples pushed so far.
    pushed: AtomicU64,
    /// Running time (ns + 1; 0 = not yet) at which EOS was pushed / reached the appsink.
    eos_pushed: AtomicU64,
    eos_at_sink: AtomicU64,
    /// Ask the feeder to stop.
    stop: AtomicBool,
    /// Milliseconds since `origin` of the last buffer or event reaching the appsink.
    last_activity_ms: AtomicU64,
    origin: Mutex<Option<Instant>>,
}

impl Shared {
    fn touch(&self) {
        if let Some(origin) = *lock(&self.origin) {
            self.last_activity_ms
                .store(origin.elapsed().as_millis() as u64, Ordering::SeqCst);
        }
    }

    /// Time since the last buffer or event reached the appsink (or since the start).
    fn idle(&self) -> Duration {
        let Some(origin) = *lock(&self.origin) else {
            return Duration::ZERO;
        };
        origin.elapsed().saturating_sub(Duration::from_millis(
            self.last_activity_ms.load(Ordering::SeqCst),
        ))
    }
}

fn seconds(t: ClockTime) -> f64 {
    t.nseconds() as f64 / 1e9
}

/// Pipeline clock time − base time of the element (its pipeline's), in seconds.
fn running_time(element: &gst::Element) -> Option<f64> {
    let clock = element.clock()?;
    let base = element.base_time()?;
    clock.time()?.checked_sub(base).map(seconds)
}

fn clock_field(s: &gst::StructureRef, name: &str) -> Option<f64> {
    if let Ok(v) = s.get::<u64>(name) {
        return (v != u64::MAX).then(|| v as f64 / 1e9);
    }
    if let Ok(v) = s.get::<Option<ClockTime>>(name) {
        return v.map(seconds);
    }
    if let Ok(v) = s.get::<i64>(name) {
        return (v >= 0).then(|| v as f64 / 1e9);
    }
    s.get::<f64>(name).ok()
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// `p50 / p95 / max` of sorted values, two decimals.
fn p50_95_max(sorted: &[f64]) -> String {
    format!(
        "{} / {} / {}",
        fmt_opt(percentile(sorted, 50.0), 2),
        fmt_opt(percentile(sorted, 95.0), 2),
        fmt_opt(sorted.last().copied(), 2)
    )
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.decimals$}"))
}

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

/// The 1-minute load average: other work on the machine slows the element and inflates latency.
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn rss_line() -> String {
    format!(
        "VmRSS {} MiB, VmHWM {} MiB",
        fmt_opt(mib(common::proc_status_kib("VmRSS")), 1),
        fmt_opt(mib(common::proc_status_kib("VmHWM")), 1)
    )
}

// ---------------------------------------------------------------------------------------------
// Main flow

/// The audio to play, decoded once for all models.
struct Source {
    label: String,
    samples: Option<Arc<Vec<f32>>>,
    reference: Option<String>,
    reference_label: Option<String>,
}

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The default recording: target/bench-live/multiwindow.wav, synthesised when missing or older
/// than its text.
fn default_audio() -> Result<String, Failure> {
    let repo = repo();
    let text = repo.join("tests/fixtures/multiwindow.txt");
    let wav = repo.join("target/bench-live/multiwindow.wav");
    let stale = match (std::fs::metadata(&wav), std::fs::metadata(&text)) {
        (Ok(w), Ok(t)) => match (w.modified(), t.modified()) {
            (Ok(w), Ok(t)) => w < t,
            _ => false,
        },
        (Ok(_), Err(_)) => false,
        (Err(_), _) => true,
    };
    if stale {
        let _ = writeln!(
            std::io::stderr(),
            "bench_live: synthesising {} with scripts/synth-speech",
            wav.display()
        );
        let tmp = wav.with_extension("tmp.wav");
        let status = std::process::Command::new("bash")
            .arg(repo.join("scripts/synth-speech"))
            .arg(&tmp)
            .arg(&text)
            .status()
            .map_err(|e| runtime(format!("cannot run scripts/synth-speech: {e}")))?;
        if !status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(runtime(format!(
                "scripts/synth-speech failed ({status}); give the audio with --audio FILE"
            )));
        }
        std::fs::rename(&tmp, &wav)
            .map_err(|e| runtime(format!("cannot write {}: {e}", wav.display())))?;
    }
    Ok(wav.to_string_lossy().into_owned())
}

fn load_source(config: &Config) -> Result<Source, Failure> {
    if let Program::Noise(secs) = config.program {
        return Ok(Source {
            label: format!("noise {secs:.0} s"),
            samples: None,
            reference: None,
            reference_label: None,
        });
    }
    let (path, default_reference) = match &config.audio {
        Some(p) => (p.clone(), None),
        None if config.streams.is_some() => {
            let wav = repo().join("target/bench-live/sentences.wav");
            if !wav.is_file() {
                return Err(runtime(format!(
                    "{} is missing: scripts/bench-live --streams N makes it",
                    wav.display()
                )));
            }
            (wav.display().to_string(), None)
        }
        None => (
            default_audio()?,
            Some(repo().join("tests/fixtures/multiwindow.txt")),
        ),
    };
    let reference_path = config
        .reference
        .as_ref()
        .map(std::path::PathBuf::from)
        .or(default_reference);
    // Read the reference before the (slow) decode and model load: a wrong path fails at once.
    let mut reference = match &reference_path {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| runtime(format!("cannot read reference {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let mut reference_label = reference_path.map(|p| p.display().to_string());
    // jfk.wav's text is well known: use it when no reference was given.
    if reference.is_none() && std::path::Path::new(&path).file_name() == Some("jfk.wav".as_ref()) {
        reference = Some(JFK_TEXT.to_string());
        reference_label = Some("built-in jfk.wav text".into());
    }
    let mut reader = AudioReader::open(&path).map_err(|e| runtime(e.to_string()))?;
    let mut samples = Vec::new();
    while let Some(chunk) = reader.next_chunk().map_err(|e| runtime(e.to_string()))? {
        samples.extend_from_slice(&chunk);
    }
    drop(reader);
    if samples.is_empty() {
        return Err(runtime(format!("{path}: no audio samples")));
    }
    let label = std::path::Path::new(&path)
        .file_name()
        .map_or_else(|| path.clone(), |n| n.to_string_lossy().into_owned());
    Ok(Source {
        label,
        samples: Some(Arc::new(samples)),
        reference,
        reference_label,
    })
}

fn setup_plugin(source: PluginSource) -> Result<String, Failure> {
    gst::init().map_err(|e| runtime(format!("GStreamer: {e}")))?;
    match source {
        PluginSource::Static => {
            gstwhispernpu::plugin_register_static()
                .map_err(|e| runtime(format!("cannot register the whispernpu plugin: {e}")))?;
            Ok("static (linked into bench_live)".into())
        }
        PluginSource::Path => {
            let Some(factory) = gst::ElementFactory::find("whispernpu") else {
                return Err(runtime(format!(
                    "GStreamer finds no whispernpu element (GST_PLUGIN_PATH={}); build it with \
                     cargo build --release and point GST_PLUGIN_PATH at target/release",
                    std::env::var("GST_PLUGIN_PATH").unwrap_or_default()
                )));
            };
            Ok(factory
                .plugin()
                .and_then(|p| p.filename())
                .map_or_else(|| "registry".into(), |f| f.display().to_string()))
        }
    }
}

fn run(config: &Config) -> Result<(), Failure> {
    // Files first (cheap, clear errors), then GStreamer and the plugin.
    if let Some(audio) = &config.audio
        && !audio.contains("://")
        && !std::path::Path::new(audio).is_file()
    {
        return Err(runtime(format!("no such file: {audio}")));
    }
    if let Some(r) = &config.reference
        && !std::path::Path::new(r).is_file()
    {
        return Err(runtime(format!("no such file: {r}")));
    }
    let plugin = setup_plugin(config.plugin)?;
    for app in ["appsrc", "appsink"] {
        if gst::ElementFactory::find(app).is_none() {
            return Err(runtime(format!(
                "element `{app}` is missing (install gstreamer1.0-plugins-base; see scripts/setup)"
            )));
        }
    }
    // Models and element properties are checked before the (slow) decode and offline run.
    for model in &config.models {
        gstwhispernpu::model::resolve(model)
            .map_err(|e| runtime(common::model_error(model, &e)))?;
    }
    let probe = gst::ElementFactory::make("whispernpu")
        .build()
        .map_err(|_| runtime("cannot create a whispernpu element (plugin not registered?)"))?;
    property_value(&probe, "latency", &config.latency_ms.to_string()).map_err(usage)?;
    for (name, value) in &config.sets {
        property_value(&probe, name, value).map_err(usage)?;
    }
    drop(probe);
    let source = load_source(config)?;
    let mut failed = Vec::new();
    for model in &config.models {
        let result = match &config.streams {
            Some(sc) => streams::run_streams(config, sc, &source, model),
            None => run_model(config, &source, &plugin, model),
        };
        match result {
            Ok(summary) => {
                if config.json {
                    println!("{summary}");
                }
            }
            // A broken model does not stop the others; the exit status says it.
            Err(Failure::Runtime(why)) if config.models.len() > 1 => {
                let _ = writeln!(std::io::stderr(), "bench_live: {why}");
                failed.push(model.as_str());
            }
            Err(e) => return Err(e),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(runtime(format!(
            "failed runs: {} (see above)",
            failed.join(", ")
        )))
    }
}

/// The offline transcript of `samples` by `model` with default options (the live WER's
/// reference).
fn offline_transcript(
    model: &Arc<gstwhispernpu::engine::WhisperModel>,
    samples: &[f32],
) -> Result<String, Failure> {
    let fail = |e: gstwhispernpu::error::Error| runtime(format!("offline transcription: {e}"));
    let mut transcriber =
        Transcriber::new(Arc::clone(model), TranscribeOptions::default()).map_err(fail)?;
    let mut segments = Vec::new();
    for chunk in samples.chunks(SAMPLE_RATE as usize) {
        segments.extend(transcriber.push(chunk).map_err(fail)?);
    }
    segments.extend(transcriber.finish().map_err(fail)?);
    Ok(join_texts(segments.iter().map(|s| s.text.as_str())))
}

/// Text of segments joined like `examples/transcribe`.
fn join_texts<'a>(texts: impl Iterator<Item = &'a str>) -> String {
    texts
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Validates `value` for property `name` of `element` (type and range) without panicking.
fn property_value(element: &gst::Element, name: &str, value: &str) -> Result<glib::Value, String> {
    let pspec = element
        .find_property(name)
        .ok_or_else(|| format!("whispernpu has no property `{name}`"))?;
    if !pspec.flags().contains(glib::ParamFlags::WRITABLE) {
        return Err(format!("property `{name}` is read-only"));
    }
    let v = glib::Value::deserialize_with_pspec(value, &pspec).map_err(|_| {
        format!(
            "`{value}` is not a valid {} for property `{name}`",
            pspec.value_type().name()
        )
    })?;
    macro_rules! range {
        ($spec:ty, $t:ty) => {
            if let Some(p) = pspec.downcast_ref::<$spec>()
                && let Ok(x) = v.get::<$t>()
                && !(p.minimum()..=p.maximum()).contains(&x)
            {
                return Err(format!(
                    "{name}={value} is outside {}..={}",
                    p.minimum(),
                    p.maximum()
                ));
            }
        };
    }
    range!(glib::ParamSpecUInt, u32);
    range!(glib::ParamSpecInt, i32);
    range!(glib::ParamSpecUInt64, u64);
    range!(glib::ParamSpecInt64, i64);
    range!(glib::ParamSpecFloat, f32);
    range!(glib::ParamSpecDouble, f64);
    Ok(v)
}

/// Everything one model's run measured.
struct RunResult {
    texts: Vec<TextBuf>,
    partials: Vec<PartialMsg>,
    t0: f64,
    played_seconds: f64,
    eos_pushed: Option<f64>,
    eos_at_sink: Option<f64>,
    warnings: Vec<String>,
    latency_query: Option<String>,
    upstream_live: Option<bool>,
    rss_start: Option<u64>,
    rss_end: Option<u64>,
    loadavg_start: Option<f64>,
    loadavg_end: Option<f64>,
    /// `--noise`: measured RMS (dBFS) of each 5 s block, by kind.
    noise_levels: Vec<(usize, f64)>,
}

fn run_model(
    config: &Config,
    source: &Source,
    plugin: &str,
    model_name: &str,
) -> Result<String, Failure> {
    // The model, through the library (shared with the element when it is linked in statically).
    let t_load = Instant::now();
    let model = gstwhispernpu::engine::load_shared(model_name)
        .map_err(|e| runtime(common::model_error(model_name, &e)))?;
    let load_seconds = t_load.elapsed().as_secs_f64();

    // Offline reference transcript of one pass, same model, default options.
    let mut offline_text = None;
    let mut offline_seconds = None;
    if let Some(samples) = &source.samples {
        let t = Instant::now();
        offline_text = Some(offline_transcript(&model, samples)?);
        offline_seconds = Some(t.elapsed().as_secs_f64());
    }

    // What to play.
    let (player, onsets, passes) = match (&config.program, &source.samples) {
        (Program::Noise(secs), _) => (Player::Noise(NoiseGen::new(*secs)), Vec::new(), 1),
        (Program::Speech, Some(samples)) => {
            let gap = (SOAK_GAP_SECONDS * SAMPLE_RATE as f64) as usize;
            let pass_seconds = (samples.len() + gap) as f64 / SAMPLE_RATE as f64;
            let passes = config
                .soak
                .map_or(1, |s| ((s / pass_seconds).ceil() as usize).max(1));
            let once = speech_onsets(samples);
            let mut onsets = Vec::new();
            for k in 0..passes {
                onsets.extend(once.iter().map(|o| o + k as f64 * pass_seconds));
            }
            let player = Player::Speech {
                samples: Arc::clone(samples),
                passes,
                gap: if passes > 1 { gap } else { 0 },
                pos: 0,
            };
            (player, onsets, passes)
        }
        (Program::Speech, None) => unreachable!("speech sources carry samples"),
    };
    let total_seconds = player.total_samples() as f64 / SAMPLE_RATE as f64;
    let noise_levels = match &player {
        Player::Noise(g) => Some(Arc::clone(&g.levels)),
        Player::Speech { .. } => None,
    };

    // The pipeline.
    let element = gst::ElementFactory::make("whispernpu")
        .build()
        .map_err(|_| runtime("cannot create a whispernpu element (plugin not registered?)"))?;
    let mut applied: Vec<String> = Vec::new();
    let set = |name: &str, value: &str, applied: &mut Vec<String>| -> Result<(), Failure> {
        let v = property_value(&element, name, value).map_err(usage)?;
        element.set_property_from_value(name, &v);
        applied.push(format!("{name}={value}"));
        Ok(())
    };
    set("model", model_name, &mut applied)?;
    set("mode", "live", &mut applied)?;
    set("latency", &config.latency_ms.to_string(), &mut applied)?;
    let has_vad = element.has_property("vad", Some(bool::static_type()));
    let has_partials = element.has_property("partial-results", Some(bool::static_type()));
    if has_vad {
        set("vad", &config.vad.to_string(), &mut applied)?;
    }
    if has_partials {
        set(
            "partial-results",
            &config.partial_results.to_string(),
            &mut applied,
        )?;
    }
    for (name, value) in &config.sets {
        set(name, value, &mut applied)?;
    }
    let latency_budget = element
        .find_property("latency")
        .map(|_| element.property::<u32>("latency") as f64 / 1000.0)
        .unwrap_or(config.latency_ms as f64 / 1000.0)
        + element
            .find_property("lateness")
            .map_or(0.0, |_| element.property::<u32>("lateness") as f64 / 1000.0);

    let (pipeline, appsrc, appsink) = live_pipeline(&element)?;

    let shared = Arc::new(Shared::default());
    let speed = config.speed;
    let verbose = config.verbose || matches!(config.program, Program::Noise(_));
    let wall_of = move |t0: f64, audio_time: f64| t0 + (audio_time - t0) / speed;
    {
        let shared_eos = Arc::clone(&shared);
        let shared = Arc::clone(&shared);
        appsink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let Some(tb) = pull_text(sink)? else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let arrival = tb.arrival;
                    if verbose {
                        let t0 = lock(&shared.t0).map(|t| t as f64 / 1e9);
                        let latency = match (t0, tb.pts, tb.duration) {
                            (Some(t0), Some(p), Some(d)) => Some(arrival - wall_of(t0, p + d)),
                            _ => None,
                        };
                        let _ = writeln!(
                            std::io::stderr(),
                            "text  arrival {:8.3}  pts {:>8}  dur {:>6}  latency {:>6}  {}",
                            arrival,
                            fmt_opt(tb.pts, 3),
                            fmt_opt(tb.duration, 3),
                            fmt_opt(latency, 3),
                            tb.text.trim()
                        );
                    }
                    lock(&shared.texts).push(tb);
                    Ok(gst::FlowSuccess::Ok)
                })
                .eos({
                    let shared = shared_eos;
                    move |sink| {
                        if let Some(t) = running_time(sink.upcast_ref()) {
                            shared
                                .eos_at_sink
                                .store((t * 1e9) as u64 + 1, Ordering::SeqCst);
                        }
                    }
                })
                .build(),
        );
    }
    let bus = pipeline
        .bus()
        .ok_or_else(|| runtime("pipeline has no bus"))?;
    {
        let shared = Arc::clone(&shared);
        bus.set_sync_handler(move |_, msg| {
            if let gst::MessageView::Element(e) = msg.view()
                && let Some(s) = e.structure()
                && s.name().starts_with("whispernpu-partial")
            {
                let arrival = msg
                    .src()
                    .and_then(|o| o.downcast_ref::<gst::Element>().cloned())
                    .and_then(|el| running_time(&el))
                    .unwrap_or(f64::NAN);
                let p = PartialMsg {
                    name: s.name().to_string(),
                    arrival,
                    start: clock_field(s, "start"),
                    end: clock_field(s, "end"),
                    text: s.get::<String>("text").unwrap_or_default(),
                };
                if verbose {
                    let _ = writeln!(
                        std::io::stderr(),
                        "part  arrival {:8.3}  start {:>7}  end {:>7}  [{}] {}",
                        p.arrival,
                        fmt_opt(p.start, 3),
                        fmt_opt(p.end, 3),
                        p.name,
                        p.text.trim()
                    );
                }
                lock(&shared.partials).push(p);
            }
            gst::BusSyncReply::Pass
        });
    }

    let mut pipeline_guard = PipelineGuard(Some(pipeline.clone()));
    // Any buffer or event reaching the sink (text, GAP, EOS) shows the element is alive.
    *lock(&shared.origin) = Some(Instant::now());
    if let Some(pad) = appsink.static_pad("sink") {
        let shared = Arc::clone(&shared);
        pad.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
            move |_, _| {
                shared.touch();
                gst::PadProbeReturn::Ok
            },
        );
    }

    // READY: the element checks the model and loads it (instant when shared); wait for it so
    // the model load is not counted as caption latency.
    if pipeline.set_state(gst::State::Ready).is_err() {
        return Err(runtime(bus_error(&bus).unwrap_or_else(|| {
            format!("whispernpu refused to start (model {model_name})")
        })));
    }
    wait_model_loaded(&bus, model_name)?;

    let rss_start = common::proc_status_kib("VmRSS");
    if config.soak.is_some() {
        log(format!("[soak 00:00] start: {}", rss_line()));
    }
    log(format!(
        "bench_live: {model_name} on {} ({:.1} s{}), speed {}, playing in real time...",
        source.label,
        total_seconds,
        if passes > 1 {
            format!(", {passes} passes")
        } else {
            String::new()
        },
        config.speed
    ));

    if pipeline.set_state(gst::State::Playing).is_err() {
        return Err(runtime(
            bus_error(&bus).unwrap_or_else(|| "the pipeline failed to start".into()),
        ));
    }
    let (res, state, _) = pipeline.state(ClockTime::from_seconds(30));
    if res.is_err() || state != gst::State::Playing {
        return Err(runtime(bus_error(&bus).unwrap_or_else(|| {
            format!("the pipeline did not reach PLAYING ({state:?})")
        })));
    }
    let clock = pipeline
        .clock()
        .ok_or_else(|| runtime("the pipeline has no clock"))?;
    let base_time = pipeline
        .base_time()
        .ok_or_else(|| runtime("the pipeline has no base time"))?;

    // The feeder: paced 20 ms buffers, then EOS.
    let feeder = {
        let shared = Arc::clone(&shared);
        let appsrc = appsrc.clone();
        let clock = clock.clone();
        let mut player = player;
        std::thread::Builder::new()
            .name("bench-live-feeder".into())
            .spawn(move || {
                let run = || feed(&appsrc, &clock, base_time, &mut player, speed, &shared);
                // A panic here ends the stream at once (EOS) and is reported, instead of
                // leaving the pipeline waiting for an EOS until the timeout.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(
                    |payload| {
                        let _ = appsrc.end_of_stream();
                        Err(format!(
                            "the feeder thread panicked: {}",
                            gstwhispernpu::error::panic_message(&*payload)
                        ))
                    },
                )
            })
            .map_err(|e| runtime(format!("cannot start the feeder thread: {e}")))?
    };

    // Wait for EOS (or an error), reporting progress and, when soaking, RSS.
    let started = Instant::now();
    let mut next_progress = PROGRESS_EVERY;
    let mut next_rss = SOAK_REPORT;
    let mut warnings = Vec::new();
    let mut latency_query = None;
    let mut upstream_live = None;
    let eos_timeout = Duration::from_secs_f64(
        config
            .eos_timeout
            .unwrap_or(300.0 + 4.0 * total_seconds / config.speed),
    );
    let idle_timeout = Duration::from_secs_f64(config.idle_timeout);
    let loadavg_start = loadavg();
    let mut feeder_done_at: Option<Instant> = None;
    let outcome: Result<(), String> = loop {
        let msg = bus.timed_pop(ClockTime::from_mseconds(200));
        if let Some(msg) = &msg {
            match msg.view() {
                gst::MessageView::Eos(_) => break Ok(()),
                gst::MessageView::Error(e) => {
                    let src = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
                    let debug = e.debug().map(|d| format!(" ({d})")).unwrap_or_default();
                    break Err(format!("{src}: {}{}", e.error(), one_line(&debug)));
                }
                gst::MessageView::Warning(w) => {
                    let line = format!(
                        "{}: {}",
                        msg.src().map(|s| s.name().to_string()).unwrap_or_default(),
                        w.error()
                    );
                    log(format!("warning: {line}"));
                    warnings.push(line);
                }
                _ => {}
            }
        }
        let pushed = shared.pushed.load(Ordering::SeqCst) as f64 / SAMPLE_RATE as f64;
        // Once a second of audio is in, ask what the element and its upstream say about latency.
        if latency_query.is_none() && pushed >= 1.0 {
            let mut q = gst::query::Latency::new();
            if appsrc.static_pad("src").is_some_and(|p| p.query(&mut q)) {
                upstream_live = Some(q.result().0);
            }
            let mut q = gst::query::Latency::new();
            if appsink
                .static_pad("sink")
                .is_some_and(|p| p.peer_query(&mut q))
            {
                let (live, min, max) = q.result();
                latency_query = Some(format!(
                    "live={live} min={:.3} s max={}",
                    seconds(min),
                    max.map_or("none".into(), |m| format!("{:.3} s", seconds(m)))
                ));
            }
        }
        let elapsed = started.elapsed();
        if config.soak.is_some() && elapsed >= next_rss {
            log(format!(
                "[soak {}] played {:.0} s, {} text buffers: {}",
                common::clock(elapsed.as_secs_f64()),
                pushed,
                lock(&shared.texts).len(),
                rss_line()
            ));
            next_rss += SOAK_REPORT;
        } else if total_seconds / config.speed > 60.0 && elapsed >= next_progress {
            log(format!(
                "[{}] played {:.0} / {:.0} s, {} text buffers",
                common::clock(elapsed.as_secs_f64()),
                pushed,
                total_seconds,
                lock(&shared.texts).len()
            ));
            next_progress += PROGRESS_EVERY;
        }
        if feeder.is_finished() {
            let done = *feeder_done_at.get_or_insert_with(Instant::now);
            if shared.eos_pushed.load(Ordering::SeqCst) == 0 {
                // The feeder stopped without EOS: it failed to push; the bus usually says why.
                if let Some(err) = bus_error(&bus) {
                    break Err(err);
                }
                if done.elapsed() > Duration::from_secs(5) {
                    break Err("the feeder stopped before the end of the audio".into());
                }
            } else if shared.idle() > idle_timeout {
                break Err(format!(
                    "no EOS and no output for {:.0} s after the end of the audio: the element \
                     hangs instead of draining; {} text buffers so far",
                    idle_timeout.as_secs_f64(),
                    lock(&shared.texts).len()
                ));
            } else if done.elapsed() > eos_timeout {
                break Err(format!(
                    "no EOS within {:.0} s after the end of the audio (output continues: the \
                     element is far behind); {} text buffers so far",
                    eos_timeout.as_secs_f64(),
                    lock(&shared.texts).len()
                ));
            }
        }
    };
    shared.stop.store(true, Ordering::SeqCst);
    let feed_result = if outcome.is_ok() {
        feeder
            .join()
            .unwrap_or_else(|_| Err("the feeder panicked".into()))
    } else {
        let _ = pipeline.set_state(gst::State::Null);
        let _ = feeder.join();
        Ok(())
    };
    pipeline_guard.stop();
    outcome.map_err(|e| runtime(format!("{model_name}: {e}")))?;
    feed_result.map_err(|e| runtime(format!("{model_name}: {e}")))?;
    let rss_end = common::proc_status_kib("VmRSS");
    if config.soak.is_some() {
        log(format!(
            "[soak {}] end: {}",
            common::clock(started.elapsed().as_secs_f64()),
            rss_line()
        ));
    }
    bus.unset_sync_handler();

    let ns = |a: &AtomicU64| match a.load(Ordering::SeqCst) {
        0 => None,
        t => Some((t - 1) as f64 / 1e9),
    };
    let result = RunResult {
        texts: std::mem::take(&mut *lock(&shared.texts)),
        partials: std::mem::take(&mut *lock(&shared.partials)),
        t0: lock(&shared.t0).map_or(0.0, |t| t as f64 / 1e9),
        played_seconds: shared.pushed.load(Ordering::SeqCst) as f64 / SAMPLE_RATE as f64,
        eos_pushed: ns(&shared.eos_pushed),
        eos_at_sink: ns(&shared.eos_at_sink),
        warnings,
        latency_query,
        upstream_live,
        rss_start,
        rss_end,
        loadavg_start,
        loadavg_end: loadavg(),
        noise_levels: noise_levels.map_or_else(Vec::new, |l| lock(&l).clone()),
    };
    drop(model);

    let offline_reference = offline_text
        .as_ref()
        .map(|t| vec![t.as_str(); passes].join(" "));
    let known_reference = source
        .reference
        .as_ref()
        .map(|t| vec![t.as_str(); passes].join(" "));
    Ok(report(
        config,
        source,
        plugin,
        model_name,
        &applied,
        has_vad,
        has_partials,
        latency_budget,
        load_seconds,
        offline_seconds,
        offline_text.as_deref(),
        offline_reference.as_deref(),
        known_reference.as_deref(),
        &onsets,
        passes,
        &result,
    ))
}

/// `appsrc (live) ! element ! appsink (text)` in a new pipeline.
fn live_pipeline(
    element: &gst::Element,
) -> Result<(gst::Pipeline, gst_app::AppSrc, gst_app::AppSink), Failure> {
    let appsrc = live_appsrc();
    let appsink = text_appsink();
    let pipeline = gst::Pipeline::new();
    pipeline
        .add_many([appsrc.upcast_ref(), element, appsink.upcast_ref()])
        .map_err(|e| runtime(format!("pipeline: {e}")))?;
    gst::Element::link_many([appsrc.upcast_ref(), element, appsink.upcast_ref()])
        .map_err(|e| runtime(format!("cannot link appsrc ! whispernpu ! appsink: {e}")))?;
    Ok((pipeline, appsrc, appsink))
}

/// The live F32LE 16 kHz mono source the feeder pushes into (20 ms of latency, as a capture
/// source).
fn live_appsrc() -> gst_app::AppSrc {
    gst_app::AppSrc::builder()
        .caps(
            &gst_audio::AudioCapsBuilder::new_interleaved()
                .format(gst_audio::AudioFormat::F32le)
                .rate(SAMPLE_RATE as i32)
                .channels(1)
                .build(),
        )
        .is_live(true)
        .format(gst::Format::Time)
        .do_timestamp(false)
        .min_latency(20_000_000)
        .max_latency(20_000_000)
        .build()
}

/// The `text/x-raw, format=utf8` sink, unsynchronised.
fn text_appsink() -> gst_app::AppSink {
    let appsink = gst_app::AppSink::builder()
        .caps(
            &gst::Caps::builder("text/x-raw")
                .field("format", "utf8")
                .build(),
        )
        .sync(false)
        .build();
    // No preroll: a text sink may wait long for its first buffer, and PLAYING must not wait on it.
    appsink.set_property("async", false);
    appsink
}

/// The next text buffer at `sink`, with its arrival (running time) and its PTS in running time;
/// `None` for a sample without a buffer.
fn pull_text(sink: &gst_app::AppSink) -> Result<Option<TextBuf>, gst::FlowError> {
    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
    let arrival = running_time(sink.upcast_ref()).unwrap_or(f64::NAN);
    let Some(buffer) = sample.buffer() else {
        return Ok(None);
    };
    let segment = sample
        .segment()
        .and_then(|s| s.downcast_ref::<ClockTime>().cloned());
    let raw_pts = buffer.pts();
    let pts = raw_pts.and_then(|p| match &segment {
        Some(seg) => seg.to_running_time(p),
        None => Some(p),
    });
    let text = buffer
        .map_readable()
        .map(|m| String::from_utf8_lossy(&m).into_owned())
        .unwrap_or_default();
    Ok(Some(TextBuf {
        arrival,
        pts: pts.map(seconds),
        duration: buffer.duration().map(seconds),
        raw_pts: raw_pts.map(seconds),
        text,
    }))
}

/// One line of the report or progress on stderr.
fn log(line: String) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Sets the pipeline to NULL when dropped (early returns included).
struct PipelineGuard(Option<gst::Pipeline>);

impl PipelineGuard {
    fn stop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.set_state(gst::State::Null);
        }
    }
}

impl Drop for PipelineGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The first error waiting on the bus, one line.
fn bus_error(bus: &gst::Bus) -> Option<String> {
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(err) = msg.view() {
            return Some(one_line(&err.error().to_string()));
        }
    }
    None
}

/// After NULL→READY: waits until the element's loader says the model is ready (Progress
/// complete), failed (Progress error / an error message), or — if it posts no Progress start
/// within 2 s — assumes it reports none.
fn wait_model_loaded(bus: &gst::Bus, model_name: &str) -> Result<(), Failure> {
    let t = Instant::now();
    let mut started = false;
    loop {
        if !started && t.elapsed() > Duration::from_secs(2) {
            return Ok(());
        }
        if t.elapsed() > MODEL_LOAD_TIMEOUT {
            return Err(runtime(format!(
                "whispernpu did not finish loading model {model_name} within {} s",
                MODEL_LOAD_TIMEOUT.as_secs()
            )));
        }
        let Some(msg) = bus.timed_pop_filtered(
            ClockTime::from_mseconds(100),
            &[gst::MessageType::Progress, gst::MessageType::Error],
        ) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Error(e) => {
                return Err(runtime(common::model_error(model_name, &e.error())));
            }
            gst::MessageView::Progress(p) => {
                let (kind, _code, text) = p.get();
                match kind {
                    gst::ProgressType::Start | gst::ProgressType::Continue => started = true,
                    gst::ProgressType::Complete => return Ok(()),
                    gst::ProgressType::Error | gst::ProgressType::Canceled => {
                        return Err(runtime(common::model_error(model_name, &text)));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// The feeder thread: 20 ms buffers paced on the pipeline clock, PTS = running time of the first
/// sample, pushed when the clock reaches (at `speed`) the running time of the last one; then EOS.
fn feed(
    appsrc: &gst_app::AppSrc,
    clock: &gst::Clock,
    base_time: ClockTime,
    player: &mut Player,
    speed: f64,
    shared: &Shared,
) -> Result<(), String> {
    let now = clock.time().unwrap_or(base_time);
    // Start on a whole millisecond a little ahead, so the first buffer is not already late.
    let t0_ns = (now.saturating_sub(base_time).nseconds() / 1_000_000 + 5) * 1_000_000;
    *lock(&shared.t0) = Some(t0_ns);
    let at = |samples: u64| samples as u128 * 1_000_000_000 / SAMPLE_RATE as u128;
    let mut block = vec![0f32; BLOCK];
    let mut sent: u64 = 0;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let n = player.next_block(&mut block);
        if n == 0 {
            break;
        }
        let end = sent + n as u64;
        let due = t0_ns + (at(end) as f64 / speed) as u64;
        let _ = clock
            .new_single_shot_id(base_time + ClockTime::from_nseconds(due))
            .wait();
        let pts = ClockTime::from_nseconds(t0_ns + at(sent) as u64);
        let duration = ClockTime::from_nseconds(t0_ns + at(end) as u64) - pts;
        let mut bytes = Vec::with_capacity(n * 4);
        for s in &block[..n] {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        let mut buffer = gst::Buffer::from_mut_slice(bytes);
        {
            let b = buffer.get_mut().expect("new buffer is writable");
            b.set_pts(pts);
            b.set_duration(duration);
            b.set_offset(sent);
            b.set_offset_end(end);
            if sent == 0 {
                b.set_flags(gst::BufferFlags::DISCONT);
            }
        }
        if let Err(flow) = appsrc.push_buffer(buffer) {
            if shared.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            return Err(format!("appsrc refused a buffer: {flow:?}"));
        }
        sent = end;
        shared.pushed.store(sent, Ordering::SeqCst);
    }
    let t = clock.time().unwrap_or(base_time).saturating_sub(base_time);
    shared.eos_pushed.store(t.nseconds() + 1, Ordering::SeqCst);
    appsrc
        .end_of_stream()
        .map_err(|flow| format!("appsrc refused EOS: {flow:?}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report

#[allow(clippy::too_many_arguments)]
fn report(
    config: &Config,
    source: &Source,
    plugin: &str,
    model_name: &str,
    applied: &[String],
    has_vad: bool,
    has_partials: bool,
    latency_budget: f64,
    load_seconds: f64,
    offline_seconds: Option<f64>,
    offline_text: Option<&str>,
    offline_reference: Option<&str>,
    known_reference: Option<&str>,
    onsets: &[f64],
    passes: usize,
    r: &RunResult,
) -> String {
    let speed = config.speed;
    let t0 = r.t0;
    let wall = |audio_time: f64| t0 + (audio_time - t0) / speed;
    let audio_end = t0 + r.played_seconds;

    // Latency per text buffer, and anomalies.
    let mut latencies = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut untimed = 0;
    let mut ahead = 0;
    let mut before_start = 0;
    let mut past_end = 0;
    let mut overlaps = 0;
    let mut not_running_time = 0;
    let mut over_budget = 0;
    let mut prev_end: Option<f64> = None;
    // The honest figure: a claimed end that falls in a pause of the audio (found by energy) is
    // pulled back to the end of the speech before it (one pass of speech).
    let pause_list = source
        .samples
        .as_ref()
        .filter(|_| passes == 1)
        .map(|s| streams::pauses(s));
    let mut pulled = Vec::new();
    for t in &r.texts {
        let (Some(pts), Some(dur)) = (t.pts, t.duration) else {
            untimed += 1;
            continue;
        };
        let end = pts + dur;
        let latency = t.arrival - wall(end);
        latencies.push(latency);
        if let Some(e) = pause_list
            .as_ref()
            .and_then(|pl| streams::pulled_end(t, t0, pl))
        {
            pulled.push(t.arrival - wall(e));
        }
        if latency < -0.025 {
            ahead += 1;
        }
        if latency > latency_budget {
            over_budget += 1;
        }
        if pts < t0 - 0.001 {
            before_start += 1;
        }
        if end > audio_end + 0.001 {
            past_end += 1;
        }
        if prev_end.is_some_and(|p| pts < p - 0.001) {
            overlaps += 1;
        }
        if t.raw_pts.is_some_and(|raw| (raw - pts).abs() > 1e-6) {
            not_running_time += 1;
        }
        prev_end = Some(prev_end.map_or(end, |p: f64| p.max(end)));
    }
    if untimed > 0 {
        notes.push(format!("{untimed} text buffers without PTS or duration"));
    }
    if ahead > 0 {
        notes.push(format!(
            "{ahead} text buffers arrived before the end of the audio they claim to cover \
             (negative latency: PTS/duration not in running time?)"
        ));
    }
    if before_start > 0 {
        notes.push(format!(
            "{before_start} text buffers start before the first audio sample ({t0:.3} s)"
        ));
    }
    if past_end > 0 {
        notes.push(format!(
            "{past_end} text buffers end after the last audio sample ({audio_end:.3} s)"
        ));
    }
    if overlaps > 0 {
        notes.push(format!("{overlaps} text buffers overlap the previous one"));
    }
    if not_running_time > 0 {
        notes.push(format!(
            "{not_running_time} text buffers have a PTS that differs from its running time \
             (output segment is not running time)"
        ));
    }
    if over_budget > 0 {
        notes.push(format!(
            "{over_budget} of {} text buffers later than latency + lateness ({latency_budget:.1} s)",
            latencies.len()
        ));
    }
    if r.upstream_live == Some(false) {
        notes.push("appsrc answered the LATENCY query as not live".into());
    }
    let drain = match (r.eos_pushed, r.eos_at_sink) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    if let Some(eos) = r.eos_pushed {
        // Text after the last audio: the backlog of a slow element, then the drain's own text.
        let n = r.texts.iter().filter(|t| t.arrival > eos).count();
        if n > 0 {
            notes.push(format!(
                "{n} text buffers arrived after the last audio was pushed (backlog + drain)"
            ));
        }
    }
    let pulled = sorted(pulled);
    let lat_sorted = sorted(latencies);
    let (p50, p95, max) = (
        percentile(&lat_sorted, 50.0),
        percentile(&lat_sorted, 95.0),
        lat_sorted.last().copied(),
    );
    let words: Vec<usize> = r
        .texts
        .iter()
        .map(|t| common::normalized_words(&t.text).len())
        .collect();
    let words_mean =
        (!words.is_empty()).then(|| words.iter().sum::<usize>() as f64 / words.len() as f64);
    let live_text = join_texts(r.texts.iter().map(|t| t.text.as_str()));
    let wer_offline = offline_reference.map(|o| common::wer_percent(o, &live_text));
    let wer_reference = known_reference.map(|k| common::wer_percent(k, &live_text));
    let wer_offline_vs_reference = match (offline_reference, known_reference) {
        (Some(o), Some(k)) => Some(common::wer_percent(k, o)),
        _ => None,
    };

    // Partials: delay after each speech onset to the first partial covering audio after it.
    let first_after = |arrivals: &[(f64, Option<f64>)], onset_audio: f64| -> Option<f64> {
        let onset_pts = t0 + onset_audio;
        let onset_wall = wall(onset_pts);
        arrivals
            .iter()
            .filter(|(arrival, end)| match end {
                Some(end) => *end > onset_pts,
                None => *arrival > onset_wall,
            })
            .map(|(arrival, _)| arrival - onset_wall)
            .reduce(f64::min)
    };
    let partial_points: Vec<(f64, Option<f64>)> =
        r.partials.iter().map(|p| (p.arrival, p.end)).collect();
    let text_points: Vec<(f64, Option<f64>)> = r
        .texts
        .iter()
        .map(|t| (t.arrival, t.pts.zip(t.duration).map(|(p, d)| p + d)))
        .collect();
    let first_partial = sorted(
        onsets
            .iter()
            .filter_map(|&o| first_after(&partial_points, o))
            .collect(),
    );
    let first_text = sorted(
        onsets
            .iter()
            .filter_map(|&o| first_after(&text_points, o))
            .collect(),
    );
    let partial_latency = sorted(
        r.partials
            .iter()
            .filter_map(|p| p.end.map(|e| p.arrival - wall(e)))
            .collect(),
    );

    let rss_peak = common::proc_status_kib("VmHWM");
    let audio_label = if passes > 1 {
        format!("{} x{passes}", source.label)
    } else {
        source.label.clone()
    };
    // Seconds and percentages to the millisecond / 0.001 %.
    let r3 = |v: Option<f64>| v.map(|x| (x * 1000.0).round() / 1000.0);
    let (p50, p95, max) = (r3(p50), r3(p95), r3(max));
    let json = serde_json::json!({
        "model": model_name,
        "audio": audio_label,
        "audio_seconds": r3(Some(r.played_seconds)),
        "passes": passes,
        "noise": matches!(config.program, Program::Noise(_)),
        "speed": speed,
        "latency_ms": config.latency_ms,
        "properties": applied,
        "vad": has_vad.then_some(config.vad),
        "partial_results": has_partials.then_some(config.partial_results),
        "buffers": r.texts.len(),
        "latency_p50": p50,
        "latency_p95": p95,
        "latency_max": max,
        "pulled_back_p50": r3(percentile(&pulled, 50.0)),
        "pulled_back_p95": r3(percentile(&pulled, 95.0)),
        "pulled_back_max": r3(pulled.last().copied()),
        "over_budget": over_budget,
        "words_per_buffer": r3(words_mean),
        "wer_vs_offline": r3(wer_offline),
        "wer_vs_reference": r3(wer_reference),
        "offline_wer_vs_reference": r3(wer_offline_vs_reference),
        "reference_words": known_reference.map(|k| common::normalized_words(k).len()),
        "partials": r.partials.len(),
        "first_partial_p50": r3(percentile(&first_partial, 50.0)),
        "partial_latency_p50": r3(percentile(&partial_latency, 50.0)),
        "first_text_p50": r3(percentile(&first_text, 50.0)),
        "speech_onsets": onsets.len(),
        "drain_seconds": r3(drain),
        "warnings": r.warnings.len(),
        "rss_start_mib": r3(mib(r.rss_start)),
        "rss_end_mib": r3(mib(r.rss_end)),
        "rss_peak_mib": r3(mib(rss_peak)),
        "loadavg_start": r.loadavg_start,
        "loadavg_end": r.loadavg_end,
        "model_load_seconds": r3(Some(load_seconds)),
        "offline_seconds": r3(offline_seconds),
        "notes": notes,
    });

    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<22}{v}\n"));
    line(
        "model",
        format!("{model_name} (load {load_seconds:.2} s; plugin {plugin})"),
    );
    line(
        "audio",
        format!(
            "{audio_label}: {:.2} s played at speed {speed}{}",
            r.played_seconds,
            if passes > 1 {
                format!(" ({passes} passes, {SOAK_GAP_SECONDS} s gaps)")
            } else {
                String::new()
            }
        ),
    );
    line("element", applied.join(" "));
    line(
        "vad / partial-results",
        format!(
            "{} / {}",
            if has_vad { "set" } else { "n/a (no property)" },
            if has_partials {
                "set"
            } else {
                "n/a (no property)"
            }
        ),
    );
    line(
        "latency query",
        format!(
            "upstream live={}; at the sink {}",
            r.upstream_live
                .map_or("unknown".into(), |l: bool| l.to_string()),
            r.latency_query
                .clone()
                .unwrap_or_else(|| "unanswered".into())
        ),
    );
    if let (Some(s), Some(t)) = (offline_seconds, source.samples.as_ref()) {
        line(
            "offline reference",
            format!(
                "{s:.2} s ({:.1}x realtime)",
                t.len() as f64 / SAMPLE_RATE as f64 / s
            ),
        );
    }
    line("text buffers", r.texts.len().to_string());
    line(
        "latency p50/p95/max",
        format!(
            "{} s  (over {latency_budget:.1} s: {over_budget})",
            p50_95_max(&lat_sorted)
        ),
    );
    if !pulled.is_empty() {
        line(
            "pulled p50/p95/max",
            format!(
                "{} s  (a claimed end in a pause moved to the end of the speech)",
                p50_95_max(&pulled)
            ),
        );
    }
    line("words per buffer", fmt_opt(words_mean, 1));
    if offline_reference.is_some() {
        line("WER vs offline", format!("{} %", fmt_opt(wer_offline, 1)));
    }
    if let Some(label) = &source.reference_label {
        line(
            "WER vs reference",
            format!(
                "{} %  (offline: {} %; {label})",
                fmt_opt(wer_reference, 1),
                fmt_opt(wer_offline_vs_reference, 1)
            ),
        );
    }
    if !onsets.is_empty() {
        line(
            "first text p50",
            format!(
                "{} s after a speech onset ({} onsets)",
                fmt_opt(percentile(&first_text, 50.0), 2),
                onsets.len()
            ),
        );
    }
    if r.partials.is_empty() {
        line("partials", "none (no whispernpu-partial messages)".into());
    } else {
        line(
            "partials",
            format!(
                "{}; first after onset p50 {} s; latency p50 {} s",
                r.partials.len(),
                fmt_opt(percentile(&first_partial, 50.0), 2),
                fmt_opt(percentile(&partial_latency, 50.0), 2)
            ),
        );
    }
    line(
        "drain",
        format!("{} s (EOS pushed -> EOS at appsink)", fmt_opt(drain, 2)),
    );
    line("warnings", r.warnings.len().to_string());
    line(
        "RSS MiB",
        format!(
            "start {}, end {}, peak {}",
            fmt_opt(mib(r.rss_start), 1),
            fmt_opt(mib(r.rss_end), 1),
            fmt_opt(mib(rss_peak), 1)
        ),
    );
    line(
        "load average",
        format!(
            "{} at start, {} at end ({} cores)",
            fmt_opt(r.loadavg_start, 2),
            fmt_opt(r.loadavg_end, 2),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
    );
    for n in &notes {
        line("note", n.clone());
    }
    if matches!(config.program, Program::Noise(_)) {
        let levels: Vec<String> = (0..NOISE_KINDS.len())
            .filter_map(|k| {
                let v: Vec<f64> = r
                    .noise_levels
                    .iter()
                    .filter(|(kind, _)| *kind == k)
                    .map(|(_, db)| *db)
                    .collect();
                (!v.is_empty()).then(|| {
                    let mean = v.iter().sum::<f64>() / v.len() as f64;
                    if mean < -150.0 {
                        format!("{}: digital zero", NOISE_KINDS[k])
                    } else {
                        format!("{}: {mean:.1} dBFS RMS", NOISE_KINDS[k])
                    }
                })
            })
            .collect();
        line(
            "noise blocks",
            format!("5 s each, measured: {}", levels.join("; ")),
        );
        for t in &r.texts {
            let kind = t.pts.map_or("?", |p| noise_kind_at(p - t0));
            line(
                "noise text",
                format!(
                    "at {} s over {kind}: {}",
                    fmt_opt(t.pts.map(|p| p - t0), 2),
                    t.text.trim()
                ),
            );
        }
    } else if passes == 1 {
        line("live text", live_text.clone());
        if let Some(o) = offline_text {
            line("offline text", o.to_string());
        }
    }
    if config.json {
        let _ = write!(std::io::stderr(), "{out}");
    } else {
        print!("{out}");
        let _ = std::io::stdout().flush();
    }
    json.to_string()
}

/// `--table FILE...`: one row per JSON line.
fn print_table(files: &[String]) -> Result<(), Failure> {
    let mut rows = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).map_err(|e| runtime(format!("cannot read {f}: {e}")))?;
        for (i, l) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| runtime(format!("{f}:{}: not a JSON summary line: {e}", i + 1)))?;
            rows.push(v);
        }
    }
    let num = |v: &serde_json::Value, k: &str, d: usize| {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .map_or_else(|| "-".to_string(), |x| format!("{x:.d$}"))
    };
    let s = |v: &serde_json::Value, k: &str| {
        v.get(k)
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .unwrap_or_else(|| "-".into())
    };
    let header = [
        "model",
        "audio",
        "speed",
        "buffers",
        "p50 s",
        "p95 s",
        "max s",
        "words/buf",
        "WER live/offline %",
        "WER ref live/offline %",
        "partials",
        "drain s",
    ];
    let body: Vec<[String; 12]> = rows
        .iter()
        .map(|v| {
            [
                s(v, "model"),
                s(v, "audio"),
                num(v, "speed", 1),
                s(v, "buffers"),
                num(v, "latency_p50", 2),
                num(v, "latency_p95", 2),
                num(v, "latency_max", 2),
                num(v, "words_per_buffer", 1),
                num(v, "wer_vs_offline", 1),
                format!(
                    "{}/{}",
                    num(v, "wer_vs_reference", 1),
                    num(v, "offline_wer_vs_reference", 1)
                ),
                s(v, "partials"),
                num(v, "drain_seconds", 2),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &body {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt_row = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", fmt_row(header.to_vec()));
    for row in &body {
        println!("{}", fmt_row(row.iter().map(String::as_str).collect()));
    }
    print_pooled(&rows);
    Ok(())
}

/// Per model, over every row with a known reference: the word error rates of live and offline
/// output pooled over all the reference words (errors summed, then divided: a corpus WER, in
/// which a short file weighs by its length), and the largest p95 latency.
fn print_pooled(rows: &[serde_json::Value]) {
    let f = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_f64);
    let mut models: Vec<String> = Vec::new();
    for v in rows {
        if let Some(m) = v.get("model").and_then(serde_json::Value::as_str)
            && !models.iter().any(|x| x == m)
        {
            models.push(m.to_string());
        }
    }
    for model in models {
        let (mut words, mut live, mut offline, mut files) = (0.0, 0.0, 0.0, 0);
        let mut p95 = f64::NAN;
        for v in rows
            .iter()
            .filter(|v| v.get("model").and_then(serde_json::Value::as_str) == Some(&model))
        {
            let (Some(n), Some(l), Some(o)) = (
                f(v, "reference_words"),
                f(v, "wer_vs_reference"),
                f(v, "offline_wer_vs_reference"),
            ) else {
                continue;
            };
            words += n;
            live += l * n / 100.0;
            offline += o * n / 100.0;
            files += 1;
            p95 = f(v, "latency_p95").map_or(p95, |x| x.max(p95));
        }
        if files == 0 {
            continue;
        }
        let (live, offline) = (100.0 * live / words, 100.0 * offline / words);
        println!(
            "{model}: {files} files, {words:.0} reference words: WER live {live:.1} %, offline \
             {offline:.1} % ({:+.1} points); largest p95 {p95:.2} s",
            live - offline
        );
    }
}
