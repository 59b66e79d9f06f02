//! Log-mel front end against a numpy reference of openai/whisper's algorithm
//! (`scripts/mel_reference.py`), openai's own audio assertions, and the streaming front end.

mod common;

use std::sync::Arc;

use gstwhispernpu::audio::N_FRAMES;
use gstwhispernpu::audio::mel::{MelFrontend, MelStream};

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
    assert!(diff <= 2e-4, "max difference {diff}");
}

#[test]
fn jfk_128_bins_match_reference() {
    let audio = jfk();
    let mel = MelFrontend::new(128).log_mel_spectrogram(&audio[..48_000], 0);
    let diff = max_abs_diff(&mel.data, &fixture("jfk_mel128_first3s.f32"));
    eprintln!("128-bin max |difference| vs numpy reference: {diff:e}");
    assert!(diff <= 2e-4, "max difference {diff}");
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
