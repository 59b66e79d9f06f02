//! The ONNX Runtime engine (`backend=onnx`) on exports written by `scripts/export-onnx`: the same
//! text as the native engine, the same encoder output, every decoder layout, word timing, live
//! mode, a GStreamer pipeline, the OpenVINO execution provider, and errors that name the file.
//! CPU provider unless noted.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use gstwhispernpu::audio::N_FRAMES;
use gstwhispernpu::audio::mel::{MelFrontend, MelStream};
use gstwhispernpu::engine::onnx::{OnnxOptions, Provider};
use gstwhispernpu::engine::{
    ComputeType, EngineKind, LoadOptions, WhisperModel, load_shared_opts, load_shared_with,
};
use gstwhispernpu::transcribe::{LiveOptions, LiveTranscriber, TranscribeOptions, Transcriber};

/// The native engine in f32, as the float32 ONNX graphs compute.
fn native(name: &str) -> Arc<WhisperModel> {
    load_shared_with(name, ComputeType::F32).expect("native model")
}

fn onnx_opts(provider: Provider) -> LoadOptions {
    LoadOptions {
        engine: EngineKind::Onnx(OnnxOptions {
            provider,
            ..OnnxOptions::default()
        }),
        ..LoadOptions::default()
    }
}

fn onnx_model(dir: &Path) -> Arc<WhisperModel> {
    common::fetch_runtime();
    load_shared_opts(dir.to_str().unwrap(), &onnx_opts(Provider::Cpu))
        .unwrap_or_else(|e| panic!("cannot load the ONNX export {}: {e}", dir.display()))
}

/// The default export (every decoder file; the merged decoder is used).
fn export(model: &str) -> PathBuf {
    common::onnx_export(model, model, &[])
}

fn jfk() -> Vec<f32> {
    common::read_wav(&common::jfk_wav()).0
}

fn transcribe(model: Arc<WhisperModel>, audio: &[f32], opts: TranscribeOptions) -> String {
    let mut t = Transcriber::new(model, opts).expect("transcriber");
    let mut segments = t.push(audio).expect("push");
    segments.extend(t.finish().expect("finish"));
    segments
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn en() -> TranscribeOptions {
    TranscribeOptions {
        language: Some("en".into()),
        ..TranscribeOptions::default()
    }
}

#[test]
fn jfk_text_and_encoder_output_equal_the_native_engines_tiny_en_and_base() {
    let audio = jfk();
    for name in ["tiny.en", "base"] {
        let native = native(name);
        let onnx = onnx_model(&export(name));
        assert!(
            onnx.engine_description().contains("CPUExecutionProvider"),
            "{}",
            onnx.engine_description()
        );
        let (a, b) = (
            transcribe(native.clone(), &audio, en()),
            transcribe(onnx.clone(), &audio, en()),
        );
        eprintln!("{name}: native `{a}`\n{name}: onnx   `{b}`");
        assert_eq!(a, b, "{name}: the ONNX engine's jfk text differs");

        // The encoders on jfk's window.
        let n_mels = native.dims.n_mels;
        let mut stream = MelStream::new(Arc::new(MelFrontend::new(n_mels)));
        stream.push(&audio);
        stream.finish();
        let mut mel = vec![0.0; n_mels * N_FRAMES];
        stream.window(0, stream.frames_available().min(N_FRAMES), 0.0, &mut mel);
        let size = native.dims.n_audio_ctx * native.dims.n_audio_state;
        let (mut x, mut y) = (vec![0.0; size], vec![0.0; size]);
        native.new_encoder().encode(&mel, &mut x, 2).unwrap();
        onnx.new_encoder().encode(&mel, &mut y, 2).unwrap();
        let c = common::cosine(&x, &y);
        eprintln!("{name}: encoder output cosine {c:.7}");
        assert!(c >= 0.9999, "{name}: encoder cosine {c}");
    }
}

#[test]
fn every_decoder_layout_gives_the_same_jfk_text() {
    let audio = jfk();
    let reference = transcribe(native("tiny.en"), &audio, en());
    let split = common::onnx_export("tiny.en", "tiny.en-split", &["--layout", "split"]);
    // decoder_model.onnx alone (dynamic shapes, no KV cache).
    let alone = common::repo().join("target/onnx-export/tiny.en-decoder-only");
    let _ = std::fs::remove_dir_all(&alone);
    std::fs::create_dir_all(&alone).unwrap();
    for entry in std::fs::read_dir(&split).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "decoder_with_past_model.onnx" {
            std::fs::copy(entry.path(), alone.join(entry.file_name())).unwrap();
        }
    }
    let layouts = [
        ("merged", export("tiny.en")),
        ("split", split),
        ("decoder-only", alone),
        (
            "decoder-only",
            common::onnx_export("tiny.en", "tiny.en-static", &["--static"]),
        ),
    ];
    for (layout, dir) in layouts {
        let model = onnx_model(&dir);
        let description = model.engine_description();
        assert!(description.contains(layout), "{description}");
        let text = transcribe(model, &audio, en());
        eprintln!("{description}: {text}");
        assert_eq!(text, reference, "{}", dir.display());
    }
}

