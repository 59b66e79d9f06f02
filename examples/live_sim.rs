//! Simulated live run of the live policy on a file, without GStreamer: audio "arrives" in 20 ms
//! pieces on a virtual clock that also advances by each call's compute time, so a slow decode
//! makes the next audio wait (backlog) as it would live. For each committed segment, prints the
//! latency: virtual time when it is committed minus the end of the speech it covers. Summary:
//! p50/p95/max latency and the WER against the offline transcript.
//!
//! With `--decode-cost S` the clock advances by S per decode instead of the measured compute
//! time, and the step is fixed (no headroom): runs are then reproducible whatever else the
//! machine is doing, to compare live policies.
//!
//! ```text
//! cargo run --release --example live_sim -- --model tiny.en [--vad silero|energy|none] [--latency S] [--decode-cost S] AUDIO
//! ```

mod common;

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use common::{Arg, AudioReader, Cli};
use gstwhispernpu::transcribe::{
    AlwaysSpeech, LiveOptions, LiveTranscriber, SpeechGate, TranscribeOptions, Transcriber,
};

const USAGE: &str = "usage: live_sim --model NAME [--compute-type T] [--vad silero|energy|none] \
     [--latency S] [--step S] [--max-buffer S] [--decode-cost S] [--reference TEXT_FILE] \
     [--no-draft] [--verbose] AUDIO";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            let _ = writeln!(std::io::stderr(), "live_sim: {why}\n{USAGE}");
            ExitCode::from(1)
        }
    }
}

fn gate(kind: &str) -> Result<Box<dyn SpeechGate>, String> {
    match kind {
        "none" => Ok(Box::new(AlwaysSpeech::default())),
        "silero" | "energy" => {
            let kind = if kind == "silero" {
                gstwhispernpu::vad::VadKind::Silero
            } else {
                gstwhispernpu::vad::VadKind::Energy
            };
            let (gate, warning) = gstwhispernpu::transcribe::VadGate::open(kind);
            if let Some(w) = warning {
                eprintln!("live_sim: {w}");
            }
            Ok(Box::new(gate))
        }
        other => Err(format!("unknown --vad {other} (silero, energy, none)")),
    }
}

