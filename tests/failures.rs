//! What bad input and internal failures give: the element's ERROR message (and a pipeline that
//! ends), the CLI's one line and exit status 1; never a panic reaching the user, never a hang.
//!
//! Panics are injected with the fault points of `gstwhispernpu::fault` (`WHISPERNPU_TEST_FAULT`
//! for child processes, `fault::set` in this process); the tests of this file take turns, as the
//! in-process setting is global.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstwhispernpu::engine::WhisperModel;
use gstwhispernpu::fault;
use gstwhispernpu::model::export::ExportModel;
use gstwhispernpu::model::safetensors::WriteType;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    fault::set(&[]);
    guard
}

use common::gst_init as init;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("whispernpu-fail-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The directory of the built plugin (`cargo build --release`), for `gst-launch-1.0`.
fn plugin_dir() -> PathBuf {
    let dir = common::repo().join("target/release");
    assert!(
        dir.join("libgstwhispernpu.so").is_file(),
        "{}/libgstwhispernpu.so is missing: run `cargo build --release` first (scripts/test does)",
        dir.display()
    );
    dir
}

struct Run {
    /// `None`: killed after the timeout.
    status: Option<std::process::ExitStatus>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs `cmd`, killing it after `timeout`.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Run {
    let start = Instant::now();
    let mut child = cmd
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// `gst-launch-1.0 ARGS` with the built plugin, killed after `timeout`.
fn gst_launch(args: &str, env: &[(&str, &str)], timeout: Duration) -> Run {
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.args(args.split_whitespace())
        .env("GST_PLUGIN_PATH", plugin_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, timeout)
}

/// The CLI in quiet mode (`-q`: no progress or information lines), so that stderr holds only
/// what went wrong.
fn transcribe_cli(model: &Path, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(common::example_bin("transcribe"));
    cmd.arg("-q")
        .arg("--model")
        .arg(model)
        .arg(common::jfk_wav());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, Duration::from_secs(120))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A copy of tiny.en in a fresh directory `name`, its `model.bin` handed to `edit`.
fn edited_tiny(name: &str, edit: impl FnOnce(&std::fs::File)) -> PathBuf {
    let dir = temp_dir(name);
    copy_dir(&common::model_dir("tiny.en"), &dir);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("model.bin"))
        .unwrap();
    edit(&f);
    dir
}

/// tiny.en with `model.bin` truncated to 30 000 000 bytes.
fn truncated_model() -> PathBuf {
    edited_tiny("truncated", |f| f.set_len(30_000_000).unwrap())
}

/// tiny.en with 8 bytes of 0xff (four f16 NaNs) written into its token embedding.
fn nan_model() -> PathBuf {
    use std::os::unix::fs::FileExt;
    edited_tiny("nan", |f| f.write_all_at(&[0xff; 8], 20_000_000).unwrap())
}

/// tiny.en re-written as CTranslate2 with only the first 750 audio positions.
fn short_context_model() -> PathBuf {
    let dir = temp_dir("ctx750");
    let mut model = ExportModel::read(&common::model_dir("tiny.en")).expect("read tiny.en");
    let d = model.dims.n_audio_state;
    model.dims.n_audio_ctx = 750;
    let pos = model
        .tensors
        .iter_mut()
        .find(|(name, _, _)| name == "encoder.positional_embedding")
        .expect("positional embedding");
    pos.1 = vec![750, d];
    pos.2.truncate(750 * d);
    model.write_ct2(&dir, WriteType::F16).expect("write ct2");
    dir
}

/// A pipeline's ERROR messages, its Progress messages, and whether it ended (ERROR or EOS)
/// within `timeout` of PLAYING.
struct Watched {
    errors: Vec<(String, Instant)>,
    progress: Vec<(gst::ProgressType, String)>,
    eos: bool,
}

fn watch(pipeline: &gst::Element, timeout: Duration) -> Watched {
    let bus = pipeline.bus().unwrap();
    let start = Instant::now();
    let mut w = Watched {
        errors: Vec::new(),
        progress: Vec::new(),
        eos: false,
    };
    while start.elapsed() < timeout {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(50)) else {
            if !w.errors.is_empty() {
                break;
            }
            continue;
        };
        match msg.view() {
            gst::MessageView::Error(e) => w.errors.push((e.error().to_string(), Instant::now())),
            gst::MessageView::Progress(p) => {
                let (kind, _code, text) = p.get();
                w.progress.push((kind, text.to_string()));
            }
            gst::MessageView::Eos(_) => {
                w.eos = true;
                break;
            }
            _ => {}
        }
    }
    w
}

#[test]
fn truncated_model_gst_launch_ends_with_the_error_every_time() {
    let _serial = serial();
    let dir = truncated_model();
    let runs = 60;
    let mut slowest = Duration::ZERO;
    for i in 0..runs {
        let run = gst_launch(
            &format!(
                "-q audiotestsrc num-buffers=50 ! audio/x-raw,rate=16000,channels=1 ! whispernpu model={} ! fakesink",
                dir.display()
            ),
            &[],
            Duration::from_secs(20),
        );
        let status = run
            .status
            .unwrap_or_else(|| panic!("run {i} of {runs} hung (killed after 20 s)"));
        assert!(!status.success(), "run {i}: exit status 0");
        assert!(
            run.stderr.contains("model.bin is truncated"),
            "run {i}: the error does not say the file is truncated: {}",
            run.stderr
        );
        slowest = slowest.max(run.elapsed);
    }
    eprintln!(
        "{runs} runs of gst-launch-1.0 on a truncated model: all ended with the error, slowest {slowest:?}"
    );
}

#[test]
fn model_with_another_audio_context_is_refused_at_load() {
    let _serial = serial();
    let dir = short_context_model();
    let expected = "model.bin is corrupt: encoder/position_encodings/encodings has 750 rows, \
                    Whisper needs 1500";
    let err = WhisperModel::load(&dir)
        .err()
        .expect("a 750-position model must be refused")
        .to_string();
    assert!(err.contains(expected), "library: {err}");

    let cli = transcribe_cli(&dir, &[]);
    assert_eq!(cli.status.and_then(|s| s.code()), Some(1), "{}", cli.stderr);
    assert!(cli.stderr.contains(expected), "CLI: {}", cli.stderr);
    assert_eq!(cli.stderr.trim().lines().count(), 1, "CLI: {}", cli.stderr);

    let run = gst_launch(
        &format!(
            "-q audiotestsrc num-buffers=50 ! audio/x-raw,rate=16000,channels=1 ! whispernpu model={} ! fakesink",
            dir.display()
        ),
        &[],
        Duration::from_secs(20),
    );
    assert!(run.status.is_some_and(|s| !s.success()), "{}", run.stderr);
    assert!(run.stderr.contains(expected), "element: {}", run.stderr);
}

#[test]
fn weights_holding_nan_are_refused_naming_the_tensor() {
    let _serial = serial();
    let dir = nan_model();
    let expected = "weight `decoder/embeddings/weight` holds 4 non-finite values";
    let cli = transcribe_cli(&dir, &[]);
    assert_eq!(cli.status.and_then(|s| s.code()), Some(1), "{}", cli.stderr);
    assert!(cli.stderr.contains(expected), "CLI: {}", cli.stderr);
    assert!(
        !cli.stdout.contains("fellow"),
        "CLI transcribed: {}",
        cli.stdout
    );

    // The element: found by the loader thread; READY→PAUSED fails with it, again at a retry.
    init();
    let pipeline = gst::parse::launch(&format!(
        "audiotestsrc num-buffers=50 ! audio/x-raw,rate=16000,channels=1 ! whispernpu model={} ! fakesink",
        dir.display()
    ))
    .unwrap();
    for attempt in 0..2 {
        assert!(
            pipeline.set_state(gst::State::Paused).is_err(),
            "attempt {attempt}: PAUSED with a NaN model"
        );
        let w = watch(&pipeline, Duration::from_secs(5));
        assert_eq!(w.errors.len(), 1, "attempt {attempt}: {:?}", w.errors);
        assert!(w.errors[0].0.contains(expected), "{:?}", w.errors);
        pipeline.set_state(gst::State::Null).unwrap();
    }
}

#[test]
fn loader_panic_is_an_element_error_and_the_pipeline_ends() {
    let _serial = serial();
    init();
    fault::set(&["load"]);
    let pipeline = gst::parse::launch(
        "audiotestsrc num-buffers=50 ! audio/x-raw,rate=16000,channels=1 ! whispernpu model=tiny.en ! fakesink",
    )
    .unwrap();
    let failed = pipeline.set_state(gst::State::Paused).is_err();
    let w = watch(&pipeline, Duration::from_secs(10));
    fault::set(&[]);
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        failed,
        "the state change succeeded despite the loader panic"
    );
    let (message, at) = w.errors.first().expect("an ERROR message").clone();
    assert!(
        message.contains("the model loader thread panicked: fault injected at `load`"),
        "{message}"
    );
    let hit = fault::last_hit().expect("the fault point was hit");
    assert!(
        at.duration_since(hit) < Duration::from_secs(2),
        "ERROR {:?} after the panic",
        at.duration_since(hit)
    );
    assert!(
        w.progress
            .iter()
            .any(|(k, _)| *k == gst::ProgressType::Start),
        "{:?}",
        w.progress
    );
    assert!(
        w.progress
            .iter()
            .any(|(k, t)| *k == gst::ProgressType::Error && t.contains("panicked")),
        "no Progress ERROR: {:?}",
        w.progress
    );

    // gst-launch-1.0 ends too, every time (the error fails the state change, so it never
    // waits in its main loop).
    for i in 0..10 {
        let run = gst_launch(
            "audiotestsrc num-buffers=50 ! audio/x-raw,rate=16000,channels=1 ! whispernpu model=tiny.en ! fakesink",
            &[("WHISPERNPU_TEST_FAULT", "load")],
            Duration::from_secs(20),
        );
        let status = run.status.unwrap_or_else(|| panic!("run {i} hung"));
        assert!(!status.success());
        assert!(
            run.stderr.contains("the model loader thread panicked"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn worker_panic_is_an_element_error_and_the_pipeline_ends() {
    let _serial = serial();
    init();
    fault::set(&["decode"]);
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! decodebin ! audioconvert ! audioresample ! whispernpu model=tiny.en ! appsink name=sink sync=false",
        common::jfk_wav().display()
    ))
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let w = watch(&pipeline, Duration::from_secs(60));
    let sink = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    // The EOS the worker was draining for still reaches downstream.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sink.is_eos() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let eos = sink.is_eos();
    let t_null = Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    let null_took = t_null.elapsed();
    fault::set(&[]);
    let (message, at) = w
        .errors
        .first()
        .expect("an ERROR message within 60 s")
        .clone();
    assert!(
        message.contains("Internal error in the whispernpu worker")
            && message.contains("fault injected at `decode`"),
        "{message}"
    );
    let hit = fault::last_hit().expect("the fault point was hit");
    assert!(at.duration_since(hit) < Duration::from_secs(2));
    assert!(eos, "EOS did not reach the sink after the worker's panic");
    assert!(
        null_took < Duration::from_secs(5),
        "NULL took {null_took:?}"
    );

    // gst-launch-1.0 ends with the error.
    let run = gst_launch(
        &format!(
            "-q filesrc location={} ! decodebin ! audioconvert ! audioresample ! whispernpu model=tiny.en ! fakesink",
            common::jfk_wav().display()
        ),
        &[("WHISPERNPU_TEST_FAULT", "decode")],
        Duration::from_secs(60),
    );
    let status = run
        .status
        .expect("gst-launch-1.0 hung after the worker's panic");
    assert!(!status.success());
    assert!(
        run.stderr
            .contains("Internal error in the whispernpu worker while handling"),
        "{}",
        run.stderr
    );
}

#[test]
fn cli_panic_is_one_line_and_status_1() {
    let _serial = serial();
    let tiny = common::model_dir("tiny.en");
    for point in ["load", "decode"] {
        let run = transcribe_cli(&tiny, &[("WHISPERNPU_TEST_FAULT", point)]);
        assert_eq!(
            run.status.and_then(|s| s.code()),
            Some(1),
            "{point}: {}",
            run.stderr
        );
        let lines: Vec<&str> = run.stderr.trim().lines().collect();
        assert_eq!(lines.len(), 1, "{point}: {}", run.stderr);
        assert!(
            lines[0].starts_with("transcribe: internal error: fault injected at")
                && lines[0].contains(" at src/"),
            "{point}: {}",
            lines[0]
        );
        assert!(run.stdout.is_empty(), "{point}: {}", run.stdout);
    }
}

#[test]
fn cli_bad_input_is_one_line_naming_the_cause() {
    let _serial = serial();
    let tiny = common::model_dir("tiny.en");
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(common::example_bin("transcribe"));
        cmd.args(args);
        run_with_timeout(cmd, Duration::from_secs(60))
    };
    let jfk = common::jfk_wav();
    let jfk = jfk.to_str().unwrap();
    let tiny = tiny.to_str().unwrap();
    for (args, code, expected) in [
        (
            vec!["--model", tiny, "--beam-size", "0", jfk],
            2,
            "invalid option `beam-size`: 0 is outside 1..=16",
        ),
        (
            vec!["--model", tiny, "--compute-type", "fp8", jfk],
            2,
            "--compute-type: unknown compute type `fp8`",
        ),
        (
            vec!["--model", tiny, "--task", "translate", jfk],
            2,
            "translate",
        ),
        (
            vec!["--model", tiny, "/nonexistent/talk.wav"],
            1,
            "transcribe: no such file: /nonexistent/talk.wav",
        ),
        (
            vec!["--model", "/nonexistent/model", jfk],
            1,
            "cannot load model /nonexistent/model: model file not found: /nonexistent/model",
        ),
    ] {
        let run = cli(&args);
        assert_eq!(
            run.status.and_then(|s| s.code()),
            Some(code),
            "{args:?}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.starts_with("transcribe: "),
            "{args:?}: {}",
            run.stderr
        );
    }
}

/// The CLI's decoding knobs: `--suppress-tokens` reaches the decoder (base writes jfk.wav
/// without its commas when "," is suppressed); values that are not what a flag takes exit
/// with status 2 and name the flag.
#[test]
fn cli_decoding_knobs_reach_the_decoder_and_bad_values_are_named() {
    let model = common::model_dir("base");
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(common::example_bin("transcribe"));
        cmd.arg("-q")
            .arg("--model")
            .arg(&model)
            .args(args)
            .arg(common::jfk_wav());
        run_with_timeout(cmd, Duration::from_secs(120))
    };
    let plain = cli(&[]);
    assert!(
        plain.status.is_some_and(|s| s.success()),
        "{}",
        plain.stderr
    );
    // Commas to suppress (base writes one or two here, depending on the compute type).
    assert!(plain.stdout.contains(','), "{}", plain.stdout);
    let comma = gstwhispernpu::engine::load_shared(model.to_str().unwrap())
        .unwrap()
        .tokenizer
        .encode(",");
    let list = format!("-1,{}", comma[0]);
    let without = cli(&["--suppress-tokens", &list, "--suppress-blank", "true"]);
    assert!(
        without.status.is_some_and(|s| s.success()),
        "{}",
        without.stderr
    );
    assert!(!without.stdout.contains(','), "{}", without.stdout);
    for (flag, value) in [
        ("--suppress-tokens", "-1,comma"),
        ("--compression-ratio-threshold", "high"),
        ("--logprob-threshold", "nan"),
        ("--temperature-increment", "2"),
        ("--suppress-blank", "maybe"),
    ] {
        let run = cli(&[flag, value]);
        assert_eq!(
            run.status.and_then(|s| s.code()),
            Some(2),
            "{flag} {value}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(flag), "{flag} {value}: {}", run.stderr);
    }
}
