//! Multilingual models on speech that is not English: language identification (with its
//! probabilities, offline, live and as a bus message) and `task=translate`. The speech is German
//! synthesised with espeak-ng (scripts/synth-speech, voice `de`), transcribed with `base`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use gst::prelude::*;
use gstwhispernpu::engine::WhisperModel;
use gstwhispernpu::transcribe::{
    LIVE_LANGUAGE_LOCK, LiveOptions, LiveTranscriber, Task, TranscribeOptions, Transcriber, VadGate,
};
use gstwhispernpu::vad::VadKind;

const GERMAN: &str = "Guten Morgen. Heute ist Montag, und das Wetter ist sehr schön. Ich fahre mit \
                      dem Fahrrad zur Arbeit, weil die Straßen frei sind. Meine Kollegen sind \
                      freundlich, und wir essen zusammen zu Mittag. Am Abend koche ich Suppe für \
                      meine Familie.";

/// Words a translation of [`GERMAN`] into English must mostly contain.
const ENGLISH_KEYWORDS: [&str; 8] = [
    "morning", "today", "monday", "weather", "work", "friendly", "evening", "family",
];

/// The offline identification's probability the README publishes (`de`, 0.98).
const OFFLINE_DE_PROBABILITY: f32 = 0.98;

fn german_wav() -> &'static PathBuf {
    static WAV: OnceLock<PathBuf> = OnceLock::new();
    WAV.get_or_init(|| {
        let dir = std::env::temp_dir();
        let text = dir.join(format!("whispernpu-de-{}.txt", std::process::id()));
        let wav = dir.join(format!("whispernpu-de-{}.wav", std::process::id()));
        std::fs::write(&text, GERMAN).unwrap();
        let out = Command::new("bash")
            .arg(common::repo().join("scripts/synth-speech"))
            .arg(&wav)
            .arg(&text)
            .env("SYNTH_VOICE", "de")
            .env("SYNTH_MIN_SECONDS", "8")
            .output()
            .expect("cannot run scripts/synth-speech");
        std::fs::remove_file(&text).ok();
        assert!(
            out.status.success(),
            "scripts/synth-speech failed (needs espeak-ng with its German voice, and sox): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wav
    })
}

fn german() -> Vec<f32> {
    let (samples, rate) = common::read_wav(german_wav());
    assert_eq!(rate, 16_000);
    samples
}

fn base() -> Arc<WhisperModel> {
    static MODEL: OnceLock<Arc<WhisperModel>> = OnceLock::new();
    Arc::clone(MODEL.get_or_init(|| {
        let dir = common::model_dir("base");
        gstwhispernpu::engine::load_shared(dir.to_str().unwrap()).expect("base loads")
    }))
}

/// Lowercase words of at least four letters (short words like "am", "die", "man" exist in both
/// languages).
fn long_words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| w.chars().count() >= 4)
        .map(str::to_string)
        .collect()
}

/// Share of `text`'s long words that occur in `vocabulary`'s.
fn share_in(text: &str, vocabulary: &str) -> f64 {
    let vocab = long_words(vocabulary);
    let words = long_words(text);
    if words.is_empty() {
        return 0.0;
    }
    words.iter().filter(|w| vocab.contains(w)).count() as f64 / words.len() as f64
}

fn offline(task: Task) -> (String, Transcriber) {
    let opts = TranscribeOptions {
        task,
        ..TranscribeOptions::default()
    };
    let mut t = Transcriber::new(base(), opts).unwrap();
    let mut segs = t.push(&german()).unwrap();
    segs.extend(t.finish().unwrap());
    for s in &segs {
        assert_eq!(s.language, "de", "segment language of {:?}", s.text);
    }
    let text: Vec<&str> = segs.iter().map(|s| s.text.as_str()).collect();
    (text.join(" "), t)
}

/// Offline: German is identified with its probability, and transcribed as German words.
#[test]
fn german_is_identified_and_transcribed() {
    let (text, t) = offline(Task::Transcribe);
    eprintln!("{text}");
    let d = t.language_detection().expect("a language identification");
    eprintln!("{d:?}");
    assert_eq!(d.language, "de");
    assert!(d.probability >= OFFLINE_DE_PROBABILITY, "{d:?}");
    assert!(d.locked);
    assert_eq!(d.top[0].0, "de");
    assert!(d.top.windows(2).all(|w| w[0].1 >= w[1].1), "{d:?}");
    let total: f32 = d.top.iter().map(|c| c.1).sum();
    assert!(total <= 1.0 + 1e-4, "{d:?}");
    let german = share_in(&text, GERMAN);
    assert!(
        german >= 0.6,
        "only {:.0} % of the words are the German text's: {text}",
        german * 100.0
    );
}

