//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Records that the calling test cannot run here and why; the test must `return` right after
/// (see `gstwhispernpu::test_support::skip`: counted as skipped by scripts/test).
pub fn skip(why: &str) {
    gstwhispernpu::test_support::skip(why);
}

/// `../shared/testdata/jfk.wav` (or `$WHISPERNPU_TESTDATA/jfk.wav`).
pub fn jfk_wav() -> PathBuf {
    let dir = std::env::var_os("WHISPERNPU_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/testdata"));
    let path = dir.join("jfk.wav");
    assert!(
        path.is_file(),
        "test audio {} is missing: set WHISPERNPU_TESTDATA to the folder holding jfk.wav",
        path.display()
    );
    path
}

/// Installs a model through the project's own script (a no-op when present) and returns its
/// directory. Panics with instructions when it cannot.
pub fn model_dir(name: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("scripts/fetch-model"))
        .arg(name)
        .output()
        .expect("cannot run scripts/fetch-model");
    assert!(
        out.status.success(),
        "scripts/fetch-model {name} failed ({}): {}\nRun `scripts/fetch-model {name}` by hand to see why.",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        dir.join("model.bin").is_file(),
        "{} has no model.bin",
        dir.display()
    );
    dir
}

/// Reads a 16-bit or float WAV file as mono f32 samples in [-1, 1] and its sample rate.
pub fn read_wav(path: &Path) -> (Vec<f32>, u32) {
    let mut reader = hound::WavReader::open(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let spec = reader.spec();
    let channels = spec.channels as usize;
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.expect("bad sample") as f32 * scale)
                .collect()
        }
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .map(|s| s.expect("bad sample"))
            .collect(),
    };
    let mono = interleaved
        .chunks(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect();
    (mono, spec.sample_rate)
}

