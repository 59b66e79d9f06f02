//! End-to-end tests of the pure-Rust Whisper engine: model loading, the long-form transcriber and
//! its agreement with faster-whisper (reference outputs committed under tests/fixtures/, written by
//! `scripts/fw-reference`).
//!
//! Run with `cargo test --release --test engine -- --test-threads=1` (debug builds are very slow).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use gstwhispernpu::engine::{ComputeType, WhisperModel, load_shared};
use gstwhispernpu::transcribe::{Segment, TailPadding, Task, TranscribeOptions, Transcriber};

const JFK_TEXT: &str = "And so my fellow Americans, ask not what your country can do for you, \
                        ask what you can do for your country.";

fn fixture(name: &str) -> PathBuf {
    common::repo().join("tests/fixtures").join(name)
}

fn read_fixture(name: &str) -> String {
    let path = fixture(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; regenerate the references with scripts/fw-reference",
            path.display()
        )
    })
}

fn read_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&read_fixture(name))
        .unwrap_or_else(|e| panic!("tests/fixtures/{name} is not valid JSON: {e}"))
}

/// Loads a model from the directory `scripts/fetch-model` installs it into (default compute type).
fn model(name: &str) -> Arc<WhisperModel> {
    model_as(name, ComputeType::Auto)
}

/// Loads a model for `compute_type`.
fn model_as(name: &str, compute_type: ComputeType) -> Arc<WhisperModel> {
    let dir = common::model_dir(name);
    Arc::new(
        WhisperModel::load_with(&dir, compute_type)
            .unwrap_or_else(|e| panic!("cannot load model {}: {e}", dir.display())),
    )
}

/// The compute types the accuracy tests cover (every concrete one).
const COMPUTE_TYPES: [ComputeType; 4] = [
    ComputeType::F32,
    ComputeType::Int8,
    ComputeType::Bf16,
    ComputeType::Int8Bf16,
];

/// f32 must give the reference text exactly; int8 (quantised decoder weights) and bf16 (encoder
/// products on bf16-rounded inputs), which are not bit-faithful, the same words: punctuation and
/// case may differ.
fn assert_text(ct: ComputeType, got: &str, want: &str) {
    match ct {
        ComputeType::Int8 | ComputeType::Bf16 | ComputeType::Int8Bf16 => {
            let wer = common::wer_percent(want, got);
            assert!(wer == 0.0, "{ct}: WER {wer:.2} %: {got:?} vs {want:?}");
        }
        _ => assert_eq!(got, want, "{ct}"),
    }
}

/// Pushes `samples` in chunks of `chunk` samples (all at once when `chunk` is 0), then finishes.
fn run(
    model: Arc<WhisperModel>,
    opts: TranscribeOptions,
    samples: &[f32],
    chunk: usize,
) -> Vec<Segment> {
    let mut t = Transcriber::new(model, opts).expect("Transcriber::new failed");
    let mut segments = Vec::new();
    if chunk == 0 {
        segments.extend(t.push(samples).expect("push failed"));
    } else {
        for piece in samples.chunks(chunk) {
            segments.extend(t.push(piece).expect("push failed"));
        }
    }
    segments.extend(t.finish().expect("finish failed"));
    segments
}

