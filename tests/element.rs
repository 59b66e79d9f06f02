//! The `whispernpu` element driven through `gst_check::Harness`: caps, timestamps, events,
//! latency, errors. Models: tiny.en where only timing matters (fast), base where text does.

mod common;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use gst::prelude::*;
use gst_check::Harness;

const RATE: usize = 16_000;
/// Duration of the buffers `push_audio` and `push_on_clock` push.
const BUFFER: gst::ClockTime = gst::ClockTime::from_mseconds(100);

/// The `whispernpu` debug lines at INFO and above, as (element name, message): the element logs
/// the speech gate it opens for live decoding (`Live decoding, speech gate: silero`).
static ELEMENT_LOG: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn init() {
    use std::sync::Once;
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst::init");
        // Capture the element's INFO lines. Without GST_DEBUG the default printer would print
        // only these (on stderr, past the test harness's capture), so it goes; with GST_DEBUG it
        // stays and the level asked for whispernpu is kept.
        let asked = std::env::var("GST_DEBUG").unwrap_or_default();
        if asked.is_empty() {
            gst::log::remove_default_log_function();
        }
        if !asked.contains("whispernpu")
            && gst::log::get_default_threshold() < gst::DebugLevel::Info
        {
            gst::log::set_threshold_for_name("whispernpu", gst::DebugLevel::Info);
        }
        gst::log::set_active(true);
        gst::log::add_log_function(
            |category, level, _file, _function, _line, object, message| {
                if category.name() != "whispernpu" || level > gst::DebugLevel::Info {
                    return;
                }
                if let (Some(object), Some(message)) = (object, message.get()) {
                    ELEMENT_LOG
                        .lock()
                        .unwrap()
                        .push((object.to_string(), message.to_string()));
                }
            },
        );
        gstwhispernpu::plugin_register_static().expect("register whispernpu");
    });
}

/// Live decoding ran on Silero VAD, not the energy fallback: `element` logged opening the Silero
/// gate and never another, and posted no warning about the VAD (Silero failing to load, or
/// failing mid-stream, is reported by a warning before the energy detector takes over).
fn assert_silero_gate(element: &gst::Element, bus: &gst::Bus) {
    let name = element.name().to_string();
    let gates: Vec<String> = ELEMENT_LOG
        .lock()
        .unwrap()
        .iter()
        .filter(|(object, message)| *object == name && message.starts_with("Live decoding"))
        .map(|(_, message)| message.clone())
        .collect();
    assert!(!gates.is_empty(), "{name} logged no speech gate");
    assert!(
        gates
            .iter()
            .all(|g| g == "Live decoding, speech gate: silero"),
        "{name} did not decode behind Silero VAD: {gates:?}"
    );
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Warning]) {
        if let gst::MessageView::Warning(w) = msg.view() {
            assert!(
                !w.error().message().contains("VAD"),
                "{name}: {}",
                w.error()
            );
        }
    }
}

/// A `whispernpu` with `props`, its own bus, inside a Harness (which sets it to PLAYING).
fn harness(model: &Path, props: &[(&str, &str)]) -> (Harness, gst::Bus, gst::Element) {
    init();
    let element = gst::ElementFactory::make("whispernpu")
        .property("model", model.to_str().expect("utf-8 path"))
        .build()
        .expect("whispernpu element");
    for (name, value) in props {
        element.set_property_from_str(name, value);
    }
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    let h = Harness::with_element(&element, Some("sink"), Some("src"));
    (h, bus, element)
}

fn audio_caps(format: &str) -> gst::Caps {
    common::audio_caps(format, RATE as i32)
}

fn f32_buffer(samples: &[f32], pts: gst::ClockTime) -> gst::Buffer {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut buffer = gst::Buffer::from_mut_slice(bytes);
    {
        let b = buffer.get_mut().unwrap();
        b.set_pts(pts);
        b.set_duration(samples_time(samples.len()));
    }
    buffer
}

fn s16_buffer(samples: &[f32], pts: gst::ClockTime) -> gst::Buffer {
    let bytes: Vec<u8> = samples
        .iter()
        .flat_map(|s| ((s * 32767.0).round().clamp(-32768.0, 32767.0) as i16).to_le_bytes())
        .collect();
    let mut buffer = gst::Buffer::from_mut_slice(bytes);
    {
        let b = buffer.get_mut().unwrap();
        b.set_pts(pts);
        b.set_duration(samples_time(samples.len()));
    }
    buffer
}

fn samples_time(n: usize) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(n as u64 * 1_000_000_000 / RATE as u64)
}

fn jfk() -> Vec<f32> {
    let (samples, rate) = common::read_wav(&common::jfk_wav());
    assert_eq!(rate, RATE as u32);
    samples
}

/// Pushes `samples` in 100 ms buffers with timestamps from `start`.
fn push_audio(h: &mut Harness, samples: &[f32], start: gst::ClockTime, s16: bool) {
    let chunk = RATE / 10;
    for (i, c) in samples.chunks(chunk).enumerate() {
        let pts = start + samples_time(i * chunk);
        let buffer = if s16 {
            s16_buffer(c, pts)
        } else {
            f32_buffer(c, pts)
        };
        h.push(buffer).expect("push audio");
    }
}

/// One output buffer.
#[derive(Debug)]
struct Cue {
    start: f64,
    end: f64,
    text: String,
}

/// Waits for EOS downstream, then returns the text buffers and the events before EOS.
/// The caps of the first CAPS event among `events`.
fn src_caps(events: &[gst::Event]) -> gst::Caps {
    events
        .iter()
        .find_map(|e| match e.view() {
            gst::EventView::Caps(c) => Some(c.caps_owned()),
            _ => None,
        })
        .expect("src caps")
}

fn collect_until_eos(h: &mut Harness) -> (Vec<Cue>, Vec<gst::Event>) {
    let mut events = Vec::new();
    loop {
        let event = h.pull_event().expect("an event within the harness timeout");
        let eos = event.type_() == gst::EventType::Eos;
        events.push(event);
        if eos {
            break;
        }
    }
    // The worker pushes every buffer before the EOS.
    let cues = std::iter::from_fn(|| h.try_pull())
        .map(|b| cue_of(&b))
        .collect();
    (cues, events)
}

