//! Measures transcription speed on one audio file.
//!
//! ```text
//! cargo run --release --example bench -- --model NAME [--threads N] [--beam-size N] [--language en] AUDIO
//! ```
//! Prints the audio length, wall time, × realtime, encoder time per 30 s window, decoder time per
//! token and peak RSS. Model loading is timed separately and excluded from × realtime; the wall
//! time covers decoding the audio with GStreamer and transcribing it, as `transcribe` does.

mod common;

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use common::{Arg, AudioReader, Cli, SAMPLE_RATE};
use gstwhispernpu::transcribe::{TranscribeOptions, Transcriber};

const USAGE: &str = "\
usage: bench --model NAME|DIR [OPTIONS] AUDIO

options:
  --model NAME|DIR      model name (tiny.en, base) or directory [default: base]
  --threads N           worker threads, 0 = one per core [default: 0]
  --beam-size N         1 = greedy [default: 1]
  --language CODE|auto  fixed language, or auto to detect [default: auto]
  -h, --help            print this help";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, why)) => {
            let _ = writeln!(std::io::stderr(), "bench: {why}");
            if code == 2 {
                let _ = writeln!(std::io::stderr(), "\n{USAGE}");
            }
            ExitCode::from(code)
        }
    }
}

fn run() -> Result<(), (u8, String)> {
    let usage = |why: String| (2u8, why);
    let runtime = |why: String| (1u8, why);

    let mut options = TranscribeOptions::default();
    let mut model_name = "base".to_string();
    let mut inputs = Vec::new();
    let takes_value =
        |name: &str| matches!(name, "--model" | "--threads" | "--beam-size" | "--language");
    let mut cli = Cli::from_env();
    while let Some(arg) = cli.next(takes_value) {
        match arg.map_err(usage)? {
            Arg::Positional(p) => inputs.push(p),
            Arg::Flag { name, value } => {
                let value = value.unwrap_or_default();
                match name.as_str() {
                    "-h" | "--help" => {
                        println!("{USAGE}");
                        return Ok(());
                    }
                    "--model" => model_name = value,
                    "--threads" => {
                        options.n_threads = common::parse_number(&name, &value).map_err(usage)?
                    }
                    "--beam-size" => {
                        options.beam_size = common::parse_number(&name, &value).map_err(usage)?
                    }
                    "--language" => options.language = common::parse_language(&value),
                    _ => return Err(usage(format!("unknown option {name}"))),
                }
            }
        }
    }
    let input = match inputs.as_slice() {
        [one] => one.clone(),
        [] => return Err(usage("missing AUDIO file".into())),
        _ => {
            return Err(usage(format!(
                "expected one AUDIO file, got {}",
                inputs.len()
            )));
        }
    };
    options.validate().map_err(|e| usage(e.to_string()))?;

    let t_load = Instant::now();
    let model = gstwhispernpu::model::load_shared(&model_name)
        .map_err(|e| runtime(common::model_error(&model_name, &e)))?;
    let mut transcriber =
        Transcriber::new(model.clone(), options.clone()).map_err(|e| runtime(e.to_string()))?;
    let load_seconds = t_load.elapsed().as_secs_f64();

    let t_run = Instant::now();
    let mut reader = AudioReader::open(&input).map_err(|e| runtime(e.to_string()))?;
    let mut samples: u64 = 0;
    let mut n_segments = 0usize;
    while let Some(chunk) = reader.next_chunk().map_err(|e| runtime(e.to_string()))? {
        samples += chunk.len() as u64;
        n_segments += transcriber
            .push(&chunk)
            .map_err(|e| runtime(e.to_string()))?
            .len();
    }
    n_segments += transcriber
        .finish()
        .map_err(|e| runtime(e.to_string()))?
        .len();
    let wall_seconds = t_run.elapsed().as_secs_f64();
    let audio_seconds = samples as f64 / SAMPLE_RATE as f64;

    let threads = if options.n_threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        options.n_threads
    };
    println!("input           {input}");
    println!("model           {model_name} ({})", model.dir.display());
    println!(
        "settings        threads {threads}, beam size {}, language {}",
        options.beam_size,
        options.language.as_deref().unwrap_or("auto")
    );
    println!("load seconds    {load_seconds:.3}  (excluded from x realtime)");
    println!("audio seconds   {audio_seconds:.3}");
    println!("wall seconds    {wall_seconds:.3}");
    println!(
        "x realtime      {:.2}",
        if wall_seconds > 0.0 {
            audio_seconds / wall_seconds
        } else {
            0.0
        }
    );
    println!("segments        {n_segments}");

    let stats = transcriber.stats();
    let per = |total: f64, n: u64| {
        if n > 0 {
            format!("{:.2}", total * 1000.0 / n as f64)
        } else {
            "n/a".to_string()
        }
    };
    println!("mel ms total    {:.2}", stats.mel_seconds * 1000.0);
    println!(
        "encoder ms/win  {}  ({} windows)",
        per(stats.encoder_seconds, stats.windows),
        stats.windows
    );
    println!(
        "decoder ms/tok  {}  ({} tokens, {} forward calls, {} fallbacks)",
        per(stats.decoder_seconds, stats.decoder_tokens),
        stats.decoder_tokens,
        stats.decoder_calls,
        stats.fallbacks
    );
    match peak_rss_kib() {
        Some(kib) => println!("peak RSS MiB    {:.1}", kib as f64 / 1024.0),
        None => println!("peak RSS MiB    n/a (no VmHWM in /proc/self/status)"),
    }
    Ok(())
}

/// Peak resident set size (VmHWM), KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}
