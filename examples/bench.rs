//! Measures transcription speed on one audio file.
//!
//! ```text
//! cargo run --release --example bench -- --model NAME [--threads N] [--compute-type T] [--beam-size N] [--language en] [--repeat N] AUDIO
//! ```
//! The audio is first decoded into memory with GStreamer (not timed); the model load is timed on
//! its own; then the samples are pushed into a fresh `Transcriber` in 1 s chunks and drained with
//! `finish()`: that is the wall time (the median of `--repeat` runs). Prints audio seconds, load
//! seconds, wall seconds, × realtime, windows, encoder ms per window, decoder ms per token,
//! decoder calls, mel ms, fallbacks, peak RSS (VmHWM) and the start of the transcript.

mod common;

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use common::{Arg, AudioReader, Cli, SAMPLE_RATE};
use gstwhispernpu::engine::ComputeType;
use gstwhispernpu::transcribe::{Stats, TranscribeOptions, Transcriber};

const USAGE: &str = "\
usage: bench --model NAME|DIR [OPTIONS] AUDIO

options:
  --model NAME|DIR      model name (tiny.en, base) or directory [default: base]
  --threads N           worker threads, 0 = one per core [default: 0]
  --compute-type T      auto, f32, int8, bf16 or int8-bf16 (see the transcribe example) [default: auto]
  --beam-size N         1 = greedy [default: 1]
  --language CODE|auto  fixed language, or auto to detect [default: auto]
  --repeat N            transcribe N times, report the median wall time [default: 1]
  --backend cpu|onnx|npu|npu-sim, --execution-provider P, --execution-provider-options K=V;...
                        the engine, as for the transcribe example [default: cpu]
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
    let mut compute_type = ComputeType::Auto;
    let mut engine = common::EngineArgs::default();
    let mut repeat: usize = 1;
    let mut inputs = Vec::new();
    let takes_value = |name: &str| {
        matches!(
            name,
            "--model" | "--threads" | "--compute-type" | "--beam-size" | "--language" | "--repeat"
        ) || common::EngineArgs::FLAGS.contains(&name)
    };
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
                    "--compute-type" => {
                        compute_type = value
                            .parse()
                            .map_err(|e| usage(format!("--compute-type: {e}")))?
                    }
                    "--beam-size" => {
                        options.beam_size = common::parse_number(&name, &value).map_err(usage)?
                    }
                    "--language" => options.language = common::parse_language(&value),
                    flag if engine.take(flag, &value) => {}
                    "--repeat" => {
                        repeat = common::parse_number(&name, &value).map_err(usage)?;
                        if repeat == 0 {
                            return Err(usage("--repeat: must be at least 1".into()));
                        }
                    }
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
    let (load, encoder) = engine
        .resolve(compute_type, options.n_threads)
        .map_err(usage)?;
    options.backend = encoder;

    // 1. The whole audio in memory (not timed).
    let mut reader = AudioReader::open(&input).map_err(|e| runtime(e.to_string()))?;
    let mut audio: Vec<f32> = Vec::new();
    while let Some(chunk) = reader.next_chunk().map_err(|e| runtime(e.to_string()))? {
        audio.extend_from_slice(&chunk);
    }
    drop(reader);
    let audio_seconds = audio.len() as f64 / SAMPLE_RATE as f64;

    // 2. The model (timed on its own).
    let t_load = Instant::now();
    let model = gstwhispernpu::engine::load_shared_opts(&model_name, &load)
        .map_err(|e| runtime(common::model_error(&model_name, &e)))?;
    let load_seconds = t_load.elapsed().as_secs_f64();

    // 3. Transcription, `repeat` times with a fresh transcriber each (timed).
    let mut runs: Vec<(f64, Stats, String, usize)> = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let mut transcriber = Transcriber::new(model.clone(), options.clone()).map_err(|e| {
            let code = if matches!(e, gstwhispernpu::Error::InvalidOption { .. }) {
                2
            } else {
                1
            };
            (code, e.to_string())
        })?;
        let t_run = Instant::now();
        let mut segments = Vec::new();
        for chunk in audio.chunks(SAMPLE_RATE as usize) {
            segments.extend(
                transcriber
                    .push(chunk)
                    .map_err(|e| runtime(e.to_string()))?,
            );
        }
        segments.extend(transcriber.finish().map_err(|e| runtime(e.to_string()))?);
        let wall = t_run.elapsed().as_secs_f64();
        let text = segments
            .iter()
            .map(|s| s.text.trim())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        runs.push((wall, transcriber.stats().clone(), text, segments.len()));
    }
    // The median run (the upper middle one for an even count) gives every figure below.
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| runs[a].0.total_cmp(&runs[b].0));
    let (wall_seconds, stats, text, n_segments) = &runs[order[order.len() / 2]];
    let wall_seconds = *wall_seconds;

    let threads = if options.n_threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        options.n_threads
    };
    let per = |total: f64, n: u64| {
        if n > 0 {
            format!("{:.2}", total * 1000.0 / n as f64)
        } else {
            "n/a".to_string()
        }
    };
    println!("input            {input}");
    let backend = match model.compute_type {
        ComputeType::Bf16 => format!(
            ", {:?}",
            gstwhispernpu::engine::cpu::amx::Backend::detected()
        ),
        ComputeType::Int8Bf16 => format!(
            ", {:?}, int8 {}",
            gstwhispernpu::engine::cpu::amx::Backend::detected(),
            match (
                gstwhispernpu::engine::cpu::amx::Backend::detected(),
                gstwhispernpu::engine::cpu::vnni::usable(),
            ) {
                (gstwhispernpu::engine::cpu::amx::Backend::Amx, _) => {
                    "in the decoder layers (encoder bf16 on AMX)"
                }
                (_, true) => "encoder layers on vpdpbusd",
                (_, false) => "not on this CPU (bf16)",
            }
        ),
        _ => String::new(),
    };
    println!(
        "model            {model_name} ({}, compute type {}{backend})",
        model.dir.display(),
        model.compute_type
    );
    println!("engine           {}", model.engine_description());
    println!(
        "compute type     {} ({compute_type}: {})",
        model.compute_type,
        compute_type.resolution().1
    );
    println!(
        "settings         threads {threads}, beam size {}, language {}, repeat {repeat}",
        options.beam_size,
        options.language.as_deref().unwrap_or("auto")
    );
    println!("audio seconds    {audio_seconds:.3}");
    println!("load seconds     {load_seconds:.3}  (not in wall / x realtime)");
    if repeat > 1 {
        let walls: Vec<String> = order.iter().map(|&i| format!("{:.3}", runs[i].0)).collect();
        println!(
            "wall seconds     {wall_seconds:.3}  (median of {repeat}: {})",
            walls.join(" ")
        );
    } else {
        println!("wall seconds     {wall_seconds:.3}");
    }
    println!(
        "x realtime       {}",
        if wall_seconds > 0.0 {
            format!("{:.2}", audio_seconds / wall_seconds)
        } else {
            "n/a".into()
        }
    );
    println!("windows          {}", stats.windows);
    println!(
        "encoder ms/win   {}",
        per(stats.encoder_seconds, stats.windows)
    );
    println!(
        "decoder ms/tok   {}  ({} tokens)",
        per(stats.decoder_seconds, stats.decoder_tokens),
        stats.decoder_tokens
    );
    println!("decoder calls    {}", stats.decoder_calls);
    println!("mel ms           {:.2}", stats.mel_seconds * 1000.0);
    println!("fallbacks        {}", stats.fallbacks);
    match peak_rss_kib() {
        Some(kib) => println!("peak RSS MiB     {:.1}", kib as f64 / 1024.0),
        None => println!("peak RSS MiB     n/a (no VmHWM in /proc/self/status)"),
    }
    println!("segments         {n_segments}");
    let mut head: String = text.chars().take(80).collect();
    if text.chars().count() > 80 {
        head.push_str("...");
    }
    println!("transcript       {head}");
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