fn cue_of(buffer: &gst::Buffer) -> Cue {
    let map = buffer.map_readable().unwrap();
    let text = std::str::from_utf8(&map).expect("utf-8 text").to_string();
    let start = buffer.pts().expect("text has a PTS");
    let duration = buffer.duration().expect("text has a duration");
    Cue {
        start: start.seconds_f64(),
        end: (start + duration).seconds_f64(),
        text,
    }
}

fn gaps(events: &[gst::Event]) -> Vec<(f64, f64)> {
    events
        .iter()
        .filter_map(|e| match e.view() {
            gst::EventView::Gap(g) => {
                let (ts, d) = g.get();
                Some((ts.seconds_f64(), (ts + d.unwrap()).seconds_f64()))
            }
            _ => None,
        })
        .collect()
}

fn language_tag(events: &[gst::Event]) -> Option<String> {
    events.iter().find_map(|e| match e.view() {
        gst::EventView::Tag(t) => t
            .tag()
            .get::<gst::tags::LanguageCode>()
            .map(|v| v.get().to_string()),
        _ => None,
    })
}

fn all_text(cues: &[Cue]) -> String {
    cues.iter()
        .map(|c| c.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn assert_monotonic(cues: &[Cue]) {
    for w in cues.windows(2) {
        assert!(
            w[0].end <= w[1].start + 1e-9,
            "overlapping cues: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    for c in cues {
        assert!(c.end > c.start, "empty cue {c:?}");
        assert!(
            !c.text.is_empty() && !c.text.starts_with(' '),
            "bad text {c:?}"
        );
    }
}

/// Speech in jfk.wav by frame energy: [0.34 s, 10.96 s].
const JFK_SPEECH: (f64, f64) = (0.34, 10.96);

fn error_message(bus: &gst::Bus) -> glib::Error {
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(30), &[gst::MessageType::Error])
        .expect("an error message on the bus");
    match msg.view() {
        gst::MessageView::Error(e) => e.error(),
        _ => unreachable!(),
    }
}

#[test]
fn pads_and_caps() {
    let model = common::model_dir("tiny.en");
    let (mut h, _bus, element) = harness(&model, &[("mode", "offline")]);
    let sink = element.static_pad("sink").unwrap();
    assert!(sink.query_accept_caps(&audio_caps("F32LE")));
    assert!(sink.query_accept_caps(&audio_caps("S16LE")));
    let stereo = gst::Caps::builder("audio/x-raw")
        .field("format", "F32LE")
        .field("rate", 16_000i32)
        .field("channels", 2i32)
        .field("layout", "interleaved")
        .build();
    assert!(!sink.query_accept_caps(&stereo));
    h.set_src_caps(audio_caps("S16LE"));
    push_audio(&mut h, &vec![0.0; RATE], gst::ClockTime::ZERO, true);
    h.push_event(gst::event::Eos::new());
    let (_cues, events) = collect_until_eos(&mut h);
    let caps = src_caps(&events);
    let s = caps.structure(0).unwrap();
    assert_eq!(s.name(), "text/x-raw");
    assert_eq!(s.get::<&str>("format").unwrap(), "utf8");
}

/// Downstream that takes only Pango markup gets `format=pango-markup` and escaped text.
#[test]
fn pango_markup_downstream() {
    let model = common::model_dir("tiny.en");
    let (mut h, bus, _element) = harness(&model, &[("mode", "offline")]);
    h.set_sink_caps(
        gst::Caps::builder("text/x-raw")
            .field("format", "pango-markup")
            .build(),
    );
    h.set_src_caps(audio_caps("F32LE"));
    push_audio(&mut h, &jfk(), gst::ClockTime::ZERO, false);
    h.push_event(gst::event::Eos::new());
    let (cues, events) = collect_until_eos(&mut h);
    let caps = src_caps(&events);
    assert_eq!(
        caps.structure(0).unwrap().get::<&str>("format").unwrap(),
        "pango-markup"
    );
    assert!(!cues.is_empty());
    // Each buffer is the escaped form of the plain text in the matching bus message.
    let mut i = 0;
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Element]) {
        let s = msg.structure().unwrap();
        if s.name() == "whispernpu-segment" {
            let plain = s.get::<&str>("text").unwrap();
            assert_eq!(cues[i].text, glib::markup_escape_text(plain).as_str());
            i += 1;
        }
    }
    assert_eq!(i, cues.len());
}

#[test]
fn wrong_caps_refused() {
    let model = common::model_dir("tiny.en");
    let (mut h, _bus, element) = harness(&model, &[("mode", "offline")]);
    assert!(h.push_event(gst::event::StreamStart::new("wrong")));
    let sink = element.static_pad("sink").unwrap();
    let caps_44k = gst::Caps::builder("audio/x-raw")
        .field("format", "F32LE")
        .field("rate", 44_100i32)
        .field("channels", 1i32)
        .field("layout", "interleaved")
        .build();
    assert!(!sink.send_event(gst::event::Caps::new(&caps_44k)));
    let caps_u8 = audio_caps("U8");
    assert!(!sink.send_event(gst::event::Caps::new(&caps_u8)));
    // Through the Harness the caps are stored upstream but never reach the element.
    h.push_event(gst::event::Caps::new(&caps_u8));
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    h.push_event(gst::event::Segment::new(&segment));
    let result = h.push(f32_buffer(&[0.0; 160], gst::ClockTime::ZERO));
    assert_eq!(result, Err(gst::FlowError::NotNegotiated));
}

