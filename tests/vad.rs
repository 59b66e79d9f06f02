//! Voice activity detection on real and synthetic audio: Silero (needs `scripts/fetch-runtime`;
//! its tests fail, not skip, without it) and the energy fallback.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use gstwhispernpu::vad::{
    self, EnergyVad, Segmenter, SegmenterOptions, SileroVad, VAD_FRAME, VAD_SAMPLE_RATE, Vad,
    VadEvent, VadKind,
};

const RATE: f64 = VAD_SAMPLE_RATE as f64;

/// Spoken stretches of jfk.wav in seconds, read off its 100 ms energy envelope ("And so my fellow
/// Americans" / "ask not" / "what your country can do for you" / "ask what you can do for your
/// country"); the pauses between them last 0.8–1.2 s.
const JFK_SPEECH: [(f64, f64); 4] = [(0.3, 2.1), (3.3, 4.3), (5.4, 7.5), (8.2, 10.2)];
/// Clear pauses inside jfk.wav, leaving out the first 0.3 s after each phrase: the recording's
/// echo (public address loudspeakers) rings on for that long, and the energy detector, unlike
/// Silero, cannot tell an echo from speech.
const JFK_PAUSES: [(f64, f64); 2] = [(2.4, 3.2), (4.6, 5.3)];

fn silero() -> SileroVad {
    match SileroVad::open(None, None) {
        Ok((vad, note)) => {
            assert!(note.is_none(), "{note:?}");
            vad
        }
        Err(e) => panic!(
            "Silero VAD is not installed or does not load: {e}\n\
             Run `scripts/fetch-runtime` (it installs runtime/onnxruntime/ and \
             models/silero-vad/silero_vad.onnx)."
        ),
    }
}

fn energy() -> EnergyVad {
    EnergyVad::new()
}

fn detectors() -> Vec<Box<dyn Vad>> {
    vec![Box::new(silero()), Box::new(energy())]
}

/// All probabilities of `audio`, pushed `chunk` samples at a time.
/// The detector must stay what it was: Silero failing mid-stream hands the rest of the stream to
/// the energy detector (and renames itself `energy`), which would test the fallback under
/// Silero's name.
fn probabilities(vad: &mut dyn Vad, audio: &[f32], chunk: usize) -> Vec<f32> {
    let name = vad.name();
    let mut probs = Vec::new();
    for piece in audio.chunks(chunk) {
        vad.push(piece, &mut probs);
    }
    assert_eq!(
        vad.name(),
        name,
        "the detector changed mid-stream: {:?}",
        vad.take_warning()
    );
    assert_eq!(probs.len(), audio.len() / VAD_FRAME);
    probs
}

/// Speech segments `(start, end)` in seconds, default segmenter options.
fn segments(probs: &[f32]) -> Vec<(f64, f64)> {
    let mut segmenter = Segmenter::new(SegmenterOptions::default());
    let mut events = segmenter.push(probs);
    events.extend(segmenter.flush());
    let mut out = Vec::new();
    let mut open = None;
    for e in events {
        match e {
            VadEvent::Start { sample } => {
                assert!(open.is_none(), "two starts in a row: {e:?}");
                open = Some(sample);
            }
            VadEvent::End { sample } => {
                let start = open.take().expect("end without start");
                assert!(sample > start, "empty segment {start}..{sample}");
                out.push((start as f64 / RATE, sample as f64 / RATE));
            }
        }
    }
    assert!(open.is_none(), "segment left open after flush");
    out
}

fn frame_time(i: usize) -> f64 {
    (i * VAD_FRAME) as f64 / RATE
}

/// Fraction of the frames lying wholly inside `(from, to)` whose probability exceeds 0.5.
fn speech_fraction(probs: &[f32], from: f64, to: f64) -> f64 {
    let inside: Vec<f32> = probs
        .iter()
        .enumerate()
        .filter(|(i, _)| frame_time(*i) >= from && frame_time(i + 1) <= to)
        .map(|(_, &p)| p)
        .collect();
    assert!(!inside.is_empty());
    inside.iter().filter(|&&p| p > 0.5).count() as f64 / inside.len() as f64
}