/// Word error rate in percent of `hyp` against `reference`, after openai-style light
/// normalisation (lower case, punctuation removed, whitespace collapsed).
pub fn wer_percent(reference: &str, hyp: &str) -> f64 {
    let norm = |s: &str| -> Vec<String> {
        s.to_lowercase()
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
    };
    let r = norm(reference);
    let h = norm(hyp);
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

/// An example binary (`cargo test --release` builds the examples next to the test binaries'
/// directory). Panics saying how to build it when it is missing.
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join(name))
        .expect("target directory");
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo test --release` (which builds the examples)",
        bin.display()
    );
    bin
}

/// Installs ONNX Runtime and the Silero model through the project's script (a no-op when
/// present).
pub fn fetch_runtime() {
    let out = Command::new("bash")
        .arg(repo().join("scripts/fetch-runtime"))
        .output()
        .expect("cannot run scripts/fetch-runtime");
    assert!(
        out.status.success(),
        "scripts/fetch-runtime failed ({}): {}\nRun it by hand to see why.",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `seconds` of: digital silence, white noise at −30 dBFS, pink noise at −25 dBFS, a 100 Hz hum
/// with harmonics at −20 dBFS, and quiet room tone, in 5 s blocks (fixed seed).
pub fn noise_mix(seconds: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut white = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
    };
    let db = |d: f32| 10f32.powf(d / 20.0);
    let (mut b0, mut b1, mut b2) = (0.0f32, 0.0f32, 0.0f32);
    let mut out = Vec::with_capacity(seconds * 16_000);
    let block = 5 * 16_000;
    for i in 0..seconds * 16_000 {
        let t = i as f32 / 16_000.0;
        let v = match (i / block) % 5 {
            0 => 0.0,
            1 => white() * db(-30.0) * 1.73,
            2 => {
                let w = white();
                b0 = 0.99765 * b0 + w * 0.099_046;
                b1 = 0.963 * b1 + w * 0.296_516_4;
                b2 = 0.57 * b2 + w * 1.052_691_3;
                (b0 + b1 + b2 + w * 0.1848) * 0.2 * db(-25.0)
            }
            3 => {
                let f = std::f32::consts::TAU * 100.0 * t;
                (f.sin() + 0.5 * (2.0 * f).sin() + 0.25 * (3.0 * f).sin()) * db(-20.0) * 0.6
            }
            _ => white() * db(-55.0),
        };
        out.push(v);
    }
    out
}

/// `text` spoken by espeak-ng `voice` (scripts/synth-speech: paragraphs separated by blank lines
/// get 0.6 s pauses), in a temporary WAV file named after `name`.
pub fn synthesise(name: &str, text: &str, voice: &str) -> PathBuf {
    // Unique per call: tests of one binary may run at once and synthesise the same name.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir();
    let stem = format!("whispernpu-synth-{name}-{}-{call}", std::process::id());
    let text_file = dir.join(format!("{stem}.txt"));
    let wav = dir.join(format!("{stem}.wav"));
    std::fs::write(&text_file, text).unwrap();
    let out = Command::new("bash")
        .arg(repo().join("scripts/synth-speech"))
        .arg(&wav)
        .arg(&text_file)
        .env("SYNTH_MIN_SECONDS", "0")
        .env("SYNTH_VOICE", voice)
        .output()
        .expect("cannot run scripts/synth-speech");
    std::fs::remove_file(&text_file).ok();
    assert!(
        out.status.success(),
        "scripts/synth-speech failed (needs espeak-ng and sox): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wav
}

/// An ONNX export of `model` by `scripts/export-onnx` with `args` (e.g. `--layout split`,
/// `--static`), written once into `target/onnx-export/NAME` and reused by every test (a stamp
/// records the arguments and the source's `model.bin` size). Needs python3 with venv and PyPI
/// for the exporter's private virtualenv; panics saying what failed otherwise.
pub fn onnx_export(model: &str, name: &str, args: &[&str]) -> PathBuf {
    use std::sync::Mutex;
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let source = model_dir(model);
    let out = repo().join("target/onnx-export").join(name);
    let stamp = out.join(".export-stamp");
    let size = std::fs::metadata(source.join("model.bin"))
        .map(|m| m.len())
        .unwrap_or(0);
    let want = format!("{model} {} {size}\n", args.join(" "));
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return out;
    }
    let _ = std::fs::remove_dir_all(&out);
    let convert = example_bin("convert");
    let result = Command::new("bash")
        .arg(repo().join("scripts/export-onnx"))
        .arg(&source)
        .arg(&out)
        .args(args)
        .env("CONVERT", &convert)
        .output()
        .expect("cannot run scripts/export-onnx");
    assert!(
        result.status.success(),
        "scripts/export-onnx {model} {} failed ({}): {}\nIt needs python3 with venv and PyPI \
         (onnx, numpy); run it by hand to see why.",
        args.join(" "),
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::write(&stamp, want).expect("write the export stamp");
    out
}

/// The 111.9 s multi-window test recording (`scripts/synth-speech`, the text of
/// `tests/fixtures/multiwindow.txt`), as samples, with that text.
pub fn multiwindow_recording() -> (Vec<f32>, String) {
    let wav = std::env::temp_dir().join(format!(
        "whispernpu-mw-{}-{:?}.wav",
        std::process::id(),
        std::thread::current().id()
    ));
    let out = Command::new("bash")
        .arg(repo().join("scripts/synth-speech"))
        .arg(&wav)
        .output()
        .expect("cannot run scripts/synth-speech");
    assert!(
        out.status.success(),
        "scripts/synth-speech failed (needs espeak-ng and sox): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (audio, rate) = read_wav(&wav);
    std::fs::remove_file(&wav).ok();
    assert_eq!(rate, 16_000);
    let text = std::fs::read_to_string(repo().join("tests/fixtures/multiwindow.txt"))
        .expect("tests/fixtures/multiwindow.txt");
    (audio, text)
}

/// Cosine similarity of two vectors, in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// GStreamer initialised and the plugin registered statically (once per test binary).
pub fn gst_init() {
    use std::sync::Once;
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst::init");
        gstwhispernpu::plugin_register_static().expect("register whispernpu");
    });
}

/// Caps of interleaved mono raw audio in `format` (`S16LE`, `F32LE`) at `rate` Hz.
pub fn audio_caps(format: &str, rate: i32) -> gst::Caps {
    gst::Caps::builder("audio/x-raw")
        .field("format", format)
        .field("rate", rate)
        .field("channels", 1i32)
        .field("layout", "interleaved")
        .build()
}