/// jfk with timestamps starting at 10 s, S16LE: cues on the speech, GAPs around, tag, messages.
#[test]
fn jfk_timestamps_gaps_tag_messages() {
    let model = common::model_dir("tiny.en");
    let (mut h, bus, _element) = harness(&model, &[("mode", "offline")]);
    h.set_src_caps(audio_caps("S16LE"));
    let offset = gst::ClockTime::from_seconds(10);
    push_audio(&mut h, &jfk(), offset, true);
    h.push_event(gst::event::Eos::new());
    let (cues, events) = collect_until_eos(&mut h);
    eprintln!("{cues:#?}");
    assert!(!cues.is_empty(), "no text");
    assert_monotonic(&cues);
    let text = all_text(&cues).to_lowercase();
    for word in ["fellow americans", "your country", "ask what you can do"] {
        assert!(text.contains(word), "`{word}` missing from `{text}`");
    }
    let first = cues.first().unwrap().start - 10.0;
    let last = cues.last().unwrap().end - 10.0;
    assert!(
        (first - JFK_SPEECH.0).abs() <= 0.5,
        "first cue at {first} s, speech at {} s",
        JFK_SPEECH.0
    );
    assert!(
        (last - JFK_SPEECH.1).abs() <= 0.5,
        "last cue ends at {last} s, speech ends at {} s",
        JFK_SPEECH.1
    );
    // Text and GAPs tile the stream without overlap up to its end.
    let mut spans: Vec<(f64, f64)> = cues.iter().map(|c| (c.start, c.end)).collect();
    spans.extend(gaps(&events));
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0 + 1e-6, "overlap: {spans:?}");
    }
    let covered_end = spans.iter().map(|s| s.1).fold(0.0, f64::max);
    assert!(
        covered_end >= 10.0 + 10.9,
        "stream covered up to {covered_end}"
    );
    assert_eq!(language_tag(&events).as_deref(), Some("en"));
    // One bus message per cue.
    let mut messages = 0;
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Element]) {
        let s = msg.structure().unwrap();
        if s.name() == "whispernpu-segment" {
            let start = s.get::<u64>("start").unwrap() as f64 / 1e9;
            let end = s.get::<u64>("end").unwrap() as f64 / 1e9;
            let cue = &cues[messages];
            assert!((start - cue.start).abs() < 1e-6 && (end - cue.end).abs() < 1e-6);
            assert_eq!(s.get::<&str>("text").unwrap(), cue.text);
            assert_eq!(s.get::<&str>("language").unwrap(), "en");
            assert!(s.get::<f64>("avg-logprob").unwrap() <= 0.0);
            let nsp = s.get::<f64>("no-speech-prob").unwrap();
            assert!((0.0..=1.0).contains(&nsp));
            messages += 1;
        }
    }
    assert_eq!(messages, cues.len());
}

/// Offline jfk from `offset` (segment start and buffer PTS): its cues.
fn jfk_cues_from(model: &Path, offset: gst::ClockTime) -> Vec<Cue> {
    let (mut h, _bus, _element) = harness(model, &[("mode", "offline")]);
    h.set_src_caps(audio_caps("F32LE"));
    let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
    segment.set_start(offset);
    segment.set_time(offset);
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    push_audio(&mut h, &jfk(), offset, false);
    h.push_event(gst::event::Eos::new());
    collect_until_eos(&mut h).0
}

/// A stream starting at 100 s gives the same cues as one starting at 0, 100 s later.
#[test]
fn offset_of_100_s_shifts_every_pts() {
    let model = common::model_dir("tiny.en");
    let at_zero = jfk_cues_from(&model, gst::ClockTime::ZERO);
    let at_100 = jfk_cues_from(&model, gst::ClockTime::from_seconds(100));
    eprintln!("{at_zero:#?}\n{at_100:#?}");
    assert!(!at_zero.is_empty());
    assert!(at_zero[0].start < 1.0, "{at_zero:?}");
    let end = at_zero.last().unwrap().end;
    assert!((10.4..=11.5).contains(&end), "last cue ends at {end}");
    assert_eq!(at_zero.len(), at_100.len());
    for (a, b) in at_zero.iter().zip(&at_100) {
        assert_eq!(a.text, b.text);
        assert!((b.start - a.start - 100.0).abs() < 1e-6, "{a:?} vs {b:?}");
        assert!((b.end - a.end - 100.0).abs() < 1e-6, "{a:?} vs {b:?}");
    }
}

/// Less than one window, offline: nothing comes out until EOS, then the text precedes the EOS.
#[test]
fn eos_drains() {
    let model = common::model_dir("tiny.en");
    let (mut h, _bus, _element) = harness(&model, &[("mode", "offline")]);
    h.set_src_caps(audio_caps("F32LE"));
    let audio = jfk();
    push_audio(&mut h, &audio, gst::ClockTime::ZERO, false);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        h.buffers_in_queue(),
        0,
        "text before the window was complete"
    );
    h.push_event(gst::event::Eos::new());
    let (cues, _events) = collect_until_eos(&mut h);
    assert!(
        all_text(&cues).to_lowercase().contains("your country"),
        "{cues:?}"
    );
}

/// `compute-type=int8` loads int8 decoder weights and still transcribes jfk; the property reads
/// back, the enum has every compute type and refuses an unknown one.
#[test]
fn compute_type_int8_transcribes() {
    compute_type_transcribes("int8");
}

/// `compute-type=bf16` (encoder products in bf16, on AMX where the CPU has it) transcribes jfk.
#[test]
fn compute_type_bf16_transcribes() {
    compute_type_transcribes("bf16");
}

/// `compute-type=int8-bf16` (int8 in the half of the model this CPU runs it fastest in, bf16
/// products elsewhere) transcribes jfk.
#[test]
fn compute_type_int8_bf16_transcribes() {
    compute_type_transcribes("int8-bf16");
}

