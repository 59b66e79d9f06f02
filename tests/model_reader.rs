//! CTranslate2 reader: every dtype and binary version, and bad files giving typed errors that
//! name the file — never a panic or an out-of-bounds read.

mod common;

use std::path::{Path, PathBuf};

use gstwhispernpu::ModelError;
use gstwhispernpu::engine::WhisperModel;
use gstwhispernpu::model::ct2::Ct2File;

/// Writes CTranslate2 `model.bin` files for tests.
struct Writer {
    version: u32,
    vars: Vec<(String, Vec<u32>, u8, Vec<u8>)>,
    aliases: Vec<(String, String)>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend(((s.len() + 1) as u16).to_le_bytes());
    out.extend(s.as_bytes());
    out.push(0);
}

impl Writer {
    fn new(version: u32) -> Self {
        Self {
            version,
            vars: Vec::new(),
            aliases: Vec::new(),
        }
    }
    fn var(mut self, name: &str, shape: &[u32], dtype: u8, data: Vec<u8>) -> Self {
        self.vars.push((name.into(), shape.to_vec(), dtype, data));
        self
    }
    fn f32(self, name: &str, shape: &[u32], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.var(name, shape, 0, data)
    }
    fn alias(mut self, alias: &str, target: &str) -> Self {
        self.aliases.push((alias.into(), target.into()));
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(self.version.to_le_bytes());
        if self.version >= 2 {
            put_str(&mut out, "WhisperSpec");
            out.extend(3u32.to_le_bytes());
        }
        out.extend((self.vars.len() as u32).to_le_bytes());
        let mut vars = self.vars.clone();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, shape, dtype, data) in &vars {
            put_str(&mut out, name);
            out.push(shape.len() as u8);
            for d in shape {
                out.extend(d.to_le_bytes());
            }
            if self.version >= 4 {
                out.push(*dtype);
                out.extend((data.len() as u32).to_le_bytes());
            } else {
                let item: u8 = match dtype {
                    0 => 4,
                    4 => 2,
                    _ => 1,
                };
                out.push(item);
                out.extend(((data.len() / item as usize) as u32).to_le_bytes());
            }
            out.extend(data);
        }
        if self.version >= 3 {
            out.extend((self.aliases.len() as u32).to_le_bytes());
            for (a, t) in &self.aliases {
                put_str(&mut out, a);
                put_str(&mut out, t);
            }
        }
        out
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("whispernpu-reader-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn write_file(dir: &Path, bytes: &[u8]) -> PathBuf {
    let path = dir.join("model.bin");
    std::fs::write(&path, bytes).expect("write model.bin");
    path
}

#[test]
fn reads_every_dtype_and_version() {
    let values = [1.5f32, -2.25, 0.0, 3.0];
    for version in [4u32, 5, 6] {
        let f16: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        // int8 rows with per-row scale: w = q / scale.
        let q: Vec<u8> = [3i8, -9, 0, 6].iter().map(|&v| v as u8).collect();
        let w = Writer::new(version)
            .f32("a/f32", &[2, 2], &values)
            .var("a/f16", &[2, 2], 4, f16)
            .var("a/bf16", &[4], 5, bf16)
            .var("a/int8", &[2, 2], 1, q)
            .f32("a/int8_scale", &[2], &[2.0, 3.0])
            .var("a/num_heads", &[], 2, 6i16.to_le_bytes().to_vec())
            .alias("a/alias", "a/f32");
        let dir = temp_dir(&format!("dtypes-v{version}"));
        let path = write_file(&dir, &w.bytes());
        let file = Ct2File::open(&path).unwrap_or_else(|e| panic!("version {version}: {e}"));
        assert_eq!(file.binary_version, version);
        assert_eq!(file.tensor("a/f32", &[2, 2]).unwrap(), values);
        assert_eq!(file.tensor("a/f16", &[2, 2]).unwrap(), values);
        assert_eq!(file.tensor("a/bf16", &[4]).unwrap(), values);
        assert_eq!(
            file.tensor("a/int8", &[2, 2]).unwrap(),
            vec![1.5, -4.5, 0.0, 2.0]
        );
        assert_eq!(file.tensor("a/alias", &[2, 2]).unwrap(), values);
        assert_eq!(file.scalar_int("a/num_heads"), Some(6));
    }
    // Version 3 stores item sizes instead of dtypes.
    let dir = temp_dir("v3");
    let path = write_file(&dir, &Writer::new(3).f32("x", &[4], &values).bytes());
    assert_eq!(
        Ct2File::open(&path).unwrap().tensor("x", &[4]).unwrap(),
        values
    );
}

fn open_err(name: &str, bytes: &[u8]) -> (PathBuf, ModelError) {
    let dir = temp_dir(name);
    let path = write_file(&dir, bytes);
    let err = match Ct2File::open(&path) {
        Ok(_) => panic!("{name}: a bad file was accepted"),
        Err(e) => e,
    };
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{name}: error `{err}` does not name {}",
        path.display()
    );
    (path, err)
}

#[test]
fn truncation_at_every_point_is_a_typed_error() {
    let full = Writer::new(6)
        .f32("w", &[3], &[1.0, 2.0, 3.0])
        .alias("v", "w")
        .bytes();
    for cut in 0..full.len() {
        let dir = temp_dir("cut");
        let path = write_file(&dir, &full[..cut]);
        match Ct2File::open(&path) {
            Err(ModelError::Truncated { path: p, .. }) => assert_eq!(p, path),
            Err(other) => panic!("cut at {cut}: expected Truncated, got {other}"),
            Ok(_) => panic!("cut at {cut}: truncated file accepted"),
        }
    }
}

