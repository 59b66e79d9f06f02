//! The live policy (`LiveTranscriber`) on real audio, without GStreamer: agreement commits,
//! utterance ends, trimming, VAD gating, silence and noise. Audio is pushed in 20 ms pieces;
//! `backlog` is always false and the step does not depend on decode times (`headroom: 0`), so
//! the runs are deterministic.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use gstwhispernpu::engine::WhisperModel;
use gstwhispernpu::transcribe::{
    AlwaysSpeech, LiveOptions, LiveStats, LiveTranscriber, Segment, SpeechGate, TranscribeOptions,
    Transcriber, VadGate,
};
use gstwhispernpu::vad::VadKind;

const RATE: usize = 16_000;
const PIECE: usize = 320;

fn model(name: &str) -> Arc<WhisperModel> {
    let dir = common::model_dir(name);
    gstwhispernpu::engine::load_shared(dir.to_str().unwrap()).expect("model loads")
}

fn silero() -> Box<dyn SpeechGate> {
    common::fetch_runtime();
    let (gate, warning) = VadGate::open(VadKind::Silero);
    assert_eq!(
        gate.detector(),
        "silero",
        "Silero VAD did not load ({warning:?}); run scripts/fetch-runtime"
    );
    Box::new(gate)
}

fn energy() -> Box<dyn SpeechGate> {
    let (gate, _) = VadGate::open(VadKind::Energy);
    assert_eq!(gate.detector(), "energy");
    Box::new(gate)
}

/// A committed segment and the audio time (seconds pushed) when it came out.
#[derive(Debug)]
struct Commit {
    at: f64,
    segment: Segment,
}

struct Run {
    commits: Vec<Commit>,
    stats: LiveStats,
    partials: usize,
    /// The engine's decoder calls (prompts, steps, draft verifications).
    decoder_calls: u64,
}