fn compute_type_transcribes(compute_type: &str) {
    let model = common::model_dir("tiny.en");
    let (mut h, _bus, element) = harness(
        &model,
        &[("mode", "offline"), ("compute-type", compute_type)],
    );
    let nick = |e: &gst::Element| {
        let v = e.property_value("compute-type");
        glib::EnumValue::from_value(&v).map(|(_, ev)| ev.nick().to_string())
    };
    assert_eq!(nick(&element).as_deref(), Some(compute_type));
    h.set_src_caps(audio_caps("F32LE"));
    push_audio(&mut h, &jfk(), gst::ClockTime::ZERO, false);
    h.push_event(gst::event::Eos::new());
    let (cues, _events) = collect_until_eos(&mut h);
    let text = all_text(&cues).to_lowercase();
    for word in ["fellow americans", "your country", "ask what you can do"] {
        assert!(
            text.contains(word),
            "{compute_type}: `{word}` missing from `{text}`"
        );
    }
    let default = gst::ElementFactory::make("whispernpu").build().unwrap();
    assert_eq!(nick(&default).as_deref(), Some("auto"));
    let spec = default
        .find_property("compute-type")
        .expect("compute-type property");
    let enum_class = glib::EnumClass::with_type(spec.value_type()).unwrap();
    for known in ["auto", "f32", "int8", "bf16", "int8-bf16"] {
        assert!(enum_class.value_by_nick(known).is_some(), "{known} missing");
    }
    assert!(enum_class.value_by_nick("fp8").is_none());
}

/// A flush in the middle forgets the audio before it; timing restarts with the new segment.
#[test]
fn flush_resets() {
    let model = common::model_dir("tiny.en");
    let (mut h, _bus, _element) = harness(&model, &[("mode", "offline")]);
    h.set_src_caps(audio_caps("F32LE"));
    let audio = jfk();
    // "And so my fellow Americans" then a flush.
    push_audio(&mut h, &audio[..3 * RATE], gst::ClockTime::ZERO, false);
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
    segment.set_start(gst::ClockTime::from_seconds(100));
    segment.set_time(gst::ClockTime::from_seconds(100));
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    // Only the second half, from 100 s.
    push_audio(
        &mut h,
        &audio[6 * RATE..],
        gst::ClockTime::from_seconds(100),
        false,
    );
    h.push_event(gst::event::Eos::new());
    let (cues, _events) = collect_until_eos(&mut h);
    eprintln!("{cues:#?}");
    let text = all_text(&cues).to_lowercase();
    assert!(
        !text.contains("americans"),
        "audio before the flush leaked: {text}"
    );
    assert!(text.contains("your country"), "{text}");
    assert!(cues.iter().all(|c| c.start >= 100.0), "{cues:?}");
    assert!(cues[0].start < 101.0, "{cues:?}");
}

/// A hole in the timestamps is filled with silence: the text after it moves with the audio.
#[test]
fn timestamp_gap_keeps_alignment() {
    let model = common::model_dir("tiny.en");
    let (mut h, _bus, _element) = harness(&model, &[("mode", "offline")]);
    h.set_src_caps(audio_caps("F32LE"));
    let audio = jfk();
    let cut = 8 * RATE; // before "ask what you can do for your country"
    push_audio(&mut h, &audio[..cut], gst::ClockTime::ZERO, false);
    push_audio(
        &mut h,
        &audio[cut..],
        gst::ClockTime::from_seconds(8 + 5),
        false,
    );
    h.push_event(gst::event::Eos::new());
    let (cues, _events) = collect_until_eos(&mut h);
    eprintln!("{cues:#?}");
    assert_monotonic(&cues);
    let late = cues
        .iter()
        .find(|c| c.text.to_lowercase().contains("country."))
        .or_else(|| cues.last())
        .unwrap();
    assert!(late.start >= 12.5, "text after the hole at {late:?}");
    assert!(all_text(&cues).to_lowercase().contains("americans"));
}

fn assert_no_text(samples: Vec<f32>) {
    let model = common::model_dir("tiny.en");
    let (mut h, _bus, _element) = harness(&model, &[("mode", "offline")]);
    h.set_src_caps(audio_caps("F32LE"));
    push_audio(&mut h, &samples, gst::ClockTime::ZERO, false);
    h.push_event(gst::event::Eos::new());
    let (cues, events) = collect_until_eos(&mut h);
    assert!(cues.is_empty(), "text from no speech: {cues:?}");
    let covered = gaps(&events).iter().map(|g| g.1).fold(0.0, f64::max);
    assert!(covered >= 29.9, "GAPs cover only {covered} s of 30 s");
}

#[test]
fn digital_silence_gives_no_text() {
    assert_no_text(vec![0.0; 30 * RATE]);
}

#[test]
fn white_noise_gives_no_text() {
    // xorshift: deterministic uniform noise at −12 dBFS peak.
    let mut x: u32 = 0x1234_5678;
    let noise = (0..30 * RATE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32 * 2.0 - 1.0) * 0.25
        })
        .collect();
    assert_no_text(noise);
}

/// Live upstream (the Harness says live): latency = upstream + latency + lateness, before caps.
#[test]
fn latency_query_live() {
    let model = common::model_dir("tiny.en");
    let (mut h, _bus, _element) = harness(&model, &[("latency", "2000"), ("lateness", "500")]);
    h.set_upstream_latency(gst::ClockTime::from_mseconds(100));
    assert_eq!(h.query_latency(), Some(gst::ClockTime::from_mseconds(2600)));
}

/// Live processing: text comes out in running time while audio streams, and EOS drains.
#[test]
fn live_chunks_in_running_time() {
    common::fetch_runtime();
    let model = common::model_dir("tiny.en");
    let (mut h, bus, element) = harness(&model, &[("latency", "5000")]);
    h.set_src_caps(audio_caps("F32LE"));
    // A segment starting at 50 s: running time = PTS − 50 s.
    let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
    segment.set_start(gst::ClockTime::from_seconds(50));
    segment.set_time(gst::ClockTime::from_seconds(50));
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    push_audio(&mut h, &jfk(), gst::ClockTime::from_seconds(50), false);
    // Each utterance is final at its pause: text arrives without EOS.
    let first = h.pull().expect("text while streaming");
    assert!(first.pts().unwrap() < gst::ClockTime::from_seconds(11));
    h.push_event(gst::event::Eos::new());
    let (mut cues, events) = collect_until_eos(&mut h);
    let seg = events
        .iter()
        .find_map(|e| match e.view() {
            gst::EventView::Segment(s) => s.segment().downcast_ref::<gst::ClockTime>().cloned(),
            _ => None,
        })
        .expect("segment");
    assert_eq!(seg.start(), Some(gst::ClockTime::ZERO));
    let map = first.map_readable().unwrap();
    cues.insert(
        0,
        Cue {
            start: first.pts().unwrap().seconds_f64(),
            end: (first.pts().unwrap() + first.duration().unwrap()).seconds_f64(),
            text: String::from_utf8(map.to_vec()).unwrap(),
        },
    );
    eprintln!("{cues:#?}");
    assert_monotonic(&cues);
    assert!(cues.iter().all(|c| c.end <= 11.5), "{cues:?}");
    let text = all_text(&cues).to_lowercase();
    assert!(text.contains("your country"), "{text}");
    assert_silero_gate(&element, &bus);
}