/// `task=translate` gives English: the translation's keywords, hardly any German word.
#[test]
fn german_is_translated_to_english() {
    let (text, _) = offline(Task::Translate);
    eprintln!("{text}");
    let words = long_words(&text);
    let found: Vec<&str> = ENGLISH_KEYWORDS
        .iter()
        .copied()
        .filter(|k| words.iter().any(|w| w == k))
        .collect();
    assert!(
        found.len() >= 5,
        "English keywords found: {found:?} in {text}"
    );
    let german = share_in(&text, GERMAN);
    assert!(
        german <= 0.2,
        "{:.0} % of the words are German: {text}",
        german * 100.0
    );
}

/// Live: the language is identified again on each decode until one is confident over enough
/// audio, then kept; the German words come out.
#[test]
fn live_locks_the_language_once_confident() {
    common::fetch_runtime();
    let mut engine = Transcriber::new(base(), TranscribeOptions::default()).unwrap();
    let (gate, warning) = VadGate::open(VadKind::Silero);
    assert_eq!(gate.detector(), "silero", "{warning:?}");
    let mut live = LiveTranscriber::new(
        Box::new(gate),
        LiveOptions {
            headroom: 0.0,
            ..LiveOptions::for_latency(5.0)
        },
    );
    let mut text = Vec::new();
    let mut first_detection = None;
    for piece in german().chunks(320) {
        let out = live.push(&mut engine, piece, false).unwrap();
        if first_detection.is_none() {
            first_detection = engine.language_detection().cloned();
        }
        text.extend(out.segments.into_iter().map(|s| s.text));
    }
    let d = engine.language_detection().cloned().expect("identified");
    text.extend(
        live.drain(&mut engine)
            .unwrap()
            .segments
            .into_iter()
            .map(|s| s.text),
    );
    assert_eq!(live.gate_name(), "silero", "{:?}", live.take_warning());
    let text = text.join(" ");
    eprintln!("first: {first_detection:?}\nlast: {d:?}\n{text}");
    let first = first_detection.expect("identified on the first decode");
    assert!(
        first.audio_seconds < 2.0,
        "first identification over {} s",
        first.audio_seconds
    );
    assert!(d.locked, "never locked: {d:?}");
    assert_eq!(d.language, "de");
    assert!(d.probability >= LIVE_LANGUAGE_LOCK && d.audio_seconds >= 2.0);
    let german = share_in(&text, GERMAN);
    assert!(
        german >= 0.6,
        "only {:.0} % of the words are the German text's: {text}",
        german * 100.0
    );
}

/// The element posts `whispernpu-language` with the identification, once per stream offline.
#[test]
fn element_posts_the_language() {
    gst::init().unwrap();
    gstwhispernpu::plugin_register_static().unwrap();
    let dir = common::model_dir("base");
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! wavparse ! audioconvert ! audioresample ! \
         whispernpu model={} ! fakesink",
        german_wav().display(),
        dir.display()
    ))
    .unwrap();
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut found = Vec::new();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(120)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            gst::MessageView::Element(_) => {
                let s = msg.structure().unwrap();
                if s.name() == "whispernpu-language" {
                    found.push(s.to_owned());
                }
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let s = &found[0];
    assert_eq!(s.get::<&str>("language").unwrap(), "de");
    let probability = s.get::<f64>("probability").unwrap();
    assert!(
        probability >= f64::from(OFFLINE_DE_PROBABILITY),
        "{probability}"
    );
    assert!(s.get::<bool>("locked").unwrap());
    let candidates = s.get::<gst::Array>("candidates").unwrap();
    let probabilities = s.get::<gst::Array>("probabilities").unwrap();
    assert_eq!(candidates.len(), 5);
    assert_eq!(probabilities.len(), 5);
    assert_eq!(candidates.as_slice()[0].get::<&str>().unwrap(), "de");
}
