//! Faults in the stream, all in one run, live and non-live: a 5 s stall, a discontinuity, a
//! timestamp that goes back, a flush in the middle of an utterance, caps changing between S16LE
//! and F32LE and back, a buffer of 0 samples, a GAP of 30 years, and EOS in the middle of a
//! window. Ten sentences, synthesised one by one with espeak-ng, sit around the faults: the text
//! of each must come out, in order, nothing may panic or hang, and what leaves the src pad (text
//! buffers, GAPs) must move forward in time between flushes. The half utterance cut by the flush
//! is dropped with it (a flush drops data in flight; the timestamp going back just before it
//! drained the run, so the sentence before the flush is out).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst_check::Harness;

const RATE: usize = 16_000;

/// The sentences and a word of each that the transcript must hold.
const SENTENCES: [(&str, &str); 10] = [
    // The first words vary with the decode: "Seven ships sailed" (offline without VAD), "7. ship
    // sailed" (offline behind the VAD), "7th ship sail into the hardware" (live, once in CI);
    // every reading so far ends "at dawn".
    ("Seven ships sailed into the harbor at dawn.", "dawn"),
    (
        "My grandmother baked bread every Sunday morning.",
        "grandmother",
    ),
    ("The train to the mountains leaves at noon.", "train"),
    ("Children played football in the park.", "children"),
    ("A cold wind blew across the empty beach.", "beach"),
    ("The doctor opened the window and smiled.", "doctor"),
    ("We painted the kitchen a bright yellow.", "kitchen"),
    ("The library closes early on Fridays.", "library"),
    ("Please send the letter to my brother.", "letter"),
    ("The river flows past the little village.", "river"),
];
/// Spoken, half of it, just before the flush.
const FLUSHED: &str = "Elephants walked slowly across the dusty plain.";

use common::gst_init as init;

fn speech(name: &str, text: &str) -> Vec<f32> {
    let wav = common::synthesise(name, text, "en-us");
    let (samples, rate) = common::read_wav(&wav);
    std::fs::remove_file(&wav).ok();
    assert_eq!(rate as usize, RATE);
    samples
}

fn caps(format: &str) -> gst::Caps {
    common::audio_caps(format, RATE as i32)
}

fn time_of(samples: usize) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(samples as u64 * 1_000_000_000 / RATE as u64)
}

/// What left the src pad, in order.
#[derive(Debug, Clone)]
enum Out {
    Text {
        start: gst::ClockTime,
        end: gst::ClockTime,
        text: String,
    },
    Gap {
        start: gst::ClockTime,
        end: gst::ClockTime,
    },
    FlushStop,
    Eos,
}

/// Pushes audio as a source would, in 100 ms buffers, tracking the stream time.
struct Feeder {
    h: Harness,
    /// Stream time of the next sample.
    next: gst::ClockTime,
    s16: bool,
    live: bool,
}