fn check_jfk(vad: &mut dyn Vad) {
    let (audio, rate) = common::read_wav(&common::jfk_wav());
    assert_eq!(rate, VAD_SAMPLE_RATE);
    let probs = probabilities(vad, &audio, 1600);
    let segs = segments(&probs);
    let name = vad.name();
    eprintln!("{name}: jfk segments {segs:.2?}");

    for &(from, to) in &JFK_SPEECH {
        let covering: Vec<_> = segs
            .iter()
            .filter(|&&(s, e)| s <= from + 0.1 && e >= to - 0.1)
            .collect();
        assert_eq!(
            covering.len(),
            1,
            "{name}: speech {from}-{to} s is not covered by one segment: {segs:.2?}"
        );
        let fraction = speech_fraction(&probs, from, to);
        assert!(
            fraction >= 0.75,
            "{name}: only {:.0} % of the frames in {from}-{to} s are > 0.5",
            fraction * 100.0
        );
    }
    for &(s, e) in &segs {
        assert!(
            JFK_SPEECH.iter().any(|&(from, to)| s < to && e > from),
            "{name}: segment {s:.2}-{e:.2} s holds no speech: {segs:.2?}"
        );
    }
    for &(from, to) in &JFK_PAUSES {
        let fraction = speech_fraction(&probs, from, to);
        assert!(
            fraction <= 0.15,
            "{name}: {:.0} % of the frames in the pause {from}-{to} s are > 0.5",
            fraction * 100.0
        );
        assert!(
            !segs.iter().any(|&(s, e)| s <= from + 0.2 && e >= to - 0.2),
            "{name}: the pause {from}-{to} s is inside a segment: {segs:.2?}"
        );
    }
}

#[test]
fn silero_finds_the_speech_in_jfk() {
    check_jfk(&mut silero());
}

#[test]
fn energy_finds_the_speech_in_jfk() {
    check_jfk(&mut energy());
}

/// Silero's probabilities for jfk.wav as computed by onnxruntime 1.31.1 from Python with the
/// official OnnxWrapper's framing (64 samples of context), every 20th frame: pins the framing, the
/// state handling and the model file (silero-vad 6.2.3's silero_vad.onnx, as scripts/fetch-runtime
/// installs it).
#[test]
fn silero_matches_the_python_reference() {
    const REFERENCE: [(usize, f32); 18] = [
        (0, 0.0058),
        (20, 0.9794),
        (40, 0.9970),
        (60, 0.9986),
        (80, 0.0528),
        (100, 0.0110),
        (120, 0.2069),
        (140, 0.0301),
        (160, 0.0305),
        (180, 0.9999),
        (200, 0.9998),
        (220, 0.9998),
        (240, 0.0673),
        (260, 0.9996),
        (280, 0.9999),
        (300, 0.9998),
        (320, 0.9953),
        (340, 0.0620),
    ];
    let (audio, _) = common::read_wav(&common::jfk_wav());
    let probs = probabilities(&mut silero(), &audio, VAD_FRAME);
    for (frame, expected) in REFERENCE {
        assert!(
            (probs[frame] - expected).abs() < 2e-3,
            "frame {frame}: {} against {expected}",
            probs[frame]
        );
    }
}