fn run() -> Result<(), String> {
    let mut model = "base".to_string();
    let mut vad = "silero".to_string();
    let mut latency = 4.0f64;
    let mut verbose = false;
    let mut draft = true;
    let mut step: Option<f64> = None;
    let mut max_buffer: Option<f64> = None;
    let mut decode_cost: Option<f64> = None;
    let mut truth: Option<String> = None;
    let mut compute = gstwhispernpu::engine::ComputeType::Auto;
    let mut input = None;
    let mut cli = Cli::from_env();
    while let Some(arg) = cli.next(|n| {
        matches!(
            n,
            "--model"
                | "--compute-type"
                | "--vad"
                | "--latency"
                | "--step"
                | "--max-buffer"
                | "--reference"
                | "--decode-cost"
        )
    }) {
        match arg? {
            Arg::Positional(p) => input = Some(p),
            Arg::Flag { name, value } => {
                let value = value.unwrap_or_default();
                match name.as_str() {
                    "--model" => model = value,
                    "--vad" => vad = value,
                    "--compute-type" => compute = value.parse()?,
                    "--latency" => latency = common::parse_number(&name, &value)?,
                    "--verbose" => verbose = true,
                    "--no-draft" => draft = false,
                    "--step" => step = Some(common::parse_number(&name, &value)?),
                    "--max-buffer" => max_buffer = Some(common::parse_number(&name, &value)?),
                    "--decode-cost" => {
                        decode_cost = Some(common::parse_number(&name, &value)?);
                    }
                    "--reference" => {
                        truth = Some(
                            std::fs::read_to_string(&value).map_err(|e| format!("{value}: {e}"))?,
                        )
                    }
                    _ => return Err(format!("unknown flag {name}")),
                }
            }
        }
    }
    let input = input.ok_or("no AUDIO given")?;
    let mut reader = AudioReader::open(&input).map_err(|e| e.to_string())?;
    let mut audio = Vec::new();
    while let Some(chunk) = reader.next_chunk().map_err(|e| e.to_string())? {
        audio.extend(chunk);
    }
    let model =
        gstwhispernpu::engine::load_shared_with(&model, compute).map_err(|e| e.to_string())?;
    let opts = TranscribeOptions {
        n_threads: 2,
        ..TranscribeOptions::default()
    };

    let mut offline = Transcriber::new(model.clone(), opts.clone()).map_err(|e| e.to_string())?;
    let mut reference = String::new();
    for chunk in audio.chunks(16000) {
        for s in offline.push(chunk).map_err(|e| e.to_string())? {
            reference.push_str(&s.text);
            reference.push(' ');
        }
    }
    for s in offline.finish().map_err(|e| e.to_string())? {
        reference.push_str(&s.text);
        reference.push(' ');
    }
    drop(offline);

    let mut engine = Transcriber::new(model, opts).map_err(|e| e.to_string())?;
    let mut live_opts = LiveOptions::for_latency(latency);
    live_opts.draft = draft;
    if let Some(v) = step {
        live_opts.step = v;
    }
    if let Some(v) = max_buffer {
        live_opts.max_buffer = v;
    }
    if let Some(cost) = decode_cost {
        // What the headroom rule would make of a decode taking `cost`, but fixed.
        live_opts.step = live_opts.step.max(live_opts.headroom * cost);
        live_opts.headroom = 0.0;
    }
    // Advances the virtual clock by one call's cost: measured, or `decode_cost` per decode.
    let cost = |live: &LiveTranscriber, decodes_before: u64, t0: Instant| match decode_cost {
        Some(c) => c * (live.stats().decodes - decodes_before) as f64,
        None => t0.elapsed().as_secs_f64(),
    };
    let mut live = LiveTranscriber::new(gate(&vad)?, live_opts);
    let piece = 320;
    let mut now = 0.0f64; // virtual seconds
    let mut latencies = Vec::new();
    let mut text = String::new();
    let mut report =
        |segs: Vec<gstwhispernpu::transcribe::Segment>, now: f64, text: &mut String| {
            for s in segs {
                let l = now - s.end;
                latencies.push(l);
                if verbose {
                    println!(
                        "{now:8.2} [{:7.2} – {:7.2}] +{l:5.2} s  {}",
                        s.start, s.end, s.text
                    );
                }
                text.push_str(&s.text);
                text.push(' ');
            }
        };
    let wall = Instant::now();
    for (i, chunk) in audio.chunks(piece).enumerate() {
        let arrival = ((i + 1) * piece) as f64 / 16000.0;
        now = now.max(arrival);
        let backlog = now > arrival + piece as f64 / 16000.0;
        let (t0, before) = (Instant::now(), live.stats().decodes);
        let out = live
            .push(&mut engine, chunk, backlog)
            .map_err(|e| e.to_string())?;
        now += cost(&live, before, t0);
        report(out.segments, now, &mut text);
    }
    let (t0, before) = (Instant::now(), live.stats().decodes);
    let out = live.drain(&mut engine).map_err(|e| e.to_string())?;
    now += cost(&live, before, t0);
    report(out.segments, now, &mut text);
    let stats = live.stats().clone();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if latencies.is_empty() {
            f64::NAN
        } else {
            latencies[((latencies.len() - 1) as f64 * p).round() as usize]
        }
    };
    println!("offline: {}", reference.trim());
    println!("live:    {}", text.trim());
    println!(
        "segments {}  latency p50 {:.2} s  p95 {:.2} s  max {:.2} s  WER vs offline {:.2} %  wall {:.1} s for {:.1} s",
        latencies.len(),
        pct(0.5),
        pct(0.95),
        pct(1.0),
        wer_percent(&reference, &text),
        wall.elapsed().as_secs_f64(),
        audio.len() as f64 / 16000.0
    );
    println!("{stats:?}");
    let es = engine.stats();
    println!(
        "engine: {} windows, encoder {:.0} ms/window, decoder {:.0} ms/window ({} calls for {} \
         tokens), mel {:.1} s total",
        es.windows,
        es.encoder_seconds * 1000.0 / es.windows.max(1) as f64,
        es.decoder_seconds * 1000.0 / es.windows.max(1) as f64,
        es.decoder_calls,
        es.decoder_tokens,
        es.mel_seconds
    );
    if let Some(truth) = truth {
        println!(
            "WER vs reference: live {:.2} %, offline {:.2} %",
            wer_percent(&truth, &text),
            wer_percent(&truth, &reference)
        );
    }
    Ok(())
}

fn wer_percent(reference: &str, hyp: &str) -> f64 {
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
    let (r, h) = (norm(reference), norm(hyp));
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 100.0 };
    }
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    let mut cur = vec![0; h.len() + 1];
    for i in 1..=r.len() {
        cur[0] = i;
        for j in 1..=h.len() {
            cur[j] = (prev[j - 1] + usize::from(r[i - 1] != h[j - 1]))
                .min(prev[j] + 1)
                .min(cur[j - 1] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    100.0 * prev[h.len()] as f64 / r.len() as f64
}
