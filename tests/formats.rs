//! Model formats beside CTranslate2: whisper.cpp GGML files and Hugging Face safetensors
//! checkpoints, written by the converter (`gstwhispernpu::model::export`, behind
//! `examples/convert.rs`) and read back; large-v3 / turbo shapes on a small random model.
//!
//! Run with `cargo test --release --test formats`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gstwhispernpu::engine::{ComputeType, WhisperModel};
use gstwhispernpu::error::ModelError;
use gstwhispernpu::model::export::{ExportModel, RandomShapes, random_model};
use gstwhispernpu::model::ggml::{self, GgmlFile, GgmlType};
use gstwhispernpu::model::safetensors::WriteType;
use gstwhispernpu::model::{ModelFormat, Tokenizer};
use gstwhispernpu::transcribe::{Segment, TranscribeOptions, Transcriber};

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::time::{SystemTime, UNIX_EPOCH};
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "whispernpu-formats-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn jfk() -> Vec<f32> {
    let (samples, rate) = common::read_wav(&common::jfk_wav());
    assert_eq!(rate, 16000, "jfk.wav must be 16 kHz");
    samples
}

fn load(path: &Path) -> Arc<WhisperModel> {
    Arc::new(
        WhisperModel::load_with(path, ComputeType::F32)
            .unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display())),
    )
}

fn transcribe(model: Arc<WhisperModel>, samples: &[f32]) -> Vec<Segment> {
    transcribe_with(model, samples, TranscribeOptions::default())
}

fn transcribe_with(
    model: Arc<WhisperModel>,
    samples: &[f32],
    opts: TranscribeOptions,
) -> Vec<Segment> {
    let mut t = Transcriber::new(model, opts).expect("Transcriber::new");
    let mut segments = t.push(samples).expect("push");
    segments.extend(t.finish().expect("finish"));
    segments
}

