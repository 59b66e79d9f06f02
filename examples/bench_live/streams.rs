//! `--streams N`: N live `whispernpu` elements in one process (one model, loaded once and
//! shared), each in its own pipeline fed in real time from its own live source, started
//! `--stagger` seconds apart. Reports per stream the latency against the true end of the speech,
//! the WER, and the process's CPU cores per stream.
//!
//! Latency, three ways (the first two are measured against the audio, not against what the
//! element claims):
//!
//! * **sentence**: with a times file (`--times`, written by `scripts/synth-speech` with
//!   `SYNTH_TIMES`: the audio is sentences synthesised one by one and joined with known pauses),
//!   a sentence's latency is the arrival of the last of its words (text buffers aligned to the
//!   reference words by edit distance) minus the end of that sentence's speech (its last loud
//!   20 ms block within the sentence's own span);
//! * **pulled back**: a text buffer's claimed end (PTS + duration) is pulled back to the end of
//!   the speech when it falls in a pause found by energy in the audio itself (any recording);
//! * **own PTS**: arrival minus the claimed end, as the element states it: a cross-check only (an
//!   element that stretched its timestamps into the following pause would look faster).

use std::fmt::Write as _;

use super::*;

/// Peak level of a loud 20 ms block.
const LOUD: f32 = 0.003;
/// Quiet blocks (20 ms) that make a pause.
const PAUSE_BLOCKS: usize = 8;

pub(super) struct StreamsConfig {
    pub streams: usize,
    pub stagger: f64,
    pub times: Option<String>,
}

/// One sentence of the times file.
struct Sentence {
    /// End of its speech, seconds of audio.
    end: f64,
    words: usize,
}

/// The sentences of a times file (`start<TAB>end<TAB>text` per line); each sentence's speech end
/// is found in `samples` within its span.
fn read_times(path: &str, samples: &[f32]) -> Result<(Vec<Sentence>, String), Failure> {
    let body = std::fs::read_to_string(path)
        .map_err(|e| runtime(format!("cannot read times file {path}: {e}")))?;
    let mut sentences = Vec::new();
    let mut text = Vec::new();
    for (i, line) in body
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let mut f = line.splitn(3, '\t');
        let (Some(a), Some(b), Some(t)) = (f.next(), f.next(), f.next()) else {
            return Err(runtime(format!(
                "{path}:{}: expected start<TAB>end<TAB>text",
                i + 1
            )));
        };
        let parse = |v: &str| {
            v.trim()
                .parse::<f64>()
                .map_err(|_| runtime(format!("{path}:{}: `{v}` is not a time in seconds", i + 1)))
        };
        let (start, end) = (parse(a)?, parse(b)?);
        let from = ((start * SAMPLE_RATE as f64) as usize).min(samples.len());
        let to = ((end * SAMPLE_RATE as f64).ceil() as usize).min(samples.len());
        let speech_end = samples[from..to]
            .chunks(BLOCK)
            .rposition(|b| b.iter().any(|s| s.abs() >= LOUD))
            .map(|k| (from + (k + 1) * BLOCK).min(to) as f64 / SAMPLE_RATE as f64)
            .unwrap_or(end);
        sentences.push(Sentence {
            end: speech_end,
            words: common::normalized_words(t).len(),
        });
        text.push(t.trim().to_string());
    }
    if sentences.is_empty() {
        return Err(runtime(format!("times file {path} lists no sentence")));
    }
    Ok((sentences, text.join(" ")))
}