#[test]
fn multiwindow_wer_within_half_a_point_of_native() {
    let (audio, truth) = common::multiwindow_recording();
    for name in ["tiny.en", "base"] {
        let native = transcribe(native(name), &audio, en());
        let onnx = transcribe(onnx_model(&export(name)), &audio, en());
        let (a, b) = (
            common::wer_percent(&truth, &native),
            common::wer_percent(&truth, &onnx),
        );
        eprintln!("{name}: 111.9 s WER native {a:.2} %, onnx {b:.2} %");
        assert!(
            (a - b).abs() <= 0.5,
            "{name}: native {a:.2} %, onnx {b:.2} %"
        );
    }
}

#[test]
fn word_timestamps_and_live_mode_run_on_onnx() {
    let audio = jfk();
    let native = native("tiny.en");
    let onnx = onnx_model(&export("tiny.en"));
    let words = |model: Arc<WhisperModel>| {
        let mut t = Transcriber::new(
            model,
            TranscribeOptions {
                word_timestamps: true,
                ..en()
            },
        )
        .unwrap();
        let mut s = t.push(&audio).unwrap();
        s.extend(t.finish().unwrap());
        s.iter()
            .flat_map(|s| s.words.iter().map(|w| (w.text.clone(), w.start, w.end)))
            .collect::<Vec<_>>()
    };
    let (a, b) = (words(native.clone()), words(onnx.clone()));
    assert!(!b.is_empty(), "no words from the ONNX engine");
    assert_eq!(a.len(), b.len(), "{a:?}\n{b:?}");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0);
        assert!(
            (x.1 - y.1).abs() <= 0.04 && (x.2 - y.2).abs() <= 0.04,
            "word times differ: {x:?} {y:?}"
        );
    }

    // Live: the streaming policy on the ONNX engine (no VAD gate: every sample is speech).
    let mut engine = Transcriber::new(onnx, en()).unwrap();
    let mut live = LiveTranscriber::new(
        Box::new(gstwhispernpu::transcribe::AlwaysSpeech::default()),
        LiveOptions::for_latency(5.0),
    );
    let mut text = Vec::new();
    for chunk in audio.chunks(1600) {
        let out = live.push(&mut engine, chunk, false).unwrap();
        text.extend(out.segments.into_iter().map(|s| s.text));
    }
    let out = live.drain(&mut engine).unwrap();
    text.extend(out.segments.into_iter().map(|s| s.text));
    let text = text.join(" ");
    let offline = transcribe(native, &audio, en());
    let wer = common::wer_percent(&offline, &text);
    eprintln!("live onnx: {text} (WER {wer:.1} % against offline)");
    assert!(wer <= 10.0, "live on ONNX: {text}");
}

#[test]
fn element_backend_onnx_to_srtenc() {
    let dir = export("tiny.en");
    common::fetch_runtime();
    let srt = std::env::temp_dir().join(format!("whispernpu-onnx-{}.srt", std::process::id()));
    let out = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(
            format!(
                "filesrc location={} ! decodebin ! audioconvert ! audioresample ! whispernpu \
                 backend=onnx execution-provider=cpu model={} ! srtenc ! filesink location={}",
                common::jfk_wav().display(),
                dir.display(),
                srt.display()
            )
            .split_whitespace(),
        )
        .env("GST_PLUGIN_PATH", common::repo().join("target/release"))
        .output()
        .expect("gst-launch-1.0");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&srt).unwrap();
    std::fs::remove_file(&srt).ok();
    eprintln!("{text}");
    assert!(text.starts_with("1\n00:00:0"), "{text}");
    assert!(
        text.contains("ask not what your country can do for you"),
        "{text}"
    );
}

