//! `whispernpu` in real pipelines: SRT output checked cue by cue and read back with `subparse`,
//! other subtitle consumers, two elements sharing a model, the LATENCY query.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gst::prelude::*;

use common::gst_init as init;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("whispernpu-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a pipeline to EOS; panics with the error message on error.
fn run(pipeline: &gst::Element) {
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(300),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS or error within 300 s");
    pipeline.set_state(gst::State::Null).unwrap();
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("pipeline error: {} ({:?})", e.error(), e.debug());
    }
}

fn source(wav: &Path) -> String {
    format!(
        "filesrc location=\"{}\" ! decodebin ! audioconvert ! audioresample",
        wav.display()
    )
}

#[derive(Debug, Clone, PartialEq)]
struct Cue {
    index: usize,
    start: f64,
    end: f64,
    text: String,
}

fn parse_srt_time(s: &str) -> f64 {
    // HH:MM:SS,mmm
    let (hms, ms) = s.trim().split_once(',').expect("SRT time has a comma");
    let parts: Vec<f64> = hms
        .split(':')
        .map(|p| p.parse().expect("SRT time field"))
        .collect();
    assert_eq!(parts.len(), 3, "SRT time `{s}`");
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2] + ms.parse::<f64>().unwrap() / 1000.0
}

fn parse_srt(text: &str) -> Vec<Cue> {
    let text = text.replace("\r\n", "\n");
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut lines = block.lines();
            let index = lines
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("cue index in `{block}`"));
            let times = lines.next().expect("cue times");
            let (start, end) = times.split_once(" --> ").expect("`-->` in cue times");
            let text = lines.collect::<Vec<_>>().join("\n");
            Cue {
                index,
                start: parse_srt_time(start),
                end: parse_srt_time(end),
                text,
            }
        })
        .collect()
}

/// The words of jfk.wav, in order.
const JFK_WORDS: &[&str] = &[
    "and so",
    "fellow",
    "americans",
    "ask not",
    "country",
    "can do",
    "for you",
    "ask what",
    "you can do",
    "country",
];

fn assert_words_in_order(text: &str) {
    let text = text.to_lowercase();
    let mut at = 0;
    for word in JFK_WORDS {
        match text[at..].find(word) {
            Some(i) => at += i + word.len(),
            None => panic!("`{word}` missing (in order) from `{text}`"),
        }
    }
}