/// NULL→READY with a setting that cannot work fails at once, with an error on the bus.
fn ready_fails(model: &str, backend: &str) -> glib::Error {
    init();
    let element = gst::ElementFactory::make("whispernpu")
        .property("model", model)
        .property_from_str("backend", backend)
        .build()
        .unwrap();
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    assert_eq!(
        element.set_state(gst::State::Ready),
        Err(gst::StateChangeError)
    );
    let err = error_message(&bus);
    element.set_state(gst::State::Null).unwrap();
    err
}

#[test]
fn missing_model_is_an_error() {
    let err = ready_fails("/nonexistent/whisper-model", "cpu");
    assert!(err.matches(gst::ResourceError::NotFound), "{err:?}");
    assert!(
        err.message().contains("/nonexistent/whisper-model"),
        "{err}"
    );
    let err = ready_fails("no-such-model-name", "auto");
    assert!(err.matches(gst::ResourceError::NotFound), "{err:?}");
    assert!(err.message().contains("no-such-model-name"), "{err}");
}

#[test]
fn corrupt_model_is_an_error() {
    let good = common::model_dir("tiny.en");
    let dir = std::env::temp_dir().join(format!("whispernpu-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["config.json", "tokenizer.json", "vocabulary.txt"] {
        if good.join(name).exists() {
            std::fs::copy(good.join(name), dir.join(name)).unwrap();
        }
    }
    std::fs::write(dir.join("model.bin"), b"this is not a CTranslate2 model").unwrap();
    // The model is opened and checked at NULL→READY (headers only), so the state change fails.
    let err = ready_fails(dir.to_str().unwrap(), "cpu");
    std::fs::remove_dir_all(&dir).ok();
    assert!(err.matches(gst::ResourceError::Failed), "{err:?}");
    assert!(err.message().contains("model.bin"), "{err}");
}

#[test]
fn unavailable_backend_is_an_error() {
    let model = common::model_dir("tiny.en");
    for backend in ["npu", "onnx"] {
        let err = ready_fails(model.to_str().unwrap(), backend);
        assert!(err.matches(gst::LibraryError::Init), "{err:?}");
        assert!(
            err.message()
                .contains(&format!("backend `{backend}` is not available")),
            "{err}"
        );
    }
    // onnx says the model has no export and how to make one.
    let err = ready_fails(model.to_str().unwrap(), "onnx");
    assert!(
        err.message().contains("has no ONNX export")
            && err.message().contains("scripts/export-onnx"),
        "{err}"
    );
    // npu names what the probe did not find (this machine has no NPU).
    if !std::path::Path::new("/dev/accel").exists() {
        let err = ready_fails(model.to_str().unwrap(), "npu");
        assert!(err.message().contains("missing: amdxdna device"), "{err}");
    }
}

/// The offline text equals the engine's on the same audio (what `examples/transcribe --vad`
/// prints: the element's `vad` is on by default).
#[test]
fn offline_text_matches_engine() {
    use gstwhispernpu::transcribe::{TranscribeOptions, Transcriber};
    let model_dir = common::model_dir("base");
    let audio = jfk();
    let model = gstwhispernpu::engine::load_shared(model_dir.to_str().unwrap()).unwrap();
    // The element's default `vad=true` is the engine's `vad_filter` with its defaults.
    common::fetch_runtime();
    let options = TranscribeOptions {
        vad_filter: Some(Default::default()),
        ..TranscribeOptions::default()
    };
    let mut t = Transcriber::new(model, options).unwrap();
    let mut expected = t.push(&audio).unwrap();
    expected.extend(t.finish().unwrap());

    let (mut h, _bus, _element) = harness(&model_dir, &[("mode", "offline")]);
    h.set_src_caps(audio_caps("F32LE"));
    push_audio(&mut h, &audio, gst::ClockTime::ZERO, false);
    h.push_event(gst::event::Eos::new());
    let (cues, _events) = collect_until_eos(&mut h);
    let got: Vec<&str> = cues.iter().map(|c| c.text.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(got, want);
    for (c, s) in cues.iter().zip(&expected) {
        assert!((c.start - s.start).abs() < 1e-3, "{c:?} vs {s:?}");
    }
}

/// Live: audio arriving faster than it can be decoded posts a warning instead of drifting silently.
#[test]
fn live_falling_behind_warns() {
    common::fetch_runtime();
    let model = common::model_dir("tiny.en");
    let (mut h, bus, element) = harness(&model, &[("mode", "live"), ("latency", "500")]);
    h.set_src_caps(audio_caps("F32LE"));
    // 11 s delivered at once: far more than latency + lateness + 1 s waits for the engine.
    push_audio(&mut h, &jfk(), gst::ClockTime::ZERO, false);
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Warning],
        )
        .expect("a falling-behind warning");
    let gst::MessageView::Warning(w) = msg.view() else {
        unreachable!()
    };
    assert!(w.error().message().contains("behind"), "{}", w.error());
    h.push_event(gst::event::Eos::new());
    let (cues, _events) = collect_until_eos(&mut h);
    assert_monotonic(&cues);
    assert_silero_gate(&element, &bus);
}

