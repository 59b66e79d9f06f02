//! Log-mel front end against a numpy reference of openai/whisper's algorithm
//! (`scripts/mel_reference.py`), openai's own audio assertions, and the streaming front end.

mod common;

use std::sync::Arc;

use gstwhispernpu::audio::N_FRAMES;
use gstwhispernpu::audio::mel::{MelFrontend, MelStream, mel_filterbank};

/// The front end against the numpy reference: the README says it computes what openai's
/// `audio.py` computes; measured 1.2e-7 (one f32 rounding) on jfk.wav, allowed a few roundings.
const MAX_DIFF: f32 = 1e-6;

fn fixture(name: &str) -> Vec<f32> {
    let path = common::repo().join("tests/fixtures").join(name);
    std::fs::read(&path)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (regenerate with scripts/mel_reference.py)",
                path.display()
            )
        })
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn jfk() -> Vec<f32> {
    let (samples, rate) = common::read_wav(&common::jfk_wav());
    assert_eq!(rate, 16_000);
    samples
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn jfk_80_bins_match_reference() {
    let mel = MelFrontend::new(80).log_mel_spectrogram(&jfk(), 0);
    let reference = fixture("jfk_mel80.f32");
    assert_eq!(mel.n_frames, 1100);
    let diff = max_abs_diff(&mel.data, &reference);
    eprintln!("80-bin max |difference| vs numpy reference: {diff:e}");
    assert!(diff <= MAX_DIFF, "max difference {diff}");
}

#[test]
fn jfk_128_bins_match_reference() {
    let audio = jfk();
    let mel = MelFrontend::new(128).log_mel_spectrogram(&audio[..48_000], 0);
    let diff = max_abs_diff(&mel.data, &fixture("jfk_mel128_first3s.f32"));
    eprintln!("128-bin max |difference| vs numpy reference: {diff:e}");
    assert!(diff <= MAX_DIFF, "max difference {diff}");
}

/// openai/whisper tests/test_audio.py, on our reader and front end.
#[test]
fn openai_audio_assertions() {
    let audio = jfk();
    assert!(16_000 * 10 < audio.len() && audio.len() < 16_000 * 12);
    let mean = audio.iter().sum::<f32>() / audio.len() as f32;
    let std = (audio.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / audio.len() as f32).sqrt();
    assert!(0.0 < std && std < 1.0, "std {std}");
    let mel = MelFrontend::new(80).log_mel_spectrogram(&audio, 0);
    let max = mel.data.iter().copied().fold(f32::MIN, f32::max);
    let min = mel.data.iter().copied().fold(f32::MAX, f32::min);
    assert!(max - min <= 2.0, "range {min}..{max}");
}

/// The streaming front end, fed in uneven chunks, gives openai's padded spectrogram.
#[test]
fn stream_equals_padded_one_shot() {
    let audio = jfk();
    let frontend = Arc::new(MelFrontend::new(80));
    let one_shot = frontend.log_mel_spectrogram(&audio, 480_000);
    let mut stream = MelStream::new(frontend);
    let mut at = 0;
    for size in [1usize, 7, 160, 4000, 33_333].iter().cycle() {
        if at >= audio.len() {
            break;
        }
        let end = (at + size).min(audio.len());
        stream.push(&audio[at..end]);
        at = end;
    }
    stream.finish();
    assert_eq!(stream.content_frames(), audio.len() / 160);
    assert_eq!(stream.frames_available(), one_shot.n_frames);
    let mut window = vec![0.0; 80 * N_FRAMES];
    stream.window(0, N_FRAMES, 0.0, &mut window);
    let mut worst = 0.0f32;
    for m in 0..80 {
        for t in 0..N_FRAMES {
            let d = (window[m * N_FRAMES + t] - one_shot.data[m * one_shot.n_frames + t]).abs();
            worst = worst.max(d);
        }
    }
    eprintln!("stream vs one-shot max |difference|: {worst:e}");
    assert!(worst <= 1e-6, "stream differs by {worst}");
}

#[test]
fn window_pads_and_trims() {
    let audio = jfk();
    let mut stream = MelStream::new(Arc::new(MelFrontend::new(80)));
    stream.push(&audio);
    let content = stream.content_frames();
    assert!(stream.frames_available() <= content && stream.frames_available() >= content - 2);
    let n = stream.frames_available();
    let mut window = vec![1.0; 80 * N_FRAMES];
    stream.window(0, n, 0.0, &mut window);
    assert!(
        window[n..N_FRAMES].iter().all(|&v| v == 0.0),
        "zero padding after the content"
    );
    let silence = stream.silence_value(n);
    stream.window(0, n, silence, &mut window);
    let min = window[..n].iter().copied().fold(f32::MAX, f32::min);
    assert!(
        (silence - min).abs() < 1e-6,
        "silence {silence} is the clamp floor {min}"
    );
    // Trimming keeps later windows identical.
    let mut later = vec![0.0; 80 * N_FRAMES];
    stream.window(500, n - 500, 0.0, &mut later);
    stream.trim_before(500);
    let mut after_trim = vec![0.0; 80 * N_FRAMES];
    stream.window(500, n - 500, 0.0, &mut after_trim);
    assert_eq!(later, after_trim);
}

/// Each filter is a non-negative triangle; peaks move up (never down) the spectrum, and the top
/// filters reach close to Nyquist.
#[test]
fn filterbank_sanity() {
    for n_mels in [80, 128] {
        let bank = mel_filterbank(n_mels);
        assert_eq!(bank.len(), n_mels);
        let mut last_peak = 0;
        for (i, row) in bank.iter().enumerate() {
            assert_eq!(row.len(), 201);
            assert!(
                row.iter().all(|&w| w >= 0.0),
                "filter {i} has a negative weight"
            );
            assert!(row.iter().any(|&w| w > 0.0), "filter {i} is empty");
            let peak = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0);
            assert!(
                peak >= last_peak,
                "{n_mels}: filter {i} peaks at {peak} < {last_peak}"
            );
            // A triangle: non-decreasing up to the peak, non-increasing after it.
            assert!(row[..=peak].windows(2).all(|w| w[0] <= w[1]));
            assert!(row[peak..].windows(2).all(|w| w[0] >= w[1]));
            last_peak = peak;
        }
        assert!(
            last_peak > 180,
            "{n_mels}: last filter peaks at bin {last_peak}"
        );
    }
}