fn text_of(segments: &[Segment]) -> String {
    segments
        .iter()
        .map(|s| s.text.trim())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Start, end, tokens of each segment: what must be identical across lossless formats.
fn timeline(segments: &[Segment]) -> Vec<(f64, f64, Vec<u32>)> {
    segments
        .iter()
        .map(|s| (s.start, s.end, s.tokens.clone()))
        .collect()
}

/// A tokenizer of the multilingual vocabulary (base), for the random models.
fn base_tokenizer() -> Tokenizer {
    let dir = common::model_dir("base");
    Tokenizer::load(&dir, 51865).expect("base tokenizer")
}

/// A small random model of large-v3-turbo's shapes.
fn turbo() -> ExportModel {
    random_model(RandomShapes::LargeV3Turbo, 7, &base_tokenizer()).expect("random model")
}

#[test]
fn tiny_en_same_transcript_from_ct2_ggml_and_safetensors() {
    let ct2_dir = common::model_dir("tiny.en");
    let tmp = TempDir::new("tiny");
    let export = ExportModel::read(&ct2_dir).expect("read tiny.en");
    let ggml_path = tmp.join("ggml-tiny.en-f16.bin");
    export
        .write_ggml(&ggml_path, GgmlType::F16)
        .expect("write ggml");
    let hf_dir = tmp.join("whisper-tiny.en");
    export
        .write_safetensors(&hf_dir, WriteType::F16)
        .expect("write safetensors");

    let samples = jfk();
    let reference = transcribe(load(&ct2_dir), &samples);
    assert_eq!(
        text_of(&reference),
        "And so my fellow Americans ask not what your country can do for you ask what you can do for your country."
    );
    let single_file = hf_dir.join("model.safetensors");
    for (path, format) in [
        (&ggml_path, ModelFormat::Ggml),
        (&hf_dir, ModelFormat::Safetensors),
        (&single_file, ModelFormat::Safetensors),
    ] {
        assert_eq!(
            ModelFormat::detect(path).unwrap(),
            format,
            "{}",
            path.display()
        );
        let model = load(path);
        assert_eq!(model.format, format);
        // tiny.en is stored in f16: both f16 exports hold the same numbers, so everything
        // matches, tokens and times included.
        let got = transcribe(model, &samples);
        assert_eq!(text_of(&got), text_of(&reference), "{}", path.display());
        assert_eq!(timeline(&got), timeline(&reference), "{}", path.display());
    }
    let ct2 = load(&ct2_dir);
    let hf = load(&hf_dir);
    assert_eq!(hf.suppress_ids, ct2.suppress_ids);
    assert_eq!(hf.suppress_ids_begin, ct2.suppress_ids_begin);
    assert_eq!(hf.alignment_heads, ct2.alignment_heads);
    // GGML stores no configuration: the suppressed tokens are openai's non-speech tokens, which
    // is what the CTranslate2 config lists.
    let gg = load(&ggml_path);
    assert_eq!(gg.suppress_ids, ct2.suppress_ids);
    assert_eq!(gg.suppress_ids_begin, ct2.suppress_ids_begin);
    assert_eq!(
        gg.tokenizer.encode(" Americans, ask not"),
        ct2.tokenizer.encode(" Americans, ask not")
    );
}

#[test]
fn tiny_en_quantised_ggml_keeps_the_words() {
    let ct2_dir = common::model_dir("tiny.en");
    let tmp = TempDir::new("quant");
    let export = ExportModel::read(&ct2_dir).expect("read tiny.en");
    let samples = jfk();
    let reference = text_of(&transcribe(load(&ct2_dir), &samples));
    // Q8_0 and Q5_0 are lossy, yet give the f16 file's words (the README's "same words"):
    // punctuation and case may differ, no word may.
    for ty in [GgmlType::Q8_0, GgmlType::Q5_0] {
        let path = tmp.join(&format!("tiny.en-{}.bin", ty.name()));
        export.write_ggml(&path, ty).expect("write");
        let file = GgmlFile::open(&path).expect("open");
        assert_eq!(
            file.tensor_type("encoder.blocks.0.mlp.0.weight"),
            Some(ty),
            "big tensors are quantised"
        );
        assert_eq!(
            file.tensor_type("encoder.conv1.weight"),
            Some(GgmlType::F16),
            "conv weights stay f16, as whisper.cpp's quantize leaves them"
        );
        let got = text_of(&transcribe(load(&path), &samples));
        let wer = common::wer_percent(&reference, &got);
        eprintln!("{}: WER {wer:.1} % against f16: {got}", ty.name());
        assert!(wer == 0.0, "{}: WER {wer:.1} %: {got:?}", ty.name());
    }
}

/// Blocks written by hand from ggml's definitions (`ggml-common.h`), decoded by the reader.
#[test]
fn quantised_blocks_decode_as_ggml_defines_them() {
    let half = |v: f32| half::f16::from_f32(v).to_le_bytes();
    // Q8_0: f16 scale, 32 signed bytes.
    let mut q8 = half(0.5).to_vec();
    q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let want: Vec<f32> = (0..32).map(|i| (i - 16) as f32 * 0.5).collect();
    assert_eq!(ggml::dequantize(GgmlType::Q8_0, &q8), want);
    // Q5_0: f16 scale, u32 of fifth bits, 16 bytes of nibbles (low: values 0..16, high:
    // 16..32); value = (code - 16) * d.
    let codes: Vec<u32> = (0..32).map(|i| (i * 7 + 3) % 32).collect();
    let mut qh = 0u32;
    let mut qs = [0u8; 16];
    for j in 0..16 {
        qs[j] = (codes[j] & 15) as u8 | (((codes[j + 16] & 15) as u8) << 4);
        qh |= (codes[j] >> 4) << j;
        qh |= (codes[j + 16] >> 4) << (j + 16);
    }
    let mut q5 = half(0.25).to_vec();
    q5.extend(qh.to_le_bytes());
    q5.extend(qs);
    let want: Vec<f32> = codes.iter().map(|&c| (c as f32 - 16.0) * 0.25).collect();
    assert_eq!(ggml::dequantize(GgmlType::Q5_0, &q5), want);
    // Q5_1: scale and minimum, unsigned codes.
    let mut q51 = half(0.25).to_vec();
    q51.extend(half(-1.0));
    q51.extend(qh.to_le_bytes());
    q51.extend(qs);
    let want: Vec<f32> = codes.iter().map(|&c| c as f32 * 0.25 - 1.0).collect();
    assert_eq!(ggml::dequantize(GgmlType::Q5_1, &q51), want);
    // And the writer's quantisers invert them within half a step.
    let values: Vec<f32> = (0..64)
        .map(|i| ((i * 37) % 64) as f32 / 32.0 - 1.0)
        .collect();
    for (ty, step) in [
        (GgmlType::Q8_0, 1.0 / 127.0),
        (GgmlType::Q5_0, 1.0 / 16.0),
        (GgmlType::Q5_1, 2.0 / 31.0),
    ] {
        let back = ggml::dequantize(ty, &ggml::quantize(ty, &values));
        for (a, b) in values.iter().zip(&back) {
            assert!(
                (a - b).abs() <= step * 0.5 + 1e-3,
                "{}: {a} -> {b}",
                ty.name()
            );
        }
    }
}

/// A GGML file with the header, the mel filters and the vocabulary but no tensors, as
/// whisper.cpp's `for-tests-ggml-*.bin` files are laid out: the header and vocabulary reader
/// must take it. The file is the converter's tiny.en without its tensors, not one of
/// whisper.cpp's (none is stored here; theirs were read by hand, see the README's honest notes).
#[test]
fn tensorless_ggml_file_gives_header_and_vocabulary() {
    let tmp = TempDir::new("tensorless");
    let ct2_dir = common::model_dir("tiny.en");
    let mut export = ExportModel::read(&ct2_dir).expect("read tiny.en");
    export.tensors.clear();
    let path = tmp.join("tensorless-tiny.en.bin");
    export.write_ggml(&path, GgmlType::F16).expect("write");
    assert_eq!(ModelFormat::detect(&path).unwrap(), ModelFormat::Ggml);
    let file = GgmlFile::open(&path).expect("a tensor-less file parses");
    assert!(file.names.is_empty());
    let h = &file.header;
    assert_eq!(
        (
            h.dims.n_vocab,
            h.dims.n_mels,
            h.dims.n_audio_layer,
            h.dims.n_text_state
        ),
        (51864, 80, 4, 384)
    );
    assert_eq!((h.ftype, h.n_fft, h.mel_filters.len()), (1, 201, 80 * 201));
    assert_eq!(
        h.vocab.len(),
        50256,
        "text tokens of the English vocabulary"
    );
    let tokenizer = file.tokenizer().expect("vocabulary as a tokenizer");
    let reference = Tokenizer::load(&ct2_dir, 51864).unwrap();
    assert_eq!(tokenizer.specials, reference.specials);
    let ids = reference.encode(" And so my fellow Americans");
    assert_eq!(tokenizer.decode(&ids), " And so my fellow Americans");
    assert_eq!(tokenizer.token_str(50257), Some("<|startoftranscript|>"));
    // As a model it is incomplete, and says so.
    let err = WhisperModel::load(&path)
        .err()
        .expect("no weights")
        .to_string();
    assert!(
        err.contains("no tensors") && err.contains("tensorless-tiny.en.bin"),
        "{err}"
    );
}

fn write_turbo_ggml(dir: &TempDir) -> PathBuf {
    let path = dir.join("turbo.bin");
    turbo().write_ggml(&path, GgmlType::F16).expect("write");
    path
}

#[test]
fn truncated_ggml_names_the_file_and_the_tensor() {
    let tmp = TempDir::new("trunc");
    let path = write_turbo_ggml(&tmp);
    let len = std::fs::metadata(&path).unwrap().len();
    let cut = tmp.join("cut.bin");
    std::fs::copy(&path, &cut).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
    f.set_len(len - 1000).unwrap();
    match WhisperModel::load(&cut) {
        Err(e @ ModelError::Truncated { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("cut.bin") && msg.contains("data of tensor `decoder."),
                "{msg}"
            );
        }
        Err(e) => panic!("expected a truncation error, got {e}"),
        Ok(_) => panic!("a truncated file loaded"),
    }
    // Cut inside the vocabulary.
    f.set_len(200_000).unwrap();
    let msg = GgmlFile::open(&cut).err().expect("truncated").to_string();
    assert!(
        msg.contains("cut.bin is truncated") && msg.contains("token"),
        "{msg}"
    );
}

#[test]
fn bad_magic_is_reported() {
    let tmp = TempDir::new("magic");
    let path = tmp.join("model.bin");
    std::fs::write(&path, b"GGUF\x03\x00\x00\x00 not a whisper.cpp file").unwrap();
    let msg = WhisperModel::load(&path)
        .err()
        .expect("bad magic")
        .to_string();
    assert!(
        msg.contains("model.bin") && msg.contains("bad magic"),
        "{msg}"
    );
}

/// Rewrites `dir/model.safetensors` with its header edited by `edit`.
fn edit_safetensors(
    dir: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(n.max(json.len()), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(&bytes[8 + n..]);
    std::fs::write(&path, out).unwrap();
}

#[test]
fn safetensors_missing_tensor_and_wrong_shape_are_reported() {
    let tmp = TempDir::new("st");
    let model = turbo();
    let missing = tmp.join("missing");
    model.write_safetensors(&missing, WriteType::F32).unwrap();
    edit_safetensors(&missing, |h| {
        h.remove("model.decoder.layers.3.encoder_attn.k_proj.weight");
    });
    let msg = WhisperModel::load(&missing)
        .err()
        .expect("missing")
        .to_string();
    assert!(
        msg.contains("missing")
            && msg.contains("model.decoder.layers.3.encoder_attn.k_proj.weight"),
        "{msg}"
    );

    let wrong = tmp.join("wrong");
    model.write_safetensors(&wrong, WriteType::F32).unwrap();
    edit_safetensors(&wrong, |h| {
        let t = h.get_mut("model.encoder.layers.1.fc1.weight").unwrap();
        // Same bytes, transposed shape: [d, 4d] instead of [4d, d].
        t["shape"] = serde_json::json!([64, 256]);
    });
    match WhisperModel::load(&wrong) {
        Err(e @ ModelError::BadShape { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("model.encoder.layers.1.fc1.weight") && msg.contains("[64, 256]"),
                "{msg}"
            );
        }
        Err(e) => panic!("expected a shape error, got {e}"),
        Ok(_) => panic!("a wrong shape loaded"),
    }
    // A GGML file whose header disagrees with its tensors fails the same way.
    let mut small = turbo();
    small.dims.n_text_ctx = 224;
    let path = tmp.join("ctx.bin");
    small.write_ggml(&path, GgmlType::F32).unwrap();
    let msg = WhisperModel::load(&path).err().expect("shape").to_string();
    assert!(
        msg.contains("decoder.positional_embedding") && msg.contains("[448, 64]"),
        "{msg}"
    );
}

/// large-v3 / turbo shapes (128 mel bins, 51866 tokens, 4 decoder layers) at a small width,
/// written by the converter in each format and run end to end.
#[test]
fn large_v3_turbo_shapes_run_from_every_format() {
    let tmp = TempDir::new("turbo");
    let model = turbo();
    let ggml_f32 = tmp.join("turbo-f32.bin");
    model.write_ggml(&ggml_f32, GgmlType::F32).unwrap();
    let ggml_q8 = tmp.join("turbo-q8_0.bin");
    model.write_ggml(&ggml_q8, GgmlType::Q8_0).unwrap();
    let hf = tmp.join("turbo-hf");
    model.write_safetensors(&hf, WriteType::F32).unwrap();

    let samples = jfk();
    // A random model writes garbage: one temperature keeps the test fast (no fallback).
    let opts = TranscribeOptions {
        temperatures: vec![0.0],
        ..TranscribeOptions::default()
    };
    let mut timelines = Vec::new();
    for (i, path) in [&ggml_f32, &hf, &ggml_q8].into_iter().enumerate() {
        let m = load(path);
        let d = &m.dims;
        assert_eq!(
            (
                d.n_mels,
                d.n_vocab,
                d.n_audio_layer,
                d.n_text_layer,
                d.n_audio_state,
                d.n_text_head
            ),
            (128, 51866, 2, 4, 64, 2),
            "{}",
            path.display()
        );
        let s = &m.tokenizer.specials;
        assert_eq!(
            (
                s.eot,
                s.sot,
                s.translate,
                s.transcribe,
                s.no_timestamps,
                s.timestamp_begin
            ),
            (50257, 50258, 50359, 50360, 50364, 50365)
        );
        assert_eq!(m.tokenizer.language_token("yue"), Some(50358));
        assert!(m.is_multilingual());
        // Default alignment heads: every head of the last two decoder layers.
        assert_eq!(m.alignment_heads, vec![(2, 0), (2, 1), (3, 0), (3, 1)]);
        let first = transcribe_with(Arc::clone(&m), &samples, opts.clone());
        if i == 0 {
            let again = transcribe_with(m, &samples, opts.clone());
            assert_eq!(timeline(&first), timeline(&again), "deterministic");
        }
        // Times come from the model's timestamp tokens: ordered, within the one 30 s window
        // (a random model may place them past the 11 s of audio).
        let mut prev_end = 0.0;
        for seg in &first {
            assert!(
                seg.start >= prev_end - 1e-6 && seg.end >= seg.start && seg.end <= 30.0 + 1e-6,
                "{}: segment [{} -> {}] after {prev_end}",
                path.display(),
                seg.start,
                seg.end
            );
            assert!(seg.tokens.iter().all(|&t| t < 50257), "text tokens only");
            prev_end = seg.end;
        }
        timelines.push(timeline(&first));
    }
    // The f32 GGML file and the f32 checkpoint hold the same numbers.
    assert_eq!(
        timelines[0], timelines[1],
        "GGML f32 and safetensors f32 agree"
    );
}

/// The files name and shape tensors as whisper.cpp's loader (`whisper_model_load`) and
/// transformers' `WhisperForConditionalGeneration` expect, and the fused CTranslate2 tensors are
/// split in Q, K, V order (a round trip alone would not see a consistent mix-up).
#[test]
fn exported_names_and_shapes_follow_whisper_cpp_and_transformers() {
    let tmp = TempDir::new("names");
    let model = turbo();
    let (d, v, m) = (64usize, 51866usize, 128usize);
    let path = tmp.join("turbo.bin");
    model.write_ggml(&path, GgmlType::F16).unwrap();
    let file = GgmlFile::open(&path).unwrap();
    use gstwhispernpu::model::source::OpenaiTensors;
    // (name, shape outermost first = whisper.cpp's extents reversed, type)
    let expected: [(&str, Vec<usize>, GgmlType); 12] = [
        ("encoder.positional_embedding", vec![1500, d], GgmlType::F32),
        ("encoder.conv1.weight", vec![d, m, 3], GgmlType::F16),
        ("encoder.conv1.bias", vec![d, 1], GgmlType::F32),
        ("encoder.conv2.weight", vec![d, d, 3], GgmlType::F16),
        ("encoder.ln_post.weight", vec![d], GgmlType::F32),
        (
            "encoder.blocks.1.attn.key.weight",
            vec![d, d],
            GgmlType::F16,
        ),
        (
            "encoder.blocks.1.mlp.0.weight",
            vec![4 * d, d],
            GgmlType::F16,
        ),
        ("encoder.blocks.1.mlp_ln.bias", vec![d], GgmlType::F32),
        ("decoder.token_embedding.weight", vec![v, d], GgmlType::F16),
        ("decoder.positional_embedding", vec![448, d], GgmlType::F32),
        (
            "decoder.blocks.3.cross_attn.value.bias",
            vec![d],
            GgmlType::F32,
        ),
        (
            "decoder.blocks.3.cross_attn_ln.weight",
            vec![d],
            GgmlType::F32,
        ),
    ];
    for (name, shape, ty) in expected {
        assert_eq!(file.shape(name), Some(shape), "{name}");
        assert_eq!(file.tensor_type(name), Some(ty), "{name}");
    }
    // The tensors whisper.cpp creates: 15 per encoder layer, 24 per decoder layer, 7 more in
    // the encoder and 4 in the decoder (it fails on a missing or extra one); keys have no bias.
    assert_eq!(file.names.len(), 7 + 4 + 15 * 2 + 24 * 4);
    assert!(file.shape("encoder.blocks.0.attn.key.bias").is_none());
    assert!(file.shape("decoder.blocks.0.cross_attn.key.bias").is_none());

    // Q, K, V order of the fused weights: the exported key is rows d..2d of the fused QKV.
    let openai: std::collections::HashMap<&str, &Vec<f32>> = model
        .tensors
        .iter()
        .map(|(n, _, data)| (n.as_str(), data))
        .collect();
    let ct2_dir = common::model_dir("tiny.en");
    let ct2 = gstwhispernpu::model::ct2::Ct2File::open(&ct2_dir.join("model.bin")).unwrap();
    let tiny = ExportModel::read(&ct2_dir).unwrap();
    let exported = |name: &str| {
        let (_, _, data) = tiny.tensors.iter().find(|(n, _, _)| n == name).unwrap();
        data.clone()
    };
    let ds = 384;
    let qkv = ct2
        .tensor(
            "encoder/layer_2/self_attention/linear_0/weight",
            &[3 * ds, ds],
        )
        .unwrap();
    assert_eq!(
        exported("encoder.blocks.2.attn.query.weight"),
        qkv[..ds * ds]
    );
    assert_eq!(
        exported("encoder.blocks.2.attn.key.weight"),
        qkv[ds * ds..2 * ds * ds]
    );
    assert_eq!(
        exported("encoder.blocks.2.attn.value.weight"),
        qkv[2 * ds * ds..]
    );
    let kv_bias = ct2
        .tensor("decoder/layer_1/attention/linear_1/bias", &[2 * ds])
        .unwrap();
    assert!(
        kv_bias[..ds].iter().all(|&b| b == 0.0),
        "zero key bias first"
    );
    assert_eq!(
        exported("decoder.blocks.1.cross_attn.value.bias"),
        kv_bias[ds..]
    );
    assert!(
        !tiny
            .tensors
            .iter()
            .any(|(n, _, _)| n == "decoder.blocks.1.cross_attn.key.bias")
    );

    let hf = tmp.join("hf");
    model.write_safetensors(&hf, WriteType::F32).unwrap();
    let bytes = std::fs::read(hf.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let tensor = |name: &str| -> Vec<f32> {
        let t = &header[name];
        let [b, e] = [0, 1].map(|i| t["data_offsets"][i].as_u64().unwrap() as usize);
        data[b..e]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    for (hf_name, openai_name, shape) in [
        (
            "model.encoder.conv1.weight",
            "encoder.conv1.weight",
            vec![d, m, 3],
        ),
        (
            "model.encoder.embed_positions.weight",
            "encoder.positional_embedding",
            vec![1500, d],
        ),
        (
            "model.encoder.layers.1.self_attn.k_proj.weight",
            "encoder.blocks.1.attn.key.weight",
            vec![d, d],
        ),
        (
            "model.encoder.layers.1.self_attn.out_proj.bias",
            "encoder.blocks.1.attn.out.bias",
            vec![d],
        ),
        (
            "model.encoder.layers.1.fc2.weight",
            "encoder.blocks.1.mlp.2.weight",
            vec![d, 4 * d],
        ),
        (
            "model.encoder.layers.1.final_layer_norm.weight",
            "encoder.blocks.1.mlp_ln.weight",
            vec![d],
        ),
        (
            "model.encoder.layer_norm.bias",
            "encoder.ln_post.bias",
            vec![d],
        ),
        (
            "model.decoder.embed_tokens.weight",
            "decoder.token_embedding.weight",
            vec![v, d],
        ),
        (
            "model.decoder.layers.2.encoder_attn.v_proj.weight",
            "decoder.blocks.2.cross_attn.value.weight",
            vec![d, d],
        ),
        (
            "model.decoder.layers.2.encoder_attn_layer_norm.bias",
            "decoder.blocks.2.cross_attn_ln.bias",
            vec![d],
        ),
        (
            "model.decoder.layers.2.self_attn_layer_norm.weight",
            "decoder.blocks.2.attn_ln.weight",
            vec![d],
        ),
        (
            "model.decoder.layer_norm.weight",
            "decoder.ln.weight",
            vec![d],
        ),
    ] {
        assert_eq!(
            header[hf_name]["shape"],
            serde_json::json!(shape),
            "{hf_name}"
        );
        assert_eq!(
            &tensor(hf_name),
            openai[openai_name],
            "{hf_name} holds {openai_name}"
        );
    }
    assert!(
        header
            .get("model.encoder.layers.0.self_attn.k_proj.bias")
            .is_none()
    );
}