#[test]
fn srt_file_cue_by_cue_and_subparse_round_trip() {
    init();
    let model = common::model_dir("base");
    let dir = temp_dir("srt");
    let srt = dir.join("jfk.srt");
    let pipeline = gst::parse::launch(&format!(
        "{} ! whispernpu model=\"{}\" ! srtenc ! filesink location=\"{}\"",
        source(&common::jfk_wav()),
        model.display(),
        srt.display()
    ))
    .unwrap();
    run(&pipeline);

    let content = std::fs::read_to_string(&srt).unwrap();
    eprintln!("{content}");
    let cues = parse_srt(&content);
    assert!(!cues.is_empty(), "empty SRT");
    for (i, cue) in cues.iter().enumerate() {
        assert_eq!(cue.index, i + 1, "cue numbering");
        assert!(cue.end > cue.start, "cue {cue:?} has no duration");
        assert!(!cue.text.trim().is_empty(), "cue {cue:?} has no text");
        assert!(!cue.text.starts_with(' '), "leading space in {cue:?}");
        assert!(cue.end <= 11.5, "cue {cue:?} past the audio");
    }
    for w in cues.windows(2) {
        assert!(w[0].start <= w[1].start, "cues not monotonic: {w:?}");
        assert!(w[0].end <= w[1].start, "cues overlap: {w:?}");
    }
    assert!(cues[0].start < 1.0, "first cue late: {:?}", cues[0]);
    let all: Vec<&str> = cues.iter().map(|c| c.text.as_str()).collect();
    assert_words_in_order(&all.join(" "));

    // Read it back.
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! subparse ! appsink name=sink sync=false",
        srt.display()
    ))
    .unwrap();
    let sink = app_sink(&pipeline);
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut back = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        let buffer = sample.buffer().unwrap();
        let map = buffer.map_readable().unwrap();
        let start = buffer.pts().unwrap().seconds_f64();
        let end = start + buffer.duration().unwrap().seconds_f64();
        back.push((start, end, String::from_utf8(map.to_vec()).unwrap()));
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(back.len(), cues.len(), "subparse read {back:?}");
    for ((start, end, text), cue) in back.iter().zip(&cues) {
        assert!((start - cue.start).abs() < 0.002, "{start} vs {cue:?}");
        assert!((end - cue.end).abs() < 0.002, "{end} vs {cue:?}");
        assert_eq!(text.trim(), cue.text.trim());
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// webvttenc, matroskamux and mp4mux subtitle pads, textoverlay.
#[test]
fn subtitle_consumers() {
    init();
    let model = common::model_dir("tiny.en");
    let dir = temp_dir("consumers");
    let src = source(&common::jfk_wav());
    let m = model.display();
    let d = dir.display();
    for launch in [
        format!("{src} ! whispernpu model=\"{m}\" ! webvttenc ! filesink location=\"{d}/a.vtt\""),
        format!(
            "{src} ! whispernpu model=\"{m}\" ! mux.subtitle_%u matroskamux name=mux ! filesink location=\"{d}/a.mkv\""
        ),
        format!(
            "{src} ! whispernpu model=\"{m}\" ! mux.subtitle_%u mp4mux name=mux ! filesink location=\"{d}/a.mp4\""
        ),
        format!(
            "{src} ! whispernpu model=\"{m}\" ! o.text_sink \
             videotestsrc num-buffers=120 ! video/x-raw,width=320,height=240,framerate=10/1 \
             ! textoverlay name=o ! fakesink"
        ),
    ] {
        eprintln!("{launch}");
        run(&gst::parse::launch(&launch).unwrap());
    }
    let vtt = std::fs::read_to_string(dir.join("a.vtt")).unwrap();
    assert!(vtt.starts_with("WEBVTT"), "{vtt}");
    assert!(vtt.to_lowercase().contains("country"), "{vtt}");
    for f in ["a.mkv", "a.mp4"] {
        assert!(
            std::fs::metadata(dir.join(f)).unwrap().len() > 0,
            "{f} empty"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Two elements in one pipeline share one copy of the weights and both transcribe.
#[test]
fn two_elements_share_one_model() {
    init();
    let model = common::model_dir("tiny.en");
    let m = model.display();
    let pipeline = gst::parse::launch(&format!(
        "{} ! tee name=t \
         t. ! queue ! whispernpu name=a model=\"{m}\" ! appsink name=sa sync=false \
         t. ! queue ! whispernpu name=b model=\"{m}\" ! appsink name=sb sync=false",
        source(&common::jfk_wav())
    ))
    .unwrap();
    let bin = pipeline.downcast_ref::<gst::Bin>().unwrap();
    let texts: Vec<Arc<std::sync::Mutex<String>>> = ["sa", "sb"]
        .iter()
        .map(|name| {
            let text = Arc::new(std::sync::Mutex::new(String::new()));
            let sink = bin
                .by_name(name)
                .unwrap()
                .downcast::<gst_app::AppSink>()
                .unwrap();
            let t = Arc::clone(&text);
            sink.set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |sink| {
                        let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                        let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                        let mut t = t.lock().unwrap();
                        t.push_str(&String::from_utf8_lossy(&map));
                        t.push(' ');
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
            text
        })
        .collect();
    let a = bin
        .by_name("a")
        .unwrap()
        .downcast::<gstwhispernpu::element::WhisperNpu>()
        .unwrap();
    let b = bin
        .by_name("b")
        .unwrap()
        .downcast::<gstwhispernpu::element::WhisperNpu>()
        .unwrap();
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(300),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS or error");
    assert!(
        matches!(msg.view(), gst::MessageView::Eos(_)),
        "pipeline failed: {msg:?}"
    );
    let (ma, mb) = (a.model().unwrap(), b.model().unwrap());
    assert!(Arc::ptr_eq(&ma, &mb), "the two elements loaded two copies");
    pipeline.set_state(gst::State::Null).unwrap();
    for text in texts {
        let text = text.lock().unwrap().to_lowercase();
        assert!(text.contains("your country"), "{text}");
    }
}

fn latency_of(launch: &str, state: gst::State) -> (bool, gst::ClockTime) {
    let pipeline = gst::parse::launch(launch).unwrap();
    let res = pipeline.set_state(state).unwrap();
    if state == gst::State::Paused {
        assert_eq!(res, gst::StateChangeSuccess::NoPreroll, "live source");
    }
    let w = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("w")
        .unwrap();
    let src = w.static_pad("src").unwrap();
    assert!(src.current_caps().is_none(), "caps already negotiated");
    let mut q = gst::query::Latency::new();
    assert!(src.query(&mut q), "latency query unanswered");
    let (live, min, _max) = q.result();
    pipeline.set_state(gst::State::Null).unwrap();
    (live, min)
}

const CAPS: &str = "audio/x-raw,format=F32LE,rate=16000,channels=1,layout=interleaved";

/// Non-live upstream: the LATENCY query passes upstream's answer through (not live).
#[test]
fn latency_query_non_live() {
    init();
    let model = common::model_dir("tiny.en");
    let (live, min) = latency_of(
        &format!(
            "appsrc is-live=false format=time caps={CAPS} ! whispernpu name=w model=\"{}\" \
             ! fakesink",
            model.display()
        ),
        gst::State::Ready,
    );
    assert!(!live);
    assert_eq!(min, gst::ClockTime::ZERO);
}

/// Live upstream, PAUSED, no caps yet: upstream latency + latency + lateness.
#[test]
fn latency_query_live_paused_before_caps() {
    init();
    let model = common::model_dir("tiny.en");
    let (live, min) = latency_of(
        &format!(
            "appsrc is-live=true min-latency=100000000 format=time caps={CAPS} \
             ! whispernpu name=w model=\"{}\" latency=3000 lateness=250 ! fakesink",
            model.display()
        ),
        gst::State::Paused,
    );
    assert!(live);
    assert_eq!(min, gst::ClockTime::from_mseconds(100 + 3000 + 250));
    // audiotestsrc answers only once it has caps: until then the element answers with its own
    // latency; once negotiated (a race with the query) with audiotestsrc's buffer of 1024
    // samples (64 ms at 16 kHz) added.
    let (live, min) = latency_of(
        &format!(
            "audiotestsrc is-live=true ! audio/x-raw,rate=16000,channels=1 \
             ! whispernpu name=w model=\"{}\" latency=3000 lateness=250 ! fakesink",
            model.display()
        ),
        gst::State::Paused,
    );
    assert!(live);
    assert!(
        min == gst::ClockTime::from_mseconds(3000 + 250)
            || min == gst::ClockTime::from_mseconds(64 + 3000 + 250),
        "{min}"
    );
}

/// The `appsink` named `sink` in `pipeline`.
fn app_sink(pipeline: &gst::Element) -> gst_app::AppSink {
    pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap()
}

/// Runs `whispernpu {props}` over jfk.wav in a real pipeline (file, decodebin, convert,
/// resample) and returns its text buffers as (PTS s, end s, text).
fn jfk_buffers(props: &str) -> Vec<(f64, f64, String)> {
    init();
    let pipeline = gst::parse::launch(&format!(
        "{} ! whispernpu model=\"{}\" mode=offline {props} ! appsink name=sink sync=false",
        source(&common::jfk_wav()),
        common::model_dir("tiny.en").display(),
    ))
    .unwrap();
    let sink = app_sink(&pipeline);
    let buffers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let b = Arc::clone(&buffers);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                let pts = buffer.pts().ok_or(gst::FlowError::Error)?;
                let duration = buffer.duration().ok_or(gst::FlowError::Error)?;
                b.lock().unwrap().push((
                    pts.seconds_f64(),
                    (pts + duration).seconds_f64(),
                    String::from_utf8_lossy(&map).into_owned(),
                ));
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    run(&pipeline);
    buffers.lock().unwrap().clone()
}

/// The words of text buffers, in order.
fn words_of(buffers: &[(f64, f64, String)]) -> Vec<String> {
    buffers
        .iter()
        .flat_map(|b| b.2.split_whitespace().map(str::to_string))
        .collect()
}

/// `output=words`: one buffer per word of the segment transcript, each with its own time, in
/// order, covering the speech (openai's word timing: "Americans" spans 1.8 s).
#[test]
fn output_words_one_buffer_per_word() {
    let segments = jfk_buffers("");
    let words = jfk_buffers("output=words");
    eprintln!("{words:#?}");
    let transcript = words_of(&segments);
    let texts: Vec<String> = words.iter().map(|w| w.2.clone()).collect();
    assert_eq!(texts, transcript, "one buffer per word of the transcript");
    assert!(
        words.iter().all(|w| !w.2.contains(char::is_whitespace)),
        "{words:?}"
    );
    for pair in words.windows(2) {
        assert!(pair[0].0 < pair[1].0, "PTS not increasing: {pair:?}");
        assert!(pair[0].1 <= pair[1].0 + 1e-6, "words overlap: {pair:?}");
    }
    assert!(words.iter().all(|w| w.1 > w.0), "{words:?}");
    let americans = words
        .iter()
        .find(|w| w.2.trim_matches(',') == "Americans")
        .expect("the word Americans");
    assert!(americans.0 <= 1.8 && americans.1 >= 1.8, "{americans:?}");
    // Segment buffers span several words: the word buffers are finer.
    assert!(words.len() > 2 * segments.len(), "{segments:?}");
}

/// Caption shaping through `srtenc` (offline, the CEA-608 roll-up preset and a narrower layout):
/// every SubRip cue has at most `max-lines` lines of at most `max-line-length` characters, the
/// cues are in order and never overlap, each cue's times are those of its words (the same
/// element with `output=words`), and together they hold every word of the unshaped transcript
/// exactly once, in order.
#[test]
fn srtenc_captions_shaped_by_line_length_and_count() {
    let dir = temp_dir("captions");
    let words = jfk_buffers("output=words");
    let transcript = words_of(&jfk_buffers(""));
    assert_eq!(
        words.iter().map(|w| w.2.clone()).collect::<Vec<_>>(),
        transcript
    );
    for (props, width, lines) in [
        ("caption-preset=cea608-roll-up-2", 32, 2),
        ("max-line-length=14 max-lines=3", 14, 3),
        ("caption-preset=cea608-roll-up-3 max-line-length=20", 20, 3),
    ] {
        let srt = dir.join("jfk.srt");
        let pipeline = gst::parse::launch(&format!(
            "{} ! whispernpu model=\"{}\" mode=offline {props} ! srtenc ! filesink location=\"{}\"",
            source(&common::jfk_wav()),
            common::model_dir("tiny.en").display(),
            srt.display()
        ))
        .unwrap();
        run(&pipeline);
        let content = std::fs::read_to_string(&srt).unwrap();
        eprintln!("{props}:\n{content}");
        let cues = parse_srt(&content);
        assert!(cues.len() >= 2, "{props}: {cues:?}");
        let mut next = 0;
        for (i, cue) in cues.iter().enumerate() {
            let cue_lines: Vec<&str> = cue.text.lines().collect();
            assert!(cue_lines.len() <= lines, "{props}: {cue:?}");
            assert!(
                cue_lines.iter().all(|l| l.chars().count() <= width),
                "{props}: {cue:?}"
            );
            let n = cue.text.split_whitespace().count();
            let cue_words: Vec<&str> = cue.text.split_whitespace().collect();
            assert_eq!(cue_words, transcript[next..next + n], "{props}: cue {i}");
            // Timed by its words (SubRip keeps milliseconds; a word buffer is at least 0.1 s).
            assert!((cue.start - words[next].0).abs() < 0.11, "{props}: {cue:?}");
            assert!(
                (cue.end - words[next + n - 1].1).abs() < 0.11,
                "{props}: {cue:?}"
            );
            if i > 0 {
                assert!(cues[i - 1].end <= cue.start, "{props}: cues overlap at {i}");
            }
            next += n;
        }
        assert_eq!(next, transcript.len(), "{props}: every word once");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `examples/bench_live --streams ... --json` of tiny.en on jfk.wav (its text as one sentence
/// from 0 to 11 s) with `args` and the environment `env`: its JSON line and its stderr.
fn bench_live_jfk(dir: &str, args: &[&str], env: &[(&str, &str)]) -> (serde_json::Value, String) {
    let dir = temp_dir(dir);
    let times = dir.join("jfk.tsv");
    std::fs::write(
        &times,
        "0\t11.0\tAnd so my fellow Americans, ask not what your country can do for you, ask what \
         you can do for your country.\n",
    )
    .unwrap();
    let model = common::model_dir("tiny.en");
    let out = std::process::Command::new(common::example_bin("bench_live"))
        .envs(env.iter().copied())
        .args(args)
        .args(["--json", "--model"])
        .arg(&model)
        .arg("--audio")
        .arg(common::jfk_wav())
        .arg("--times")
        .arg(&times)
        .output()
        .expect("bench_live runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "bench_live failed: {stderr}");
    let line = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(line.trim()).expect("one JSON line");
    (v, stderr)
}

/// `bench_live --streams 2`: two live elements in one process (one model, one worker pool)
/// both caption jfk.wav fed in real time; latency per sentence is measured against the end of
/// the speech (a one-sentence times file), and the report holds every field the README's
/// multi-stream table is made from.
#[test]
fn two_live_streams_share_the_model_and_caption_both() {
    let (v, stderr) = bench_live_jfk("streams", &["--streams", "2", "--stagger", "0.5"], &[]);
    assert_eq!(v["kind"], "streams");
    assert_eq!(v["latency_kind"], "sentence");
    let streams = v["per_stream"].as_array().expect("per_stream");
    assert_eq!(streams.len(), 2, "{v}");
    for s in streams {
        assert_eq!(s["missed_sentences"], 0, "{s}");
        let wer = s["wer"].as_f64().expect("wer");
        assert!(wer <= 15.0, "stream WER {wer} %: {stderr}");
        // The sentence's last word cannot arrive before it is spoken, and comes well within the
        // latency property (5 s) + lateness.
        let p95 = s["p95"].as_f64().expect("p95");
        assert!(
            (0.0..8.0).contains(&p95),
            "sentence latency {p95} s: {stderr}"
        );
        assert!(s["own_pts_p95"].as_f64().is_some() && s["pulled_back_p95"].as_f64().is_some());
    }
    let cores = v["cores_per_stream"].as_f64().expect("cores per stream");
    assert!(cores > 0.0 && cores <= 1.0, "{cores} cores per stream");
}

/// Overload of elements sharing one engine is graceful too: six live streams of jfk.wav into
/// `latency=2000` in one process (`examples/bench_live --streams 6`), every live decode lasting
/// at least 1 s (`WHISPERNPU_TEST_DECODE_SECONDS`), so that the two workers can give each stream
/// a decode about every 3 s where it would take one every 1.25 s. A decode whose turn would
/// come too late for its text is not waited for: a re-decode is left out and the words the last
/// decode heard that cannot wait go out as it heard them; an utterance end leaves its speech out
/// (`whispernpu-skipped`). Every text buffer leaves within latency + lateness of the end of its
/// audio (0.2 s allowed for the push and a busy host), some speech is left out and reported, each stream warns once at most, and most of the
/// speech is still transcribed.
#[test]
fn shared_engine_overload_keeps_text_within_the_budget() {
    let (v, stderr) = bench_live_jfk(
        "overload-streams",
        &["--streams", "6", "--stagger", "0.3", "--latency", "2000"],
        &[("WHISPERNPU_TEST_DECODE_SECONDS", "1.0")],
    );
    eprintln!("{stderr}");
    assert_eq!(v["budget"].as_f64(), Some(2.0), "{v}");
    let streams = v["per_stream"].as_array().expect("per_stream");
    assert_eq!(streams.len(), 6, "{v}");
    let mut words = 0;
    for s in streams {
        let late = s["own_pts_max"].as_f64().unwrap_or(0.0);
        assert!(
            late <= 2.0 + 0.2,
            "a text buffer left {late:.2} s after the end of its audio: {s}"
        );
        let warnings = s["warnings"].as_array().map_or(0, Vec::len);
        assert!(warnings <= 1, "{warnings} warnings: {s}");
        words += 100 - s["wer"].as_f64().expect("wer").min(100.0) as i64;
    }
    let skipped = v["skipped_seconds"].as_f64().expect("skipped_seconds");
    assert!(
        skipped > 0.5,
        "nothing left out: the load did not exceed the workers? {v}"
    );
    assert!(
        skipped < 0.75 * 6.0 * 11.0,
        "{skipped:.1} s of 66 s left out: {v}"
    );
    // Most of the speech still reaches the captions (WER below 100 % on average).
    assert!(words > 6 * 30, "little text came through: {v}");
}

/// A live `appsrc` (F32LE 16 kHz mono, `appsrc_props` added) into `whispernpu model=tiny.en
/// mode=live latency=LATENCY_MS` into an `appsink`; every text buffer is recorded as (start,
/// end, running time at which it reached the sink, text).
struct LivePipeline {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    texts: Arc<std::sync::Mutex<Vec<TextAt>>>,
}

/// A text buffer: start, end, the running time at which it reached the sink, its text.
type TextAt = (f64, f64, f64, String);

impl LivePipeline {
    fn new(appsrc_props: &str, latency_ms: u32) -> Self {
        init();
        let model = common::model_dir("tiny.en");
        let pipeline = gst::parse::launch(&format!(
            "appsrc name=src is-live=true format=time {appsrc_props} \
             caps=audio/x-raw,format=F32LE,rate=16000,channels=1,layout=interleaved \
             ! whispernpu name=w model=\"{}\" mode=live latency={latency_ms} \
             ! appsink name=sink sync=false",
            model.display()
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let src = pipeline
            .by_name("src")
            .unwrap()
            .downcast::<gst_app::AppSrc>()
            .unwrap();
        let sink = app_sink(pipeline.upcast_ref());
        let texts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (t, p) = (Arc::clone(&texts), pipeline.downgrade());
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let b = sample.buffer().ok_or(gst::FlowError::Error)?;
                    let pts = b.pts().ok_or(gst::FlowError::Error)?.seconds_f64();
                    let end = pts + b.duration().ok_or(gst::FlowError::Error)?.seconds_f64();
                    let text = String::from_utf8_lossy(&b.map_readable().unwrap()).into_owned();
                    let now = p
                        .upgrade()
                        .and_then(|p| p.current_running_time())
                        .map_or(f64::NAN, |t| t.seconds_f64());
                    t.lock().unwrap().push((pts, end, now, text));
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        Self {
            pipeline,
            src,
            texts,
        }
    }

    /// Ends the stream and waits for EOS (60 s at most); the bus messages before it.
    fn finish(&self) -> Vec<gst::Message> {
        self.src.end_of_stream().unwrap();
        let bus = self.pipeline.bus().unwrap();
        let mut messages = Vec::new();
        loop {
            let msg = bus
                .timed_pop(gst::ClockTime::from_seconds(60))
                .expect("EOS within 60 s");
            match msg.view() {
                gst::MessageView::Eos(_) => break,
                gst::MessageView::Error(e) => panic!("pipeline error: {}", e.error()),
                _ => messages.push(msg),
            }
        }
        self.pipeline.set_state(gst::State::Null).unwrap();
        messages
    }
}

/// The text of the buffers starting at `from` or later, lower case, letters, digits and spaces.
fn words_from(texts: &[TextAt], from: f64) -> String {
    texts
        .iter()
        .filter(|t| t.0 >= from)
        .map(|t| t.3.as_str())
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
        .replace(|c: char| !c.is_alphanumeric() && c != ' ', "")
}

/// The warnings among `messages`.
fn warnings_of(messages: &[gst::Message]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some(w.error().to_string()),
            _ => None,
        })
        .collect()
}

/// The element messages called `name` among `messages`.
fn element_messages(messages: &[gst::Message], name: &str) -> Vec<gst::Structure> {
    messages
        .iter()
        .filter_map(|m| m.structure())
        .filter(|s| s.name() == name)
        .map(|s| s.to_owned())
        .collect()
}

/// The `whispernpu-skipped` messages among `messages`: (start, end, queued seconds).
fn skipped_of(messages: &[gst::Message]) -> Vec<(f64, f64, f64)> {
    element_messages(messages, "whispernpu-skipped")
        .iter()
        .map(|s| {
            let start = s.get::<gst::ClockTime>("start").unwrap().seconds_f64();
            let duration = s.get::<gst::ClockTime>("duration").unwrap().seconds_f64();
            (start, start + duration, s.get::<f64>("queued").unwrap())
        })
        .collect()
}

/// Overload is graceful, with a slow engine (the test hook of `gstwhispernpu::fault`: every
/// live decode lasts at least 1.5 s, about 1.5 × the decode's audio): jfk.wav four times, fed in
/// real time by a live `appsrc` into `latency=2000`. While the first two copies play, decodes
/// cannot keep up: the element makes its text final and leaves out the audio past its deadline
/// (`whispernpu-skipped` messages; the queue never holds much more than the budget), posts
/// one warning naming the wait, and every text buffer still leaves within latency + one decode
/// of its start (a decode longer than the budget cannot do better: a word that arrives while one
/// runs waits for it, then for its own). Once the engine is fast again (last two copies), nothing more is left out,
/// a `whispernpu-caught-up` message comes, and the speech is transcribed.
#[test]
fn live_overload_leaves_out_late_audio_and_recovers() {
    let live = LivePipeline::new("do-timestamp=true", 2000);
    let (pipeline, src) = (&live.pipeline, &live.src);
    let (jfk, _) = common::read_wav(&common::jfk_wav());
    pipeline.set_state(gst::State::Playing).unwrap();
    let start = std::time::Instant::now();
    let mut fed = 0usize;
    let mut recovery = 0.0;
    // The slow engine ends with the test, even a failing one.
    struct SlowEngine;
    impl Drop for SlowEngine {
        fn drop(&mut self) {
            gstwhispernpu::fault::set_decode_seconds(None);
        }
    }
    let _slow = SlowEngine;
    for copy in 0..4 {
        if copy == 0 {
            gstwhispernpu::fault::set_decode_seconds(Some(1.5));
        } else if copy == 2 {
            gstwhispernpu::fault::set_decode_seconds(None);
            recovery = fed as f64 / 16_000.0;
        }
        for chunk in jfk.chunks(1600) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            src.push_buffer(gst::Buffer::from_mut_slice(bytes)).unwrap();
            fed += chunk.len();
            let due = std::time::Duration::from_secs_f64(fed as f64 / 16_000.0);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let messages = live.finish();
    let warnings = warnings_of(&messages);
    let element = |name: &str| element_messages(&messages, name);
    let skipped = skipped_of(&messages);
    let texts = live.texts.lock().unwrap().clone();
    eprintln!("recovery from {recovery:.1} s\nwarnings {warnings:#?}\nskipped {skipped:.2?}");
    for (pts, end, at, text) in &texts {
        eprintln!(
            "{pts:6.2}-{end:6.2} at {at:6.2} (+{:.2} s): {text}",
            at - pts
        );
    }
    assert_eq!(warnings.len(), 1, "one warning: {warnings:?}");
    assert!(warnings[0].contains("behind"), "{warnings:?}");
    assert!(!skipped.is_empty(), "no audio left out under overload");
    let budget = 2.0;
    for &(start, end, queued) in &skipped {
        assert!(
            start < recovery + budget + 1.5,
            "left out after the load dropped: {start:.2}-{end:.2}"
        );
        assert!(queued <= budget + 1.5 + 0.5, "{queued:.2} s queued");
    }
    assert_eq!(element("whispernpu-caught-up").len(), 1, "caught up once");
    for (pts, end, at, text) in &texts {
        // Text leaves within the budget plus the decode in flight when its deadline passed.
        assert!(
            at - pts <= budget + 1.5 + 0.5,
            "{pts:.2}-{end:.2} left at {at:.2}: {text}"
        );
        for &(s, e, _) in &skipped {
            assert!(
                *end <= s + 0.01 || *pts >= e - 0.01,
                "text over audio left out: {text}"
            );
        }
    }
    let recovered = words_from(&texts, recovery);
    assert!(
        recovered.contains("ask not") && recovered.contains("your country"),
        "after the load dropped: {recovered}"
    );
}

/// A source that delivers its audio later and later (a capture thread starved of CPU: its
/// buffers keep their timestamps but reach the element behind the clock) spends the text's
/// budget before the element sees the audio. jfk.wav twice into `latency=2000`, the first 6 s
/// delivered at 0.6x real time (4 s behind by then), the rest of the first copy all at once
/// (the source catching up), the second copy in real time. The element counts how much later
/// than the source's usual delay each buffer came (`src/element/arrival.rs`), so no text buffer
/// reaches the sink later than latency + lateness after the end of its audio on the clock
/// (0.5 s allowed for a decode in flight and the push): the audio whose text could not make
/// it is left out and reported (about one `whispernpu-skipped` a second, not one per buffer),
/// with one warning, and the second copy is transcribed. Counted
/// from the arrival alone, as before, the text of the late audio left the element 3-4 s after
/// its end.
#[test]
fn a_source_falling_behind_the_clock_has_its_delay_counted() {
    let live = LivePipeline::new("", 2000);
    let (pipeline, src) = (&live.pipeline, &live.src);
    let (jfk, _) = common::read_wav(&common::jfk_wav());
    pipeline.set_state(gst::State::Playing).unwrap();
    let start = std::time::Instant::now();
    let t0 = pipeline
        .current_running_time()
        .unwrap_or(gst::ClockTime::ZERO);
    let (rate, chunk) = (16_000usize, 1600usize);
    let mut fed = 0usize;
    let starved_until = 6 * rate;
    let second_copy = jfk.len();
    for (copy, samples) in [&jfk, &jfk].into_iter().enumerate() {
        for c in samples.chunks(chunk) {
            let bytes: Vec<u8> = c.iter().flat_map(|x| x.to_le_bytes()).collect();
            let mut buffer = gst::Buffer::from_mut_slice(bytes);
            {
                let b = buffer.get_mut().unwrap();
                let at =
                    |n: usize| gst::ClockTime::from_nseconds(n as u64 * 1_000_000_000 / 16_000);
                b.set_pts(t0 + at(fed));
                b.set_duration(at(fed + c.len()) - at(fed));
            }
            src.push_buffer(buffer).unwrap();
            fed += c.len();
            let speed = if copy == 0 && fed <= starved_until {
                0.6
            } else {
                1.0
            };
            let due = std::time::Duration::from_secs_f64(fed as f64 / rate as f64 / speed);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let messages = live.finish();
    let warnings = warnings_of(&messages);
    let skipped: Vec<(f64, f64)> = skipped_of(&messages)
        .into_iter()
        .map(|(s, e, _)| (s, e))
        .collect();
    let texts = live.texts.lock().unwrap().clone();
    let t0 = t0.seconds_f64();
    eprintln!("t0 {t0:.2}\nwarnings {warnings:#?}\nskipped {skipped:.2?}");
    for (pts, end, at, text) in &texts {
        eprintln!(
            "{pts:6.2}-{end:6.2} at {at:6.2} (+{:.2} s): {text}",
            at - end
        );
    }
    let budget = 2.0;
    for (pts, end, at, text) in &texts {
        assert!(
            at - end <= budget + 0.5,
            "{pts:.2}-{end:.2} left at {at:.2}, {:.2} s after its end: {text}",
            at - end
        );
    }
    assert!(
        !skipped.is_empty(),
        "no audio left out: was the source late?"
    );
    // Buffers left out one after another as they arrive are reported together, about one
    // message a second, not one per 100 ms buffer.
    let left_out: f64 = skipped.iter().map(|(s, e)| e - s).sum();
    assert!(
        skipped.len() as f64 <= left_out.ceil() + 1.0,
        "{} whispernpu-skipped messages for {left_out:.1} s: {skipped:.2?}",
        skipped.len()
    );
    assert!(warnings.len() <= 1, "{warnings:?}");
    let second = t0 + second_copy as f64 / rate as f64;
    let recovered = words_from(&texts, second - 0.5);
    assert!(
        recovered.contains("ask not") && recovered.contains("your country"),
        "the second copy, in real time: {recovered}"
    );
}