fn push_in_chunks(stream: &mut MelStream, audio: &[f32], sizes: &[usize], trim_lag: Option<usize>) {
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= audio.len() {
            break;
        }
        let end = (at + size).min(audio.len());
        stream.push(&audio[at..end]);
        at = end;
        if let Some(lag) = trim_lag {
            stream.trim_before(stream.frames_available().saturating_sub(lag));
        }
    }
}

/// Raw frames from uneven chunks are bit-identical to the one-shot raw values with openai's
/// 30 s of padding, for jfk and for streams shorter than one STFT window.
#[test]
fn stream_raw_frames_are_bitwise_one_shot() {
    let audio = jfk();
    let frontend = Arc::new(MelFrontend::new(80));
    let sizes = [1usize, 7, 160, 4000, 33_333, 3, 199, 201, 12_345];
    for len in [0, 1, 150, 200, 201, 359, 360, 361, 4_321, audio.len()] {
        let audio = &audio[..len];
        let one_shot = frontend.log10_mel_spectrogram(audio, 480_000);
        let mut stream = MelStream::new(frontend.clone());
        push_in_chunks(&mut stream, audio, &sizes, None);
        stream.finish();
        assert_eq!(stream.content_frames(), len / 160);
        assert_eq!(stream.samples_pushed(), len as u64);
        assert_eq!(stream.frames_available(), one_shot.n_frames, "len {len}");
        for t in 0..one_shot.n_frames {
            let raw = stream.raw_frame(t).expect("frame held");
            for (m, v) in raw.iter().enumerate() {
                let r = one_shot.data[m * one_shot.n_frames + t];
                assert!(
                    v.to_bits() == r.to_bits(),
                    "len {len} frame {t} bin {m}: {v} vs {r}"
                );
            }
        }
    }
}