#[test]
fn corrupt_headers_are_named() {
    let (_, e) = open_err("version", &Writer::new(99).bytes());
    assert!(matches!(e, ModelError::Unsupported { .. }), "{e}");

    let bad_dtype = Writer::new(6).var("w", &[1], 9, vec![0; 4]).bytes();
    let (_, e) = open_err("dtype", &bad_dtype);
    assert!(
        matches!(e, ModelError::Corrupt { .. }) && e.to_string().contains("dtype"),
        "{e}"
    );

    // Byte count disagreeing with the shape.
    let mut wrong_size = Writer::new(6).f32("w", &[2], &[1.0, 2.0]).bytes();
    let at = wrong_size.len() - 8 - 4 - 4; // byte count field before the 8 data bytes + alias count
    wrong_size[at..at + 4].copy_from_slice(&12u32.to_le_bytes());
    let (_, e) = open_err("size", &wrong_size);
    assert!(
        matches!(e, ModelError::Corrupt { .. } | ModelError::Truncated { .. }),
        "{e}"
    );

    let dangling = Writer::new(6)
        .f32("w", &[1], &[1.0])
        .alias("v", "missing")
        .bytes();
    let (_, e) = open_err("alias", &dangling);
    assert!(e.to_string().contains("missing"), "{e}");

    let mut huge = Writer::new(6).bytes();
    let n = huge.len() - 8; // variable count, then alias count
    huge[n..n + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    open_err("count", &huge);

    let int8_without_scale = Writer::new(6).var("w", &[1, 2], 1, vec![1, 2]).bytes();
    let dir = temp_dir("noscale");
    let path = write_file(&dir, &int8_without_scale);
    let e = Ct2File::open(&path)
        .unwrap()
        .tensor("w", &[1, 2])
        .unwrap_err();
    assert!(e.to_string().contains("w_scale"), "{e}");
}

#[test]
fn model_directory_errors_name_the_file() {
    let src = common::model_dir("tiny.en");

    // No model.bin.
    let dir = temp_dir("no-bin");
    for f in ["config.json", "vocabulary.txt", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    match WhisperModel::load(&dir) {
        Err(ModelError::NotFound { path }) => assert_eq!(path, dir.join("model.bin")),
        Err(e) => panic!("expected NotFound, got {e}"),
        Ok(_) => panic!("loaded a model without model.bin"),
    }

    // A real model.bin cut short.
    let bytes = std::fs::read(src.join("model.bin")).unwrap();
    std::fs::write(dir.join("model.bin"), &bytes[..bytes.len() / 3]).unwrap();
    match WhisperModel::load(&dir) {
        Err(e @ ModelError::Truncated { .. }) => {
            assert!(e.to_string().contains("model.bin"), "{e}")
        }
        Err(e) => panic!("expected Truncated, got {e}"),
        Ok(_) => panic!("loaded a truncated model"),
    }

    // A valid file that lacks the Whisper weights.
    write_file(
        &dir,
        &Writer::new(6)
            .f32("encoder/conv1/bias", &[2], &[0.0, 0.0])
            .bytes(),
    );
    match WhisperModel::load(&dir) {
        Err(e @ ModelError::MissingWeight { .. }) => {
            assert!(e.to_string().contains("encoder/conv1/weight"))
        }
        Err(e) => panic!("expected MissingWeight, got {e}"),
        Ok(_) => panic!("loaded an empty model"),
    }

    // A corrupt config.json.
    std::fs::copy(src.join("model.bin"), dir.join("model.bin")).unwrap();
    std::fs::write(dir.join("config.json"), b"{ not json").unwrap();
    match WhisperModel::load(&dir) {
        Err(e @ ModelError::Corrupt { .. }) => {
            assert!(e.to_string().contains("config.json"), "{e}")
        }
        Err(e) => panic!("expected Corrupt config, got {e}"),
        Ok(_) => panic!("loaded with a corrupt config.json"),
    }

    // A directory that does not exist.
    let missing = dir.join("nope");
    assert!(matches!(
        WhisperModel::load(&missing),
        Err(ModelError::NotFound { .. })
    ));
}

#[test]
fn real_models_have_expected_dims() {
    let tiny = WhisperModel::load(&common::model_dir("tiny.en")).expect("tiny.en loads");
    let d = &tiny.dims;
    assert_eq!(
        (
            d.n_mels,
            d.n_audio_state,
            d.n_audio_head,
            d.n_audio_layer,
            d.n_vocab,
            d.n_text_layer
        ),
        (80, 384, 6, 4, 51864, 4)
    );
    assert!(!tiny.is_multilingual());
    let base = WhisperModel::load(&common::model_dir("base")).expect("base loads");
    let d = &base.dims;
    assert_eq!(
        (
            d.n_audio_state,
            d.n_audio_head,
            d.n_audio_layer,
            d.n_vocab,
            d.n_text_ctx,
            d.n_text_layer
        ),
        (512, 8, 6, 51865, 448, 6)
    );
    assert!(base.is_multilingual());
    assert_eq!(base.alignment_heads.len(), 8);
    assert_eq!(base.suppress_ids_begin, vec![220, 50257]);
}