/// Runs a tool, panicking with the command line and its stderr when it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): scripts/setup installs espeak-ng and sox")
        });
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scratch directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("whispernpu-vad-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create a scratch directory");
        Scratch(dir)
    }
    fn path(&self, file: &str) -> String {
        self.0.join(file).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `seconds` of a `sox synth` signal (e.g. `["whitenoise"]`, `["sine", "100"]`), 16 kHz mono,
/// scaled to the given RMS.
fn synth(scratch: &Scratch, name: &str, generator: &[&str], seconds: f64, rms: f32) -> Vec<f32> {
    let file = scratch.path(&format!("{name}.wav"));
    let duration = seconds.to_string();
    let mut args = vec![
        "-R", "-D", "-n", "-r", "16000", "-c", "1", "-b", "16", &file, "synth", &duration,
    ];
    args.extend_from_slice(generator);
    run("sox", &args);
    let (mut audio, rate) = common::read_wav(Path::new(&file));
    assert_eq!(rate, VAD_SAMPLE_RATE);
    let now = (audio.iter().map(|x| x * x).sum::<f32>() / audio.len() as f32).sqrt();
    assert!(now > 0.0, "sox made silence for {generator:?}");
    audio.iter_mut().for_each(|x| *x *= rms / now);
    audio
}

/// `text` spoken by espeak-ng (en-us, 150 words per minute), 16 kHz mono, as
/// scripts/synth-speech makes it.
fn speak(scratch: &Scratch, name: &str, text: &str) -> Vec<f32> {
    let raw = scratch.path(&format!("{name}-raw.wav"));
    let file = scratch.path(&format!("{name}.wav"));
    run(
        "espeak-ng",
        &["-v", "en-us", "-s", "150", "-w", &raw, "--", text],
    );
    run(
        "sox",
        &[
            "-R", "-D", &raw, "-r", "16000", "-c", "1", "-b", "16", &file,
        ],
    );
    let (audio, rate) = common::read_wav(Path::new(&file));
    assert_eq!(rate, VAD_SAMPLE_RATE);
    audio
}

/// First and last sample louder than −40 dBFS in 10 ms blocks, in seconds.
fn audible(audio: &[f32]) -> (f64, f64) {
    let block = 160;
    let loud: Vec<usize> = audio
        .chunks(block)
        .enumerate()
        .filter(|(_, c)| c.iter().map(|x| x * x).sum::<f32>() / c.len() as f32 > 1e-4)
        .map(|(i, _)| i)
        .collect();
    let first = *loud.first().expect("no sound at all");
    let last = *loud.last().unwrap();
    (
        (first * block) as f64 / RATE,
        ((last + 1) * block) as f64 / RATE,
    )
}

#[test]
fn noise_hum_and_silence_are_not_speech() {
    let scratch = Scratch::new("noise");
    const RMS_20_DBFS: f32 = 0.1;
    let white = synth(&scratch, "white", &["whitenoise"], 8.0, RMS_20_DBFS);
    let mut signals = vec![
        ("digital silence", vec![0.0f32; 8 * 16000]),
        ("white noise -20 dBFS", white.clone()),
        (
            "pink noise -20 dBFS",
            synth(&scratch, "pink", &["pinknoise"], 8.0, RMS_20_DBFS),
        ),
        (
            "brown noise -20 dBFS",
            synth(&scratch, "brown", &["brownnoise"], 8.0, RMS_20_DBFS),
        ),
        // Peak -20 dBFS.
        (
            "100 Hz hum",
            synth(
                &scratch,
                "hum",
                &["sine", "100"],
                8.0,
                RMS_20_DBFS / 2f32.sqrt(),
            ),
        ),
    ];
    // Noise starting after digital silence: the energy detector has to learn it on the fly.
    let mut late = vec![0.0f32; 2 * 16000];
    late.extend_from_slice(&white);
    signals.push(("silence then white noise", late));

    for mut vad in detectors() {
        for (what, audio) in &signals {
            vad.reset();
            let probs = probabilities(vad.as_mut(), audio, 4000);
            let segs = segments(&probs);
            let above = probs.iter().filter(|&&p| p > 0.5).count();
            eprintln!(
                "{}: {what}: max probability {:.3}, {above} of {} frames > 0.5",
                vad.name(),
                probs.iter().cloned().fold(0.0, f32::max),
                probs.len()
            );
            assert!(
                segs.is_empty(),
                "{}: {what} gave speech segments {segs:.2?}",
                vad.name()
            );
        }
    }
}

#[test]
fn a_three_second_pause_splits_two_sentences() {
    let scratch = Scratch::new("pause");
    let first = speak(
        &scratch,
        "first",
        "The quick brown fox jumps over the lazy dog near the river bank.",
    );
    let second = speak(
        &scratch,
        "second",
        "Seven silver swans were swimming slowly across the quiet lake.",
    );
    let (first_on, first_off) = audible(&first);
    let (second_on, second_off) = audible(&second);
    let mut audio = first.clone();
    audio.extend(std::iter::repeat_n(0.0, 3 * 16000));
    let second_at = audio.len() as f64 / RATE;
    audio.extend_from_slice(&second);
    // Where the speech really is, from the signal itself.
    let speech = [
        (first_on, first_off),
        (second_at + second_on, second_at + second_off),
    ];

    // Also with a steady noise floor under everything (-50 dBFS white noise), so that the pause
    // is not digital silence.
    let noise = synth(
        &scratch,
        "floor",
        &["whitenoise"],
        audio.len() as f64 / RATE + 1.0,
        0.003,
    );
    let noisy: Vec<f32> = audio.iter().zip(&noise).map(|(a, n)| a + n).collect();

    for mut vad in detectors() {
        for (what, signal) in [("clean", &audio), ("noise floor", &noisy)] {
            vad.reset();
            let probs = probabilities(vad.as_mut(), signal, 1600);
            let segs = segments(&probs);
            let name = vad.name();
            eprintln!("{name}, {what}: segments {segs:.2?}, speech {speech:.2?}");
            assert_eq!(
                segs.len(),
                2,
                "{name}, {what}: {segs:.2?}, speech at {speech:.2?}"
            );
            for (i, (&(s, e), &(on, off))) in segs.iter().zip(&speech).enumerate() {
                assert!(
                    (s - on).abs() <= 0.3 && (e - off).abs() <= 0.3,
                    "{name}, {what}: segment {i} is {s:.2}-{e:.2} s, speech {on:.2}-{off:.2} s"
                );
            }
        }
    }
}

#[test]
fn probabilities_do_not_depend_on_chunking() {
    let (audio, _) = common::read_wav(&common::jfk_wav());
    for mut vad in detectors() {
        let small = probabilities(vad.as_mut(), &audio, 160);
        vad.reset();
        let large = probabilities(vad.as_mut(), &audio, 4000);
        vad.reset();
        let odd = probabilities(vad.as_mut(), &audio, 777);
        assert_eq!(
            small,
            large,
            "{}: 160- and 4000-sample pieces differ",
            vad.name()
        );
        assert_eq!(
            small,
            odd,
            "{}: 160- and 777-sample pieces differ",
            vad.name()
        );
        // And reset really starts over.
        vad.reset();
        assert_eq!(probabilities(vad.as_mut(), &audio, 160), small);
    }
}

#[test]
fn open_falls_back_to_energy_and_says_why() {
    let bogus = Path::new("/nonexistent/whispernpu/libonnxruntime.so");
    let (vad, warning) = vad::open(VadKind::Silero, None, Some(bogus));
    assert_eq!(vad.name(), "energy");
    let warning = warning.expect("no warning for a missing runtime");
    assert!(warning.contains(&bogus.display().to_string()), "{warning}");
    assert!(warning.contains("scripts/fetch-runtime"), "{warning}");

    let bogus_model = Path::new("/nonexistent/whispernpu/silero_vad.onnx");
    let (vad, warning) = vad::open(VadKind::Silero, Some(bogus_model), None);
    assert_eq!(vad.name(), "energy");
    let warning = warning.expect("no warning for a missing model");
    assert!(
        warning.contains(&bogus_model.display().to_string()),
        "{warning}"
    );

    let (vad, warning) = vad::open(VadKind::Energy, None, None);
    assert_eq!((vad.name(), warning), ("energy", None));
}

#[test]
fn open_finds_silero_when_installed() {
    silero();
    let (vad, warning) = vad::open(VadKind::Silero, None, None);
    assert_eq!(vad.name(), "silero", "{warning:?}");
    assert!(warning.is_none(), "{warning:?}");
}

/// Cost of each detector in milliseconds per second of audio (release build; printed with
/// `--nocapture`). The bounds are 10-20x what a 2-core machine measures, to catch regressions
/// such as a thread pool per frame, not to benchmark.
#[test]
fn cost_per_second_of_audio() {
    let (audio, _) = common::read_wav(&common::jfk_wav());
    let seconds = audio.len() as f64 / RATE;
    for (mut vad, bound_ms) in detectors().into_iter().zip([60.0, 10.0]) {
        // Warm up (first-run allocations), then measure the best of three.
        probabilities(vad.as_mut(), &audio, 1600);
        let mut best = f64::MAX;
        for _ in 0..3 {
            vad.reset();
            let t = Instant::now();
            probabilities(vad.as_mut(), &audio, 1600);
            best = best.min(t.elapsed().as_secs_f64() * 1e3 / seconds);
        }
        eprintln!("{}: {best:.2} ms per second of audio", vad.name());
        if cfg!(debug_assertions) {
            continue;
        }
        assert!(
            best < bound_ms,
            "{}: {best:.2} ms per second of audio",
            vad.name()
        );
    }
}

#[test]
fn non_finite_samples_do_not_poison_the_detectors() {
    let (mut audio, _) = common::read_wav(&common::jfk_wav());
    audio[16000..16100].fill(f32::NAN);
    audio[16100..16200].fill(f32::INFINITY);
    for mut vad in detectors() {
        let probs = probabilities(vad.as_mut(), &audio, 1600);
        assert!(
            probs.iter().all(|p| (0.0..=1.0).contains(p)),
            "{}: probabilities outside [0, 1]",
            vad.name()
        );
        let fraction = speech_fraction(&probs, 5.4, 7.5);
        assert!(
            fraction >= 0.75,
            "{}: {fraction:.2} after the NaNs",
            vad.name()
        );
    }
}

/// A file with long non-speech between speech: jfk.wav, 20 s of pink noise, a sentence, 20 s of
/// music (a synthesised piano-like melody over chords), a sentence, 15 s of room tone. Returns
/// the samples, the spoken stretches in seconds and the words said.
fn speech_between_noise_and_music(scratch: &Scratch) -> (Vec<f32>, Vec<(f64, f64)>, String) {
    const SENTENCE_A: &str =
        "The quick brown fox jumps over the lazy dog near the bank of the river.";
    const SENTENCE_B: &str =
        "Please remember to bring your umbrella, because it will rain tomorrow afternoon.";
    let (jfk, _) = common::read_wav(&common::jfk_wav());
    let mut audio = Vec::new();
    let mut spans = Vec::new();
    let mut add_speech = |audio: &mut Vec<f32>, speech: &[f32]| {
        let (first, last) = audible(speech);
        let at = audio.len() as f64 / RATE;
        spans.push((at + first, at + last));
        audio.extend_from_slice(speech);
    };
    add_speech(&mut audio, &jfk);
    audio.extend(synth(scratch, "pink", &["pinknoise"], 20.0, 0.05));
    add_speech(&mut audio, &speak(scratch, "a", SENTENCE_A));
    // Music: an arpeggio of plucked notes (decaying harmonics) over a held chord.
    let notes = [
        261.63f32, 329.63, 392.0, 523.25, 392.0, 329.63, 293.66, 349.23,
    ];
    let n = 20 * 16_000;
    for i in 0..n {
        let t = i as f32 / 16_000.0;
        let beat = (t / 0.25) as usize;
        let since = t - beat as f32 * 0.25;
        let f = notes[beat % notes.len()];
        let tau = std::f32::consts::TAU;
        let pluck: f32 = (1..5)
            .map(|h| (tau * f * h as f32 * since).sin() / h as f32)
            .sum::<f32>()
            * (-since * 8.0).exp();
        let chord_root = if ((t / 2.0) as usize).is_multiple_of(2) {
            130.81
        } else {
            110.0
        };
        let chord: f32 = [1.0f32, 1.25, 1.5]
            .iter()
            .map(|r| (tau * chord_root * r * t).sin())
            .sum();
        audio.push(0.12 * pluck + 0.04 * chord);
    }
    add_speech(&mut audio, &speak(scratch, "b", SENTENCE_B));
    audio.extend(synth(scratch, "room", &["whitenoise"], 15.0, 0.002));
    let words = format!(
        "And so my fellow Americans, ask not what your country can do for you, ask what you can \
         do for your country. {SENTENCE_A} {SENTENCE_B}"
    );
    (audio, spans, words)
}

/// Offline VAD (`vad_filter`, faster-whisper's `vad_filter`): on speech separated by long noise,
/// music and room tone, the non-speech is not decoded (fewer windows, most of it left out),
/// every segment lies on speech in stream time (the times are mapped back across the cuts), and
/// the WER on the speech is no worse than decoding everything (but for one word).
#[test]
fn offline_vad_decodes_only_the_speech_in_stream_time() {
    common::fetch_runtime();
    let scratch = Scratch::new("offline");
    let (audio, spans, words) = speech_between_noise_and_music(&scratch);
    let total = audio.len() as f64 / RATE;
    let model = gstwhispernpu::engine::load_shared(common::model_dir("base").to_str().unwrap())
        .expect("base");
    let run = |vad: bool| {
        let options = gstwhispernpu::transcribe::TranscribeOptions {
            language: Some("en".into()),
            n_threads: 2,
            vad_filter: vad.then(Default::default),
            ..Default::default()
        };
        let mut t = gstwhispernpu::transcribe::Transcriber::new(model.clone(), options).unwrap();
        let mut segments = Vec::new();
        for chunk in audio.chunks(16_000) {
            segments.extend(t.push(chunk).unwrap());
        }
        segments.extend(t.finish().unwrap());
        assert_eq!(t.take_warning(), None, "Silero must load");
        (segments, t.stats().clone(), t.vad_detector())
    };
    let (plain, plain_stats, _) = run(false);
    let (filtered, stats, detector) = run(true);
    let text = |s: &[gstwhispernpu::transcribe::Segment]| {
        s.iter()
            .map(|s| s.text.trim())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let timeline = |s: &[gstwhispernpu::transcribe::Segment]| {
        s.iter()
            .map(|s| format!("{:.2}-{:.2} {}", s.start, s.end, s.text.trim()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    eprintln!("speech at {spans:.2?} of {total:.1} s");
    eprintln!(
        "without VAD ({} windows):\n{}",
        plain_stats.windows,
        timeline(&plain)
    );
    eprintln!(
        "with VAD ({} windows, {:.1} s decoded, {:.1} s left out):\n{}",
        stats.windows,
        stats.vad_speech_seconds,
        stats.vad_skipped_seconds,
        timeline(&filtered)
    );
    assert_eq!(detector, Some("silero"));
    let speech: f64 = spans.iter().map(|s| s.1 - s.0).sum();
    assert!(
        stats.vad_skipped_seconds >= total - speech - 6.0,
        "{:.1} s left out of {:.1} s without speech",
        stats.vad_skipped_seconds,
        total - speech
    );
    assert!((stats.vad_speech_seconds + stats.vad_skipped_seconds - total).abs() < 0.05);
    assert!(stats.windows < plain_stats.windows, "{stats:?}");
    // Every segment, and its middle, is on the speech (in the file's time).
    for s in &filtered {
        let mid = (s.start + s.end) / 2.0;
        assert!(
            spans
                .iter()
                .any(|&(a, b)| s.start < b + 0.5 && s.end > a - 0.5),
            "segment off the speech: {:.2}-{:.2} {}",
            s.start,
            s.end,
            s.text
        );
        assert!(
            spans.iter().any(|&(a, b)| mid > a - 1.0 && mid < b + 1.0),
            "segment's middle off the speech: {:.2}-{:.2} {}",
            s.start,
            s.end,
            s.text
        );
    }
    for w in filtered.windows(2) {
        assert!(
            w[0].end <= w[1].start + 0.01,
            "segments out of order: {w:?}"
        );
    }
    let (wer_plain, wer_vad) = (
        common::wer_percent(&words, &text(&plain)),
        common::wer_percent(&words, &text(&filtered)),
    );
    eprintln!("WER without VAD {wer_plain:.1} %, with {wer_vad:.1} %");
    // One word either way is the model's choice between two decodes of the same speech (base:
    // "jumps"/"jump"); the README's measurement on 5 minutes of speech compares the WER.
    let one_word = 100.0 / words.split_whitespace().count() as f64;
    assert!(
        wer_vad <= wer_plain + one_word + 1e-9,
        "WER {wer_vad:.1} % with VAD, {wer_plain:.1} % without"
    );
    assert!(wer_vad <= 15.0, "WER {wer_vad:.1} %");
}

/// The element's offline decoding behind its default `vad=true` (and the file-mode VAD
/// properties): on the same speech between noise, music and room tone in a real pipeline, every
/// text buffer lies on the speech in stream time and the three passages are all there; with
/// `vad=false` everything is decoded (the buffers printed for comparison).
#[test]
fn element_offline_vad_keeps_text_on_the_speech() {
    use gst::prelude::*;
    common::fetch_runtime();
    let scratch = Scratch::new("element");
    let (audio, spans, _words) = speech_between_noise_and_music(&scratch);
    let wav = scratch.path("mixed.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&wav, spec).expect("write the WAV");
    for &x in &audio {
        writer
            .write_sample((x.clamp(-1.0, 1.0) * 32767.0) as i16)
            .unwrap();
    }
    writer.finalize().unwrap();
    common::gst_init();
    let run = |props: &str| -> (Vec<(f64, f64, String)>, Vec<String>) {
        let pipeline = gst::parse::launch(&format!(
            "filesrc location=\"{wav}\" ! decodebin ! audioconvert ! audioresample ! \
             whispernpu model=\"{}\" mode=offline language-code=en {props} ! \
             appsink name=sink sync=false",
            common::model_dir("base").display()
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let sink = pipeline
            .by_name("sink")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        let mut buffers = Vec::new();
        while let Ok(sample) = sink.pull_sample() {
            let b = sample.buffer().unwrap();
            let start = b.pts().unwrap().seconds_f64();
            let end = start + b.duration().unwrap().seconds_f64();
            let text = String::from_utf8(b.map_readable().unwrap().to_vec()).unwrap();
            buffers.push((start, end, text));
        }
        let bus = pipeline.bus().unwrap();
        let warnings: Vec<String> = std::iter::from_fn(|| bus.pop())
            .filter_map(|m| match m.view() {
                gst::MessageView::Warning(w) => Some(w.error().to_string()),
                gst::MessageView::Error(e) => panic!("pipeline error: {}", e.error()),
                _ => None,
            })
            .collect();
        pipeline.set_state(gst::State::Null).unwrap();
        (buffers, warnings)
    };
    let (all, _) = run("vad=false");
    let (speech, warnings) = run("vad-threshold=0.5 min-silence-duration=2000 speech-pad=400");
    eprintln!("speech at {spans:.2?}\nvad=false: {all:#?}\nvad=true: {speech:#?}");
    assert!(warnings.is_empty(), "{warnings:?}");
    let text = speech
        .iter()
        .map(|b| b.2.as_str())
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    for words in ["fellow americans", "lazy dog", "umbrella"] {
        assert!(text.contains(words), "`{words}` missing: {text}");
    }
    for (start, end, text) in &speech {
        let mid = (start + end) / 2.0;
        assert!(
            spans.iter().any(|&(a, b)| mid > a - 1.0 && mid < b + 1.0),
            "text off the speech: {start:.2}-{end:.2} {text}"
        );
    }
}
