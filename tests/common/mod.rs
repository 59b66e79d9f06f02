//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