/// F32LE then S16LE in the same stream, and a property change while PLAYING.
#[test]
fn caps_and_property_change_mid_stream() {
    let model = common::model_dir("tiny.en");
    let (mut h, _bus, element) = harness(&model, &[("mode", "offline")]);
    h.set_src_caps(audio_caps("F32LE"));
    let audio = jfk();
    let cut = 4 * RATE;
    push_audio(&mut h, &audio[..cut], gst::ClockTime::ZERO, false);
    element.set_property("beam-size", 2u32);
    element.set_property("no-speech-threshold", 0.5f32);
    assert!(h.push_event(gst::event::Caps::new(&audio_caps("S16LE"))));
    push_audio(&mut h, &audio[cut..], samples_time(cut), true);
    h.push_event(gst::event::Eos::new());
    let (cues, _events) = collect_until_eos(&mut h);
    assert_monotonic(&cues);
    let text = all_text(&cues).to_lowercase();
    assert!(
        text.contains("americans") && text.contains("your country"),
        "{text}"
    );
}

/// Live with Silero VAD and partial results, jfk paced in real time (20 ms buffers, as a live
/// source delivers them): final text arrives while the audio streams, soon after the speech it
/// covers; partial text comes as bus messages and custom events, never as buffers.
#[test]
fn live_vad_real_time_finals_and_partials() {
    common::fetch_runtime();
    let model = common::model_dir("tiny.en");
    let (mut h, bus, element) = harness(
        &model,
        &[
            ("mode", "live"),
            ("vad", "true"),
            ("partial-results", "true"),
            ("latency", "4000"),
        ],
    );
    h.set_src_caps(audio_caps("F32LE"));
    let audio = jfk();
    let piece = RATE / 50;
    let start = std::time::Instant::now();
    let mut arrived = Vec::new();
    for (i, c) in audio.chunks(piece).enumerate() {
        let due = Duration::from_secs_f64((i * piece) as f64 / RATE as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        h.push(f32_buffer(c, samples_time(i * piece)))
            .expect("push audio");
        while let Some(buffer) = h.try_pull() {
            arrived.push((start.elapsed().as_secs_f64(), buffer));
        }
    }
    let streamed = arrived.len();
    h.push_event(gst::event::Eos::new());
    let (mut cues, events) = collect_until_eos(&mut h);
    let mut early = Vec::new();
    for (at, buffer) in &arrived {
        let pts = buffer.pts().unwrap().seconds_f64();
        let end = pts + buffer.duration().unwrap().seconds_f64();
        let map = buffer.map_readable().unwrap();
        let text = std::str::from_utf8(&map).unwrap().to_string();
        eprintln!("{at:6.2} [{pts:6.2} – {end:6.2}] +{:.2} s {text}", at - end);
        early.push(at - end);
        cues.insert(
            cues.len().min(early.len() - 1),
            Cue {
                start: pts,
                end,
                text,
            },
        );
    }
    eprintln!("{cues:#?}");
    assert!(streamed >= 2, "only {streamed} text buffers before EOS");
    assert!(
        early.iter().all(|&l| l <= 3.5),
        "text later than 3.5 s after its speech: {early:?}"
    );
    assert_monotonic(&cues);
    let wer = common::wer_percent(
        "And so my fellow Americans, ask not what your country can do for you, ask what you can \
         do for your country.",
        &all_text(&cues),
    );
    assert!(wer <= 15.0, "WER {wer:.1} %: {}", all_text(&cues));
    let partials = std::iter::from_fn(|| bus.pop_filtered(&[gst::MessageType::Element]))
        .filter(|m| {
            m.structure().is_some_and(|s| {
                s.name() == "whispernpu-partial" && s.get::<String>("text").is_ok()
            })
        })
        .count();
    assert!(partials >= 1, "no whispernpu-partial messages");
    let custom = events
        .iter()
        .filter(|e| {
            e.type_() == gst::EventType::CustomDownstream
                && e.structure()
                    .is_some_and(|s| s.name() == "whispernpu-partial")
        })
        .count();
    assert!(custom >= 1, "no whispernpu-partial events downstream");
    assert_silero_gate(&element, &bus);
}

/// Live with the VAD: two minutes of silence, noise and hum give no text, and GAP events keep
/// downstream moving over all of it.
#[test]
fn live_noise_gives_no_text_and_gaps() {
    common::fetch_runtime();
    let model = common::model_dir("tiny.en");
    let (mut h, bus, element) = harness(&model, &[("mode", "live"), ("vad", "true")]);
    h.set_src_caps(audio_caps("F32LE"));
    let noise = common::noise_mix(120);
    push_audio(&mut h, &noise, gst::ClockTime::ZERO, false);
    h.push_event(gst::event::Eos::new());
    let (cues, events) = collect_until_eos(&mut h);
    assert!(cues.is_empty(), "text from noise: {cues:?}");
    let covered = gaps(&events).iter().map(|g| g.1).fold(0.0, f64::max);
    assert!(covered >= 119.9, "GAPs cover only {covered:.1} s of 120 s");
    assert_silero_gate(&element, &bus);
}

/// jfk.wav through a live tiny.en element (`latency=5000`, Silero VAD) with `props`, all at
/// once, then EOS: its text buffers (printed), its bus and the element.
fn live_jfk(props: &[(&str, &str)]) -> (Vec<Cue>, gst::Bus, gst::Element) {
    common::fetch_runtime();
    let model = common::model_dir("tiny.en");
    let mut all = vec![("mode", "live"), ("latency", "5000")];
    all.extend_from_slice(props);
    let (mut h, bus, element) = harness(&model, &all);
    h.set_src_caps(audio_caps("F32LE"));
    push_audio(&mut h, &jfk(), gst::ClockTime::ZERO, false);
    h.push_event(gst::event::Eos::new());
    let (cues, _events) = collect_until_eos(&mut h);
    eprintln!("{cues:#?}");
    (cues, bus, element)
}

/// Live mode with `output=words`: committed words come out one buffer each, in order, in
/// running time, and together say what the speech says.
#[test]
fn live_output_words() {
    let (cues, bus, element) = live_jfk(&[("output", "words")]);
    assert!(cues.len() >= 15, "expected about 22 words: {cues:?}");
    assert!(
        cues.iter()
            .all(|c| !c.text.is_empty() && !c.text.contains(char::is_whitespace)),
        "a buffer holds more than one word: {cues:?}"
    );
    for pair in cues.windows(2) {
        assert!(
            pair[0].start < pair[1].start,
            "PTS not increasing: {pair:?}"
        );
    }
    assert_monotonic(&cues);
    assert!(cues.iter().all(|c| c.end <= 11.5), "{cues:?}");
    let text = all_text(&cues).to_lowercase();
    assert!(text.contains("ask what you can do"), "{text}");
    assert!(text.contains("your country"), "{text}");
    assert_silero_gate(&element, &bus);
}

/// Live mode with caption shaping: committed text comes out as buffers of at most `max-lines`
/// lines of at most `max-line-length` characters, in running time, never overlapping, and the
/// words still say what the speech says.
#[test]
fn live_captions_shaped() {
    let (cues, bus, element) = live_jfk(&[("max-line-length", "16"), ("max-lines", "2")]);
    assert!(cues.len() >= 4, "about 110 characters in 2 x 16: {cues:?}");
    for c in &cues {
        let lines: Vec<&str> = c.text.lines().collect();
        assert!(lines.len() <= 2, "{c:?}");
        assert!(lines.iter().all(|l| l.chars().count() <= 16), "{c:?}");
    }
    assert_monotonic(&cues);
    let text = all_text(&cues).replace('\n', " ").to_lowercase();
    assert!(text.contains("ask what you can do"), "{text}");
    assert!(text.contains("your country"), "{text}");
    assert_silero_gate(&element, &bus);
}

/// Pushes `samples` as a live source delivers them: each 100 ms buffer (timestamps from `start`,
/// running time) when the test clock reaches its end. With `settle`, after each buffer waits
/// until the element is idle again (its worker waits on the clock for the next audio, due 100 ms
/// after the buffer's end, until `settle` after that) and hands every text buffer out so far to
/// `out` with the clock time it left at.
fn push_on_clock(
    h: &mut Harness,
    clock: &gst_check::TestClock,
    samples: &[f32],
    start: gst::ClockTime,
    settle: Option<gst::ClockTime>,
    out: &mut Vec<(f64, Cue)>,
) {
    let chunk = RATE / 10;
    for (i, c) in samples.chunks(chunk).enumerate() {
        let pts = start + samples_time(i * chunk);
        let end = pts + samples_time(c.len());
        clock.set_time(end);
        h.push(f32_buffer(c, pts)).expect("push audio");
        if let Some(settle) = settle {
            wait_for_clock_wait(clock, end + BUFFER + settle);
            out.extend(
                std::iter::from_fn(|| h.try_pull()).map(|b| (end.seconds_f64(), cue_of(&b))),
            );
        }
    }
}

/// A live tiny.en `whispernpu` with Silero VAD and `latency` (ms) on a test clock, F32 caps set;
/// its bus and the element.
fn live_on_test_clock(latency: &str) -> (Harness, gst_check::TestClock, gst::Bus, gst::Element) {
    common::fetch_runtime();
    let model = common::model_dir("tiny.en");
    let (mut h, bus, element) = harness(
        &model,
        &[("mode", "live"), ("vad", "true"), ("latency", latency)],
    );
    h.use_testclock();
    let clock = h.testclock().expect("test clock");
    h.set_src_caps(audio_caps("F32LE"));
    (h, clock, bus, element)
}

/// Waits (60 s at most) until the element waits on the test clock until `time`.
fn wait_for_clock_wait(clock: &gst_check::TestClock, time: gst::ClockTime) {
    let started = std::time::Instant::now();
    loop {
        let (_, ids) = clock.timed_wait_for_multiple_pending_ids(1, 100);
        let times: Vec<_> = ids.iter().map(|id| id.time()).collect();
        if times.contains(&time) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no clock wait until {time} (pending: {times:?})"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Live, on the pipeline clock (a test clock): jfk delivered as a live source delivers it, each
/// 100 ms buffer when the clock reaches its end, the element decoding each before the next
/// comes. Every final text buffer leaves, in running time, within `latency` (2 s) plus one step
/// of the start of the speech it holds, and never before that speech ends; text is final while
/// the audio streams; the element's clock wait for missing audio always sits 0.5 s
/// (`latency`/4) after the next buffer is due and never fires while audio keeps coming.
#[test]
fn live_finals_within_latency_on_the_clock() {
    let (mut h, clock, bus, element) = live_on_test_clock("2000");
    let mut arrived = Vec::new();
    push_on_clock(
        &mut h,
        &clock,
        &jfk(),
        gst::ClockTime::ZERO,
        Some(gst::ClockTime::from_mseconds(500)),
        &mut arrived,
    );
    h.push_event(gst::event::Eos::new());
    let (rest, events) = collect_until_eos(&mut h);
    for (at, c) in &arrived {
        eprintln!(
            "{at:6.2} [{:6.2} – {:6.2}] +{:.2} s {}",
            c.start,
            c.end,
            at - c.start,
            c.text
        );
    }
    assert!(
        arrived.len() >= 3,
        "only {} finals while streaming",
        arrived.len()
    );
    for (at, c) in &arrived {
        assert!(
            c.end <= at + 1e-6,
            "text before its speech ended: {c:?} at {at}"
        );
        assert!(
            at - c.start <= 2.0 + 0.35,
            "final {:.2} s after its speech started: {c:?} at {at}",
            at - c.start
        );
    }
    // No stall fired: no silence was assumed, so nothing was covered past the audio.
    let covered = gaps(&events).iter().map(|g| g.1).fold(0.0, f64::max);
    assert!(
        covered <= 11.0 + 1e-6,
        "GAP up to {covered:.2} s beyond the audio"
    );
    let mut cues: Vec<Cue> = arrived.into_iter().map(|(_, c)| c).collect();
    cues.extend(rest);
    assert_monotonic(&cues);
    let wer = common::wer_percent(
        "And so my fellow Americans, ask not what your country can do for you, ask what you can \
         do for your country.",
        &all_text(&cues),
    );
    assert!(wer <= 15.0, "WER {wer:.1} %: {}", all_text(&cues));
    assert_silero_gate(&element, &bus);
}

/// Live, on the pipeline clock (a test clock): a source that stops sending in the middle of
/// speech (silence suppression, a network stall) still gets its last words out. jfk's speech
/// runs to its last sample, so "for your country" waits for more audio; once the clock passes
/// 1 s (`latency`/4) after the next buffer was due, the missing audio counts as silence: the utterance
/// ends, its text goes out without EOS and GAPs cover the silence. The element then waits again,
/// and audio that comes back later is transcribed on the same timeline.
#[test]
fn live_stalled_source_is_finalised_on_the_clock() {
    let (mut h, clock, bus, element) = live_on_test_clock("4000");
    let audio = jfk();
    let end = samples_time(audio.len());
    let second = gst::ClockTime::from_seconds(1);
    push_on_clock(
        &mut h,
        &clock,
        &audio,
        gst::ClockTime::ZERO,
        None,
        &mut Vec::new(),
    );
    wait_for_clock_wait(&clock, end + BUFFER + second);
    let mut cues: Vec<Cue> = std::iter::from_fn(|| h.try_pull())
        .map(|b| cue_of(&b))
        .collect();
    let before = all_text(&cues).to_lowercase();
    assert!(
        !before.contains("for your country"),
        "the last words were final before the stall: {before}"
    );
    h.crank_single_clock_wait().expect("crank the stall wait");
    while !all_text(&cues).to_lowercase().contains("for your country") {
        let buffer = h
            .pull()
            .expect("the last words after the stall, without EOS");
        cues.push(cue_of(&buffer));
    }
    eprintln!("{cues:#?}");
    assert!(cues.iter().all(|c| c.end <= 11.0 + 1e-6), "{cues:?}");
    // Still no audio: the next wait is 1 s after the silence assumed (and the worker is idle,
    // done pushing).
    wait_for_clock_wait(&clock, end + BUFFER + 2 * second);
    let mut events = Vec::new();
    while let Some(e) = h.try_pull_event() {
        events.push(e);
    }
    let covered = gaps(&events).iter().map(|g| g.1).fold(0.0, f64::max);
    assert!(
        covered >= 11.0,
        "GAPs cover only {covered:.2} s after the stall"
    );
    // The source comes back at 14 s.
    let back = gst::ClockTime::from_seconds(14);
    push_on_clock(&mut h, &clock, &audio, back, None, &mut Vec::new());
    h.push_event(gst::event::Eos::new());
    let (rest, _) = collect_until_eos(&mut h);
    cues.extend(rest);
    assert_monotonic(&cues);
    let later: Vec<Cue> = cues.into_iter().filter(|c| c.start >= 14.0).collect();
    let text = all_text(&later).to_lowercase();
    assert!(
        text.contains("what your country can do for you") && text.contains("for your country"),
        "after the stall: {later:?}"
    );
    assert_silero_gate(&element, &bus);
}

/// `suppress-tokens` reaches the decoder: with "," (its token id from the model's tokenizer)
/// suppressed, base writes jfk.wav without the commas it writes by default; a list that
/// is not token ids is an element error naming the property, not a silent default.
#[test]
fn suppress_tokens_reach_the_decoder() {
    let model = common::model_dir("base");
    let text = |props: &[(&str, &str)]| {
        let mut all = vec![("mode", "offline")];
        all.extend_from_slice(props);
        let (mut h, _bus, _element) = harness(&model, &all);
        h.set_src_caps(audio_caps("F32LE"));
        push_audio(&mut h, &jfk(), gst::ClockTime::ZERO, false);
        h.push_event(gst::event::Eos::new());
        all_text(&collect_until_eos(&mut h).0)
    };
    let plain = text(&[]);
    // Commas to suppress (base writes one or two here, depending on the compute type).
    assert!(plain.contains(','), "{plain}");
    let loaded = gstwhispernpu::engine::load_shared(model.to_str().unwrap()).unwrap();
    let comma = loaded.tokenizer.encode(",");
    assert_eq!(comma.len(), 1, "{comma:?}");
    let list = format!("-1,{}", comma[0]);
    let without = text(&[("suppress-tokens", list.as_str())]);
    assert!(!without.contains(','), "{without}");
    assert!(
        common::wer_percent(&plain, &without) <= 10.0,
        "{plain} / {without}"
    );

    let (mut h, bus, _element) = harness(&model, &[("suppress-tokens", "-1,comma")]);
    h.set_src_caps(audio_caps("F32LE"));
    // The engine starts on the worker thread: the error comes on the bus.
    let _ = h.push(f32_buffer(&jfk()[..16_000], gst::ClockTime::ZERO));
    let _ = h.push_event(gst::event::Eos::new());
    let err = error_message(&bus);
    assert!(
        err.message().contains("suppress-tokens") && err.message().contains("comma"),
        "{}",
        err.message()
    );
}

/// The `hotwords` property reaches the decoder: base spells a name it writes by ear without it
/// ("Tadmak Jalalat") as given with it, through the element.
#[test]
fn hotwords_property_spells_the_name() {
    let model = common::model_dir("base");
    let sentence = "Yesterday I had lunch with Tadhg Mac Giolla at the harbor cafe.";
    let wav = common::synthesise("element-hotwords", sentence, "en-us");
    let (audio, rate) = common::read_wav(&wav);
    std::fs::remove_file(&wav).ok();
    assert_eq!(rate, 16_000);
    let text = |props: &[(&str, &str)]| {
        let mut all = vec![("mode", "offline"), ("language-code", "en")];
        all.extend_from_slice(props);
        let (mut h, _bus, _element) = harness(&model, &all);
        h.set_src_caps(audio_caps("F32LE"));
        push_audio(&mut h, &audio, gst::ClockTime::ZERO, false);
        h.push_event(gst::event::Eos::new());
        all_text(&collect_until_eos(&mut h).0)
    };
    let plain = text(&[]);
    assert!(!plain.contains("Tadhg Mac Giolla"), "{plain}");
    let hot = text(&[("hotwords", "Tadhg Mac Giolla")]);
    assert!(hot.contains("Tadhg Mac Giolla"), "{hot}");
}