/// The CLI on an export with `env` and flags; returns (status code, stdout, stderr).
fn cli(dir: &Path, env: &[(&str, &Path)], flags: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(common::example_bin("transcribe"));
    cmd.args(["-q", "--language", "en", "--backend", "onnx"])
        .args(flags)
        .arg("--model")
        .arg(dir)
        .arg(common::jfk_wav());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("transcribe");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The ONNX Runtime library with the OpenVINO provider (`scripts/fetch-openvino`: the
/// `onnxruntime-openvino` wheel's, fetched once).
fn openvino_library() -> PathBuf {
    let out = Command::new("bash")
        .arg(common::repo().join("scripts/fetch-openvino"))
        .output()
        .expect("scripts/fetch-openvino");
    assert!(
        out.status.success(),
        "scripts/fetch-openvino failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn openvino_provider_gives_the_same_text() {
    let dir = export("tiny.en");
    let lib = openvino_library();
    let reference = transcribe(native("tiny.en"), &jfk(), en());
    let (code, stdout, stderr) = cli(
        &dir,
        &[("ORT_DYLIB_PATH", &lib)],
        &["--execution-provider", "openvino"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), reference, "{stderr}");
}

#[test]
fn missing_provider_and_bad_onnx_files_are_named() {
    let good = export("tiny.en");
    common::fetch_runtime();
    // A provider the default ONNX Runtime (CPU only) lacks.
    let (code, _, stderr) = cli(&good, &[], &["--execution-provider", "cuda"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("execution provider `cuda` (CUDAExecutionProvider)")
            && stderr.contains("libonnxruntime.so")
            && stderr.contains("lacks it"),
        "{stderr}"
    );

    let dir = common::repo().join("target/onnx-export/bad");
    let reset = || {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "vocabulary.txt",
        ] {
            std::fs::copy(good.join(f), dir.join(f)).unwrap();
        }
    };
    // No decoder.
    reset();
    std::fs::copy(
        good.join("encoder_model.onnx"),
        dir.join("encoder_model.onnx"),
    )
    .unwrap();
    let (code, _, stderr) = cli(&dir, &[], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("decoder_model_merged.onnx or decoder_model.onnx"),
        "{stderr}"
    );
    // An encoder with other input names (Silero VAD's network in its place).
    std::fs::copy(
        common::repo().join("models/silero-vad/silero_vad.onnx"),
        dir.join("encoder_model.onnx"),
    )
    .unwrap();
    std::fs::copy(
        good.join("decoder_model_merged.onnx"),
        dir.join("decoder_model_merged.onnx"),
    )
    .unwrap();
    let (code, _, stderr) = cli(&dir, &[], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("encoder_model.onnx") && stderr.contains("no input `input_features`"),
        "{stderr}"
    );
    // A truncated decoder.
    reset();
    std::fs::copy(
        good.join("encoder_model.onnx"),
        dir.join("encoder_model.onnx"),
    )
    .unwrap();
    let bytes = std::fs::read(good.join("decoder_model_merged.onnx")).unwrap();
    std::fs::write(
        dir.join("decoder_model_merged.onnx"),
        &bytes[..bytes.len() / 3],
    )
    .unwrap();
    let (code, _, stderr) = cli(&dir, &[], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("decoder_model_merged.onnx")
            && stderr.contains("ONNX Runtime cannot load it"),
        "{stderr}"
    );
    // The native engine on an export: a pointer to backend=onnx.
    let (code, _, stderr) = {
        let out = Command::new(common::example_bin("transcribe"))
            .args(["-q", "--model"])
            .arg(&good)
            .arg(common::jfk_wav())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::new(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--backend onnx"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `backend=auto` (the default) chooses the NPU, then ONNX Runtime with an accelerator when the
/// model directory holds an export, then the native engine, and posts what it chose and why
/// (`whispernpu-backend`). One `gst-launch-1.0 -m` per case: ONNX Runtime is loaded once per
/// process, so each library needs its own. No NPU here: the note says so in every case.
#[test]
fn backend_auto_chooses_in_order_and_posts_why() {
    let export = export("tiny.en");
    common::fetch_runtime();
    let openvino = openvino_library();
    let chosen = |model: &Path, ort: Option<&Path>| -> String {
        let mut cmd = Command::new("gst-launch-1.0");
        cmd.arg("-m")
            .args(
                format!(
                    "filesrc location={} ! decodebin ! audioconvert ! audioresample ! \
                     whispernpu model={} language-code=en ! fakesink",
                    common::jfk_wav().display(),
                    model.display()
                )
                .split_whitespace(),
            )
            .env("GST_PLUGIN_PATH", common::repo().join("target/release"));
        if let Some(lib) = ort {
            cmd.env("ORT_DYLIB_PATH", lib);
        }
        let out = cmd.output().expect("gst-launch-1.0");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // gst-launch-1.0 escapes the structure's spaces and punctuation with backslashes.
        stdout
            .lines()
            .find(|l| l.contains("whispernpu-backend"))
            .unwrap_or_else(|| panic!("no whispernpu-backend message:\n{stdout}"))
            .replace('\\', "")
    };
    // A CTranslate2 model: the native engine.
    let native = chosen(&common::model_dir("tiny.en"), None);
    eprintln!("{native}");
    assert!(native.contains("backend=(string)cpu"), "{native}");
    assert!(native.contains("amdxdna"), "the NPU probe's note: {native}");
    // An export and a CPU-only ONNX Runtime: the export is all the model has.
    let cpu_only = chosen(&export, None);
    eprintln!("{cpu_only}");
    assert!(cpu_only.contains("backend=(string)onnx"), "{cpu_only}");
    assert!(cpu_only.contains("no accelerator"), "{cpu_only}");
    // An export and ONNX Runtime with OpenVINO (an accelerator provider): ONNX Runtime on it.
    let accelerated = chosen(&export, Some(&openvino));
    eprintln!("{accelerated}");
    assert!(
        accelerated.contains("backend=(string)onnx"),
        "{accelerated}"
    );
    assert!(
        accelerated.contains("OpenVINOExecutionProvider"),
        "{accelerated}"
    );
}