/// Before `finish`, a frame appears exactly when its window [160 t − 200, 160 t + 200) has
/// arrived (frame 0 also needs sample 200, the reflection of sample −200).
#[test]
fn frames_appear_when_their_window_is_complete() {
    let audio = jfk();
    let mut stream = MelStream::new(Arc::new(MelFrontend::new(80)));
    for pushed in 1..=2_000usize {
        stream.push(&audio[pushed - 1..pushed]);
        let expected = if pushed <= 200 {
            0
        } else {
            (pushed - 200) / 160 + 1
        };
        assert_eq!(
            stream.frames_available(),
            expected,
            "after {pushed} samples"
        );
    }
}

/// `window(0, content)` equals openai's normalised mel on the content frames when the prefix
/// maximum is the global one (jfk's loudest frame is in its content), then zero padding.
#[test]
fn window_equals_normalised_one_shot_on_content() {
    let audio = jfk();
    let frontend = Arc::new(MelFrontend::new(80));
    let one_shot = frontend.log_mel_spectrogram(&audio, 480_000);
    let mut stream = MelStream::new(frontend);
    push_in_chunks(&mut stream, &audio, &[4000, 33_333, 7], None);
    stream.finish();
    let n = stream.content_frames();
    let mut window = vec![1.0; 80 * N_FRAMES];
    stream.window(0, n, 0.0, &mut window);
    let mut worst = 0.0f32;
    for m in 0..80 {
        for t in 0..n {
            let d = (window[m * N_FRAMES + t] - one_shot.data[m * one_shot.n_frames + t]).abs();
            worst = worst.max(d);
        }
        assert!(
            window[m * N_FRAMES + n..(m + 1) * N_FRAMES]
                .iter()
                .all(|&v| v == 0.0)
        );
    }
    eprintln!("window(0, content) vs one-shot max |difference|: {worst:e}");
    assert!(worst <= 1e-6, "window differs by {worst}");
}

/// Trimming while streaming keeps the prefix maximum and later windows unchanged.
#[test]
fn trimming_while_streaming_keeps_windows() {
    let audio = jfk();
    let frontend = Arc::new(MelFrontend::new(80));
    let mut full = MelStream::new(frontend.clone());
    full.push(&audio);
    full.finish();
    let mut trimmed = MelStream::new(frontend);
    push_in_chunks(&mut trimmed, &audio, &[1, 7, 160, 4000, 33_333], Some(5));
    trimmed.finish();
    let start = trimmed.first_frame();
    assert!(start > 1000, "trimmed up to {start}");
    assert!(trimmed.raw_frame(start - 1).is_none());
    let (mut a, mut b) = (vec![0.0; 80 * N_FRAMES], vec![0.0; 80 * N_FRAMES]);
    full.window(start, 2000, 0.0, &mut a);
    trimmed.window(start, 2000, 0.0, &mut b);
    assert_eq!(a, b);
    assert_eq!(
        full.prefix_max(start + 10).to_bits(),
        trimmed.prefix_max(start + 10).to_bits()
    );
}

/// After `finish` pushes are ignored; `reset` gives a fresh stream.
#[test]
fn finish_and_reset() {
    let audio = jfk();
    let frontend = Arc::new(MelFrontend::new(80));
    let mut stream = MelStream::new(frontend.clone());
    stream.push(&audio[..10_000]);
    stream.finish();
    let frames = stream.frames_available();
    stream.push(&audio[10_000..20_000]);
    stream.finish();
    assert!(stream.is_finished());
    assert_eq!(
        (stream.samples_pushed(), stream.frames_available()),
        (10_000, frames)
    );
    stream.reset();
    assert!(!stream.is_finished());
    assert_eq!((stream.samples_pushed(), stream.frames_available()), (0, 0));
    stream.push(&audio[..20_000]);
    let mut fresh = MelStream::new(frontend);
    fresh.push(&audio[..20_000]);
    assert_eq!(stream.frames_available(), fresh.frames_available());
    let t = stream.frames_available() - 1;
    assert_eq!(stream.raw_frame(t), fresh.raw_frame(t));
}
