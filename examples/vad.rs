//! Prints the speech segments of a 16 kHz WAV file and what finding them cost.
//!
//! ```text
//! cargo run --release --example vad -- [OPTIONS] FILE.wav
//! ```
//! Run with `--help` for the options. Silero needs `scripts/fetch-runtime`; without it the energy
//! detector is used and a warning says why.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use gstwhispernpu::vad::{
    self, Segmenter, SegmenterOptions, VAD_FRAME, VAD_SAMPLE_RATE, VadEvent, VadKind,
};

const USAGE: &str = "\
usage: vad [OPTIONS] FILE.wav

Prints the speech segments of FILE.wav (16 kHz; channels are averaged; convert other rates with
`sox IN -r 16000 OUT.wav`), then the detector's cost in milliseconds per second of audio.

options:
  --energy              use the energy detector instead of Silero
  --model PATH          Silero model file or directory [default: search, see scripts/fetch-runtime]
  --runtime PATH        ONNX Runtime library file or directory [default: search]
  --threshold P         speech threshold [default: 0.5]
  --min-silence-ms N    silence that ends a segment [default: 500]
  --probs               also print every frame's probability
  --chunk N             samples per push, as a live source would deliver them [default: 1600]
  -h, --help            print this help";

struct Args {
    file: PathBuf,
    kind: VadKind,
    model: Option<PathBuf>,
    runtime: Option<PathBuf>,
    options: SegmenterOptions,
    probs: bool,
    chunk: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut parsed = Args {
        file: PathBuf::new(),
        kind: VadKind::Silero,
        model: None,
        runtime: None,
        options: SegmenterOptions::default(),
        probs: false,
        chunk: 1600,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--energy" => parsed.kind = VadKind::Energy,
            "--probs" => parsed.probs = true,
            "--model" => parsed.model = Some(value("--model")?.into()),
            "--runtime" => parsed.runtime = Some(value("--runtime")?.into()),
            "--threshold" => {
                parsed.options.threshold = value("--threshold")?
                    .parse()
                    .map_err(|e| format!("--threshold: {e}"))?
            }
            "--min-silence-ms" => {
                parsed.options.min_silence_ms = value("--min-silence-ms")?
                    .parse()
                    .map_err(|e| format!("--min-silence-ms: {e}"))?
            }
            "--chunk" => {
                parsed.chunk = value("--chunk")?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--chunk needs a positive number")?
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ if file.is_some() => return Err("only one FILE, please".into()),
            _ => file = Some(PathBuf::from(arg)),
        }
    }
    parsed.file = file.ok_or("FILE.wav is missing")?;
    Ok(parsed)
}

fn read_wav(path: &PathBuf) -> Result<Vec<f32>, String> {
    let mut reader =
        hound::WavReader::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let spec = reader.spec();
    if spec.sample_rate != VAD_SAMPLE_RATE {
        return Err(format!(
            "{} is {} Hz; the detectors need {VAD_SAMPLE_RATE} Hz (sox IN -r 16000 OUT.wav)",
            path.display(),
            spec.sample_rate
        ));
    }
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
        }
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>(),
    }
    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let channels = usize::from(spec.channels.max(1));
    Ok(interleaved
        .chunks(channels)
        .map(|f| f.iter().sum::<f32>() / channels as f32)
        .collect())
}

fn seconds(sample: u64) -> f64 {
    sample as f64 / f64::from(VAD_SAMPLE_RATE)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vad: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let audio = match read_wav(&args.file) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vad: {e}");
            return ExitCode::FAILURE;
        }
    };

    let opened = Instant::now();
    let (mut detector, warning) =
        vad::open(args.kind, args.model.as_deref(), args.runtime.as_deref());
    let open_ms = opened.elapsed().as_secs_f64() * 1e3;
    if let Some(w) = warning {
        eprintln!("vad: {w}");
    }

    let mut segmenter = Segmenter::new(args.options.clone());
    let mut probs = Vec::with_capacity(audio.len() / VAD_FRAME + 1);
    let mut events = Vec::new();
    let started = Instant::now();
    let mut consumed = 0;
    for chunk in audio.chunks(args.chunk) {
        detector.push(chunk, &mut probs);
        events.extend(segmenter.push(&probs[consumed..]));
        consumed = probs.len();
    }
    events.extend(segmenter.flush());
    let run_ms = started.elapsed().as_secs_f64() * 1e3;
    if let Some(w) = detector.take_warning() {
        eprintln!("vad: {w}");
    }

    if args.probs {
        for (i, p) in probs.iter().enumerate() {
            println!("{:8.3} {p:.4}", seconds((i * VAD_FRAME) as u64));
        }
    }
    let mut start = None;
    for event in events {
        match event {
            VadEvent::Start { sample } => start = Some(sample),
            VadEvent::End { sample } => {
                let s = start.take().unwrap_or(0);
                println!(
                    "speech {:8.3} -> {:8.3}  ({:.2} s)",
                    seconds(s),
                    seconds(sample),
                    seconds(sample - s)
                );
            }
        }
    }
    let audio_s = audio.len() as f64 / f64::from(VAD_SAMPLE_RATE);
    eprintln!(
        "vad: {} on {:.2} s of audio: {:.2} ms per second of audio ({:.0}x realtime, {} frames, {:.1} ms to open)",
        detector.name(),
        audio_s,
        run_ms / audio_s,
        audio_s * 1e3 / run_ms,
        probs.len(),
        open_ms
    );
    ExitCode::SUCCESS
}