/// Pauses (start, end) in seconds: runs of at least [`PAUSE_BLOCKS`] quiet 20 ms blocks.
pub(super) fn pauses(samples: &[f32]) -> Vec<(f64, f64)> {
    let block_s = BLOCK as f64 / SAMPLE_RATE as f64;
    let mut out = Vec::new();
    let mut quiet_from: Option<usize> = None;
    let blocks: Vec<bool> = samples
        .chunks(BLOCK)
        .map(|b| b.iter().all(|s| s.abs() < LOUD))
        .collect();
    for (k, &quiet) in blocks.iter().chain([&false]).enumerate() {
        match (quiet, quiet_from) {
            (true, None) => quiet_from = Some(k),
            (false, Some(q)) => {
                if k - q >= PAUSE_BLOCKS || k == blocks.len() {
                    out.push((q as f64 * block_s, k as f64 * block_s));
                }
                quiet_from = None;
            }
            _ => {}
        }
    }
    out
}

/// The claimed end `end` (audio seconds), pulled back to the start of the pause it falls in.
fn pulled_back(end: f64, pauses: &[(f64, f64)]) -> f64 {
    pauses
        .iter()
        .find(|&&(a, b)| end > a && end <= b + 0.02)
        .map_or(end, |&(a, _)| a)
}

