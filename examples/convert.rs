//! Converts a Whisper model to a whisper.cpp GGML file or a Hugging Face safetensors checkpoint,
//! or writes a small randomly initialised model of a real model's shapes.
//!
//! ```text
//! convert --to ggml|safetensors|ct2 [--type f32|f16|q8_0|q5_0|q5_1|q4_0|q4_1] IN OUT
//! convert --to ggml|safetensors|ct2 [--type ...] --random-shapes large-v3-turbo [--seed N]
//!         [--vocab-from MODEL] OUT
//! ```
//!
//! IN is a model name (`tiny.en`) or a path in any format the crate reads. OUT is a file for
//! GGML, a directory for safetensors (`model.safetensors`, `config.json`,
//! `generation_config.json`, tokenizer). `--type` defaults to f16; safetensors takes f32 or f16.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use gstwhispernpu::model::export::{ExportModel, RandomShapes, random_model};
use gstwhispernpu::model::ggml::GgmlType;
use gstwhispernpu::model::safetensors::WriteType;
use gstwhispernpu::model::{self, Tokenizer};

const USAGE: &str = "usage: convert --to ggml|safetensors|ct2 [--type f32|f16|q8_0|q5_0|q5_1|q4_0|q4_1] IN OUT\n       convert --to ggml|safetensors|ct2 [--type T] --random-shapes large-v3-turbo [--seed N] [--vocab-from MODEL] OUT";

struct Args {
    to: String,
    ty: String,
    random: Option<RandomShapes>,
    seed: u64,
    vocab_from: String,
    paths: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        to: String::new(),
        ty: "f16".into(),
        random: None,
        seed: 0,
        vocab_from: "base".into(),
        paths: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
        match a.as_str() {
            "--to" => args.to = value("--to")?,
            "--type" => args.ty = value("--type")?,
            "--random-shapes" => args.random = Some(value("--random-shapes")?.parse()?),
            "--seed" => {
                args.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--vocab-from" => args.vocab_from = value("--vocab-from")?,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => args.paths.push(a),
        }
    }
    let want = if args.random.is_some() { 1 } else { 2 };
    if args.paths.len() != want {
        return Err(format!("expected {want} path(s), got {}", args.paths.len()));
    }
    if !matches!(args.to.as_str(), "ggml" | "safetensors" | "ct2") {
        return Err("--to must be ggml, safetensors or ct2".into());
    }
    Ok(args)
}

fn run(args: &Args) -> Result<(), String> {
    let model = match args.random {
        Some(shapes) => {
            let dir = model::resolve(&args.vocab_from).map_err(|e| e.to_string())?;
            let vocab_dir = if dir.is_dir() {
                dir
            } else {
                PathBuf::from(".")
            };
            let base = Tokenizer::load(&vocab_dir, 51865)
                .or_else(|_| Tokenizer::load(&vocab_dir, 51864))
                .map_err(|e| format!("--vocab-from {}: {e}", args.vocab_from))?;
            random_model(shapes, args.seed, &base).map_err(|e| e.to_string())?
        }
        None => {
            let path = model::resolve(&args.paths[0]).map_err(|e| e.to_string())?;
            ExportModel::read(&path).map_err(|e| e.to_string())?
        }
    };
    let out = PathBuf::from(args.paths.last().map(String::as_str).unwrap_or_default());
    match args.to.as_str() {
        "ggml" => {
            let ty: GgmlType = args.ty.parse()?;
            model.write_ggml(&out, ty).map_err(|e| e.to_string())
        }
        to => {
            let ty = match args.ty.as_str() {
                "f32" => WriteType::F32,
                "f16" => WriteType::F16,
                other => return Err(format!("{to} takes --type f32 or f16, not {other}")),
            };
            if to == "ct2" {
                model.write_ct2(&out, ty).map_err(|e| e.to_string())
            } else {
                model.write_safetensors(&out, ty).map_err(|e| e.to_string())
            }
        }
    }
}

fn main() -> ExitCode {
    common::guard_panics("convert", convert_main)
}

fn convert_main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("convert: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("convert: {e}");
            ExitCode::from(1)
        }
    }
}