impl Feeder {
    fn push(&mut self, samples: &[f32], discont: bool) {
        let chunk = RATE / 10;
        for (i, c) in samples.chunks(chunk).enumerate() {
            let bytes: Vec<u8> = if self.s16 {
                c.iter()
                    .flat_map(|s| {
                        ((s * 32767.0).round().clamp(-32768.0, 32767.0) as i16).to_le_bytes()
                    })
                    .collect()
            } else {
                c.iter().flat_map(|s| s.to_le_bytes()).collect()
            };
            let mut buffer = gst::Buffer::from_mut_slice(bytes);
            {
                let b = buffer.get_mut().unwrap();
                b.set_pts(self.next);
                b.set_duration(time_of(c.len()));
                if discont && i == 0 {
                    b.set_flags(gst::BufferFlags::DISCONT);
                }
            }
            self.next += time_of(c.len());
            // After an error the element refuses data: the test then fails on its messages.
            let _ = self.h.push(buffer);
            if self.live {
                // A live source delivers in real time; a tenth of it keeps the test short while
                // the worker still sees audio arrive over time.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// New caps mid-stream (only the CAPS event: a Harness's `set_src_caps` would also start a
    /// new segment).
    fn caps(&mut self, format: &str) {
        assert!(self.h.push_event(gst::event::Caps::new(&caps(format))));
        self.s16 = format == "S16LE";
    }

    fn silence(&mut self, seconds: f32) {
        self.push(&vec![0.0; (seconds * RATE as f32) as usize], false);
    }

    fn sentence(&mut self, audio: &[f32]) {
        self.silence(0.5);
        self.push(audio, false);
        self.silence(1.0);
    }
}

fn run(live: bool) {
    init();
    let model = common::model_dir("tiny.en");
    let audio: Vec<Vec<f32>> = SENTENCES
        .iter()
        .enumerate()
        .map(|(i, (text, _))| speech(&format!("fault{i}"), text))
        .collect();
    let flushed = speech("flushed", FLUSHED);

    let element = gst::ElementFactory::make("whispernpu")
        .property("model", model.to_str().unwrap())
        .property_from_str("mode", if live { "live" } else { "offline" })
        .build()
        .unwrap();
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    let out: Arc<Mutex<Vec<Out>>> = Arc::default();
    {
        let out = Arc::clone(&out);
        element.static_pad("src").unwrap().add_probe(
            gst::PadProbeType::DATA_DOWNSTREAM | gst::PadProbeType::EVENT_FLUSH,
            move |_pad, info| {
                let item = match &info.data {
                    Some(gst::PadProbeData::Buffer(b)) => {
                        let map = b.map_readable().unwrap();
                        let start = b.pts().expect("text PTS");
                        Some(Out::Text {
                            start,
                            end: start + b.duration().expect("text duration"),
                            text: String::from_utf8_lossy(&map).into_owned(),
                        })
                    }
                    Some(gst::PadProbeData::Event(e)) => match e.view() {
                        gst::EventView::Gap(g) => {
                            let (start, d) = g.get();
                            Some(Out::Gap {
                                start,
                                end: start.saturating_add(d.unwrap_or(gst::ClockTime::ZERO)),
                            })
                        }
                        gst::EventView::FlushStop(_) => Some(Out::FlushStop),
                        gst::EventView::Eos(_) => Some(Out::Eos),
                        _ => None,
                    },
                    _ => None,
                };
                if let Some(item) = item {
                    out.lock().unwrap().push(item);
                }
                gst::PadProbeReturn::Ok
            },
        );
    }
    let mut h = Harness::with_element(&element, Some("sink"), Some("src"));
    if live {
        // A clock for the element's wait on missing audio (the stall below).
        h.use_systemclock();
    }
    h.set_src_caps(caps("F32LE"));
    let mut f = Feeder {
        h,
        next: gst::ClockTime::ZERO,
        s16: false,
        live,
    };
    let started = Instant::now();

    // 0, then a stall of 5 s: nothing arrives.
    f.sentence(&audio[0]);
    std::thread::sleep(Duration::from_secs(5));
    // 1, then a discontinuity: 2 s of stream time missing, the next buffer flagged DISCONT.
    f.sentence(&audio[1]);
    f.next += gst::ClockTime::from_seconds(2);
    f.push(&vec![0.0; RATE / 2], true);
    // 2, then the caps change to S16LE.
    f.sentence(&audio[2]);
    f.caps("S16LE");
    // 3, then a timestamp going back by 4 s (the run so far is drained), then half an
    // utterance cut by a flush (a seek): audio not yet transcribed is dropped.
    f.sentence(&audio[3]);
    f.next = f.next.saturating_sub(gst::ClockTime::from_seconds(4));
    f.silence(0.5);
    // The text before the flush is out before the flush comes (a real source would not send
    // the audio faster than it is spoken; this one does, and a flush drops what is queued).
    let spoken = |word: &str| {
        out.lock().unwrap().iter().any(|o| match o {
            Out::Text { text, .. } => text.to_lowercase().contains(word),
            _ => false,
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !spoken(SENTENCES[3].1) {
        assert!(
            Instant::now() < deadline,
            "the text before the flush did not come"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    f.push(&flushed[..flushed.len() / 2], false);
    assert!(f.h.push_event(gst::event::FlushStart::new()));
    assert!(f.h.push_event(gst::event::FlushStop::new(true)));
    let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
    segment.set_start(gst::ClockTime::from_seconds(200));
    segment.set_time(gst::ClockTime::from_seconds(200));
    assert!(f.h.push_event(gst::event::Segment::new(&segment)));
    f.next = gst::ClockTime::from_seconds(200);
    // 4, then a buffer of 0 samples.
    f.sentence(&audio[4]);
    let mut empty = gst::Buffer::new();
    empty.get_mut().unwrap().set_pts(f.next);
    let _ = f.h.push(empty);
    // 5, then back to F32LE.
    f.sentence(&audio[5]);
    f.caps("F32LE");
    // 6, then a GAP of 30 years; 7 comes after it.
    f.sentence(&audio[6]);
    let huge = gst::ClockTime::from_seconds(30 * 365 * 24 * 3600);
    assert!(f.h.push_event(gst::event::Gap::builder(f.next).duration(huge).build()));
    f.next += huge;
    f.sentence(&audio[7]);
    // 8 and 9, then EOS in the middle of a window.
    f.sentence(&audio[8]);
    f.sentence(&audio[9]);
    f.h.push_event(gst::event::Eos::new());

    // Everything drains: EOS reaches the src pad.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !out.lock().unwrap().iter().any(|o| matches!(o, Out::Eos)) {
        assert!(Instant::now() < deadline, "no EOS within 300 s: a hang");
        std::thread::sleep(Duration::from_millis(50));
    }
    let errors: Vec<String> = std::iter::from_fn(|| bus.pop())
        .filter_map(|m| match m.view() {
            gst::MessageView::Error(e) => Some(e.error().to_string()),
            _ => None,
        })
        .collect();
    assert!(errors.is_empty(), "errors: {errors:?}");
    let out = out.lock().unwrap().clone();
    let texts: Vec<String> = out
        .iter()
        .filter_map(|o| match o {
            Out::Text { text, .. } => Some(text.to_lowercase()),
            _ => None,
        })
        .collect();
    let transcript = texts.join(" ");
    eprintln!(
        "{} mode, {:.1} s: {transcript}",
        if live { "live" } else { "offline" },
        started.elapsed().as_secs_f64()
    );
    for o in &out {
        eprintln!("  {o:?}");
    }

    // Every sentence's text, in order.
    let mut from = 0;
    for (i, (_, word)) in SENTENCES.iter().enumerate() {
        let at = transcript[from..].find(word).unwrap_or_else(|| {
            panic!("sentence {i} (`{word}`) missing or out of order: {transcript}")
        });
        from += at + word.len();
    }
    // The words before the flush were cut off mid-utterance and dropped with it.
    assert!(!transcript.contains("elephant"), "{transcript}");
    // Forward in time between flushes: each text buffer and GAP starts where the previous
    // ended or later.
    let mut end = gst::ClockTime::ZERO;
    for o in &out {
        match *o {
            Out::Text { start, end: e, .. } | Out::Gap { start, end: e } => {
                assert!(
                    start >= end,
                    "went back in time at {o:?} (previous end {end})"
                );
                assert!(e >= start, "{o:?}");
                end = e;
            }
            Out::FlushStop => end = gst::ClockTime::ZERO,
            Out::Eos => {}
        }
    }
}

#[test]
fn stream_faults_offline() {
    run(false);
}

#[test]
fn stream_faults_live() {
    run(true);
}