/// Per sentence, the arrival of the last of its words (None: no word of it arrived): reference
/// words aligned to the text buffers' words by edit distance (matches and substitutions).
fn sentence_arrivals(
    sentences: &[Sentence],
    reference: &str,
    texts: &[TextBuf],
) -> Vec<Option<f64>> {
    let r = common::normalized_words(reference);
    let mut owner = Vec::with_capacity(r.len());
    for (i, s) in sentences.iter().enumerate() {
        owner.extend(std::iter::repeat_n(i, s.words));
    }
    owner.resize(r.len(), sentences.len().saturating_sub(1));
    let mut h = Vec::new();
    let mut arrival = Vec::new();
    for t in texts {
        for w in common::normalized_words(&t.text) {
            h.push(w);
            arrival.push(t.arrival);
        }
    }
    let (n, m) = (r.len(), h.len());
    let mut d = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in 0..=n {
        d[at(i, 0)] = i as u32;
    }
    for j in 0..=m {
        d[at(0, j)] = j as u32;
    }
    for i in 1..=n {
        for j in 1..=m {
            let sub = d[at(i - 1, j - 1)] + u32::from(r[i - 1] != h[j - 1]);
            d[at(i, j)] = sub.min(d[at(i - 1, j)] + 1).min(d[at(i, j - 1)] + 1);
        }
    }
    let mut last = vec![None::<f64>; sentences.len()];
    let (mut i, mut j) = (n, m);
    while i > 0 && j > 0 {
        let sub = d[at(i - 1, j - 1)] + u32::from(r[i - 1] != h[j - 1]);
        if d[at(i, j)] == sub {
            let s = owner[i - 1];
            last[s] = Some(last[s].map_or(arrival[j - 1], |a: f64| a.max(arrival[j - 1])));
            i -= 1;
            j -= 1;
        } else if d[at(i, j)] == d[at(i - 1, j)] + 1 {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    last
}

/// CPU seconds (user + system) of this process so far.
fn cpu_seconds() -> Option<f64> {
    unsafe extern "C" {
        fn sysconf(name: i32) -> i64;
    }
    const SC_CLK_TCK: i32 = 2;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { sysconf(SC_CLK_TCK) };
    Some(ticks / if hz > 0 { hz as f64 } else { 100.0 })
}

/// The process's resident memory (VmRSS), MiB.
fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The larger of two optional values (either when the other is missing).
fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The running time at which the speech a text buffer covers ends: its claimed end (PTS +
/// duration), pulled back to the start of the pause it falls in; `t0` is the running time of
/// the first sample. `None` for a buffer without PTS or duration.
pub(super) fn pulled_end(t: &TextBuf, t0: f64, pauses: &[(f64, f64)]) -> Option<f64> {
    Some(t0 + pulled_back(t.pts? + t.duration? - t0, pauses))
}

/// Builds `appsrc ! whispernpu ! appsink` for one stream, READY (model loaded).
fn build_stream(
    config: &Config,
    model_name: &str,
    verbose_prefix: Option<String>,
) -> Result<(gst::Pipeline, gst_app::AppSrc, Arc<Shared>), Failure> {
    let element = gst::ElementFactory::make("whispernpu")
        .build()
        .map_err(|_| runtime("cannot create a whispernpu element (plugin not registered?)"))?;
    let set = |name: &str, value: &str| -> Result<(), Failure> {
        let v = property_value(&element, name, value).map_err(usage)?;
        element.set_property_from_value(name, &v);
        Ok(())
    };
    set("model", model_name)?;
    set("mode", "live")?;
    set("latency", &config.latency_ms.to_string())?;
    set("vad", &config.vad.to_string())?;
    set("partial-results", "false")?;
    for (name, value) in &config.sets {
        set(name, value)?;
    }
    let (pipeline, appsrc, appsink) = live_pipeline(&element)?;
    let shared = Arc::new(Shared::default());
    {
        let shared = Arc::clone(&shared);
        appsink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let Some(tb) = pull_text(sink)? else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    if let Some(prefix) = &verbose_prefix {
                        // After its own end: what the budget check below counts.
                        let own = tb.pts.zip(tb.duration).map(|(p, d)| tb.arrival - (p + d));
                        let _ = writeln!(
                            std::io::stderr(),
                            "{prefix} arrival {:8.3}  pts {:>8}  dur {:>6}  after its end {:>6}  {}",
                            tb.arrival,
                            fmt_opt(tb.pts, 3),
                            fmt_opt(tb.duration, 3),
                            fmt_opt(own, 3),
                            tb.text.trim()
                        );
                    }
                    lock(&shared.texts).push(tb);
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    }
    let bus = pipeline
        .bus()
        .ok_or_else(|| runtime("pipeline has no bus"))?;
    if pipeline.set_state(gst::State::Ready).is_err() {
        return Err(runtime(bus_error(&bus).unwrap_or_else(|| {
            format!("whispernpu refused to start (model {model_name})")
        })));
    }
    wait_model_loaded(&bus, model_name)?;
    Ok((pipeline, appsrc, shared))
}

/// Plays `samples` into `n` streams and reports; returns the JSON summary line.
pub(super) fn run_streams(
    config: &Config,
    sc: &StreamsConfig,
    source: &Source,
    model_name: &str,
) -> Result<String, Failure> {
    let samples = source
        .samples
        .clone()
        .ok_or_else(|| usage("--streams plays speech from a file, not --noise"))?;
    let default_times = (config.audio.is_none()).then(|| {
        repo()
            .join("target/bench-live/sentences.tsv")
            .display()
            .to_string()
    });
    let (sentences, times_text) = match sc.times.as_ref().or(default_times.as_ref()) {
        Some(p) => {
            let (s, t) = read_times(p, &samples)?;
            (Some(s), Some(t))
        }
        None => (None, None),
    };
    let reference = source.reference.clone().or(times_text);
    let pause_list = pauses(&samples);
    let model = gstwhispernpu::engine::load_shared(model_name)
        .map_err(|e| runtime(common::model_error(model_name, &e)))?;

    // Offline reference: the same model and audio, default options.
    let offline = offline_transcript(&model, &samples)?;

    let mut streams = Vec::new();
    for k in 0..sc.streams {
        let prefix = config.verbose.then(|| format!("[{k}]"));
        streams.push(build_stream(config, model_name, prefix)?);
    }
    let audio_seconds = samples.len() as f64 / SAMPLE_RATE as f64;
    log(format!(
        "bench_live: {model_name}, {} streams of {} ({audio_seconds:.1} s) started {:.2} s apart, \
         latency {} ms, in real time...",
        sc.streams, source.label, sc.stagger, config.latency_ms
    ));
    let cpu0 = cpu_seconds();
    let wall0 = Instant::now();
    let loadavg_start = loadavg();
    let mut feeders = Vec::new();
    for (k, (pipeline, appsrc, shared)) in streams.iter().enumerate() {
        if k > 0 {
            std::thread::sleep(Duration::from_secs_f64(sc.stagger));
        }
        if pipeline.set_state(gst::State::Playing).is_err() {
            return Err(runtime(format!("stream {k}: the pipeline failed to start")));
        }
        let clock = pipeline
            .clock()
            .ok_or_else(|| runtime("the pipeline has no clock"))?;
        let base_time = pipeline
            .base_time()
            .ok_or_else(|| runtime("the pipeline has no base time"))?;
        let (appsrc, shared) = (appsrc.clone(), Arc::clone(shared));
        let mut player = Player::Speech {
            samples: Arc::clone(&samples),
            passes: 1,
            gap: 0,
            pos: 0,
        };
        let handle = std::thread::Builder::new()
            .name(format!("bench-live-feeder-{k}"))
            .spawn(move || {
                let run = || feed(&appsrc, &clock, base_time, &mut player, 1.0, &shared);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(
                    |payload| {
                        let _ = appsrc.end_of_stream();
                        Err(format!(
                            "the feeder thread panicked: {}",
                            gstwhispernpu::error::panic_message(&*payload)
                        ))
                    },
                )
            })
            .map_err(|e| runtime(format!("cannot start a feeder thread: {e}")))?;
        feeders.push(handle);
    }

    // Wait for every stream's EOS (or an error).
    let deadline = Instant::now()
        + Duration::from_secs_f64(
            config.eos_timeout.unwrap_or(300.0 + 4.0 * audio_seconds)
                + sc.stagger * sc.streams as f64,
        );
    let mut done = vec![false; sc.streams];
    let mut warnings = vec![Vec::<String>::new(); sc.streams];
    // Audio each stream left out under overload (`whispernpu-skipped`), seconds.
    let mut skipped = vec![0.0f64; sc.streams];
    // The process's resident memory every 10 s: (seconds since the start, MiB).
    let mut rss = Vec::<(f64, f64)>::new();
    let mut next_rss = Instant::now();
    let mut failure = None;
    while done.iter().any(|d| !d) {
        if Instant::now() > deadline {
            failure = Some(format!(
                "streams {:?} did not reach EOS in time",
                done.iter()
                    .enumerate()
                    .filter(|(_, d)| !**d)
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>()
            ));
            break;
        }
        for (k, (pipeline, _, _)) in streams.iter().enumerate() {
            if done[k] {
                continue;
            }
            let Some(bus) = pipeline.bus() else { continue };
            while let Some(msg) = bus.timed_pop(ClockTime::from_mseconds(20)) {
                match msg.view() {
                    gst::MessageView::Eos(_) => {
                        done[k] = true;
                        break;
                    }
                    gst::MessageView::Error(e) => {
                        failure.get_or_insert_with(|| format!("stream {k}: {}", e.error()));
                        done[k] = true;
                        break;
                    }
                    gst::MessageView::Warning(w) => {
                        log(format!("warning: stream {k}: {}", w.error()));
                        warnings[k].push(w.error().to_string());
                    }
                    gst::MessageView::Element(e) => {
                        if let Some(s) = e.structure().filter(|s| s.name() == "whispernpu-skipped")
                            && let Ok(d) = s.get::<ClockTime>("duration")
                        {
                            skipped[k] += d.seconds_f64();
                        }
                    }
                    _ => {}
                }
            }
        }
        if Instant::now() >= next_rss {
            next_rss += Duration::from_secs(10);
            if let Some(mib) = rss_mib() {
                rss.push((wall0.elapsed().as_secs_f64(), mib));
            }
        }
        if failure.is_some() {
            break;
        }
    }
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = match (cpu0, cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    for (_, _, shared) in &streams {
        shared.stop.store(true, Ordering::SeqCst);
    }
    for (pipeline, _, _) in &streams {
        let _ = pipeline.set_state(gst::State::Null);
    }
    for f in feeders {
        let _ = f.join();
    }
    if let Some(f) = failure {
        return Err(runtime(format!("{model_name}: {f}")));
    }

    // Report.
    let offline_wer = reference
        .as_deref()
        .map(|r| common::wer_percent(r, &offline));
    let mut rows = Vec::new();
    let mut json_streams = Vec::new();
    let mut all_sentence = Vec::new();
    let (mut worst_p95, mut worst_wer) = (None::<f64>, None::<f64>);
    // The element's promise: text out within latency + lateness of the end of its audio.
    let lateness_ms = config
        .sets
        .iter()
        .rev()
        .find(|(k, _)| k == "lateness")
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let budget = (config.latency_ms as f64 + lateness_ms) / 1000.0;
    let (mut over_budget, mut buffers) = (0usize, 0usize);
    for (k, ((_, _, shared), warnings)) in streams.iter().zip(&warnings).enumerate() {
        let texts = lock(&shared.texts).clone();
        let t0 = lock(&shared.t0).map_or(0.0, |t| t as f64 / 1e9);
        let text = join_texts(texts.iter().map(|t| t.text.as_str()));
        let wer = reference.as_deref().map(|r| common::wer_percent(r, &text));
        let own: Vec<f64> = texts
            .iter()
            .filter_map(|t| Some(t.arrival - (t.pts? + t.duration?)))
            .collect();
        let pulled: Vec<f64> = texts
            .iter()
            .filter_map(|t| Some(t.arrival - pulled_end(t, t0, &pause_list)?))
            .collect();
        let (sentence, missed, in_order) = match (&sentences, &reference) {
            (Some(s), Some(r)) => {
                let arrivals = sentence_arrivals(s, r, &texts);
                let missed = arrivals.iter().filter(|a| a.is_none()).count();
                let lat: Vec<Option<f64>> = arrivals
                    .iter()
                    .zip(s)
                    .map(|(a, s)| a.map(|a| a - (t0 + s.end)))
                    .collect();
                (
                    Some(sorted(lat.iter().flatten().copied().collect())),
                    missed,
                    lat,
                )
            }
            _ => (None, 0, Vec::new()),
        };
        // The headline latency: per sentence with a times file, else pulled back.
        let head = sentence.clone().unwrap_or_else(|| sorted(pulled.clone()));
        all_sentence.extend(head.iter().copied());
        let p = |v: &[f64], q: f64| percentile(v, q);
        let (own, pulled) = (sorted(own), sorted(pulled));
        let late = own.iter().filter(|&&l| l > budget).count();
        over_budget += late;
        buffers += own.len();
        let p95 = p(&head, 95.0);
        worst_p95 = max_opt(worst_p95, p95);
        worst_wer = max_opt(worst_wer, wer);
        rows.push(format!(
            "{k:>6}  {:>6} {:>6} {:>6}  {:>8}  {:>8}  {:>6}  {:>6}  {}",
            fmt_opt(p(&head, 50.0), 2),
            fmt_opt(p95, 2),
            fmt_opt(head.last().copied(), 2),
            fmt_opt(p(&pulled, 95.0), 2),
            fmt_opt(p(&own, 95.0), 2),
            fmt_opt(wer, 2),
            if sentence.is_some() {
                format!("{missed}")
            } else {
                "-".into()
            },
            texts.len(),
        ));
        json_streams.push(serde_json::json!({
            "stream": k,
            "latency_kind": if sentence.is_some() { "sentence" } else { "pulled-back" },
            "p50": p(&head, 50.0),
            "p95": p95,
            "max": head.last(),
            "pulled_back_p95": p(&pulled, 95.0),
            "own_pts_p95": p(&own, 95.0),
            "own_pts_max": own.last(),
            "over_budget": late,
            "wer": wer,
            "missed_sentences": if sentence.is_some() { Some(missed) } else { None },
            "sentence_latencies": in_order,
            "text_buffers": texts.len(),
            "warnings": warnings,
            "skipped_seconds": skipped[k],
        }));
    }
    let cores = cpu.map(|c| c / wall);
    let per_stream = cores.map(|c| c / sc.streams as f64);
    let kind = if sentences.is_some() {
        "per sentence: arrival of its last word − end of its speech"
    } else {
        "pulled back: arrival − claimed end, pulled back to the end of the speech before a pause"
    };
    let all = sorted(all_sentence);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{model_name}: {} streams × {} ({audio_seconds:.1} s), latency property {} ms, {}",
        sc.streams,
        source.label,
        config.latency_ms,
        common::cpu_model()
    );
    let _ = writeln!(out, "latency = {kind} (seconds)");
    let _ = writeln!(
        out,
        "stream     p50    p95    max  pulled95  ownPTS95    WER%  missed  buffers"
    );
    for r in &rows {
        let _ = writeln!(out, "{r}");
    }
    let _ = writeln!(
        out,
        "all streams: p50 {} p95 {} max {} s; worst stream p95 {} s; worst WER {} % (offline {} %)",
        fmt_opt(percentile(&all, 50.0), 2),
        fmt_opt(percentile(&all, 95.0), 2),
        fmt_opt(all.last().copied(), 2),
        fmt_opt(worst_p95, 2),
        fmt_opt(worst_wer, 2),
        fmt_opt(offline_wer, 2),
    );
    let _ = writeln!(
        out,
        "CPU: {} cores busy over {wall:.1} s = {} cores per stream (load average {} → {})",
        fmt_opt(cores, 2),
        fmt_opt(per_stream, 3),
        fmt_opt(loadavg_start, 2),
        fmt_opt(loadavg(), 2),
    );
    let total_skipped: f64 = skipped.iter().sum();
    let rss_at = |q: f64| {
        rss.get(((rss.len() as f64 - 1.0) * q).round().max(0.0) as usize)
            .map(|r| r.1)
    };
    let _ = writeln!(
        out,
        "overload: {total_skipped:.1} s of {:.1} s of audio left out (whispernpu-skipped), \
         text buffers later than latency + lateness ({budget:.1} s) after their own end: \
         {over_budget} of {buffers}, streams with a warning: {}; RSS MiB at 0 / 25 / 50 / 75 / 100 % of the run: {} / {} / {} \
         / {} / {}",
        audio_seconds * sc.streams as f64,
        warnings.iter().filter(|w| !w.is_empty()).count(),
        fmt_opt(rss_at(0.0), 0),
        fmt_opt(rss_at(0.25), 0),
        fmt_opt(rss_at(0.5), 0),
        fmt_opt(rss_at(0.75), 0),
        fmt_opt(rss_at(1.0), 0),
    );
    let _ = write!(std::io::stderr(), "{out}");
    drop(model);
    Ok(serde_json::json!({
        "kind": "streams",
        "model": model_name,
        "audio": source.label,
        "audio_seconds": audio_seconds,
        "streams": sc.streams,
        "stagger": sc.stagger,
        "latency_ms": config.latency_ms,
        "sets": config.sets.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "cpu": common::cpu_model(),
        "latency_kind": if sentences.is_some() { "sentence" } else { "pulled-back" },
        "p50": percentile(&all, 50.0),
        "p95": percentile(&all, 95.0),
        "max": all.last(),
        "worst_stream_p95": worst_p95,
        "worst_wer": worst_wer,
        "offline_wer": offline_wer,
        "cores": cores,
        "cores_per_stream": per_stream,
        "skipped_seconds": total_skipped,
        "budget": budget,
        "over_budget": over_budget,
        "rss_mib": rss.iter().map(|r| [r.0, r.1]).collect::<Vec<_>>(),
        "per_stream": json_streams,
    })
    .to_string())
}
