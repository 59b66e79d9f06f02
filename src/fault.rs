//! Fault injection for tests: named points that panic on request, so that tests can check that
//! a panic in any thread becomes an error message (element ERROR, CLI exit status 1) and never
//! a hang. Requested with `WHISPERNPU_TEST_FAULT=POINT[,POINT...]` (read once per process) or
//! [`set`]. Unrequested, a point costs one relaxed atomic load.
//!
//! Points: `load` (model loading: the element's loader thread, the CLI's main thread),
//! `decode` (decoding a window: the element's worker thread), `npu-encode` (a run on the NPU
//! encoder's worker thread).
//!
//! A slow engine, for overload tests: with `WHISPERNPU_TEST_DECODE_SECONDS=S` (read once per
//! process) or [`set_decode_seconds`], every live decode lasts at least `S` seconds
//! ([`slow_decode`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

struct Faults {
    /// `None` until the environment is read or [`set`] is called.
    points: Option<Vec<String>>,
    last_hit: Option<Instant>,
}

static FAULTS: Mutex<Faults> = Mutex::new(Faults {
    points: None,
    last_hit: None,
});
/// Whether any point may be requested (false once known that none is).
static ARMED: AtomicBool = AtomicBool::new(true);

fn lock() -> std::sync::MutexGuard<'static, Faults> {
    FAULTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Requests the named points (replacing the environment's list); an empty list clears them.
pub fn set(points: &[&str]) {
    let mut f = lock();
    f.points = Some(points.iter().map(|p| p.to_string()).collect());
    ARMED.store(!points.is_empty(), Ordering::Release);
}

/// When a requested point last panicked.
pub fn last_hit() -> Option<Instant> {
    lock().last_hit
}

/// Panics when `point` is requested.
pub fn point(point: &str) {
    if !ARMED.load(Ordering::Acquire) {
        return;
    }
    let hit = {
        let mut f = lock();
        let points = f.points.get_or_insert_with(|| {
            std::env::var("WHISPERNPU_TEST_FAULT")
                .map(|v| {
                    v.split(',')
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        });
        if points.is_empty() {
            ARMED.store(false, Ordering::Release);
        }
        let hit = points.iter().any(|p| p == point);
        if hit {
            f.last_hit = Some(Instant::now());
        }
        hit
    };
    if hit {
        panic!("fault injected at `{point}` (WHISPERNPU_TEST_FAULT)");
    }
}

/// Microseconds every live decode lasts at least; `u64::MAX` until the environment is read.
static DECODE_MICROS: AtomicU64 = AtomicU64::new(u64::MAX);

/// Makes every live decode last at least `seconds` (`None`: as long as it takes).
pub fn set_decode_seconds(seconds: Option<f64>) {
    let micros = seconds.map_or(0, |s| (s.max(0.0) * 1e6) as u64);
    DECODE_MICROS.store(micros, Ordering::Release);
}

/// The minimum duration of a live decode, if a slow engine is requested.
pub fn decode_seconds() -> Option<f64> {
    let mut micros = DECODE_MICROS.load(Ordering::Acquire);
    if micros == u64::MAX {
        let seconds = std::env::var("WHISPERNPU_TEST_DECODE_SECONDS")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0);
        set_decode_seconds(seconds);
        micros = DECODE_MICROS.load(Ordering::Acquire);
    }
    (micros > 0).then(|| micros as f64 / 1e6)
}

/// Sleeps until a decode that started at `started` has lasted [`decode_seconds`].
pub fn slow_decode(started: Instant) {
    if let Some(seconds) = decode_seconds() {
        let wanted = std::time::Duration::from_secs_f64(seconds);
        if let Some(rest) = wanted.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}