fn text_of(segments: &[Segment]) -> String {
    segments
        .iter()
        .map(|s| s.text.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn dump(segments: &[Segment]) -> String {
    segments
        .iter()
        .map(|s| format!("  [{:7.2} -> {:7.2}] {}\n", s.start, s.end, s.text))
        .collect()
}

fn jfk() -> Vec<f32> {
    let (samples, rate) = common::read_wav(&common::jfk_wav());
    assert_eq!(rate, 16000, "jfk.wav must be 16 kHz");
    samples
}

/// Segments are ordered, non-overlapping, and each has start <= end.
fn assert_monotonic(segments: &[Segment]) {
    let mut prev_end = 0.0f64;
    for s in segments {
        assert!(
            s.start >= prev_end - 1e-6 && s.end >= s.start,
            "segment times are not monotonic at [{} -> {}] (previous end {prev_end}):\n{}",
            s.start,
            s.end,
            dump(segments)
        );
        prev_end = s.end;
    }
}

#[test]
fn jfk_base_exact() {
    for ct in COMPUTE_TYPES {
        jfk_base_exact_as(ct);
    }
}

fn jfk_base_exact_as(ct: ComputeType) {
    let segments = run(
        model_as("base", ct),
        TranscribeOptions::default(),
        &jfk(),
        0,
    );
    eprintln!("base, default options, {ct}:\n{}", dump(&segments));
    assert!(!segments.is_empty(), "no segments");
    assert_text(ct, &text_of(&segments), JFK_TEXT);
    for s in &segments {
        assert_eq!(s.language, "en", "language of segment {:?}", s.text);
    }
    assert_monotonic(&segments);
    for s in &segments {
        assert!(
            s.start >= 0.0 && s.end <= 11.1,
            "segment [{} -> {}] outside [0, 11.1] s",
            s.start,
            s.end
        );
    }
    assert!(
        segments[0].start < 1.0,
        "first segment starts at {} s",
        segments[0].start
    );
}

#[test]
fn jfk_tiny_en_matches_faster_whisper() {
    for ct in COMPUTE_TYPES {
        jfk_tiny_en_matches_faster_whisper_as(ct);
    }
}

fn jfk_tiny_en_matches_faster_whisper_as(ct: ComputeType) {
    let opts = TranscribeOptions {
        language: Some("en".into()),
        tail_padding: TailPadding::Zero,
        ..Default::default()
    };
    let segments = run(model_as("tiny.en", ct), opts, &jfk(), 0);
    eprintln!("tiny.en, zero tail padding, {ct}:\n{}", dump(&segments));
    let expected = read_fixture("jfk.tiny.en.faster-whisper.txt");
    assert_text(ct, &text_of(&segments), expected.trim());

    let reference = read_json("jfk.tiny.en.faster-whisper.json");
    let reference = reference.as_array().expect("a JSON array of segments");
    let times: Vec<(f64, f64)> = reference
        .iter()
        .map(|s| {
            (
                s["start"].as_f64().expect("start"),
                s["end"].as_f64().expect("end"),
            )
        })
        .collect();
    assert_eq!(
        segments.len(),
        times.len(),
        "segment count differs from faster-whisper's {times:?}:\n{}",
        dump(&segments)
    );
    // f32 matches faster-whisper's float32 times; int8 and bf16 may move a timestamp token by a
    // few.
    let tolerance = match ct {
        ComputeType::Int8 | ComputeType::Bf16 | ComputeType::Int8Bf16 => 0.3,
        _ => 0.05,
    };
    for (s, (start, end)) in segments.iter().zip(&times) {
        assert!(
            (s.start - start).abs() <= tolerance && (s.end - end).abs() <= tolerance,
            "segment [{} -> {}] {:?} differs from faster-whisper's [{start} -> {end}]",
            s.start,
            s.end,
            s.text
        );
    }
}

#[test]
fn jfk_base_beam5() {
    for ct in COMPUTE_TYPES {
        let opts = TranscribeOptions {
            beam_size: 5,
            ..Default::default()
        };
        let segments = run(model_as("base", ct), opts, &jfk(), 0);
        eprintln!("base {ct}, beam 5:\n{}", dump(&segments));
        // f32 gives the greedy text, which is also openai's; faster-whisper 1.2.1 with beam 5
        // writes "And so, my fellow Americans, ...", as bf16 does: the same words.
        assert_text(ct, &text_of(&segments), JFK_TEXT);
        assert_monotonic(&segments);
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::time::{SystemTime, UNIX_EPOCH};
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("whispernpu-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("cannot run sha256sum (coreutils)");
    assert!(out.status.success(), "sha256sum {} failed", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Synthesises the multi-window recording with scripts/synth-speech and checks it is the one the
/// committed faster-whisper references were computed on.
fn synthesise(dir: &Path, reference: &serde_json::Value) -> PathBuf {
    let wav = dir.join("multiwindow.wav");
    let script = common::repo().join("scripts/synth-speech");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&wav)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/synth-speech failed ({}); it needs espeak-ng and sox \
         (apt-get install espeak-ng sox):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = reference["audio"]["sha256"]
        .as_str()
        .expect("audio.sha256 in multiwindow.faster-whisper.json");
    let actual = sha256sum(&wav);
    assert_eq!(
        actual, expected,
        "the synthesiser output changed; regenerate references with scripts/fw-reference"
    );
    wav
}

/// How far above faster-whisper float32's WER on the 111.9 s recording each model and compute
/// type may be, in points: the README's figure for this test (measured: tiny.en 9.03 % with f32
/// and bf16, 8.36 % with int8 and with int8-bf16, against 8.03 %; base 4.01 % with all
/// four, as faster-whisper).
const MULTIWINDOW_WER_MARGIN: f64 = 1.5;

fn multiwindow_wer_close_to_faster_whisper(name: &str, ct: ComputeType) {
    let reference = read_json("multiwindow.faster-whisper.json");
    let fw_wer = reference["models"][name]["wer_percent"]
        .as_f64()
        .unwrap_or_else(|| panic!("models.{name}.wer_percent in multiwindow.faster-whisper.json"));
    let truth = read_fixture("multiwindow.txt");

    let tmp = TempDir::new("multiwindow");
    let wav = synthesise(tmp.path(), &reference);
    let (samples, rate) = common::read_wav(&wav);
    assert_eq!(rate, 16000);
    let seconds = samples.len() as f64 / 16000.0;

    let opts = TranscribeOptions {
        language: Some("en".into()),
        ..Default::default()
    };
    let segments = run(model_as(name, ct), opts, &samples, 16000);
    let text = text_of(&segments);
    let wer = common::wer_percent(&truth, &text);
    eprintln!("{name} {ct}: {seconds:.1} s of audio\n{}", dump(&segments));
    eprintln!("{name} {ct}: our WER {wer:.2} %, faster-whisper's {fw_wer:.2} %");
    assert!(
        wer <= fw_wer + MULTIWINDOW_WER_MARGIN,
        "{name} {ct}: WER {wer:.2} % exceeds faster-whisper's {fw_wer:.2} % + \
         {MULTIWINDOW_WER_MARGIN}; transcript:\n{text}"
    );
    assert_monotonic(&segments);
    let last = segments.last().expect("no segments");
    assert!(
        last.end > 90.0,
        "{name}: last segment ends at {} s of {seconds:.1} s",
        last.end
    );
}

#[test]
fn multiwindow_wer_close_to_faster_whisper_tiny_en_f32() {
    multiwindow_wer_close_to_faster_whisper("tiny.en", ComputeType::F32);
}

#[test]
fn multiwindow_wer_close_to_faster_whisper_tiny_en_int8() {
    multiwindow_wer_close_to_faster_whisper("tiny.en", ComputeType::Int8);
}

#[test]
fn multiwindow_wer_close_to_faster_whisper_tiny_en_bf16() {
    multiwindow_wer_close_to_faster_whisper("tiny.en", ComputeType::Bf16);
}

#[test]
fn multiwindow_wer_close_to_faster_whisper_tiny_en_int8_bf16() {
    multiwindow_wer_close_to_faster_whisper("tiny.en", ComputeType::Int8Bf16);
}

#[test]
fn multiwindow_wer_close_to_faster_whisper_base_f32() {
    multiwindow_wer_close_to_faster_whisper("base", ComputeType::F32);
}

#[test]
fn multiwindow_wer_close_to_faster_whisper_base_int8() {
    multiwindow_wer_close_to_faster_whisper("base", ComputeType::Int8);
}

#[test]
fn multiwindow_wer_close_to_faster_whisper_base_bf16() {
    multiwindow_wer_close_to_faster_whisper("base", ComputeType::Bf16);
}

#[test]
fn multiwindow_wer_close_to_faster_whisper_base_int8_bf16() {
    multiwindow_wer_close_to_faster_whisper("base", ComputeType::Int8Bf16);
}

#[test]
fn push_chunking_does_not_change_text() {
    let samples = jfk();
    for (name, chunk) in [("base", 5920), ("tiny.en", 5923)] {
        let m = model(name);
        let opts = TranscribeOptions::default();
        let whole = run(m.clone(), opts.clone(), &samples, 0);
        let chunked = run(m, opts, &samples, chunk);
        assert!(!whole.is_empty(), "{name}: no segments");
        assert_eq!(
            whole,
            chunked,
            "{name}: one push:\n{}chunks of {chunk}:\n{}",
            dump(&whole),
            dump(&chunked)
        );
    }
}

#[test]
fn model_errors() {
    let empty = TempDir::new("empty-model");
    let err = WhisperModel::load(empty.path())
        .err()
        .expect("loading an empty directory succeeded");
    let msg = err.to_string();
    let shown = empty.path().display().to_string();
    assert!(
        msg.contains("model.bin") && msg.contains(&shown),
        "error does not name {shown}/model.bin: {msg}"
    );

    // A model.bin that is not a CTranslate2 model, beside valid configuration files.
    let tiny = common::model_dir("tiny.en");
    for f in ["config.json", "vocabulary.txt", "tokenizer.json"] {
        std::fs::copy(tiny.join(f), empty.path().join(f)).unwrap();
    }
    std::fs::write(empty.path().join("model.bin"), b"not a CTranslate2 model").unwrap();
    let err = WhisperModel::load(empty.path())
        .err()
        .expect("loading a garbage model.bin succeeded");
    let msg = err.to_string();
    assert!(msg.contains(&shown), "error does not name {shown}: {msg}");

    let err = load_shared("no-such-model")
        .err()
        .expect("load_shared(\"no-such-model\") succeeded");
    let msg = err.to_string();
    for known in ["tiny.en", "base"] {
        assert!(msg.contains(known), "error does not list {known}: {msg}");
    }
    match err {
        gstwhispernpu::ModelError::UnknownName { name, .. } => assert_eq!(name, "no-such-model"),
        other => panic!("expected ModelError::UnknownName, got {other:?}"),
    }
}

#[test]
fn translate_rejected_on_english_only() {
    let opts = TranscribeOptions {
        task: Task::Translate,
        ..Default::default()
    };
    let err = Transcriber::new(model("tiny.en"), opts)
        .err()
        .expect("Transcriber::new accepted translate with tiny.en");
    let msg = err.to_string();
    assert!(
        msg.contains("translate"),
        "error does not mention translate: {msg}"
    );
}

/// The fallback knobs reach the decoder: a compression-ratio threshold no text can meet makes
/// every window try each temperature of the schedule (openai's `temperature_increment_on_fallback`
/// 0.5: 0, 0.5, 1), none with a schedule of temperature 0 alone; a log-probability threshold
/// no text can meet falls back the same way; and with both checks off nothing falls back.
#[test]
fn fallback_thresholds_and_temperature_schedule_reach_the_decoder() {
    use gstwhispernpu::transcribe::temperature_schedule;
    let model = model("tiny.en");
    let audio = jfk();
    let fallbacks = |opts: TranscribeOptions| {
        let mut t = Transcriber::new(Arc::clone(&model), opts).unwrap();
        t.push(&audio).unwrap();
        t.finish().unwrap();
        (t.stats().fallbacks, t.stats().windows)
    };
    let base = TranscribeOptions {
        language: Some("en".into()),
        ..TranscribeOptions::default()
    };
    assert_eq!(fallbacks(base.clone()), (0, 1));
    let repetitive = TranscribeOptions {
        compression_ratio_threshold: Some(0.1),
        temperatures: temperature_schedule(0.5),
        ..base.clone()
    };
    assert_eq!(temperature_schedule(0.5), [0.0, 0.5, 1.0]);
    let (f, w) = fallbacks(repetitive.clone());
    assert_eq!(f, 2 * w, "every window retried at 0.5 and 1.0");
    let greedy_only = TranscribeOptions {
        temperatures: temperature_schedule(0.0),
        ..repetitive
    };
    assert_eq!(fallbacks(greedy_only).0, 0);
    let improbable = TranscribeOptions {
        log_prob_threshold: Some(-0.0001),
        temperatures: temperature_schedule(0.5),
        ..base.clone()
    };
    let (f, w) = fallbacks(improbable);
    assert_eq!(f, 2 * w);
    let off = TranscribeOptions {
        compression_ratio_threshold: None,
        log_prob_threshold: None,
        ..base
    };
    assert_eq!(fallbacks(off).0, 0);
}

/// `hotwords` and `prefix` reach the decoder. Synthesised speech says an Irish name the models
/// spell by ear ("Ted Mack, J'otland", "Tadmak Jalalat"); with the name as hotwords both write it
/// as given, the rest of the sentence intact; with a prefix the text starts with it.
#[test]
fn hotwords_spell_a_name_and_prefix_starts_the_text() {
    let sentence = "Yesterday I had lunch with Tadhg Mac Giolla at the harbor cafe.";
    let wav = common::synthesise("hotwords", sentence, "en-us");
    let (audio, rate) = common::read_wav(&wav);
    std::fs::remove_file(&wav).ok();
    assert_eq!(rate, 16_000);
    for name in ["tiny.en", "base"] {
        let model = model(name);
        let text = |opts: TranscribeOptions| {
            text_of(&run(
                Arc::clone(&model),
                TranscribeOptions {
                    language: Some("en".into()),
                    ..opts
                },
                &audio,
                0,
            ))
        };
        let plain = text(TranscribeOptions::default());
        assert!(!plain.contains("Tadhg Mac Giolla"), "{name}: {plain}");
        let hot = text(TranscribeOptions {
            hotwords: Some("Tadhg Mac Giolla".into()),
            ..TranscribeOptions::default()
        });
        assert!(hot.contains("Tadhg Mac Giolla"), "{name}: {hot}");
        let wer = common::wer_percent(sentence, &hot);
        assert!(wer <= 20.0, "{name}: WER {wer:.1} % with hotwords: {hot}");
        let prefix = "Yesterday I had lunch with Tadhg";
        let started = text(TranscribeOptions {
            prefix: Some(prefix.into()),
            ..TranscribeOptions::default()
        });
        assert!(started.starts_with(prefix), "{name}: {started}");
        assert!(started.len() > prefix.len() + 10, "{name}: {started}");
    }
}

/// `forward_verify` of a draft gives each position the logits a single step gives it (the
/// same products: at most 15 rows) and the same choice, and `truncate` drops positions so that
/// steps after it go on as if the dropped tokens had never been fed; offline and live (exact
/// decoder weights).
#[test]
fn draft_verification_matches_single_steps() {
    for name in ["tiny.en", "base"] {
        let model = model(name);
        let specials = &model.tokenizer.specials;
        let mut prompt = vec![specials.sot];
        if model.is_multilingual() {
            prompt.extend([specials.sot + 1, specials.transcribe]);
        }
        prompt.push(specials.no_timestamps);
        let tokens = model
            .tokenizer
            .encode(" And so my fellow Americans, ask not what your country can do");
        let mut decoder = model.new_decoder(1);
        let k = tokens.len().min(decoder.max_verify());
        assert!(k >= 10, "{name}: verifies {k} tokens at once");
        // A synthetic encoder output with the spread of a real one.
        let n = model.dims.n_audio_ctx * model.dims.n_audio_state;
        let encoder_out: Vec<f32> = (0..n)
            .map(|i| ((i as f32 * 0.618).sin() * 1.5) + ((i % 97) as f32 * 0.01))
            .collect();
        // Up to the order of float sums: 2026-12-05 (Intel Xeon, AMX) the logits differed by at
        // most 2.6e-4 live (exact f16 weights) and 4.5e-3 offline (int8 layers).
        let close = |a: &[f32], b: &[f32], live: bool, what: &str| {
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            let argmax = |x: &[f32]| (0..x.len()).fold(0, |m, j| if x[j] > x[m] { j } else { m });
            let tolerance = if live { 1e-3 } else { 1e-2 };
            assert!(diff <= tolerance, "{name} {what}: logits differ by {diff}");
            assert_eq!(argmax(a), argmax(b), "{name} {what}: another choice");
        };
        for live in [false, true] {
            decoder.set_live(live);
            decoder.set_audio(&encoder_out, 2).unwrap();
            decoder.reset(1);
            decoder.forward(&prompt, None, 2).unwrap();
            let mut steps = Vec::new();
            for &t in &tokens[..k] {
                decoder.forward(&[t], None, 2).unwrap();
                steps.push(decoder.logits_row(0).to_vec());
            }
            decoder.reset(1);
            decoder.forward(&prompt, None, 2).unwrap();
            let at = decoder.len();
            decoder.forward_verify(&tokens[..k], 2).unwrap();
            assert_eq!(decoder.len(), at + k);
            for (r, step) in steps.iter().enumerate() {
                close(
                    decoder.logits_row(r),
                    step,
                    live,
                    &format!("live {live}, row {r}"),
                );
            }
            decoder.truncate(at + 4);
            for (i, step) in steps.iter().enumerate().skip(4) {
                decoder.forward(&[tokens[i]], None, 2).unwrap();
                let what = format!("live {live}, step {i} after truncate");
                close(decoder.logits_row(0), step, live, &what);
            }
        }
    }
}