impl Run {
    fn text(&self) -> String {
        self.commits
            .iter()
            .map(|c| c.segment.text.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn run_live(
    model: &Arc<WhisperModel>,
    gate: Box<dyn SpeechGate>,
    opts: LiveOptions,
    audio: &[f32],
) -> Run {
    let mut engine = Transcriber::new(Arc::clone(model), TranscribeOptions::default()).unwrap();
    let mut live = LiveTranscriber::new(
        gate,
        LiveOptions {
            headroom: 0.0,
            ..opts
        },
    );
    let detector = live.gate_name();
    let mut commits = Vec::new();
    let mut partials = 0;
    let mut pushed = 0usize;
    for piece in audio.chunks(PIECE) {
        pushed += piece.len();
        let out = live.push(&mut engine, piece, false).unwrap();
        partials += usize::from(out.partial.is_some());
        let at = pushed as f64 / RATE as f64;
        assert!(
            out.settled <= at + 1e-9,
            "settled {} beyond {at}",
            out.settled
        );
        commits.extend(
            out.segments
                .into_iter()
                .map(|segment| Commit { at, segment }),
        );
    }
    let end = pushed as f64 / RATE as f64;
    let out = live.drain(&mut engine).unwrap();
    // Silero failing mid-stream would hand the rest to the energy detector, with a warning.
    assert_eq!(
        live.gate_name(),
        detector,
        "the speech gate changed detector: {:?}",
        live.take_warning()
    );
    assert_eq!(live.take_warning(), None);
    commits.extend(
        out.segments
            .into_iter()
            .map(|segment| Commit { at: end, segment }),
    );
    let run = Run {
        commits,
        stats: live.stats().clone(),
        partials,
        decoder_calls: engine.stats().decoder_calls,
    };
    for c in &run.commits {
        eprintln!(
            "{:7.2} [{:6.2} – {:6.2}] {}",
            c.at, c.segment.start, c.segment.end, c.segment.text
        );
    }
    eprintln!("{:?}, partials {}", run.stats, run.partials);
    check_order(&run);
    run
}

/// Segments are in time order, never overlap, lie within the audio heard when they were
/// committed, and are non-empty.
fn check_order(run: &Run) {
    for w in run.commits.windows(2) {
        assert!(
            w[0].segment.end <= w[1].segment.start + 1e-6,
            "overlap: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    for c in &run.commits {
        assert!(c.segment.start <= c.segment.end, "{c:?}");
        assert!(c.segment.end <= c.at + 1e-6, "text from the future: {c:?}");
        assert!(!c.segment.text.trim().is_empty(), "{c:?}");
        // A caption never starts with the rest of a word already out ("farmers" then "'").
        assert!(
            !c.segment
                .text
                .starts_with(|ch: char| ch == '\'' || ch.is_ascii_punctuation() && ch != '"'),
            "{c:?}"
        );
    }
}

fn offline_text(model: &Arc<WhisperModel>, audio: &[f32]) -> String {
    let mut t = Transcriber::new(Arc::clone(model), TranscribeOptions::default()).unwrap();
    let mut segs = t.push(audio).unwrap();
    segs.extend(t.finish().unwrap());
    segs.iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn jfk() -> Vec<f32> {
    let (samples, rate) = common::read_wav(&common::jfk_wav());
    assert_eq!(rate as usize, RATE);
    samples
}

const JFK: &str = "And so my fellow Americans, ask not what your country can do for you, ask what \
                   you can do for your country.";

/// Text is committed while the audio streams (by agreement of consecutive hypotheses, on words
/// with at least 0.5 s of audio after them), not only at the end, and the whole matches the
/// known text.
#[test]
fn agreement_commits_while_streaming() {
    let model = model("tiny.en");
    let audio = jfk();
    let run = run_live(
        &model,
        Box::new(AlwaysSpeech::default()),
        LiveOptions::default(),
        &audio,
    );
    let before_end: Vec<&Commit> = run.commits.iter().filter(|c| c.at < 10.9).collect();
    assert!(
        before_end.len() >= 3,
        "only {} commits before the end",
        before_end.len()
    );
    // Agreement needs right context: a word is committed only once 0.5 s of audio follows it.
    for c in &before_end {
        assert!(
            c.segment.end <= c.at - 0.5 + 1e-6,
            "committed with less than 0.5 s of audio after it: {c:?}"
        );
    }
    assert!(run.stats.agreed >= 8, "{:?}", run.stats);
    assert!(run.partials > 0);
    let wer = common::wer_percent(JFK, &run.text());
    assert!(wer <= 15.0, "WER {wer:.1} %: {}", run.text());
}

/// A re-decode verifies the previous decode's tokens in one decoder call (`LiveOptions::draft`):
/// the same commits, word for word and time for time, as decoding step by step, in at least 10 %
/// fewer decoder calls (2026-12-05, jfk.wav: tiny.en 149 → 103, base 133 → 112, a prompt call
/// per decode included).
#[test]
fn drafts_keep_the_text_and_save_decoder_calls() {
    for name in ["tiny.en", "base"] {
        let model = model(name);
        let audio = jfk();
        let run = |draft| {
            let opts = LiveOptions {
                draft,
                ..LiveOptions::default()
            };
            run_live(&model, Box::new(AlwaysSpeech::default()), opts, &audio)
        };
        let (with, without) = (run(true), run(false));
        let segments = |r: &Run| -> Vec<(String, f64, f64)> {
            r.commits
                .iter()
                .map(|c| (c.segment.text.clone(), c.segment.start, c.segment.end))
                .collect()
        };
        assert_eq!(segments(&with), segments(&without), "{name}");
        assert_eq!(with.stats.decodes, without.stats.decodes, "{name}");
        eprintln!(
            "{name}: {} decodes, decoder calls {} with drafts, {} without",
            with.stats.decodes, with.decoder_calls, without.decoder_calls
        );
        assert!(
            with.decoder_calls * 10 <= without.decoder_calls * 9,
            "{name}: {} decoder calls with drafts, {} without",
            with.decoder_calls,
            without.decoder_calls
        );
    }
}

/// With the VAD, each pause ends an utterance: its text is final within a second of the pause
/// (the gate's 0.4 s plus padding), and silence between utterances is never decoded.
#[test]
fn vad_utterances_end_at_pauses() {
    let model = model("tiny.en");
    let speech = jfk();
    let gap = 4 * RATE;
    let mut audio = speech.clone();
    audio.extend(std::iter::repeat_n(0.0, gap));
    audio.extend(&speech);
    let first_end = 11.0;
    let run = run_live(&model, silero(), LiveOptions::default(), &audio);
    assert!(run.stats.utterances >= 2, "{:?}", run.stats);
    // Everything of the first jfk is final before the second starts.
    let first: Vec<&Commit> = run
        .commits
        .iter()
        .filter(|c| c.segment.end <= first_end + 0.5)
        .collect();
    let last_first = first.last().expect("text from the first half");
    assert!(
        last_first.at <= first_end + 1.0,
        "the first half's end came out at {:.2} s",
        last_first.at
    );
    let first_text: Vec<&str> = first.iter().map(|c| c.segment.text.as_str()).collect();
    let wer = common::wer_percent(JFK, &first_text.join(" "));
    assert!(
        wer <= 15.0,
        "WER {wer:.1} % of the first half: {first_text:?}"
    );
    // Nothing decoded inside the 4 s gap: no commit there, and the decodes fit the speech.
    assert!(
        run.commits
            .iter()
            .all(|c| c.segment.end <= first_end + 0.5 || c.segment.start >= first_end + 3.5),
        "text in the gap"
    );
    let second: Vec<&str> = run
        .commits
        .iter()
        .filter(|c| c.segment.start >= first_end + 3.5)
        .map(|c| c.segment.text.as_str())
        .collect();
    let wer = common::wer_percent(JFK, &second.join(" "));
    assert!(wer <= 15.0, "WER {wer:.1} % of the second half: {second:?}");
}

/// After a short pause the next words are decoded with the audio and committed text before
/// them, not alone, and not guessed from their first tenths of a second: the VAD splits jfk
/// after "Americans" and after "not". base, with a buffer cut right at its committed text, heard
/// "ask not" alone and wrote "As not"; tiny.en, decoding 0.37 s after the second pause, guessed
/// "Watch out." and then agreed on "Watch your country". The live words after the first pause
/// must equal the offline transcript's (base: all of them; tiny.en writes "And so am I fellow
/// Americans" before the first pause, where two decodes agreed on an unsure "my" and the one at
/// the pause, which ends the utterance, said "am I").
#[test]
fn words_after_a_pause_keep_their_left_context() {
    let audio = jfk();
    // From the first pause (after "Americans") on; everything for base.
    let after_pause = |name: &str, text: &str| -> String {
        let lower = text.to_lowercase();
        match (name, lower.find("americans")) {
            ("tiny.en", Some(at)) => text[at + "americans".len()..].to_string(),
            _ => text.to_string(),
        }
    };
    for name in ["base", "tiny.en"] {
        let model = model(name);
        let offline = offline_text(&model, &audio);
        let run = run_live(&model, silero(), LiveOptions::for_latency(5.0), &audio);
        assert!(run.stats.utterances >= 2, "{name}: {:?}", run.stats);
        let live = run.text();
        assert!(
            live.to_lowercase().contains("americans"),
            "{name}: the first sentence is missing: {live}"
        );
        let wer = common::wer_percent(&after_pause(name, &offline), &after_pause(name, &live));
        assert!(
            wer == 0.0,
            "{name}: live differs from offline (WER {wer:.1} %):\n live:    {}\n offline: {offline}",
            run.text()
        );
    }
}

/// Short sentences with pauses between them (tests/fixtures/paused.txt): after a sentence is
/// committed whole at a pause, the next one must be decoded, not dropped. The committed prefix
/// ends in a closed segment there, and tiny.en used to end its text right after it for several
/// decodes while "Bake it in a hot oven" was spoken, until a trim cut those words off ("Add a
/// oven"; live WER against the text 16 %, offline's 10 %).
#[test]
fn sentences_after_pauses_are_not_lost() {
    let model = model("tiny.en");
    let text = std::fs::read_to_string(common::repo().join("tests/fixtures/paused.txt")).unwrap();
    let wav = common::synthesise("paused", &text, "en-us+m3");
    let (audio, rate) = common::read_wav(&wav);
    std::fs::remove_file(&wav).ok();
    assert_eq!(rate as usize, RATE);
    let run = run_live(&model, silero(), LiveOptions::for_latency(5.0), &audio);
    assert!(run.stats.utterances >= 6, "{:?}", run.stats);
    let offline = offline_text(&model, &audio);
    let live_wer = common::wer_percent(&text, &run.text());
    let offline_wer = common::wer_percent(&text, &offline);
    eprintln!(
        "offline: {offline}\nlive:    {}\nWER against the text: live {live_wer:.1} %, offline \
         {offline_wer:.1} %",
        run.text()
    );
    assert!(
        run.text().contains("in a hot oven"),
        "the sentence after a pause is incomplete: {}",
        run.text()
    );
    // The README's live figures: within 2 WER points of offline on every file.
    assert!(
        live_wer <= offline_wer + 2.0,
        "live WER {live_wer:.1} % against the text, offline {offline_wer:.1} % (+ 2 allowed)"
    );
}

/// The README's live figures hold each file's live WER within 2 points of offline (measured in
/// real time by scripts/bench-live); here the 111.9 s synthesised recording (scripts/synth-speech,
/// tests/fixtures/multiwindow.txt) with tiny.en, on the deterministic schedule, `latency` 5 s as
/// there, behind Silero VAD.
#[test]
fn synthesised_recording_live_wer_within_two_points_of_offline() {
    let model = model("tiny.en");
    let (audio, text) = common::multiwindow_recording();
    let run = run_live(&model, silero(), LiveOptions::for_latency(5.0), &audio);
    let offline = offline_text(&model, &audio);
    let live_wer = common::wer_percent(&text, &run.text());
    let offline_wer = common::wer_percent(&text, &offline);
    eprintln!("WER against the text: live {live_wer:.2} %, offline {offline_wer:.2} %");
    assert!(
        live_wer <= offline_wer + 2.0,
        "live WER {live_wer:.2} % against the text, offline {offline_wer:.2} % (+ 2 allowed)"
    );
}

/// Minutes of silence and noise: no decode and no text, with Silero and with the energy VAD.
#[test]
fn silence_and_noise_give_nothing() {
    let model = model("tiny.en");
    let audio = common::noise_mix(60);
    for (name, gate) in [("silero", silero()), ("energy", energy())] {
        let run = run_live(&model, gate, LiveOptions::default(), &audio);
        assert!(
            run.commits.is_empty(),
            "{name}: text from noise: {}",
            run.text()
        );
        assert!(
            run.stats.decodes <= 2,
            "{name}: {} decodes over noise",
            run.stats.decodes
        );
    }
}

/// Continuous speech longer than the buffer limit: the buffer is trimmed at committed segment
/// ends, and the text stays close to the offline transcript. The trims are forced (a 10 s buffer
/// and a 1 s step, not the defaults, on unbroken speech) and cost words: the README gives the
/// figures (live 14.5 %, offline 8.4 % against the text) and this test's bound, 7 points.
#[test]
fn long_speech_is_trimmed_and_complete() {
    let model = model("tiny.en");
    let wav = synthesise_paragraph();
    let (audio, rate) = common::read_wav(&wav);
    std::fs::remove_file(&wav).ok();
    assert_eq!(rate as usize, RATE);
    let seconds = audio.len() as f64 / RATE as f64;
    assert!(seconds > 25.0, "only {seconds:.1} s of speech");
    let opts = LiveOptions {
        step: 1.0,
        max_buffer: 10.0,
        ..LiveOptions::default()
    };
    let run = run_live(&model, Box::new(AlwaysSpeech::default()), opts, &audio);
    assert!(run.stats.trims >= 2, "{:?}", run.stats);
    let offline = offline_text(&model, &audio);
    let wer = common::wer_percent(&offline, &run.text());
    eprintln!(
        "offline: {offline}\nlive:    {}\nWER vs offline {wer:.1} %",
        run.text()
    );
    assert!(wer <= 12.0, "WER {wer:.1} % against the offline text");
    let truth = PARAGRAPH;
    let live_wer = common::wer_percent(truth, &run.text());
    let offline_wer = common::wer_percent(truth, &offline);
    eprintln!("WER against the text: live {live_wer:.1} %, offline {offline_wer:.1} %");
    assert!(
        live_wer <= offline_wer + 7.0,
        "live WER {live_wer:.1} % vs offline {offline_wer:.1} % (+ 7 allowed)"
    );
}

const PARAGRAPH: &str = "The morning began with a thin gray fog that rolled in from the harbor and \
    settled over the quiet streets. By the time the bakery opened its doors, the air smelled of \
    warm bread and wet stone. People walked slowly, wrapped in heavy coats, and nobody seemed to \
    be in a hurry. Around noon the wind changed direction, the clouds broke apart, and a pale sun \
    appeared above the rooftops. The old city is built on a gentle hill beside a wide river.";

/// One paragraph without pauses, by scripts/synth-speech (espeak-ng).
fn synthesise_paragraph() -> PathBuf {
    common::synthesise("paragraph", PARAGRAPH, "en-us")
}
